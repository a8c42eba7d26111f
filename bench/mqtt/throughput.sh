#!/usr/bin/env bash
# Publish→subscribe throughput of polyhub's embedded MQTT broker against
# Mosquitto, same machine, same run, same clients:
#   mosquitto_pub -l (N messages, one per line) → broker → mosquitto_sub -C N
# once through a private Mosquitto and once through `polyhub run` with an
# embedded broker (`listen`), each at QoS 0 and QoS 1. Prints messages per
# second and the ratio embedded/Mosquitto.
#
#   bench/mqtt/throughput.sh [N]      (default N = 20000, 16-byte payloads)
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-20000}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
chmod 777 "$work"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2
  return 1
}

echo "building polyhub (release)…" >&2
cargo build --release -q -p polyhub
bin=${CARGO_TARGET_DIR:-target}/release/polyhub

mport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$mport" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)

pport=$(free_port)
cat >"$work/polyhub.toml" <<EOF
[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
listen = "127.0.0.1:$pport"
EOF
RUST_LOG=warn "$bin" run --config "$work/polyhub.toml" >"$work/polyhub.log" 2>&1 &
pids+=($!)
wait_port "$mport"
wait_port "$pport"

# N lines of 16 bytes.
for i in $(seq 1 "$N"); do printf 'payload-%08d\n' "$i"; done >"$work/lines"

# Messages per second for one run: port qos.
run_once() {
  local port=$1 qos=$2 start end
  mosquitto_sub -h 127.0.0.1 -p "$port" -t bench/t -q "$qos" -C "$N" -W 120 >/dev/null &
  local sub=$!
  # Let the subscription settle before publishing.
  sleep 0.3
  start=$(date +%s.%N)
  mosquitto_pub -h 127.0.0.1 -p "$port" -t bench/t -q "$qos" -l <"$work/lines"
  wait "$sub"
  end=$(date +%s.%N)
  python3 -c "print(f'{$N/($end-$start):.0f}')"
}

# Best of ROUNDS for port qos.
best() {
  local b=0 r
  for _ in $(seq 1 "$ROUNDS"); do
    r=$(run_once "$1" "$2")
    ((r > b)) && b=$r
  done
  echo "$b"
}

printf '%-6s %18s %18s %8s\n' "qos" "mosquitto msg/s" "embedded msg/s" "ratio"
for qos in 0 1; do
  m=$(best "$mport" "$qos")
  p=$(best "$pport" "$qos")
  ratio=$(python3 -c "print(f'{$p/$m:.2f}')")
  printf '%-6s %18s %18s %8s\n' "$qos" "$m" "$p" "$ratio"
done
echo "($N messages of 16 bytes per run, best of $ROUNDS; ratio = embedded / Mosquitto)"
