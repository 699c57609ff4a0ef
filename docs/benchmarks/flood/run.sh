#!/usr/bin/env bash
# Gateway RSS under `loadtest flood`: nats-server, fanout and one gateway (anonymous clients on
# every room, every other limit at its default) on loopback, then 50 flooding clients from 10
# loopback addresses for the given time. Prints the gateway's RSS before and after, and the
# flood's answers.
#
# usage: docs/benchmarks/flood/run.sh <bin dir> <seconds> [loadtest flood flags...]
#   e.g. docs/benchmarks/flood/run.sh target/debug 30 --publish-room lobby
# nats-server from HERALD_NATS_SERVER (cargo xtask installs one in target/tools/venv/bin).
set -euo pipefail
bin=$1; secs=$2; shift 2
nats=${HERALD_NATS_SERVER:-target/tools/venv/bin/nats-server}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
"$nats" -js -sd "$work/js" -a 127.0.0.1 -p 14333 > /dev/null 2>&1 &
sleep 1
"$bin/herald-fanout" --nats-url nats://127.0.0.1:14333 --admin-listen 127.0.0.1:19200 > "$work/fanout.log" 2>&1 &
"$bin/herald-gateway" --nats-url nats://127.0.0.1:14333 --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19100 \
  --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' > "$work/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:19100/readyz > /dev/null && break; sleep 0.2; done
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$gw/status"; }
before=$(rss)
sources=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10,127.0.0.11
answers=$("$bin/loadtest" flood --gateway 127.0.0.1:18080 --clients 50 --duration "${secs}s" --sources "$sources" "$@")
echo "revision $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty); flood $secs s $*"
echo "gateway RSS ${before} -> $(rss) MiB"
echo "$answers"
