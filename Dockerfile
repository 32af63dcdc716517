# One image for everything Veza runs: `veza operator`, `veza api|chat|stream|migrate`.
# Build (BuildKit): DOCKER_BUILDKIT=1 docker build -t ghcr.io/veza-platform/veza:0.1.0 .
# Behind a TLS-intercepting proxy, hand pip and uv the machine's CA bundle as a build secret (it is
# mounted for those commands only and never lands in a layer):
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
# BASE_IMAGE: a Debian bookworm image with python3.11 and pip; the tests build an equivalent of the
# default from Debian packages (workloads/veza_local/images.py, docs/deploy.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:The base image is the BASE_IMAGE build argument, whose default above carries the version tag 3.11-slim-bookworm (checkov cannot expand build arguments).

# -- build: the virtual environment from uv.lock, then the project itself ------------------
FROM ${BASE_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/veza \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir uv==0.13.8
WORKDIR /src
# Dependencies first (their layer is reused while only the code changes).
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca UV_NATIVE_TLS=1; fi \
    && uv sync --frozen --no-dev --no-install-project
COPY operator/ operator/
COPY workloads/ workloads/
# (the project's build backend, hatchling, comes from PyPI too)
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca UV_NATIVE_TLS=1; fi \
    && uv sync --frozen --no-dev --no-editable

# -- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="veza" \
      org.opencontainers.image.description="Veza: Kubernetes-native real-time chat and audio streaming (operator and workers)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/veza-platform/veza" \
      org.opencontainers.image.vendor="Veza"
# libmp3lame0, libopus0: the stream worker encodes MP3 and Opus with the system libraries
# (faster than going through PyAV; see workloads/veza_stream/lame.py and opus.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmp3lame0=3.100-6 libopus0=1.3.1-3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 veza \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin veza
COPY --from=build /opt/veza /opt/veza
# Read-only root filesystem: bytecode is compiled at build time, nothing is written outside /tmp
# (an emptyDir in the pods the operator creates).
ENV PATH=/opt/veza/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 10001:10001
EXPOSE 8080 9090
# checkov:skip=CKV_DOCKER_2:Kubernetes probes (/healthz, /readyz on 8080) replace a Docker HEALTHCHECK, and the port depends on the subcommand.
ENTRYPOINT ["veza"]
CMD ["--help"]
