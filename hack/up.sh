#!/usr/bin/env bash
# Bring up Dockyard on this machine: Docker, a local control plane, the stemcell, the CRDs, the
# operator (local provider) in the background, and the example Deployment — then wait for Ready.
# Idempotent. Stop it all with: bash hack/down.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXAMPLE="${1:-$REPO_ROOT/examples/redis-style.yaml}"
bash "$HACK_DIR/setup.sh"
bash "$HACK_DIR/docker-up.sh"
export KUBECONFIG
KUBECONFIG=$(bash "$HACK_DIR/controlplane/up.sh")
bash "$HACK_DIR/stemcell.sh"

log "installing CRDs"
kubectl apply -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for=condition=Established -f "$REPO_ROOT/crds/" --timeout=60s >/dev/null

pidfile="$DOCKYARD_STATE/operator.pid"
if ! { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  log "starting the operator (log: $DOCKYARD_STATE/operator.log)"
  nohup bash "$HACK_DIR/operator.sh" --metrics-port 9090 >"$DOCKYARD_STATE/operator.log" 2>&1 &
  echo $! >"$pidfile"
fi
# Its admission webhook refuses what the CRDs' rules cannot (dependency cycles, a job that is
# not there...) at kubectl apply: wait until the apiserver knows where to call it.
webhook_configured() {
  kubectl get validatingwebhookconfiguration "${DOCKYARD_WEBHOOK_CONFIGURATION:-validate.dockyard.dev}" \
    -o jsonpath='{.webhooks[*].name}' | grep -q dependencies
}
wait_until 60 "the operator's admission webhook" webhook_configured

log "applying $(basename "$EXAMPLE")"
kubectl apply -f "$EXAMPLE"
kubectl wait --for=condition=Ready -f "$EXAMPLE" --timeout=180s

cat <<MSG

Dockyard is up. Look at it with:
  export KUBECONFIG=$KUBECONFIG
  kubectl get dockyard
  kubectl describe dyd
  docker ps --filter label=dockyard.dev/owner-uid     # the VMs (local provider)
Operator log: $DOCKYARD_STATE/operator.log    Metrics: http://127.0.0.1:9090/metrics
MSG
