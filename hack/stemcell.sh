#!/usr/bin/env bash
# Build the local provider's stemcell: an image whose container is a "VM" running its own Docker
# engine, assembled from this host's binaries (no registry needed). Idempotent: skips when the
# image for these binaries exists. Prints the image name.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install docker.io busybox-static tini iptables e2fsprogs util-linux
# e2fsprogs as on a cloud stemcell: Dockyard formats, checks and grows persistent disks with the
# VM's own tools (runtime/diskfs.py).
BINARIES=(/usr/sbin/dockerd /usr/sbin/docker-proxy /usr/bin/containerd /usr/bin/containerd-shim-runc-v2
  /usr/sbin/runc /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /bin/busybox
  /sbin/mke2fs /sbin/e2fsck /sbin/resize2fs /sbin/blkid)
# Content only: the same build whatever path this script was called by.
key=$(sha256sum "${BINARIES[@]}" /usr/bin/tini-static "${BASH_SOURCE[0]}" | cut -d' ' -f1 | sha256sum | cut -c1-12)
IMAGE="dockyard/stemcell:$key"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  docker tag "$IMAGE" dockyard/stemcell:latest
  echo "$IMAGE"; exit 0
fi

log "building $IMAGE"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,usr/bin,usr/sbin,etc,tmp,run,var/lib/docker,var/vcap/store,var/vcap/data,dockyard/run,proc,sys,dev,lib64,root}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
for bin in "${BINARIES[@]}"; do [[ "$bin" == /bin/busybox ]] || cp "$bin" "$root/usr/bin/"; done
cp /usr/bin/tini-static "$root/usr/bin/docker-init"
ln -sf mke2fs "$root/usr/bin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/"
# iptables through the same backend the host uses
backend=$(basename "$(readlink -f /usr/sbin/iptables)")
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "$backend" "$root/usr/bin/$tool"
done
# the shared libraries the binaries need (ldd misses xtables' plugin folder: copy it whole)
for lib in $(ldd "${BINARIES[@]}" 2>/dev/null | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
  [[ -f "$lib" ]] || continue
  mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
done
mkdir -p "$root/usr/lib/x86_64-linux-gnu" && cp -r /usr/lib/x86_64-linux-gnu/xtables "$root/usr/lib/x86_64-linux-gnu/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
cat >"$root/init.sh" <<'INIT'
#!/bin/sh
# The VM's init: make /sys and the cgroup hierarchies writable (the stand-in for --privileged
# leaves them read-only), then run the VM's Docker engine on a socket the host can reach.
mount -o remount,rw /sys 2>/dev/null
for m in $(awk '$2 ~ "^/sys/fs/cgroup" {print $2}' /proc/mounts); do
  mount -o remount,bind,rw "$m" 2>/dev/null
done
mkdir -p /run /var/run /var/lib/docker /dockyard/run
rm -f /dockyard/run/docker.sock
# The provider passes address ranges that clash neither with the host's nor with the VMs' network,
# and the registries it may pull from over plain HTTP (a registry on the host, say).
set --
for registry in $(echo "${DOCKYARD_INSECURE_REGISTRIES:-}" | tr ',' ' '); do
  set -- "$@" --insecure-registry "$registry"
done
exec dockerd --host unix:///dockyard/run/docker.sock --bip "${DOCKYARD_BIP:-10.214.255.1/24}" \
  --default-address-pool "base=${DOCKYARD_ADDRESS_POOL:-10.214.0.0/17},size=24" \
  --log-level warn --userland-proxy=false "$@" >/dockyard/run/dockerd.log 2>&1
INIT
chmod +x "$root/init.sh"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/bin:/usr/sbin:/bin' \
  -c 'ENTRYPOINT ["/usr/bin/docker-init", "--", "/init.sh"]' \
  -c 'VOLUME /var/lib/docker' \
  -c 'LABEL dockyard.stemcell=local' \
  - "$IMAGE" >/dev/null
docker tag "$IMAGE" dockyard/stemcell:latest
# Older builds go unless a VM still runs them (docker refuses those; that is fine).
for old in $(docker image ls dockyard/stemcell --format '{{.Tag}}'); do
  [[ "$old" == latest || "dockyard/stemcell:$old" == "$IMAGE" ]] || docker image rm "dockyard/stemcell:$old" >/dev/null 2>&1 || true
done
log "built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%d MB", $1/1e6}'))"
echo "$IMAGE"
