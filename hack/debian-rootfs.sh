#!/usr/bin/env bash
# Build a Docker image from a stock Debian bookworm rootfs (debootstrap from Debian's own
# packages; no registry needed). Usage: hack/debian-rootfs.sh NAME [PACKAGE...]
# Makes dockyard/debian-NAME:<key> (key: this script and the package list) and tags it :latest.
# Idempotent: skips when that image exists. Prints the image name.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name=${1:?usage: debian-rootfs.sh NAME [PACKAGE...]}; shift
packages=("$@")
apt_install debootstrap
key=$( { cat "${BASH_SOURCE[0]}"; printf '%s\n' "${packages[@]}"; } | sha256sum | cut -c1-12)
IMAGE="dockyard/debian-$name:$key"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  docker tag "$IMAGE" "dockyard/debian-$name:latest"
  echo "$IMAGE"; exit 0
fi

log "building $IMAGE (debootstrap bookworm${packages:+ + ${packages[*]}})"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
include=()
(( ${#packages[@]} )) && include=(--include="$(IFS=,; echo "${packages[*]}")")
debootstrap --variant=minbase "${include[@]}" bookworm "$root" http://deb.debian.org/debian \
  >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "debootstrap failed"; }
rm -f "$root.log"
# The image is a stock system: apt works in it (sources as on the host), caches stay out.
printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
  >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' -c "LABEL dockyard.rootfs=$name" - "$IMAGE" >/dev/null
docker tag "$IMAGE" "dockyard/debian-$name:latest"
log "built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%d MB", $1/1e6}'))"
echo "$IMAGE"
