#!/usr/bin/env bash
# Start an envtest-style local control plane: etcd + kube-apiserver (RBAC on) +
# kube-controller-manager (garbage collection, namespace deletion, service-account tokens, and
# what a node needs: hack/node.sh), all on loopback. Idempotent: what already runs with the same
# binary and flags is reused, what runs with others is restarted. Prints the admin kubeconfig path.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ETCD_PORT="${DOCKYARD_ETCD_PORT:-12379}"
KCM_PORT="${DOCKYARD_KCM_PORT:-20257}"
KUBECONFIG_OUT="$CP_DIR/admin.kubeconfig"

apt_install openssl curl
BIN_DIR=$(bash "$HACK_DIR/controlplane/build.sh")
mkdir -p "$CP_DIR"/{pki,etcd-data,logs}
cd "$CP_DIR"

running() { [[ -f "$1.pid" ]] && kill -0 "$(cat "$1.pid")" 2>/dev/null; }
# start NAME COMMAND...: run COMMAND in the background unless NAME already runs it as is; one
# started by an older up.sh or build (other arguments) is stopped first, so changes take effect.
start() {
  local name=$1; shift
  if running "$name"; then
    [[ "$(cat "$name.args" 2>/dev/null)" == "$*" ]] && return 0
    log "restarting $name: its binary or flags changed"
    local pid; pid=$(cat "$name.pid")
    kill "$pid"
    # As down.sh: 10 s to stop (an apiserver whose etcd just restarted may hang on), then KILL.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  log "starting $name"
  nohup "$@" >"logs/$name.log" 2>&1 &
  echo $! >"$name.pid"
  printf '%s' "$*" >"$name.args"
}

# --- certificates (once) ----------------------------------------------------------------------
pki=$CP_DIR/pki
if [[ ! -f $pki/ca.crt ]]; then
  log "generating certificates"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dockyard-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  cat >"$pki/san.cnf" <<SAN
[ext]
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.96.0.1
extendedKeyUsage=serverAuth
SAN
  sign() { # name subject [extensions-section]
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -out "$pki/$1.crt" ${3:+-extfile "$pki/san.cnf" -extensions "$3"} 2>/dev/null
  }
  sign apiserver "/CN=kube-apiserver" ext
  sign admin "/O=system:masters/CN=dockyard-admin"
  sign controller-manager "/CN=system:kube-controller-manager"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

write_kubeconfig() { # file user; replaced in one rename, and only when it changes: tests and
  # kubectl read it while another up.sh runs (a truncated file sends kubectl to localhost:8080)
  local temporary="$1.$$"
  cat >"$temporary" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dockyard-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: dockyard-local
  context: {cluster: dockyard-local, user: $2, namespace: default}
current-context: dockyard-local
KC
  if cmp -s "$temporary" "$1"; then rm -f "$temporary"; else mv -f "$temporary" "$1"; fi
}
write_kubeconfig "$KUBECONFIG_OUT" admin
write_kubeconfig "$CP_DIR/controller-manager.kubeconfig" controller-manager

# --- etcd ---------------------------------------------------------------------------------------
start etcd "$BIN_DIR/etcd" --name dockyard --data-dir "$CP_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "dockyard=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
wait_until 30 "etcd health" curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver -----------------------------------------------------------------------------
# Webhooks behind a Service are called at their endpoints (no kube-proxy here); the kubelet of
# hack/node.sh is reached at its InternalIP (its bridge's address), with the admin's certificate.
start kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode Node,RBAC --anonymous-auth=false \
    --service-account-issuer "https://127.0.0.1:$API_PORT" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 --allow-privileged=true \
    --enable-priority-and-fairness=false --profiling=false --enable-aggregator-routing=true \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key"
ready() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
  "https://127.0.0.1:$API_PORT/readyz" | grep -q ok; }
wait_until 90 "kube-apiserver /readyz (see $CP_DIR/logs/kube-apiserver.log)" ready

# --- kube-controller-manager --------------------------------------------------------------------
# With a node (hack/node.sh): Deployments and ReplicaSets, Services' endpoints, and the node
# lifecycle (it lifts the not-ready taint).
start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$CP_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CP_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CP_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials \
    --controllers 'garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller,root-ca-certificate-publisher-controller,deployment-controller,replicaset-controller,node-lifecycle-controller,endpoints-controller,endpointslice-controller'
kcm_ok() { curl -sfk "https://127.0.0.1:$KCM_PORT/healthz" | grep -q ok; }
wait_until 60 "kube-controller-manager /healthz" kcm_ok

log "control plane ready: export KUBECONFIG=$KUBECONFIG_OUT"
echo "$KUBECONFIG_OUT"
