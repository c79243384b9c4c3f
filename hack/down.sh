#!/usr/bin/env bash
# Stop what hack/up.sh started: delete Dockyard objects (so VMs and disks are cleaned up by the
# operator), stop the operator and the control plane. --purge also wipes control-plane state.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kc="$DOCKYARD_STATE/controlplane/admin.kubeconfig"
pidfile="$DOCKYARD_STATE/operator.pid"
if [[ -f $kc ]] && kubectl --kubeconfig "$kc" get crd deployments.dockyard.dev >/dev/null 2>&1; then
  # Jobs and disk records too, waiting for the operator's teardown (their finalizers): the
  # garbage collector would delete Jobs only later, and the control plane stops right after.
  for kind in deployments jobs persistentdisks; do
    kubectl --kubeconfig "$kc" delete "$kind.dockyard.dev" --all -A --wait --timeout=120s || true
  done
fi
if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
bash "$HACK_DIR/controlplane/down.sh" "$@"
