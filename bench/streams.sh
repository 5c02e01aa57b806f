#!/usr/bin/env bash
# Memory with many open streams: the proxy's RSS idle, with 1,000 streams open at once (each
# ~10 s long: 20 chunks 500 ms apart, from the mock upstream), right after they end, and after
# the idle upstream connections expired (90 s). Release build; prints one table.
#   bash bench/streams.sh            (STREAMS=1000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-1000}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin gemini-proxy --bin mock-gemini
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gp-streams.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GP=$(free_port)
ulimit -n 65536 2>/dev/null || true
MOCK_STREAM_CHUNKS=20 MOCK_STREAM_DELAY_MS=500 ./target/release/mock-gemini "127.0.0.1:$UP" >"$OUT/mock.log" 2>&1 &
MOCK_PID=$!
cat >"$OUT/proxy.yaml" <<CONF
defaultGroup: g
groups:
  - {name: g, upstream: {url: "http://127.0.0.1:$UP"}, access: {mode: Open}, keys: [{value: stream-key-1}, {value: stream-key-2}]}
CONF
./target/release/gemini-proxy --config "$OUT/proxy.yaml" --listen "127.0.0.1:$GP" --admin-listen off >"$OUT/proxy.log" 2>&1 &
GP_PID=$!
trap 'kill $GP_PID $MOCK_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GP/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/"$GP_PID"/status; }
open_upstream() { ss -Htn state established "( dport = :$UP )" | wc -l; }
cat >"$OUT/stream.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"contents":[{"parts":[{"text":"tell me a long story"}]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
# Warm: one stream, so that the allocator's first growth is not counted as streams' cost.
curl -s -X POST -d '{}' "http://127.0.0.1:$GP/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse" >/dev/null
idle=$(rss)
wrk -t2 -c"$STREAMS" -d14s --timeout 30s -s "$OUT/stream.lua" \
  "http://127.0.0.1:$GP/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse" >"$OUT/wrk.txt" &
WRK=$!
sleep 6
open=$(open_upstream); during=$(rss)
wait $WRK
sleep 11   # the last streams end
ended=$(rss)
sleep 95   # idle upstream connections expire after 90 s
after=$(rss); left=$(open_upstream)
printf 'streams: %s at once, ~10 s each (20 chunks, 500 ms apart)\n' "$STREAMS"
printf '  upstream connections open mid-run: %s; after 95 s idle: %s\n' "$open" "$left"
printf '  RSS KiB: idle %s | %s streams open %s (%+d) | just ended %s (%+d) | after expiry %s (%+d)\n' \
  "$idle" "$STREAMS" "$during" "$((during - idle))" "$ended" "$((ended - idle))" "$after" "$((after - idle))"
grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$OUT/wrk.txt" | sed 's/^/  wrk: /'
echo "raw output: $OUT"
