#!/bin/bash
# The rows of docs/benchmarks.md "Chat-shaped traffic": three runs of every row, interleaved
# (run 1 of each row, then run 2, ...), so that a slow minute of the machine lands on every row.
#
#   docs/benchmarks/chat/run.sh <dir with loadtest, herald-gateway, herald-fanout> <report dir>
#
# ROWS="personal-g1 disjoint-g2" runs only the rows named; RUNS="1" only the runs named.
# GATEWAY_ARGS="--gateway-arg=--room-subscriptions=wildcard" passes flags to every gateway.
# SHARE_CORES=1 gives each of G gateways its share of the machine's cores (--worker-threads
# nproc/G, at least 1), as G pods with that CPU limit would size their runtimes; by default
# every gateway's runtime has a thread per core (G > 1 then puts G threads on each core).
#
# Every server is spawned fresh (nats-server, fanout, gateways on free loopback ports); the
# reports name the revision of the work tree the command runs in and the processes measured.
# To measure another build with today's loadtest, copy target/release/loadtest into that
# build's target/release and run this from its work tree.
set -euo pipefail
bin=$1
out=$2
lt="$bin/loadtest"
read -r -a gw_args <<< "${GATEWAY_ARGS:-}"
# Publishing time and the idle window (NATS control traffic) of every run.
times=(--run-time 20s --idle-time 10s)
personal=(--rooms 5000 --subscribers 1 --placement by-room --rate 5000)
chat5=(--rooms 1000 --subscribers 5 --placement spread --rate 1000)
disjoint=(--rooms 10000 --subscribers 1 --placement by-room --rate 2000)
run() {
  local n=$1 row=$2
  [[ -z "${ROWS:-}" || " $ROWS " == *" $row "* ]] || return 0
  echo "== run$n $row"
  local share=()
  if [[ -n "${SHARE_CORES:-}" ]]; then
    local g=${*: -1}
    share=(--gateway-arg=--worker-threads=$(( $(nproc) / g > 0 ? $(nproc) / g : 1 )))
  fi
  "$lt" chat "${@:3}" "${times[@]}" "${gw_args[@]}" "${share[@]}" --report-dir "$out/run$n/$row" > "$out/run$n/$row.log" 2>&1 \
    || { tail -5 "$out/run$n/$row.log"; exit 1; }
  grep -E "^(delivered|latency|CPU per delivery|NATS messages to gateways per event|RSS):" "$out/run$n/$row.log" || true
}
for n in ${RUNS:-1 2 3}; do
  mkdir -p "$out/run$n"
  run "$n" personal-g1 "${personal[@]}" --gateways 1
  run "$n" personal-g2 "${personal[@]}" --gateways 2
  run "$n" personal-g4 "${personal[@]}" --gateways 4
  run "$n" chat5-g1 "${chat5[@]}" --gateways 1
  run "$n" chat5-g2 "${chat5[@]}" --gateways 2
  run "$n" chat5-g4 "${chat5[@]}" --gateways 4
  run "$n" disjoint-g2 "${disjoint[@]}" --gateways 2
done
