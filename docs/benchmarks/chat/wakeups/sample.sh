#!/bin/bash
# sample.sh <out>: every second, per process of nats-server and herald-gateway: time, pid,
# name, utime and stime (ticks), voluntary and involuntary context switches (all threads).
# Run it beside a `loadtest chat` run; stop it with kill after.
out=$1; : > "$out"
while true; do
  t=$(date +%s.%N)
  for p in $(pgrep -f 'nats-server|herald-gateway' ); do
    [[ -r /proc/$p/stat ]] || continue
    c=$(cat /proc/$p/comm 2>/dev/null) || continue
    read -r ut st < <(awk '{print $14, $15}' /proc/$p/stat 2>/dev/null) || continue
    v=$(cat /proc/$p/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{s+=$2} END{print s}')
    n=$(cat /proc/$p/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt/{s+=$2} END{print s}')
    echo "$t $p $c $ut $st $v $n" >> "$out"
  done
  sleep 1
done
