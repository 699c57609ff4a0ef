//! Query strings of the HTTP transports (`?rooms=…&cursor=…&name=…`): parameters are found
//! and percent-decoded here, then checked by the rule for each ([`crate::room`],
//! [`crate::cursor`], [`crate::text`]).

/// The longest decoded parameter value, in bytes; longer values are cut (the rules of every
/// parameter refuse far shorter ones).
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The first value of parameter `name` in `query`, percent-decoded (`+` is a space;
/// invalid UTF-8 is replaced).
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+`; a `%` without two hex digits stays as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len().min(MAX_VALUE_LEN));
    let mut i = 0;
    while i < bytes.len() && out.len() < MAX_VALUE_LEN {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match hex(bytes[i + 1]).zip(hex(bytes[i + 2])) {
                Some((hi, lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("x%C3%A9"), "xé");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(percent_decode("%0A"), "\n", "decoded; the rules refuse it later");
    }

    #[test]
    fn finds_parameters() {
        assert_eq!(param("a=1&b=2&a=3", "a").as_deref(), Some("1"));
        assert_eq!(param("flag&b=2", "flag").as_deref(), Some(""));
        assert_eq!(param("b=2", "a"), None);
        assert_eq!(param("", "a"), None);
        let long = format!("v={}", "x".repeat(2 * MAX_VALUE_LEN));
        assert_eq!(param(&long, "v").map(|v| v.len()), Some(MAX_VALUE_LEN));
    }
}
