#!/usr/bin/env bash
# Benchmark (not a test): the cost of a request must not grow with the work around it.
# gemini-proxy's CPU time per request (user + system, from /proc) in front of nginx returning a
# canned generateContent answer, wrk keeping the proxy busy, for:
#   - each rotation strategy with 3 keys and with 10,000 keys      (goal: within 1.1x)
#   - one group and 500 groups (Token access, one token each)      (goal: within 1.1x)
#   - 1,000 concurrent requests, then idle: upstream sockets and RSS after 110 s (idle
#     connections close after 90 s; goal: RSS back within 10 MB of idle)
# Arms alternate over ROUNDS rounds; the medians are compared within the run.
#
#   bash bench/scale.sh
#   DURATION=10 ROUNDS=5 bash bench/scale.sh
#   CONNECTIONS=0 bash bench/scale.sh   # without the 2-minute connections arm
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
OUT=${OUT:-$(mktemp -d)}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --quiet --bin gemini-proxy
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
BODY='{"candidates": [{"content": {"parts": [{"text": "Hello from the bench"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 7,"totalTokenCount": 12},"modelVersion": "gemini-2.5-flash","responseId": "bench"}'
mkdir -p "$OUT/up"
cat > "$OUT/up/nginx.conf" <<CONF
worker_processes 1;
pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type "application/json; charset=UTF-8"; return 200 '$BODY'; }
  }
}
CONF
nginx -c "$OUT/up/nginx.conf"
GP_PID=
cleanup() {
  [ -n "$GP_PID" ] && kill "$GP_PID" 2>/dev/null || true
  nginx -c "$OUT/up/nginx.conf" -s stop 2>/dev/null || true
}
trap cleanup EXIT

# configs: NAME STRATEGY KEYS GROUPS
python3 - "$OUT" "$UP" <<'PY'
import sys
out, up = sys.argv[1], sys.argv[2]
def config(name, strategy, keys, groups):
    lines = (["defaultGroup: g0"] if groups == 1 else []) + ["groups:"]
    for g in range(groups):
        ks = ", ".join("{value: k-%d-%d}" % (g, i) for i in range(keys))
        access = "{mode: Open}" if groups == 1 else "{clientTokens: [tok-%d]}" % g
        lines.append("  - {name: g%d, upstream: {url: \"http://127.0.0.1:%s\"}, access: %s, rotation: {strategy: %s}, keys: [%s]}" % (g, up, access, strategy, ks))
    open("%s/%s.yaml" % (out, name), "w").write("\n".join(lines) + "\n")
for s in ["RoundRobin", "Weighted", "LeastLoaded"]:
    config("%s-3" % s, s, 3, 1)
    config("%s-10000" % s, s, 10000, 1)
config("groups-2", "RoundRobin", 3, 2)
config("groups-500", "RoundRobin", 3, 500)
PY
ARMS="RoundRobin-3 RoundRobin-10000 Weighted-3 Weighted-10000 LeastLoaded-3 LeastLoaded-10000 groups-2 groups-500"

cat > "$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"contents":[{"parts":[{"text":"hello"}]}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "tok-1"
LUA
PATH_="/v1beta/models/gemini-2.5-flash:generateContent"
cpu_ticks() { local t=0 f; for f in /proc/"$1"/task/*/stat; do t=$((t + $(awk '{print $14 + $15}' "$f"))); done; echo "$t"; }
run() { # arm round
  local port before
  port=$(free_port)
  ./target/release/gemini-proxy --config "$OUT/$1.yaml" --listen "127.0.0.1:$port" --admin-listen off >"$OUT/$1.log" 2>&1 &
  GP_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  wrk -t1 -c"$CONNS" -d1s -s "$OUT/post.lua" "http://127.0.0.1:$port$PATH_" >/dev/null
  before=$(cpu_ticks "$GP_PID")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$OUT/post.lua" "http://127.0.0.1:$port$PATH_" >"$OUT/$1.$2.txt"
  echo $(( $(cpu_ticks "$GP_PID") - before )) >"$OUT/$1.$2.cpu"
  kill "$GP_PID"; wait "$GP_PID" 2>/dev/null || true; GP_PID=
}
for r in $(seq "$ROUNDS"); do for a in $ARMS; do run "$a" "$r"; done; done

median() { sort -g | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
cpu() { for r in $(seq "$ROUNDS"); do
  awk -v t="$(cat "$OUT/$1.$r.cpu")" -v hz="$(getconf CLK_TCK)" '/requests in/ {printf "%.2f\n", t / hz / $1 * 1e6}' "$OUT/$1.$r.txt"; done | median; }
rps() { for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ {print $2}' "$OUT/$1.$r.txt"; done | median; }
bad() { cat "$OUT"/$1.*.txt | awk '/Non-2xx|Socket errors/ {print "  " $0}'; }

printf '\nwrk -t2 -c%s -d%ss x %s rounds (medians), CPU per request of gemini-proxy\n' "$CONNS" "$DURATION" "$ROUNDS"
printf '%-20s %12s %10s\n' arm cpu_us/req req/s
for a in $ARMS; do printf '%-20s %12s %10s\n' "$a" "$(cpu "$a")" "$(rps "$a")"; bad "$a"; done
printf '\nratios (goal: within 1.1x)\n'
for s in RoundRobin Weighted LeastLoaded; do
  awk -v a="$(cpu "$s-10000")" -v b="$(cpu "$s-3")" -v s="$s" 'BEGIN {printf "%-12s 10,000 keys / 3 keys: %.2fx\n", s, a/b}'
done
awk -v a="$(cpu groups-500)" -v b="$(cpu groups-2)" 'BEGIN {printf "500 groups / 2 groups: %.2fx\n", a/b}'
echo "raw output: $OUT"

# Connections are given back: 1,000 concurrent requests open as many upstream connections;
# once the load stops, idle ones are closed after 90 s and memory returns near idle.
if [ "${CONNECTIONS:-1}" = 1 ]; then
  port=$(free_port)
  ./target/release/gemini-proxy --config "$OUT/RoundRobin-3.yaml" --listen "127.0.0.1:$port" --admin-listen off >"$OUT/conns.log" 2>&1 &
  GP_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  rss() { awk '/VmRSS/ {print $2}' /proc/"$GP_PID"/status; }
  upstream_sockets() { ss -Htn state established "( dport = :$UP )" | wc -l; }
  idle_rss=$(rss)
  ulimit -n 65536 2>/dev/null || true
  wrk -t2 -c1000 -d5s -s "$OUT/post.lua" "http://127.0.0.1:$port$PATH_" >"$OUT/conns.wrk.txt"
  sleep 1
  busy_rss=$(rss); busy_socks=$(upstream_sockets)
  sleep 110
  after_rss=$(rss); after_socks=$(upstream_sockets)
  printf '\nconnections: 1,000 concurrent for 5 s, then idle\n'
  printf '  upstream sockets: %s right after, %s after 110 s idle\n' "$busy_socks" "$after_socks"
  printf '  RSS: %s KiB idle before, %s KiB right after, %s KiB after 110 s (%+d KiB against idle)\n' \
    "$idle_rss" "$busy_rss" "$after_rss" "$((after_rss - idle_rss))"
  kill "$GP_PID"; wait "$GP_PID" 2>/dev/null || true; GP_PID=
fi
