#!/usr/bin/env bash
# Stop the local control plane started by up.sh (only its own processes, by PID file).
# --purge also deletes etcd's data and the certificates.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

for name in kube-controller-manager kube-apiserver etcd; do
  pidfile="$CP_DIR/$name.pid"
  [[ -f $pidfile ]] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name ($pid)"
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
done
[[ "${1:-}" == --purge ]] && rm -rf "$CP_DIR"
exit 0
