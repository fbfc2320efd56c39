//! The forwarding headers (`X-Forwarded-*`, `Forwarded`) and the
//! hop-by-hop headers a proxy removes.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri};

use super::Inner;
use super::endpoints::Endpoint;

impl Inner {
    /// The request's URI on the upstream's `endpoint`; `None` if it cannot
    /// be one.
    pub(super) fn upstream_uri(&self, uri: &Uri, endpoint: &Endpoint) -> Option<Uri> {
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
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    pub(super) fn add_forwarded(
        &self,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        host: Option<&HeaderValue>,
    ) {
        const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
        const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
        if let Some(ip) = peer {
            // Several `X-Forwarded-For` lines are one list (RFC 9110
            // section 5.3): keep all of it, then add the peer.
            let ip = IpText::new(ip);
            let mut priors = headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok());
            let value = match priors.next() {
                // The usual case: the peer alone, without a `String`.
                None => HeaderValue::from_str(ip.as_str()),
                Some(first) => {
                    let mut value = String::new();
                    for prior in std::iter::once(first).chain(priors) {
                        value.push_str(prior);
                        value.push_str(", ");
                    }
                    value.push_str(ip.as_str());
                    HeaderValue::from_str(&value)
                }
            };
            if let Ok(v) = value {
                headers.insert(XFF, v);
            }
        }
        // What this hop saw, not what the client claims.
        headers.insert(XFP, HeaderValue::from_static("http"));
        match host {
            Some(host) => {
                headers.insert(XFH, host.clone());
            }
            None => {
                headers.remove(XFH);
            }
        }
        if self.forwarded {
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
                element.push_str(&format!("host=\"{host}\""));
            }
            if !element.is_empty() {
                element.push_str(";proto=http");
                if let Ok(v) = HeaderValue::from_str(&element) {
                    headers.append(header::FORWARDED, v);
                }
            }
        }
    }
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
/// them or not.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1): `Connection`
/// and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`. On requests, `TE: trailers` is kept:
/// gRPC needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    // Most messages carry none: one pass over the names is cheaper than
    // nine lookups that find nothing.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = request
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::IpText;

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
