#!/usr/bin/env bash
# A real Kubernetes node beside the local control plane, on demand: kube-scheduler, a containerd
# of its own (Debian's, CRI on; its own root, state and socket, apart from Docker's) and a kubelet
# registered as node "dockyard-node". Pods get addresses on a bridge this script makes; nothing
# listens on or routes to any other address of the host.
#   hack/node.sh up              start it (idempotent; builds are cached); prints the kubeconfig
#   hack/node.sh load IMAGE...   move Docker images into the node's containerd (no registry here)
#   hack/node.sh down [--purge]  delete its pods, stop it, remove its mounts, bridge, rules
#   hack/node.sh status          exit 0 when its kubelet runs
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_DIR="${DOCKYARD_NODE_DIR:-$DOCKYARD_STATE/node}"
NODE_NAME="${DOCKYARD_NODE_NAME:-dockyard-node}"
KUBELET_PORT="${DOCKYARD_KUBELET_PORT:-20250}"
SCHEDULER_PORT="${DOCKYARD_SCHEDULER_PORT:-20259}"
# The pods' network: a /24 beside the local provider's 10.213/16 and 10.214/16.
BRIDGE=dockyard-cni0 POD_SUBNET=10.215.0.0/24 NODE_IP=10.215.0.1
# Pods route only the Services' range to the node (up.sh: --service-cluster-ip-range), for the
# `kubernetes` Service: nothing else leaves the bridge.
SERVICE_RANGE=10.96.0.0/24 SERVICE_IP=10.96.0.1
CHAIN=DOCKYARD-NODE
# The local provider's default root: pods mount it with Bidirectional propagation (disks they
# mount must reach the host's Docker), which needs the mount it lives on to be shared (systemd
# makes / shared; this host may not).
LOCAL_ROOT=/var/lib/dockyard/local
SOCK="$NODE_DIR/containerd/containerd.sock"
PAUSE_IMAGE=dockyard/pause:1
export KUBECONFIG="$CP_DIR/admin.kubeconfig"

running() { [[ -f "$NODE_DIR/$1.pid" ]] && kill -0 "$(cat "$NODE_DIR/$1.pid")" 2>/dev/null; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

stop() { # NAME: stop a process of ours by its PID file
  running "$1" || { rm -f "$NODE_DIR/$1.pid"; return 0; }
  local pid; pid=$(cat "$NODE_DIR/$1.pid")
  log "stopping $1 ($pid)"
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$NODE_DIR/$1.pid"
}

start() { # NAME COMMAND...: run COMMAND in the background unless NAME runs
  local name=$1; shift
  running "$name" && return 0
  log "starting $name"
  nohup "$@" >"$NODE_DIR/logs/$name.log" 2>&1 &
  echo $! >"$NODE_DIR/$name.pid"
}

# load IMAGE...: docker save | ctr import, skipped when the node has that very image already.
load() {
  local image id stamp
  for image in "$@"; do
    id=$(docker image inspect --format '{{.Id}}' "$image")
    stamp="$NODE_DIR/images/$(tr '/:' '__' <<<"$image")"
    [[ -f $stamp && "$(cat "$stamp")" == "$id" ]] && ctr_ images ls -q | grep -qx "docker.io/$image" && continue
    log "loading $image into the node"
    docker save "$image" | ctr_ images import - >/dev/null
    mkdir -p "$NODE_DIR/images" && echo "$id" >"$stamp"
  done
}

pause_image() { # a pause container: a static binary that waits for its signal, FROM scratch
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  log "building $PAUSE_IMAGE"
  local dir; dir=$(mktemp -d)
  cat >"$dir/main.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
GO
  (cd "$dir" && printf 'module pause\ngo 1.21\n' >go.mod && CGO_ENABLED=0 go build -ldflags=-s -o pause .)
  tar -C "$dir" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
  rm -rf "$dir"
}

certificates() { # the kubelet's and the scheduler's client certificates, from the cluster's CA
  local pki=$CP_DIR/pki name subject
  mkdir -p "$NODE_DIR/pki"
  for name in kubelet kube-scheduler; do
    subject="/O=system:nodes/CN=system:node:$NODE_NAME"
    [[ $name == kube-scheduler ]] && subject="/CN=system:kube-scheduler"
    if [[ ! -f "$NODE_DIR/pki/$name.crt" ]] || ! openssl verify -CAfile "$pki/ca.crt" "$NODE_DIR/pki/$name.crt" >/dev/null 2>&1; then
      openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$NODE_DIR/pki/$name.key" \
        -out "$NODE_DIR/pki/$name.csr" 2>/dev/null
      openssl x509 -req -in "$NODE_DIR/pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 3650 -out "$NODE_DIR/pki/$name.crt" 2>/dev/null
    fi
    cat >"$NODE_DIR/$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dockyard-local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$NODE_DIR/pki/$name.crt", client-key: "$NODE_DIR/pki/$name.key"}
contexts:
- name: dockyard-local
  context: {cluster: dockyard-local, user: $name}
current-context: dockyard-local
KC
  done
}

network() { # the pods' bridge, and the `kubernetes` Service: no kube-proxy here, one DNAT rule
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # The apiserver listens on 127.0.0.1 only: pods reach it through the DNAT below, which the
  # kernel routes to the loopback only when the bridge allows it.
  sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
  iptables -t nat -N "$CHAIN" 2>/dev/null || true
  iptables -t nat -C PREROUTING -i "$BRIDGE" -j "$CHAIN" 2>/dev/null ||
    iptables -t nat -A PREROUTING -i "$BRIDGE" -j "$CHAIN"
  iptables -t nat -F "$CHAIN"
  iptables -t nat -A "$CHAIN" -d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "127.0.0.1:$API_PORT"
  mkdir -p "$NODE_DIR/cni/net.d"
  cat >"$NODE_DIR/cni/net.d/10-dockyard.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "dockyard-node", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam", "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
           "routes": [{"dst": "$SERVICE_RANGE"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
CNI
}

shared_mount() { # that mount alone, not the ones below it; made private again at down
  mkdir -p "$LOCAL_ROOT"
  local mount_point; mount_point=$(stat -c %m "$LOCAL_ROOT")
  awk -v m="$mount_point" '$5 == m && / shared:/ {f=1} END {exit !f}' /proc/self/mountinfo && return 0
  mount --make-shared "$mount_point"
  echo "$mount_point" >"$NODE_DIR/made-shared"
}

up() {
  apt_install containerd runc containernetworking-plugins iptables iproute2 procps openssl
  bash "$HACK_DIR/controlplane/up.sh" >/dev/null
  local bin_dir; bin_dir=$(bash "$HACK_DIR/controlplane/build.sh")
  mkdir -p "$NODE_DIR"/{logs,kubelet,containerd}
  certificates
  network
  shared_mount

  cat >"$NODE_DIR/containerd.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE (this host is a sandbox) runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
TOML
  start containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_until 30 "containerd ($NODE_DIR/logs/containerd.log)" ctr_ version
  pause_image
  load "$PAUSE_IMAGE"

  start kube-scheduler "$bin_dir/kube-scheduler" --kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false

  # The host is on cgroup v1 with swap; images come only from `load` (no registry: never
  # collect them); eviction thresholds low so a busy shared disk does not evict the operator.
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT - 2))
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CP_DIR/pki/ca.crt}
authorization: {mode: Webhook}
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 1%, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 30
podLogsDir: $NODE_DIR/logs/pods
YAML
  start kubelet "$bin_dir/kubelet" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/pki/serving" --v 1
  node_ready() {
    kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints}' |
      grep -qx 'True '
  }
  wait_until 90 "node $NODE_NAME Ready and untainted ($NODE_DIR/logs/kubelet.log)" node_ready
  log "node $NODE_NAME ready"
  echo "$KUBECONFIG"
}

down() {
  if running kubelet && kubectl get node "$NODE_NAME" >/dev/null 2>&1; then
    # The kubelet stops its pods the proper way (their networks and volumes go with them).
    kubectl cordon "$NODE_NAME" >/dev/null
    kubectl delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --force --grace-period=0 \
      --wait=false >/dev/null 2>&1 || true
    local deadline=$(( $(date +%s) + 90 ))
    while [[ -n "$(ctr_ tasks ls -q)" ]] || grep -q " $NODE_DIR/kubelet/pods/" /proc/self/mountinfo; do
      (( $(date +%s) < deadline )) || { log "pods still running after 90 s: killing them"; break; }
      sleep 0.5
    done
  fi
  stop kubelet
  stop kube-scheduler
  if running containerd; then  # what the kubelet left: kill it
    local id
    for id in $(ctr_ tasks ls -q); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ containers ls -q); do ctr_ tasks rm -f "$id" >/dev/null 2>&1 || true; ctr_ containers rm "$id" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  rm -rf "$NODE_DIR/logs/pods"  # of pods that are gone
  local mount_point
  # Deepest first; lazily: a pod's mount may still be released by its dying processes.
  for mount_point in $(awk -v d="$NODE_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$mount_point" 2>/dev/null || true
  done
  # Pod network namespaces containerd made (cni-*) and did not get to delete.
  for mount_point in $(awk '$5 ~ "^/run/netns/cni-" {print $5}' /proc/self/mountinfo); do
    umount -l "$mount_point" 2>/dev/null || true; rm -f "$mount_point"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  iptables -t nat -D PREROUTING -i "$BRIDGE" -j "$CHAIN" 2>/dev/null || true
  iptables -t nat -F "$CHAIN" 2>/dev/null && iptables -t nat -X "$CHAIN"
  if [[ -f "$NODE_DIR/made-shared" ]]; then mount --make-private "$(cat "$NODE_DIR/made-shared")"; rm -f "$NODE_DIR/made-shared"; fi
  kubectl delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  [[ "${1:-}" == --purge ]] && rm -rf "$NODE_DIR"
  return 0
}

case "${1:-}" in
  up) up ;;
  load) shift; load "$@" ;;
  down) shift; down "$@" ;;
  status) running kubelet ;;
  *) die "usage: node.sh up | load IMAGE... | down [--purge] | status" ;;
esac
