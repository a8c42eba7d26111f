#!/usr/bin/env bash
# Messages per second MQTT → polyhub → XMPP client, against Prosody's own
# client → client rate, measured in the same run on the same private Prosody.
#
#   bench/xmpp/bench.sh [COUNT]          (default 3000 messages)
#
# Reference: slixmpp bench1 sends COUNT chat messages to bench2 through
# Prosody. Hub: `mosquitto_pub -l -q 1` publishes COUNT messages to the hub's
# embedded MQTT broker; the hub's XMPP adapter (static subscriber bench2)
# sends them through the same Prosody to the same slixmpp receiver. Both
# rates are first-to-last message at the receiver; prints their ratio. All
# XMPP legs use STARTTLS with the private instance's CA.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-3000}
HERE=bench/xmpp
BIN=${POLYHUB_BIN:-${CARGO_TARGET_DIR:-target}/release/polyhub}
if [[ ! -x $BIN ]]; then
  cargo build -q --release -p polyhub
fi
PORT=$(scripts/prosody/instance.sh /tmp/polyhub-prosody)
PW=polyhub-pw
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits for "ready" on a receiver's output file.
wait_ready() {
  for _ in $(seq 1 1200); do grep -q '^ready' "$1" && return 0; sleep 0.05; done
  echo "receiver not ready" >&2; return 1
}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== reference: slixmpp → Prosody → slixmpp, $COUNT messages"
python3 $HERE/clients.py recv bench2@localhost $PW "$PORT" "$COUNT" bench/ref >"$work/ref.out" &
recv=$!
wait_ready "$work/ref.out"
python3 $HERE/clients.py send bench1@localhost $PW "$PORT" "$COUNT" bench2@localhost
wait $recv
read -r _ ref_rate ref_n < <(grep '^RATE' "$work/ref.out")
echo "   $ref_rate msg/s ($ref_n received)"

echo "== hub: mosquitto_pub → polyhub (MQTT → XMPP) → Prosody → slixmpp, $COUNT messages"
MQTT=$(free_port)
cat >"$work/hub.toml" <<TOML
[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
listen = "127.0.0.1:$MQTT"

[[adapters]]
name = "xmpp"
type = "xmpp"
[adapters.config]
jid = "hub9@localhost/polyhub"
password = "$PW"
server = "127.0.0.1:$PORT"
ca_file = "/tmp/polyhub-prosody/certs/ca.crt"
subscribers = [{ jid = "bench2@localhost", filter = "bench/#" }]
TOML
RUST_LOG=warn "$BIN" run --config "$work/hub.toml" >"$work/hub.log" 2>&1 &
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MQTT") 2>/dev/null && break; sleep 0.1; done
python3 $HERE/clients.py recv bench2@localhost $PW "$PORT" "$COUNT" bench/hub >"$work/hub.out" &
recv=$!
wait_ready "$work/hub.out"
sleep 1 # the hub's presence subscription to bench2 settles
seq 1 "$COUNT" | mosquitto_pub -h 127.0.0.1 -p "$MQTT" -t bench/hub -q 1 -l
wait $recv
read -r _ hub_rate hub_n < <(grep '^RATE' "$work/hub.out")
echo "   $hub_rate msg/s ($hub_n received)"

python3 - "$hub_rate" "$ref_rate" <<'PY'
import sys
hub, ref = float(sys.argv[1]), float(sys.argv[2])
print(f"ratio hub/reference = {hub / ref:.2f}" if ref else "reference rate is 0")
PY
