#!/usr/bin/env python3
"""MQTT publish -> bridge -> AMQP consumer, end-to-end throughput.

Runs the same workload through two bridges and prints the ratio:
  reference: RabbitMQ's own MQTT plugin (MQTT port -> amq.topic exchange)
  polyhub:   polyhub's embedded MQTT broker -> hub -> AMQP adapter -> exchange

Workload per run: mosquitto_pub publishes COUNT messages of SIZE bytes at
QoS 1 on one connection (`-l`, one message per stdin line); a pika consumer
bound to the exchange counts them. The time is from the start of the
publisher to the last message at the consumer. Each side runs ROUNDS times
(alternating), the median is reported.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import pika


def consumer(amqp_url, exchange, key, count, ready, result):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    if exchange != "amq.topic":
        # The same declaration the hub makes: whoever comes first creates it.
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, routing_key=key)
    ch.basic_qos(prefetch_count=2000)
    ready.set()
    got = 0
    last = None
    for method, _props, body in ch.consume(q, inactivity_timeout=30):
        if method is None:
            break
        got += 1
        if got % 100 == 0 or got >= count:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got >= count:
            last = time.monotonic()
            break
    result["got"] = got
    result["end"] = last
    try:
        ch.cancel()
        conn.close()
    except Exception:
        pass


def run_once(mqtt_port, amqp_url, exchange, topic, key, count, size):
    ready = threading.Event()
    result = {}
    t = threading.Thread(
        target=consumer, args=(amqp_url, exchange, key, count, ready, result)
    )
    t.start()
    if not ready.wait(30):
        raise SystemExit("consumer did not start")
    # One line per message; the body is SIZE bytes of printable text.
    lines = ("x" * size + "\n").encode() * count
    start = time.monotonic()
    pub = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-q", "1",
         "-t", topic, "-l", "--id", f"bench-{os.getpid()}-{time.time_ns()}"],
        input=lines,
        capture_output=True,
    )
    if pub.returncode != 0:
        raise SystemExit(f"mosquitto_pub failed: {pub.stderr.decode()}")
    t.join(60)
    if result.get("got") != count or result.get("end") is None:
        raise SystemExit(f"consumer got {result.get('got')} of {count}")
    return count / (result["end"] - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--rabbit-mqtt-port", type=int, required=True)
    p.add_argument("--hub-mqtt-port", type=int, required=True)
    p.add_argument("--hub-exchange", required=True)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--sizes", default="16,1024")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    ratios = []
    print(f"{'payload':>8} {'rabbitmq_mqtt msg/s':>20} {'polyhub msg/s':>14} {'ratio':>6}")
    for size in [int(s) for s in args.sizes.split(",")]:
        ref, hub = [], []
        for _ in range(args.rounds):
            ref.append(run_once(args.rabbit_mqtt_port, args.amqp_url, "amq.topic",
                                "bench/ref", "bench.ref", args.count, size))
            hub.append(run_once(args.hub_mqtt_port, args.amqp_url, args.hub_exchange,
                                "bench/hub", "bench.hub", args.count, size))
        r, h = statistics.median(ref), statistics.median(hub)
        ratios.append(h / r)
        print(f"{size:>7}B {r:>20.0f} {h:>14.0f} {h / r:>5.2f}x", flush=True)
    print(f"ratio polyhub / rabbitmq_mqtt (geometric mean): "
          f"{statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
