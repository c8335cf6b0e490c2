"""A browser-like client: Python `websockets`, which offers permessage-deflate
by default (as browsers do). Used by tests/compression.rs.

usage: deflate_client.py ws://host:port/ws
Prints one JSON line with what it saw; exits non-zero on any failure.
"""
import asyncio
import json
import sys

import websockets


async def main(url: str) -> None:
    async with websockets.connect(url, subprotocols=["edu-matrix-v1.json"]) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in ext, f"not negotiated: {ext!r}"
        await ws.send(json.dumps({"id": 1, "connect": {"name": "py"}}))
        reply = json.loads(await ws.recv())
        assert reply["id"] == 1 and "connect" in reply, reply
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "deflate:test"}}))
        reply = json.loads(await ws.recv())
        assert reply["id"] == 2 and "subscribe" in reply, reply
        # A large, compressible publication: the client compresses it on
        # the way in, the server inflates it, compresses the push once and
        # the client inflates that.
        data = {"text": "the quick brown fox jumps over the lazy dog " * 40, "n": list(range(50))}
        await ws.send(json.dumps({"id": 3, "publish": {"channel": "deflate:test", "data": data}}))
        got_reply = got_pub = False
        while not (got_reply and got_pub):
            for line in (await ws.recv()).split("\n"):
                msg = json.loads(line)
                if msg.get("id") == 3:
                    assert "publish" in msg, msg
                    got_reply = True
                elif "push" in msg:
                    assert msg["push"]["pub"]["data"] == data, "publication changed in transit"
                    got_pub = True
        print(json.dumps({"extension": ext, "ok": True}))


asyncio.run(main(sys.argv[1]))
