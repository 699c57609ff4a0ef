#!/bin/bash
# docs/benchmarks.md "Wildcard or per-room": what an event of a room a gateway does not hold
# costs that gateway (and nats-server), with each --room-subscriptions mode.
#
#   docs/benchmarks/crossover/run.sh <wildcard|per-room> [events]
#
# One gateway holds one connection on one room; a backend publishes <events> (default
# 100,000) to 1,000 other rooms as fast as core NATS takes them; the CPU the gateway and
# nats-server used meanwhile is divided by the events. Needs nats-py in the tools venv
# (`target/tools/venv/bin/pip install nats-py`). Run from the project root after
# `cargo build --release --locked --bins`.
set -euo pipefail
mode=$1
events=${2:-100000}
venv=target/tools/venv/bin
store=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$store"' EXIT
$venv/nats-server -js -a 127.0.0.1 -p 4334 -sd "$store" > /dev/null 2>&1 & nats=$!; pids+=($nats)
sleep 1
target/release/herald-gateway --nats-url nats://127.0.0.1:4334 --listen 127.0.0.1:8190 --admin-listen 127.0.0.1:9195 \
  --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --room-subscriptions "$mode" > /dev/null 2>&1 & gw=$!; pids+=($gw)
until curl -sf 127.0.0.1:9195/readyz > /dev/null; do sleep 0.2; done
target/release/loadtest hold --gateway ws://127.0.0.1:8190/ws --connections 1 --rooms 1 --hold 600s \
  --report-dir "$store/hold" > /dev/null 2>&1 & pids+=($!)
until curl -s 127.0.0.1:9195/metrics | grep -q '^herald_gateway_room_subscriptions 1'; do sleep 0.2; done
$venv/python - "$gw" "$nats" "$events" "$mode" <<'PY'
import asyncio, sys, nats
gw, ns, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100.0
async def main():
    nc = await nats.connect("nats://127.0.0.1:4334")
    g0, n0 = cpu(gw), cpu(ns)
    for i in range(n):
        await nc.publish(f"herald.room.other-{i % 1000}", b'{"x":1}')
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    await asyncio.sleep(2)
    g, s = cpu(gw) - g0, cpu(ns) - n0
    print(f"{mode}: {n} events of rooms the gateway does not hold: gateway {g:.2f} CPU-s "
          f"({g / n * 1e6:.2f} µs each), nats-server {s:.2f} CPU-s ({s / n * 1e6:.2f} µs each)")
    await nc.close()
asyncio.run(main())
PY
