#!/usr/bin/env python3
"""Every row of a docs/benchmarks/nchan series (run.sh or knobs.sh): runs, delivery, p50/p99 and
CPU µs per delivery, whole stack and per process, min–max over the runs.

    python3 docs/benchmarks/nchan/summarize.py docs/benchmarks/nchan/<report dir>
"""
import collections
import glob
import json
import sys


def span(xs, digits=1):
    lo, hi = min(xs), max(xs)
    return f"{lo:.{digits}f}" if round(lo, digits) == round(hi, digits) else f"{lo:.{digits}f}–{hi:.{digits}f}"


rows = collections.defaultdict(list)
for f in sorted(glob.glob(f"{sys.argv[1]}/run*/*/report.json")):
    rows[f.split("/")[-2]].append(json.load(open(f)))
print("| row | runs | delivered | p50 ms | p99 ms | whole stack µs | per process µs |")
print("|---|---|---|---|---|---|---|")
for row, rs in rows.items():
    per = collections.defaultdict(list)
    for r in rs:
        for p in r["processes"]:
            name = "nginx" if r["target"] == "nchan" and p["process"] != "fanout" else p["process"]
            per[name].append(p["cpu_us_per_delivery"])
    if rs[0]["target"] == "nchan":
        per = {"nginx (master and workers)": [r["stack_cpu_us_per_delivery"] for r in rs]}
    delivered = sorted({f"{r['delivered']:,}/{r['expected']:,}" for r in rs})
    print(
        f"| {row} | {len(rs)} | {', '.join(delivered)} | {span([r['p50_ms'] for r in rs])} | "
        f"{span([r['p99_ms'] for r in rs])} | {span([r['stack_cpu_us_per_delivery'] for r in rs])} | "
        + ", ".join(f"{n} {span(v)}" for n, v in per.items())
        + " |"
    )
