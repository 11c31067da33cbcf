//! The client address of a request: what per-address limits count.
//!
//! It is the TCP peer, unless that peer is one of `--trusted-proxies`:
//! then it is the right-most address of `X-Forwarded-For` that is not a
//! trusted proxy (or, without that header, of RFC 7239 `Forwarded: for=`).
//! Everything left of it was written by the client and proves nothing;
//! only the entries that trusted proxies appended can be believed, so the
//! walk goes from the right and stops at the first address none of them
//! is. A client that talks to the gateway directly cannot pick its
//! address: its headers are not read at all.
//!
//! `X-Forwarded-For` wins when both headers are present: the common
//! proxies append to it and pass a client's `Forwarded` through untouched.
//! A proxy that writes only `Forwarded` must drop incoming
//! `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, FORWARDED};
use hyper::Request;
use ipnet::IpNet;
use seckill_ops::http::peer_addr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Parses one `--trusted-proxies` entry: a CIDR, or a single address.
pub fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not a CIDR or an IP address: {s:?}"))
}

/// The client address of `req` (its TCP peer, or what trusted proxies
/// say); `None` only for a request that came without a peer (never from
/// the serve loop).
pub(crate) fn client_addr<B>(req: &Request<B>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer_addr(req)?.ip();
    Some(resolve(peer, req.headers(), trusted))
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client address for a request from `peer` with `headers`.
fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = if headers.contains_key(X_FORWARDED_FOR) {
        values(headers, X_FORWARDED_FOR)
            .flat_map(|v| v.split(','))
            .map(parse_node)
            .collect()
    } else {
        values(headers, FORWARDED.as_str())
            .flat_map(|v| v.split(','))
            .map(|element| {
                let value = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                });
                value.and_then(parse_node)
            })
            .collect()
    };
    // `last` is the nearest hop known so far to be real: the peer, then
    // each trusted address a trusted proxy reported.
    let mut last = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip, trusted) => last = ip,
            Some(ip) => return ip,
            // A trusted proxy reported something that is no address
            // (`unknown`, an obfuscated name): the nearest real hop is all
            // that is known.
            None => return last,
        }
    }
    last
}

/// Every value of header `name`, as text (a value that is not is skipped).
fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

/// One node of either header: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, optionally in double quotes.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| parse_trusted_proxy(s).unwrap())
            .collect()
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.2"),
        ]);
        assert_eq!(resolve(ip("192.0.2.1"), &h, &[]), ip("192.0.2.1"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
    }

    #[test]
    fn the_right_most_untrusted_hop_counts() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.7"]);
        let peer = ip("10.1.1.1");
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 192.0.2.7, 10.9.9.9")]);
        assert_eq!(resolve(peer, &h, &trusted), ip("2.2.2.2"));
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "3.3.3.3, 10.2.2.2"),
        ]);
        assert_eq!(resolve(peer, &h, &trusted), ip("3.3.3.3"));
        // Only trusted hops: the farthest of them.
        let h = headers(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(resolve(peer, &h, &trusted), ip("10.3.3.3"));
        // No header: the proxy itself.
        assert_eq!(resolve(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn garbage_stops_the_walk_at_the_nearest_real_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.1.1.1");
        let h = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.2.2.2")]);
        assert_eq!(resolve(peer, &h, &trusted), ip("10.2.2.2"));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(resolve(peer, &h, &trusted), peer);
    }

    #[test]
    fn forwarded_is_read_without_x_forwarded_for() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.1.1.1");
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1;proto=https, For=\"[2001:db8::17]:4711\";by=10.0.0.1, for=10.4.4.4",
        )]);
        assert_eq!(resolve(peer, &h, &trusted), ip("2001:db8::17"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.4.4.4")]);
        assert_eq!(resolve(peer, &h, &trusted), ip("10.4.4.4"));
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(resolve(peer, &h, &trusted), ip("2.2.2.2"), "XFF wins");
    }

    #[test]
    fn nodes_and_proxy_entries_parse() {
        assert_eq!(parse_node(" 1.2.3.4:80 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("unknown"), None);
        assert!(parse_trusted_proxy("10.0.0.0/8").is_ok());
        assert!(parse_trusted_proxy("::1").is_ok());
        assert!(parse_trusted_proxy("proxy.internal").is_err());
        // A mapped IPv4 peer is matched against IPv4 networks.
        let trusted = nets(&["127.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(resolve(ip("::ffff:127.0.0.2"), &h, &trusted), ip("1.1.1.1"));
    }
}
