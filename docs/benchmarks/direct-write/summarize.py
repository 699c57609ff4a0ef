#!/usr/bin/env python3
"""Figures of docs/benchmarks.md "A small room's event written by the delivering task" from the raw reports."""
import re,os,json,collections,glob
import sys
base=sys.argv[1] if len(sys.argv) > 1 else 'docs/benchmarks/direct-write'
def rep(d):
    p=d+'/report.json'
    return json.load(open(p)) if os.path.exists(p) else None
def proc(j,name):
    for p in j['processes']:
        if p['process']==name: return p['cpu_us_per_delivery']
rows=collections.defaultdict(list)
for n in (1,2,3):
    for name in ['personal-before','personal-after','personal-nchan','chat5-before','chat5-after','chat5-nchan']:
        j=rep(f'{base}/chat/run{n}/{name}')
        if j: rows[name].append((n,j))
    for name in ['jetstream','core','batch10','memory']:
        j=rep(f'{base}/publishing/run{n}/{name}')
        if j: rows['pub-'+name].append((n,j))
def rng(v,f='%.1f'):
    v=[x for x in v if x is not None]
    return (f+'–'+f)%(min(v),max(v)) if v else '-'
for k,v in rows.items():
    js=[j for _,j in v]
    ws=[j['stack_cpu_us_per_delivery'] for j in js]
    print(f"{k:18} n={len(js)} whole {rng(ws)} gw {rng([proc(j,'gateway 0') for j in js])} nats {rng([proc(j,'nats-server') for j in js])} p50 {rng([j['p50_ms'] for j in js])} p99 {rng([j['p99_ms'] for j in js])} ack_p50 {rng([j['published']['ack_p50_ms'] for j in js],'%.2f')} ack_p99 {rng([j['published']['ack_p99_ms'] for j in js],'%.2f')} lost {[ (j['lost'],j['duplicates'],j['out_of_order']) for j in js]} rev {set(j['revision'] for j in js)}")
print('ratios (run by run):')
for shape in ['personal','chat5']:
    d={k:dict((n,j['stack_cpu_us_per_delivery']) for n,j in rows[f'{shape}-{k}']) for k in ['before','after','nchan']}
    for n in (1,2,3):
        if all(n in d[k] for k in d):
            print(shape,n,'before/nchan %.2f after/nchan %.2f after/before %.2f'%(d['before'][n]/d['nchan'][n],d['after'][n]/d['nchan'][n],d['after'][n]/d['before'][n]))
d={k:dict((n,j['stack_cpu_us_per_delivery']) for n,j in rows['pub-'+k]) for k in ['jetstream','core','batch10','memory']}
for n in (1,2,3):
    if n in d['jetstream']:
        print('pub',n,' '.join('%s %.2f'%(k,d[k][n]/d['jetstream'][n]) for k in ['core','batch10','memory'] if n in d[k]))
for f in sorted(glob.glob(base+'/connect/run*/*.log')):
    t=open(f).read()
    m=re.search(r'server CPU while connecting: ([\d.]+) µs per connection \(gateway ([\d.]+)',t); r=re.search(r'connect rate: (\d+)/s',t)
    print(f.replace(base,''), m and m.groups(), r and r.group(1))
for f in sorted(glob.glob(base+'/one-room/run*/*.log')):
    t=open(f).read()
    m=re.search(r'p50 ([\d.]+) ms, p99 ([\d.]+) ms, (\d+) of (\d+) delivered.*\(([\d.]+) s per million; gateway ([\d.]+)\)',t)
    print(f.replace(base,''), m and m.groups())
