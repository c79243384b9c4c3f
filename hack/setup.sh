#!/usr/bin/env bash
# Install everything Dockyard's dev loop needs on a fresh Debian machine (idempotent, fast when warm):
# Debian packages, a Python venv with the package and its test extras, the control-plane binaries.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install docker.io busybox-static e2fsprogs tini iptables util-linux openssl curl docker-registry apache2-utils \
  prometheus lua5.4 lua5.1 python3-venv
command -v go >/dev/null || die "Go >= 1.24 is required (to build kube-apiserver); install it from go.dev"

VENV="$REPO_ROOT/.venv"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
stamp="$VENV/.dockyard-installed-$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-12)"
if [[ ! -f $stamp ]]; then
  log "pip install -e .[test] into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e "$REPO_ROOT[test]"
  rm -f "$VENV"/.dockyard-installed-* && touch "$stamp"
fi
bash "$HACK_DIR/controlplane/build.sh" >/dev/null
bash "$HACK_DIR/kstatus/build.sh" >/dev/null
