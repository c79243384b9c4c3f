#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and etcd from the Go module proxy (versions pinned
# in go.mod), cached outside the repo by version so a warm run skips the build.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

cd "$HACK_DIR/controlplane"
K8S_VERSION=$(sed -n "s/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p" go.mod | head -1)
BIN_DIR="$DOCKYARD_CACHE/controlplane/$K8S_VERSION-$(sha256sum go.sum | cut -c1-12)"
if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -x "$BIN_DIR/etcd" ]]; then
  echo "$BIN_DIR"; exit 0
fi
command -v go >/dev/null || die "go is required to build the control plane"
log "building kube-apiserver, kube-controller-manager ($K8S_VERSION) and etcd; ~4 min cold"
mkdir -p "$BIN_DIR.tmp"
go build -trimpath -o "$BIN_DIR.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  go.etcd.io/etcd/server/v3 >&2
mv "$BIN_DIR.tmp/server" "$BIN_DIR.tmp/etcd"
rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
log "built into $BIN_DIR"
echo "$BIN_DIR"
