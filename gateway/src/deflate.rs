//! permessage-deflate (RFC 7692) on `/ws`: the offer a client makes and the answer, and the
//! compression of one message.
//!
//! Herald always answers with `server_no_context_takeover` and `client_no_context_takeover`:
//! each message is compressed on its own, so an event's compressed bytes depend only on the
//! event, are made once, and are shared by every subscriber that takes compressed frames (as
//! its plain bytes are); and a connection keeps no compression state between messages (a
//! deflate window is 32 KiB each way). A client that asks the server for a window smaller
//! than the usual 15 bits gets its events uncompressed, which the extension allows: their
//! shared bytes were made with the usual window.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// What Herald answers to an offer it accepts.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail a sync flush ends with, which the extension leaves out of each message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compression level of events (zlib's scale): compressing happens once per event, not
/// per delivery.
const LEVEL: u32 = 6;

/// An accepted offer: the answer to send, and whether events may go compressed (the server
/// window the client allows is the usual 15 bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agreed {
    pub answer: String,
    pub compress_events: bool,
}

/// The first acceptable permessage-deflate offer among the `Sec-WebSocket-Extensions`
/// values, if any; offers with unknown, repeated or malformed parameters are declined (RFC
/// 7692 §5), as are other extensions.
pub(crate) fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| accept(offer.trim()))
}

/// One offer: `permessage-deflate` and its parameters, `;`-separated.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_window = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_window = Some(window_bits(v)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    // An offer that limits the server's window is accepted by saying the limit back (RFC
    // 7692 §7.1.2.1); under 15 bits, events go plain, which keeps within any limit.
    Some(Agreed {
        answer: match server_window {
            Some(bits) => format!("{ANSWER}; server_max_window_bits={bits}"),
            None => ANSWER.to_owned(),
        },
        compress_events: server_window.is_none_or(|bits| bits == 15),
    })
}

/// A window size parameter: 8 to 15, in decimal without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// A compressor per thread, reset after each message: its state (about 256 KiB) is not
    /// allocated per event.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// `payload` compressed as one message (raw deflate, no context, the sync flush's tail left
/// out), or `None` when that would not be smaller.
pub(crate) fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let done = c.total_in() as usize;
            c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync).ok()?;
            // Flushed once all input is in and the compressor left output room unused.
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() > payload.len() + 64 {
                return None;
            }
            out.reserve(out.capacity().max(64));
        }
        let body = out.len().checked_sub(TAIL.len())?;
        if out[body..] != TAIL || body >= payload.len() {
            return None;
        }
        out.truncate(body);
        Some(out)
    })
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the limit.
    TooBig,
    /// It is not a deflate stream.
    Corrupt,
}

/// A compressed message inflated, at most `max` bytes of it: a message that would inflate to
/// more stops there (a small message cannot make the gateway allocate more than `max`).
pub(crate) fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut input = Vec::with_capacity(data.len() + TAIL.len());
    input.extend_from_slice(data);
    input.extend_from_slice(&TAIL);
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(3).max(64).min(max.saturating_add(1)));
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            out.reserve_exact((max + 1 - out.len()).min(out.capacity().max(64)));
        }
        let before = (d.total_in(), out.len());
        let read = d.total_in() as usize;
        let status = d
            .decompress_vec(&input[read..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        let room = out.len() < out.capacity();
        match status {
            // A final block may end the message; nothing of the message may follow it.
            Status::StreamEnd => {
                return if d.total_in() as usize >= data.len() {
                    Ok(out)
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            _ if d.total_in() as usize == input.len() && room => return Ok(out),
            _ if (d.total_in(), out.len()) == before && room => return Err(InflateError::Corrupt),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers() {
        let ok = |v: &str| negotiate([v]);
        let agreed = Some(Agreed {
            answer: ANSWER.to_owned(),
            compress_events: true,
        });
        assert_eq!(ok("permessage-deflate"), agreed);
        assert_eq!(
            ok("permessage-deflate; client_max_window_bits"),
            agreed,
            "what browsers send"
        );
        assert_eq!(
            ok("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10"),
            agreed
        );
        assert_eq!(
            ok("Permessage-Deflate; Server_Max_Window_Bits=15"),
            Some(Agreed {
                answer: format!("{ANSWER}; server_max_window_bits=15"),
                compress_events: true,
            })
        );
        assert_eq!(
            ok("permessage-deflate; server_max_window_bits=9"),
            Some(Agreed {
                answer: format!("{ANSWER}; server_max_window_bits=9"),
                compress_events: false,
            }),
            "a smaller window: accepted and said back, events go uncompressed"
        );
        assert_eq!(
            ok("permessage-deflate; server_max_window_bits=\"8\"").map(|a| a.compress_events),
            Some(false)
        );
        // The first acceptable offer, across values and commas.
        assert_eq!(
            negotiate(["x-webkit-deflate-frame", "permessage-deflate; foo, permessage-deflate"]),
            agreed
        );
        for bad in [
            "",
            "deflate",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits=99999999999999999999",
        ] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_compressed_message_inflates_to_itself_and_alone() {
        let event =
            br#"{"t":"event","room":"chat:1","seq":1,"data":{"text":"hello hello hello hello hello"}}"#.repeat(4);
        let z = compress(&event).expect("repetitive JSON compresses");
        assert!(z.len() < event.len() / 2, "{} of {}", z.len(), event.len());
        assert_eq!(inflate(&z, 1 << 20).unwrap(), event);
        // No context: the same bytes again, whatever came before.
        assert_eq!(compress(&event).unwrap(), z);
        assert!(compress(b"x").is_none(), "one byte does not get smaller");
        assert_eq!(
            inflate(&compress(&vec![7u8; 100_000]).unwrap(), 100_000).unwrap().len(),
            100_000
        );
    }

    #[test]
    fn inflating_stops_at_the_limit_and_refuses_garbage() {
        // A bomb: 1 MiB of zeros compresses to about a kilobyte.
        let bomb = compress(&vec![0u8; 1 << 20]).unwrap();
        assert!(bomb.len() < 2048, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooBig));
        assert_eq!(inflate(&bomb, (1 << 20) - 1), Err(InflateError::TooBig));
        assert_eq!(inflate(&bomb, 1 << 20).map(|v| v.len()), Ok(1 << 20));
        assert_eq!(inflate(&[0xff; 16], 1 << 20), Err(InflateError::Corrupt));
        assert_eq!(inflate(&[], 10), Ok(Vec::new()), "an empty message");
        // A final block (BFINAL) with more after it.
        let mut fin = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(256);
        fin.compress_vec(b"abc", &mut out, FlushCompress::Finish).unwrap();
        assert_eq!(inflate(&out, 100), Ok(b"abc".to_vec()), "a final block alone");
        out.extend_from_slice(&[1, 2, 3]);
        assert_eq!(inflate(&out, 100), Err(InflateError::Corrupt));
    }
}
