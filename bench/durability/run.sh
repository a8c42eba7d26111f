#!/usr/bin/env bash
# What `[hub] data_dir` costs: QoS 1 throughput through the embedded MQTT
# broker with the store (fsync = "batch", the default, and "always")
# against the same hub in memory, same run, same clients; and the store's
# size per queued message.
#
#   bench/durability/run.sh [throughput] [size]        (default: both)
#
#   throughput  P mosquitto_pub -l -q 1 (each -M INFLIGHT in flight) →
#               hub → one QoS 1 subscriber (SUB=session: a persistent
#               session, so that every message also goes through its
#               durable queue; SUB=clean: a clean session), msg/s until the
#               last PUBACK and the last delivery, best of ROUNDS, hubs
#               alternating; ratio data_dir / memory (target ≥ 0.5× with
#               fsync = "batch")
#   size        a persistent-session subscriber that went offline; Q QoS 1
#               messages of BYTES bytes queued for it; growth of
#               polyhub.redb / Q (and the same after the subscriber took
#               them: what a drained queue leaves)
#
# Settings (environment): N=40000 messages per run, P=4 publishers,
# INFLIGHT=100, ROUNDS=3, SUB=session, Q=20000, BYTES=64; HUB=path/to/polyhub
# measures another build (nothing is built then). Progress goes to stderr;
# the table to stdout, as markdown at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

N=${N:-40000}
P=${P:-4}
INFLIGHT=${INFLIGHT:-100}
ROUNDS=${ROUNDS:-3}
SUB=${SUB:-session}
Q=${Q:-20000}
BYTES=${BYTES:-64}
PARTS=("$@")
((${#PARTS[@]})) || PARTS=(throughput size)
for part in "${PARTS[@]}"; do
  case $part in throughput | size) ;; *)
    echo "unknown part '$part': throughput or size" >&2
    exit 1
    ;;
  esac
done

log() { printf '\033[1m[bench/durability]\033[0m %s\n' "$*" >&2; }
for tool in mosquitto_pub mosquitto_sub python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install mosquitto-clients python3)" >&2; exit 1; }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${HUB:-} ]]; then
  log "building polyhub (release)"
  cargo build -q --release -p polyhub --bin polyhub
  HUB=$CARGO_TARGET_DIR/release/polyhub
fi

work=$(mktemp -d /tmp/polyhub-bench-durability.XXXXXX)
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
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "hub (pid $2) exited before listening on $1; its log:" >&2; cat "$3" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listening on $1 after 30 s" >&2
  return 1
}
calc() { python3 -c "print($1)"; }
now() { date +%s.%N; }

# start_hub NAME MODE (memory | batch | always) [DIR]: sets PORT and HPID.
start_hub() {
  PORT=$(free_port)
  local dir=${3:-$work/$1.data}
  {
    echo '[hub]'
    echo 'name = "bench"'
    if [[ $2 != memory ]]; then
      echo "data_dir = \"$dir\""
      echo "fsync = \"$2\""
    fi
    echo
    echo '[[adapters]]'
    echo 'name = "mqtt"'
    echo 'type = "mqtt"'
    echo '[adapters.config]'
    echo "listen = \"127.0.0.1:$PORT\""
    echo 'max_queued_messages = 1000000'
  } >"$work/$1.toml"
  RUST_LOG=warn "$HUB" run --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  HPID=$!
  pids+=("$HPID")
  wait_port "$PORT" "$HPID" "$work/$1.log"
}

stop_hub() {
  kill "$HPID" 2>/dev/null || true
  wait "$HPID" 2>/dev/null || true
}

rows=()
row() {
  rows+=("$1|$2|$3|$4|$5")
  printf '%-52s %14s %14s %8s  %s\n' "$1" "$2" "$3" "$4" "$5"
}

# One throughput run against a fresh hub in MODE: msg/s.
throughput_run() {
  local mode=$1 name="tp-$1-$RANDOM"
  start_hub "$name" "$mode"
  # A retained probe first: it comes with the SUBACK, so its line says the
  # subscriber is in place.
  mosquitto_pub -q 1 -r -t bench/probe -m probe -p "$PORT"
  local sub_args=(-q 1 -t 'bench/#' -C "$((N / P * P + 1))" -p "$PORT")
  [[ $SUB == session ]] && sub_args+=(-c -i "bench-sub-$RANDOM")
  mosquitto_sub "${sub_args[@]}" >"$work/$name.out" &
  local sub=$!
  for _ in $(seq 1 100); do
    [[ -s $work/$name.out ]] && break
    sleep 0.05
  done
  local per=$((N / P)) start end
  for i in $(seq 1 "$P"); do
    seq 1 "$per" | sed "s/^/p$i-/" >"$work/$name.in$i"
  done
  start=$(now)
  local pubs=()
  for i in $(seq 1 "$P"); do
    mosquitto_pub -q 1 -M "$INFLIGHT" -l -t "bench/p$i" -p "$PORT" <"$work/$name.in$i" &
    pubs+=($!)
  done
  for p in "${pubs[@]}"; do wait "$p"; done
  wait "$sub"
  end=$(now)
  local got
  got=$(($(wc -l <"$work/$name.out") - 1))
  stop_hub
  rm -rf "$work/$name.data"
  if ((got != per * P)); then
    echo "the $mode run delivered $got of $((per * P))" >&2
    return 1
  fi
  calc "round($((per * P)) / ($end - $start))"
}

if [[ " ${PARTS[*]} " == *" throughput "* ]]; then
  best_mem=0 best_batch=0 best_always=0
  for r in $(seq 1 "$ROUNDS"); do
    for mode in memory batch always; do
      log "throughput round $r/$ROUNDS: $mode ($N QoS 1 messages, $P publishers, SUB=$SUB)"
      rate=$(throughput_run "$mode")
      log "  $rate msg/s"
      case $mode in
        memory) ((rate > best_mem)) && best_mem=$rate ;;
        batch) ((rate > best_batch)) && best_batch=$rate ;;
        always) ((rate > best_always)) && best_always=$rate ;;
      esac
    done
  done
  ratio=$(calc "round($best_batch / $best_mem, 2)")
  verdict=$(python3 -c "print('met' if $best_batch / $best_mem >= 0.5 else 'not met')")
  row "QoS 1 msg/s, data_dir fsync=batch vs memory" "$best_batch" "$best_mem" "${ratio}x" "≥ 0.5× $verdict"
  ratio=$(calc "round($best_always / $best_mem, 2)")
  row "QoS 1 msg/s, data_dir fsync=always vs memory" "$best_always" "$best_mem" "${ratio}x" "(no target)"
fi

if [[ " ${PARTS[*]} " == *" size "* ]]; then
  dir=$work/size.data
  start_hub size batch "$dir"
  id="bench-offline-$RANDOM"
  # Subscribe, then go away: the session stays, its queue fills.
  mosquitto_sub -c -i "$id" -q 1 -t 'queued/#' -p "$PORT" -W 1 >/dev/null 2>&1 || true
  before=$(stat -c %s "$dir/polyhub.redb")
  log "size: $Q QoS 1 messages of $BYTES bytes for an offline persistent session"
  payload=$(head -c "$BYTES" /dev/zero | tr '\0' x)
  { yes "$payload" || true; } | head -n "$Q" | mosquitto_pub -q 1 -M "$INFLIGHT" -l -t queued/one -p "$PORT"
  stop_hub
  after=$(stat -c %s "$dir/polyhub.redb")
  per=$(calc "round(($after - $before) / $Q, 1)")
  row "store bytes per queued message ($BYTES-byte payload)" "$per" "" "" "$((after - before)) bytes for $Q"
  # The subscriber comes back for them.
  start_hub size2 batch "$dir"
  got=$(mosquitto_sub -c -i "$id" -q 1 -t 'queued/#' -p "$PORT" -C "$Q" -W 60 | wc -l || true)
  stop_hub
  drained=$(stat -c %s "$dir/polyhub.redb")
  row "messages delivered after a restart" "$got" "$Q" "" "$([[ $got -ge $Q ]] && echo met || echo 'not met')"
  row "store file after the queue drained (bytes)" "$drained" "$after" "" "redb reuses freed pages"
fi

echo
echo "| metric | polyhub | reference | ratio | target |"
echo "|---|---|---|---|---|"
for r in "${rows[@]}"; do
  IFS='|' read -r a b c d e <<<"$r"
  echo "| $a | $b | $c | $d | $e |"
done
