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
    ClientIp(TrustedProxies),
    Identity,
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

    /// The client's IP address behind reverse proxies you trust.
    ///
    /// Starts from the peer address (as [`KeyBy::peer_ip`]). If the peer is
    /// not a trusted proxy, that is the client, and any `X-Forwarded-For`
    /// it sent is ignored — a client cannot pick its own key. If the peer is
    /// trusted, the forwarding header is walked **from the right** (each
    /// proxy appends the address it saw), skipping trusted addresses; the
    /// first untrusted address is the client. If every address is trusted,
    /// the leftmost is used. An entry that is not an IP address stops the
    /// walk, and the last trusted address before it is used: a trusted proxy
    /// wrote it, so the request is keyed to that proxy rather than to a
    /// value the client chose.
    ///
    /// ```
    /// use switchyard::key::{KeyBy, TrustedProxies};
    ///
    /// let trusted = TrustedProxies::new(["10.0.0.0/8", "::1/128"])?;
    /// let by = KeyBy::client_ip(trusted);
    ///
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "203.0.113.7, 198.51.100.2, 10.0.0.5")
    ///     .body(())?;
    /// req.extensions_mut().insert("10.0.0.9:41000".parse::<std::net::SocketAddr>()?);
    /// // 10.0.0.5 is a trusted proxy; 198.51.100.2 is the client (the
    /// // leftmost value could have been written by anyone).
    /// assert_eq!(by.extract(&req).unwrap().as_ip(), Some("198.51.100.2".parse()?));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_ip(trusted: TrustedProxies) -> Self {
        Self::from_source(Source::ClientIp(trusted))
    }

    /// The caller's [`Identity`](crate::auth::Identity) (its tenant and
    /// id, see [`Identity::key`](crate::auth::Identity::key)), recorded by an
    /// authentication layer in front; no key without one (or for an
    /// anonymous identity, which would otherwise make every anonymous
    /// caller one key: chain `.or(KeyBy::peer_ip())` for those).
    pub fn identity() -> Self {
        Self::from_source(Source::Identity)
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
        self.extract_parts(req.headers(), req.extensions(), || RequestView::of(req))
    }

    /// [`extract`](Self::extract) from a request's head.
    pub fn extract_head<'r>(&self, head: &'r http::request::Parts) -> Option<Key<'r>> {
        self.extract_parts(&head.headers, &head.extensions, || {
            RequestView::of_head(head)
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
            Source::Identity => extensions
                .get::<crate::auth::Identity>()
                .filter(|i| !i.is_anonymous())
                .map(|i| Key::from_bytes(i.key().as_bytes())),
            Source::ClientIp(trusted) => peer_ip(extensions)
                .map(|peer| trusted.client(peer, headers))
                .map(Key::from),
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
            Source::ClientIp(t) => write!(f, "KeyBy::client_ip({t:?})"),
            Source::Identity => f.write_str("KeyBy::identity()"),
            Source::Header(name) => write!(f, "KeyBy::header({:?})", name.as_str()),
            Source::Cookie(name) => write!(f, "KeyBy::cookie({name:?})"),
            Source::Custom(_) => f.write_str("KeyBy::custom(..)"),
            Source::Or(a, b) => write!(f, "{a:?}.or({b:?})"),
        }
    }
}

pub(crate) fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(info) = extensions.get::<crate::conn::ConnectionInfo>() {
        return Some(info.peer.ip().to_canonical());
    }
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

// === impl TrustedProxies ===

/// The address ranges of reverse proxies whose forwarding headers
/// [`KeyBy::client_ip`] believes, and which header they write.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
    forwarded: bool,
}

/// Why a [`TrustedProxies`] range could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address range `{0}`: expected an IP address or CIDR like `10.0.0.0/8`")]
pub struct InvalidRange(pub String);

impl TrustedProxies {
    /// Trust these ranges (`10.0.0.0/8`, `fd00::/8`, or single addresses),
    /// reading `X-Forwarded-For`.
    pub fn new<I, S>(ranges: I) -> Result<Self, InvalidRange>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ranges = ranges
            .into_iter()
            .map(|r| Cidr::parse(r.as_ref()).ok_or_else(|| InvalidRange(r.as_ref().to_owned())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ranges,
            forwarded: false,
        })
    }

    /// Read the standard `Forwarded` header (RFC 7239, its `for=`
    /// parameters) instead of `X-Forwarded-For`.
    pub fn forwarded_header(mut self) -> Self {
        self.forwarded = true;
        self
    }

    /// Whether `ip` is in a trusted range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.iter().any(|r| r.contains(ip))
    }

    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.contains(client) {
            return client;
        }
        let name = if self.forwarded {
            FORWARDED
        } else {
            X_FORWARDED_FOR
        };
        // Later headers were added later; within one, entries go left to right.
        for value in headers.get_all(name).iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            // `Forwarded` values may quote commas and semicolons
            // (`host="a, for=6.6.6.6"`): split outside quoted strings, or a
            // client could name its own address.
            let entries: Vec<&str> = if self.forwarded {
                // A quote left open: nothing in this value can be trusted.
                match split_unquoted(value, b',') {
                    Some(entries) => entries,
                    None => return client,
                }
            } else {
                value.split(',').collect()
            };
            for entry in entries.into_iter().rev() {
                let parsed = if self.forwarded {
                    forwarded_for(entry)
                } else {
                    parse_ip(entry.trim())
                };
                let Some(ip) = parsed else { return client };
                client = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for r in &self.ranges {
            list.entry(&format_args!("{}/{}", r.addr, r.len));
        }
        list.finish()
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";

/// An address, optionally with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8::1]:4711"`); `unknown` and obfuscated nodes are `None`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let node = split_unquoted(element, b';')?
        .into_iter()
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })?;
    let node = node.trim_matches('"');
    let bare = node
        .strip_prefix('[')
        .and_then(|n| n.split_once(']'))
        .map_or(node, |(ip, _)| ip);
    parse_ip(bare).or_else(|| parse_ip(node))
}

/// `value` split at every `sep` outside an RFC 9110 quoted string
/// (`"..."`, with `\` escaping the next character); `None` when a quote
/// is left open.
fn split_unquoted(value: &str, sep: u8) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    (!quoted).then_some(parts)
}

/// An address range. Written here rather than taken from a crate: it is
/// std's address parser plus a prefix compare.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some(())?;
        // Keep IPv4-mapped ranges comparable with canonical addresses.
        match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && len >= 96 => Some(Cidr {
                addr: addr.to_canonical(),
                len: len - 96,
            }),
            _ => Some(Cidr { addr, len }),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, len: u8) -> bool {
    len == 0 || (a ^ b) >> (128 - u32::from(len)) == 0
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

impl<'r> RequestView<'r> {
    /// A view of `req`'s head.
    pub fn of<B>(req: &'r Request<B>) -> Self {
        RequestView {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// A view of a request head.
    pub fn of_head(head: &'r http::request::Parts) -> Self {
        RequestView {
            method: &head.method,
            uri: &head.uri,
            version: head.version,
            headers: &head.headers,
            extensions: &head.extensions,
        }
    }
}

// === impl Key ===

/// A key read from a request: bytes (borrowed from the request where
/// possible), an IP address, or the single global key.
///
/// Two keys are equal when they are of the same kind with the same value.
#[derive(Clone, PartialEq, Eq)]
pub struct Key<'r>(Repr<'r>);

#[derive(Clone, PartialEq, Eq)]
enum Repr<'r> {
    Global,
    Ip(IpAddr),
    Bytes(Cow<'r, [u8]>),
    /// The digest of a bytes key longer than [`MAX_KEPT_BYTES`], as state
    /// keyed by client input stores it.
    Digest([u8; 16]),
}

/// The longest bytes key kept as it is where state is stored per key (the
/// rate limiter's table, Redis key names); a longer one is kept as its
/// digest, so that a client sending huge keys costs what a short key costs.
pub(crate) const MAX_KEPT_BYTES: usize = 64;

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
            Repr::Digest(d) => Repr::Digest(d),
        })
    }

    /// The form state is stored under, when it is not the key itself: a
    /// bytes key longer than [`MAX_KEPT_BYTES`] becomes the first 128 bits
    /// of its SHA-256. That is a fixed 16 bytes however long the key, the
    /// same in every process (so replicas agree on Redis key names), and
    /// without collisions anyone can find; a digest never equals a short
    /// key, which stays a different kind.
    #[inline]
    pub(crate) fn digest_if_long(&self) -> Option<Key<'static>> {
        match &self.0 {
            Repr::Bytes(b) if b.len() > MAX_KEPT_BYTES => Some(Key(Repr::Digest(digest(b)))),
            _ => None,
        }
    }

    /// What the key is made of, to keep elsewhere (the spend meter keeps a
    /// request's keys in one buffer instead of one allocation each).
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn parts(&self) -> KeyParts<'_> {
        match &self.0 {
            Repr::Global => KeyParts::Global,
            Repr::Ip(ip) => KeyParts::Ip(*ip),
            Repr::Bytes(b) => KeyParts::Bytes(b),
            Repr::Digest(d) => KeyParts::Digest(*d),
        }
    }

    /// The key made of `parts` (the inverse of [`parts`](Self::parts)).
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn from_parts(parts: KeyParts<'r>) -> Self {
        Key(match parts {
            KeyParts::Global => Repr::Global,
            KeyParts::Ip(ip) => Repr::Ip(ip),
            KeyParts::Bytes(b) => Repr::Bytes(Cow::Borrowed(b)),
            KeyParts::Digest(d) => Repr::Digest(d),
        })
    }

    /// The digest, for a key made by [`digest_if_long`](Self::digest_if_long).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn as_digest(&self) -> Option<&[u8; 16]> {
        match &self.0 {
            Repr::Digest(d) => Some(d),
            _ => None,
        }
    }

    /// A 64-bit hash of the key that is stable across processes, platforms
    /// and releases of Rust and of this crate's dependencies, so that
    /// several gateway replicas, and a gateway after an upgrade, agree on
    /// sticky assignments. `seed` separates independent uses of one key.
    pub fn stable_hash(&self, seed: u64) -> u64 {
        self.stable_hash_seeded(HashSeed::new(seed))
    }

    /// [`stable_hash`](Self::stable_hash) from a precomputed seed state.
    #[inline]
    pub(crate) fn stable_hash_seeded(&self, seed: HashSeed) -> u64 {
        let mut h = seed.0;
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
            Repr::Digest(d) => {
                h.write(&[2]);
                h.write(d)
            }
        }
        h.finish()
    }
}

/// The first 128 bits of the SHA-256 of `bytes` (out of line: the short
/// keys of nearly every request never get here).
#[cold]
fn digest(bytes: &[u8]) -> [u8; 16] {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(bytes);
    let mut d = [0; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// A [`Key`] taken apart: see [`Key::parts`].
#[cfg_attr(not(feature = "json"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyParts<'a> {
    Global,
    Ip(IpAddr),
    Bytes(&'a [u8]),
    Digest([u8; 16]),
}

/// The stable hasher's state after hashing a seed: computed once per
/// layer rather than once per request.
#[derive(Clone, Copy)]
pub(crate) struct HashSeed(StableHasher);

impl HashSeed {
    pub(crate) fn new(seed: u64) -> Self {
        HashSeed(StableHasher::new(seed))
    }
}

/// One write per key (the bytes, or the address with its family) instead of
/// the derived tag-length-bytes sequence: keys are looked up on every
/// request. Kinds cannot collide in a way that matters: equal hashes of
/// different kinds only share a bucket, `Eq` still tells them apart.
impl std::hash::Hash for Key<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Global => state.write_u8(0),
            Repr::Ip(IpAddr::V4(ip)) => state.write_u32(u32::from(*ip)),
            Repr::Ip(IpAddr::V6(ip)) => state.write_u128(u128::from(*ip)),
            Repr::Bytes(b) => state.write(b),
            Repr::Digest(d) => state.write(d),
        }
    }
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("Key::global()"),
            Repr::Ip(ip) => write!(f, "Key({ip})"),
            Repr::Bytes(b) => write!(f, "Key({:?})", String::from_utf8_lossy(b)),
            Repr::Digest(d) => {
                f.write_str("Key(digest ")?;
                for b in d {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(")")
            }
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
#[derive(Clone, Copy)]
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
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: a bijection that spreads every input
/// bit over every output bit.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_quoted_comma_in_forwarded_names_no_client() {
        use super::*;
        let trusted = TrustedProxies::new(["10.0.0.0/8"])
            .unwrap()
            .forwarded_header();
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            http::HeaderValue::from_static("for=10.0.0.2;host=\"x, for=6.6.6.6\""),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            trusted.client(peer, &headers),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            split_unquoted(r#"a="b\",c",d"#, b','),
            Some(vec![r#"a="b\",c""#, "d"])
        );
        assert_eq!(split_unquoted(r#"a="open, b"#, b','), None);
    }

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

    fn with_peer(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = req(headers);
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        r
    }

    #[test]
    fn client_ip_walks_from_the_right() {
        let by = KeyBy::client_ip(TrustedProxies::new(["10.0.0.0/8", "fd00::/8"]).unwrap());
        let ip = |r: &Request<()>| by.extract(r).unwrap().as_ip().unwrap().to_string();
        // Untrusted peer: its own header is ignored.
        let r = with_peer("203.0.113.9:1", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(ip(&r), "203.0.113.9");
        // Trusted chain: first untrusted from the right.
        let r = with_peer(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.1.1.1")],
        );
        assert_eq!(ip(&r), "7.7.7.7");
        // Across two headers, the later one is nearer.
        let r = with_peer(
            "[fd00::1]:1",
            &[
                ("x-forwarded-for", "8.8.8.8"),
                ("x-forwarded-for", "10.2.2.2"),
            ],
        );
        assert_eq!(ip(&r), "8.8.8.8");
        // All trusted: the leftmost.
        let r = with_peer("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(ip(&r), "10.9.9.9");
        // Garbage stops the walk at the last trusted hop.
        let r = with_peer("10.0.0.1:1", &[("x-forwarded-for", "evil, 10.1.1.1")]);
        assert_eq!(ip(&r), "10.1.1.1");
        // No header: the peer.
        assert_eq!(ip(&with_peer("10.0.0.1:1", &[])), "10.0.0.1");
        // Ports are tolerated.
        let r = with_peer("10.0.0.1:1", &[("x-forwarded-for", "9.9.9.9:5555")]);
        assert_eq!(ip(&r), "9.9.9.9");
    }

    #[test]
    fn client_ip_from_forwarded_header() {
        let trusted = TrustedProxies::new(["127.0.0.1"])
            .unwrap()
            .forwarded_header();
        let by = KeyBy::client_ip(trusted);
        let r = with_peer(
            "127.0.0.1:1",
            &[(
                "forwarded",
                r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
            )],
        );
        assert_eq!(
            by.extract(&r).unwrap().as_ip(),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        let r = with_peer("127.0.0.1:1", &[("forwarded", "for=unknown")]);
        assert_eq!(
            by.extract(&r).unwrap().as_ip(),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn cidr_ranges() {
        let t =
            TrustedProxies::new(["192.168.0.0/16", "::ffff:172.16.0.0/108", "0.0.0.0/0"]).unwrap();
        assert!(t.contains("192.168.3.4".parse().unwrap()));
        assert!(t.contains("172.16.0.1".parse().unwrap()));
        assert!(
            !TrustedProxies::new(["10.0.0.0/8"])
                .unwrap()
                .contains("11.0.0.0".parse().unwrap())
        );
        assert!(TrustedProxies::new(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::new(["nope"]).is_err());
        assert!(
            !TrustedProxies::new(["::/0"])
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
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
    fn long_keys_are_stored_as_digests() {
        let short = Key::from("k".repeat(MAX_KEPT_BYTES));
        assert!(short.digest_if_long().is_none());
        assert!(
            Key::from("1.2.3.4".parse::<IpAddr>().unwrap())
                .digest_if_long()
                .is_none()
        );
        let long = "k".repeat(MAX_KEPT_BYTES + 1);
        let a = Key::from(long.as_str()).digest_if_long().unwrap();
        assert_eq!(a, Key::from(long.clone()).digest_if_long().unwrap());
        assert_ne!(a, Key::from(long.clone() + "x").digest_if_long().unwrap());
        assert_eq!(a.as_digest().map(|d| d.len()), Some(16));
        assert!(a.as_bytes().is_none());
        assert!(format!("{a:?}").starts_with("Key(digest "));
        assert_ne!(a.stable_hash(0), Key::from(long.as_str()).stable_hash(0));
    }

    #[test]
    fn stable_hash_is_pinned() {
        // These values are part of the contract: changing the hash moves
        // every sticky user. Update only with a deliberate, announced break.
        // (Cross-checked against an independent FNV-1a + fmix64 in Python.)
        assert_eq!(Key::from("alice").stable_hash(0), 0xa894_00d8_ae6b_0b1b);
        assert_ne!(
            Key::from("alice").stable_hash(1),
            Key::from("alice").stable_hash(0)
        );
        assert_ne!(
            Key::from("alice").stable_hash(0),
            Key::from("alicf").stable_hash(0)
        );
    }
}
