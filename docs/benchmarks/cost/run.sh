#!/bin/bash
# The rows of docs/benchmarks.md "The cost of a connection and of a room", one run each.
#
#   docs/benchmarks/cost/run.sh <dir with loadtest, herald-gateway, herald-fanout> <report dir>
#
# ROWS="idle-own-rooms idle-shared-room" runs only the rows named.
#
# Every server is spawned fresh (nats-server, fanout, gateways on free loopback ports); the
# reports name the revision of the work tree the command runs in and the processes measured.
# To measure another build with today's loadtest, copy target/release/loadtest into that
# build's target/release and run this from its work tree.
set -euo pipefail
bin=$1
out=$2
lt="$bin/loadtest"
run() { [[ -z "${ROWS:-}" || " $ROWS " == *" $1 "* ]] || return 0; echo "== $1"; "$lt" "${@:2}" --report-dir "$out/$1" > "$out/$1.log" 2>&1 || { tail -5 "$out/$1.log"; exit 1; }; grep -E "^(connect rate|server RSS|server CPU|[0-9]+ deliveries|no step)" "$out/$1.log" || true; }
mkdir -p "$out"
run idle-own-rooms hold --spawn-gateways 1 --connections 10000 --rooms 10000 --hold 10s
run idle-shared-room hold --spawn-gateways 1 --connections 10000 --rooms 1 --hold 10s
run fanout-1000x50 bench --spawn --subscribers 1000 --start-rate 50 --max-rate 50 --step-time 20s --p99-limit 60s
run fanout-5000x10 bench --spawn --subscribers 5000 --start-rate 10 --max-rate 10 --step-time 20s --p99-limit 60s
run fanout-5000x50 bench --spawn --subscribers 5000 --start-rate 50 --max-rate 50 --step-time 20s --p99-limit 60s
run fanout-5000x200 bench --spawn --subscribers 5000 --start-rate 200 --max-rate 200 --step-time 20s --p99-limit 60s
