"""Third-party devices for the crash test (hub/tests/crash.rs), on paho-mqtt
1.6 and pika: they keep going while the hub is killed and restarted.

  devices.py pub PORT TOPIC PREFIX ACKED STOP
      publishes PREFIX-0, PREFIX-1, ... at QoS 1 on TOPIC, at most 20 in
      flight, reconnecting (clean session) whenever the hub went away;
      appends each payload the hub acknowledged (PUBACK) to ACKED, one per
      line; stops once the file STOP exists.
  devices.py sub PORT CLIENT_ID FILTER OUT STOP
      a persistent session (clean_session = 0) subscribed at QoS 1 to
      FILTER, reconnecting whenever the hub went away; appends each payload
      it receives to OUT; stops once STOP exists.
  devices.py amqp QUEUE OUT
      reads everything in RabbitMQ's QUEUE (127.0.0.1:5672, guest) until it
      is empty for 3 s, appending each body to OUT.
"""

import os
import sys
import threading
import time


def mqtt_pub(port, topic, prefix, acked_path, stop_path):
    import paho.mqtt.client as mqtt

    acked = open(acked_path, "a", buffering=1)
    lock = threading.Lock()
    in_flight = {}  # mid -> payload
    # PUBACKs that came before their publish() call returned its mid.
    early = set()
    window = threading.Semaphore(20)
    connected = threading.Event()

    def on_connect(client, userdata, flags, rc):
        if rc == 0:
            connected.set()

    def on_disconnect(client, userdata, rc):
        connected.clear()
        # What was in flight is not acknowledged: forget it (paho would
        # resend it, but the test counts only what the hub acknowledged).
        with lock:
            n = len(in_flight)
            in_flight.clear()
            early.clear()
        for _ in range(n):
            window.release()

    def on_publish(client, userdata, mid):
        with lock:
            payload = in_flight.pop(mid, None)
            if payload is None:
                early.add(mid)
                return
        acked.write(payload + "\n")
        window.release()

    c = mqtt.Client(client_id="", clean_session=True)
    c.max_inflight_messages_set(20)
    c.reconnect_delay_set(0.05, 0.2)
    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_publish = on_publish
    while True:
        try:
            c.connect("127.0.0.1", port, keepalive=5)
            break
        except OSError:
            time.sleep(0.05)
    c.loop_start()
    i = 0
    while not os.path.exists(stop_path):
        if not connected.wait(0.1):
            continue
        if not window.acquire(timeout=0.1):
            continue
        payload = f"{prefix}-{i}"
        # Not under `lock`: paho calls on_publish (which takes it) from its
        # network thread while holding its own locks, which publish() needs.
        info = c.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            window.release()
            continue
        with lock:
            if info.mid in early:
                early.discard(info.mid)
                acked.write(payload + "\n")
                window.release()
            else:
                in_flight[info.mid] = payload
        i += 1
    # Let the last acknowledgements come.
    deadline = time.time() + 3
    while time.time() < deadline:
        with lock:
            if not in_flight:
                break
        time.sleep(0.05)
    c.loop_stop()
    acked.close()


def mqtt_sub(port, client_id, flt, out_path, stop_path):
    import paho.mqtt.client as mqtt

    out = open(out_path, "a", buffering=1)

    def on_connect(client, userdata, flags, rc):
        if rc == 0:
            client.subscribe(flt, qos=1)

    def on_message(client, userdata, msg):
        out.write(msg.payload.decode() + "\n")

    c = mqtt.Client(client_id=client_id, clean_session=False)
    c.reconnect_delay_set(0.05, 0.2)
    c.on_connect = on_connect
    c.on_message = on_message
    while True:
        try:
            c.connect("127.0.0.1", port, keepalive=5)
            break
        except OSError:
            time.sleep(0.05)
    c.loop_start()
    while not os.path.exists(stop_path):
        time.sleep(0.05)
    c.loop_stop()
    out.close()


def amqp_drain(queue, out_path):
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = conn.channel()
    out = open(out_path, "a", buffering=1)
    idle_since = time.time()
    while time.time() - idle_since < 3:
        method, _props, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        idle_since = time.time()
        out.write(body.decode() + "\n")
    out.close()
    conn.close()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "pub":
        mqtt_pub(int(args[0]), args[1], args[2], args[3], args[4])
    elif cmd == "sub":
        mqtt_sub(int(args[0]), args[1], args[2], args[3], args[4])
    elif cmd == "amqp":
        amqp_drain(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
