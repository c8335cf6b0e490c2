#!/usr/bin/env python3
"""Markdown tables from bench/results/*.jsonl (what RESULTS.md quotes).

Every cell lists each recorded run of that configuration ("a / b"), so the
spread between runs stays visible. Lines with "error" are listed apart;
"noisy" runs are marked with a trailing "*".

    python3 bench/summarize.py            # all workloads
    python3 bench/summarize.py fanout     # one
    python3 bench/summarize.py --since 2026-12-04T16:30:00Z   # one run-all only
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Only lines whose "ts" is at or after this (ISO 8601 UTC, as run.sh writes
# it): the runs of one bench/run-all.sh, without older ones.
SINCE = ""
TARGETS = ["wsedge", "tokio-fastws", "tokio-tungstenite", "node-ws", "bun"]


def load(workload):
    path = RESULTS / f"{workload}.jsonl"
    if not path.exists():
        return [], []
    ok, bad = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if SINCE and d.get("ts", "") < SINCE:
            continue
        (bad if "error" in d else ok).append(d)
    return ok, bad


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def cell(rows, f, digits=0):
    out = []
    for r in rows:
        v = f(r)
        s = fmt(v, digits)
        if r.get("noisy"):
            s += "*"
        out.append(s)
    return " / ".join(out) if out else "–"


def cpu_per_delivery(r):
    """Server CPU ns per push received while the window was open (the CPU
    window and the count cover the same time); as plot.py."""
    v = r.get("server_cpu_per_recv_ns")
    return v if isinstance(v, (int, float)) else r.get("server_cpu_per_msg_ns")


def table(header, lines):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for ln in lines:
        print("| " + " | ".join(ln) + " |")
    print()


def grouped(rows, key):
    g = defaultdict(list)
    for r in rows:
        g[key(r)].append(r)
    return g


def label(r):
    """Target plus any server environment the run had."""
    return r["target"] + "".join(f" ({k}={v})" for k, v in sorted(r.get("env", {}).items()))


def order(t):
    return TARGETS.index(t) if t in TARGETS else len(TARGETS)


def floor():
    rows, _ = load("floor")
    if not rows:
        return
    print("### floor (no server)\n")
    by = defaultdict(list)
    for r in rows:
        for b in r["results"]:
            by[b["batch"]].append(b)
    table(
        ["frames per write", "µs CPU per write", "µs CPU per frame"],
        [
            [
                str(k),
                " / ".join(fmt(b["thread_cpu_us_per_write"], 2) for b in v),
                " / ".join(fmt(b["thread_cpu_us_per_msg"], 3) for b in v),
            ]
            for k, v in sorted(by.items())
        ],
    )


def idle():
    rows, bad = load("idle")
    if not rows:
        return
    print("### idle\n")
    g = grouped(
        rows,
        lambda r: (
            order(r["target"]),
            label(r),
            r["conns"],
        ),
    )
    table(
        [
            "target",
            "conns",
            "server RSS / conn (B)",
            "kernel / conn pair (B)",
            "connect + upgrade + subscribe / s",
            "server CPU / conn (µs)",
        ],
        [
            [
                t,
                fmt(c),
                cell(v, lambda r: r["rss_per_conn"]),
                cell(v, lambda r: r["kernel_per_conn"]),
                cell(v, lambda r: r["connect_rate"]),
                cell(v, lambda r: r["connect_server_cpu_s"] * 1e6 / r["conns"]),
            ]
            for (_, t, c), v in sorted(g.items())
        ],
    )
    errors(bad)


def fanout_rows(workload, rows):
    g = grouped(
        rows,
        lambda r: (
            str(r["rate"]),
            r["subs"],
            r.get("shards", 1),
            r.get("server_cores", r.get("shards", 1)),
            r.get("deflate", ""),
            order(r["target"]),
            label(r),
        ),
    )
    lines = []
    for (rate, subs, shards, cores, deflate, _, t), v in sorted(g.items()):
        name = t
        if shards > 1:
            name += f" ×{shards} shards on {cores} CPU{'s' if cores > 1 else ''}"
        lines.append(
            [
                name,
                fmt(subs),
                rate,
                *([deflate] if workload == "compression" else []),
                cell(v, lambda r: r.get("recv_per_s", r["delivered_per_s"])),
                cell(v, cpu_per_delivery),
                cell(v, lambda r: r.get("frames_per_write"), 1),
                cell(v, lambda r: r["lat_p50_us"] / 1000, 1),
                cell(v, lambda r: r["lat_p99_us"] / 1000, 1),
                cell(v, lambda r: r["lat_p999_us"] / 1000, 1),
                cell(v, lambda r: r["losses"]),
                cell(v, lambda r: r["generator_saturated"]),
                *(
                    [cell(v, lambda r: r["wire_bytes_per_msg"])]
                    if workload == "compression"
                    else []
                ),
            ]
        )
    return lines


def fanout(workload="fanout"):
    rows, bad = load(workload)
    if not rows:
        return
    print(f"### {workload}\n")
    header = ["target", "subs", "pubs/s"]
    if workload == "compression":
        header.append("deflate")
    header += [
        "received / s",
        "server ns / delivery",
        "frames / write",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "losses",
        "gen saturated",
    ]
    if workload == "compression":
        header.append("wire B / msg")
    table(header, fanout_rows(workload, rows))
    errors(bad)


def rooms():
    rows, bad = load("rooms")
    if not rows:
        return
    print("### rooms\n")
    g = grouped(rows, lambda r: (order(r["target"]), label(r)))
    table(
        [
            "target",
            "delivered / s",
            "server ns / delivery",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "losses",
        ],
        [
            [
                t,
                cell(v, lambda r: r["delivered_per_s"]),
                cell(v, lambda r: r["server_cpu_per_msg_ns"]),
                cell(v, lambda r: r["lat_p50_us"] / 1000, 2),
                cell(v, lambda r: r["lat_p99_us"] / 1000, 2),
                cell(v, lambda r: r["lat_p999_us"] / 1000, 2),
                cell(v, lambda r: r["lat_max_us"] / 1000, 1),
                cell(v, lambda r: r["losses"]),
            ]
            for (_, t), v in sorted(g.items())
        ],
    )
    errors(bad)


def storm():
    rows, bad = load("storm")
    if not rows:
        return
    print("### storm\n")
    g = grouped(rows, lambda r: (r["interval_ms"], order(r["target"]), label(r)))
    table(
        [
            "target",
            "publish every",
            "all resubscribed (s)",
            "all receiving (s)",
            "reconnects / s",
            "recovered",
        ],
        [
            [
                t,
                f"{i} ms",
                cell(v, lambda r: r["t_all_subscribed_ms"] / 1000, 2),
                cell(v, lambda r: r["t_all_receiving_ms"] / 1000, 2),
                cell(v, lambda r: r["reconnect_rate"]),
                cell(v, lambda r: r["recovered"]),
            ]
            for (i, _, t), v in sorted(g.items())
        ],
    )
    errors(bad)


def _ratio_table(workload, title, key, describe, metrics):
    """wsedge against the best baseline of each configuration, run by run.

    For each metric the best baseline is the one with the best median
    over its runs among those that lost nothing; the ratio is wsedge's
    run i over that baseline's run i (both ran in the same bench/run-all.sh,
    one configuration after the other). Lines with a server environment
    (WSEDGE_IO, MIMALLOC_*) are left out: they have no baseline twin.
    """
    rows, _ = load(workload)
    rows = [r for r in rows if not r.get("env") and r.get("shards", 1) == 1]
    if not rows:
        return
    lines = []
    for k, v in sorted(grouped(rows, key).items(), key=lambda kv: str(kv[0])):
        by_target = grouped(v, lambda r: r["target"])
        if "wsedge" not in by_target:
            continue
        ws = by_target["wsedge"]
        for name, f, lower in metrics:
            best = None
            for t, rs in by_target.items():
                if t == "wsedge" or any(r.get("losses", 0) for r in rs):
                    continue
                vals = sorted(x for x in (f(r) for r in rs) if x is not None)
                if not vals:
                    continue
                med = vals[len(vals) // 2]
                if best is None or (med < best[1] if lower else med > best[1]):
                    best = (t, med, rs)
            if best is None:
                continue
            t, _, rs = best
            pairs = [
                fmt(f(a) / f(b), 2)
                for a, b in zip(ws, rs)
                if f(a) is not None and f(b)
            ]
            lines.append(
                [
                    describe(k),
                    name,
                    cell(ws, f, 2 if abs(f(ws[0]) or 0) < 10 else 0),
                    t,
                    cell(rs, f, 2 if abs(f(rs[0]) or 0) < 10 else 0),
                    " / ".join(pairs),
                ]
            )
    print(f"### {title}: wsedge against the best baseline\n")
    table(["configuration", "metric", "wsedge", "best baseline", "its value", "wsedge ÷ best"], lines)


def ratios():
    """The "vs best baseline" tables of RESULTS.md (lower is better unless said)."""
    recv = lambda r: r.get("recv_per_s", r["delivered_per_s"])  # noqa: E731
    _ratio_table(
        "fanout",
        "fan-out",
        lambda r: (r["subs"], str(r["rate"])),
        lambda k: f"{k[0]:,} subs, {k[1]} pubs/s",
        [
            ("server ns / delivery", cpu_per_delivery, True),
            ("received / s (higher is better)", recv, False),
            ("p99 ms", lambda r: r["lat_p99_us"] / 1000, True),
        ],
    )
    _ratio_table(
        "idle",
        "idle",
        lambda r: r["conns"],
        lambda k: f"{k:,} connections",
        [
            ("server RSS / conn (B)", lambda r: r["rss_per_conn"], True),
            ("server CPU / conn (µs)", lambda r: r["connect_server_cpu_s"] * 1e6 / r["conns"], True),
            ("connects / s (higher is better)", lambda r: r["connect_rate"], False),
        ],
    )
    _ratio_table(
        "rooms",
        "rooms",
        lambda r: r.get("conns", 0),
        lambda k: f"{k:,} conns in rooms",
        [
            ("server ns / delivery", lambda r: r["server_cpu_per_msg_ns"], True),
            ("p99 ms", lambda r: r["lat_p99_us"] / 1000, True),
            ("p99.9 ms", lambda r: r["lat_p999_us"] / 1000, True),
        ],
    )
    _ratio_table(
        "storm",
        "storm",
        lambda r: r["interval_ms"],
        lambda k: f"19,000, publishing every {k} ms",
        [
            ("all resubscribed (s)", lambda r: r["t_all_subscribed_ms"] / 1000, True),
            ("all receiving (s)", lambda r: r["t_all_receiving_ms"] / 1000, True),
        ],
    )
    _ratio_table(
        "compression",
        "compression",
        lambda r: (r.get("deflate", ""), str(r["rate"])),
        lambda k: f"deflate {k[0]}, {k[1]} pubs/s",
        [
            ("server ns / delivery", cpu_per_delivery, True),
            ("p99 ms", lambda r: r["lat_p99_us"] / 1000, True),
        ],
    )


def errors(bad):
    for d in bad:
        print(f"- failed run: `{d.get('cmd', '?')}`: {d.get('error')}")
    if bad:
        print()


def main():
    global SINCE
    args = sys.argv[1:]
    if "--since" in args:
        i = args.index("--since")
        SINCE = args[i + 1]
        del args[i : i + 2]
    which = args or ["floor", "idle", "fanout", "rooms", "storm", "compression"]
    for w in which:
        if w in ("fanout", "compression"):
            fanout(w)
        else:
            globals()[w]()


if __name__ == "__main__":
    main()
