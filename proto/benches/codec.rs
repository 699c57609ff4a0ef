//! Encode/decode costs of the two codecs. Run: `cargo bench -p herald-proto`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald_proto::frame::EventRef;
use herald_proto::Codec;
use std::hint::black_box;

fn event(payload: &[u8]) -> EventRef<'_> {
    EventRef {
        room: "lobby",
        seq: 123_456,
        prev: 123_455,
        ts: 1_732_312_345_123,
        kind: Some("message"),
        from: Some("alice"),
        payload,
    }
}

fn codecs(c: &mut Criterion) {
    let payload = br#"{"text":"hello, world","user":{"id":42,"name":"Alice"},"tags":["a","b"]}"#;
    let mut g = c.benchmark_group("encode_event");
    g.throughput(Throughput::Elements(1));
    for codec in [Codec::Json, Codec::MsgPack] {
        g.bench_function(format!("{codec:?}"), |b| {
            b.iter(|| codec.encode_event(black_box(event(payload))))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decode_client");
    g.throughput(Throughput::Elements(1));
    let publish = br#"{"op":"publish","id":7,"room":"lobby","type":"message","data":{"text":"hello, world"}}"#;
    g.bench_function("Json/publish", |b| {
        b.iter(|| Codec::Json.decode_client(black_box(publish)).unwrap())
    });
    let frame = Codec::Json.decode_client(publish).unwrap();
    let mp = Codec::MsgPack.encode_client(&frame).unwrap();
    g.bench_function("MsgPack/publish", |b| {
        b.iter(|| Codec::MsgPack.decode_client(black_box(&mp)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
