#!/usr/bin/env python3
"""MQTT publish -> bridge -> AMQP consumer, end-to-end throughput.

Runs the same workload through two bridges and prints the ratio:
  reference: RabbitMQ's own MQTT plugin (MQTT port -> amq.topic exchange)
  polyhub:   polyhub's embedded MQTT broker -> hub -> AMQP adapter -> exchange

Workload per run: mosquitto_pub publishes COUNT messages of SIZE bytes at
QoS 1 on one connection (`-l`, one message per stdin line); the same Rust
consumer (plugins/amqp/examples/amqp_sink.rs, lapin) bound to the exchange
counts them. The time is from the start of the
publisher to the last message at the consumer. Each side runs ROUNDS times
(alternating), the median is reported.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def run_once(sink, amqp_url, exchange, key, count, publisher, stdin=None):
    """One run: the sink binds and says `ready`, the publisher command runs,
    the time runs from the publisher's start to the sink's `done`."""
    proc = subprocess.Popen([sink, amqp_url, exchange, key, str(count)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"amqp_sink did not start: {line!r}")
        start = time.monotonic()
        pub = subprocess.run(publisher, input=stdin, capture_output=True)
        if pub.returncode != 0:
            raise SystemExit(f"{publisher[0]} failed: {pub.stderr.decode()}")
        line = proc.stdout.readline().strip()
        end = time.monotonic()
        if line != f"done {count}":
            raise SystemExit(f"consumer on {exchange} ({publisher[0]}): "
                             f"{line!r} of {count}")
        return count / (end - start)
    finally:
        proc.wait(30)


def mqtt_run(sink, mqtt_port, amqp_url, exchange, topic, key, count, size):
    """mosquitto_pub at QoS 1, one message per stdin line of SIZE bytes."""
    lines = ("x" * size + "\n").encode() * count
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1",
           "-t", topic, "-l", "--id", f"bench-{os.getpid()}-{time.time_ns()}"]
    return run_once(sink, amqp_url, exchange, key, count, pub, lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--rabbit-mqtt-port", type=int, required=True)
    p.add_argument("--hub-mqtt-port", type=int, required=True)
    p.add_argument("--hub-exchange", required=True)
    p.add_argument("--sink", required=True, help="path of the amqp_sink example binary")
    p.add_argument("--source", required=True, help="path of the amqp_source example binary")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--sizes", default="16,1024")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    ratios = []
    print(f"{'payload':>8} {'rabbitmq_mqtt msg/s':>20} {'polyhub msg/s':>14} {'ratio':>6}"
          f" {'AMQP-only ceiling':>18} {'ceiling/ref':>12}")
    for size in [int(s) for s in args.sizes.split(",")]:
        ref, hub, top = [], [], []
        for _ in range(args.rounds):
            ref.append(mqtt_run(args.sink, args.rabbit_mqtt_port, args.amqp_url, "amq.topic",
                                "bench/ref", "bench.ref", args.count, size))
            hub.append(mqtt_run(args.sink, args.hub_mqtt_port, args.amqp_url, args.hub_exchange,
                                "bench/hub", "bench.hub", args.count, size))
            top.append(run_once(args.sink, args.amqp_url, "amq.topic", "bench.top", args.count,
                                [args.source, args.amqp_url, "amq.topic", "bench.top",
                                 str(args.count), str(size)]))
        r, h, t = statistics.median(ref), statistics.median(hub), statistics.median(top)
        ratios.append(h / r)
        print(f"{size:>7}B {r:>20.0f} {h:>14.0f} {h / r:>5.2f}x {t:>18.0f} {t / r:>11.2f}x",
              flush=True)
    print(f"ratio polyhub / rabbitmq_mqtt (geometric mean): "
          f"{statistics.geometric_mean(ratios):.2f}x")
    print("AMQP-only ceiling: a lapin publisher with confirms straight into the same broker "
          "and consumer (persistent, as the hub sends QoS 1), no MQTT, no bridge")


if __name__ == "__main__":
    sys.exit(main())
