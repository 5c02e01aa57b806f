#!/usr/bin/env bash
# The test command: installs what the tests need, starts what must run, runs every test.
# Works on a fresh machine (Debian, root, Rust toolchain present); CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Python venv with the official SDKs, for proxy/tests/sdk.rs.
log "python SDKs (openai, google-genai) in .venv"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
export GEMINI_PROXY_TEST_PYTHON="$PWD/.venv/bin/python"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --locked
