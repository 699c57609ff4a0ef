#!/bin/bash
# Run from this directory at 66e8183 (Debian heaptrack): ./heaptrack-run.sh 30 short; ./heaptrack-run.sh 150 long
# Churn only (2,000 connections, 100 reconnects/s), then every client leaves, then kill -9:
# heaptrack then reports the heap still live after everyone left.
# usage: run.sh <churn seconds> <tag>
N=../../../../target/tools/venv/bin/nats-server
rm -rf ./js; $N -js -a 127.0.0.1 -p 14999 -sd ./js > /dev/null 2>&1 &
NP=$!
sleep 1
heaptrack -o ./$2 ../../../../target/release/herald-gateway --listen 127.0.0.1:18999 --admin-listen 127.0.0.1:18998 --nats-url nats://127.0.0.1:14999 --gateway-id prof --allow-anonymous --anonymous-rooms '*' --anonymous-publish '*' --max-anonymous-connections-per-address 1000000 --max-anonymous-memberships-per-address 100000000 --op-rate 1000000 --max-connections 19000 > ./$2.gw.log 2>&1 &
until curl -sf 127.0.0.1:18998/readyz >/dev/null; do sleep 0.5; done
(sleep $1) | ../../../../target/release/loadtest soak --worker --urls ws://127.0.0.1:18999/ws --connections 2000 --churn 100 --hostile 0 --no-presence > ./$2.worker.log 2>&1
sleep 20
curl -s 127.0.0.1:18998/metrics | grep -E "^herald_gateway_(connections|room_sub|nats_sub)" 
grep VmRSS /proc/$(pgrep -f release/herald-gateway)/status
pkill -9 -f release/herald-gateway
sleep 3
kill $NP
