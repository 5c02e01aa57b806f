#!/usr/bin/env bash
# Container images for the one-node cluster (scripts/k8s-node.sh), built here with buildah:
# no image registry is reachable from these machines.
#
#   bash scripts/k8s-images.sh build        every image below (base stand-ins cached, the
#                                           project's images built from its Dockerfiles)
#   bash scripts/k8s-images.sh export DIR   each image as a docker-archive DIR/<n>.tar, and
#                                           DIR/images.env naming them (for containerd's import)
#
# Base images the Dockerfiles and the chart name cannot be pulled, so stand-ins are built under
# the same names from Debian bookworm, which is what those images are made of:
#   docker.io/library/debian:bookworm        mmdebstrap's minbase root filesystem
#   docker.io/library/rust:1.95-bookworm     that, with gcc, libc6-dev and this machine's Rust
#                                            1.95 toolchain where the official image keeps it
#                                            (RUSTUP_HOME /usr/local/rustup, CARGO_HOME
#                                            /usr/local/cargo on PATH)
#   gcr.io/distroless/cc-debian12:nonroot    glibc, libgcc, libstdc++, libssl3, CA certificates,
#                                            tzdata, /etc/passwd with nonroot 65532; no shell;
#                                            USER 65532, as distroless's nonroot tag
#   docker.io/library/redis:7.4-alpine       Debian's redis-server and redis-cli (7.0) with sh,
#                                            user redis 999 (the chart runs it as 65532)
#   k8s.gcr.io/pause:3.2                     the Kubernetes source's pause.c, static (from the
#                                            node build)
# Each stand-in also trusts the CAs this machine adds (/usr/local/share/ca-certificates), as the
# machine's own tools do: the registries are reached through them here.
# Then every step of Dockerfile.proxy and Dockerfile.operator runs unchanged (`buildah build`).
# Two test images: the mock upstream (tests/src/bin/mock-gemini, built by cargo on the host)
# and an app with the official Python SDK (tests/node/app/).
#
# The stand-ins and buildah's storage (with the Dockerfiles' cached dependency layers) live
# outside the clone, in ${GEMINI_PROXY_CACHE:-~/.cache/gemini-proxy}/buildah, keyed by
# IMAGES_VERSION (bump it when a stand-in changes).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES_VERSION=2
CACHE="${GEMINI_PROXY_CACHE:-$HOME/.cache/gemini-proxy}"
STORE="$CACHE/buildah"
B=(buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver overlay)
TAG=node-test
RUST_IMAGE=docker.io/library/rust:1.95-bookworm
DEBIAN_IMAGE=docker.io/library/debian:bookworm
DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot
REDIS_IMAGE=docker.io/library/redis:7.4-alpine
PAUSE_IMAGE=k8s.gcr.io/pause:3.2
PROXY_IMAGE=ghcr.io/gemini-proxy/proxy:$TAG
OPERATOR_IMAGE=ghcr.io/gemini-proxy/operator:$TAG
MOCK_IMAGE=gemini-proxy.test/mock-gemini:$TAG
APP_IMAGE=gemini-proxy.test/sdk-app:$TAG

log() { printf '== k8s-images: %s\n' "$*" >&2; }
die() { printf 'k8s-images: ERROR: %s\n' "$*" >&2; exit 1; }

ensure_tools() {
  if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap uidmap >/dev/null
  fi
  mkdir -p "$STORE"
  # A new IMAGES_VERSION starts from an empty storage: nothing built on an older stand-in is
  # reused, and nothing of it is kept.
  if [ "$(cat "$STORE/version" 2>/dev/null)" != "$IMAGES_VERSION" ]; then
    "${B[@]}" rmi -a -f >/dev/null 2>&1 || true
    echo "$IMAGES_VERSION" >"$STORE/version"
  fi
}

have() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
# A stand-in is rebuilt when IMAGES_VERSION changes: its label says which version made it.
have_version() {
  have "$1" && [ "$("${B[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "gemini-proxy.test/images"}}' "$1" 2>/dev/null)" = "$IMAGES_VERSION" ]
}

standin_debian() {
  have_version "$DEBIAN_IMAGE" && return 0
  log "stand-in $DEBIAN_IMAGE (mmdebstrap minbase)"
  local tar="$STORE/bookworm-minbase.tar"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tar" \
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main" \
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" \
    || die "mmdebstrap failed"
  local c; c=$("${B[@]}" from scratch)
  "${B[@]}" add "$c" "$tar" / >/dev/null
  # The CAs this machine trusts besides Debian's (a TLS-inspecting egress reaches the package
  # registries here): builds inside the images fetch crates and wheels through it.
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    "${B[@]}" copy "$c" /usr/local/share/ca-certificates/ /usr/local/share/ca-certificates/ >/dev/null
    in_ctr "$c" -- update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the stand-in"
  fi
  "${B[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label gemini-proxy.test/images=$IMAGES_VERSION "$c"
  "${B[@]}" commit -q --rm "$c" "$DEBIAN_IMAGE" >/dev/null
  rm -f "$tar"
}

# apt-get inside a working container (chroot isolation, the host's network).
in_ctr() { "${B[@]}" run --isolation chroot --network host "$@"; }

standin_rust() {
  have_version "$RUST_IMAGE" && return 0
  log "stand-in $RUST_IMAGE (bookworm, gcc, this machine's Rust toolchain)"
  local sysroot; sysroot=$(rustc --print sysroot)
  [ "$(rustc --version | awk '{print $2}')" = 1.95.0 ] || die "the stand-in needs Rust 1.95.0 here, found $(rustc --version)"
  local c; c=$("${B[@]}" from --pull=never "$DEBIAN_IMAGE")
  in_ctr "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev make pkg-config ca-certificates git >/dev/null && rm -rf /var/lib/apt/lists/*'
  local tc=/usr/local/rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu
  in_ctr "$c" -- mkdir -p "$tc" /usr/local/cargo/bin
  local part
  for part in bin lib libexec; do "${B[@]}" copy "$c" "$sysroot/$part" "$tc/$part" >/dev/null; done
  in_ctr "$c" -- sh -c "for b in cargo rustc rustdoc; do ln -s $tc/bin/\$b /usr/local/cargo/bin/\$b; done"
  "${B[@]}" config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION=1.95.0 --label gemini-proxy.test/images=$IMAGES_VERSION "$c"
  "${B[@]}" commit -q --rm "$c" "$RUST_IMAGE" >/dev/null
}

standin_distroless() {
  have_version "$DISTROLESS_IMAGE" && return 0
  log "stand-in $DISTROLESS_IMAGE (glibc, libgcc, libstdc++, libssl3, CA certificates; no shell)"
  local c root; c=$("${B[@]}" from --pull=never "$DEBIAN_IMAGE")
  # The packages distroless's cc image is made of, unpacked into an empty root.
  in_ctr "$c" -- sh -c 'set -e; apt-get update -qq; mkdir -p /distroless /tmp/debs; cd /tmp/debs
    apt-get download -qq libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates tzdata netbase base-files
    for d in *.deb; do dpkg -x "$d" /distroless; done
    cp /etc/ssl/certs/ca-certificates.crt /distroless/etc/ssl/certs/ca-certificates.crt
    rm -rf /distroless/usr/share/doc /distroless/usr/share/man /distroless/usr/share/lintian /distroless/bin/sh
    printf "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >/distroless/etc/passwd
    printf "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n" >/distroless/etc/group
    mkdir -p /distroless/home/nonroot /distroless/tmp && chown 65532:65532 /distroless/home/nonroot && chmod 1777 /distroless/tmp'
  root=$("${B[@]}" mount "$c")
  local d; d=$("${B[@]}" from scratch)
  "${B[@]}" copy "$d" "$root/distroless/" / >/dev/null
  "${B[@]}" umount "$c" >/dev/null; "${B[@]}" rm "$c" >/dev/null
  "${B[@]}" config --user 65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --label gemini-proxy.test/images=$IMAGES_VERSION "$d"
  "${B[@]}" commit -q --rm "$d" "$DISTROLESS_IMAGE" >/dev/null
}

standin_redis() {
  have_version "$REDIS_IMAGE" && return 0
  log "stand-in $REDIS_IMAGE (Debian's redis-server and redis-cli)"
  local c; c=$("${B[@]}" from --pull=never "$DEBIAN_IMAGE")
  in_ctr "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data'
  "${B[@]}" config --cmd redis-server --workingdir /data --port 6379 --label gemini-proxy.test/images=$IMAGES_VERSION "$c"
  "${B[@]}" commit -q --rm "$c" "$REDIS_IMAGE" >/dev/null
}

standin_pause() {
  have_version "$PAUSE_IMAGE" && return 0
  local pause; pause=$(bash scripts/k8s-servers.sh node-paths | sed -n 's/^PAUSE=//p')
  [ -x "$pause" ] || die "pause not built: bash scripts/k8s-servers.sh build-node"
  log "$PAUSE_IMAGE (static pause from the Kubernetes source)"
  local c; c=$("${B[@]}" from scratch)
  "${B[@]}" copy --chmod 0755 "$c" "$pause" /pause >/dev/null
  "${B[@]}" config --entrypoint '["/pause"]' --user 65535 --label gemini-proxy.test/images=$IMAGES_VERSION "$c"
  "${B[@]}" commit -q --rm "$c" "$PAUSE_IMAGE" >/dev/null
}

# The project's images: its Dockerfiles as shipped, every step run (the dependency layer is
# reused from buildah's storage while no Cargo manifest changes).
project_images() {
  local f img
  for f in proxy:$PROXY_IMAGE operator:$OPERATOR_IMAGE; do
    img=${f#*:}
    log "buildah build -f Dockerfile.${f%%:*} -t $img"
    "${B[@]}" build --quiet --isolation chroot --network host --layers --pull=never \
      -f "Dockerfile.${f%%:*}" -t "$img" . >"$STORE/build-${f%%:*}.log" 2>&1 \
      || { tail -40 "$STORE/build-${f%%:*}.log" >&2; die "Dockerfile.${f%%:*} failed"; }
    tag_dependency_layers
  done
}

test_images() {
  local mock=target/debug/mock-gemini
  [ -x "$mock" ] || die "$mock missing: cargo build --workspace --bins first"
  log "$MOCK_IMAGE"
  local c; c=$("${B[@]}" from --pull=never "$DISTROLESS_IMAGE")
  "${B[@]}" copy --chmod 0755 "$c" "$mock" /usr/local/bin/mock-gemini >/dev/null
  "${B[@]}" config --entrypoint '["/usr/local/bin/mock-gemini"]' --cmd 0.0.0.0:8000 "$c"
  "${B[@]}" commit -q --rm "$c" "$MOCK_IMAGE" >/dev/null

  local app_base
  app_base="gemini-proxy.test/sdk-base:v$IMAGES_VERSION-$(sha256sum tests/node/app/requirements.txt | cut -c1-12)"
  if ! have "$app_base"; then
    log "$app_base (Python 3 and the official SDKs of tests/node/app/requirements.txt)"
    c=$("${B[@]}" from --pull=never "$DEBIAN_IMAGE")
    in_ctr "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/app'
    "${B[@]}" copy "$c" tests/node/app/requirements.txt /opt/requirements.txt >/dev/null
    in_ctr "$c" -- /opt/app/bin/pip install --quiet --disable-pip-version-check -r /opt/requirements.txt
    "${B[@]}" commit -q --rm "$c" "$app_base" >/dev/null
  fi
  log "$APP_IMAGE"
  c=$("${B[@]}" from --pull=never "$app_base")
  "${B[@]}" copy "$c" tests/node/app/ /opt/app/src/ >/dev/null
  "${B[@]}" config --user 65532 --entrypoint '["/opt/app/bin/python", "-u"]' --cmd /opt/app/src/load.py "$c"
  "${B[@]}" commit -q --rm "$c" "$APP_IMAGE" >/dev/null
}

# The image of each Dockerfile's dependency step is tagged (gemini-proxy.test/cache:<crate>):
# removing an untagged image also removes its untagged parents that are left without
# children, so without a tag pruning the source steps would take the whole cached chain.
tag_dependency_layers() {
  local id last crate
  # (Untagged images with children are "intermediate", without "dangling".)
  for id in $("${B[@]}" images -a -q --no-trunc --filter intermediate=true) \
    $("${B[@]}" images -a -q --no-trunc --filter dangling=true); do
    last=$("${B[@]}" inspect --type image --format '{{range .History}}{{.CreatedBy}}{{"\n"}}{{end}}' "$id" 2>/dev/null | grep . | tail -1) || continue
    case "$last" in *"rm -rf keystore/src"*) ;; *) continue ;; esac
    crate=$(printf '%s' "$last" | grep -o -- '-p gemini-proxy[a-z-]*' | head -1 | cut -c4-)
    [ -n "$crate" ] && "${B[@]}" tag "$id" "gemini-proxy.test/cache:$crate" >/dev/null
  done
}

# What each run leaves behind and no later run reuses: the Dockerfiles' intermediate images
# from the sources on (each run's sources differ), the final stages' intermediates, and
# dependency steps of earlier manifests. The chain up to the tagged dependency steps stays:
# it is the cache the next run's `buildah build --layers` finds.
prune() {
  local id hist n=0
  for id in $("${B[@]}" images -a -q --no-trunc --filter dangling=true); do
    hist=$("${B[@]}" inspect --type image --format '{{range .History}}{{.CreatedBy}}{{"\n"}}{{end}}' "$id" 2>/dev/null) || continue
    if printf '%s\n' "$hist" | grep -q 'rm -rf keystore/src' \
      || printf '%s\n' "$hist" | grep -q 'in /usr/local/bin/gemini-proxy'; then
      "${B[@]}" rmi "$id" >/dev/null 2>&1 && n=$((n + 1))
    fi
  done
  log "pruned $n intermediate images; buildah storage $(du -sh "$STORE/storage" 2>/dev/null | cut -f1)"
}

build() {
  ensure_tools
  standin_debian
  standin_rust
  standin_distroless
  standin_redis
  standin_pause
  test_images
  project_images
  prune
  images_env
}

images_env() {
  local n
  for n in PROXY OPERATOR REDIS PAUSE MOCK APP; do
    eval "printf '%s_IMAGE=%s\n' $n \"\$${n}_IMAGE\""
  done
}

export_images() {
  local dir=$1 n img
  mkdir -p "$dir"
  for n in PROXY OPERATOR REDIS PAUSE MOCK APP; do
    eval "img=\$${n}_IMAGE"
    rm -f "$dir/$n.tar"
    "${B[@]}" push -q "$img" "docker-archive:$dir/$n.tar:$img" >/dev/null || die "could not export $img"
  done
  images_env >"$dir/images.env"
}

# Image size and user, for the record.
describe() {
  local img
  for img in "$PROXY_IMAGE" "$OPERATOR_IMAGE"; do
    printf '%s: %s, user %s, entrypoint %s\n' "$img" \
      "$("${B[@]}" images --format '{{.Size}}' "$img")" \
      "$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$img")" \
      "$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$img")"
  done
}

case "${1:-}" in
  build) build ;;
  standins) ensure_tools; standin_debian; standin_rust; standin_distroless; standin_redis; standin_pause ;;
  project) ensure_tools; project_images ;;
  prune) tag_dependency_layers; prune ;;
  tests) ensure_tools; test_images ;;
  export) export_images "${2:?export needs a directory}" ;;
  env) images_env ;;
  describe) describe ;;
  *) echo "usage: $0 build|export DIR|env|describe" >&2; exit 2 ;;
esac
