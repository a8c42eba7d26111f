#!/usr/bin/env python3
"""A scriptable XMPP device for polyhub's tests, built on slixmpp (a
third-party XMPP client library): the test writes JSON commands on stdin,
the device writes JSON events on stdout, one per line.

    device.py JID PASSWORD PORT [CA_FILE]

Events (one line each, see emit()): online, auth_failed (then it stops), message (from, type, subject,
body, error), iq (id, type, xml, error), disco (features), pong, disconnected,
bye, command_error.
Commands: send (to, subject?, body?, type?), sensor (to, node, fields:
[{type, name, value, unit?}]), control_msg / control_iq (to, name, type,
value), disco (to), ping (to), raw (xml), quit.
With CA_FILE the device logs in over STARTTLS trusting that CA; it
reconnects by itself when the server goes away.
"""
import asyncio
import json
import sys

import slixmpp
from slixmpp import Iq, Message
from slixmpp.plugins.xep_0323.stanza import sensordata as sd
from slixmpp.plugins.xep_0325.stanza import control as ct
from slixmpp.xmlstream import register_stanza_plugin

register_stanza_plugin(Message, sd.Fields)
register_stanza_plugin(sd.Fields, sd.FieldsNode)
register_stanza_plugin(Message, ct.ControlSet)
register_stanza_plugin(Iq, ct.ControlSet)


def _escape(value):
    return (str(value).replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def emit(event, **fields):
    """One line: EVENT, then KEY=VALUE fields, tab-separated, with \\, \\t,
    \\n and \\r escaped (easy to parse without a JSON library)."""
    parts = [event] + [f"{k}={_escape(v)}" for k, v in fields.items()]
    sys.stdout.write("\t".join(parts) + "\n")
    sys.stdout.flush()


class Device(slixmpp.ClientXMPP):
    def __init__(self, jid, password, port, ca_file):
        super().__init__(jid, password)
        self.port = port
        if ca_file:
            self.ca_certs = ca_file
        else:
            self.enable_direct_tls = False
            self.enable_starttls = False
            self.enable_plaintext = True
        self.quitting = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("failed_all_auth", self.on_failed_auth)

    async def on_start(self, _event):
        self.send_presence()
        await self.get_roster()
        emit("online")

    def on_message(self, msg):
        emit(
            "message",
            **{"from": str(msg["from"])},
            type=msg["type"],
            subject=msg["subject"],
            body=msg["body"],
            error=msg["error"]["condition"] if msg["type"] == "error" else "",
        )

    def on_failed_auth(self, _event):
        # The server refused the account: report it and stop (no retries).
        emit("auth_failed")
        self.quitting = True
        self.disconnect()

    def on_disconnected(self, _reason):
        emit("disconnected")
        if not self.quitting:
            asyncio.get_event_loop().call_later(0.3, self.reconnect_now)

    def reconnect_now(self):
        self.connect("127.0.0.1", self.port)

    async def command(self, cmd):
        op = cmd["op"]
        if op == "send":
            m = self.make_message(mto=cmd["to"], mtype=cmd.get("type", "chat"))
            if cmd.get("subject") is not None:
                m["subject"] = cmd["subject"]
            if cmd.get("body") is not None:
                m["body"] = cmd["body"]
            m.send()
        elif op == "sensor":
            m = self.make_message(mto=cmd["to"], mtype="normal")
            m["fields"]["seqnr"] = str(cmd.get("seqnr", 1))
            m["fields"]["done"] = "true"
            node = m["fields"].add_node(cmd["node"])
            ts = node.add_timestamp(cmd.get("timestamp", "2024-01-01T00:00:00"))
            for f in cmd["fields"]:
                ts.add_data(typename=f["type"], name=f["name"], value=f["value"],
                            unit=f.get("unit"), dataType=None,
                            flags={"momentary": "true"})
            m.send()
        elif op == "control_msg":
            m = self.make_message(mto=cmd["to"], mtype="normal")
            m["set"].add_data(name=cmd["name"], typename=cmd["type"], value=cmd["value"])
            m.send()
        elif op == "control_iq":
            iq = self.make_iq_set(ito=cmd["to"])
            iq["set"].add_data(name=cmd["name"], typename=cmd["type"], value=cmd["value"])
            await self.send_iq_reporting(iq)
        elif op == "disco":
            info = await self.plugin["xep_0030"].get_info(jid=cmd["to"], timeout=10)
            emit("disco", features=" ".join(sorted(info["disco_info"]["features"])))
        elif op == "ping":
            rtt = await self.plugin["xep_0199"].ping(jid=cmd["to"], timeout=10)
            emit("pong", rtt=rtt)
        elif op == "iq_get":
            iq = self.make_iq_get(ito=cmd["to"])
            iq.append(slixmpp.xmlstream.ET.fromstring(cmd["xml"]))
            await self.send_iq_reporting(iq)
        elif op == "raw":
            self.send_raw(cmd["xml"])
        elif op == "quit":
            self.quitting = True
            self.disconnect()
            emit("bye")

    async def send_iq_reporting(self, iq):
        try:
            resp = await iq.send(timeout=10)
            emit("iq", id=resp["id"], type=resp["type"], xml=str(resp))
        except slixmpp.exceptions.IqError as e:
            emit("iq", id=e.iq["id"], type="error", xml=str(e.iq),
                 error=e.iq["error"]["condition"])


async def main():
    jid, password, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ca_file = sys.argv[4] if len(sys.argv) > 4 else None
    dev = Device(jid, password, port, ca_file)
    dev.connect("127.0.0.1", port)
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            await dev.command(json.loads(line))
        except Exception as e:  # report, keep serving
            emit("command_error", error=repr(e))
    dev.quitting = True
    dev.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main())
