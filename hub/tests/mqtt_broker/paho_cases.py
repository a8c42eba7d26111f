"""MQTT 3.1.1 and 5.0 cases for the embedded broker, run with paho-mqtt
(1.6) as the real client: the cases of the Eclipse Paho interoperability
suite (client_test.py, client_test5.py), written for this project.

Usage: paho_cases.py CASE PORT [PREFIX] [WS_PORT [CA_FILE]]
(WS_PORT: the broker's MQTT-over-WebSocket port, for the websocket case;
with CA_FILE, WebSocket over TLS trusting that CA.)
Exits 0 when the case passed; prints what went wrong otherwise. Every wait
has a timeout.
"""

import queue
import socket
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
WAIT = 10.0


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


class Dev:
    """One paho client with its events in queues."""

    def __init__(self, cid, v5, clean=True, keepalive=60, will=None,
                 props=None, transport="tcp", port=None, ca_file=None):
        self.v5 = v5
        self.port = port or PORT
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        if v5:
            self.c = mqtt.Client(client_id=cid, protocol=proto, transport=transport)
        else:
            self.c = mqtt.Client(client_id=cid, clean_session=clean, protocol=proto,
                                 transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if ca_file:
            self.c.tls_set(ca_certs=ca_file)
        self.clean = clean
        self.keepalive = keepalive
        self.props = props
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.subacks = queue.Queue()
        self.gone = queue.Queue()
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        if v5:
            self.c.on_connect = lambda c, u, f, rc, p=None: self.acks.put((f, rc, p))
            self.c.on_subscribe = lambda c, u, mid, rcs, p=None: self.subacks.put(rcs)
            self.c.on_disconnect = lambda c, u, rc, p=None: self.gone.put(rc)
        else:
            self.c.on_connect = lambda c, u, f, rc: self.acks.put((f, rc, None))
            self.c.on_subscribe = lambda c, u, mid, q: self.subacks.put(q)
            self.c.on_disconnect = lambda c, u, rc: self.gone.put(rc)
        if will:
            topic, payload, qos, retain, wprops = will
            self.c.will_set(topic, payload, qos, retain, properties=wprops)

    def connect(self, expect_ok=True):
        self.c.reconnect_delay_set(60, 60)
        if self.v5:
            self.c.connect(HOST, self.port, self.keepalive, clean_start=self.clean,
                           properties=self.props)
        else:
            self.c.connect(HOST, self.port, self.keepalive)
        self.c.loop_start()
        flags, rc, props = self.acks.get(timeout=WAIT)
        if expect_ok:
            check(rc == 0, f"CONNACK {rc}")
        return flags, rc, props

    def sub(self, topic, qos=1, options=None, props=None):
        if self.v5:
            opts = options or SubscribeOptions(qos=qos)
            self.c.subscribe(topic, options=opts, properties=props)
        else:
            self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def pub(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        if qos:
            info.wait_for_publish(WAIT)
            check(info.is_published(), f"publish to {topic} not acknowledged")

    def get(self, timeout=WAIT):
        return self.msgs.get(timeout=timeout)

    def until(self, topic):
        """Messages before the first on `topic`."""
        seen = []
        while True:
            m = self.get()
            if m.topic == topic:
                return seen
            seen.append(m)

    def bye(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT (the will goes out)."""
        self.c.loop_stop()
        self.c.socket().shutdown(socket.SHUT_RDWR)
        self.c.socket().close()


def props(kind, **kw):
    p = Properties(kind)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# --- cases (v = True for MQTT 5) ---------------------------------------------

def basic(v):
    a = Dev(P + "basic", v)
    a.connect()
    a.sub(P + "basic/t", 2)
    for q in (0, 1, 2):
        a.pub(P + "basic/t", f"qos {q}", q)
    got = sorted(a.get().payload.decode() for _ in range(3))
    check(got == ["qos 0", "qos 1", "qos 2"], f"got {got}")
    a.bye()


def retained(v):
    a = Dev(P + "ret", v)
    a.connect()
    for q in (0, 1, 2):
        a.pub(P + f"ret/{q}", f"r{q}", q, retain=True)
    a.sub(P + "ret/+", 2)
    got = sorted((m.payload.decode(), m.retain) for m in (a.get() for _ in range(3)))
    check(got == [("r0", True), ("r1", True), ("r2", True)], f"got {got}")
    # Clear them: a later subscriber gets nothing retained.
    for q in (0, 1, 2):
        a.pub(P + f"ret/{q}", b"", 1, retain=True)
    a.bye()
    b = Dev(P + "ret2", v)
    b.connect()
    b.sub(P + "ret/+", 2)
    b.pub(P + "ret/end", "end", 1)
    seen = b.until(P + "ret/end")
    check(not seen, f"cleared retained still delivered: {[m.topic for m in seen]}")
    b.bye()


def zero_length_clientid(v):
    if v:
        a = Dev("", True)
        _, rc, p = a.connect()
        cid = getattr(p, "AssignedClientIdentifier", None)
        check(cid, "no Assigned Client Identifier")
        a.bye()
        return
    b = Dev("", False, clean=True)
    b.connect()
    b.bye()


def offline_queueing(v):
    sp = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if v else None
    a = Dev(P + "offq", v, clean=False, props=sp)
    a.connect()
    a.sub(P + "offq/#", 2)
    a.bye()
    b = Dev(P + "offq-pub", v)
    b.connect()
    for q in (0, 1, 2):
        b.pub(P + f"offq/{q}", f"q{q}", q)
    b.bye()
    a = Dev(P + "offq", v, clean=False, props=sp)
    flags, _, _ = a.connect()
    check(flags.get("session present") == 1, f"no session present: {flags}")
    got = set()
    try:
        while len(got) < 3:
            got.add(a.get(5).payload.decode())
    except queue.Empty:
        pass
    check({"q1", "q2"} <= got, f"queued QoS 1 and 2 missing: {got}")
    a.bye()
    # End the session.
    a = Dev(P + "offq", v, clean=True)
    a.connect()
    a.bye()


def overlapping_subscriptions(v):
    a = Dev(P + "ovl", v)
    a.connect()
    a.sub(P + "ovl/#", 2)
    a.sub(P + "ovl/+", 1)
    a.pub(P + "ovl/x", "o", 2)
    m = a.get()
    check(m.qos == 2, f"expected the highest granted QoS 2, got {m.qos}")
    a.pub(P + "ovl/end", "end", 1)
    rest = a.until(P + "ovl/end")
    check(all(r.topic == P + "ovl/x" for r in rest), "stray messages")
    a.bye()


def keepalive(v):
    w = (P + "ka/will", "gone", 1, False, None)
    b = Dev(P + "ka-watch", v, keepalive=0)
    b.connect()
    b.sub(P + "ka/will", 1)
    a = Dev(P + "ka", v, keepalive=2, will=w)
    a.connect()
    # Stop a's network loop: no PINGREQ any more, so the broker's 1.5 x
    # keepalive runs out and the will goes out.
    a.c.loop_stop()
    m = b.get(WAIT)
    check(m.payload == b"gone", f"will {m.payload}")
    b.bye()


def redelivery_on_reconnect(v):
    sp = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if v else None
    b = Dev(P + "redel", v, clean=False, props=sp)
    b.connect()
    b.sub(P + "redel/#", 2)
    # Receive without acknowledging: paho acks after on_message returns, so
    # block the callback and drop the connection.
    import threading
    hold = threading.Event()
    got = queue.Queue()

    def slow(c, u, m):
        got.put(m)
        hold.wait(WAIT)

    b.c.on_message = slow
    a = Dev(P + "redel-pub", v)
    a.connect()
    a.pub(P + "redel/1", "one", 1)
    first = got.get(timeout=WAIT)
    check(first.payload == b"one", "first delivery")
    b.c.socket().shutdown(socket.SHUT_RDWR)
    hold.set()
    b.c.loop_stop()
    b = Dev(P + "redel", v, clean=False, props=sp)
    b.connect()
    m = b.get()
    check(m.payload == b"one", f"redelivered {m.payload}")
    b.bye()
    a.bye()
    Dev(P + "redel", v).connect()


def subscribe_failure(v):
    a = Dev(P + "subfail", v)
    a.connect()
    # A filter paho lets through but the broker must refuse: a shared
    # subscription without its filter part.
    rc = a.sub("$share/grouponly", 1)
    if v:
        check(rc[0].value >= 0x80, f"invalid filter granted: {rc}")
    else:
        check(rc[0] == 128, f"invalid filter granted: {rc}")
    rc = a.sub(P + "good/#", 1)
    if v:
        check(rc[0].value == 1, f"valid filter refused: {rc}")
    else:
        check(rc[0] == 1, f"valid filter refused: {rc}")
    a.bye()


def dollar_topics(v):
    a = Dev(P + "dollar", v)
    a.connect()
    a.sub("#", 1)
    a.sub("+/+", 1)
    a.pub("$" + P + "dollar/x", "hidden", 1)
    a.pub(P + "dollar/end", "end", 1)
    seen = a.until(P + "dollar/end")
    check(not any(m.topic.startswith("$") for m in seen), "a $ topic matched a wildcard")
    a.sub("$" + P + "dollar/+", 1)
    a.pub("$" + P + "dollar/y", "shown", 1)
    m = a.get()
    while m.topic != "$" + P + "dollar/y":
        m = a.get()
    a.bye()


def unsubscribe(v):
    a = Dev(P + "unsub", v)
    a.connect()
    a.sub(P + "unsub/a", 1)
    a.sub(P + "unsub/b", 1)
    a.c.unsubscribe(P + "unsub/a")
    a.pub(P + "unsub/a", "no", 1)
    a.pub(P + "unsub/b", "yes", 1)
    m = a.get()
    check(m.topic == P + "unsub/b", f"got {m.topic} after unsubscribe")
    a.bye()


# --- MQTT 5 only ---------------------------------------------------------------

def flow_control(v):
    a = Dev(P + "flow", True, props=props(PacketTypes.CONNECT, ReceiveMaximum=1))
    _, _, cp = a.connect()
    check(getattr(cp, "ReceiveMaximum", 0) >= 1, "no Receive Maximum in CONNACK")
    a.sub(P + "flow/t", 2)
    for i in range(20):
        a.pub(P + "flow/t", str(i), 1 + i % 2)
    got = [int(a.get().payload) for _ in range(20)]
    check(got == list(range(20)), f"order {got}")
    a.bye()


def will_delay(v):
    b = Dev(P + "wd-watch", True)
    b.connect()
    b.sub(P + "wd/will", 1)
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=60)
    sp = props(PacketTypes.CONNECT, SessionExpiryInterval=120)
    a = Dev(P + "wd", True, clean=False, props=sp, will=(P + "wd/will", "late", 1, False, wp))
    a.connect()
    a.drop()
    # Back before the delay: the will is not sent.
    a = Dev(P + "wd", True, clean=False, props=sp)
    a.connect()
    a.bye()
    # A short delay: the will arrives after it.
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=1)
    a = Dev(P + "wd", True, clean=False, props=sp, will=(P + "wd/will", "now", 1, False, wp))
    a.connect()
    a.drop()
    m = b.get()
    check(m.payload == b"now", f"will {m.payload} (the cancelled one came?)")
    b.bye()
    Dev(P + "wd", True).connect()


def session_expiry(v):
    sp = props(PacketTypes.CONNECT, SessionExpiryInterval=1)
    a = Dev(P + "sexp", True, clean=False, props=sp)
    a.connect()
    a.sub(P + "sexp/t", 1)
    a.bye()
    a = Dev(P + "sexp", True, clean=False, props=sp)
    flags, _, _ = a.connect()
    check(flags.get("session present") == 1, "session gone before its expiry")
    a.bye()
    # Past the expiry the session is gone.
    deadline = time.monotonic() + WAIT
    while True:
        time.sleep(0.5)
        a = Dev(P + "sexp", True, clean=False, props=props(PacketTypes.CONNECT, SessionExpiryInterval=0))
        flags, _, _ = a.connect()
        a.bye()
        if flags.get("session present") == 0:
            break
        check(time.monotonic() < deadline, "session never expired")


def shared_subscriptions(v):
    a = Dev(P + "sh-a", True)
    b = Dev(P + "sh-b", True)
    a.connect()
    b.connect()
    a.sub("$share/g/" + P + "sh/t", 1)
    b.sub("$share/g/" + P + "sh/t", 1)
    p = Dev(P + "sh-p", True)
    p.connect()
    for i in range(10):
        p.pub(P + "sh/t", str(i), 1)
    got_a, got_b = [], []
    total = 0
    while total < 10:
        for d, g in ((a, got_a), (b, got_b)):
            try:
                g.append(int(d.get(0.2).payload))
                total += 1
            except queue.Empty:
                pass
    check(sorted(got_a + got_b) == list(range(10)), f"a {got_a} b {got_b}")
    check(got_a and got_b, f"one member took all: a {got_a} b {got_b}")
    for d in (a, b, p):
        d.bye()


def request_response(v):
    req = Dev(P + "rr-req", True)
    srv = Dev(P + "rr-srv", True)
    req.connect()
    srv.connect()
    srv.sub(P + "rr/request", 1)
    req.sub(P + "rr/reply", 1)
    pp = props(PacketTypes.PUBLISH, ResponseTopic=P + "rr/reply", CorrelationData=b"\x01\x02",
               ContentType="text/plain", UserProperty=[("k", "v")], MessageExpiryInterval=60)
    req.pub(P + "rr/request", "ping", 1, props=pp)
    m = srv.get()
    mp = m.properties
    check(getattr(mp, "ResponseTopic", None) == P + "rr/reply", f"response topic {mp}")
    check(getattr(mp, "CorrelationData", None) == b"\x01\x02", f"correlation {mp}")
    check(getattr(mp, "ContentType", None) == "text/plain", f"content type {mp}")
    check(("k", "v") in getattr(mp, "UserProperty", []), f"user properties {mp}")
    check(0 < getattr(mp, "MessageExpiryInterval", 0) <= 60, f"expiry {mp}")
    srv.pub(mp.ResponseTopic, "pong", 1,
            props=props(PacketTypes.PUBLISH, CorrelationData=mp.CorrelationData))
    r = req.get()
    check(r.payload == b"pong" and r.properties.CorrelationData == b"\x01\x02", "reply")
    req.bye()
    srv.bye()


def topic_aliases(v):
    a = Dev(P + "alias", True)
    _, _, cp = a.connect()
    check(getattr(cp, "TopicAliasMaximum", 0) >= 1, "no Topic Alias Maximum in CONNACK")
    a.sub(P + "alias/t", 1)
    a.pub(P + "alias/t", "one", 1, props=props(PacketTypes.PUBLISH, TopicAlias=1))
    a.pub("", "two", 1, props=props(PacketTypes.PUBLISH, TopicAlias=1))
    got = [(m.topic, m.payload) for m in (a.get(), a.get())]
    check(got == [(P + "alias/t", b"one"), (P + "alias/t", b"two")], f"got {got}")
    a.bye()


def subscribe_options(v):
    a = Dev(P + "opts", True)
    a.connect()
    # No local: a's own messages are not sent back to it.
    a.sub(P + "opts/nl", options=SubscribeOptions(qos=1, noLocal=True))
    a.pub(P + "opts/nl", "own", 1)
    a.sub(P + "opts/end", 1)
    a.pub(P + "opts/end", "end", 1)
    seen = a.until(P + "opts/end")
    check(not seen, f"no-local delivered {[(m.topic, m.payload) for m in seen]}")
    # Retain as published.
    a.pub(P + "opts/rap", "kept", 1, retain=True)
    a.sub(P + "opts/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    m = a.get()
    check(m.retain, "retained message on subscribe")
    a.pub(P + "opts/rap", "live", 1, retain=True)
    m = a.get()
    check(m.payload == b"live" and m.retain, "retain-as-published kept the flag")
    # Retain handling 1: only on a new subscription; 2: never.
    a.sub(P + "opts/rap", options=SubscribeOptions(qos=1, retainHandling=1))
    a.sub(P + "opts/rh2", options=SubscribeOptions(qos=1, retainHandling=2))
    a.pub(P + "opts/rh2", "r", 1, retain=True)
    b = Dev(P + "opts-b", True)
    b.connect()
    b.sub(P + "opts/rh2", options=SubscribeOptions(qos=1, retainHandling=2))
    b.sub(P + "opts/end", 1)
    b.pub(P + "opts/end", "end", 1)
    seen = b.until(P + "opts/end")
    check(not seen, f"retain handling 2 sent {[(m.topic, m.payload) for m in seen]}")
    for t in ("opts/rap", "opts/rh2"):
        a.pub(P + t, b"", 1, retain=True)
    a.bye()
    b.bye()


def server_keep_alive(v):
    """Run with max_keep_alive_secs = 2: v5 devices asking for more are told
    2 (Server Keep Alive), v3.1.1 ones are refused (CONNACK 2); a silent
    device is closed after 1.5 x the keepalive in force."""
    a = Dev(P + "ska", v, keepalive=120)
    flags, rc, props = a.connect(expect_ok=False)
    if v:
        check(rc == 0, f"CONNACK {rc}")
        check(getattr(props, "ServerKeepAlive", None) == 2,
              f"Server Keep Alive {getattr(props, 'ServerKeepAlive', None)}")
        a.bye()
    else:
        check(rc == 2, f"a 3.1.1 keepalive over the maximum got CONNACK {rc}, not 2")
        a.c.loop_stop()
        b = Dev(P + "ska-ok", v, keepalive=2)
        b.connect()
        b.bye()
    # A device that never pings: keepalive 0 (v5, replaced by 2) or 2 (3.1.1).
    cid = (P + "ska-raw").encode()
    if v:
        body = b"\x00\x04MQTT\x05\x02\x00\x00\x00" + len(cid).to_bytes(2, "big") + cid
    else:
        body = b"\x00\x04MQTT\x04\x02\x00\x02" + len(cid).to_bytes(2, "big") + cid
    s = socket.create_connection((HOST, PORT), timeout=WAIT)
    s.sendall(b"\x10" + bytes([len(body)]) + body)
    ack = s.recv(64)
    check(ack[:1] == b"\x20", f"CONNACK expected, got {ack!r}")
    start = time.monotonic()
    while s.recv(64):
        pass  # a v5 DISCONNECT 0x8D, then the close
    took = time.monotonic() - start
    s.close()
    check(2.5 <= took <= 6, f"silent device closed after {took:.1f} s, not about 3 s")


def websocket(v):
    """A WebSocket device (path /mqtt) and a TCP device reach each other."""
    check(WS_PORT, "the websocket case needs WS_PORT")
    a = Dev(P + "ws", v, transport="websockets", port=WS_PORT, ca_file=CA_FILE)
    a.connect()
    b = Dev(P + "tcp", v)
    b.connect()
    a.sub(P + "ws/back", 2)
    b.sub(P + "ws/there", 1)
    a.pub(P + "ws/there", "from ws", 1)
    m = b.get()
    check((m.topic, m.payload) == (P + "ws/there", b"from ws"), f"ws -> tcp got {m.topic} {m.payload}")
    b.pub(P + "ws/back", "from tcp", 2)
    m = a.get()
    check((m.topic, m.payload, m.qos) == (P + "ws/back", b"from tcp", 2),
          f"tcp -> ws got {m.topic} {m.payload} qos {m.qos}")
    # A payload larger than one TCP segment, both ways.
    big = bytes(range(256)) * 400
    a.pub(P + "ws/there", big, 1)
    check(b.get().payload == big, "large ws -> tcp")
    b.pub(P + "ws/back", big, 1)
    check(a.get().payload == big, "large tcp -> ws")
    a.bye()
    b.bye()


CASES = {n: f for n, f in globals().items() if callable(f) and f.__module__ == "__main__"
         and n not in ("check", "props", "Dev", "Fail")}

if __name__ == "__main__":
    name = sys.argv[1]
    PORT = int(sys.argv[2])
    P = (sys.argv[3] if len(sys.argv) > 3 else "paho") + "/"
    WS_PORT = int(sys.argv[4]) if len(sys.argv) > 4 else None
    CA_FILE = sys.argv[5] if len(sys.argv) > 5 else None
    version = name.split(":")[0]
    case = name.split(":")[1]
    try:
        CASES[case](version == "v5")
    except Fail as e:
        print(f"FAIL {name}: {e}")
        sys.exit(1)
    except queue.Empty:
        import traceback
        traceback.print_exc()
        print(f"FAIL {name}: timed out waiting")
        sys.exit(1)
    print(f"ok {name}")
