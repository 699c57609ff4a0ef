#!/bin/bash
# docs/benchmarks.md "Presence": a 5,000-member room with 200 joins/leaves per second.
#
#   docs/benchmarks/presence/run.sh <report dir> [extra fanout flags, e.g. --large-room 100000]
#
# nats-server, one fanout and two gateways on fixed loopback ports, then `loadtest presence`.
# Run from the project root after `cargo build --release --locked --bins`.
set -euo pipefail
out=$1
shift
nats=${HERALD_NATS_SERVER:-target/tools/venv/bin/nats-server}
store=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$store"' EXIT
"$nats" -js -a 127.0.0.1 -p 4333 -sd "$store" > /dev/null 2>&1 & natspid=$!; pids+=($natspid)
sleep 1
target/release/herald-fanout --nats-url nats://127.0.0.1:4333 --admin-listen 127.0.0.1:9300 "$@" > /dev/null 2>&1 & fanout=$!; pids+=($fanout)
gw=()
for i in 0 1; do
  target/release/herald-gateway --nats-url nats://127.0.0.1:4333 --listen 127.0.0.1:818$i \
    --admin-listen 127.0.0.1:919$i --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --gateway-id gw$i --max-connections 20000 > /dev/null 2>&1 &
  pids+=($!); gw+=($!)
done
for port in 9300 9190 9191; do
  until curl -sf 127.0.0.1:$port/readyz > /dev/null; do sleep 0.2; done
done
target/release/loadtest presence --gateway ws://127.0.0.1:8180/ws,ws://127.0.0.1:8181/ws \
  --members 5000 --churn 200 --observers 5 --run-time 30s \
  --fanout-pid $fanout --gateway-pid "${gw[0]},${gw[1]}" --nats-pid $natspid --report-dir "$out"
