#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, from Debian's packages alone.
#
#   bash scripts/k8s-node.sh build       the node's binaries (once, cached; scripts/k8s-servers.sh
#                                        build-node) and its images (scripts/k8s-images.sh build)
#   bash scripts/k8s-node.sh start DIR   start the cluster; writes DIR/node.env
#   bash scripts/k8s-node.sh stop DIR    stop everything `start DIR` started, by pid, and undo
#                                        what it changed on the machine (bridge, iptables rules,
#                                        mounts, network namespaces)
#
# What runs (all as root, everything private under DIR):
# - etcd, kube-apiserver 1.20.2 and apiextensions-apiserver 1.36 behind the nginx path router,
#   as for the API-server tests (scripts/k8s-start.inc.sh); the router also listens on the node's
#   address, and the `kubernetes` Service's endpoint is the router, so pods see one API server
#   whose GeminiKeyGroups get CEL admission;
# - kube-controller-manager (ServiceAccount tokens, Deployments, ReplicaSets, Endpoints, garbage
#   collection), kube-scheduler, kube-proxy (iptables mode: ClusterIPs), all 1.20.2;
# - containerd 1.6 (Debian's) with its own root, state and socket under DIR, runc, and a bridge
#   CNI (Debian's containernetworking-plugins): pods get 10.244.0.0/24 on the bridge gp-cni0,
#   whose address 10.244.0.1 is the node's;
# - the kubelet 1.20.2 on that containerd; images come from scripts/k8s-images.sh (no registry).
#
# No cluster DNS: no DNS server that serves Kubernetes Services is packaged by Debian (CoreDNS
# is in neither bookworm nor sid), so pods resolve nothing of the cluster. Tests reach Services by
# their ClusterIP (read from the API or the Service environment variables), and the chart's pods
# get the bundled Redis's name through `hostAliases` (README, "Verified on a real node").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/k8s-servers.sh
source scripts/k8s-servers.sh

NODE_NAME=gp-node
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
BRIDGE=gp-cni0

nlog() { printf '== k8s-node: %s\n' "$*" >&2; }

ensure_node_packages() {
  local missing=""
  command -v containerd >/dev/null || missing="$missing containerd"
  command -v runc >/dev/null || missing="$missing runc"
  [ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
  command -v iptables >/dev/null || missing="$missing iptables"
  command -v conntrack >/dev/null || missing="$missing conntrack"
  if [ -n "$missing" ]; then
    apt-get update -qq
    # No service is started in a container without an init; the packages' own units stay off.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not happen within ${secs}s"
}

node_start() {
  local dir=$1
  [ -n "$dir" ] || die "start needs a directory"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  ensure_node_packages
  eval "$(node_paths)"
  local t0=$SECONDS

  # The host side of the pod network: forwarding, bridged traffic through iptables (for
  # kube-proxy's rules), and the bridge with the node's address.
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null \
    || die "cannot enable forwarding and bridge netfilter (br_netfilter)"
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  echo "$BRIDGE" >"$dir/bridge"

  # The API servers, as for the other tests, reachable from pods through the router.
  K8S_NODE_IP=$NODE_IP start "$dir/servers"
  # shellcheck disable=SC1091
  source "$dir/servers/env"
  local kc="$dir/servers/admin-direct.kubeconfig"

  # containerd with its own root, state and socket; runc; the bridge CNI.
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam"
  cat >"$dir/cni/net.d/10-gp-pods.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "gp-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM's root lacks CAP_SYS_RESOURCE: runc could not lower oom_score_adj, and every pod
  # sandbox would fail ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
EOF
  containerd --config "$dir/containerd/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  local ctr=(ctr --address "$dir/containerd/containerd.sock" -n k8s.io)
  wait_for 30 "containerd's socket" "${ctr[@]}" version
  local tar
  for tar in "$IMAGES_DIR"/*.tar; do
    "${ctr[@]}" images import "$tar" >/dev/null || die "ctr could not import $tar"
  done

  # The node's components, each a process of its own with a kubeconfig for the 1.20 server.
  mkdir -p "$dir/kubelet/pki" "$dir/kubelet/plugins"
  "$KUBELET" --kubeconfig="$kc" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --container-runtime=remote --container-runtime-endpoint="unix://$dir/containerd/containerd.sock" \
    --pod-infra-container-image="$PAUSE_IMAGE" --image-pull-progress-deadline=2m \
    --cgroup-driver=cgroupfs --fail-swap-on=false --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" \
    --volume-plugin-dir="$dir/kubelet/plugins" --read-only-port=0 --address="$NODE_IP" \
    --cluster-domain=cluster.local --serialize-image-pulls=false \
    --eviction-hard='memory.available<100Mi,nodefs.available<2%,imagefs.available<2%' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --node-status-update-frequency=4s --sync-frequency=10s \
    >"$dir/kubelet.log" 2>&1 &
  echo $! >"$dir/kubelet.pid"
  "$KUBE_CONTROLLER_MANAGER" --kubeconfig="$kc" --leader-elect=false --port=0 \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" \
    --service-account-private-key-file="$dir/servers/sa.key" --root-ca-file="$dir/servers/ca.crt" \
    --use-service-account-credentials=false --cluster-cidr="$CLUSTER_CIDR" --allocate-node-cidrs=false \
    --node-monitor-grace-period=20s --pod-eviction-timeout=30s \
    >"$dir/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"
  "$KUBE_SCHEDULER" --kubeconfig="$kc" --leader-elect=false --port=0 \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" >"$dir/kube-scheduler.log" 2>&1 &
  echo $! >"$dir/kube-scheduler.pid"
  # kube-proxy refuses port 0 for its metrics and health endpoints: real ports on loopback. It
  # leaves the conntrack sysctls alone (they are the machine's).
  local kp_health; kp_health=$(free_port)
  "$KUBE_PROXY" --kubeconfig="$kc" --hostname-override="$NODE_NAME" --proxy-mode=iptables \
    --cluster-cidr="$CLUSTER_CIDR" --metrics-bind-address="127.0.0.1:$(free_port)" \
    --healthz-bind-address="127.0.0.1:$kp_health" --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    >"$dir/kube-proxy.log" 2>&1 &
  echo $! >"$dir/kube-proxy.pid"

  local kubectl=("$KUBECTL" --kubeconfig "$dir/servers/admin.kubeconfig")
  wait_for 90 "node $NODE_NAME Ready" \
    sh -c "'$KUBECTL' --kubeconfig '$dir/servers/admin.kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  wait_for 30 "kube-proxy's health endpoint" curl -fs "http://127.0.0.1:$kp_health/healthz"
  wait_for 60 "the default ServiceAccount's token" \
    sh -c "'$KUBECTL' --kubeconfig '$dir/servers/admin.kubeconfig' -n default get serviceaccount default -o jsonpath='{.secrets[0].name}' | grep -q ."
  local p
  for p in containerd kubelet kube-controller-manager kube-scheduler kube-proxy; do
    kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null || { tail -20 "$dir/$p.log" >&2; die "$p exited"; }
  done

  {
    cat "$dir/servers/env"
    echo "NODE_DIR=$dir"
    echo "NODE_NAME=$NODE_NAME"
    echo "NODE_IP=$NODE_IP"
    echo "KUBECTL=$KUBECTL"
    echo "KUBECONFIG=$dir/servers/admin.kubeconfig"
    echo "KUBECONFIG_DIRECT=$kc"
    echo "CONTAINERD_ADDRESS=$dir/containerd/containerd.sock"
    cat "$IMAGES_DIR/images.env"
  } >"$dir/node.env"
  nlog "one node up in $((SECONDS - t0)) s: $dir/node.env (kubectl --kubeconfig $dir/servers/admin.kubeconfig)"
}

node_stop() {
  local dir=$1 f pid
  [ -n "$dir" ] || die "stop needs a directory"
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  for f in kubelet kube-proxy kube-scheduler kube-controller-manager; do
    [ -f "$dir/$f.pid" ] && kill "$(cat "$dir/$f.pid")" 2>/dev/null || true
  done
  # Every container of this containerd, then containerd and its shims.
  if [ -f "$dir/containerd.pid" ] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
    local ctr=(ctr --address "$dir/containerd/containerd.sock" -n k8s.io) t
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    kill "$(cat "$dir/containerd.pid")" 2>/dev/null || true
  fi
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/containerd/containerd.sock" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for f in kubelet kube-proxy kube-scheduler kube-controller-manager containerd; do
    [ -f "$dir/$f.pid" ] && kill -9 "$(cat "$dir/$f.pid")" 2>/dev/null || true
  done
  # kube-proxy's iptables rules, the pods' network namespaces and the bridge.
  if [ -f "$dir/kube-proxy.pid" ]; then
    eval "$(node_paths)"
    "$KUBE_PROXY" --cleanup >/dev/null 2>&1 || true
    # The kubelet's own chains (KUBE-MARK-*, canaries), which kube-proxy leaves.
    if iptables-save 2>/dev/null | grep -q KUBE-; then
      iptables-save | grep -v KUBE- | iptables-restore || true
    fi
  fi
  for f in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$f" 2>/dev/null || true; done
  [ -f "$dir/bridge" ] && ip link del "$(cat "$dir/bridge")" 2>/dev/null || true
  # Mounts under DIR (volumes, snapshots), deepest first.
  awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  [ -d "$dir/servers" ] && stop "$dir/servers"
  return 0
}

case "${1:-}" in
  build)
    bash scripts/k8s-servers.sh build-node >/dev/null
    bash scripts/k8s-images.sh build ;;
  start)
    IMAGES_DIR=${IMAGES_DIR:-"$2/images"}
    [ -f "$IMAGES_DIR/images.env" ] || bash scripts/k8s-images.sh export "$IMAGES_DIR"
    # shellcheck disable=SC1091
    source "$IMAGES_DIR/images.env"
    node_start "$2" ;;
  stop) node_stop "${2:-}" ;;
  *) echo "usage: $0 build|start DIR|stop DIR" >&2; exit 2 ;;
esac
