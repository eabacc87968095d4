# A GPU runner (`helix runner`): vLLM's CUDA build and the torch it pins (CUDA 13 wheels, which
# carry their own CUDA libraries, so the CUDA image's small `base` flavour is enough: the node
# needs only an NVIDIA driver of the 580 series or newer and the NVIDIA container toolkit).
# CUDA_IMAGE picks another base (a newer 13.x tag, say). Build from the repository root:
#   docker build -f deploy/docker/runner-cuda.Dockerfile -t helix-runner-cuda .
# No weights are baked in: mount them (read-only) and name them with HELIX_TEXT_MODEL(_PATH) and
# HELIX_IMAGE_MODEL(_PATH). Needs HELIX_API_URL, HELIX_RUNNER_TOKEN and REDIS_URL at run time.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.12 from the distribution; gcc and the headers for anything that compiles on install.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.12.* python3-venv=3.12.* python3-dev=3.12.* gcc=4:13.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
# vLLM first: it pins the CUDA build of torch that everything after it must keep.
RUN pip install --no-cache-dir "vllm==0.33.0"
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY runner ./runner
# The project's versions are pinned in pyproject.toml, not on this line.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[runner]" \
    && python -c "import torch, vllm; assert torch.version.cuda, 'torch is not a CUDA build'"

FROM ${CUDA_IMAGE}
# Triton (vLLM's kernels) compiles small launchers with gcc against Python's headers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.12.* python3-dev=3.12.* gcc=4:13.* libnuma1=2.0.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/helix helix \
    && mkdir -p /work /models && chown helix:helix /work
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HELIX_RUNNER_WORK_DIR=/work
USER 10001
WORKDIR /home/helix
VOLUME ["/work"]
# Healthy while at least one of its workers keeps its heartbeat in Redis; a 7B model takes minutes to load.
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 CMD ["python", "-m", "runner.state.healthcheck"]
CMD ["python", "-m", "runner"]
