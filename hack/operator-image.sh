#!/usr/bin/env bash
# Build the operator image from the repository's Dockerfile on a Python 3.11 base made from
# Debian's own packages (no registry is reachable here), tagged as deploy/ names it. The base
# also carries what the local provider runs on its host: mount, losetup, mkfs.ext4, fsfreeze.
# Prints the image name. Docker's layer cache makes a rebuild after a code change quick.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

debian=$(bash "$HACK_DIR/debian-rootfs.sh" python python3 python3-venv ca-certificates e2fsprogs)
# pip in the build reaches PyPI the way this host does: with this host's CA bundle (it may trust
# an egress proxy's CA that Debian's bundle lacks).
ca=/etc/ssl/certs/ca-certificates.crt
base="dockyard/operator-base:$({ docker image inspect --format '{{.Id}}' "$debian"; cat "$ca"; } | sha256sum | cut -c1-12)"
if ! docker image inspect "$base" >/dev/null 2>&1; then
  context=$(mktemp -d) && trap 'rm -rf "$context"' EXIT
  cp "$ca" "$context/"
  printf 'FROM %s
COPY ca-certificates.crt %s
ENV PIP_CERT=%s
' "$debian" "$ca" "$ca" |
    docker build -q -t "$base" -f - "$context" >/dev/null
fi
tag=$(sed -n 's/^[[:space:]]*newTag:[[:space:]]*//p' "$REPO_ROOT/deploy/base/kustomization.yaml")
image="dockyard/operator:${tag:?no newTag in deploy/base/kustomization.yaml}"
log "building $image on $base"
docker build -q --build-arg BASE="$base" -t "$image" "$REPO_ROOT" >/dev/null
echo "$image"
