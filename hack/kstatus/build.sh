#!/usr/bin/env bash
# Build the kstatus checker (hack/kstatus/main.go: sigs.k8s.io/cli-utils' kstatus, the library
# Flux uses to tell InProgress / Current / Failed) from the Go module proxy, cached by go.sum;
# prints the binary's path. Tests feed it the objects they watch.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

cd "$HACK_DIR/kstatus"
BIN_DIR="$DOCKYARD_CACHE/kstatus/$(cat go.sum main.go | sha256sum | cut -c1-12)"
if [[ -x "$BIN_DIR/kstatus" ]]; then echo "$BIN_DIR/kstatus"; exit 0; fi
command -v go >/dev/null || die "go is required to build the kstatus checker"
log "building the kstatus checker (sigs.k8s.io/cli-utils); ~1 min cold"
mkdir -p "$BIN_DIR.tmp"
go build -trimpath -o "$BIN_DIR.tmp/kstatus" . >&2
rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
echo "$BIN_DIR/kstatus"
