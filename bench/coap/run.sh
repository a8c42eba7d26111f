#!/usr/bin/env bash
# NON POST throughput of the hub's CoAP adapter versus libcoap's coap-server
# answering the same requests directly, measured with the same load
# generator (plugins/coap/examples/coap_load.rs) in the same run.
#
#   bench/coap/run.sh [SECONDS] [SOCKETS] [WINDOW]
#
# Prints requests answered per second for each and the ratio hub / coap-server.
# The hub publishes every request into its router (last-value store, any
# subscribers) before answering 2.04; coap-server only updates a resource.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
SOCKETS=${2:-4}
WINDOW=${3:-32}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

log() { printf '\033[1m[bench/coap]\033[0m %s\n' "$*"; }
server_bin=$(command -v coap-server || command -v coap-server-notls) \
  || { echo "coap-server not found: apt-get install libcoap3-bin" >&2; exit 1; }

log "building (release)"
cargo build -q --release -p polyhub
cargo build -q --release -p polyhub-coap --example coap_load
HUB=$CARGO_TARGET_DIR/release/polyhub
LOAD=$CARGO_TARGET_DIR/release/examples/coap_load

free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "${cfg:-}"; }
trap cleanup EXIT

# 1. The hub.
hub_port=$(free_udp_port)
cfg=$(mktemp --suffix .toml)
cat >"$cfg" <<TOML
[[adapters]]
name = "coap"
type = "coap"
[adapters.config]
bind = "127.0.0.1:$hub_port"
TOML
RUST_LOG=warn "$HUB" run --config "$cfg" >/dev/null 2>&1 &
pids+=($!)
sleep 1
log "hub: $SECS s of NON POST /ps/bench/t, $SOCKETS sockets x $WINDOW in flight"
"$LOAD" "127.0.0.1:$hub_port" ps/bench/t 1 "$SOCKETS" "$WINDOW" >/dev/null   # warm-up
hub_out=$("$LOAD" "127.0.0.1:$hub_port" ps/bench/t "$SECS" "$SOCKETS" "$WINDOW")
echo "  $hub_out"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

# 2. libcoap's coap-server, same requests (the resource is created by the
#    first POST thanks to -d).
ref_port=$(free_udp_port)
"$server_bin" -A 127.0.0.1 -p "$ref_port" -d 100 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
log "coap-server: $SECS s of NON POST /bench/t"
"$LOAD" "127.0.0.1:$ref_port" bench/t 1 "$SOCKETS" "$WINDOW" >/dev/null
ref_out=$("$LOAD" "127.0.0.1:$ref_port" bench/t "$SECS" "$SOCKETS" "$WINDOW")
echo "  $ref_out"

rate() { sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<<"$1"; }
hub_rate=$(rate "$hub_out")
ref_rate=$(rate "$ref_out")
python3 - "$hub_rate" "$ref_rate" <<'PY'
import sys
hub, ref = float(sys.argv[1]), float(sys.argv[2])
print(f"hub {hub:.0f} req/s, coap-server {ref:.0f} req/s, ratio hub/coap-server = {hub / ref:.2f}")
PY
