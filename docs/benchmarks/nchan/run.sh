#!/bin/bash
# Herald against Nchan (nginx with the nchan module) on chat-shaped traffic, with the same
# client (`loadtest chat`, `--target herald` or `--target nchan`): three runs of every row,
# interleaved (run 1 of each row, then run 2, ...), so that a slow minute of the machine lands
# on every row and both targets.
#
#   docs/benchmarks/nchan/run.sh <dir with loadtest, herald-gateway, herald-fanout> <report dir>
#
# ROWS="chat5-nchan personal-herald" runs only the rows named; RUNS="1" only the runs named.
# NGINX_WORKERS=N gives nginx N workers (one per core by default).
#
# Herald's publisher sends each event through JetStream, Nchan's POSTs it to /pub/<room>: one
# publish per event, as a backend without batching sends them. Every server is spawned fresh
# on free loopback ports (nginx from $HERALD_NGINX or PATH, its config written into the row's
# report dir); the reports name the revision and the processes measured.
set -euo pipefail
bin=$1
out=$2
lt="$bin/loadtest"
# Publishing time and the idle window of every run.
times=(--run-time 20s --idle-time 10s)
chat5=(--rooms 1001 --subscribers 5 --placement spread --rate 2000 --gateways 1)
personal=(--rooms 5001 --subscribers 1 --placement by-room --rate 5000 --gateways 1)
nginx=()
[[ -n "${NGINX_WORKERS:-}" ]] && nginx=(--nginx-workers "$NGINX_WORKERS")
run() {
  local n=$1 row=$2 target=$3
  [[ -z "${ROWS:-}" || " $ROWS " == *" $row "* ]] || return 0
  echo "== run$n $row"
  local extra=()
  [[ $target == nchan ]] && extra=("${nginx[@]}")
  "$lt" chat --target "$target" "${@:4}" "${times[@]}" "${extra[@]}" --report-dir "$out/run$n/$row" \
    > "$out/run$n/$row.log" 2>&1 || { tail -5 "$out/run$n/$row.log"; exit 1; }
  grep -E "^(published|delivered|latency|CPU per delivery|RSS):" "$out/run$n/$row.log" || true
}
for n in ${RUNS:-1 2 3}; do
  mkdir -p "$out/run$n"
  run "$n" chat5-herald herald "${chat5[@]}"
  run "$n" chat5-nchan nchan "${chat5[@]}"
  run "$n" personal-herald herald "${personal[@]}"
  run "$n" personal-nchan nchan "${personal[@]}"
done
