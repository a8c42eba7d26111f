#!/usr/bin/env bash
# The hub's memory under hostile load, in a release build (DESIGN "Limits"):
#   1. TOPICS distinct topics POSTed over HTTP (wrk, 4 connections): RSS
#      before and after, and the store's evictions past [hub] max_topics
#      (default 100 000);
#   2. DRIBBLERS connections each sending a 100 kB body one byte per TCP
#      segment: RSS growth per byte held, another client served meanwhile,
#      and every dribbler answered 408 and closed after body_timeout_secs.
#
#   bench/limits/memory.sh [TOPICS] [DRIBBLERS]     (default 1000000 2000)
#
# HUB=path/to/polyhub runs another build (e.g. an older one, for a before).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOPICS=${1:-1000000}
DRIBBLERS=${2:-2000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
log() { printf '\033[1m[bench/limits]\033[0m %s\n' "$*" >&2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
if [[ -z ${HUB:-} ]]; then
  log "building (release)"
  cargo build -q --release -p polyhub
  HUB=$CARGO_TARGET_DIR/release/polyhub
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
port=$(free_port)
work=$(mktemp -d)
hub_pid=""
cleanup() { [[ -n $hub_pid ]] && kill "$hub_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat >"$work/hub.toml" <<TOML
[[adapters]]
name = "http"
type = "http"
[adapters.config]
bind = "127.0.0.1:$port"
body_timeout_secs = 20
max_connections = $((DRIBBLERS + 100))
TOML
RUST_LOG=warn "$HUB" run "$work/hub.toml" >"$work/hub.log" 2>&1 &
hub_pid=$!
rss() { awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$hub_pid/status"; }
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
metric_in() { curl -s "http://127.0.0.1:$1/metrics" | awk 'index($0, "polyhub_messages_in_total{") == 1 && /adapter="http"/ {print $NF}'; }
# shellcheck source=bench/limits/lib.sh
source bench/limits/lib.sh  # (the script runs from the repository root)

# 1. Distinct topics.
before=$(rss)
log "posting $TOPICS distinct topics (RSS before: $before MB)"
post_distinct "$port" "$TOPICS" flood
after=$(rss)
topics=$(metric polyhub_topics)
evictions=$(metric polyhub_last_value_evictions_total)
reqs=$(metric_in "$port")
printf '| %s distinct topics by HTTP POST | RSS %s MB -> %s MB | %s requests, topics held %s, evictions %s |\n' \
  "$TOPICS" "$before" "$after" "$reqs" "$topics" "$evictions"

# 2. Dribbled bodies.
log "$DRIBBLERS connections dribbling bodies a byte per segment"
python3 - "$hub_pid" "$port" "$DRIBBLERS" <<'PY'
import asyncio, sys, time
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
async def main():
    conns = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        w.write(f"POST /topics/drip/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx".encode())
        conns.append((r, w))
    await asyncio.sleep(0.5)
    base, t0, sent = rss(), time.time(), 0
    for _ in range(20):
        for r, w in conns:
            w.write(b"x")
        await asyncio.gather(*(w.drain() for _, w in conns))
        sent += n
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    grown = rss() - base
    # Another client meanwhile.
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t = time.perf_counter()
    w.write(b"POST /topics/other HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    answer = await asyncio.wait_for(r.read(), 10)
    other_ms = (time.perf_counter() - t) * 1000
    # Every dribbler gets its 408 once the body timeout passes.
    async def status(r):
        try:
            data = await asyncio.wait_for(r.read(), 60)
            return data.split(b" ")[1] if data else b"closed"
        except Exception as e:
            return type(e).__name__.encode()
    codes = await asyncio.gather(*(status(r) for r, _ in conns))
    closed_after = time.time() - t0
    print(f"| {n} dribbling bodies ({sent} bytes after the heads) | RSS +{grown:.1f} MB ({grown * 1024 * 1024 / sent:.0f} B per byte held) | "
          f"other client {answer.split(b' ')[1].decode()} in {other_ms:.1f} ms; {codes.count(b'408')} of {n} answered 408 and closed after {closed_after:.0f} s |")
asyncio.run(main())
PY
printf '| body_timeout refusals counted | %s |\n' "$(metric 'polyhub_rejected_total{hub="polyhub",adapter="http",reason="body_timeout"}')"
log "RSS at the end: $(rss) MB"
