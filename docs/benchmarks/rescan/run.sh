#!/bin/bash
# docs/benchmarks.md "A rescan of every room": how long a gateway holding N rooms (one idle
# connection each) takes to read every room from its last seq after NATS restarts, and
# whether every room's subscription came back.
#
#   docs/benchmarks/rescan/run.sh <rooms> <output file>
#
# Run from the project root after `cargo build --release --locked --bins`; nats-server from
# `cargo xtask install` (target/tools/venv/bin). Loopback only, ports 4434/8290/9295.
set -euo pipefail
rooms=$1
out=$2
store=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; rm -rf "$store"' EXIT
nats() { target/tools/venv/bin/nats-server -js -a 127.0.0.1 -p 4434 -m 8434 -sd "$store" > /dev/null 2>&1 & nats_pid=$!; pids+=($nats_pid); }
nats
sleep 1
RUST_LOG=info target/release/herald-gateway --nats-url nats://127.0.0.1:4434 --listen 127.0.0.1:8290 \
  --admin-listen 127.0.0.1:9295 --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' \
  --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 \
  --op-rate 1000000 --max-connections 100000 > "$store/gateway.log" 2>&1 & pids+=($!)
until curl -sf 127.0.0.1:9295/readyz > /dev/null; do sleep 0.2; done
target/release/loadtest hold --gateway ws://127.0.0.1:8290/ws --connections "$rooms" --rooms "$rooms" \
  --hold 600s --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --report-dir "$store/hold" > /dev/null 2>&1 & pids+=($!)
until curl -s 127.0.0.1:9295/metrics | grep -q "^herald_gateway_room_subscriptions $rooms\$"; do sleep 0.5; done
subs() { curl -s 127.0.0.1:8434/subsz | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_subscriptions"])'; }
exec 3>&1 > "$out"
echo "revision $(git rev-parse --short HEAD) rooms $rooms"
echo "NATS subscriptions before the restart: $(subs)"
kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
restarted=$(date +%s.%N)
nats
until grep -q "Every room caught up with the stream" "$store/gateway.log"; do sleep 0.1; done
done_at=$(date +%s.%N)
echo "NATS subscriptions after: $(subs)"
grep "Every room caught up with the stream" "$store/gateway.log" | sed "s/\x1b\[[0-9;]*m//g"
echo "NATS restart to the end of the rescan: $(python3 -c "print(round($done_at - $restarted, 2))") s"
exec >&3
cat "$out"
