#!/bin/bash
# docs/benchmarks.md "Herald and Nchan, same client": the personal-room row with the two
# process settings that change Herald's per-event cost on a shared box — nats-server's
# GOMAXPROCS and the gateway's --worker-threads — three runs of each, interleaved, with
# Nchan's row in every run as the reference.
#
#   docs/benchmarks/nchan/knobs.sh <dir with loadtest, herald-gateway, herald-fanout> <report dir>
#
# SHAPE=chat5 runs the rooms-of-5 row instead (default, both settings, Nchan).
set -euo pipefail
bin=$1
out=$2
lt="$bin/loadtest"
times=(--run-time 20s --idle-time 10s)
personal=(--rooms 5001 --subscribers 1 --placement by-room --rate 5000 --gateways 1)
chat5=(--rooms 1001 --subscribers 5 --placement spread --rate 2000 --gateways 1)
run() {
  local n=$1 row=$2; shift 2
  echo "== run$n $row"
  env "$@" --report-dir "$out/run$n/$row" > "$out/run$n/$row.log" 2>&1 || { tail -5 "$out/run$n/$row.log"; exit 1; }
  grep -E "^(delivered|CPU per delivery):" "$out/run$n/$row.log" || true
}
for n in ${RUNS:-1 2 3}; do
  mkdir -p "$out/run$n"
  if [[ "${SHAPE:-}" == chat5 ]]; then
    run "$n" chat5-default "$lt" chat --target herald "${chat5[@]}" "${times[@]}"
    run "$n" chat5-both GOMAXPROCS=1 "$lt" chat --target herald "${chat5[@]}" "${times[@]}" --gateway-arg=--worker-threads=1
    run "$n" chat5-nchan "$lt" chat --target nchan "${chat5[@]}" "${times[@]}"
    continue
  fi
  run "$n" default "$lt" chat --target herald "${personal[@]}" "${times[@]}"
  run "$n" gomaxprocs1 GOMAXPROCS=1 "$lt" chat --target herald "${personal[@]}" "${times[@]}"
  run "$n" threads1 "$lt" chat --target herald "${personal[@]}" "${times[@]}" --gateway-arg=--worker-threads=1
  run "$n" both GOMAXPROCS=1 "$lt" chat --target herald "${personal[@]}" "${times[@]}" --gateway-arg=--worker-threads=1
  run "$n" nchan "$lt" chat --target nchan "${personal[@]}" "${times[@]}"
done
