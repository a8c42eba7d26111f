#!/usr/bin/env python3
"""MQTT device -> other protocol's subscriber, through one polyhub.

For each kind of subscriber a fresh topic is used and the subscriber is
started as a real third-party client writing what it receives to a pipe:
  mqtt: mosquitto_sub -q 0               (the reference: MQTT -> MQTT)
  coap: coap-client-notls -s … -m get coap://…/ps/TOPIC   (RFC 7641 observe)
  sse:  curl -sN http://…/events?filter=TOPIC             (HTTP adapter SSE)
Warm-up messages (payload `…W!`) are published once every 100 ms until the
first one reaches the subscriber, which says its subscription is in place.
Then `mosquitto_pub -q 0 -l` publishes COUNT 16-byte messages (payload
`p<13 digits>M!`), and this script counts the `M!` markers in the
subscriber's output until COUNT arrived or nothing came for IDLE seconds.

Prints one line per subscriber kind:
  KIND received=… of=… secs=… rate=… dropped=…
rate = received / (last arrival - publisher start); dropped = the increase
of the hub's polyhub_dropped_total for the subscriber's adapter (mqtt, coap
or http) on /metrics over the run. SSE streams and CoAP observers are
at-most-once: a subscriber queue that is full drops QoS 0 messages.
udp_rcvbuf = the increase of the kernel's UDP RcvbufErrors (machine-wide):
notifications the hub sent that the observer's socket had no room for.

  bridge.py --mqtt-port P --coap-port P --http-port P [--count N]
            [--rounds R] [--kinds mqtt,coap,sse]
"""

import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.request

MARK = b"M!"
WARM = b"W!"


def udp_rcvbuf_errors():
    """The kernel's count of UDP datagrams dropped because a socket's receive
    buffer was full (machine-wide: /proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def dropped(http_port, adapter):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("polyhub_dropped_total{") and f'adapter="{adapter}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class Counter:
    """Reads a subscriber's stdout; counts markers and stamps the last one."""

    def __init__(self, proc):
        self.proc = proc
        self.count = 0
        self.warm = 0
        self.last = None
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        tail = b""
        out = self.proc.stdout
        while True:
            chunk = os.read(out.fileno(), 1 << 16)
            if not chunk:
                with self.cond:
                    self.cond.notify_all()
                return
            now = time.monotonic()
            data = tail + chunk
            n, w = data.count(MARK), data.count(WARM)
            tail = data[-1:]
            with self.cond:
                self.warm += w
                if n:
                    self.count += n
                    self.last = now
                self.cond.notify_all()

    def wait(self, pred, timeout):
        with self.cond:
            return self.cond.wait_for(pred, timeout)


def publish(port, topic, payload):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "0",
                    "-t", topic, "-m", payload], check=True)


def run_one(kind, args, topic):
    if kind == "mqtt":
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(args.mqtt_port), "-q", "0",
               "-t", topic]
        adapter = "mqtt"
    elif kind == "coap":
        # coap-client writes payloads with fwrite and no separator: unbuffer it.
        cmd = ["stdbuf", "-o0", args.coap_client, "-s", "600", "-m", "get",
               f"coap://127.0.0.1:{args.coap_port}/ps/{topic}"]
        adapter = "coap"
    elif kind == "sse":
        enc = urllib.request.quote(topic, safe="")
        cmd = ["curl", "-sN", f"http://127.0.0.1:{args.http_port}/events?filter={enc}"]
        adapter = "http"
    else:
        sys.exit(f"unknown kind {kind}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        c = Counter(proc)
        # Wait until the subscription is in place: warm-ups until one arrives.
        deadline = time.monotonic() + 30
        while not c.wait(lambda: c.warm > 0 or proc.poll() is not None, 0.1):
            if time.monotonic() > deadline:
                sys.exit(f"bridge.py: {kind} subscriber never got a warm-up message")
            publish(args.mqtt_port, topic, "warm-up-message-W!")
        if proc.poll() is not None:
            sys.exit(f"bridge.py: {' '.join(cmd)} exited with {proc.returncode}")
        before = dropped(args.http_port, adapter)
        udp_before = udp_rcvbuf_errors()
        lines = b"".join(b"p%013dM!\n" % i for i in range(args.count))
        start = time.monotonic()
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(args.mqtt_port),
                        "-q", "0", "-t", topic, "-l"], input=lines, check=True)
        # Until all arrived, or nothing arrived for IDLE seconds.
        seen = -1
        while seen != c.count and c.count < args.count:
            seen = c.count
            c.wait(lambda: c.count >= args.count, args.idle)
        received, last = c.count, c.last
        drops = dropped(args.http_port, adapter) - before
        udp = udp_rcvbuf_errors() - udp_before
    finally:
        proc.terminate()
        proc.wait(10)
    secs = (last - start) if last else float("nan")
    rate = received / secs if last else 0.0
    return received, secs, rate, drops, udp


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--coap-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--count", type=int, default=50000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle", type=float, default=3.0)
    p.add_argument("--kinds", default="mqtt,coap,sse")
    p.add_argument("--coap-client", default="coap-client-notls")
    args = p.parse_args()

    for kind in args.kinds.split(","):
        best = None
        for r in range(args.rounds):
            topic = f"bench/bridge/{kind}/{os.getpid()}/{r}"
            res = run_one(kind, args, topic)
            print(f"  {kind} round {r + 1}: received {res[0]} of {args.count} in "
                  f"{res[1]:.2f} s = {res[2]:.0f} msg/s, dropped {res[3]:.0f}, "
                  f"UDP receive-buffer drops {res[4]}",
                  file=sys.stderr)
            if best is None or res[2] > best[2]:
                best = res
        received, secs, rate, drops, udp = best
        print(f"{kind} received={received} of={args.count} secs={secs:.3f} "
              f"rate={rate:.0f} dropped={drops:.0f} udp_rcvbuf={udp}", flush=True)


if __name__ == "__main__":
    main()
