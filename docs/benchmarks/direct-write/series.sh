#!/bin/bash
# docs/benchmarks.md "A small room's event written by the delivering task": three interleaved
# runs of the chat rows (personal rooms, rooms of 5; Herald before, after, Nchan), the
# publishing and storage choices (after), connect + subscribe (before, after) and the one-room
# rows (before, after).
#
#   docs/benchmarks/direct-write/series.sh <before bin dir> <after bin dir> <report dir>
#
# Each bin dir holds `loadtest`, `herald-gateway` and `herald-fanout` of one build
# (`cargo build --release --locked --bins`, copied out of target/release).
set -uo pipefail
B=$1/loadtest
A=$2/loadtest
out=$3
P=(--rooms 5001 --subscribers 1 --placement by-room --rate 5000 --gateways 1 --run-time 20s --idle-time 10s)
C5=(--rooms 1001 --subscribers 5 --placement spread --rate 2000 --gateways 1 --run-time 20s --idle-time 10s)
one() { # report dir, command...
  local d=$1; shift; mkdir -p "$(dirname "$d")"
  "$@" --report-dir "$d" > "$d.log" 2>&1 || echo "FAIL $d"
  echo "== $d"; grep -E "^(delivered|CPU per)" "$d.log"
}
for n in 1 2 3; do
  r=$out/chat/run$n
  one $r/personal-before $B chat "${P[@]}"
  one $r/personal-after $A chat "${P[@]}"
  one $r/personal-nchan $A chat "${P[@]}" --target nchan
  one $r/chat5-before $B chat "${C5[@]}"
  one $r/chat5-after $A chat "${C5[@]}"
  one $r/chat5-nchan $A chat "${C5[@]}" --target nchan
  k=$out/publishing/run$n
  one $k/jetstream $A chat "${P[@]}"
  one $k/core $A chat "${P[@]}" --publish core
  one $k/batch10 $A chat "${P[@]}" --publish-batch 10
  one $k/memory $A chat "${P[@]}" --stream-storage memory
  c=$out/connect/run$n
  one $c/before $B hold --spawn-gateways 1 --connections 10000 --rooms 10000 --hold 3s
  one $c/after $A hold --spawn-gateways 1 --connections 10000 --rooms 10000 --hold 3s
  o=$out/one-room/run$n
  for v in before after; do
    L=$B; [ $v = after ] && L=$A
    for s in 1000 5000; do
      one $o/$v-${s}x50 $L bench --spawn --subscribers $s --start-rate 50 --max-rate 50 --step-time 20s --p99-limit 60s
    done
  done
done
