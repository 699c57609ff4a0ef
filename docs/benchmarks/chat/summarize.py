#!/usr/bin/env python3
"""Prints the table of docs/benchmarks.md "Chat-shaped traffic" from the raw reports: for each
row and measure, each build's three runs and their spread (min-max).

    python3 docs/benchmarks/chat/summarize.py docs/benchmarks/chat
    python3 docs/benchmarks/chat/summarize.py docs/benchmarks/chat before after

The builds are the directories under the root ("before" and "after" unless named); each holds
run1..run3/<row>/report.json as docs/benchmarks/chat/run.sh writes them.
"""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks/chat")
RUNS = ("run1", "run2", "run3")


def report(build, run, row):
    p = root / build / run / row / "report.json"
    return json.loads(p.read_text()) if p.exists() else None


def proc_us(r, prefix):
    return sum(p["cpu_us_per_delivery"] for p in r["processes"] if p["process"].startswith(prefix))


def measure(r, what):
    gws = r["gateway_figures"]
    return {
        "delivered %": 100.0 * r["delivered"] / max(1, r["expected"]),
        "lost+dup+ooo": r["lost"] + r["duplicates"] + r["out_of_order"],
        "p50 ms": r["p50_ms"],
        "p99 ms": r["p99_ms"],
        "stack µs/delivery": r["stack_cpu_us_per_delivery"],
        "gateways µs/delivery": proc_us(r, "gateway"),
        "nats-server µs/delivery": proc_us(r, "nats-server"),
        "fanout µs/delivery": proc_us(r, "fanout"),
        "NATS msgs/event": r["nats_msgs_per_event"],
        "max foreign share %": 100.0 * max((g["foreign_share"] or 0.0) for g in gws),
        "gateway KiB/room held": sum(g["rss_growth_kib_per_room"] * g["rooms_held"] for g in gws)
        / max(1, sum(g["rooms_held"] for g in gws)),
        "nats-server KiB/room": r["nats_rss_growth_kib_per_room"],
    }[what]


common = ["delivered %", "lost+dup+ooo", "p50 ms", "p99 ms", "stack µs/delivery", "gateways µs/delivery",
          "nats-server µs/delivery", "fanout µs/delivery", "NATS msgs/event"]
rows = [
    ("personal-g1", common),
    ("personal-g2", common),
    ("personal-g4", common),
    ("chat5-g1", common),
    ("chat5-g2", common),
    ("chat5-g4", common),
    ("disjoint-g2", common + ["max foreign share %", "gateway KiB/room held", "nats-server KiB/room"]),
]
# Whole-stack CPU per delivery of G gateways over that of one, run by run (runs are interleaved).
ratios = [("personal-g2", "personal-g1"), ("personal-g4", "personal-g1"),
          ("chat5-g2", "chat5-g1"), ("chat5-g4", "chat5-g1")]


def fmt(v):
    if v == 0:
        return "0"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(vals):
    if not vals:
        return "–"
    return " / ".join(fmt(v) for v in vals) + f" ({fmt(min(vals))}–{fmt(max(vals))})"


builds = [b for b in (sys.argv[2:] or ["before", "after"]) if (root / b).is_dir()]
print("| row | measure | " + " | ".join(f"{b}: runs 1 / 2 / 3 (spread)" for b in builds) + " |")
print("|---|---|" + "---|" * len(builds))
for row, measures in rows:
    for m in measures:
        cells = []
        for b in builds:
            cells.append(cell([measure(r, m) for r in (report(b, n, row) for n in RUNS) if r is not None]))
        print(f"| {row} | {m} | " + " | ".join(cells) + " |")
for a, base in ratios:
    cells = []
    for b in builds:
        vals = []
        for n in RUNS:
            ra, rb = report(b, n, a), report(b, n, base)
            if ra and rb:
                vals.append(ra["stack_cpu_us_per_delivery"] / rb["stack_cpu_us_per_delivery"])
        cells.append(cell(vals))
    print(f"| {a} ÷ {base} | stack µs/delivery ratio | " + " | ".join(cells) + " |")
revs = {b: sorted({(report(b, n, row) or {}).get("revision", "?") for n in RUNS for row, _ in rows} - {"?"})
        for b in builds}
print()
print("revisions: " + "; ".join(f"{b}: {', '.join(v)}" for b, v in revs.items()))
