#!/usr/bin/env bash
# HTTP publish throughput: wrk POSTs to the hub's HTTP adapter
# (/topics/bench/t -> 202, routed, last value stored) versus a bare hyper
# server answering 204 (the reference), same machine, same wrk settings,
# in this one run. Prints requests/s of each and the ratio hub/reference
# (target >= 0.7). A third server is the same hub with the same HTTP
# adapter loaded as a plugin library (plugins/cdylib-http): its rate over
# the built-in's is the plugin boundary's cost on a real adapter.
#
#   bench/http/run.sh [DURATION_SECS=10] [CONNECTIONS=32] [THREADS=1]
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${1:-10}
CONNS=${2:-32}
THREADS=${3:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

echo "building (release)..."
cargo build -q --release -p polyhub
cargo build -q --release -p polyhub-http --example bare_hyper
cargo build -q --release -p polyhub-cdylib-http
BIN=$CARGO_TARGET_DIR/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; return 1
}

# wrk's requests/s for URL.
measure() {
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s bench/http/post.lua --latency "$1" >"$work/wrk.out"
  grep -q "Non-2xx" "$work/wrk.out" && { cat "$work/wrk.out" >&2; echo "non-2xx answers" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}
p99() { awk '$1=="99%" {print $2}' "$work/wrk.out"; }

# Starts a hub whose only adapter is HTTP on PORT, declared by the LINE
# `type = "http"` (built in) or `plugin = "…"` (loaded); NAME names its files.
start_hub() {
  local name=$1 line=$2 port=$3
  cat >"$work/$name.toml" <<TOML
[hub]
name = "bench"
[[adapters]]
name = "http"
$line
[adapters.config]
bind = "127.0.0.1:$port"
TOML
  RUST_LOG=warn "$BIN/polyhub" run --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
}

# The hub: HTTP adapter only, built in; and the same adapter loaded from its
# plugin library.
hub_port=$(free_port)
start_hub hub 'type = "http"' "$hub_port"
plugin_port=$(free_port)
start_hub plugin "plugin = \"$BIN/libpolyhub_cdylib_http.so\"" "$plugin_port"

# The reference: bare hyper answering 204.
"$BIN/examples/bare_hyper" 127.0.0.1:0 >"$work/bare.out" &
pids+=($!)
for _ in $(seq 1 100); do grep -q listening "$work/bare.out" && break; sleep 0.1; done
bare_addr=$(awk '/listening on/ {print $3}' "$work/bare.out")

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, POST 4-byte text body"
# Warm both up, then measure reference, hub, reference, hub; keep the best of each.
wrk -t1 -c8 -d1s -s bench/http/post.lua "http://$bare_addr/topics/bench/t" >/dev/null
wrk -t1 -c8 -d1s -s bench/http/post.lua "http://127.0.0.1:$hub_port/topics/bench/t" >/dev/null
wrk -t1 -c8 -d1s -s bench/http/post.lua "http://127.0.0.1:$plugin_port/topics/bench/t" >/dev/null
best_ref=0; best_hub=0; best_plugin=0; ref_p99=""; hub_p99=""; plugin_p99=""
for round in 1 2; do
  r=$(measure "http://$bare_addr/topics/bench/t"); rp=$(p99)
  h=$(measure "http://127.0.0.1:$hub_port/topics/bench/t"); hp=$(p99)
  g=$(measure "http://127.0.0.1:$plugin_port/topics/bench/t"); gp=$(p99)
  echo "round $round: bare hyper ${r} req/s (p99 $rp), polyhub ${h} req/s (p99 $hp), as plugin ${g} req/s (p99 $gp)"
  if awk "BEGIN{exit !($r > $best_ref)}"; then best_ref=$r; ref_p99=$rp; fi
  if awk "BEGIN{exit !($h > $best_hub)}"; then best_hub=$h; hub_p99=$hp; fi
  if awk "BEGIN{exit !($g > $best_plugin)}"; then best_plugin=$g; plugin_p99=$gp; fi
done
plugin_value=$(curl -s "http://127.0.0.1:$plugin_port/topics/bench/t")
[[ $plugin_value == "21.5" ]] || { echo "plugin hub did not store the value: $plugin_value" >&2; exit 1; }

# The hub really took the messages.
value=$(curl -s "http://127.0.0.1:$hub_port/topics/bench/t")
[[ $value == "21.5" ]] || { echo "hub did not store the value: $value" >&2; exit 1; }
msgs=$(curl -s "http://127.0.0.1:$hub_port/metrics" | awk '/^polyhub_messages_in_total\{.*adapter="http"/ {print $2}')

ratio=$(awk "BEGIN{printf \"%.2f\", $best_hub / $best_ref}")
echo
echo "reference (bare hyper, 204): ${best_ref} req/s  p99 ${ref_p99}"
echo "polyhub POST /topics (202):  ${best_hub} req/s  p99 ${hub_p99}  (${msgs} envelopes routed)"
echo "ratio polyhub/reference: ${ratio}  (target >= 0.7)"
echo "HTTP adapter loaded as a plugin: ${best_plugin} req/s  p99 ${plugin_p99}"
echo "ratio plugin/built-in: $(awk "BEGIN{printf \"%.2f\", $best_plugin / $best_hub}")  (target >= 0.9)"
awk "BEGIN{exit !($ratio >= 0.7)}" || { echo "BELOW TARGET" >&2; exit 2; }
