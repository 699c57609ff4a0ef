//! Client-frame decoding never panics, and what decodes re-encodes to the same frame.
#![no_main]

use herald_proto::frame::Payload;
use herald_proto::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::Json, Codec::MsgPack] {
        if let Ok(frame) = codec.decode_client(data) {
            if matches!(&frame.op, herald_proto::ClientOp::Publish { data: Payload::Binary(_), .. }) && codec == Codec::Json {
                continue;
            }
            if let Ok(bytes) = codec.encode_client(&frame) {
                let again = codec.decode_client(&bytes).expect("re-encoded frame decodes");
                assert_eq!(again.id, frame.id);
                assert_eq!(again.op.name(), frame.op.name());
            }
        }
    }
});
