//! Templates in rule values: `{header.NAME}`, `{query.NAME}`, `{path.N}`,
//! `{identity.id}`, `{target}`, ... parsed and checked when the layer is
//! built, rendered per request.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt::Write as _;

use http::HeaderName;
use http::request::Parts;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use regex::{Captures, Regex};

use crate::auth::Identity;
use crate::split::Target;

/// Where a template value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Header(HeaderName),
    Query(String),
    PathIndex(usize),
    PathName(String),
    IdentityId,
    IdentityTenant,
    IdentityTier,
    Target,
    Method,
    Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(Source),
}

/// A parsed template: literal text and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// How a rendered value is escaped for where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Header values and JSON strings: as is (header values are validated
    /// after rendering).
    None,
    /// A query component: percent-encoded.
    Query,
    /// A path: percent-encoded, except path captures, which already are.
    Path,
}

/// Characters percent-encoded in a query component.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Characters percent-encoded in a path segment value.
/// `;` too: a server that reads path parameters would take `..;` as `..`.
const PATH: &AsciiSet = &QUERY
    .add(b'/')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b';');

impl Template {
    /// Parses `text`. `{{` and `}}` are literal braces.
    pub(crate) fn parse(text: &str, regex: Option<&Regex>) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("`{{` at byte {i} is not closed"))?;
                    let name = &rest[..end];
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(Source::parse(name, regex)?));
                }
                '}' => return Err(format!("`}}` at byte {i} has no `{{` (write `}}}}`)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// The text of a template without values.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The literal parts, for build-time validation.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Literal(text) => Some(text.as_str()),
            Piece::Var(_) => None,
        })
    }

    /// Renders into `out`. `false` when a value is missing and `empty` is
    /// false (the rule is skipped).
    pub(crate) fn render(
        &self,
        ctx: &Context<'_>,
        escape: Escape,
        empty: bool,
        out: &mut String,
    ) -> bool {
        for piece in &self.pieces {
            match piece {
                // Query values are text: the literal parts are encoded like
                // the values (paths keep their literal `/`s, checked at build).
                Piece::Literal(text) if escape == Escape::Query => {
                    out.extend(utf8_percent_encode(text, QUERY));
                }
                Piece::Literal(text) => out.push_str(text),
                Piece::Var(source) => match ctx.value(source) {
                    Some(value) => match (escape, source) {
                        (Escape::None, _)
                        | (Escape::Path, Source::PathIndex(_) | Source::PathName(_)) => {
                            out.push_str(&value)
                        }
                        (Escape::Query, _) => out.extend(utf8_percent_encode(&value, QUERY)),
                        (Escape::Path, _) => out.extend(utf8_percent_encode(&value, PATH)),
                    },
                    None if empty => {}
                    None => return false,
                },
            }
        }
        true
    }
}

impl Source {
    fn parse(name: &str, regex: Option<&Regex>) -> Result<Self, String> {
        let unknown = || {
            format!(
                "`{{{name}}}` names nothing known (use header.NAME, query.NAME, path.N, \
                 identity.id, identity.tenant, identity.tier, target, method or uuid)"
            )
        };
        Ok(match name {
            "identity.id" => Self::IdentityId,
            "identity.tenant" => Self::IdentityTenant,
            "identity.tier" => Self::IdentityTier,
            "target" => Self::Target,
            "method" => Self::Method,
            "uuid" => Self::Uuid,
            _ => match name.split_once('.') {
                Some(("header", header)) => Self::Header(
                    HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| format!("`{{{name}}}`: `{header}` is not a header name"))?,
                ),
                Some(("query", param)) if !param.is_empty() => Self::Query(param.to_owned()),
                Some(("path", group)) => {
                    let Some(regex) = regex else {
                        return Err(format!(
                            "`{{{name}}}` needs a `path.regex` rule in the same rule set"
                        ));
                    };
                    match group.parse::<usize>() {
                        Ok(n) if n < regex.captures_len() => Self::PathIndex(n),
                        Ok(n) => {
                            return Err(format!(
                                "`{{{name}}}`: the path regex has no group {n} (it has {})",
                                regex.captures_len() - 1
                            ));
                        }
                        Err(_) if regex.capture_names().flatten().any(|g| g == group) => {
                            Self::PathName(group.to_owned())
                        }
                        Err(_) => {
                            return Err(format!(
                                "`{{{name}}}`: the path regex has no group named `{group}`"
                            ));
                        }
                    }
                }
                _ => return Err(unknown()),
            },
        })
    }
}

/// What templates read from one request.
pub(crate) struct Context<'a> {
    pub(crate) parts: &'a Parts,
    pub(crate) captures: Option<&'a Captures<'a>>,
    /// The request id, made on first use so that every `{uuid}` of one
    /// request is the same value.
    pub(crate) uuid: &'a OnceCell<String>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    fn value(&self, source: &Source) -> Option<Cow<'a, str>> {
        let parts = self.parts;
        match source {
            Source::Header(name) => {
                let mut values = parts.headers.get_all(name).iter();
                let first = values.next()?;
                let mut joined = String::from_utf8_lossy(first.as_bytes());
                for next in values {
                    let s = joined.to_mut();
                    s.push_str(", ");
                    s.push_str(&String::from_utf8_lossy(next.as_bytes()));
                }
                Some(joined)
            }
            Source::Query(name) => query_value(parts.uri.query()?, name),
            Source::PathIndex(n) => Some(Cow::Borrowed(self.captures?.get(*n)?.as_str())),
            Source::PathName(name) => Some(Cow::Borrowed(self.captures?.name(name)?.as_str())),
            Source::IdentityId => parts
                .extensions
                .get::<Identity>()
                .map(|i| Cow::Borrowed(i.id())),
            Source::IdentityTenant => parts
                .extensions
                .get::<Identity>()?
                .tenant()
                .map(Cow::Borrowed),
            Source::IdentityTier => parts
                .extensions
                .get::<Identity>()?
                .tier()
                .map(Cow::Borrowed),
            Source::Target => parts
                .extensions
                .get::<Target>()
                .map(|t| Cow::Borrowed(t.name())),
            Source::Method => Some(Cow::Borrowed(parts.method.as_str())),
            Source::Uuid => Some(Cow::Borrowed(self.uuid.get_or_init(new_uuid).as_str())),
        }
    }
}

/// A random (version 4) UUID from the thread's cryptographically secure
/// generator.
fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    let mut out = String::with_capacity(36);
    let _ = write!(
        out,
        "{}",
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
    );
    out
}

/// Decodes a query component (`+` is a space, as in HTML forms).
pub(crate) fn decode_component(raw: &str) -> Cow<'_, str> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(raw).decode_utf8_lossy()
    }
}

/// Percent-encodes a query component.
pub(crate) fn encode_component(value: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(value, QUERY)
}

/// The first value of the query parameter `name`, decoded.
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(key) == name).then(|| decode_component(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_render(t: &Template, req: http::Request<()>, escape: Escape) -> Option<String> {
        let (parts, ()) = req.into_parts();
        let uuid = OnceCell::new();
        let ctx = Context {
            parts: &parts,
            captures: None,
            uuid: &uuid,
        };
        let mut out = String::new();
        t.render(&ctx, escape, false, &mut out).then_some(out)
    }

    #[test]
    fn parses_literals_and_values() {
        let t = Template::parse("a {{b}} {method} c", None).unwrap();
        assert_eq!(t.as_literal(), None);
        let req = http::Request::post("/").body(()).unwrap();
        assert_eq!(ctx_render(&t, req, Escape::None).unwrap(), "a {b} POST c");
        assert_eq!(
            Template::parse("plain", None).unwrap().as_literal(),
            Some("plain")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            Template::parse("{nope}", None)
                .unwrap_err()
                .contains("names nothing known")
        );
        assert!(
            Template::parse("{path.1}", None)
                .unwrap_err()
                .contains("path.regex")
        );
        assert!(
            Template::parse("x {method", None)
                .unwrap_err()
                .contains("not closed")
        );
        assert!(
            Template::parse("x } y", None)
                .unwrap_err()
                .contains("has no `{`")
        );
        let re = Regex::new("^/(?<id>\\d+)$").unwrap();
        assert!(Template::parse("{path.1}", Some(&re)).is_ok());
        assert!(Template::parse("{path.id}", Some(&re)).is_ok());
        assert!(
            Template::parse("{path.2}", Some(&re))
                .unwrap_err()
                .contains("no group 2")
        );
        assert!(
            Template::parse("{path.x}", Some(&re))
                .unwrap_err()
                .contains("named `x`")
        );
        assert!(
            Template::parse("{header.a b}", None)
                .unwrap_err()
                .contains("not a header")
        );
    }

    #[test]
    fn query_values_are_decoded_and_reencoded() {
        let t = Template::parse("{query.q}", None).unwrap();
        let req = http::Request::get("/?a=1&q=a+b%26c").body(()).unwrap();
        assert_eq!(ctx_render(&t, req, Escape::None).unwrap(), "a b&c");
        let req = http::Request::get("/?q=a+b%26c").body(()).unwrap();
        assert_eq!(ctx_render(&t, req, Escape::Query).unwrap(), "a%20b%26c");
        let req = http::Request::get("/?a=1").body(()).unwrap();
        assert_eq!(ctx_render(&t, req, Escape::None), None);
    }
}
