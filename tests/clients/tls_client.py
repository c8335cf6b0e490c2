"""An independent wss:// client: Python `websockets` over the standard
library's `ssl` (OpenSSL), trusting only the CA file given. Used by
tests/tls.rs.

usage: tls_client.py roundtrip wss://127.0.0.1:PORT/ws CAFILE LARGE_BYTES
       tls_client.py hello     wss://127.0.0.1:PORT/ws CAFILE

roundtrip: connect, subscribe, publish a small and a LARGE_BYTES message
(many TLS records each way) and check both come back unchanged, then send a
command that is not JSON and expect the server's close 3501.
hello: connect and send `connect`.
Both print one JSON line with what they saw (the server certificate's
SHA-256, the TLS version); any failure exits non-zero.
"""
import asyncio
import hashlib
import json
import ssl
import sys

import websockets


def context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_facts(ws) -> dict:
    obj = ws.transport.get_extra_info("ssl_object")
    cert = obj.getpeercert(binary_form=True)
    return {
        "cert_sha256": hashlib.sha256(cert).hexdigest(),
        "version": obj.version(),
        "alpn": obj.selected_alpn_protocol(),
    }


async def recv_objects(ws):
    """The JSON objects of the next message (one per line)."""
    return [json.loads(line) for line in (await ws.recv()).split("\n")]


async def call(ws, pending: list, msg: dict) -> dict:
    await ws.send(json.dumps(msg))
    while True:
        for i, m in enumerate(pending):
            if m.get("id") == msg["id"]:
                return pending.pop(i)
        pending.extend(await recv_objects(ws))


async def roundtrip(url: str, cafile: str, large: int) -> None:
    max_size = 4 * large + (1 << 16)
    async with websockets.connect(
        url,
        ssl=context(cafile),
        server_hostname="localhost",
        subprotocols=["edu-matrix-v1.json"],
        compression=None,
        max_size=max_size,
    ) as ws:
        facts = tls_facts(ws)
        pending: list = []
        reply = await call(ws, pending, {"id": 1, "connect": {"name": "py-tls"}})
        assert "connect" in reply, reply
        reply = await call(ws, pending, {"id": 2, "subscribe": {"channel": "tls:py"}})
        assert "subscribe" in reply, reply
        small = {"n": 1}
        big = {"text": "".join(chr(48 + i % 75) for i in range(large))}
        for id_, data in ((3, small), (4, big)):
            reply = await call(
                ws, pending, {"id": id_, "publish": {"channel": "tls:py", "data": data}}
            )
            assert "publish" in reply, reply
            while not any(m.get("push", {}).get("pub", {}).get("data") == data for m in pending):
                pending.extend(await recv_objects(ws))
        await ws.send("this is not JSON")
        try:
            while True:
                await ws.recv()
        except websockets.exceptions.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        assert code == 3501, f"close code {code}"
        facts.update({"ok": True, "close": code, "large": large})
        print(json.dumps(facts))


async def hello(url: str, cafile: str) -> None:
    async with websockets.connect(
        url,
        ssl=context(cafile),
        server_hostname="localhost",
        subprotocols=["edu-matrix-v1.json"],
    ) as ws:
        facts = tls_facts(ws)
        pending: list = []
        reply = await call(ws, pending, {"id": 1, "connect": {}})
        assert "connect" in reply, reply
        facts["ok"] = True
        print(json.dumps(facts))


if sys.argv[1] == "roundtrip":
    asyncio.run(roundtrip(sys.argv[2], sys.argv[3], int(sys.argv[4])))
elif sys.argv[1] == "hello":
    asyncio.run(hello(sys.argv[2], sys.argv[3]))
else:
    sys.exit(f"unknown mode {sys.argv[1]!r}")
