# The Dockyard operator image: `docker build -t dockyard/operator:0.1.0 .`
#
# The base is the official python:3.11-slim (Debian). It cannot be pulled on the development
# machine (no registry is reachable there): hack/operator-image.sh builds one from Debian's own
# packages and passes it with `--build-arg BASE=...`. deploy/base/kustomization.yaml names the image.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the package build needs. The dependencies first, in a layer
# of their own (a stand-in package and readme): a code change reinstalls only Dockyard itself.
# `python3`: Debian's own Python (hack/operator-image.sh) has no `python`.
COPY pyproject.toml ./
RUN mkdir -p operator/dockyard && touch README.md operator/dockyard/__init__.py \
    && python3 -m venv /opt/dockyard && /opt/dockyard/bin/pip install . \
    && /opt/dockyard/bin/pip uninstall -y dockyard && rm -rf operator README.md build
COPY README.md ./
COPY operator ./operator
RUN /opt/dockyard/bin/pip install --no-deps .

FROM ${BASE}
ENV PATH=/opt/dockyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/dockyard /opt/dockyard
# The uid has a name: kopf looks it up (getpass) for its identity, and exits when it cannot.
RUN echo 'dockyard:x:65532:65532:Dockyard:/tmp:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'dockyard:x:65532:' >>/etc/group
# A numeric non-root user, so the kubelet can verify runAsNonRoot; the root filesystem is
# read-only in deploy/ (only /tmp, an emptyDir, is writable).
USER 65532:65532
# metrics, kopf liveness, admission webhook
EXPOSE 9090 8080 8081 9443
ENTRYPOINT ["dockyard", "run"]
