# The control plane: Flask under gunicorn's gevent worker (`helix serve`), no torch, no runner code.
# Build from the repository root:  docker build -f deploy/docker/controlplane.Dockerfile -t helix-controlplane .
# Needs DATABASE_URL and REDIS_URL at run time; nothing secret is baked in.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the control plane's extra: the wire types in shared/ and the controlplane package.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY controlplane ./controlplane
# The project itself: its versions are pinned in pyproject.toml, not on this line.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[controlplane]"

FROM python:3.11-slim-bookworm
# The uid is fixed so volume permissions and a pod's runAsUser can name it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/helix helix \
    && mkdir -p /data/filestore && chown -R helix:helix /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HELIX_PORT=8080 \
    HELIX_FILESTORE=/data/filestore
USER 10001
WORKDIR /home/helix
VOLUME ["/data/filestore"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HELIX_PORT', '8080') + '/healthz', timeout=4)"]
# Applies the migrations (under an advisory lock: replicas may start together), then execs gunicorn.
CMD ["helix", "serve", "--host", "0.0.0.0"]
