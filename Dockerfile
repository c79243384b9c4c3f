# The Dockyard operator image: `docker build -t dockyard/operator:0.1.0 .`
#
# The base is the official python:3.11-slim (Debian). It cannot be pulled on the development
# machine (no registry is reachable there); build where Docker Hub or a mirror is, or pass a local
# Python 3.11 image with `--build-arg BASE=...`. deploy/base/kustomization.yaml names the image.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the package build needs.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/dockyard && /opt/dockyard/bin/pip install .

FROM ${BASE}
ENV PATH=/opt/dockyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/dockyard /opt/dockyard
# A numeric non-root user, so the kubelet can verify runAsNonRoot; the root filesystem is
# read-only in deploy/ (only /tmp, an emptyDir, is writable).
USER 65532:65532
# metrics, kopf liveness, admission webhook
EXPOSE 9090 8080 8081 9443
ENTRYPOINT ["dockyard", "run"]
