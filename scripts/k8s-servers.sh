#!/usr/bin/env bash
# Real Kubernetes API servers for the tests, built from Debian's packages alone.
#
#   bash scripts/k8s-servers.sh build      build (or find in the cache) both servers; prints their paths
#   bash scripts/k8s-servers.sh paths      print KUBE_APISERVER=... APIEXT_APISERVER=... ETCD=... (build first)
#   bash scripts/k8s-servers.sh start DIR  start them on free loopback ports; writes DIR/env
#   bash scripts/k8s-servers.sh stop DIR   stop what `start DIR` started
#
# scripts/test.sh starts them once for the test run (tests/src/k8s.rs reads DIR/env): etcd,
# kube-apiserver 1.20.2 (core API, RBAC, Events, Leases; no CEL) and apiextensions-apiserver
# 0.36.4 (Kubernetes 1.36's CRD server with CEL and its cost estimator), behind an nginx path
# router, so a client sees one API server whose custom resources get real CEL admission.
#
# Binaries are cached outside the clone, keyed by version, under
# ${GEMINI_PROXY_CACHE:-~/.cache/gemini-proxy}/k8s/: a cold build took 6 to 10 minutes on these
# 2 cores (up to 30 reported elsewhere), a warm one nothing. The system's apt sources are never
# changed: every download uses a private apt configuration and every package is unpacked with
# `dpkg -x` into a private root.
set -euo pipefail

KUBE_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"   # bookworm's source package `kubernetes`
KUBE_VERSION="1.20.2"
APIEXT_VERSION="0.36.4"                               # sid's golang-k8s-apiextensions-apiserver-dev
CACHE="${GEMINI_PROXY_CACHE:-$HOME/.cache/gemini-proxy}/k8s"
KUBE_DIR="$CACHE/kube-apiserver-$KUBE_VERSION"
APIEXT_DIR="$CACHE/apiextensions-apiserver-$APIEXT_VERSION"
NODE_DIR="$CACHE/kube-node-$KUBE_VERSION"

log() { printf '== k8s-servers: %s\n' "$*" >&2; }
die() { printf 'k8s-servers: ERROR: %s\n' "$*" >&2; exit 1; }

# A private apt configuration: its own sources, lists and cache; the system's stay untouched.
private_apt() { # private_apt DIR SOURCES_TEXT
  local dir=$1
  mkdir -p "$dir/etc/sources.list.d" "$dir/etc/preferences.d" "$dir/state/lists/partial" "$dir/cache/archives/partial"
  printf '%s\n' "$2" >"$dir/etc/sources.list"
  cat >"$dir/apt.conf" <<EOF
Dir::State "$dir/state";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$dir/cache";
Dir::Etc::SourceList "$dir/etc/sources.list";
Dir::Etc::SourceParts "$dir/etc/sources.list.d";
Dir::Etc::Preferences "$dir/etc/preferences";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
APT::Get::AllowUnauthenticated "false";
Acquire::Retries "3";
APT::Sandbox::User "root";
EOF
  APT_CONFIG="$dir/apt.conf" apt-get update -qq >/dev/null || die "apt-get update failed for $dir"
}

# Download PACKAGES (with what they need that the system lacks) and unpack them into ROOT.
unpack_into() { # unpack_into APTDIR ROOT PACKAGES...
  local apt=$1 root=$2; shift 2
  rm -f "$apt/cache/archives/"*.deb
  APT_CONFIG="$apt/apt.conf" DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --download-only --no-install-recommends "$@" >/dev/null \
    || die "could not download $*"
  mkdir -p "$root"
  local deb
  for deb in "$apt/cache/archives/"*.deb; do dpkg -x "$deb" "$root"; done
  # Packages the system already has are not downloaded: fetch those we need by name too.
  for p in "$@"; do
    if ! ls "$apt/cache/archives/${p}_"*.deb >/dev/null 2>&1; then
      (cd "$apt/cache/archives" && APT_CONFIG="$apt/apt.conf" apt-get download -qq "$p" >/dev/null) \
        || die "could not download $p"
      dpkg -x "$apt/cache/archives/${p}_"*.deb "$root"
    fi
  done
}

# Bookworm's `kubernetes` source, with Go 1.19 unpacked beside it, ready for `make` in WORK/src.
prepare_kube_source() { # prepare_kube_source WORK
  local work=$1
  private_apt "$work/apt" "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main"
  command -v rsync >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
  unpack_into "$work/apt" "$work/root" golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev
  (cd "$work" && APT_CONFIG="$work/apt/apt.conf" apt-get source -qq --download-only "kubernetes=$KUBE_DEB_VERSION" >/dev/null) \
    || die "apt-get source kubernetes=$KUBE_DEB_VERSION failed (is bookworm's package still served?)"
  local orig; orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -1)
  mkdir -p "$work/src" && tar -xf "$orig" -C "$work/src" --strip-components=1
  [ -d "$work/src/cmd/kube-apiserver" ] || die "the source package has no cmd/kube-apiserver"
  # reflect2 1.0.1 (vendored) crashes on Go >= 1.18; Debian's 1.0.2 works.
  rm -rf "$work/src/vendor/github.com/modern-go/reflect2"
  cp -r "$work/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$work/src/vendor/github.com/modern-go/reflect2"
  [ -x "$work/root/usr/lib/go-1.19/bin/go" ] || die "go 1.19 not unpacked"
}

make_kube() { # make_kube WORK "cmd/a cmd/b ..."
  local work=$1 gobin="$1/root/usr/lib/go-1.19/bin"
  (cd "$work/src" && PATH="$gobin:$PATH" GOROOT="$work/root/usr/lib/go-1.19" GOTOOLCHAIN=local \
    GOFLAGS= GOPATH="$work/gopath" GOCACHE="$work/gocache" \
    make WHAT="$2" >"$work/make.log" 2>&1) || { tail -40 "$work/make.log" >&2; die "build of $2 failed"; }
}

# The node's binaries, from the same source: kubelet, kube-proxy, kube-scheduler,
# kube-controller-manager, kubectl (the server's own version), and the pause container's
# program (the source's build/pause, compiled statically).
NODE_BINARIES="kubelet kube-proxy kube-scheduler kube-controller-manager kubectl"
node_built() {
  local b
  for b in $NODE_BINARIES pause; do [ -x "$NODE_DIR/$b" ] || return 1; done
}

# Everything from bookworm's source that is not cached yet, in one `make`.
build_kube() {
  local want="" b
  [ -x "$KUBE_DIR/kube-apiserver" ] || want="cmd/kube-apiserver"
  if [ "${1:-}" = node ] && ! node_built; then
    for b in $NODE_BINARIES; do want="$want cmd/$b"; done
  fi
  [ -n "$want" ] || return 0
  log "building$(printf ' %s' $want | sed 's#cmd/##g') $KUBE_VERSION (minutes, once; cached in $CACHE)"
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/kube-build.XXXXXX")
  prepare_kube_source "$work"
  make_kube "$work" "${want# }"
  if [ ! -x "$KUBE_DIR/kube-apiserver" ]; then
    mkdir -p "$KUBE_DIR"
    install -m 0755 "$work/src/_output/bin/kube-apiserver" "$KUBE_DIR/kube-apiserver.tmp"
    mv "$KUBE_DIR/kube-apiserver.tmp" "$KUBE_DIR/kube-apiserver"
  fi
  if [ "${1:-}" = node ] && ! node_built; then
    mkdir -p "$NODE_DIR"
    local pause_c; pause_c=$(find "$work/src/build/pause" -name pause.c | grep -v windows | head -1)
    [ -n "$pause_c" ] || die "no build/pause/.../pause.c in the source"
    gcc -Os -static -o "$NODE_DIR/pause.tmp" "$pause_c" || die "could not compile pause.c"
    for b in $NODE_BINARIES; do
      install -m 0755 "$work/src/_output/bin/$b" "$NODE_DIR/$b.tmp"
    done
    for b in $NODE_BINARIES pause; do mv "$NODE_DIR/$b.tmp" "$NODE_DIR/$b"; done
  fi
  rm -rf "$work"
}

build_apiext_apiserver() {
  [ -x "$APIEXT_DIR/apiextensions-apiserver" ] && return 0
  log "building apiextensions-apiserver $APIEXT_VERSION (minutes, once; cached in $APIEXT_DIR)"
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/apiext-build.XXXXXX")
  private_apt "$work/apt" "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main"
  local have
  have=$(APT_CONFIG="$work/apt/apt.conf" apt-cache policy golang-k8s-apiextensions-apiserver-dev | awk '/Candidate:/ {print $2}')
  log "sid offers golang-k8s-apiextensions-apiserver-dev ${have:-<none>}"
  [ -n "$have" ] && [ "$have" != "(none)" ] || die "sid no longer has golang-k8s-apiextensions-apiserver-dev"
  case "$have" in "$APIEXT_VERSION"*) ;; *) log "note: building $have, not $APIEXT_VERSION (sid moved); cached under $APIEXT_VERSION's name";; esac
  unpack_into "$work/apt" "$work/root" golang-k8s-apiextensions-apiserver-dev golang-1.26-go golang-1.26-src
  local src="$work/root/usr/share/gocode/src/k8s.io/apiextensions-apiserver"
  [ -d "$src" ] || die "apiextensions-apiserver source not found in the package"
  (cd "$src" && GO111MODULE=off GOPATH="$work/root/usr/share/gocode" GOTOOLCHAIN=local CGO_ENABLED=0 \
    GOROOT="$work/root/usr/lib/go-1.26" GOCACHE="$work/gocache" GOFLAGS= \
    "$work/root/usr/lib/go-1.26/bin/go" build -o "$work/apiextensions-apiserver" . >"$work/build.log" 2>&1) \
    || { tail -40 "$work/build.log" >&2; die "apiextensions-apiserver build failed"; }
  mkdir -p "$APIEXT_DIR"
  install -m 0755 "$work/apiextensions-apiserver" "$APIEXT_DIR/apiextensions-apiserver.tmp"
  mv "$APIEXT_DIR/apiextensions-apiserver.tmp" "$APIEXT_DIR/apiextensions-apiserver"
  echo "$have" >"$APIEXT_DIR/debian-version"
  rm -rf "$work"
}

ensure_etcd() {
  if ! command -v etcd >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  fi
  command -v etcd >/dev/null || die "etcd not installed"
}

node_paths() {
  node_built || die "node binaries not built: bash scripts/k8s-servers.sh build-node"
  local b
  for b in $NODE_BINARIES pause; do printf '%s=%s\n' "$(echo "$b" | tr a-z- A-Z_)" "$NODE_DIR/$b"; done
}

paths() {
  [ -x "$KUBE_DIR/kube-apiserver" ] || die "kube-apiserver not built: bash scripts/k8s-servers.sh build"
  [ -x "$APIEXT_DIR/apiextensions-apiserver" ] || die "apiextensions-apiserver not built: bash scripts/k8s-servers.sh build"
  echo "KUBE_APISERVER=$KUBE_DIR/kube-apiserver"
  echo "APIEXT_APISERVER=$APIEXT_DIR/apiextensions-apiserver"
  echo "ETCD=$(command -v etcd)"
}

# shellcheck source=scripts/k8s-start.inc.sh
source "$(dirname "${BASH_SOURCE[0]}")/k8s-start.inc.sh"

# Sourced (by scripts/k8s-node.sh) for its functions only.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
  build)
    ensure_etcd
    command -v openssl >/dev/null || die "openssl missing"
    # The two builds are independent; on 2 cores one after the other is as fast as both at once.
    build_kube
    build_apiext_apiserver
    paths ;;
  build-node)
    ensure_etcd
    build_kube node
    build_apiext_apiserver
    paths
    node_paths ;;
  build-kube) build_kube ;;
  build-apiext) build_apiext_apiserver ;;
  paths) paths ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  node-paths) node_paths ;;
  *) echo "usage: $0 build|build-node|paths|node-paths|start DIR|stop DIR" >&2; exit 2 ;;
esac
