#!/bin/bash
# docs/benchmarks.md "Micro-benchmarks": the criterion benches, their output kept.
#
#   docs/benchmarks/micro/run.sh <output file>
set -euo pipefail
out=$1
{
  echo "# revision $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' || echo -dirty), $(date -u '+%F %T') UTC"
  cargo bench --locked -p herald-proto --bench codec -- --warm-up-time 1 --measurement-time 3 --noplot
  cargo bench --locked -p herald-gateway --bench hub -- --warm-up-time 1 --measurement-time 5 --noplot
} 2>&1 | grep -vE "^\s*(Compiling|Finished|Running|Gnuplot)" > "$out"
