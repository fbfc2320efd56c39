//! The first step of a gateway: the request as the client sent it, made
//! safe to hand to the layers behind.
//!
//! [`sanitize`] (or [`Sanitize::apply`], or the [`IngressLayer`] around a
//! whole stack; a [`Gateway`](crate::gateway::Gateway) runs it first thing)
//! does, once and before any layer runs:
//!
//! * **`Host`**: one header, `host[:port]` (an RFC 3986 reg-name, an IPv4
//!   address or a bracketed IPv6 address; a port of at most five digits, at
//!   most 65535), or the request is refused: 400 and problem+json. A
//!   request without `Host` goes on (HTTP/2 carries its authority in the
//!   URI).
//! * **Hop-by-hop headers** (RFC 9110 section 7.6.1): the headers
//!   `Connection` nominates are removed, except the [protected](PROTECTED)
//!   ones (`Host`, `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and any named
//!   with [`Sanitize::protect`]): a client cannot make the gateway drop
//!   the chain a load balancer in front appended. Then `Connection`,
//!   `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `TE` (but
//!   `TE: trailers`, which gRPC needs), `Trailer`, `Transfer-Encoding`,
//!   `Upgrade` and `HTTP2-Settings` are removed. Layers behind (a
//!   transform that sets `X-Request-Id`) then see no `Connection` that
//!   could remove what they add.
//! * **Upgrades**: an HTTP/1.1 `Upgrade` request keeps `Upgrade` (only the
//!   allowed protocols, `websocket` by default,
//!   [`Sanitize::upgrade_protocols`]) and `Connection: upgrade`, so that
//!   the proxy can still tunnel it; any other protocol is dropped and the
//!   request goes on as a plain one. `h2c` is never allowed: a client must
//!   not switch the gateway's upstream connection to HTTP/2 by itself.
//!
//! ```
//! use switchyard::ingress::sanitize;
//!
//! let mut req = http::Request::builder()
//!     .uri("/")
//!     .header("host", "api.example.com")
//!     .header("connection", "x-forwarded-for, x-secret")
//!     .header("x-forwarded-for", "203.0.113.7")
//!     .header("x-secret", "1")
//!     .header("upgrade", "h2c")
//!     .body(())?;
//! sanitize(&mut req)?;
//! // Protected: the load balancer's chain is kept.
//! assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.7");
//! assert!(req.headers().get("x-secret").is_none());
//! assert!(req.headers().get("connection").is_none());
//! assert!(req.headers().get("upgrade").is_none());
//!
//! let mut bad = http::Request::builder()
//!     .header("host", "a\"b.example")
//!     .body(())?;
//! assert!(sanitize(&mut bad).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::future::Rejection;
use crate::problem::Problem;

/// The headers `Connection` can never remove: what identifies the request's
/// target and the forwarding chain. Any header whose name starts with
/// `x-forwarded-` is protected too.
pub const PROTECTED: [HeaderName; 3] = [
    header::HOST,
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
];

/// Whether `name` is one of the [`PROTECTED`] headers (or `X-Forwarded-*`).
pub fn is_protected(name: &HeaderName) -> bool {
    PROTECTED.contains(name) || name.as_str().starts_with("x-forwarded-")
}

/// The hop-by-hop headers removed whether `Connection` names them or not
/// (the proxy's defensive pass removes the same list). A `static`: a
/// `const` array would be built (and dropped) again at each use.
pub(crate) static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Whether `name` is one of [`HOP_BY_HOP`] (see [`hop_by_hop_index`]).
/// Called for every header of every request and response.
#[inline]
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// `name`'s place in [`HOP_BY_HOP`]: a match on the name's text (its
/// length, then its bytes), rather than a search of `HOP_BY_HOP` comparing
/// names one by one.
#[inline]
pub(crate) fn hop_by_hop_index(name: &HeaderName) -> Option<u32> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "http2-settings" => 9,
        _ => return None,
    })
}

/// Why [`sanitize`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    /// `Host` is not `host[:port]`, or there are several.
    #[error("invalid Host header: {0}")]
    InvalidHost(&'static str),
}

impl IngressError {
    /// The answer: 400, problem+json.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        self.rejection().into_response()
    }

    pub(crate) fn rejection(&self) -> Rejection {
        Rejection::new(Problem::new(StatusCode::BAD_REQUEST).detail(self.to_string()))
    }
}

/// What the ingress step keeps; see the [module docs](self). The default
/// allows `websocket` upgrades and protects [`PROTECTED`].
#[derive(Debug, Clone)]
pub struct Sanitize {
    upgrade_protocols: Vec<String>,
    protected: Vec<HeaderName>,
}

impl Default for Sanitize {
    fn default() -> Self {
        Self {
            upgrade_protocols: vec!["websocket".to_owned()],
            protected: Vec::new(),
        }
    }
}

impl Sanitize {
    /// The default: `websocket` upgrades, [`PROTECTED`] headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The protocols an `Upgrade` may ask for (names, compared without
    /// case and without a `/version`): `websocket` by default. `h2c` is
    /// never allowed, even if listed.
    pub fn upgrade_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.upgrade_protocols = protocols
            .into_iter()
            .map(|p| p.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// Protects one more header from removal by `Connection`.
    pub fn protect(mut self, name: HeaderName) -> Self {
        self.protected.push(name);
        self
    }

    /// Checks and cleans `req`'s head; see the [module docs](self).
    pub fn apply<B>(&self, req: &mut Request<B>) -> Result<(), IngressError> {
        let version = req.version();
        self.apply_headers(version, req.headers_mut())
    }

    /// [`apply`](Self::apply) on a request's parts.
    pub fn apply_headers(
        &self,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<(), IngressError> {
        check_host(headers)?;
        // Most requests carry none of these: one pass over the names.
        if !headers.keys().any(is_hop_by_hop) {
            return Ok(());
        }
        let mut upgrade = false;
        let nominated: Vec<HeaderName> = tokens(headers.get_all(header::CONNECTION).iter())
            .filter_map(|t| {
                if t.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
                HeaderName::from_bytes(t.as_bytes()).ok()
            })
            .collect();
        let kept_upgrade = if upgrade && version == Version::HTTP_11 {
            let kept: Vec<&str> = tokens(headers.get_all(header::UPGRADE).iter())
                .filter(|p| self.allows(p))
                .collect();
            (!kept.is_empty())
                .then(|| HeaderValue::from_str(&kept.join(", ")).ok())
                .flatten()
        } else {
            None
        };
        for name in nominated {
            if !is_protected(&name) && !self.protected.contains(&name) {
                headers.remove(name);
            }
        }
        let te_trailers =
            tokens(headers.get_all(header::TE).iter()).any(|t| t.eq_ignore_ascii_case("trailers"));
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(protocols) = kept_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocols);
        }
        Ok(())
    }

    /// Whether an `Upgrade` to `protocol` (`name[/version]`) may go on.
    pub fn allows(&self, protocol: &str) -> bool {
        upgrade_allowed(&self.upgrade_protocols, protocol)
    }
}

/// Whether `protocol` (`name[/version]`) is in `allowed` (lowercase names);
/// `h2c` never is.
pub(crate) fn upgrade_allowed(allowed: &[String], protocol: &str) -> bool {
    let name = protocol.split('/').next().unwrap_or_default().trim();
    !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of some header values.
fn tokens<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a str> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// [`Sanitize::default`] applied to `req`.
pub fn sanitize<B>(req: &mut Request<B>) -> Result<(), IngressError> {
    static DEFAULT: std::sync::OnceLock<Sanitize> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(Sanitize::default).apply(req)
}

/// One `Host` at most, and a valid one.
fn check_host(headers: &HeaderMap) -> Result<(), IngressError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(IngressError::InvalidHost("more than one Host header"));
    }
    valid_host(host.as_bytes())
}

/// The bytes a reg-name holds as they are (RFC 3986 section 3.2.2:
/// unreserved and sub-delims), a flag for each byte: one load a byte of
/// every request's `Host`, rather than a search of the punctuation.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    table
};

/// Whether `value` is `host[:port]` (RFC 9110 section 7.2, RFC 3986
/// section 3.2.2): a reg-name (IPv4 addresses are reg-names too) or a
/// bracketed IPv6 address, then an optional port of one to five digits
/// up to 65535.
pub fn valid_host(value: &[u8]) -> Result<(), IngressError> {
    let (host, port) = if value.first() == Some(&b'[') {
        let end = value
            .iter()
            .position(|&b| b == b']')
            .ok_or(IngressError::InvalidHost("unclosed `[`"))?;
        let literal = std::str::from_utf8(&value[1..end])
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
        if literal.is_none() {
            return Err(IngressError::InvalidHost("not an IPv6 address in `[]`"));
        }
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return Err(IngressError::InvalidHost("text after `]`")),
        }
    } else {
        let host_end = value.iter().position(|&b| b == b':');
        let (host, port) = match host_end {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        if host.is_empty() {
            return Err(IngressError::InvalidHost("empty host"));
        }
        let mut i = 0;
        while i < host.len() {
            match host[i] {
                b'%' => {
                    let hex = host.get(i + 1..i + 3).unwrap_or_default();
                    if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(IngressError::InvalidHost("bad percent-encoding"));
                    }
                    i += 3;
                    continue;
                }
                b if REG_NAME[usize::from(b)] => {}
                _ => {
                    return Err(IngressError::InvalidHost(
                        "a character not allowed in a host",
                    ));
                }
            }
            i += 1;
        }
        (host, port)
    };
    let _ = host;
    if let Some(port) = port {
        // One to five digits, read as they are checked (no text
        // conversion and general parse on every request's `Host`).
        let ok = (1..=5).contains(&port.len())
            && port
                .iter()
                .try_fold(0u32, |n, &b| {
                    b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
                })
                .is_some_and(|n| n <= u32::from(u16::MAX));
        if !ok {
            return Err(IngressError::InvalidHost("bad port"));
        }
    }
    Ok(())
}

/// The name part of a `Host` value, for comparing with a configured host:
/// the port, the brackets of an IPv6 literal and a trailing dot (the
/// fully-qualified `example.com.` is `example.com`) removed.
pub fn host_name(host: &str) -> &str {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    name.strip_suffix('.').unwrap_or(name)
}

// === impl IngressLayer ===

/// Runs [`Sanitize`] on every request before the inner service sees it;
/// refused requests are answered 400 without calling it.
#[derive(Debug, Clone, Default)]
pub struct IngressLayer {
    sanitize: Arc<Sanitize>,
}

impl IngressLayer {
    /// With [`Sanitize::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// With these settings.
    pub fn with(sanitize: Sanitize) -> Self {
        Self {
            sanitize: Arc::new(sanitize),
        }
    }
}

impl<S> Layer<S> for IngressLayer {
    type Service = Ingress<S>;

    fn layer(&self, inner: S) -> Ingress<S> {
        Ingress {
            inner,
            sanitize: Arc::clone(&self.sanitize),
        }
    }
}

/// The service of [`IngressLayer`].
#[derive(Debug, Clone)]
pub struct Ingress<S> {
    inner: S,
    sanitize: Arc<Sanitize>,
}

impl<S, B, ResB> Service<Request<B>> for Ingress<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = crate::future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.sanitize.apply(&mut req) {
            Ok(()) => crate::future::ResponseFuture::inner(self.inner.call(req)),
            Err(e) => {
                crate::future::ResponseFuture::rejected(e.rejection().for_request(req.headers()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_hop_by_hop_is_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert!(is_hop_by_hop(name), "{name}");
            assert_eq!(hop_by_hop_index(name), Some(i as u32), "{name}");
        }
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-forwarded-for"),
            HeaderName::from_static("connections"),
            HeaderName::from_static("t"),
            HeaderName::from_static("proxy-"),
        ] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com.",
            "EXAMPLE.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:65535",
            "a-b_c~d.example",
            "xn--bcher-kva.example",
            "ex%41mple.com",
        ] {
            assert_eq!(valid_host(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a\"b.example",
            "a\\b",
            "example.com:",
            "example.com:65536",
            "example.com:123456",
            "example.com:8o",
            "[::1",
            "[nothex]",
            "[::1]x",
            "a b",
            "a/b",
            "a@b",
            "ex%4",
            "a:1:2",
        ] {
            assert!(valid_host(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_port_is_one_to_five_digits_up_to_65535() {
        // Every string of one to five digits, against the standard parse.
        for len in 1..=5u32 {
            for n in 0..10u32.pow(len) {
                let port = format!("{n:0width$}", width = len as usize);
                let host = format!("example.com:{port}");
                assert_eq!(
                    valid_host(host.as_bytes()).is_ok(),
                    port.parse::<u16>().is_ok(),
                    "{host}"
                );
            }
        }
    }

    #[test]
    fn the_reg_name_table_is_unreserved_and_sub_delims() {
        for b in 0..=255u8 {
            let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
            assert_eq!(super::REG_NAME[usize::from(b)], allowed, "{b}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("example.com."), "example.com");
        assert_eq!(host_name("example.com.:80"), "example.com");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("a.example:1"), "a.example");
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        let mut r = req(&[
            (
                "connection",
                "host, x-forwarded-for, X-Forwarded-Proto, forwarded, x-real-ip, x-a",
            ),
            ("host", "h.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        sanitize(&mut r).unwrap();
        let h = r.headers();
        for n in [
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "forwarded",
            "x-real-ip",
            "x-b",
        ] {
            assert!(h.contains_key(n), "{n}");
        }
        assert!(!h.contains_key("x-a"));
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn protect_adds_names() {
        let s = Sanitize::new().protect(HeaderName::from_static("x-request-id"));
        let mut r = req(&[("connection", "x-request-id"), ("x-request-id", "abc")]);
        s.apply(&mut r).unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc");
    }

    #[test]
    fn upgrades_on_the_allow_list_only() {
        let mut r = req(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
        ]);
        sanitize(&mut r).unwrap();
        assert!(r.headers().is_empty(), "{:?}", r.headers());

        let mut r = req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
        ]);
        sanitize(&mut r).unwrap();
        assert_eq!(r.headers()["connection"], "upgrade");
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert!(!r.headers().contains_key("keep-alive"));

        let mut r = req(&[("connection", "upgrade"), ("upgrade", "h2c, WebSocket")]);
        sanitize(&mut r).unwrap();
        assert_eq!(r.headers()["upgrade"], "WebSocket");

        let s = Sanitize::new().upgrade_protocols(["h2c", "x-custom"]);
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        s.apply(&mut r).unwrap();
        assert!(r.headers().is_empty());
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        s.apply(&mut r).unwrap();
        assert!(r.headers().is_empty());

        // Over HTTP/2 there is no `Upgrade`.
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *r.version_mut() = Version::HTTP_2;
        sanitize(&mut r).unwrap();
        assert!(r.headers().is_empty());
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut r = req(&[("te", "trailers, deflate")]);
        sanitize(&mut r).unwrap();
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn two_hosts_are_refused() {
        let mut r = Request::new(());
        r.headers_mut()
            .append("host", HeaderValue::from_static("a.example"));
        r.headers_mut()
            .append("host", HeaderValue::from_static("b.example"));
        assert!(sanitize(&mut r).is_err());
    }
}
