#!/usr/bin/env python3
"""Opens COUNT idle MQTT connections to a broker and holds them.

Each connection sends a raw MQTT 3.1.1 CONNECT (clean session, keepalive
KEEPALIVE seconds, client id idle-PID-N) and reads its CONNACK; at most
PARALLEL handshakes are under way at once. When all are accepted the
script prints `connected COUNT` and waits for a line (or end of file) on
stdin, then closes every connection and exits. Used by bench/mqtt/run.sh
to measure the broker's memory per idle device between those two points.

  idle.py PORT COUNT [--keepalive 600] [--parallel 200]
"""

import argparse
import asyncio
import os
import resource
import struct
import sys


def connect_packet(client_id: str, keepalive: int) -> bytes:
    cid = client_id.encode()
    # Variable header: protocol name, level 4, flags (clean session), keepalive.
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive)
    body += struct.pack("!H", len(cid)) + cid
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


async def open_one(port, n, keepalive, sem, conns):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_packet(f"idle-{os.getpid()}-{n}", keepalive))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readexactly(4), 30)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"connection {n}: CONNACK {ack.hex()}")
        conns.append((reader, writer))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--keepalive", type=int, default=600)
    p.add_argument("--parallel", type=int, default=200)
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.count + 100
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"idle.py: {a.count} connections need {need} file descriptors, "
                     f"the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    conns = []
    sem = asyncio.Semaphore(a.parallel)
    results = await asyncio.gather(
        *(open_one(a.port, n, a.keepalive, sem, conns) for n in range(a.count)),
        return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        sys.exit(f"idle.py: {len(errors)} of {a.count} connections failed, "
                 f"first: {errors[0]!r}")
    print(f"connected {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # Any byte from a broker meanwhile would be a surprise (keepalive is long).
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
