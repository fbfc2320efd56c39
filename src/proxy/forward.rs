//! The forwarding headers (`X-Forwarded-*`, `Forwarded`) and the
//! hop-by-hop headers a proxy removes.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri};

use super::endpoints::Endpoint;
use super::{ForwardedFor, Inner};

impl Inner {
    /// The request's URI on the upstream's `endpoint`; `None` if it cannot
    /// be one. In origin form (the path and query alone) when
    /// `origin_form`: what an HTTP/1.1 connection to the endpoint itself
    /// sends, with `Host` naming it.
    pub(super) fn upstream_uri(
        &self,
        uri: &Uri,
        endpoint: &Endpoint,
        origin_form: bool,
    ) -> Option<Uri> {
        let pq = if self.prefix.is_empty() {
            // Shares the request's bytes (a server's read buffer) rather
            // than copying them.
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{}{pq}", self.prefix)).ok()?
        };
        if origin_form {
            return Some(Uri::from(pq));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// Writes the forwarding headers: `X-Forwarded-For` (appended to, or
    /// replaced at the edge), `X-Forwarded-Proto` (the client's from a
    /// trusted proxy, else what this hop saw), `X-Forwarded-Host`,
    /// `X-Real-IP` (the client's from a trusted proxy, else the peer; with
    /// that header off, only the client's from a trusted proxy), and with
    /// the option on, a `Forwarded` element with every value quoted.
    /// `real_ip_sent`: whether the request carries `X-Real-IP` (as
    /// [`scan_request`] found), so that one it does not carry is not
    /// looked up to be removed.
    pub(super) fn add_forwarded(
        &self,
        headers: &mut HeaderMap,
        extensions: &http::Extensions,
        host: Option<&HeaderValue>,
        real_ip_sent: bool,
    ) {
        const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
        const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
        const XRI: HeaderName = HeaderName::from_static("x-real-ip");
        let peer = crate::key::peer_ip(extensions);
        let trusted = peer.is_some_and(|ip| self.trusted.as_ref().is_some_and(|t| t.contains(ip)));
        let replace = !trusted && self.forwarded_for == ForwardedFor::Replace;
        if replace {
            headers.remove(header::FORWARDED);
        }
        // Up to four headers added: room for them at once, rather than the
        // map growing (and rehashing) more than once on the way.
        headers.reserve(if self.real_ip { 4 } else { 3 });
        // The peer's address as a header value, for `X-Forwarded-For` and
        // `X-Real-IP`.
        let ip_value = peer.and_then(peer_value);
        match &ip_value {
            // At the edge the client's list goes: `insert` replaces it.
            Some(ip) if replace => {
                headers.insert(XFF, ip.clone());
            }
            Some(ip) => match headers.entry(XFF) {
                header::Entry::Vacant(entry) => {
                    entry.insert(ip.clone());
                }
                // Several `X-Forwarded-For` lines are one list (RFC 9110
                // section 5.3): keep all of it, then add the peer. A line
                // that is not visible ASCII names no address: dropped.
                header::Entry::Occupied(mut entry) => {
                    let mut value = Vec::new();
                    for prior in entry.iter().filter_map(|v| v.to_str().ok()) {
                        value.extend_from_slice(prior.as_bytes());
                        value.extend_from_slice(b", ");
                    }
                    value.extend_from_slice(ip.as_bytes());
                    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                        entry.insert(v);
                    }
                }
            },
            None if replace => {
                headers.remove(XFF);
            }
            None => {}
        }
        // A trusted proxy in front says what it saw; otherwise, what this
        // hop saw, never what the client claims.
        let claimed = trusted
            .then(|| headers.get(&XFP))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or_default().trim())
            .and_then(|v| {
                if v.eq_ignore_ascii_case("https") {
                    Some("https")
                } else if v.eq_ignore_ascii_case("http") {
                    Some("http")
                } else {
                    None
                }
            });
        let proto = claimed.unwrap_or_else(|| {
            extensions
                .get::<crate::conn::ConnectionInfo>()
                .map_or("http", crate::conn::ConnectionInfo::scheme)
        });
        headers.insert(XFP, HeaderValue::from_static(proto));
        if !self.real_ip {
            // Not written, and never passed on from a client that may have
            // made it up.
            if !trusted && real_ip_sent {
                headers.remove(XRI);
            }
        } else if !(trusted && real_ip_sent) {
            match ip_value {
                Some(ip) => {
                    headers.insert(XRI, ip);
                }
                None => {
                    headers.remove(XRI);
                }
            }
        }
        match host {
            Some(host) => {
                headers.insert(XFH, host.clone());
            }
            None => {
                headers.remove(XFH);
            }
        }
        if self.forwarded
            && let Some(element) = forwarded_element(peer, host, proto)
            && let Ok(v) = HeaderValue::from_str(&element)
        {
            headers.append(header::FORWARDED, v);
        }
    }
}

/// `ip` as a header value. The peer of a connection is the same for each
/// of its requests, and behind a load balancer it is the same for every
/// request: the last one made on this thread is kept and shared (a
/// reference count) while the peer stays the same, rather than the
/// address written out and copied into a header of its own twice a
/// request.
fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let made = || HeaderValue::from_str(IpText::new(ip).as_str()).ok();
    LAST.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        match &*last {
            Some((seen, value)) if *seen == ip => Some(value.clone()),
            _ => {
                let value = made()?;
                *last = Some((ip, value.clone()));
                Some(value)
            }
        }
    })
    .ok()
    .flatten()
    .or_else(made)
}

/// One RFC 7239 `Forwarded` element: `for`, `host` and `proto`, the
/// address and host as quoted strings (a host's `"` and `\` escaped, so
/// that it cannot end the string and add parameters of its own). `None`
/// with neither an address nor a host.
pub(super) fn forwarded_element(
    peer: Option<IpAddr>,
    host: Option<&HeaderValue>,
    proto: &str,
) -> Option<String> {
    let mut element = String::new();
    if let Some(ip) = peer {
        match ip {
            IpAddr::V4(v4) => element.push_str(&format!("for={v4}")),
            IpAddr::V6(v6) => element.push_str(&format!("for=\"[{v6}]\"")),
        }
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        if !element.is_empty() {
            element.push(';');
        }
        element.push_str("host=");
        quote(&mut element, host);
    }
    if element.is_empty() {
        return None;
    }
    element.push_str(";proto=");
    element.push_str(proto);
    Some(element)
}

/// `value` as an RFC 9110 quoted-string.
fn quote(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// An IP address written out as `Display` writes it, on the stack. IPv4,
/// the common case, is written by hand: `IpAddr::to_string` costs a
/// `String` and the formatting machinery on every proxied request (a unit
/// test holds the output to `Display`'s); IPv6 goes through `Display` into
/// the buffer.
struct IpText {
    // The longest IPv6 text is 45 bytes (`ffff:...:255.255.255.255`).
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut text.buf[..];
                let _ = write!(rest, "{v6}");
                text.len = 48 - rest.len();
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The hop-by-hop headers every proxy removes, whether `Connection` names
/// them or not: the ingress step's list, so the two never drift apart.
use crate::ingress::{HOP_BY_HOP, hop_by_hop_index};

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1): `Connection`
/// and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings`. On requests,
/// `TE: trailers` is kept: gRPC needs it end to end. `Connection` never
/// removes the [protected](crate::ingress::PROTECTED) headers (`Host`,
/// `Forwarded`, `X-Forwarded-*`, `X-Real-IP`): a client cannot make a
/// proxy drop the chain the load balancer in front appended.
///
/// [`crate::ingress`] does this (and more) once, before any layer runs;
/// the proxy does it again for requests that did not come through it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    // One pass over the names says which of the list are present (most
    // messages carry none; an upstream's response often `Connection:
    // keep-alive` alone): only those are looked up to be removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    remove_present(headers, request, present);
}

/// `Connection`'s, `TE`'s and `Upgrade`'s places in the list, as bits of
/// a set of them (a test holds them to the list).
const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 5;
pub(super) const UPGRADE_BIT: u16 = 1 << 8;

/// What one pass over a request's header lines found, for the proxy
/// ([`scan_request`]).
pub(super) struct RequestHead {
    /// The hop-by-hop headers present, a bit for each place in the list.
    pub(super) hop_by_hop: u16,
    /// The request is gRPC (see [`crate::grpc::is_grpc`]).
    pub(super) grpc: bool,
    /// The client's `Host`, its first line.
    pub(super) host: Option<HeaderValue>,
    /// `Host` was one line, and is now the value asked for.
    pub(super) host_set: bool,
    /// The request carries `X-Real-IP`.
    pub(super) real_ip: bool,
}

/// One pass over `headers` for what the proxy reads of a request: the
/// hop-by-hop headers present, whether it is gRPC, whether it carries
/// `X-Real-IP`, and the client's `Host`, replaced in place by `set_host`
/// when given. Each of those
/// otherwise costs a lookup of its own (a hash of the name and a probe),
/// and `Host` a second one to be replaced; the pass compares each line's
/// name, most of them standard names, compared as such.
pub(super) fn scan_request(headers: &mut HeaderMap, set_host: Option<&HeaderValue>) -> RequestHead {
    let mut head = RequestHead {
        hop_by_hop: 0,
        grpc: false,
        host: None,
        host_set: false,
        real_ip: false,
    };
    let mut hosts = 0u32;
    let mut content_type = false;
    for (name, value) in headers.iter_mut() {
        if name == header::HOST {
            hosts += 1;
            if hosts == 1 {
                head.host = Some(match set_host {
                    Some(set) => std::mem::replace(value, set.clone()),
                    None => value.clone(),
                });
            }
        } else if name == header::CONTENT_TYPE {
            // The first line, as `HeaderMap::get` reads.
            if !std::mem::replace(&mut content_type, true) {
                head.grpc = crate::grpc::is_grpc_value(value);
            }
        } else if let Some(i) = hop_by_hop_index(name) {
            head.hop_by_hop |= 1 << i;
        } else if name.as_str() == "x-real-ip" {
            head.real_ip = true;
        }
    }
    // Several `Host` lines (only without the ingress step, which refuses
    // them) are left to an `insert` to make one.
    head.host_set = set_host.is_some() && hosts == 1;
    head
}

/// [`remove_hop_by_hop`] with the headers of the list that are present
/// known (a bit for each place in the list).
pub(super) fn remove_present(headers: &mut HeaderMap, request: bool, present: u16) {
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0
        && let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION)
    {
        // `Connection: keep-alive` alone, an upstream's usual answer, names
        // nothing to remove but itself (`Keep-Alive` is in the list).
        // `close` is an option like any other: a line named `close` goes
        // with it (RFC 9110 section 7.6.1).
        let plain = {
            let mut values = connection.iter();
            matches!(
                (values.next(), values.next()),
                (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            )
        };
        // The headers `Connection` names, but for the list's own (removed
        // below): collected only when there are some.
        let mut named: Vec<HeaderName> = Vec::new();
        if !plain {
            for token in connection
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
            {
                // `keep-alive` (the usual one) and the rest of the list are
                // told apart by their text, before a name is made.
                if token.is_empty()
                    || HOP_BY_HOP
                        .iter()
                        .any(|h| token.eq_ignore_ascii_case(h.as_str()))
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && !crate::ingress::is_protected(&name)
                {
                    named.push(name);
                }
            }
        }
        // Removed where it was found: no second lookup of the name.
        connection.remove();
        if !named.is_empty() {
            for name in named {
                headers.remove(name);
            }
        }
    }
    let te_trailers = request
        && present & TE_BIT != 0
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    // `Connection` (the first of the list) is gone already.
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::{
        CONNECTION_BIT, HOP_BY_HOP, IpText, TE_BIT, UPGRADE_BIT, forwarded_element,
        remove_hop_by_hop, scan_request,
    };
    use http::header;

    #[test]
    fn the_bits_name_their_places_in_the_list() {
        for (bit, name) in [
            (CONNECTION_BIT, header::CONNECTION),
            (TE_BIT, header::TE),
            (UPGRADE_BIT, header::UPGRADE),
        ] {
            assert_eq!(HOP_BY_HOP[bit.trailing_zeros() as usize], name);
        }
    }

    #[test]
    fn one_pass_reads_what_the_lookups_read() {
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("client.example"));
        h.append(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        h.append("content-type", HeaderValue::from_static("text/plain"));
        h.append("upgrade", HeaderValue::from_static("websocket"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("x-a", HeaderValue::from_static("1"));
        let endpoint = HeaderValue::from_static("10.0.0.1:80");
        let mut kept = h.clone();
        let head = scan_request(&mut h, Some(&endpoint));
        assert_eq!(head.host.as_ref(), kept.get("host"));
        assert!(head.host_set);
        assert_eq!(h["host"], "10.0.0.1:80");
        assert_eq!(head.grpc, crate::grpc::is_grpc(&kept));
        assert!(head.grpc);
        assert_eq!(head.hop_by_hop, UPGRADE_BIT | TE_BIT);
        assert!(!head.real_ip);
        let mut with_real_ip = kept.clone();
        with_real_ip.append("X-Real-IP", HeaderValue::from_static("192.0.2.1"));
        assert!(scan_request(&mut with_real_ip, None).real_ip);
        // Without a value to set, `Host` stays; two lines are left to an
        // `insert`.
        let head = scan_request(&mut kept, None);
        assert!(!head.host_set);
        assert_eq!(kept["host"], "client.example");
        kept.append("host", HeaderValue::from_static("other.example"));
        let head = scan_request(&mut kept, Some(&endpoint));
        assert!(!head.host_set);
        assert_eq!(head.host.unwrap(), "client.example");
        assert!(!scan_request(&mut HeaderMap::new(), Some(&endpoint)).host_set);
    }

    #[test]
    fn only_the_present_hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, close, X-A, te"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("te", HeaderValue::from_static("trailers, gzip"));
        let mut response = h.clone();
        remove_hop_by_hop(&mut h, true);
        let mut names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-b"]);
        assert_eq!(h["te"], "trailers");
        remove_hop_by_hop(&mut response, false);
        let names: Vec<_> = response.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-b"]);
    }

    #[test]
    fn a_line_named_close_goes_when_connection_says_close() {
        // Found by the `hop_by_hop` fuzz target: `close` is a connection
        // option, and a line of that name is the connection's.
        for connection in ["close", "close, x-a", "Close"] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(connection));
            h.insert("close", HeaderValue::from_static("2"));
            h.insert("x-b", HeaderValue::from_static("3"));
            remove_hop_by_hop(&mut h, true);
            let names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
            assert_eq!(names, ["x-b"], "{connection}");
        }
    }

    #[test]
    fn a_plain_keep_alive_or_close_goes_with_the_rest_of_the_list() {
        for value in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(value));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
            h.insert("x-a", HeaderValue::from_static("1"));
            remove_hop_by_hop(&mut h, false);
            let names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
            assert_eq!(names, ["x-a"], "{value}");
        }
        // Two `Connection` lines are a list, read token by token.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-b"]);
    }

    #[test]
    fn forwarded_values_are_quoted_and_escaped() {
        let host = HeaderValue::from_static(r#"a.example";for=evil;x="\"#);
        let element = forwarded_element(Some("10.0.0.1".parse().unwrap()), Some(&host), "https");
        assert_eq!(
            element.as_deref(),
            Some(r#"for=10.0.0.1;host="a.example\";for=evil;x=\"\\";proto=https"#)
        );
        let host = HeaderValue::from_static("[::1]:8080");
        let element = forwarded_element(Some("::1".parse().unwrap()), Some(&host), "http");
        assert_eq!(
            element.as_deref(),
            Some(r#"for="[::1]";host="[::1]:8080";proto=http"#)
        );
        assert_eq!(forwarded_element(None, None, "http"), None);
    }

    #[test]
    fn connection_never_removes_protected_headers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            (
                "connection",
                "x-forwarded-for, x-forwarded-host, forwarded, x-real-ip, host, x-a",
            ),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-host", "h"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("host", "h"),
            ("x-a", "1"),
            ("http2-settings", "AAA"),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
        remove_hop_by_hop(&mut h, true);
        let mut names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.1.2.3",
            "::10.1.2.3",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
