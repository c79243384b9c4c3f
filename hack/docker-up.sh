#!/usr/bin/env bash
# Start a Docker engine on this host (Debian docker.io) if none answers, and build the tiny
# local workload image that examples and tests use (no registry is reachable: docker import).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install docker.io busybox-static e2fsprogs tini iptables util-linux openssl

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$DOCKYARD_STATE"
  log "starting dockerd"
  nohup dockerd --host unix:///var/run/docker.sock >"$DOCKYARD_STATE/dockerd.log" 2>&1 &
  echo $! >"$DOCKYARD_STATE/dockerd.pid"
  wait_until 60 "dockerd /_ping" curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping
fi

# dockyard/busybox:1: a 2 MB image with busybox applets on PATH, for workloads in examples/tests.
WORKLOAD_IMAGE="${WORKLOAD_IMAGE:-dockyard/busybox:1}"
if ! docker image inspect "$WORKLOAD_IMAGE" >/dev/null 2>&1; then
  log "building $WORKLOAD_IMAGE from busybox-static"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs"/{bin,tmp,etc,data}
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$rootfs/etc/passwd"
  tar -C "$rootfs" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$WORKLOAD_IMAGE" >/dev/null
fi
log "docker ready ($(docker version --format '{{.Server.Version}}')), workload image $WORKLOAD_IMAGE"
