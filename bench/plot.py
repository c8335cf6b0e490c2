#!/usr/bin/env python3
"""Plots for the wsedge benchmarks.

Reads bench/results/*.jsonl (written by run.sh / run-all.sh) and writes SVGs
into bench/plots/. Runs of the same configuration are averaged (median);
lines with "error", "noisy" or a server "env" are skipped.

    python3 bench/plot.py             # re-executes itself inside bench/.venv,
                                      # creating it (pip install matplotlib) if needed
    python3 bench/plot.py --png DIR   # also PNG copies in DIR
    python3 bench/plot.py --since 2026-12-04T16:30:00Z   # one run-all's lines only
"""

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
RESULTS = HERE / "results"
PLOTS = HERE / "plots"
MATPLOTLIB = "matplotlib==3.9.4"

TARGETS = ["wsedge", "tokio-fastws", "tokio-tungstenite", "node-ws", "bun"]
COLORS = {
    "wsedge": "#d62728",
    "wsedge --shards 2": "#ff9896",
    "wsedge --shards 2 on 1 CPU": "#e377c2",
    "tokio-fastws": "#1f77b4",
    "tokio-tungstenite": "#2ca02c",
    "node-ws": "#9467bd",
    "bun": "#8c564b",
}


PNG_DIR = None  # --png DIR: also write PNG copies there (for quick viewing)


def save(fig, name):
    fig.savefig(PLOTS / name)
    if PNG_DIR:
        fig.savefig(Path(PNG_DIR) / name.replace(".svg", ".png"), dpi=80)


def ensure_venv():
    """Re-runs this script with the venv's Python (creating the venv)."""
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        print(f"plot.py: creating {VENV} and installing {MATPLOTLIB}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MATPLOTLIB]
        )
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


# Only lines whose "ts" is at or after this (--since, ISO 8601 UTC).
SINCE = sys.argv[sys.argv.index("--since") + 1] if "--since" in sys.argv else ""


def load():
    """All good result lines, by workload."""
    out = defaultdict(list)
    for f in sorted(RESULTS.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            # Runs with a non-default server environment (e.g.
            # MIMALLOC_ALLOW_THP=0) are diagnostics: tables only.
            if "error" in d or d.get("noisy") or d.get("env"):
                continue
            if SINCE and d.get("ts", "") < SINCE:
                continue
            out[d.get("workload", f.stem)].append(d)
    return out


def med(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def cpu_per_recv(r):
    """Server CPU ns per push received while the window was open: the CPU
    window and the count cover the same time, so a backlog delivered after
    the window (flat out) does not dilute it. Falls back to
    server_cpu_per_msg_ns (rooms has no recv_per_s)."""
    if isinstance(r.get("server_cpu_per_recv_ns"), (int, float)):
        return r["server_cpu_per_recv_ns"]
    recv = r.get("recv_per_s")
    if isinstance(recv, (int, float)) and recv > 0 and r.get("server_cpu_s") is not None:
        return r["server_cpu_s"] * 1e9 / (recv * r["duration_s"])
    return r.get("server_cpu_per_msg_ns")


def group(rows, keyf):
    g = defaultdict(list)
    for r in rows:
        g[keyf(r)].append(r)
    return g


def label(r):
    t = r["target"]
    if r.get("shards", 1) > 1:
        t += f" --shards {r['shards']}"
        if r.get("server_cores", r["shards"]) < r["shards"]:
            t += f" on {r['server_cores']} CPU"
    return t


def plot_memory(plt, data):
    rows = data.get("idle", [])
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in [
        (axes[0], "rss_per_conn", "server RSS per connection"),
        (axes[1], "kernel_per_conn", "kernel socket memory per connection (both ends)"),
    ]:
        for t in TARGETS:
            g = group([r for r in rows if r["target"] == t], lambda r: r["conns"])
            xs = sorted(g)
            ys = [med(g[x], key) for x in xs]
            pts = [(x, y / 1024) for x, y in zip(xs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=t, color=COLORS[t])
        ax.set_xlabel("idle subscribed connections")
        ax.set_ylabel("KiB per connection")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("idle: memory per connection (median of runs)")
    fig.tight_layout()
    save(fig, "memory_per_conn.svg")
    plt.close(fig)


def percentile_bars(plt, rows, title, fname, keyname="target"):
    if not rows:
        return
    g = group(rows, label)
    names = [n for n in TARGETS + ["wsedge --shards 2", "wsedge --shards 2 on 1 CPU"] if n in g]
    pcts = [("lat_p50_us", "p50"), ("lat_p99_us", "p99"), ("lat_p999_us", "p99.9"), ("lat_max_us", "max")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [med(g[n], k) or 0 for k, _ in pcts]
        sat = any(r.get("generator_saturated") for r in g[n])
        xs = [j + i * width for j in range(len(pcts))]
        bars = ax.bar(xs, [v / 1000 for v in vals], width, label=n + (" (generator saturated)" if sat else ""),
                      color=COLORS.get(n, "grey"), hatch="//" if sat else None)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v / 1000:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pcts))])
    ax.set_xticklabels([p for _, p in pcts])
    ax.set_yscale("log")
    ax.set_ylabel("publish-to-receive latency, ms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, fname)
    plt.close(fig)


def plot_latency(plt, data):
    fan = [r for r in data.get("fanout", []) if r.get("subs") == 10000 and r.get("rate") == 20]
    percentile_bars(plt, fan, "fanout: 10,000 subscribers x 20 pubs/s = 200,000 deliveries/s (median of runs)",
                    "latency_fanout_200k.svg")
    rooms = data.get("rooms", [])
    if rooms:
        r0 = rooms[0]
        percentile_bars(plt, rooms,
                        f"rooms: {r0['conns']} connections in {r0['rooms']} rooms, "
                        f"{r0['rate_per_conn']} pubs/s each (median of runs)",
                        "latency_rooms.svg")


def plot_throughput(plt, data):
    rows = [r for r in data.get("fanout", []) if r.get("rate") == "flat"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    g = group(rows, label)
    for n in [x for x in TARGETS + ["wsedge --shards 2", "wsedge --shards 2 on 1 CPU"] if x in g]:
        gs = group(g[n], lambda r: r["subs"])
        xs = sorted(gs)
        ys = [med(gs[x], "recv_per_s") for x in xs]
        sat = [any(r.get("generator_saturated") for r in gs[x]) for x in xs]
        c = COLORS.get(n, "grey")
        ax.plot(xs, ys, color=c, label=n, linestyle="--" if "shards" in n else "-")
        for x, y, s in zip(xs, ys, sat):
            ax.plot([x], [y], marker="o", markersize=8, color=c, markerfacecolor="white" if s else c)
    ax.plot([], [], marker="o", color="black", markerfacecolor="white", linestyle="none",
            label="hollow: generator saturated (lower bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.set_ylabel("delivered messages/s (recv_per_s, log)")
    ax.set_title("fanout flat out: delivery throughput (median of runs)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "throughput.svg")
    plt.close(fig)


def floor_ns(data):
    """(ns per write at batch 1, ns per message at batch 16) from the floor probe."""
    rows = data.get("floor", [])
    b1, b16 = [], []
    for r in rows:
        for b in r.get("results", []):
            if b["batch"] == 1:
                b1.append(b["us_per_msg"] * 1000)
            elif b["batch"] == 16:
                b16.append(b["us_per_msg"] * 1000)
    return (statistics.median(b1) if b1 else None, statistics.median(b16) if b16 else None)


def plot_cpu(plt, data):
    configs = [
        ("fanout 10k flat", [r for r in data.get("fanout", []) if r.get("subs") == 10000 and r.get("rate") == "flat"]),
        ("fanout 10k @200k/s", [r for r in data.get("fanout", []) if r.get("subs") == 10000 and r.get("rate") == 20]),
        ("fanout 1k flat", [r for r in data.get("fanout", []) if r.get("subs") == 1000 and r.get("rate") == "flat"]),
        ("rooms", data.get("rooms", [])),
    ]
    configs = [(n, rows) for n, rows in configs if rows]
    if not configs:
        return
    names = [n for n in TARGETS + ["wsedge --shards 2", "wsedge --shards 2 on 1 CPU"] if any(label(r) == n for _, rows in configs for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs, ys = [], []
        for j, (_, rows) in enumerate(configs):
            vals = [cpu_per_recv(r) for r in rows if label(r) == n]
            vals = [v for v in vals if v is not None]
            v = statistics.median(vals) if vals else None
            if v is not None:
                xs.append(j + i * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=n, color=COLORS.get(n, "grey"))
        for b, v in zip(bars, ys):
            ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=6)
    f1, f16 = floor_ns(data)
    if f1:
        ax.axhline(f1, color="black", linestyle="--", linewidth=1,
                   label=f"kernel floor: one 130 B write per message ({f1:.0f} ns)")
    if f16:
        ax.axhline(f16, color="black", linestyle=":", linewidth=1,
                   label=f"kernel floor: 16 messages per writev ({f16:.0f} ns/msg)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))])
    ax.set_xticklabels([n for n, _ in configs])
    ax.set_yscale("log")
    ax.set_ylabel("server CPU per delivered message, ns (log)")
    ax.set_title("server CPU time (utime+stime) per message received in the window, vs the kernel floor", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "cpu_per_msg.svg")
    plt.close(fig)


def plot_compression(plt, data):
    rows = data.get("compression", [])
    if not rows:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    keys = [("wire_bytes_per_msg", "bytes on the wire per message"),
            ("cpu_per_recv", "server CPU per delivered message, ns"),
            ("recv_per_s", "delivered messages/s")]
    groups = []
    for t in ["wsedge", "node-ws", "bun"]:
        for rate in [20, "flat"]:
            groups.append((t, rate))
    for ax, (key, title) in zip(axes, keys):
        xs, labels = [], []
        for j, (t, rate) in enumerate(groups):
            for k, d in enumerate(["off", "on"]):
                sel = [r for r in rows if r["target"] == t and r.get("rate") == rate and r.get("deflate") == d]
                if key == "cpu_per_recv":
                    vals = [v for v in map(cpu_per_recv, sel) if v is not None]
                    v = statistics.median(vals) if vals else None
                else:
                    v = med(sel, key)
                if v is None:
                    continue
                x = j + k * 0.4
                sat = any(r.get("generator_saturated") for r in sel)
                ax.bar(x, v, 0.4, color=COLORS[t], alpha=0.45 if d == "off" else 1.0,
                       hatch="" if d == "on" else "..", edgecolor="black" if sat else None)
                ax.annotate(f"{v:.3g}" + ("*" if sat else ""), (x, v), ha="center", va="bottom", fontsize=6)
            xs.append(j + 0.2)
            labels.append(f"{t}\n{'1000 subs x 20/s' if rate == 20 else 'flat out'}")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if key == "cpu_per_recv":
            ax.set_yscale("log")
    from matplotlib.patches import Patch
    axes[0].legend(handles=[Patch(facecolor="grey", alpha=0.45, hatch="..", label="deflate off"),
                            Patch(facecolor="grey", label="deflate on")], fontsize=8)
    fig.suptitle("compression: ~1.6 KB JSON feed items, permessage-deflate on/off (median of runs)\n"
                 "* / black edge: generator saturated (the clients' inflating limits the run)", fontsize=10)
    fig.tight_layout()
    save(fig, "compression.svg")
    plt.close(fig)


def plot_storm(plt, data):
    rows = data.get("storm", [])
    if not rows:
        return
    intervals = sorted({r.get("interval_ms", 50) for r in rows})
    fig, axes = plt.subplots(1, len(intervals), figsize=(5.5 * len(intervals), 4.2), squeeze=False)
    for ax, iv in zip(axes[0], intervals):
        sel = [r for r in rows if r.get("interval_ms", 50) == iv]
        names = [t for t in TARGETS if any(r["target"] == t for r in sel)]
        for i, t in enumerate(names):
            rs = [r for r in sel if r["target"] == t]
            a = med(rs, "t_all_subscribed_ms") or 0
            b = med(rs, "t_all_receiving_ms") or 0
            ok = all(r.get("recovered") for r in rs)
            ax.bar(i - 0.2, a / 1000, 0.4, color=COLORS[t], label="all resubscribed" if i == 0 else None)
            ax.bar(i + 0.2, b / 1000, 0.4, color=COLORS[t], alpha=0.5, hatch="//",
                   label="all receiving" if i == 0 else None)
            if not ok:
                ax.annotate("not recovered", (i, max(a, b) / 1000), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("seconds after the drop")
        n = sel[0].get("conns")
        ax.set_title(f"storm: {n} connections dropped at once, a publication every {iv} ms", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "storm.svg")
    plt.close(fig)


def main():
    global PNG_DIR
    ensure_venv()
    if "--png" in sys.argv:
        PNG_DIR = sys.argv[sys.argv.index("--png") + 1]
        Path(PNG_DIR).mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    data = load()
    if not data:
        sys.exit(f"plot.py: no results in {RESULTS}")
    for f in (plot_memory, plot_latency, plot_throughput, plot_cpu, plot_compression, plot_storm):
        f(plt, data)
    print("plot.py: wrote", ", ".join(sorted(p.name for p in PLOTS.glob("*.svg"))), file=sys.stderr)


if __name__ == "__main__":
    main()
