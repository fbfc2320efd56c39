//! Path normalization, so that routing, auth and the upstream agree on
//! which path a request names.
//!
//! A gateway decides by path prefix which route, and so which
//! authentication and limits, a request meets; the upstream server then
//! reads the path again, and most servers resolve `..`, merge `//` and
//! decode `%61` before they route. Unless the gateway does the same first,
//! `/public/../admin`, `//admin` or `/%61dmin` pass as a public request and
//! reach `/admin` upstream. [`NormalizePathLayer`] rewrites every request's
//! path to its normal form before anything routes on it, and refuses paths
//! that servers disagree on; [`normalize`] is the function it uses.
//!
//! ```
//! use switchyard::path::{normalize, PathError};
//!
//! assert_eq!(normalize("/api/v1/users"), Ok("/api/v1/users".into()));
//! assert_eq!(normalize("/public/../admin"), Ok("/admin".into()));
//! assert_eq!(normalize("//admin/./keys/"), Ok("/admin/keys/".into()));
//! assert_eq!(normalize("/%61dmin/%7euser"), Ok("/admin/~user".into()));
//! assert_eq!(normalize("/files/a%2fb"), Err(PathError::EncodedSeparator));
//! ```
//!
//! The normal form (RFC 3986 §6.2.2, plus merged slashes):
//!
//! * percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, and the hex digits of the others upper-cased (`%3a` → `%3A`);
//! * `.` and `..` segments are removed (§5.2.4); `..` never climbs above
//!   the root;
//! * runs of `/` become one;
//! * a trailing `/` stays.
//!
//! Refused, as [`PathError`] (a 400 from the layer): an escaped `/` or `\`
//! (`%2F`, `%5C`), an escaped NUL (`%00`), a `%` not followed by two
//! hex digits, a literal `\` (`/public\..\admin` is `/admin` to servers
//! that read it as `/`), and a `;` (`/admin;x/users` and `/public/..;/admin`
//! are `/admin/...` to servers that drop path parameters, as Tomcat does)
//! unless path parameters are allowed ([`normalize_with_params`],
//! [`NormalizePathLayer::allow_path_params`], a gateway route's
//! `allow_path_params`). Paths that are not absolute (`*` of `OPTIONS *`, the
//! authority of `CONNECT`) are left alone. The gateway
//! (`switchyard::gateway`, feature `config`) normalizes every request
//! before matching routes; in an axum app, wrap the whole `Router` (so that
//! its routing sees the normal path) and serve it as a fallback:
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use switchyard::path::NormalizePathLayer;
//! use tower::Layer;
//!
//! # async fn serve() -> std::io::Result<()> {
//! let routes = Router::new().route("/admin/keys", get(|| async { "keys" }));
//! let app = Router::new().fallback_service(NormalizePathLayer::new().layer(routes));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use std::borrow::Cow;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use tower::{Layer, Service};

use crate::future::{Rejection, ResponseFuture};
use crate::problem::Problem;

/// Why a path was refused by [`normalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// `%2F` or `%5C`: servers disagree on whether an escaped separator
    /// separates segments.
    #[error("the path has an escaped `/` or `\\` (%2F, %5C)")]
    EncodedSeparator,
    /// `%00`.
    #[error("the path has an escaped NUL (%00)")]
    EncodedNul,
    /// A `%` not followed by two hex digits.
    #[error("the path has a `%` not followed by two hex digits")]
    InvalidEscape,
    /// A literal `\`: some servers read it as `/`, others as a name.
    #[error("the path has a `\\`")]
    Backslash,
    /// A `;` (a path parameter, as in `/a;jsessionid=1/b`): servers such
    /// as Tomcat drop parameters before routing (`/admin;x/users` is their
    /// `/admin/users`, `/..;/` their `/../`), others keep them as part of
    /// the name.
    #[error("the path has a `;` (path parameters are not allowed here)")]
    PathParameter,
}

/// The normal form of `path` (see the [module docs](self)); borrowed when
/// it already is. A `;` is refused: see [`normalize_with_params`] for the
/// paths of servers that take path parameters.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_inner(path, false)
}

/// The normal form of `path` where segments may carry parameters
/// (`/a;v=1/b`), read as Tomcat reads them: a segment whose name (what
/// comes before its first `;`) is `.`, `..` or empty is that dot or empty
/// segment, and goes with its parameters (`/public/..;/admin` is
/// `/admin`). Parameters of other segments are kept. Everything else is
/// as [`normalize`]; an escaped `;` (`%3B`) is data in both.
///
/// ```
/// use switchyard::path::{normalize, normalize_with_params, PathError};
///
/// assert_eq!(normalize("/a;v=1/b"), Err(PathError::PathParameter));
/// assert_eq!(normalize_with_params("/a;v=1/b"), Ok("/a;v=1/b".into()));
/// assert_eq!(normalize_with_params("/public/..;x/admin"), Ok("/admin".into()));
/// assert_eq!(normalize_with_params("/a\\b"), Err(PathError::Backslash));
/// ```
pub fn normalize_with_params(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_inner(path, true)
}

fn normalize_inner(path: &str, params: bool) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if !params && path.contains(';') {
        return Err(PathError::PathParameter);
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let mut out = String::with_capacity(decoded.len());
    // Segments after the leading `/`; empty ones are merged slashes.
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        // The name a server that drops parameters routes on.
        let name = match segment.split_once(';') {
            Some((name, _)) if matches!(name, "" | "." | "..") => name,
            _ => segment,
        };
        match name {
            "" | "." => {}
            ".." => {
                let keep = out.rfind('/').unwrap_or(0);
                out.truncate(keep);
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
        // A path ending in `/`, `/.` or `/..` names a directory: keep the
        // slash. Merged slashes inside are not kept.
        if last && matches!(name, "" | "." | "..") {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// `path` without its segments' parameters (`/a;v=1/b` is `/a/b`): what
/// a server that drops them routes on, and so what routes are matched
/// against. Borrowed when there is no `;`.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// What a segment is to a server that decodes `%2E` and drops `;`
/// parameters.
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Name,
    Empty,
    Dot,
    DotDot,
}

#[cfg_attr(not(feature = "transform"), allow(dead_code))]
fn segment_kind(segment: &str) -> Segment {
    let name = segment.split(';').next().unwrap_or("");
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return Segment::Name;
        }
        dots += 1;
    }
    match dots {
        0 => Segment::Empty,
        1 => Segment::Dot,
        2 => Segment::DotDot,
        _ => Segment::Name,
    }
}

/// Whether a segment is `.` or `..`, escaped (`%2e`) or not, with or
/// without `;` parameters.
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    matches!(segment_kind(segment), Segment::Dot | Segment::DotDot)
}

/// `path` with its `.` and `..` segments (escaped, or with parameters, as
/// well) resolved and empty ones merged, every other byte kept: the check
/// of a path a rewrite made, whose escapes are the rewrite's own. A `\`
/// is refused.
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
pub(crate) fn resolve_dots(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let kind = segment_kind(segment);
        match kind {
            Segment::Empty | Segment::Dot => {}
            Segment::DotDot => {
                let keep = out.rfind('/').unwrap_or(0);
                out.truncate(keep);
            }
            Segment::Name => {
                out.push('/');
                out.push_str(segment);
            }
        }
        if last && kind != Segment::Name {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Whether `path` (absolute) has nothing to normalize: no `%`, `\` or
/// `;`, no empty segment, no `.` or `..` segment.
fn is_normal(path: &[u8]) -> bool {
    if path.iter().any(|&b| matches!(b, b'%' | b'\\' | b';')) {
        return false;
    }
    // Every segment starts after a `/`.
    let mut i = 0;
    while let Some(at) = path[i..].iter().position(|&b| b == b'/') {
        let rest = &path[i + at + 1..];
        let segment = rest.split(|&b| b == b'/').next().unwrap_or_default();
        let more = rest.len() > segment.len();
        if (segment.is_empty() && more) || segment == b"." || segment == b".." {
            return false;
        }
        i += at + 1;
    }
    true
}

/// Decodes escapes of unreserved characters, upper-cases the others.
fn decode_unreserved(path: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::InvalidEscape);
        };
        let v = h << 4 | l;
        match v {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0 => return Err(PathError::EncodedNul),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => out.push(v),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
            }
        }
        i += 3;
    }
    // Only ASCII bytes were decoded, into a path that was a `str`.
    String::from_utf8(out).map_err(|_| PathError::InvalidEscape)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The request's URI with its path in normal form (path parameters
/// allowed with `params`): `Ok(None)` when it already is.
pub(crate) fn normalize_uri(uri: &Uri, params: bool) -> Result<Option<Uri>, PathError> {
    let Cow::Owned(path) = normalize_inner(uri.path(), params)? else {
        return Ok(None);
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    // The normal form only removes characters, decodes unreserved ones and
    // upper-cases hex digits, so it parses wherever the original did.
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| PathError::InvalidEscape)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::InvalidEscape)
}

/// The 400 for a refused path.
pub(crate) fn rejection(e: PathError) -> Rejection {
    Rejection::new(
        Problem::new(StatusCode::BAD_REQUEST)
            .title("Invalid request path")
            .detail(e.to_string()),
    )
}

/// Normalizes every request's path; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalizePathLayer {
    params: bool,
}

impl NormalizePathLayer {
    /// The layer: paths with a `;` are refused.
    pub fn new() -> Self {
        Self { params: false }
    }

    /// Lets paths with parameters (`/a;v=1/b`) through, normalized by
    /// [`normalize_with_params`]. The app behind then routes on paths
    /// that still hold parameters: `/admin;x/users` is not its
    /// `/admin/users` route, while a server behind it that drops
    /// parameters may serve it as that; route on [`without_params`] of
    /// the path, or leave parameters refused.
    pub fn allow_path_params(mut self) -> Self {
        self.params = true;
        self
    }
}

impl<S> Layer<S> for NormalizePathLayer {
    type Service = NormalizePath<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NormalizePath {
            inner,
            params: self.params,
        }
    }
}

/// Rewrites a request's path to its normal form, or answers 400
/// (problem+json, or a gRPC status to gRPC clients) when it is refused;
/// see the [module docs](self).
#[derive(Debug, Clone)]
pub struct NormalizePath<S> {
    inner: S,
    params: bool,
}

impl<S> NormalizePath<S> {
    /// Wraps `inner`; paths with a `;` are refused (see
    /// [`NormalizePathLayer::allow_path_params`]).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            params: false,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for NormalizePath<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<crate::body::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        match normalize_uri(req.uri(), self.params) {
            Ok(None) => {}
            Ok(Some(uri)) => *req.uri_mut() = uri,
            Err(e) => return ResponseFuture::rejected(rejection(e).for_request(req.headers())),
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        for (given, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a//b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/../../../b", "/b"),
            ("/..", "/"),
            ("/../", "/"),
            ("/.", "/"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/%2e%2E/admin", "/admin"),
            ("/a/%2e/b", "/a/b"),
            ("/%41%7a%30%2D%5f%7E", "/Az0-_~"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
        ] {
            assert_eq!(normalize(given).as_deref(), Ok(want), "{given}");
            // Idempotent.
            assert_eq!(normalize(want).as_deref(), Ok(want), "{want}");
        }
        assert!(matches!(normalize("/a/b"), Ok(Cow::Borrowed(_))));
        assert_eq!(normalize("*").as_deref(), Ok("*"));
    }

    #[test]
    fn refused() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(normalize("/a%2"), Err(PathError::InvalidEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::InvalidEscape));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/public\\..\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize_with_params("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/admin;x/users"), Err(PathError::PathParameter));
        assert_eq!(
            normalize("/public/..;/admin"),
            Err(PathError::PathParameter)
        );
        // Escaped, `;` is data.
        assert_eq!(normalize("/a%3bb").as_deref(), Ok("/a%3Bb"));
    }

    #[test]
    fn rewritten_paths_have_their_dots_resolved_and_keep_their_escapes() {
        for (given, want) in [
            ("/a/b", "/a/b"),
            ("/a%2Fb/c%20d", "/a%2Fb/c%20d"),
            ("/t/../admin", "/admin"),
            ("/t/%2E%2e/admin", "/admin"),
            ("/t/..;x/admin", "/admin"),
            ("//a/./b/", "/a/b/"),
            ("/a/..", "/"),
            ("/a;v=1/b", "/a;v=1/b"),
        ] {
            assert_eq!(resolve_dots(given).as_deref(), Ok(want), "{given}");
        }
        assert!(matches!(resolve_dots("/a%2Fb"), Ok(Cow::Borrowed(_))));
        assert_eq!(resolve_dots("/a\\b"), Err(PathError::Backslash));
        for dot in [".", "..", "%2e", "%2E%2e", ".%2E", "..;x", ".;"] {
            assert!(is_dot_segment(dot), "{dot}");
        }
        for name in ["", "...", "a", ".a", "%2e%2e%2e", "%2", "a;.."] {
            assert!(!is_dot_segment(name), "{name}");
        }
    }

    #[test]
    fn parameters_are_read_as_tomcat_reads_them() {
        for (given, want) in [
            ("/a;v=1/b", "/a;v=1/b"),
            ("/public/..;/admin", "/admin"),
            ("/public/..;x=1/admin", "/admin"),
            ("/public/%2e%2e;/admin", "/admin"),
            ("/a/.;x/b", "/a/b"),
            ("/;x/admin", "/admin"),
            ("/a/b/..;", "/a/"),
            ("/a/..b;x/c", "/a/..b;x/c"),
        ] {
            assert_eq!(normalize_with_params(given).as_deref(), Ok(want), "{given}");
            assert_eq!(normalize_with_params(want).as_deref(), Ok(want), "{want}");
        }
        assert_eq!(without_params("/admin;x/users;y"), "/admin/users");
        assert!(matches!(without_params("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn uris_keep_their_query_and_authority() {
        let uri: Uri = "http://example.com:8080/a/../b?x=%2e%2e&y=1"
            .parse()
            .unwrap();
        let out = normalize_uri(&uri, false).unwrap().unwrap();
        assert_eq!(out, "http://example.com:8080/b?x=%2e%2e&y=1");
        let uri: Uri = "/a/b?q".parse().unwrap();
        assert_eq!(normalize_uri(&uri, false), Ok(None));
    }
}
