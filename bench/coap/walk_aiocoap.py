"""One walk of a CoAP server's /.well-known/core with aiocoap (Block2
reassembly by aiocoap): prints the whole listing, or an error line.

    python3 bench/coap/walk_aiocoap.py PORT

bench/coap/discovery.sh runs PEERS of these at once with WALKER=aiocoap, a
second client beside libcoap's coap-client (pip install aiocoap)."""
import asyncio
import sys

import aiocoap


async def main(port):
    ctx = await aiocoap.Context.create_client_context()
    req = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core")
    try:
        r = await ctx.request(req).response
        sys.stdout.buffer.write(r.payload)
    except Exception as e:  # a failed walk is reported, not raised
        print("error", repr(e))


asyncio.run(main(int(sys.argv[1])))
