//! Who is on the other end of a request: the client's address, read from the peer address
//! or, when the peer is a trusted proxy (`--trusted-proxies`), from the `X-Forwarded-For` /
//! `Forwarded` header that proxy wrote. Anonymous clients are counted by this address, so
//! a client cannot reset its limits by naming itself anew.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

/// The address a client is counted by: IPv4 as is, IPv6 by its /64 (one subscriber line
/// gets a whole /64; counting single addresses would give it 2^64 identities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientAddr(IpAddr);

// === impl ClientAddr ===

impl ClientAddr {
    /// The client behind `peer`: the peer itself unless it is one of `trusted`, then the
    /// last address in the forwarding headers that is not a trusted proxy (the headers'
    /// earlier entries are the client's own word and may be forged).
    pub(crate) fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
        if !is_trusted(&peer) {
            return Self::of(peer);
        }
        let chain = forwarded_for(headers);
        let client = chain.iter().rev().find(|ip| !is_trusted(ip)).or(chain.first());
        Self::of(client.copied().unwrap_or(peer))
    }

    pub(crate) fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
            }
            v4 => Self(v4),
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// An IPv4 address that arrived mapped into IPv6 is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of `X-Forwarded-For` (every header line, in order), or, when the request
/// has no `X-Forwarded-For` line at all, of the `for=` parameters of `Forwarded` (RFC 7239).
/// Entries that are not addresses (`unknown`, obfuscated names, bytes that are not text)
/// end the chain there: nothing before them can be attributed. Values are split as bytes: a
/// line the client started with bytes that are not text still ends in the entry its proxy
/// appended.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let xff = headers.get_all("x-forwarded-for");
    let entries: Vec<&[u8]> = if xff.iter().next().is_some() {
        xff.iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).collect()
    } else {
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|element| {
                element
                    .split(|&b| b == b';')
                    .find_map(|pair| {
                        let eq = pair.iter().position(|&b| b == b'=')?;
                        let key = std::str::from_utf8(&pair[..eq]).ok()?;
                        key.trim().eq_ignore_ascii_case("for").then_some(&pair[eq + 1..])
                    })
                    .unwrap_or(b"")
            })
            .collect()
    };
    let mut chain = Vec::with_capacity(entries.len());
    for entry in entries {
        match std::str::from_utf8(entry).ok().and_then(parse_node) {
            Some(ip) => chain.push(ip),
            None => chain.clear(),
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, _port) = node.rsplit_once(':')?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn resolve(peer: &str, h: &[(&str, &str)], trusted: &[&str]) -> String {
        ClientAddr::resolve(peer.parse().unwrap(), &headers(h), &nets(trusted)).to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        assert_eq!(
            resolve("203.0.113.7", &[("x-forwarded-for", "1.1.1.1")], &[]),
            "203.0.113.7"
        );
        assert_eq!(
            resolve("203.0.113.7", &[("x-forwarded-for", "1.1.1.1")], &["10.0.0.0/8"]),
            "203.0.113.7"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_last_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8", "127.0.0.1/32"];
        // The client forged the first entry; the proxy appended the real peer.
        let h = [("x-forwarded-for", "6.6.6.6, 198.51.100.9")];
        assert_eq!(resolve("10.1.2.3", &h, &trusted), "198.51.100.9");
        // Two proxies: the inner one's entry is skipped.
        let h = [("x-forwarded-for", "198.51.100.9, 10.9.9.9")];
        assert_eq!(resolve("127.0.0.1", &h, &trusted), "198.51.100.9");
        // Several header lines are one list.
        let h = [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9")];
        assert_eq!(resolve("10.1.2.3", &h, &trusted), "198.51.100.9");
        // No header: the proxy itself.
        assert_eq!(resolve("10.1.2.3", &[], &trusted), "10.1.2.3");
        // Garbage ends the chain; with nothing attributable, the proxy.
        let h = [("x-forwarded-for", "198.51.100.9, not-an-ip")];
        assert_eq!(resolve("10.1.2.3", &h, &trusted), "10.1.2.3");
    }

    #[test]
    fn bytes_that_are_not_text_do_not_hide_the_proxys_entry() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client's line starts with a byte nginx passes on; nginx appended the real peer,
        // and the client's own `Forwarded` must not stand in for it.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\x80, 198.51.100.9").unwrap(),
        );
        h.append("forwarded", "for=203.0.113.77".parse().unwrap());
        let peer = "10.0.0.1".parse().unwrap();
        assert_eq!(ClientAddr::resolve(peer, &h, &trusted).to_string(), "198.51.100.9");
        // `Forwarded` counts only without any `X-Forwarded-For` line.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", http::HeaderValue::from_bytes(b"\x80").unwrap());
        h.append("forwarded", "for=203.0.113.77".parse().unwrap());
        assert_eq!(ClientAddr::resolve(peer, &h, &trusted).to_string(), "10.0.0.1");
    }

    #[test]
    fn forwarded_header_and_ipv6() {
        let trusted = ["10.0.0.0/8"];
        let h = [(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe:1:2::17]:4711""#,
        )];
        assert_eq!(resolve("10.0.0.1", &h, &trusted), "2001:db8:cafe:1::/64");
        let h = [("forwarded", "for=192.0.2.60:8080")];
        assert_eq!(resolve("10.0.0.1", &h, &trusted), "192.0.2.60");
        // Every address of one /64 is one client; a mapped IPv4 address is that address.
        assert_eq!(resolve("2001:db8:1:2:ffff::1", &[], &[]), "2001:db8:1:2::/64");
        assert_eq!(resolve("::ffff:192.0.2.1", &[], &[]), "192.0.2.1");
    }
}
