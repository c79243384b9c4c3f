#!/usr/bin/env bash
# Stop what hack/up.sh started: delete Dockyard objects (so VMs and disks are cleaned up by the
# operator), stop the operator, the node (hack/node.sh) and the control plane. --purge also wipes
# their state.
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
# The node (hack/node.sh), if it runs: its pods first, while the apiserver is still there.
bash "$HACK_DIR/node.sh" down "$@"
bash "$HACK_DIR/controlplane/down.sh" "$@"
