#!/bin/bash
# docs/benchmarks.md "250,000 WebSocket connections": 14 gateways (17,858 connections each,
# under the 20,000-file limit), 14 harness workers, 24 loopback source addresses (about
# 10,400 connections each: a socket bound to a source address before connecting gets a
# port from about half the ephemeral range, ~14,000 here), 10 rooms, an event to every room
# every 5 s while holding for 60 s.
#
#   docs/benchmarks/hold-250k/run.sh <report dir> [first source octet, default 61]
#
# Run from the project root after `cargo build --release --locked --bins`.
set -euo pipefail
out=$1
first=${2:-61}
sources=$(seq -s, -f "127.0.0.%g" "$first" $((first + 23)))
target/release/loadtest hold --spawn-gateways 14 --connections 250000 --rooms 10 --broadcast-rate 0.2 \
  --hold 60s --concurrency 128 --sources "$sources" --report-dir "$out"
