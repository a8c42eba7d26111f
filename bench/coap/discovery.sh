#!/usr/bin/env bash
# /.well-known/core under load: TOPICS topics (published over one HTTP
# keep-alive connection), then PEERS libcoap clients walking the whole
# listing block by block at once, while another device GETs a topic every
# 10 ms. Prints the hub's RSS before and at its peak, that device's GET
# latency (p50/p99/max), and the time and bytes of one discovery request
# (block 0, a fresh peer each time).
#
#   bench/coap/discovery.sh [TOPICS] [PEERS]
#
# HUB=path/to/polyhub runs another build (e.g. main's, for a before/after).
# WALKER=aiocoap walks with aiocoap (bench/coap/walk_aiocoap.py; pip install
# aiocoap) instead of libcoap's coap-client. libcoap 4.3.1's client stalls
# at the block after the first 64 KiB in some concurrent walks: the server's
# response is on the wire (tcpdump), the client acts on it only when its
# retransmission timer fires, 2 s to minutes later, and some walks time out
# (-B 600) there; aiocoap's walks of the same listing all complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOPICS=${1:-200000}
PEERS=${2:-80}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
log() { printf '\033[1m[bench/coap/discovery]\033[0m %s\n' "$*"; }
WALKER=${WALKER:-libcoap}
case $WALKER in
  libcoap)
    client=$(command -v coap-client || command -v coap-client-notls) \
      || { echo "coap-client not found: apt-get install libcoap3-bin" >&2; exit 1; } ;;
  aiocoap)
    python3 -c 'import aiocoap' 2>/dev/null \
      || { echo "aiocoap not found: python3 -m pip install aiocoap" >&2; exit 1; }
    client=aiocoap ;;
  *) echo "WALKER is libcoap or aiocoap" >&2; exit 1 ;;
esac
if [[ -z ${HUB:-} ]]; then
  log "building (release)"
  cargo build -q --release -p polyhub
  HUB=$CARGO_TARGET_DIR/release/polyhub
fi
free_port() { python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.$1); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
coap_port=$(free_port SOCK_DGRAM)
http_port=$(free_port SOCK_STREAM)
cfg=$(mktemp --suffix .toml)
hub_pid=""
cleanup() { [[ -n $hub_pid ]] && kill "$hub_pid" 2>/dev/null; rm -f "$cfg"; }
trap cleanup EXIT
cat >"$cfg" <<TOML
[hub]
max_topics = $((TOPICS + 1000))
[[adapters]]
name = "http"
type = "http"
[adapters.config]
bind = "127.0.0.1:$http_port"
[[adapters]]
name = "coap"
type = "coap"
[adapters.config]
bind = "127.0.0.1:$coap_port"
TOML
RUST_LOG=warn "$HUB" run --config "$cfg" >/dev/null 2>&1 &
hub_pid=$!
log "hub pid $hub_pid: coap $coap_port, http $http_port; $TOPICS topics, $PEERS peers"
python3 - "$hub_pid" "$coap_port" "$http_port" "$TOPICS" "$PEERS" "$client" <<'PY'
import http.client, os, random, socket, statistics, struct, subprocess, sys, threading, time
pid, coap, http_port, topics, peers, client = sys.argv[1:]
coap, http_port, topics, peers = int(coap), int(http_port), int(topics), int(peers)

def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", http_port), 0.2).close(); break
    except OSError:
        time.sleep(0.1)

def publish(lo, hi):
    c = http.client.HTTPConnection("127.0.0.1", http_port)
    for i in range(lo, hi):
        c.request("POST", f"/topics/fleet/{i % 50:02}/dev-{i:06}", body=b"1")
        c.getresponse().read()
t0 = time.time()
n = 4
ths = [threading.Thread(target=publish, args=(k * topics // n, (k + 1) * topics // n)) for k in range(n)]
[t.start() for t in ths]; [t.join() for t in ths]
c = http.client.HTTPConnection("127.0.0.1", http_port)
c.request("POST", "/topics/probe/x", body=b"here"); c.getresponse().read()
print(f"published {topics} topics in {time.time() - t0:.1f} s")

def get(sock, path, mid, extra=b""):
    opts = b""
    last = 0
    for seg in path:
        delta = 11 - last
        b = seg.encode()
        if len(b) < 13:
            opts += bytes([delta << 4 | len(b)]) + b
        else:
            opts += bytes([delta << 4 | 13, len(b) - 13]) + b
        last = 11
    msg = bytes([0x41, 0x01]) + struct.pack(">H", mid) + b"\x7a" + opts + extra
    sock.send(msg)
    return sock.recv(70000)

# One discovery request (block 0) from fresh peers.
times, sizes = [], []
for i in range(10):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("127.0.0.1", coap)); s.settimeout(30)
    t = time.perf_counter(); r = get(s, [".well-known", "core"], 1000 + i); times.append(time.perf_counter() - t)
    sizes.append(len(r)); s.close()
print(f"one discovery request (block 0, fresh peer): median {statistics.median(times)*1000:.2f} ms, {statistics.median(sizes)} bytes answered")
print(f"RSS before the peers: {rss()} MB")

stop = threading.Event()
lat, lost = [], [0]
def probe():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("127.0.0.1", coap)); s.settimeout(2)
    mid = 0
    while not stop.is_set():
        mid = (mid + 1) & 0xFFFF
        t = time.perf_counter()
        try:
            get(s, ["ps", "probe", "x"], mid)
            lat.append(time.perf_counter() - t)
        except socket.timeout:
            lost[0] += 1
        time.sleep(0.01)
peak = [0]
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.2)
threading.Thread(target=probe, daemon=True).start()
threading.Thread(target=sample, daemon=True).start()
time.sleep(1)
base = list(lat)
t0 = time.time()
if client == "aiocoap":
    cmd = ["python3", os.path.join("bench", "coap", "walk_aiocoap.py"), str(coap)]
else:
    cmd = [client, "-B", "600", f"coap://127.0.0.1:{coap}/.well-known/core"]
procs = [subprocess.Popen(cmd,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(peers)]
outs = [p.communicate()[0] for p in procs]
walk = time.time() - t0
during = lat[len(base):]
stop.set(); time.sleep(0.3)
links = [o.count(b'rt="polyhub.topic"') for o in outs]
def q(v, p): return sorted(v)[min(len(v) - 1, int(len(v) * p))] * 1000 if v else float("nan")
print(f"{peers} peers walked the listing in {walk:.1f} s; links per walk: min {min(links)} max {max(links)} (expected {topics + 1})")
print(f"RSS peak during the walks: {peak[0]} MB; after: {rss()} MB")
print(f"other device's GET before: p50 {q(base, .5):.2f} ms; during: p50 {q(during, .5):.2f} ms, p99 {q(during, .99):.2f} ms, max {q(during, 1):.2f} ms, {len(during)} answered, {lost[0]} timed out")
PY
