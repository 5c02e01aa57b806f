#!/usr/bin/env bash
# End to end on a real cluster (kind), for users' CI. NOT RUN HERE: these machines have no
# Docker engine and no cluster. Needs docker, kind, kubectl and helm.
#
#   bash tests/e2e/kind.sh
#
# Builds both images, installs the chart with the bundled Redis (`--wait` returns: proxies are
# ready once they have loaded the store, with or without groups), runs the mock Gemini upstream
# in the cluster, applies a GeminiKeyGroup and checks: the group becomes Ready with its key
# Active, a request through the Service reaches the mock with the key, `helm test` passes, and
# an uninstall with the group still present leaves nothing stuck.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-gemini-proxy-e2e}
TAG=e2e

kind create cluster --name "$CLUSTER" --wait 120s
trap 'kind delete cluster --name "$CLUSTER"' EXIT

docker build -f Dockerfile.proxy -t ghcr.io/gemini-proxy/proxy:$TAG .
docker build -f Dockerfile.operator -t ghcr.io/gemini-proxy/operator:$TAG .
cat > /tmp/Dockerfile.mock <<'DOCKER'
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p gemini-proxy-tests --bin mock-gemini
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mock-gemini /mock-gemini
ENTRYPOINT ["/mock-gemini", "0.0.0.0:9000"]
DOCKER
docker build -f /tmp/Dockerfile.mock -t mock-gemini:$TAG .
for img in ghcr.io/gemini-proxy/proxy:$TAG ghcr.io/gemini-proxy/operator:$TAG mock-gemini:$TAG; do
  kind load docker-image --name "$CLUSTER" "$img"
done

# The mock upstream is an in-cluster http:// Service on port 9000: allowed as an upstream host,
# reachable through the proxies' NetworkPolicy, and its Open group served as the default.
helm install gemini-proxy charts/gemini-proxy --namespace gemini-proxy --create-namespace \
  --set image.tag=$TAG --set proxy.defaultGroup=team-a/gemini --set proxy.allowOpenGroups=true \
  --set 'proxy.allowedUpstreamHosts={mock-gemini.team-a.svc}' \
  --set-json 'networkPolicy.proxy.extraEgress=[{"ports":[{"port":9000,"protocol":"TCP"}]}]' \
  --wait --timeout 5m

kubectl create namespace team-a
kubectl -n team-a run mock-gemini --image=mock-gemini:$TAG --port 9000 --expose
kubectl -n team-a create secret generic gemini-keys --from-literal=key-1=fake-e2e-key
kubectl -n team-a label secret gemini-keys gemini-proxy.io/opt-in=true
kubectl apply -f - <<'YAML'
apiVersion: gemini-proxy.io/v1alpha1
kind: GeminiKeyGroup
metadata: {name: gemini, namespace: team-a}
spec:
  upstream: {url: "http://mock-gemini.team-a.svc:9000"}
  keys: [{secret: gemini-keys, entry: key-1}]
  access: {mode: Open}
YAML
kubectl -n team-a wait gkg/gemini --for=condition=Ready --timeout=120s
kubectl get gkg -A
kubectl -n team-a run caller --rm -i --restart=Never --image=docker.io/curlimages/curl:8.11.1 -- \
  curl --fail -s -X POST -d '{}' \
  http://gemini-proxy.gemini-proxy.svc:8080/v1beta/models/gemini-2.5-flash:generateContent
helm test gemini-proxy -n gemini-proxy
# Uninstall with a group still present: the pre-delete hook stops the operator and takes its
# finalizer off, so the namespace and the group can be deleted afterwards.
helm uninstall gemini-proxy -n gemini-proxy --wait --timeout 2m
kubectl delete namespace team-a --timeout=60s
echo "e2e passed"
