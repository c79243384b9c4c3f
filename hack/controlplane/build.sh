#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet and etcd from the Go
# module proxy (versions pinned in go.mod), cached outside the repo by version, go.sum and this
# script (its flags) so a warm run skips the build.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

cd "$HACK_DIR/controlplane"
K8S_VERSION=$(sed -n "s/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p" go.mod | head -1)
BIN_DIR="$DOCKYARD_CACHE/controlplane/$K8S_VERSION-$(cat go.sum build.sh | sha256sum | cut -c1-12)"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd)
all_built() { local bin; for bin in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$bin" ]] || return 1; done; }
if all_built; then echo "$BIN_DIR"; exit 0; fi
command -v go >/dev/null || die "go is required to build the control plane"
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet ($K8S_VERSION) and etcd; ~5 min cold"
# Built outside Kubernetes' own build, the binaries would report v0.0.0 (kubectl version
# cannot parse that): stamp the version as Kubernetes' release build does.
major=${K8S_VERSION#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
version_pkg=k8s.io/component-base/version
ldflags="-X $version_pkg.gitVersion=$K8S_VERSION -X $version_pkg.gitMajor=$major -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
mkdir -p "$BIN_DIR.tmp"
go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet go.etcd.io/etcd/server/v3 >&2
mv "$BIN_DIR.tmp/server" "$BIN_DIR.tmp/etcd"
rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
log "built into $BIN_DIR"
echo "$BIN_DIR"
