#!/usr/bin/env bash
# Start a Docker engine on this host (Debian docker.io) if none answers, and build the tiny
# local workload image that examples and tests use (no registry is reachable: docker import).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install docker.io busybox-static e2fsprogs tini iptables util-linux openssl

# start_dockerd: start the daemon and wait until it answers; 1 if it died on the way.
start_dockerd() {
  log "starting dockerd"
  nohup dockerd --host unix:///var/run/docker.sock >"$DOCKYARD_STATE/dockerd.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DOCKYARD_STATE/dockerd.pid"
  local deadline=$(( $(date +%s) + 120 ))
  until curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    (( $(date +%s) < deadline )) || { tail -20 "$DOCKYARD_STATE/dockerd.log" >&2; die "timed out waiting for dockerd /_ping"; }
    sleep 0.2
  done
}

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$DOCKYARD_STATE"
  if ! start_dockerd; then
    # Docker 20.10 panics in libnetwork when a host stopped mid network create left a
    # half-written network store; the networks in it are recreated by whoever needs them.
    if grep -q 'libnetwork' "$DOCKYARD_STATE/dockerd.log"; then
      store=/var/lib/docker/network/files/local-kv.db
      log "dockerd died restoring its network store; moving $store aside"
      rm -f /var/run/docker.pid
      [[ -f "$store" ]] && mv "$store" "$store.broken-$(date +%s)"
      start_dockerd || { tail -20 "$DOCKYARD_STATE/dockerd.log" >&2; die "dockerd exited at start"; }
    else
      tail -20 "$DOCKYARD_STATE/dockerd.log" >&2
      die "dockerd exited at start"
    fi
  fi
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
