#!/usr/bin/env python3
# Sums up `heaptrack_print --print-leaks 1` output: each call site still holding memory when
# the gateway was killed, with its first frames in Herald, async-nats, tokio sync or hyper.
import re,sys
# Summarize heaptrack_print --print-leaks output: each call-site block's size, count and
# the first frames in herald/async-nats/tokio-sync/fastwebsockets/hyper code.
txt=open(sys.argv[1]).read().split('\n')
out=[];cur=None
for l in txt:
    m=re.match(r"^()([0-9.]+)([KMG]?)B? leaked over (\d+) calls from(:?)",l)
    if m:
        if cur: out.append(cur)
        mult={'':1,'K':1e3,'M':1e6,'G':1e9}[m.group(3)]
        cur=[len(m.group(5)),float(m.group(2))*mult,int(m.group(4)),[]]
        continue
    if cur is not None:
        m=re.search(r'at ((gateway|service|proto)/src/[^ ]+|.*(async-nats|fastwebsockets|hyper-1|tokio-1[^/]*/src/sync)[^ ]*)',l)
        if m and len(cur[3])<3:
            f=m.group(1); f=re.sub(r'.*index.crates.io-[^/]+/','',f)
            if f not in cur[3]: cur[3].append(f)
if cur: out.append(cur)
for ind,size,n,frames in out:
    if ind>0 and size>100e3:
        print(f"{size/1e6:7.2f} MB {n:7d} calls {size/max(n,1):8.0f} B/call  {' <- '.join(frames)}")
