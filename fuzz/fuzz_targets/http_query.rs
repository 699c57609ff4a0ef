//! HTTP query strings and cursors: whatever the bytes, parsing and the rules never panic,
//! and a cursor that parses prints back to one that parses to the same positions.
#![no_main]

use herald_proto::cursor::Cursor;
use herald_proto::{query, room, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let q = String::from_utf8_lossy(data);
    for name in ["rooms", "cursor", "name", "sid", "watch", "wait", "presence", "token"] {
        let Some(v) = query::param(&q, name) else { continue };
        let _ = text::validate_name(&v);
        let _ = text::validate_sid(&v);
        let users: Vec<String> = v.split(',').map(str::to_owned).collect();
        let _ = text::validate_users(&users);
        for r in v.split(',') {
            let _ = room::validate(r);
        }
        if let Ok(c) = Cursor::parse(&v) {
            assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
        }
    }
});
