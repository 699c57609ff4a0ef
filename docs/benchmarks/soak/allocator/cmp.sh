#!/bin/bash
# Run from this directory at 66e8183 (before jemalloc became the global allocator), after
# cargo build --release -p herald-gateway -p loadtest; Debian libjemalloc2 for LD_PRELOAD.
# Usage: ./cmp.sh <seconds>   (prints the two gateways' RSS in KiB every 20 s)
N=../../../../target/tools/venv/bin/nats-server
rm -rf ./js; $N -js -a 127.0.0.1 -p 14999 -sd ./js > /dev/null 2>&1 &
NP=$!
sleep 1
G=../../../../target/release/herald-gateway
$G --listen 127.0.0.1:18999 --admin-listen 127.0.0.1:18998 --nats-url nats://127.0.0.1:14999 --gateway-id glibc --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --max-connections 19000 > /dev/null 2>&1 &
P1=$!
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 $G --listen 127.0.0.1:17999 --admin-listen 127.0.0.1:17998 --nats-url nats://127.0.0.1:14999 --gateway-id jemalloc --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --max-connections 19000 > /dev/null 2>&1 &
P2=$!
until curl -sf 127.0.0.1:18998/readyz >/dev/null && curl -sf 127.0.0.1:17998/readyz >/dev/null; do sleep 0.5; done
(sleep $1) | ../../../../target/release/loadtest soak --worker --urls ws://127.0.0.1:18999/ws --connections 2000 --churn 100 --hostile 0 --no-presence > /dev/null 2>&1 &
W1=$!
(sleep $1) | ../../../../target/release/loadtest soak --worker --urls ws://127.0.0.1:17999/ws --connections 2000 --churn 100 --hostile 0 --no-presence > /dev/null 2>&1 &
W2=$!
for i in $(seq 1 $(( $1 / 20 ))); do sleep 20; echo "$((i*20)) glibc $(grep VmRSS /proc/$P1/status | awk '{print $2}') jemalloc $(grep VmRSS /proc/$P2/status | awk '{print $2}')"; done
wait $W1 $W2; sleep 25
echo "after glibc $(grep VmRSS /proc/$P1/status | awk '{print $2}') jemalloc $(grep VmRSS /proc/$P2/status | awk '{print $2}')"
kill $P1 $P2; sleep 2; kill $NP
