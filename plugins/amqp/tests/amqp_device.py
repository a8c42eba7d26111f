#!/usr/bin/env python3
"""A third-party AMQP device (pika) for polyhub's tests and benchmarks.

consume: declare the exchange (durable topic, as the hub does) and a queue,
bind it with KEY, print "ready", then print one line per message (tab-
separated hex of: routing key, body, content type, headers as "k=v\n"...,
correlation id, reply-to, delivery mode) until
COUNT messages arrived or nothing came for TIMEOUT seconds (exit 1).
With --queue the queue is durable and named; --keep leaves it in place
(otherwise it is deleted at the end); --no-bind consumes an existing queue.

declare: declare the exchange and a durable queue bound with KEY, then exit.

cleanup: delete the --delete-queue queues and the exchange.

publish: publish COUNT messages (persistent, confirmed) to the exchange with
routing key KEY and body "{prefix}{i}", with --user-id and --app-id as the
messages' user_id and app_id properties (RabbitMQ refuses a user_id other
than the connection's user).
"""

import argparse
import sys

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def consume(args):
    conn = connect(args.url)
    ch = conn.channel()
    if not args.no_bind:
        ch.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    if args.queue:
        queue = args.queue
        if not args.no_bind:
            ch.queue_declare(queue, durable=True)
    else:
        queue = ch.queue_declare("", exclusive=True).method.queue
    if not args.no_bind:
        for key in args.key:
            ch.queue_bind(queue, args.exchange, routing_key=key)
    ch.basic_qos(prefetch_count=1000)
    print("ready", flush=True)
    got = 0
    status = 0
    for method, props, body in ch.consume(queue, inactivity_timeout=args.timeout):
        if method is None:
            status = 1
            break
        headers = "".join(
            f"{k}={v.decode('utf-8', 'replace') if isinstance(v, bytes) else v}\n"
            for k, v in sorted((props.headers or {}).items())
        )
        fields = [
            method.routing_key.encode(),
            body,
            (props.content_type or "").encode(),
            headers.encode(),
            (props.correlation_id or "").encode(),
            (props.reply_to or "").encode(),
            str(props.delivery_mode or 0).encode(),
        ]
        print("\t".join(f.hex() for f in fields), flush=True)
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got >= args.count:
            break
    ch.cancel()
    if args.queue and not args.keep:
        ch.queue_delete(queue)
    conn.close()
    return status


def publish(args):
    conn = connect(args.url)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(args.count):
        ch.basic_publish(
            args.exchange,
            args.key[0],
            f"{args.prefix}{i}".encode(),
            pika.BasicProperties(delivery_mode=2, content_type="text/plain",
                                 user_id=args.user_id, app_id=args.app_id),
        )
    conn.close()
    print("done", flush=True)
    return 0


def declare(args):
    conn = connect(args.url)
    ch = conn.channel()
    ch.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    ch.queue_declare(args.queue, durable=True)
    for key in args.key:
        ch.queue_bind(args.queue, args.exchange, routing_key=key)
    conn.close()
    print("ready", flush=True)
    return 0


def cleanup(args):
    conn = connect(args.url)
    ch = conn.channel()
    for q in args.delete_queue:
        ch.queue_delete(q)
    ch.exchange_delete(args.exchange)
    conn.close()
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["consume", "publish", "declare", "cleanup"])
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--exchange", required=True)
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--queue")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-bind", action="store_true")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--prefix", default="m")
    p.add_argument("--delete-queue", action="append", default=[])
    p.add_argument("--user-id", help="publish: the messages' user_id property")
    p.add_argument("--app-id", help="publish: the messages' app_id property")
    args = p.parse_args()
    if not args.key:
        args.key = ["#"]
    modes = {"consume": consume, "publish": publish, "declare": declare, "cleanup": cleanup}
    sys.exit(modes[args.mode](args))


if __name__ == "__main__":
    main()
