#!/bin/bash
# Compression benchmark series: interleaved runs, release binaries.
set -u
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-target/loadtest/compression}
mkdir -p $out
LT=target/release/loadtest
run() { # name subs rate payload bytes extra...
  local name=$1 subs=$2 rate=$3 payload=$4 bytes=$5; shift 5
  timeout 180 $LT bench --spawn --subscribers $subs --start-rate $rate --max-rate $rate --step-time 10s \
    --payload $payload --payload-bytes $bytes "$@" --report-dir $out/$name > $out/$name.log 2>&1
  echo "$name: $(grep '^rate' $out/$name.log | tail -1)"
}
for i in 1 2 3; do
  for payload in chat:1024 ticker:4096; do
    p=${payload%%:*}; b=${payload##*:}
    run 5000-$p-off-$i 5000 10 $p $b
    run 5000-$p-on-$i 5000 10 $p $b --compression
    run 5000-$p-per-$i 5000 10 $p $b --compression --per-connection
  done
  run 1000-chat-off-$i 1000 50 chat 1024
  run 1000-chat-on-$i 1000 50 chat 1024 --compression
  run 1000-chat-per-$i 1000 50 chat 1024 --compression --per-connection
done
