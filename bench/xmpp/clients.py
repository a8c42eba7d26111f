#!/usr/bin/env python3
"""slixmpp clients for bench/xmpp/bench.sh.

    clients.py recv JID PASSWORD PORT COUNT SUBJECT_PREFIX
        logs in, prints "ready", counts messages whose subject starts with
        SUBJECT_PREFIX; prints "RATE <msgs/s> <received>" (first to last
        message) after COUNT messages or 30 s of silence.
    clients.py send JID PASSWORD PORT COUNT TO
        sends COUNT chat messages (subject bench/ref, body = sequence) to TO.
"""
import asyncio
import sys
import time

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # STARTTLS with the private instance's CA, like the hub below.
        self.ca_certs = "/tmp/polyhub-prosody/certs/ca.crt"
        self.ready = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_start)

    async def on_start(self, _):
        self.send_presence()
        await self.get_roster()
        self.ready.set_result(True)


async def recv(jid, password, port, count, prefix):
    c = Client(jid, password)
    done = asyncio.get_event_loop().create_future()
    stats = {"n": 0, "first": None, "last": None}

    def on_message(msg):
        if not msg["subject"].startswith(prefix):
            return
        now = time.monotonic()
        stats["first"] = stats["first"] or now
        stats["last"] = now
        stats["n"] += 1
        if stats["n"] >= count and not done.done():
            done.set_result(True)

    c.add_event_handler("message", on_message)
    c.connect("127.0.0.1", port)
    await c.ready
    print("ready", flush=True)
    seen = -1
    while not done.done():
        await asyncio.sleep(30 if stats["n"] == 0 else 5)
        if stats["n"] == seen:
            break
        seen = stats["n"]
    span = (stats["last"] or 0) - (stats["first"] or 0)
    rate = (stats["n"] - 1) / span if span > 0 else 0.0
    print(f"RATE {rate:.1f} {stats['n']}", flush=True)
    c.disconnect()


async def send(jid, password, port, count, to):
    c = Client(jid, password)
    c.connect("127.0.0.1", port)
    await c.ready
    for i in range(count):
        c.send_message(mto=to, msubject="bench/ref", mbody=str(i), mtype="chat")
        if i % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(1)
    c.disconnect()
    await asyncio.sleep(0.5)


def main():
    mode, jid, password, port, count, arg = sys.argv[1:7]
    fn = recv if mode == "recv" else send
    asyncio.run(fn(jid, password, int(port), int(count), arg))


if __name__ == "__main__":
    main()
