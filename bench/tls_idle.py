"""Idle memory per connection, plain ws:// against wss:// (until wsbench has
a TLS client): starts the wsedge binary given, with or without [tls] (a
throwaway self-signed certificate made with openssl), opens N connections
with Python `websockets` (each upgraded, `connect`ed and subscribed to one
of 1,000 channels, as `wsbench idle` does), lets them settle and reports
(server RSS after - before) / N.

usage: python bench/tls_idle.py WSEDGE_BIN N [N...]
Prints one JSON line per (mode, N). Run with MIMALLOC_ALLOW_THP=0 in the
environment for 4 KiB-granular figures (it is passed to the server).
"""
import asyncio
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import websockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_cert(d: str) -> tuple[str, str]:
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


async def open_conn(url: str, ctx, i: int):
    kw = {"ssl": ctx, "server_hostname": "localhost"} if ctx else {}
    ws = await websockets.connect(url, subprotocols=["edu-matrix-v1.json"], compression=None,
                                  open_timeout=60, ping_interval=None, **kw)
    await ws.send(json.dumps({"id": 1, "connect": {}}))
    await ws.recv()
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": f"idle:{i % 1000}"}}))
    await ws.recv()
    return ws


async def measure(bin_: str, tls: bool, n: int, cert_key) -> dict:
    port, admin, api = free_port(), free_port(), free_port()
    env = dict(os.environ, WSEDGE_API_LISTEN=f"127.0.0.1:{api}", WSEDGE_LOG_LEVEL="warn")
    if tls:
        env["WSEDGE_TLS_CERT_FILE"], env["WSEDGE_TLS_KEY_FILE"] = cert_key
    proc = subprocess.Popen([bin_, "--listen", f"127.0.0.1:{port}", "--admin-listen",
                             f"127.0.0.1:{admin}", "--shards", "2"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        before = rss(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=cert_key[0])
            ctx.set_alpn_protocols(["http/1.1"])
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ws"
        t0 = time.monotonic()
        conns = []
        sem = asyncio.Semaphore(int(os.environ.get("CONCURRENCY", "200")))

        async def one(i):
            async with sem:
                conns.append(await open_conn(url, ctx, i))

        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        await asyncio.sleep(3.0)
        after = rss(proc.pid)
        for ws in conns:
            ws.transport.abort()
        return {"mode": "tls" if tls else "plain", "conns": n,
                "rss_before": before, "rss_after": after,
                "rss_per_conn": round((after - before) / n, 1),
                "setup_per_s": round(n / took), "server_cpu_us_per_conn": round(cpu / n * 1e6, 1)}
    finally:
        proc.kill()
        proc.wait()


async def main() -> None:
    bin_ = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as d:
        cert_key = make_cert(d)
        for n in map(int, sys.argv[2:]):
            for tls in (False, True):
                print(json.dumps(await measure(bin_, tls, n, cert_key)), flush=True)


asyncio.run(main())
