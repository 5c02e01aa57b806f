# Sourced by scripts/k8s-servers.sh: starting and stopping the test servers.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # wait_http URL SECONDS TOKEN
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if curl -fsk -o /dev/null -H "Authorization: Bearer $3" "$1"; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Starts etcd, kube-apiserver 1.20, apiextensions-apiserver 1.36 and an nginx path router in DIR
# (loopback, free ports) and writes DIR/env. The router sends /apis/gemini-proxy.io/ and
# /apis/apiextensions.k8s.io/ to the 1.36 server (CRDs with CEL) and the rest to 1.20.
# With K8S_NODE_IP set (scripts/k8s-node.sh), the router also listens on that address, the
# serving certificate names it and the `kubernetes` Service's ClusterIP, and that Service's
# endpoint is the router: pods reach both servers through it.
start() {
  local dir=$1
  [ -n "$dir" ] || die "start needs a directory"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  eval "$(paths)"
  ensure_etcd
  if ! command -v nginx >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  fi
  command -v curl >/dev/null || die "curl missing"
  local etcd_port etcd_peer kube_port apiext_port router_port
  etcd_port=$(free_port); etcd_peer=$(free_port); kube_port=$(free_port)
  apiext_port=$(free_port); router_port=$(free_port)

  # A CA, one serving certificate for 127.0.0.1 (all three servers), a service-account key.
  (cd "$dir" &&
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3 -subj "/CN=gemini-proxy-test-ca" 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj "/CN=127.0.0.1" 2>/dev/null &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
      "${K8S_NODE_IP:+,IP:$K8S_NODE_IP,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local}" >serving.ext &&
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out serving.crt -days 3 -extfile serving.ext 2>/dev/null &&
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null) \
    || die "openssl failed"

  # Token users: an admin, and identities the tests bind RBAC to (as ServiceAccounts would be).
  local admin operator trimmed tenant uninstall
  admin=$(openssl rand -hex 16); operator=$(openssl rand -hex 16)
  trimmed=$(openssl rand -hex 16); tenant=$(openssl rand -hex 16); uninstall=$(openssl rand -hex 16)
  {
    echo "$admin,admin,uid-admin,\"system:masters\""
    echo "$operator,system:serviceaccount:gemini-proxy:gemini-proxy-operator,uid-operator,\"system:serviceaccounts,system:serviceaccounts:gemini-proxy\""
    echo "$trimmed,system:serviceaccount:gemini-proxy:trimmed-operator,uid-trimmed,\"system:serviceaccounts,system:serviceaccounts:gemini-proxy\""
    echo "$tenant,tenant,uid-tenant,\"tenants\""
    echo "$uninstall,system:serviceaccount:gemini-proxy:gemini-proxy-uninstall,uid-uninstall,\"system:serviceaccounts,system:serviceaccounts:gemini-proxy\""
  } >"$dir/tokens.csv"
  # Audit: every write (and who made it), metadata only.
  printf '%s\n' 'apiVersion: audit.k8s.io/v1' 'kind: Policy' 'omitStages: ["RequestReceived"]' 'rules:' \
    '  - level: None' '    verbs: ["get", "list", "watch"]' '  - level: Metadata' >"$dir/audit-policy.yaml"

  etcd --name test --data-dir "$dir/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "test=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"

  "$KUBE_APISERVER" --bind-address=127.0.0.1 --secure-port="$kube_port" --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$etcd_port" --etcd-prefix=/registry \
    --tls-cert-file="$dir/serving.crt" --tls-private-key-file="$dir/serving.key" --client-ca-file="$dir/ca.crt" \
    --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC \
    --service-cluster-ip-range=10.96.0.0/24 --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --endpoint-reconciler-type=none --advertise-address=127.0.0.1 \
    --kubelet-preferred-address-types=InternalIP \
    --audit-log-path="$dir/audit-kube.log" --audit-policy-file="$dir/audit-policy.yaml" \
    >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  wait_http "https://127.0.0.1:$kube_port/readyz" 90 "$admin" \
    || { tail -30 "$dir/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }

  {
    echo "apiVersion: v1"
    echo "kind: Config"
    echo "clusters: [{name: kube, cluster: {server: \"https://127.0.0.1:$kube_port\", certificate-authority: \"$dir/ca.crt\"}}]"
    echo "users: [{name: admin, user: {token: \"$admin\"}}]"
    echo "contexts: [{name: admin, context: {cluster: kube, user: admin}}]"
    echo "current-context: admin"
  } >"$dir/admin-direct.kubeconfig"
  "$APIEXT_APISERVER" --etcd-servers="http://127.0.0.1:$etcd_port" --etcd-prefix=/apiext \
    --bind-address=127.0.0.1 --secure-port="$apiext_port" \
    --tls-cert-file="$dir/serving.crt" --tls-private-key-file="$dir/serving.key" \
    --kubeconfig="$dir/admin-direct.kubeconfig" --authentication-kubeconfig="$dir/admin-direct.kubeconfig" \
    --authorization-kubeconfig="$dir/admin-direct.kubeconfig" \
    --disable-admission-plugins=ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
    --enable-priority-and-fairness=false \
    --audit-log-path="$dir/audit-apiext.log" --audit-policy-file="$dir/audit-policy.yaml" \
    >"$dir/apiextensions-apiserver.log" 2>&1 &
  echo $! >"$dir/apiextensions-apiserver.pid"
  wait_http "https://127.0.0.1:$apiext_port/apis/apiextensions.k8s.io/v1/customresourcedefinitions" 90 "$admin" \
    || { tail -30 "$dir/apiextensions-apiserver.log" >&2; die "apiextensions-apiserver did not answer"; }

  mkdir -p "$dir/nginx"
  sed -e "s#@DIR@#$dir#g" -e "s#@KUBE@#$kube_port#g" -e "s#@APIEXT@#$apiext_port#g" \
    -e "s#@ROUTER@#$router_port#g" -e "s#@NODE_LISTEN@#${K8S_NODE_IP:+listen $K8S_NODE_IP:$router_port ssl;}#g" "$(dirname "${BASH_SOURCE[0]}")/k8s-router.nginx.conf" >"$dir/nginx.conf"
  nginx -c "$dir/nginx.conf" -p "$dir/nginx" >"$dir/nginx.log" 2>&1 &
  echo $! >"$dir/nginx.pid.main"
  wait_http "https://127.0.0.1:$router_port/apis/apiextensions.k8s.io/v1/customresourcedefinitions" 30 "$admin" \
    || { cat "$dir/nginx-error.log" "$dir/nginx.log" >&2; die "the nginx router did not answer"; }

  if [ -n "${K8S_NODE_IP:-}" ]; then
    # The `kubernetes` Service (made by the server) gets the router as its one endpoint.
    wait_http "https://127.0.0.1:$kube_port/api/v1/namespaces/default/services/kubernetes" 30 "$admin" \
      || die "the kubernetes Service was not created"
    curl -fsk -o /dev/null -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
      "https://127.0.0.1:$kube_port/api/v1/namespaces/default/endpoints" \
      -d "{\"metadata\":{\"name\":\"kubernetes\"},\"subsets\":[{\"addresses\":[{\"ip\":\"$K8S_NODE_IP\"}],\"ports\":[{\"name\":\"https\",\"port\":$router_port,\"protocol\":\"TCP\"}]}]}" \
      || die "could not point the kubernetes Service at the router"
  fi

  local url="https://127.0.0.1:$router_port" who token
  for who in admin:$admin operator:$operator trimmed:$trimmed tenant:$tenant uninstall:$uninstall; do
    token=${who#*:}
    {
      echo "apiVersion: v1"
      echo "kind: Config"
      echo "clusters: [{name: test, cluster: {server: \"$url\", certificate-authority: \"$dir/ca.crt\"}}]"
      echo "users: [{name: ${who%%:*}, user: {token: \"$token\"}}]"
      echo "contexts: [{name: ${who%%:*}, context: {cluster: test, user: ${who%%:*}, namespace: default}}]"
      echo "current-context: ${who%%:*}"
    } >"$dir/${who%%:*}.kubeconfig"
  done
  {
    echo "K8S_URL=$url"
    echo "K8S_KUBE_URL=https://127.0.0.1:$kube_port"
    echo "K8S_APIEXT_URL=https://127.0.0.1:$apiext_port"
    echo "K8S_CA=$dir/ca.crt"
    echo "K8S_ADMIN_TOKEN=$admin"
    echo "K8S_OPERATOR_TOKEN=$operator"
    echo "K8S_TRIMMED_TOKEN=$trimmed"
    echo "K8S_TENANT_TOKEN=$tenant"
    echo "K8S_AUDIT_KUBE=$dir/audit-kube.log"
    echo "K8S_AUDIT_APIEXT=$dir/audit-apiext.log"
    echo "K8S_DIR=$dir"
  } >"$dir/env"
  log "servers up in $dir: $url (CRDs and GeminiKeyGroups on 1.36, the rest on 1.20)"
}

stop() {
  local dir=$1 f
  [ -n "$dir" ] || die "stop needs a directory"
  for f in nginx.pid.main apiextensions-apiserver.pid kube-apiserver.pid etcd.pid; do
    [ -f "$dir/$f" ] && kill "$(cat "$dir/$f")" 2>/dev/null || true
  done
  sleep 0.5
  for f in nginx.pid.main apiextensions-apiserver.pid kube-apiserver.pid etcd.pid; do
    [ -f "$dir/$f" ] && kill -9 "$(cat "$dir/$f")" 2>/dev/null || true
  done
  return 0
}
