#!/usr/bin/env python3
"""Prints the table of docs/benchmarks.md "The cost of a connection and of a room" from the
raw reports: for each row, each build's three runs and their spread (min-max).

    python3 docs/benchmarks/cost/summarize.py docs/benchmarks/cost
    python3 docs/benchmarks/cost/summarize.py docs/benchmarks/cost/one-task b4ce015 4a472be

The builds are the directories under the root ("before" and "after" unless named).
"""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks/cost")


def report(build, run, row):
    p = root / build / run / row / "report.json"
    return json.loads(p.read_text()) if p.exists() else None


def hold(r, what):
    shares = {s["role"]: s for s in r["hold"]}
    connect = {s["role"]: s for s in r["connect"]}
    n = r["held"]
    return {
        "stack KiB/conn": r["stack_kib_per_connection"],
        "gateway KiB/conn": r["gateway_kib_per_connection"],
        "nats KiB/conn": shares["nats-server"]["rss_growth_kib"] / n,
        "fanout KiB/conn": shares["fanout"]["rss_growth_kib"] / n,
        "connect/s": n / r["connect_seconds"],
        "stack connect µs/conn": r["stack_connect_cpu_us_per_connection"],
        "gateway connect µs/conn": r["gateway_connect_cpu_us_per_connection"],
        "nats connect µs/conn": connect["nats-server"]["cpu_s"] * 1e6 / n,
    }[what]


def bench(r, what):
    s = r["steps"][-1]
    return {
        "delivered %": 100.0 * s["delivered"] / max(1, s["published"] * r["subscribers"]),
        "gaps+repeats": s["gaps"] + s["duplicates"],
        "p50 ms": s["p50_ms"],
        "p99 ms": s["p99_ms"],
        "stack CPU-s/M": s["cpu_s_per_million"],
        "gateway CPU-s/M": s["gateway_cpu_s_per_million"],
        "nats CPU-s/M": s["nats_cpu_s"] / max(1, s["delivered"]) * 1e6,
    }[what]


rows = [
    ("idle-own-rooms", hold, ["stack KiB/conn", "gateway KiB/conn", "nats KiB/conn", "fanout KiB/conn",
                              "connect/s", "stack connect µs/conn", "gateway connect µs/conn", "nats connect µs/conn"]),
    ("idle-shared-room", hold, ["stack KiB/conn", "gateway KiB/conn", "nats KiB/conn", "connect/s",
                                "stack connect µs/conn"]),
    ("fanout-1000x50", bench, ["delivered %", "gaps+repeats", "p99 ms", "stack CPU-s/M", "gateway CPU-s/M", "nats CPU-s/M"]),
    ("fanout-5000x10", bench, ["delivered %", "gaps+repeats", "p99 ms", "stack CPU-s/M", "gateway CPU-s/M"]),
    ("fanout-5000x50", bench, ["delivered %", "gaps+repeats", "p50 ms", "p99 ms", "stack CPU-s/M", "gateway CPU-s/M"]),
    ("fanout-5000x200", bench, ["delivered %", "gaps+repeats", "p50 ms", "p99 ms", "stack CPU-s/M", "gateway CPU-s/M"]),
]


def fmt(v):
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


builds = [b for b in (sys.argv[2:] or ["before", "after"]) if (root / b).is_dir()]
print("| row | measure | " + " | ".join(f"{b}: runs 1 / 2 / 3 (spread)" for b in builds) + " |")
print("|---|---|" + "---|" * len(builds))
for row, kind, measures in rows:
    for m in measures:
        cells = []
        for b in builds:
            vals = []
            for run in ("run1", "run2", "run3"):
                r = report(b, run, row)
                if r is not None:
                    vals.append(kind(r, m))
            if vals:
                spread = f"{fmt(min(vals))}–{fmt(max(vals))}"
                cells.append(" / ".join(fmt(v) for v in vals) + f" ({spread})")
            else:
                cells.append("–")
        print(f"| {row} | {m} | " + " | ".join(cells) + " |")
revs = {b: sorted({(report(b, r, "idle-own-rooms") or {}).get("revision", "?") for r in ("run1", "run2", "run3")})
        for b in builds}
print()
print("revisions: " + "; ".join(f"{b}: {', '.join(v)}" for b, v in revs.items()))
