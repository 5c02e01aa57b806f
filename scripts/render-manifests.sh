#!/usr/bin/env bash
# Renders manifests/install.yaml (plain `kubectl apply` install) from the chart.
# The state key and Redis password Secrets are not rendered (they would be random): create them
# first, see the file's head.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM=${HELM:-helm}
{
  cat <<'HEAD'
# gemini-proxy, plain-YAML install rendered from charts/gemini-proxy (scripts/render-manifests.sh).
# Namespace gemini-proxy. Before applying, create the CRD, the state encryption key and the
# passwords of Redis's ACL users `operator` and `proxy`:
#   kubectl apply -f crds/geminikeygroup.yaml
#   kubectl create namespace gemini-proxy
#   kubectl -n gemini-proxy create secret generic gemini-proxy-state-key \
#     --from-literal=key="$(head -c 32 /dev/urandom | base64)"
#   kubectl -n gemini-proxy create secret generic gemini-proxy-redis-auth \
#     --from-literal=operator-password="$(LC_ALL=C tr -dc A-Za-z0-9 </dev/urandom | head -c 40)" \
#     --from-literal=proxy-password="$(LC_ALL=C tr -dc A-Za-z0-9 </dev/urandom | head -c 40)"
#   kubectl apply -f manifests/install.yaml
# To uninstall: delete your GeminiKeyGroups first (the operator removes their finalizers), or
# delete the operator and then run `gemini-proxy-operator release` (what the chart's pre-delete
# hook does), then `kubectl delete -f manifests/install.yaml`.
HEAD
  # No hooks: a plain apply has no uninstall phase (and would run the pre-delete Job at once).
  "$HELM" template gemini-proxy charts/gemini-proxy --namespace gemini-proxy --no-hooks \
    --set stateKey.existingSecret=gemini-proxy-state-key \
    --set redis.bundled.auth.existingSecret=gemini-proxy-redis-auth
} > manifests/install.yaml
