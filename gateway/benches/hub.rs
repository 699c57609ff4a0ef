//! Hub fan-out: one event to 10,000 local subscribers (encode once, queue to each).
//! Run: `cargo bench -p herald-gateway --bench hub`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald_gateway::bench::{Format, Outbound, StoredEvent, Table};
use herald_proto::Codec;

const SUBSCRIBERS: usize = 10_000;

fn fan_out(c: &mut Criterion) {
    let payload = Bytes::from_static(br#"{"text":"hello, world","user":{"id":42,"name":"Alice"}}"#);
    for (name, codecs) in [
        ("json", &[Codec::Json][..]),
        ("json+msgpack", &[Codec::Json, Codec::MsgPack][..]),
    ] {
        let hub = Table::default();
        let outs: Vec<Arc<Outbound>> = (0..SUBSCRIBERS).map(|_| Outbound::new(usize::MAX / 2)).collect();
        for (i, out) in outs.iter().enumerate() {
            hub.join(
                "lobby",
                i as u64,
                Arc::clone(out),
                Format::WebSocket(codecs[i % codecs.len()], None),
            );
            hub.activate("lobby", i as u64, &[], Some(0), |_| Bytes::new());
        }
        let mut scratch = Vec::new();
        for out in &outs {
            out.take(&mut scratch);
        }
        let mut seq = 0;
        let mut g = c.benchmark_group("hub_fan_out_10k");
        g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                seq += 1;
                let ev = Arc::new(StoredEvent {
                    room: Arc::from("lobby"),
                    seq,
                    prev: seq - 1,
                    ts: 1_732_312_345_123,
                    stored_us: 0,
                    kind: Some("message".into()),
                    from: Some("alice".into()),
                    payload: payload.clone(),
                });
                assert_eq!(hub.deliver(&ev), SUBSCRIBERS);
                for out in &outs {
                    scratch.clear();
                    out.take(&mut scratch);
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
