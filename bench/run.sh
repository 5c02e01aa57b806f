#!/usr/bin/env bash
# Benchmark (not a test): gemini-proxy and nginx proxy_pass, both in front of the same fast
# upstream (nginx returning a canned generateContent answer), in one run on this machine.
#
# 1. Throughput (closed loop): wrk keeps 64 connections busy; req/s, p50 and p99, and the CPU
#    time each proxy spends per request (user+system, from /proc: steadier than req/s on a
#    machine whose speed drifts).
# 2. Latency at fixed rates (open loop, target/release/rate-load): requests sent on a schedule
#    at fractions of nginx's measured throughput, latency counted from when each was due
#    (wrk's p99 at saturation is mostly queueing: by Little's law 64 busy connections at
#    25k req/s wait 2.6 ms on average, whatever the server).
# Rounds alternate between the targets, so that a slow spell of the machine hits both.
#
#   bash bench/run.sh                 # 64 connections, 3 rounds of 10 s per target
#   CONNS=128 DURATION=20 bash bench/run.sh
#   STORE=redis bash bench/run.sh     # gemini-proxy with the Redis store (needs redis-server)
#   BASELINE=/tmp/gemini-proxy-old bash bench/run.sh   # also another build, same config (A/B)
#   RATES="0.25 0.5" bash bench/run.sh   # open-loop rates, as fractions of nginx's req/s
#   PIN=none bash bench/run.sh        # no CPU pinning: gemini-proxy with pinning turned off, nginx without worker_cpu_affinity (default
#                                     # PIN=both: nginx's `auto` and the proxy's default, which
#                                     # pins when it has a thread per CPU; PIN=proxy pins only
#                                     # the proxy, as each runs out of the box)
#   LOG=none bash bench/run.sh        # no access lines (default LOG=both: each writes a JSON
#                                     # line per request, in 32 KiB batches, to a file)
#   UPSTREAM=https bash bench/run.sh  # the production path: the upstream over TLS, a CA made
#                                     # here; both proxies keep HTTP/1.1 connections alive and
#                                     # resume TLS sessions
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
STORE=${STORE:-memory}
GP_ARGS=${GP_ARGS:-}
BASELINE=${BASELINE:-}
RATES=${RATES:-0.1 0.25 0.5 0.75}
RATE_SECONDS=${RATE_SECONDS:-8}
UPSTREAM=${UPSTREAM:-http}
PIN=${PIN:-both}
LOG=${LOG:-both}
OUT=${OUT:-$(mktemp -d)}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --quiet --bin gemini-proxy --bin rate-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); GP=$(free_port); BASE=$(free_port); GPA=$(free_port)

# The canned answer: the mock's generateContent body (tests/src/wire.rs), on one line.
BODY='{"candidates": [{"content": {"parts": [{"text": "Hello from the bench"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 7,"totalTokenCount": 12},"modelVersion": "gemini-2.5-flash","responseId": "bench"}'

mkdir -p "$OUT/up" "$OUT/ngx"
UP_LISTEN="listen 127.0.0.1:$UP;"
NGX_UPSTREAM="proxy_pass http://gemini;"
GP_UPSTREAM="url: \"http://127.0.0.1:$UP\""
if [ "$UPSTREAM" = https ]; then
  (cd "$OUT/up" &&
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -keyout up.key -out up.csr -subj "/CN=127.0.0.1" 2>/dev/null &&
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > up.ext &&
    openssl x509 -req -in up.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out up.pem -days 2 -extfile up.ext 2>/dev/null)
  UP_LISTEN="listen 127.0.0.1:$UP ssl http2; ssl_certificate $OUT/up/up.pem; ssl_certificate_key $OUT/up/up.key; ssl_session_cache shared:up:10m;"
  NGX_UPSTREAM="proxy_pass https://gemini; proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_name 127.0.0.1; proxy_ssl_trusted_certificate $OUT/up/ca.pem;"
  GP_UPSTREAM="url: \"https://127.0.0.1:$UP\", caFile: \"$OUT/up/ca.pem\""
fi
cat > "$OUT/up/nginx.conf" <<CONF
worker_processes 1;
pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    $UP_LISTEN
    location / {
      default_type "application/json; charset=UTF-8";
      return 200 '$BODY';
    }
  }
}
CONF
NGX_AFFINITY=""
case "$PIN" in
  both) NGX_AFFINITY="worker_cpu_affinity auto;" ;;
  none) export GEMINI_PROXY_PIN_WORKER_THREADS=never ;;  # a variable: an older BASELINE ignores it
  proxy) ;;
  *) echo "PIN is both, none or proxy" >&2; exit 2 ;;
esac
NGX_LOG="access_log off;"
case "$LOG" in
  both) NGX_LOG="log_format line escape=json '{\"time\":\"\$time_iso8601\",\"request_id\":\"\$request_id\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"status\":\$status,\"upstream\":\"\$upstream_addr\",\"duration\":\$request_time}';
  access_log $OUT/ngx/access.log line buffer=32k flush=100ms;" ;;
  none) export RUST_LOG=info,gemini_proxy::access=off ;;
  *) echo "LOG is both or none" >&2; exit 2 ;;
esac
cat > "$OUT/ngx/nginx.conf" <<CONF
worker_processes auto;
$NGX_AFFINITY
pid $OUT/ngx/nginx.pid;
error_log $OUT/ngx/error.log;
events { worker_connections 4096; }
http {
  $NGX_LOG
  keepalive_requests 1000000;
  upstream gemini { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      $NGX_UPSTREAM
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-goog-api-key "bench-key";
    }
  }
}
CONF

cat > "$OUT/proxy.yaml" <<CONF
listen: "127.0.0.1:$GP"
defaultGroup: bench
groups:
  - name: bench
    upstream: {$GP_UPSTREAM}
    access: {mode: Open}
    rotation: {strategy: RoundRobin}
    keys: [{value: bench-key-1}, {value: bench-key-2}, {value: bench-key-3}, {value: bench-key-4},
           {value: bench-key-5}, {value: bench-key-6}, {value: bench-key-7}, {value: bench-key-8}]
CONF
if [ "$STORE" = redis ]; then
  RPORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --daemonize yes \
    --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log"
  cat >> "$OUT/proxy.yaml" <<CONF
store:
  redis: {url: "redis://127.0.0.1:$RPORT", keyPrefix: "bench:"}
  encryptionKey: {value: "$(head -c 32 /dev/urandom | base64)"}
CONF
fi

cleanup() {
  [ -n "${GP_PID:-}" ] && kill "$GP_PID" 2>/dev/null || true
  [ -n "${BASE_PID:-}" ] && kill "$BASE_PID" 2>/dev/null || true
  nginx -c "$OUT/ngx/nginx.conf" -s stop 2>/dev/null || true
  nginx -c "$OUT/up/nginx.conf" -s stop 2>/dev/null || true
  [ -f "$OUT/redis.pid" ] && kill "$(cat "$OUT/redis.pid")" 2>/dev/null || true
}
trap cleanup EXIT

nginx -c "$OUT/up/nginx.conf"
nginx -c "$OUT/ngx/nginx.conf"
./target/release/gemini-proxy --config "$OUT/proxy.yaml" --admin-listen "127.0.0.1:$GPA" $GP_ARGS > "$OUT/gemini-proxy.log" 2>&1 &
GP_PID=$!
TARGETS="nginx gemini-proxy"
if [ -n "$BASELINE" ]; then
  "$BASELINE" --config "$OUT/proxy.yaml" --listen "127.0.0.1:$BASE" $GP_ARGS > "$OUT/baseline.log" 2>&1 &
  BASE_PID=$!
  TARGETS="$TARGETS baseline"
fi
for port in $GP ${BASELINE:+$BASE}; do
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
done

cat > "$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"contents":[{"parts":[{"text":"hello"}]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA

PATH_="/v1beta/models/gemini-2.5-flash:generateContent"
port_of() { case "$1" in nginx) echo "$NGX" ;; gemini-proxy) echo "$GP" ;; baseline) echo "$BASE" ;; esac; }
pids_of() { # the processes doing a target's work: nginx's workers, or the proxy
  case "$1" in
    nginx) pgrep -P "$(cat "$OUT/ngx/nginx.pid")" | tr '\n' ' ' ;;
    gemini-proxy) echo "$GP_PID" ;;
    baseline) echo "$BASE_PID" ;;
  esac
}
cpu_ticks() { # user+system clock ticks of every thread of these processes
  local t=0 p f
  for p in $1; do
    for f in /proc/"$p"/task/*/stat; do
      t=$((t + $(awk '{print $14 + $15}' "$f")))
    done
  done
  echo "$t"
}
run() { # name round
  local port pids before
  port=$(port_of "$1"); pids=$(pids_of "$1")
  wrk -t1 -c"$CONNS" -d1s -s "$OUT/post.lua" "http://127.0.0.1:$port$PATH_" >/dev/null   # warm the pools
  before=$(cpu_ticks "$pids")
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/post.lua" \
    "http://127.0.0.1:$port$PATH_" > "$OUT/$1.$2.txt"
  echo $(( $(cpu_ticks "$pids") - before )) > "$OUT/$1.$2.cpu"
}
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do run "$t" "$r"; done
done

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } printf "%.2f\n", v }'; }
median() { sort -g | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
stat() { # target what
  for r in $(seq "$ROUNDS"); do
    f="$OUT/$1.$r.txt"
    case "$2" in
      rps) awk '/Requests\/sec/ {print $2}' "$f" ;;
      p50) awk '$1=="50%" {print $2}' "$f" | to_ms ;;
      p99) awk '$1=="99%" {print $2}' "$f" | to_ms ;;
      cpu) awk -v t="$(cat "$OUT/$1.$r.cpu")" -v hz="$(getconf CLK_TCK)" \
             '/requests in/ {printf "%.1f\n", t / hz / $1 * 1e6}' "$f" ;;
    esac
  done | median
}

printf '\nwrk -t%s -c%s -d%ss x %s rounds (medians), POST generateContent, %s cores, store=%s, upstream=%s, pin=%s, log=%s\n' \
  "$THREADS" "$CONNS" "$DURATION" "$ROUNDS" "$(nproc)" "$STORE" "$UPSTREAM" "$PIN" "$LOG"
printf '%-14s %10s %8s %8s %12s   %s\n' target req/s p50_ms p99_ms cpu_us/req "req/s per round"
for t in $TARGETS; do
  rounds=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ {printf "%d ", $2}' "$OUT/$t.$r.txt"; done)
  printf '%-14s %10s %8s %8s %12s   %s\n' "$t" "$(stat "$t" rps)" "$(stat "$t" p50)" "$(stat "$t" p99)" "$(stat "$t" cpu)" "$rounds"
  cat "$OUT"/$t.*.txt | awk '/Non-2xx|Socket errors/ {print "  " $0}'
done
ratio=$(awk -v a="$(stat gemini-proxy rps)" -v b="$(stat nginx rps)" 'BEGIN {printf "%.2f", a/b}')
printf 'gemini-proxy / nginx throughput: %sx\n' "$ratio"

# Latency at fixed rates (open loop), the targets alternating at each rate.
nginx_rps=$(stat nginx rps)
printf '\nopen loop, %s connections, %s s per rate and target: latency from when each request was due (ms)\n' "$CONNS" "$RATE_SECONDS"
printf '%-14s %8s %9s %7s %7s %7s %7s %7s %7s\n' target rate achieved p50 p90 p99 p99.9 max errors
for f in $RATES; do
  rate=$(awk -v r="$nginx_rps" -v f="$f" 'BEGIN {printf "%d", int(r * f / 500 + 0.5) * 500}')
  [ "$rate" -gt 0 ] || continue
  for t in $TARGETS; do
    line=$(./target/release/rate-load "http://127.0.0.1:$(port_of "$t")$PATH_" "$rate" "$RATE_SECONDS" "$CONNS")
    echo "$line" > "$OUT/$t.rate$rate.txt"
    echo "$line" | awk -v t="$t" '{for (i = 1; i < NF; i++) v[$i] = $(i + 1);
      printf "%-14s %8s %9s %7s %7s %7s %7s %7s %7s\n", t, v["rate"], v["achieved"], v["p50"], v["p90"], v["p99"], v["p99.9"], v["max"], v["errors"]}'
  done
done
curl -s "http://127.0.0.1:$GPA/metrics" | awk '/^gemini_proxy_added_latency_seconds/ {print}' > "$OUT/added.txt"
# The mean, and the histogram bucket the 99th percentile falls in.
awk '/_sum/ {s=$2} /_count/ {c=$2} /_bucket/ {match($0, /le="[^"]*"/); le[++n]=substr($0, RSTART+4, RLENGTH-5); cum[n]=$2}
  END { if (c == 0) exit; for (i = 1; i <= n; i++) if (cum[i] >= 0.99 * c) { p99 = le[i]; break }
        printf "gemini-proxy added latency (its own work, upstream wait excluded): mean %.1f us, p99 <= %s s, over %d requests\n", s/c*1e6, p99, c }' "$OUT/added.txt"
echo "raw output: $OUT"
