#!/usr/bin/env bash
# Starts (or finds running) a private Prosody for polyhub's XMPP tests.
#
#   scripts/prosody/instance.sh [DIR]        default DIR=/tmp/polyhub-prosody
#
# Idempotent: when DIR holds a live instance, does nothing. Otherwise picks a
# free loopback port, writes DIR/prosody.cfg.lua from prosody.cfg.lua.in, a
# private CA and a certificate for localhost (DIR/certs/ca.crt), registers
# the test accounts (every one with password "polyhub-pw"), starts Prosody in
# the background and waits for the port. Prints the port; DIR/port holds it.
#
#   scripts/prosody/instance.sh --stop DIR   stops the instance of DIR
#   scripts/prosody/instance.sh --start DIR  starts an already configured DIR
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ACCOUNTS="${PROSODY_ACCOUNTS:-hub hub1 hub2 hub3 hub4 hub5 hub6 hub7 hub8 hub9 alice bob carol dave erin frank grace mallory bench1 bench2}"
PASSWORD="polyhub-pw"

mode=ensure
case "${1:-}" in
  --stop) mode=stop; shift ;;
  --start) mode=start; shift ;;
esac
DIR="${1:-/tmp/polyhub-prosody}"

alive() {
  [[ -f $DIR/prosody.pid ]] && kill -0 "$(cat "$DIR/prosody.pid")" 2>/dev/null
}

wait_port() {
  local port=$1
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "prosody did not open port $port; see $DIR/prosody.log" >&2
  return 1
}

start() {
  rm -f "$DIR/prosody.pid"
  # -F: foreground (we background it ourselves, without systemd).
  setsid prosody --config "$DIR/prosody.cfg.lua" -F >>"$DIR/prosody.out" 2>&1 </dev/null 9>&- &
  wait_port "$(cat "$DIR/port")"
}

stop() {
  if alive; then
    local pid
    pid=$(cat "$DIR/prosody.pid")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/prosody.pid"
}

case $mode in
  stop) stop; exit 0 ;;
  start) start; cat "$DIR/port"; exit 0 ;;
esac

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if alive && [[ -f $DIR/port ]] && (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$DIR/port")") 2>/dev/null; then
  cat "$DIR/port"
  exit 0
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "$port" >"$DIR/port"
mkdir -p "$DIR/data" "$DIR/certs"
# As root (CI, containers) Prosody would switch to its system user, which
# cannot write DIR; a private throwaway instance may run as root instead.
run_as=""
if [[ $(id -u) -eq 0 ]]; then
  run_as='run_as_root = true; prosody_user = "root"; prosody_group = "root"'
fi
sed -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$port|g" -e "s|@RUN_AS@|$run_as|" \
  "$HERE/prosody.cfg.lua.in" >"$DIR/prosody.cfg.lua"

if [[ ! -f $DIR/certs/localhost.crt ]]; then
  (
    cd "$DIR/certs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=polyhub test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout localhost.key -out localhost.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in localhost.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile ext.cnf -out localhost.crt 2>/dev/null
    chmod 644 localhost.key
  )
fi

for user in $ACCOUNTS; do
  [[ -e "$DIR/data/localhost/accounts/$user.dat" ]] && continue
  prosodyctl --config "$DIR/prosody.cfg.lua" register "$user" localhost "$PASSWORD" >/dev/null
done

start
cat "$DIR/port"
