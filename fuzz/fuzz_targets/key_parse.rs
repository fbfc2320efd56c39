//! `switchyard::key`: `TrustedProxies` ranges (IP / CIDR parsing and
//! membership) against a mask computed here, `KeyBy::client_ip` against a
//! reference walk of `X-Forwarded-For` / `Forwarded` (RFC 7239, quoted
//! strings respected) written from its documentation, and
//! `KeyBy::cookie` against an RFC 6265 reading.
#![no_main]

mod common;

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Request, header};
use libfuzzer_sys::fuzz_target;
use switchyard::key::{KeyBy, TrustedProxies};

/// A range as the docs describe it: an address, or `address/len` with
/// `len` at most 32 (IPv4) or 128 (IPv6), surrounding spaces allowed.
fn range(text: &str) -> Option<(IpAddr, u8)> {
    let t = text.trim();
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u32>().ok()?
        }
        Some(l) => l.parse::<u8>().ok()?.into(), // what std accepts (`+8`)
        None => max,
    };
    (len <= max).then_some((addr, len as u8))
}

fn in_range(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let ip = ip.to_canonical();
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    // An IPv4-mapped range of at least 96 bits is the IPv4 range.
    let (net, len) = match net {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && len >= 96 => {
            (net.to_canonical(), len - 96)
        }
        _ => (net, len),
    };
    if ip.is_ipv4() != net.is_ipv4() {
        return false;
    }
    let ((a, width), (b, _)) = (bits(ip), bits(net));
    let shift = width - u32::from(len);
    shift == width || a >> shift == b >> shift
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The `for=` node of an RFC 7239 element (quoted strings respected);
/// `None` for `unknown`, obfuscated nodes and elements without one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let pairs = common::split_quoted(element.trim(), b';')?;
    let node = pairs.iter().find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
    })?;
    let node = common::token_or_quoted(node).unwrap_or_else(|| node.trim_matches('"').to_owned());
    let bare = node
        .strip_prefix('[')
        .and_then(|n| n.split_once(']'))
        .map_or(node.as_str(), |(ip, _)| ip);
    parse_ip(bare).or_else(|| parse_ip(&node))
}

/// The documented walk: from the right, skipping trusted addresses; the
/// first untrusted one is the client; an entry that is no address stops
/// the walk at the last trusted one.
fn client(ranges: &[(IpAddr, u8)], forwarded: bool, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: IpAddr| ranges.iter().any(|&r| in_range(ip, r));
    let mut client = peer.to_canonical();
    if !trusted(client) {
        return client;
    }
    let name = if forwarded {
        header::FORWARDED
    } else {
        "x-forwarded-for".parse().unwrap()
    };
    for value in headers.get_all(name).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        let entries = if forwarded {
            match common::split_quoted(value, b',') {
                Some(e) => e,
                None => return client,
            }
        } else {
            value.split(',').collect()
        };
        for entry in entries.iter().rev() {
            let parsed = if forwarded {
                forwarded_for(entry)
            } else {
                parse_ip(entry.trim())
            };
            let Some(ip) = parsed else { return client };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// RFC 6265 section 5.4 pairs: the first `name=value` with that name,
/// value trimmed and unquoted; an empty value is no key.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for v in headers.get_all(header::COOKIE) {
        for pair in v.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            let v = pair[eq + 1..].trim_ascii();
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 4);
    let (Ok(ranges_text), Ok(peer_text), Ok(cookie_name)) = (
        std::str::from_utf8(p[0]),
        std::str::from_utf8(p[1]),
        std::str::from_utf8(p[2]),
    ) else {
        return;
    };
    let headers = common::headers(p[3]);
    let texts: Vec<&str> = ranges_text.split('\n').filter(|t| !t.is_empty()).collect();
    let want: Option<Vec<(IpAddr, u8)>> = texts.iter().map(|t| range(t)).collect();
    let got = TrustedProxies::new(&texts);
    assert_eq!(got.is_ok(), want.is_some(), "{texts:?}: {got:?}");

    let peer = parse_ip(peer_text.trim());
    if let (Ok(trusted), Some(ranges), Some(peer)) = (got, want, peer) {
        let reference = ranges.iter().any(|&r| in_range(peer, r));
        assert_eq!(trusted.contains(peer), reference, "{peer} in {texts:?}");
        for forwarded in [false, true] {
            let t = if forwarded {
                trusted.clone().forwarded_header()
            } else {
                trusted.clone()
            };
            let mut req = Request::new(());
            *req.headers_mut() = headers.clone();
            req.extensions_mut().insert(SocketAddr::new(peer, 1));
            let key = KeyBy::client_ip(t).extract(&req).and_then(|k| k.as_ip());
            let want = client(&ranges, forwarded, peer, &headers);
            assert_eq!(
                key,
                Some(want),
                "forwarded={forwarded}, peer {peer}, trusted {texts:?}, {headers:?}"
            );
        }
    }

    if !cookie_name.is_empty() && !cookie_name.contains([';', '=']) {
        let mut req = Request::new(());
        *req.headers_mut() = headers.clone();
        let key = KeyBy::cookie(cookie_name)
            .extract(&req)
            .map(|k| k.as_bytes().unwrap().to_vec());
        assert_eq!(
            key.as_deref(),
            cookie(&headers, cookie_name),
            "{cookie_name:?} in {headers:?}"
        );
    }
});
