//! Reading a key from a request: the one abstraction that split
//! stickiness, rate limiting and model selection share.
//!
//! A [`KeyBy`] says *where* a key comes from (a header, a cookie, the peer's
//! IP address, a closure of yours, or a chain of these); [`KeyBy::extract`]
//! reads it from a request as a [`Key`], borrowing from the request where it
//! can so that reading a key does not allocate.
//!
//! ```
//! use http::{header::HeaderName, Request};
//! use switchyard::key::{Key, KeyBy};
//!
//! // The `x-user` header, else the `session` cookie.
//! let by = KeyBy::header(HeaderName::from_static("x-user")).or(KeyBy::cookie("session"));
//!
//! let req = Request::builder()
//!     .header("cookie", "theme=dark; session=abc123")
//!     .body(())
//!     .unwrap();
//! assert_eq!(by.extract(&req), Some(Key::from("abc123")));
//!
//! let req = Request::builder().header("x-user", "alice").body(()).unwrap();
//! assert_eq!(by.extract(&req), Some(Key::from("alice")));
//!
//! // Neither present: no key. Each layer documents what it does then.
//! assert_eq!(by.extract(&Request::new(())), None);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{COOKIE, HeaderName};
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

// === impl KeyBy ===

/// Where a layer reads a request's key from.
///
/// Cheap to clone (one reference count). Built with the constructors below
/// and combined with [`KeyBy::or`].
#[derive(Clone)]
pub struct KeyBy {
    source: Arc<Source>,
}

type CustomFn = dyn Fn(&RequestView<'_>) -> Option<Key<'static>> + Send + Sync;

enum Source {
    Global,
    PeerIp,
    Header(HeaderName),
    Cookie(Box<str>),
    Custom(Box<CustomFn>),
    Or(KeyBy, KeyBy),
}

impl KeyBy {
    /// One key shared by every request (a global limit, say).
    pub fn global() -> Self {
        Self::from_source(Source::Global)
    }

    /// The IP address of the connected peer.
    ///
    /// Read from a [`SocketAddr`] request extension (insert one per
    /// connection when you serve with plain hyper) and, with the `axum`
    /// feature, from axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`). IPv4-mapped
    /// IPv6 addresses are reduced to their IPv4 form, so one client has one
    /// key whichever socket family accepted it.
    ///
    /// Behind a reverse proxy every request has the proxy's address: this is
    /// then a global key in disguise.
    pub fn peer_ip() -> Self {
        Self::from_source(Source::PeerIp)
    }

    /// The value of a request header. A missing or empty header gives no
    /// key; of several values, the first is used.
    ///
    /// A gRPC metadata key is an HTTP/2 header, so this reads metadata too.
    pub fn header(name: HeaderName) -> Self {
        Self::from_source(Source::Header(name))
    }

    /// The value of a cookie (from every `Cookie` header of the request). A
    /// missing or empty cookie gives no key; surrounding double quotes are
    /// removed.
    pub fn cookie(name: impl Into<String>) -> Self {
        Self::from_source(Source::Cookie(name.into().into_boxed_str()))
    }

    /// A key computed by a closure of yours from the request's head.
    ///
    /// ```
    /// use switchyard::key::{KeyBy, RequestView};
    ///
    /// // The first path segment, e.g. a tenant in `/acme/orders`.
    /// let by = KeyBy::custom(|req: &RequestView<'_>| {
    ///     req.uri.path().split('/').nth(1).filter(|s| !s.is_empty()).map(str::to_owned)
    /// });
    /// let req = http::Request::get("/acme/orders").body(()).unwrap();
    /// assert_eq!(by.extract(&req), Some("acme".into()));
    /// ```
    pub fn custom<F, K>(f: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> Option<K> + Send + Sync + 'static,
        K: Into<Key<'static>>,
    {
        Self::from_source(Source::Custom(Box::new(move |req| f(req).map(Into::into))))
    }

    /// This key if the request has it, else `fallback`'s.
    pub fn or(self, fallback: KeyBy) -> Self {
        Self::from_source(Source::Or(self, fallback))
    }

    fn from_source(source: Source) -> Self {
        Self {
            source: Arc::new(source),
        }
    }

    /// Reads the key from a request, or `None` when the request does not
    /// carry it. Borrows from the request for header and cookie keys, so it
    /// does not allocate (a custom closure may).
    pub fn extract<'r, B>(&self, req: &'r Request<B>) -> Option<Key<'r>> {
        self.extract_parts(req.headers(), req.extensions(), || RequestView {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            extensions: req.extensions(),
        })
    }

    fn extract_parts<'r>(
        &self,
        headers: &'r HeaderMap,
        extensions: &'r Extensions,
        view: impl Fn() -> RequestView<'r> + Copy,
    ) -> Option<Key<'r>> {
        match &*self.source {
            Source::Global => Some(Key::global()),
            Source::PeerIp => peer_ip(extensions).map(Key::from),
            Source::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(Key::from_bytes),
            Source::Cookie(name) => cookie(headers, name).map(Key::from_bytes),
            Source::Custom(f) => f(&view()),
            Source::Or(first, then) => first
                .extract_parts(headers, extensions, view)
                .or_else(|| then.extract_parts(headers, extensions, view)),
        }
    }
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.source {
            Source::Global => f.write_str("KeyBy::global()"),
            Source::PeerIp => f.write_str("KeyBy::peer_ip()"),
            Source::Header(name) => write!(f, "KeyBy::header({:?})", name.as_str()),
            Source::Cookie(name) => write!(f, "KeyBy::cookie({name:?})"),
            Source::Custom(_) => f.write_str("KeyBy::custom(..)"),
            Source::Or(a, b) => write!(f, "{a:?}.or({b:?})"),
        }
    }
}

fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip().to_canonical());
    }
    extensions
        .get::<SocketAddr>()
        .map(|addr| addr.ip().to_canonical())
}

/// Finds cookie `name` in the `Cookie` headers (RFC 6265 section 5.4:
/// `name=value` pairs separated by `; `), tolerating missing spaces.
fn cookie<'r>(headers: &'r HeaderMap, name: &str) -> Option<&'r [u8]> {
    let name = name.as_bytes();
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (n, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (n.trim_ascii() == name).then(|| {
                let v = v[1..].trim_ascii();
                match v {
                    [b'"', inner @ .., b'"'] => inner,
                    v => v,
                }
            })
        })
        .filter(|v| !v.is_empty())
}

// === impl RequestView ===

/// The head of a request, as [`KeyBy::custom`] closures see it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestView<'r> {
    /// The request method.
    pub method: &'r Method,
    /// The request URI.
    pub uri: &'r Uri,
    /// The HTTP version.
    pub version: Version,
    /// The request headers.
    pub headers: &'r HeaderMap,
    /// The request extensions (what earlier layers recorded).
    pub extensions: &'r Extensions,
}

// === impl Key ===

/// A key read from a request: bytes (borrowed from the request where
/// possible), an IP address, or the single global key.
///
/// Two keys are equal when they are of the same kind with the same value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key<'r>(Repr<'r>);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr<'r> {
    Global,
    Ip(IpAddr),
    Bytes(Cow<'r, [u8]>),
}

impl<'r> Key<'r> {
    /// The one key of [`KeyBy::global`].
    pub fn global() -> Self {
        Key(Repr::Global)
    }

    /// A key of bytes borrowed from the request.
    pub fn from_bytes(bytes: &'r [u8]) -> Self {
        Key(Repr::Bytes(Cow::Borrowed(bytes)))
    }

    /// The key's bytes, when it is a bytes key.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The key's address, when it is an IP key.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self.0 {
            Repr::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// A copy that owns its bytes, to keep beyond the request.
    pub fn into_owned(self) -> Key<'static> {
        Key(match self.0 {
            Repr::Global => Repr::Global,
            Repr::Ip(ip) => Repr::Ip(ip),
            Repr::Bytes(b) => Repr::Bytes(Cow::Owned(b.into_owned())),
        })
    }

    /// A 64-bit hash of the key that is stable across processes, platforms
    /// and releases of Rust and of this crate's dependencies, so that
    /// several gateway replicas, and a gateway after an upgrade, agree on
    /// sticky assignments. `seed` separates independent uses of one key.
    pub fn stable_hash(&self, seed: u64) -> u64 {
        let mut h = StableHasher::new(seed);
        match &self.0 {
            Repr::Global => h.write(&[0]),
            Repr::Ip(IpAddr::V4(ip)) => {
                h.write(&[4]);
                h.write(&ip.octets())
            }
            Repr::Ip(IpAddr::V6(ip)) => {
                h.write(&[6]);
                h.write(&ip.octets())
            }
            Repr::Bytes(b) => {
                h.write(&[1]);
                h.write(b)
            }
        }
        h.finish()
    }
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("Key::global()"),
            Repr::Ip(ip) => write!(f, "Key({ip})"),
            Repr::Bytes(b) => write!(f, "Key({:?})", String::from_utf8_lossy(b)),
        }
    }
}

impl<'r> From<&'r str> for Key<'r> {
    fn from(s: &'r str) -> Self {
        Key::from_bytes(s.as_bytes())
    }
}

impl From<String> for Key<'_> {
    fn from(s: String) -> Self {
        Key(Repr::Bytes(Cow::Owned(s.into_bytes())))
    }
}

impl From<Vec<u8>> for Key<'_> {
    fn from(b: Vec<u8>) -> Self {
        Key(Repr::Bytes(Cow::Owned(b)))
    }
}

impl From<IpAddr> for Key<'_> {
    fn from(ip: IpAddr) -> Self {
        Key(Repr::Ip(ip.to_canonical()))
    }
}

/// FNV-1a over the bytes, finished with the MurmurHash3 `fmix64` mixer.
///
/// Written here rather than taken from a crate because the exact function
/// is part of the contract (sticky assignments must not move when Rust's
/// `DefaultHasher` or a dependency changes) and it is a dozen lines; FNV-1a
/// alone mixes short keys poorly into the high bits, which `fmix64` fixes.
struct StableHasher(u64);

impl StableHasher {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(seed: u64) -> Self {
        let mut h = StableHasher(Self::OFFSET);
        h.write(&seed.to_le_bytes());
        h
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn header_key_borrows_and_skips_empty() {
        let by = KeyBy::header(HeaderName::from_static("x-user"));
        let r = req(&[("x-user", "alice"), ("x-user", "bob")]);
        assert_eq!(by.extract(&r), Some(Key::from("alice")));
        assert_eq!(by.extract(&req(&[("x-user", "")])), None);
        assert_eq!(by.extract(&req(&[])), None);
    }

    #[test]
    fn cookie_parsing() {
        let by = KeyBy::cookie("sid");
        for (header, want) in [
            ("sid=1", Some("1")),
            ("a=b; sid=2", Some("2")),
            ("a=b;sid=3;c=d", Some("3")),
            ("sid=\"4\"", Some("4")),
            ("xsid=5", None),
            ("sid=", None),
            ("sid", None),
            ("a=b; sid = 6 ", Some("6")),
            (";;;", None),
        ] {
            assert_eq!(
                by.extract(&req(&[("cookie", header)])),
                want.map(Key::from),
                "{header}"
            );
        }
        // Across several Cookie headers.
        let r = req(&[("cookie", "a=1"), ("cookie", "sid=7")]);
        assert_eq!(by.extract(&r), Some(Key::from("7")));
    }

    #[test]
    fn peer_ip_is_canonical() {
        let mut r = req(&[]);
        r.extensions_mut()
            .insert("[::ffff:10.1.2.3]:4000".parse::<SocketAddr>().unwrap());
        let key = KeyBy::peer_ip().extract(&r).unwrap();
        assert_eq!(key.as_ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(KeyBy::peer_ip().extract(&req(&[])), None);
    }

    #[test]
    fn or_falls_back_in_order() {
        let by = KeyBy::header(HeaderName::from_static("x-a"))
            .or(KeyBy::header(HeaderName::from_static("x-b")))
            .or(KeyBy::global());
        assert_eq!(by.extract(&req(&[("x-b", "2")])), Some(Key::from("2")));
        assert_eq!(
            by.extract(&req(&[("x-a", "1"), ("x-b", "2")])),
            Some(Key::from("1"))
        );
        assert_eq!(by.extract(&req(&[])), Some(Key::global()));
        assert_eq!(
            format!("{by:?}"),
            r#"KeyBy::header("x-a").or(KeyBy::header("x-b")).or(KeyBy::global())"#
        );
    }

    #[test]
    fn stable_hash_is_pinned() {
        // These values are part of the contract: changing the hash moves
        // every sticky user. Update only with a deliberate, announced break.
        // (Cross-checked against an independent FNV-1a + fmix64 in Python.)
        assert_eq!(Key::from("alice").stable_hash(0), 0xa894_00d8_ae6b_0b1b);
        assert_ne!(Key::from("alice").stable_hash(1), Key::from("alice").stable_hash(0));
        assert_ne!(Key::from("alice").stable_hash(0), Key::from("alicf").stable_hash(0));
    }
}
