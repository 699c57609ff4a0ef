#!/usr/bin/env python3
"""Per process of a sample.sh file: the seconds it was busy (>= 5 CPU ticks), the CPU ticks
(1/100 s) and the voluntary and involuntary context switches (all threads) over them.

    python3 docs/benchmarks/chat/wakeups/summarize.py <sample file>
"""
import sys, collections
rows=[l.split() for l in open(sys.argv[1])]
by=collections.defaultdict(list)
for t,p,c,ut,st,v,n in rows: by[(p,c)].append((float(t),int(ut)+int(st),int(v),int(n)))
# window: per process, the seconds where the summed gateway CPU > threshold
for (p,c),s in by.items():
    d=[(s[i][0],s[i][1]-s[i-1][1],s[i][2]-s[i-1][2],s[i][3]-s[i-1][3]) for i in range(1,len(s))]
    busy=[x for x in d if x[1]>=5] 
    cpu=sum(x[1] for x in busy); vc=sum(x[2] for x in busy); nc=sum(x[3] for x in busy)
    print(c,p,'busy s',len(busy),'cpu ticks',cpu,'vcsw',vc,'nvcsw',nc, 'vcsw/s %.0f'%(vc/max(1,len(busy))), 'ticks/s %.1f'%(cpu/max(1,len(busy))))
