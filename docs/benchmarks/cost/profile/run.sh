#!/bin/bash
# Heap of one gateway holding 2,000 idle WebSocket connections, each on its own room
# (`run.sh 2000 own`) or all on one (`run.sh 1 shared`): heaptrack records every allocation,
# the gateway is killed while the connections are held, and what is still allocated is the
# cost of those connections and rooms.
#
# Run from the project root. heaptrack (Debian) hooks malloc, so the gateway is built with
# the system allocator:
#   cargo build --release --locked -p herald-gateway --features system-allocator
#   docs/benchmarks/cost/profile/run.sh 2000 own
#   heaptrack_print -f own.zst --print-leaks 1 --print-peaks 0 --print-allocators 0 \
#     --print-temporary 0 -n 14 > own.txt; python3 docs/benchmarks/cost/profile/heap-summary.py own.txt
set -euo pipefail
rooms=$1
tag=$2
nats=${HERALD_NATS_SERVER:-target/tools/venv/bin/nats-server}
store=$(mktemp -d)
"$nats" -js -a 127.0.0.1 -p 14999 -sd "$store" > /dev/null 2>&1 & np=$!
sleep 1
heaptrack -o "./$tag" target/release/herald-gateway --listen 127.0.0.1:18999 --admin-listen 127.0.0.1:18998 \
  --nats-url nats://127.0.0.1:14999 --gateway-id prof --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --max-connections 19000 > "./$tag.gw.log" 2>&1 &
until curl -sf 127.0.0.1:18998/readyz > /dev/null; do sleep 0.5; done
target/release/loadtest hold --gateway ws://127.0.0.1:18999/ws --connections 2000 --rooms "$rooms" --hold 10s \
  --report-dir "./$tag-report" > "./$tag.hold.log" 2>&1 & hp=$!
sleep 8
grep VmRSS "/proc/$(pgrep -x herald-gateway)/status"
pkill -9 -x herald-gateway
wait $hp || true
kill $np
rm -rf "$store"
