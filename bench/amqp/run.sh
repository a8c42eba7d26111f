#!/usr/bin/env bash
# MQTT publish -> bridge -> AMQP consumer: polyhub (embedded MQTT broker +
# AMQP adapter) versus RabbitMQ's own MQTT plugin, same script, same
# payloads, same broker. Prints msg/s for both and the ratio.
#
# Runs a private RabbitMQ node (its own ports, data dir and plugin list, with
# rabbitmq_mqtt enabled) so that the shared broker on 5672 and Mosquitto on
# 1883 are left alone; the node is stopped on exit.
#
# Usage: bench/amqp/run.sh [--count N] [--sizes 16,1024] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
log() { printf '\033[1m[bench/amqp]\033[0m %s\n' "$*" >&2; }

wait_port() {
  for _ in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

read -r AMQP_PORT RMQ_MQTT_PORT DIST_PORT HUB_MQTT_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

NODE="polyhub-bench-$$@localhost"
WORK=$(mktemp -d /tmp/polyhub-bench-amqp.XXXXXX)
chmod 777 "$WORK"
HUB_PID=""
cleanup() {
  [[ -n $HUB_PID ]] && kill "$HUB_PID" 2>/dev/null || true
  rabbitmqctl -n "$NODE" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
mqtt.listeners.tcp.default = 127.0.0.1:$RMQ_MQTT_PORT
mqtt.allow_anonymous = true
loopback_users = none
EOF
echo "[rabbitmq_mqtt]." >"$WORK/enabled_plugins"
chmod 666 "$WORK"/*

log "starting a private RabbitMQ node $NODE (AMQP $AMQP_PORT, MQTT plugin $RMQ_MQTT_PORT)"
RUN_AS=(sh -c)
[[ $(id -u) -eq 0 ]] && id rabbitmq >/dev/null 2>&1 && RUN_AS=(su rabbitmq -s /bin/sh -c)
"${RUN_AS[@]}" "cd $WORK && RABBITMQ_NODENAME=$NODE RABBITMQ_DIST_PORT=$DIST_PORT \
  RABBITMQ_CONFIG_FILE=$WORK/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/enabled_plugins \
  RABBITMQ_MNESIA_BASE=$WORK/mnesia RABBITMQ_LOG_BASE=$WORK/log RABBITMQ_PID_FILE=$WORK/pid \
  /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
wait_port "$AMQP_PORT" 90 && wait_port "$RMQ_MQTT_PORT" 30 || { log "RabbitMQ node did not start"; exit 1; }

log "building polyhub (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -q --release -p polyhub
cargo build -q --release -p polyhub-amqp --example amqp_sink --example amqp_source
cat >"$WORK/polyhub.toml" <<EOF
[hub]
name = "bench"

[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
listen = "127.0.0.1:$HUB_MQTT_PORT"
subscribe = ["bench/#"]
forward = []

[[adapters]]
name = "amqp"
type = "amqp"
[adapters.config]
url = "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
exchange = "polyhub-bench"
bindings = []
forward = ["bench/#"]
EOF
RUST_LOG=warn "$CARGO_TARGET_DIR/release/polyhub" run --config "$WORK/polyhub.toml" &
HUB_PID=$!
wait_port "$HUB_MQTT_PORT" 30 || { log "polyhub did not start"; exit 1; }

python3 bench/amqp/mqtt_to_amqp.py \
  --amqp-url "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f" \
  --rabbit-mqtt-port "$RMQ_MQTT_PORT" --hub-mqtt-port "$HUB_MQTT_PORT" \
  --hub-exchange polyhub-bench --sink "$CARGO_TARGET_DIR/release/examples/amqp_sink" \
  --source "$CARGO_TARGET_DIR/release/examples/amqp_source" "$@"
