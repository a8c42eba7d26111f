#!/usr/bin/env bash
# Publish→subscribe throughput of polyhub's embedded MQTT broker against
# Mosquitto: the `throughput` part of bench/mqtt/run.sh (mosquitto_pub -l →
# broker → mosquitto_sub, QoS 0 and 1, best of ROUNDS, ratio polyhub /
# Mosquitto), kept under its old name.
#
#   bench/mqtt/throughput.sh [N]      (default N = 100000, 16-byte payloads)
set -euo pipefail
N=${1:-${N:-100000}} exec "$(dirname "$0")/run.sh" throughput
