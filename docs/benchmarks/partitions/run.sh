#!/usr/bin/env bash
# docs/benchmarks.md "One stream or partitions": the JetStream publish ceiling of Herald's
# event stream as one stream and as N partitions, on one nats-server (R1) and on a 3-node
# cluster on loopback (R3). `loadtest ceiling` starts a fresh NATS with the partition mapping
# for every run, provisions the streams as fanout does and publishes to 1,000 rooms through
# JetStream with 256 publishes awaiting their ack; three runs per count.
#
# usage: docs/benchmarks/partitions/run.sh [bin dir, default target/release]
# Run from the project root after `cargo build --release --locked -p loadtest`, on a clean
# work tree (the reports carry the revision). nats-server from HERALD_NATS_SERVER (cargo xtask
# installs one in target/tools/venv/bin). Writes <topology>-<revision>/report.{md,json,html}
# and <topology>-<revision>.txt beside this script.
set -euo pipefail
bin=${1:-target/release}
here=docs/benchmarks/partitions
rev=$(git rev-parse --short HEAD)
"$bin/loadtest" ceiling --topology single --partitions 1,2,4 --runs 3 \
  --report-dir "$here/single-$rev" | tee "$here/single-$rev.txt"
"$bin/loadtest" ceiling --topology cluster --partitions 1,3,6 --runs 3 \
  --report-dir "$here/cluster-$rev" | tee "$here/cluster-$rev.txt"
