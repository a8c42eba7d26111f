#!/usr/bin/env bash
# Two of the hardening cases in a release build, with real clients:
#   1. a stalled SSE client (reads nothing) subscribed to `flood/#` while a
#      device publishes N QoS 0 messages to the embedded broker
#      (mosquitto_pub -l): how many entered the hub, how many the stream
#      dropped (counted), and whether a topic it does not match still flows;
#   2. N HTTP posts to distinct topics forwarded to Mosquitto on
#      127.0.0.1:1883 by an MQTT client adapter subscribed to the same
#      topics: how many came back in as "mqtt" messages (echoes).
#
#   bench/limits/flows.sh [N]      (default 200000)
#
# HUB=path/to/polyhub runs another build.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
log() { printf '\033[1m[bench/limits/flows]\033[0m %s\n' "$*" >&2; }
if [[ -z ${HUB:-} ]]; then
  log "building (release)"
  cargo build -q --release -p polyhub
  HUB=$CARGO_TARGET_DIR/release/polyhub
fi
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
metric() { # metric PORT NAME ADAPTER
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2{" -v a="adapter=\"$3\"" 'index($0, m) == 1 && index($0, a) {s += $NF} END {print s + 0}'
}
metric_in() { metric "$1" polyhub_messages_in_total http; }
# shellcheck source=bench/limits/lib.sh
source bench/limits/lib.sh  # (the script runs from the repository root)
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/health" && return 0; sleep 0.1; done; return 1; }
wait_metric() { # wait_metric PORT NAME ADAPTER AT_LEAST SECS
  local end=$((SECONDS + $5))
  while ((SECONDS < end)); do (($(metric "$1" "$2" "$3") >= $4)) && return 0; sleep 0.2; done
  return 1
}

# 1. Stalled SSE client, QoS 0 flood on the embedded broker.
mqtt=$(free_port); http=$(free_port)
cat >"$work/a.toml" <<TOML
[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
listen = "127.0.0.1:$mqtt"
[[adapters]]
name = "http"
type = "http"
[adapters.config]
bind = "127.0.0.1:$http"
TOML
RUST_LOG=warn "$HUB" run "$work/a.toml" >"$work/a.log" 2>&1 &
pids+=($!)
wait_http "$http"
# A client that asks for the stream and never reads a byte.
python3 -c "
import socket, time
s = socket.create_connection(('127.0.0.1', $http))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b'GET /events?filter=flood/%23 HTTP/1.1\r\nHost: x\r\n\r\n')
time.sleep(3600)" &
pids+=($!)
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t other/t -C 1 >"$work/other.txt" &
sub=$!
seq -f "%06g 00000000000000000000000000000000000000000000000000" 1 "$N" >"$work/lines"
log "$N QoS 0 device messages with a stalled SSE client on flood/#"
t0=$(date +%s.%N)
mosquitto_pub -h 127.0.0.1 -p "$mqtt" -t flood/x -q 0 -l <"$work/lines"
wait_metric "$http" polyhub_messages_in_total mqtt "$N" 60 || true
t1=$(date +%s.%N)
mosquitto_pub -h 127.0.0.1 -p "$mqtt" -t other/t -m "still here"
timeout 10 tail --pid=$sub -f /dev/null || true
printf '| stalled SSE client, %s QoS 0 device messages | entered the hub %s (with the unmatched one) in %.1f s | SSE queued %s, dropped %s (counted); mqtt dropped %s; unmatched topic delivered: %s |\n' \
  "$N" "$(metric "$http" polyhub_messages_in_total mqtt)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
  "$(metric "$http" polyhub_messages_out_total http)" "$(metric "$http" polyhub_dropped_total http)" \
  "$(metric "$http" polyhub_dropped_total mqtt)" "$([[ $(cat "$work/other.txt") == "still here" ]] && echo yes || echo no)"

# 2. Echoes from an external broker.
http=$(free_port)
prefix="echo$$"
cat >"$work/b.toml" <<TOML
[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
url = "mqtt://127.0.0.1:1883"
subscribe = ["$prefix/#"]
forward = ["$prefix/#"]
[[adapters]]
name = "http"
type = "http"
[adapters.config]
bind = "127.0.0.1:$http"
TOML
RUST_LOG=warn "$HUB" run "$work/b.toml" >"$work/b.log" 2>&1 &
pids+=($!)
wait_http "$http"
wait_metric "$http" polyhub_adapter_up mqtt 1 20 || true
log "$N HTTP posts forwarded to Mosquitto"
post_distinct "$http" "$N" "$prefix"
posted=$(metric "$http" polyhub_messages_in_total http)
wait_metric "$http" polyhub_messages_out_total mqtt "$posted" 60 || true
# A device publish after the burst: once it is in, any echo would be too.
mosquitto_pub -h 127.0.0.1 -p 1883 -t "$prefix/end" -m x -q 1
wait_metric "$http" polyhub_messages_in_total mqtt 1 20 || true
printf '| %s HTTP posts forwarded to Mosquitto | posted %s, forwarded %s | came back in as mqtt: %s (1 of them the device'"'"'s own sentinel) |\n' \
  "$N" "$posted" "$(metric "$http" polyhub_messages_out_total mqtt)" "$(metric "$http" polyhub_messages_in_total mqtt)"
