#!/usr/bin/env bash
# The embedded MQTT broker's benchmark table: polyhub (`polyhub run`, an
# `[[adapters]] type = "mqtt"` with `listen`) against a private Mosquitto
# started by this script, same machine, same run, same clients.
#
#   bench/mqtt/run.sh [throughput] [latency] [idle] [bridge]   (default: all)
#
#   throughput  mosquitto_pub -l → broker → mosquitto_sub, QoS 0 and 1, msg/s
#               (target ≥ 1.0× Mosquitto)
#   latency     p99 publish→deliver latency at RATE msg/s for SECS s
#               (plugins/mqtt/examples/mqtt_latency.rs), QoS 0 and 1
#               (target ≤ 1.2× Mosquitto)
#   idle        RSS per idle connected device: DEVICES raw CONNECTs
#               (bench/mqtt/idle.py) into a fresh broker, (RSS after − before)
#               / DEVICES (target ≤ 8 KiB)
#   bridge      MQTT device → CoAP observer and → SSE client through one hub,
#               msg/s that arrive, against that hub's MQTT → MQTT
#               (bench/mqtt/bridge.py)
#   auth        the throughput run against polyhub with [auth] (a password
#               file and a 24-rule ACL; every PUBLISH and every delivery
#               checked) and against the same hub without [auth], same
#               clients with -u/-P (target ≥ 0.9×); not part of the default
#
# Settings (environment): N=100000 messages per throughput run (N1=50000
# at QoS 1), ROUNDS=3 (best of; brokers alternate), RATE=1000, SECS=10,
# LAT_ROUNDS=2 (lowest p99 of; brokers alternate), DEVICES=10000,
# BRIDGE_N=50000, BRIDGE_ROUNDS=2; HUB=path/to/polyhub measures another
# build (nothing is built then); MOSQUITTO_EXTRA="line" adds a line to
# Mosquitto's configuration (e.g. "max_inflight_messages 0"). Progress goes
# to stderr; the table is printed on stdout as it fills and again as
# markdown at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

N=${N:-100000}
# mosquitto_pub -l at QoS 1 queues every line under its own packet id; past
# 65 535 of them the ids wrap and it loses messages (mosquitto 2.0.11: of
# 70 000 lines 4 476 arrive), so QoS 1 runs publish at most N1.
N1=${N1:-50000}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-1000}
SECS=${SECS:-10}
DEVICES=${DEVICES:-10000}
BRIDGE_N=${BRIDGE_N:-50000}
BRIDGE_ROUNDS=${BRIDGE_ROUNDS:-2}
LAT_ROUNDS=${LAT_ROUNDS:-2}
PARTS=("$@")
((${#PARTS[@]})) || PARTS=(throughput latency idle bridge)
for part in "${PARTS[@]}"; do
  case $part in throughput | latency | idle | bridge | auth) ;; *)
    echo "unknown part '$part': throughput, latency, idle, bridge or auth" >&2
    exit 1
    ;;
  esac
done

log() { printf '\033[1m[bench/mqtt]\033[0m %s\n' "$*" >&2; }
for tool in mosquitto mosquitto_pub mosquitto_sub python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install mosquitto mosquitto-clients python3)" >&2; exit 1; }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${HUB:-} ]]; then
  log "building polyhub (release)"
  cargo build -q --release -p polyhub --bin polyhub
  HUB=$CARGO_TARGET_DIR/release/polyhub
fi
LATENCY=$CARGO_TARGET_DIR/release/examples/mqtt_latency
if [[ " ${PARTS[*]} " == *" latency "* ]]; then
  log "building mqtt_latency (release)"
  cargo build -q --release -p polyhub-mqtt --example mqtt_latency
fi

# 10 000 sockets per server and as many in idle.py.
ulimit -n "$(ulimit -Hn)"
if [[ " ${PARTS[*]} " == *" idle "* ]] && (($(ulimit -n) < DEVICES + 200)); then
  echo "ulimit -n is $(ulimit -n) (hard limit): too low for $DEVICES devices" >&2
  exit 1
fi

work=$(mktemp -d /tmp/polyhub-bench-mqtt.XXXXXX)
chmod 777 "$work"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until something accepts TCP connections on port $1 (pid $2 alive).
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "server (pid $2) exited before listening on $1" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listening on $1 after 30 s" >&2
  return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
calc() { python3 -c "print($1)"; }

# Starts a private Mosquitto as NAME; sets MPORT and MPID.
start_mosquitto() {
  MPORT=$(free_port)
  cat >"$work/$1.conf" <<EOF
listener $MPORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
${MOSQUITTO_EXTRA:-}
EOF
  mosquitto -c "$work/$1.conf" >"$work/$1.log" 2>&1 &
  MPID=$!
  pids+=("$MPID")
  wait_port "$MPORT" "$MPID"
}

# Starts polyhub as NAME with only the embedded broker (plus, with a second
# argument "bridge", the CoAP and HTTP adapters); sets PPORT, PPID (and
# COAP_PORT, HTTP_PORT).
start_hub() {
  PPORT=$(free_port)
  cat >"$work/$1.toml" <<EOF
[hub]
name = "bench"

[[adapters]]
name = "mqtt"
type = "mqtt"
[adapters.config]
listen = "127.0.0.1:$PPORT"
max_connections = $((DEVICES + 1000))
max_queued_messages = 1000000
EOF
  if [[ ${2:-} == bridge ]]; then
    COAP_PORT=$(free_udp_port)
    HTTP_PORT=$(free_port)
    cat >>"$work/$1.toml" <<EOF

[[adapters]]
name = "coap"
type = "coap"
[adapters.config]
bind = "127.0.0.1:$COAP_PORT"

[[adapters]]
name = "http"
type = "http"
[adapters.config]
bind = "127.0.0.1:$HTTP_PORT"
EOF
  fi
  if [[ ${2:-} == auth ]]; then
    # The bench user writes and reads bench/#; the other rules are there to
    # be searched: users, patterns with %u and %c, a deny.
    "$HUB" passwd -b bench-secret "$work/passwords" bench >/dev/null 2>&1
    {
      echo "pattern read sensor/+/data"
      echo "pattern write sensor/%u/+/data"
      echo "pattern readwrite devices/%c/#"
      echo "pattern deny devices/%c/secret"
      for u in $(seq 1 8); do
        echo "user user$u"
        echo "topic readwrite site$u/#"
        echo "topic read alarms/+/site$u"
      done
      echo "user bench"
      echo "topic deny bench/secret"
      echo "topic readwrite bench/#"
    } >"$work/acl"
    cat >>"$work/$1.toml" <<EOF

[auth]
password_file = "$work/passwords"
acl_file = "$work/acl"
allow_anonymous = false
EOF
  fi
  RUST_LOG=warn "$HUB" run --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  PPID_HUB=$!
  pids+=("$PPID_HUB")
  wait_port "$PPORT" "$PPID_HUB"
  [[ ${2:-} == bridge ]] && wait_port "$HTTP_PORT" "$PPID_HUB"
  return 0
}

# Rows of the table: metric, polyhub, Mosquitto (or reference), ratio,
# target, verdict.
rows=()
row() {
  rows+=("$1|$2|$3|$4|$5|$6")
  printf '%-44s %14s %14s %7s %8s  %s\n' "$1" "$2" "$3" "$4" "$5" "$6"
}
# met VALUE OP LIMIT → "met" / "not met"
met() { python3 -c "print('met' if $1 $2 $3 else 'not met')"; }

# ---- 1. throughput ---------------------------------------------------------

# One run: mosquitto_sub (N+1 messages: a retained "ready" message that says
# the subscription is in place, then the N) and mosquitto_pub -l; msg/s from
# the publisher's start to the subscriber's last message.
tp_once() {
  local port=$1 qos=$2 start end sub N=$N
  ((qos == 0)) || N=$((N1 < N ? N1 : N))
  # TP_CRED="-u USER -P PASSWORD" logs every client in.
  # shellcheck disable=SC2206
  local cred=(${TP_CRED:-})
  mosquitto_pub "${cred[@]}" -h 127.0.0.1 -p "$port" -t bench/tp/ready -r -q 1 -m ready
  : >"$work/sub.out"
  mosquitto_sub "${cred[@]}" -h 127.0.0.1 -p "$port" -t bench/tp/ready -t bench/tp/t -q "$qos" \
    -C $((N + 1)) -W 60 >"$work/sub.out" &
  sub=$!
  for _ in $(seq 1 300); do
    [[ -s $work/sub.out ]] && break
    kill -0 "$sub" 2>/dev/null || break
    sleep 0.01
  done
  [[ -s $work/sub.out ]] || { echo "subscriber on $port never got the ready message" >&2; return 1; }
  start=$(date +%s.%N)
  head -n "$N" "$work/lines" | mosquitto_pub "${cred[@]}" -h 127.0.0.1 -p "$port" -t bench/tp/t -q "$qos" -l
  wait "$sub" || { echo "subscriber on $port did not get $N messages (QoS $qos)" >&2; return 1; }
  end=$(date +%s.%N)
  calc "f'{$N/($end-$start):.0f}'"
}

part_throughput() {
  log "throughput: $N (QoS 0) / $((N1 < N ? N1 : N)) (QoS 1) messages of 16 bytes per run, best of $ROUNDS, brokers alternating"
  for i in $(seq 1 "$N"); do printf 'payload-%08d\n' "$i"; done >"$work/lines"
  start_mosquitto tp-mosquitto
  local mport=$MPORT mpid=$MPID
  start_hub tp-hub
  local pport=$PPORT ppid=$PPID_HUB
  for qos in 0 1; do
    local bm=0 bp=0 m p
    for r in $(seq 1 "$ROUNDS"); do
      m=$(tp_once "$mport" "$qos")
      p=$(tp_once "$pport" "$qos")
      log "  QoS $qos round $r: Mosquitto $m msg/s, polyhub $p msg/s"
      ((m > bm)) && bm=$m
      ((p > bp)) && bp=$p
    done
    local ratio
    ratio=$(calc "f'{$bp/$bm:.2f}'")
    row "throughput QoS $qos (msg/s)" "$bp" "$bm" "${ratio}x" "≥ 1.0x" "$(met "$ratio" '>=' 1.0)"
  done
  kill "$mpid" "$ppid"
}

# ---- 2. latency ------------------------------------------------------------

p99_of() { sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$1"; }
p50_of() { sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$1"; }

part_auth() {
  log "auth: throughput with and without [auth], $N (QoS 0) / $((N1 < N ? N1 : N)) (QoS 1) messages, best of $ROUNDS, hubs alternating"
  [[ -s $work/lines ]] || for i in $(seq 1 "$N"); do printf 'payload-%08d\n' "$i"; done >"$work/lines"
  start_hub auth-off
  local oport=$PPORT opid=$PPID_HUB
  start_hub auth-on auth
  local aport=$PPORT apid=$PPID_HUB
  for qos in 0 1; do
    local bo=0 ba=0 o a
    for r in $(seq 1 "$ROUNDS"); do
      o=$(TP_CRED="-u bench -P bench-secret" tp_once "$oport" "$qos")
      a=$(TP_CRED="-u bench -P bench-secret" tp_once "$aport" "$qos")
      log "  QoS $qos round $r: without [auth] $o msg/s, with [auth] $a msg/s"
      ((o > bo)) && bo=$o
      ((a > ba)) && ba=$a
    done
    local ratio
    ratio=$(calc "f'{$ba/$bo:.2f}'")
    row "throughput QoS $qos with [auth] (msg/s)" "$ba" "$bo" "${ratio}x" "≥ 0.9x" "$(met "$ratio" '>=' 0.9)"
  done
  # The ACL really was in force: an anonymous client is refused.
  if mosquitto_pub -h 127.0.0.1 -p "$aport" -t bench/tp/t -m x 2>/dev/null; then
    echo "the [auth] hub let an anonymous client publish: the run measured nothing" >&2
    exit 1
  fi
  kill "$opid" "$apid"
}

part_latency() {
  log "latency: $RATE msg/s for $SECS s (after 1 s warm-up), 16-byte payloads, best p99 of $LAT_ROUNDS, brokers alternating"
  start_mosquitto lat-mosquitto
  local mport=$MPORT mpid=$MPID
  start_hub lat-hub
  local pport=$PPORT ppid=$PPID_HUB
  for qos in 0 1; do
    local mo po bm="" bp="" r
    for r in $(seq 1 "$LAT_ROUNDS"); do
      mo=$("$LATENCY" "127.0.0.1:$mport" "$RATE" "$SECS" "$qos")
      log "  QoS $qos round $r Mosquitto: $mo"
      po=$("$LATENCY" "127.0.0.1:$pport" "$RATE" "$SECS" "$qos")
      log "  QoS $qos round $r polyhub:   $po"
      if [[ -z $bm ]] || (($(p99_of "$mo") < $(p99_of "$bm"))); then bm=$mo; fi
      if [[ -z $bp ]] || (($(p99_of "$po") < $(p99_of "$bp"))); then bp=$po; fi
    done
    local m p ratio
    m=$(p99_of "$bm")
    p=$(p99_of "$bp")
    ratio=$(calc "f'{$p/max($m,1):.2f}'")
    row "p99 latency QoS $qos at $RATE msg/s (µs)" "$p" "$m" "${ratio}x" "≤ 1.2x" "$(met "$ratio" '<=' 1.2)"
    local m50 p50
    m50=$(p50_of "$bm")
    p50=$(p50_of "$bp")
    row "  p50 of the same runs (µs, no target)" "$p50" "$m50" "$(calc "f'{$p50/max($m50,1):.2f}'")x" "-" "-"
  done
  kill "$mpid" "$ppid"
}

# ---- 3. idle devices -------------------------------------------------------

# RSS per device (bytes) of server PID on PORT: DEVICES idle connections.
idle_once() {
  local port=$1 pid=$2 before after line
  before=$(rss_kib "$pid")
  coproc IDLE { exec python3 bench/mqtt/idle.py "$port" "$DEVICES"; }
  local idle_pid=$IDLE_PID
  read -r line <&"${IDLE[0]}" || true
  [[ $line == "connected $DEVICES" ]] || { echo "idle.py: $line" >&2; return 1; }
  after=$(rss_kib "$pid")
  echo >&"${IDLE[1]}"
  wait "$idle_pid" || true
  log "  pid $pid: RSS $before KiB before, $after KiB with $DEVICES devices"
  calc "f'{($after-$before)*1024/$DEVICES:.0f}'"
}

part_idle() {
  log "idle: $DEVICES devices, MQTT 3.1.1 CONNECT with keepalive 600, fresh brokers"
  start_mosquitto idle-mosquitto
  local m p
  m=$(idle_once "$MPORT" "$MPID")
  kill "$MPID"
  start_hub idle-hub
  p=$(idle_once "$PPORT" "$PPID_HUB")
  kill "$PPID_HUB"
  row "RSS per idle device (bytes)" "$p" "$m" "$(calc "f'{$p/max($m,1):.2f}'")x" "≤ 8192 B" "$(met "$p" '<=' 8192)"
}

# ---- 4. MQTT → CoAP / SSE --------------------------------------------------

part_bridge() {
  log "bridge: $BRIDGE_N QoS 0 messages from mosquitto_pub -l, best of $BRIDGE_ROUNDS"
  local coap_client
  coap_client=$(command -v coap-client-notls || command -v coap-client) \
    || { echo "coap-client not found: apt-get install libcoap3-bin" >&2; return 1; }
  command -v curl >/dev/null || { echo "curl is missing" >&2; return 1; }
  start_hub bridge-hub bridge
  python3 bench/mqtt/bridge.py --mqtt-port "$PPORT" --coap-port "$COAP_PORT" \
    --http-port "$HTTP_PORT" --count "$BRIDGE_N" --rounds "$BRIDGE_ROUNDS" \
    --coap-client "$coap_client" >"$work/bridge.out"
  kill "$PPID_HUB"

  f() { sed -n "s/^$1 .*$2=\([0-9.]*\).*/\1/p" "$work/bridge.out"; }
  local ref
  ref=$(f mqtt rate)
  row "MQTT → MQTT via the hub (msg/s, reference)" "$ref" "-" "1.00x" "-" "received $(f mqtt received)/$BRIDGE_N, dropped $(f mqtt dropped)"
  for kind in coap sse; do
    local r label
    r=$(f "$kind" rate)
    label="MQTT → CoAP observer (msg/s)"
    [[ $kind == sse ]] && label="MQTT → SSE /events (msg/s)"
    local note="received $(f "$kind" received)/$BRIDGE_N, dropped $(f "$kind" dropped)"
    [[ $kind == coap ]] && note+=", UDP receive-buffer drops $(f "$kind" udp_rcvbuf)"
    row "$label" "$r" "$ref" "$(calc "f'{$r/max($ref,1):.2f}'")x" "-" "$note"
  done
}

# ---- the table -------------------------------------------------------------

log "machine: $(nproc) cores, $(uptime)"
printf '%-44s %14s %14s %7s %8s  %s\n' "metric" "polyhub" "Mosquitto" "ratio" "target" "verdict"
for part in "${PARTS[@]}"; do
  "part_$part"
done

load=$(uptime | sed 's/.*load average: //')
echo
echo "| metric | polyhub | Mosquitto / reference | ratio | target | verdict |"
echo "| --- | --- | --- | --- | --- | --- |"
for r in "${rows[@]}"; do
  IFS='|' read -r a b c d e g <<<"$r"
  echo "| $a | $b | $c | $d | $e | $g |"
done
echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average at the end: $load; N=$N N1=$N1 ROUNDS=$ROUNDS RATE=$RATE SECS=$SECS LAT_ROUNDS=$LAT_ROUNDS DEVICES=$DEVICES BRIDGE_N=$BRIDGE_N BRIDGE_ROUNDS=$BRIDGE_ROUNDS"
