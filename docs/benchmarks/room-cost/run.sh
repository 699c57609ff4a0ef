#!/bin/bash
# docs/benchmarks.md "What a held room costs": 10,000 idle connections, each on a room of
# its own (the user:<id> pattern) and all on one room, with each --room-subscriptions mode;
# the difference per connection is what a held room costs. Three interleaved runs.
#
#   docs/benchmarks/room-cost/run.sh <dir with loadtest, herald-gateway, herald-fanout> <report dir>
#
# Run from the project root after `cargo build --release --locked --bins`.
set -euo pipefail
bin=$1
out=$2
for run in 1 2 3; do
  for mode in per-room wildcard; do
    HERALD_ROOM_SUBSCRIPTIONS=$mode ROWS="idle-own-rooms idle-shared-room" \
      docs/benchmarks/cost/run.sh "$bin" "$out/$mode/run$run"
  done
done
