//! Applying checked rules to one request, and planning what happens to its
//! response.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{Entry, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use regex::Captures;

use super::compile::{Compiled, Headers, Match, Query, Set, Value, When};
use super::template::{Context, Escape, decode_component, encode_component};
pub(crate) use crate::body::is_json;
use crate::future::Rejection;
use crate::problem::Problem;

/// What is left to do for a request after its head was rewritten.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Body changes, in order; empty when no matching set has body rules.
    pub(crate) body: Vec<super::json::BodyOp>,
    pub(crate) response: Option<Box<ResponsePlan>>,
}

/// What happens to the response.
#[derive(Debug)]
pub(crate) struct ResponsePlan {
    pub(crate) rules: Arc<Compiled>,
    /// The sets whose response header rules apply, with their template
    /// values rendered from the request.
    pub(crate) headers: Vec<(usize, Vec<Option<String>>)>,
    pub(crate) body: Vec<super::json::BodyOp>,
    /// The request was `HEAD`: the response has no body to rewrite.
    pub(crate) head: bool,
}

impl ResponsePlan {
    pub(crate) fn apply_headers(&mut self, headers: &mut HeaderMap) {
        for (i, rendered) in &mut self.headers {
            let set = &self.rules.sets[*i];
            apply_headers(
                headers,
                &set.response_headers,
                rendered,
                set.empty_when_missing,
            );
        }
    }

    pub(crate) fn rewrites_body(&self) -> bool {
        !self.body.is_empty() && !self.head
    }
}

/// Rewrites the request head with every matching rule set, in order, and
/// returns what is left to do; or the 400 that a rewrite into an invalid
/// URI calls for.
pub(crate) fn apply(rules: &Arc<Compiled>, parts: &mut Parts) -> Result<Plan, Rejection> {
    // Conditions read the request as it arrived, before any set changed it.
    let mut matched = 0u64;
    for (i, set) in rules.sets.iter().enumerate() {
        if matches(&set.when, parts) {
            matched |= 1 << i;
        }
    }
    let mut plan = Plan::default();
    if matched == 0 {
        return Ok(plan);
    }
    let uuid = OnceCell::new();
    while matched != 0 {
        let i = matched.trailing_zeros() as usize;
        matched &= matched - 1;
        apply_set(rules, i, parts, &uuid, &mut plan)?;
    }
    Ok(plan)
}

fn apply_set(
    rules: &Arc<Compiled>,
    i: usize,
    parts: &mut Parts,
    uuid: &OnceCell<String>,
    plan: &mut Plan,
) -> Result<(), Rejection> {
    let set = &rules.sets[i];
    let empty = set.empty_when_missing;

    // The path captures are taken from a copy of the URI (a reference
    // count, not a copy of the bytes), so that they outlive the rewrite.
    let snapshot = set.regex.as_ref().map(|_| parts.uri.clone());
    let captures: Option<Captures<'_>> = match (&set.regex, &snapshot) {
        (Some((re, _)), Some(uri)) => re.captures(stripped(set, uri.path())),
        _ => None,
    };

    // Every template of the request rules reads the request as this set
    // found it, so the order rules run in never changes what a template
    // sees.
    let mut rendered = Vec::new();
    let mut prefix = None;
    let mut query = Vec::new();
    {
        let ctx = Context {
            parts,
            captures: captures.as_ref(),
            uuid,
        };
        if set.request_headers.has_templates {
            render_headers(&set.request_headers, &ctx, empty, &mut rendered);
        }
        if let Some(t) = &set.add_prefix {
            let mut out = String::new();
            prefix = Some(t.render(&ctx, Escape::Path, empty, &mut out).then_some(out));
        }
        if let Some(q) = &set.query {
            for (_, t) in q.replace.iter().chain(&q.add) {
                let mut out = String::new();
                query.push(
                    t.render(&ctx, Escape::Query, empty, &mut out)
                        .then_some(out),
                );
            }
        }
        if let Some(body) = &set.request_body {
            body.plan(&ctx, empty, &mut plan.body);
        }
    }

    apply_headers(
        &mut parts.headers,
        &set.request_headers,
        &mut rendered,
        empty,
    );
    if set.rewrites_uri {
        rewrite_uri(set, parts, captures.as_ref(), prefix.flatten(), &query)?;
    }
    if let Some(method) = &set.method {
        parts.method = method.clone();
    }
    if let Some((authority, value)) = &set.host {
        parts.headers.insert(HOST, value.clone());
        if parts.uri.authority().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = Some(authority.clone());
            parts.uri = Uri::from_parts(uri).map_err(|_| bad_uri())?;
        }
    }

    // Response rules: rendered now, from the request as it goes on.
    let response_body = set.response_body.as_ref();
    if set.response_headers.is_empty() && response_body.is_none() {
        return Ok(());
    }
    let response = plan.response.get_or_insert_with(|| {
        Box::new(ResponsePlan {
            rules: Arc::clone(rules),
            headers: Vec::new(),
            body: Vec::new(),
            head: parts.method == http::Method::HEAD,
        })
    });
    let ctx = Context {
        parts,
        captures: captures.as_ref(),
        uuid,
    };
    if !set.response_headers.is_empty() {
        let mut rendered = Vec::new();
        if set.response_headers.has_templates {
            render_headers(&set.response_headers, &ctx, empty, &mut rendered);
        }
        response.headers.push((i, rendered));
    }
    if let Some(body) = response_body {
        body.plan(&ctx, empty, &mut response.body);
    }
    Ok(())
}

// === conditions ===

fn matches(when: &When, parts: &Parts) -> bool {
    if !when.methods.is_empty() && !when.methods.contains(&parts.method) {
        return false;
    }
    if let Some(prefix) = &when.path_prefix
        && strip_segments(parts.uri.path(), prefix).is_none()
    {
        return false;
    }
    when.headers.iter().all(|(name, m)| match m {
        Match::Present => parts.headers.contains_key(name),
        Match::Absent => !parts.headers.contains_key(name),
        Match::Equals(v) => parts.headers.get_all(name).iter().any(|x| x == v),
    })
}

/// `path` without `prefix` (stored without a trailing slash), if `path`
/// starts with it segment-wise.
fn strip_segments<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// The path after the set's `strip_prefix`, when it applies.
fn stripped<'p>(set: &Set, path: &'p str) -> &'p str {
    set.strip_prefix
        .as_deref()
        .and_then(|prefix| strip_segments(path, prefix))
        .unwrap_or(path)
}

// === headers ===

fn render_headers(
    headers: &Headers,
    ctx: &Context<'_>,
    empty: bool,
    out: &mut Vec<Option<String>>,
) {
    for (_, value) in headers
        .replace
        .iter()
        .chain(&headers.add)
        .chain(&headers.append)
    {
        if let Value::Template(t) = value {
            let mut text = String::new();
            out.push(
                t.render(ctx, Escape::None, empty, &mut text)
                    .then_some(text),
            );
        }
    }
}

/// Applies header rules in their fixed order. `rendered` holds the
/// template values of `replace`, `add` and `append`, in that order.
///
/// Names go to the map by reference: it copies one only when it stores it.
/// (`entry` would copy the name up front, found or not, and copying a
/// custom name costs more than a second lookup.) A fixed value is cloned
/// only when its rule applies.
pub(crate) fn apply_headers(
    map: &mut HeaderMap,
    rules: &Headers,
    rendered: &mut [Option<String>],
    empty: bool,
) {
    for name in &rules.remove {
        map.remove(name);
    }
    for (from, to) in &rules.rename {
        if from == to {
            continue;
        }
        let Entry::Occupied(entry) = map.entry(from) else {
            continue;
        };
        let (_, mut values) = entry.remove_entry_mult();
        let first = values.next();
        // Collecting nothing allocates nothing: single values stay cheap.
        let rest: Vec<HeaderValue> = values.collect();
        if let Some(first) = first {
            map.insert(to, first);
            for value in rest {
                map.append(to, value);
            }
        }
    }
    let rendered = &mut rendered.iter_mut();
    for (name, v) in &rules.replace {
        let v = resolve(v, rendered);
        // `insert` replaces every value the name had, as `replace` means.
        if map.contains_key(name)
            && let Some(v) = v.value(empty)
        {
            map.insert(name, v);
        }
    }
    for (k, (name, v)) in rules.add.iter().enumerate() {
        let v = resolve(v, rendered);
        if rules.sets.get(k) == Some(&true) {
            // Removed, then added: what the request had goes either way.
            match v.value(empty) {
                Some(v) => map.insert(name, v),
                None => map.remove(name),
            };
            continue;
        }
        if !map.contains_key(name)
            && let Some(v) = v.value(empty)
        {
            map.insert(name, v);
        }
    }
    for (name, v) in &rules.append {
        if let Some(v) = resolve(v, rendered).value(empty) {
            map.append(name, v);
        }
    }
}

fn resolve<'a>(
    v: &'a Value,
    rendered: &mut std::slice::IterMut<'_, Option<String>>,
) -> Resolved<'a> {
    match v {
        Value::Literal(v) => Resolved::Literal(v),
        Value::Template(_) => Resolved::Rendered(rendered.next().and_then(Option::take)),
    }
}

/// A rule's value for one request.
enum Resolved<'a> {
    Literal(&'a HeaderValue),
    /// A rendered template; `None` when a value was missing.
    Rendered(Option<String>),
}

impl Resolved<'_> {
    fn value(self, empty: bool) -> Option<HeaderValue> {
        match self {
            Resolved::Literal(v) => Some(v.clone()),
            // The text's own bytes become the value's (a copy only when
            // the `String` has room to spare).
            Resolved::Rendered(text) => match HeaderValue::from_maybe_shared(Bytes::from(text?)) {
                Ok(v) => Some(v),
                // A value that cannot be a header value (a control
                // character from a decoded query parameter, say) counts as
                // missing.
                Err(_) if empty => Some(HeaderValue::from_static("")),
                Err(_) => None,
            },
        }
    }
}

// === path and query ===

fn rewrite_uri(
    set: &Set,
    parts: &mut Parts,
    captures: Option<&Captures<'_>>,
    prefix: Option<String>,
    rendered_query: &[Option<String>],
) -> Result<(), Rejection> {
    let uri = &parts.uri;
    let mut path: Cow<'_, str> = Cow::Borrowed(stripped(set, uri.path()));
    if let (Some((_, replace)), Some(caps)) = (&set.regex, captures)
        && let Some(m) = caps.get(0)
    {
        let mut out = String::with_capacity(path.len() + replace.len());
        out.push_str(&path[..m.start()]);
        caps.expand(replace, &mut out);
        out.push_str(&path[m.end()..]);
        path = Cow::Owned(out);
    }
    if !path.starts_with('/') {
        path = Cow::Owned(format!("/{path}"));
    }
    let mut added = None;
    if let Some(prefix) = prefix {
        // A value rendered into the prefix may not walk the path: `..` is
        // data to the template, not a step up.
        if prefix.split('/').any(crate::path::is_dot_segment) {
            return Err(bad_path(
                "the rewritten path prefix has a `.` or `..` segment",
            ));
        }
        // Nor split it: servers disagree on `%2F`, `%5C` and `%00` (one
        // that decodes `%2F` sees two segments), which is why the gateway
        // refuses them from clients; found by the `transform_template`
        // fuzz target.
        let lower = prefix.to_ascii_lowercase();
        if ["%2f", "%5c", "%00"].iter().any(|e| lower.contains(e)) {
            return Err(bad_path(
                "a value in the rewritten path prefix holds a `/`, `\\` or NUL",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        path = Cow::Owned(format!("{prefix}{path}"));
        added = Some(prefix.len());
    }
    // The rewritten path has its dot segments resolved again, as the
    // request's were before routing: whatever the rules made, the
    // upstream reads no `..` the gateway did not see. A path that climbs
    // out of the prefix the rules put in front is refused.
    match crate::path::resolve_dots(&path) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(normal)) => {
            if let Some(len) = added {
                let prefix = &path[..len];
                let kept = normal
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                // Resolving may merge a `//` or drop a `.` in the prefix
                // itself: compare with the prefix resolved alone.
                let prefix_resolved = crate::path::resolve_dots(prefix).ok();
                let kept = kept
                    || prefix_resolved.is_some_and(|p| {
                        let p = p.trim_end_matches('/');
                        normal
                            .strip_prefix(p)
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                    });
                if !kept {
                    return Err(bad_path(
                        "the rewritten path climbs out of the prefix the rules added",
                    ));
                }
            }
            path = Cow::Owned(normal);
        }
        Err(e) => return Err(bad_path(&format!("the rewritten path is refused: {e}"))),
    }
    let query = match &set.query {
        Some(rules) => rewrite_query(uri.query(), rules, rendered_query),
        None => uri.query().map(Cow::Borrowed),
    };
    let mut text = path.into_owned();
    if let Some(query) = query {
        text.push('?');
        text.push_str(&query);
    }
    let pq = PathAndQuery::try_from(text).map_err(|_| bad_uri())?;
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(uri).map_err(|_| bad_uri())?;
    Ok(())
}

/// The query after `rules`; `None` when no parameter is left. Parameters
/// the rules do not touch keep their bytes.
fn rewrite_query<'q>(
    query: Option<&'q str>,
    rules: &Query,
    rendered: &[Option<String>],
) -> Option<Cow<'q, str>> {
    let mut pairs: Vec<(Cow<'q, str>, Option<Cow<'q, str>>)> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (Cow::Borrowed(k), Some(Cow::Borrowed(v))),
            None => (Cow::Borrowed(pair), None),
        })
        .collect();
    let named = |pair: &(Cow<'_, str>, _), name: &str| decode_component(&pair.0) == name;

    for name in &rules.remove {
        pairs.retain(|p| !named(p, name));
    }
    for (from, to) in &rules.rename {
        for pair in pairs.iter_mut().filter(|p| named(p, from)) {
            pair.0 = Cow::Owned(encode_component(to).to_string());
        }
    }
    let mut rendered = rendered.iter();
    for (name, _) in &rules.replace {
        let value = rendered.next().and_then(Option::as_ref);
        let Some(value) = value else { continue };
        let mut first = true;
        pairs.retain_mut(|p| {
            if !named(p, name) {
                return true;
            }
            if first {
                first = false;
                p.1 = Some(Cow::Owned(value.clone()));
                return true;
            }
            false
        });
    }
    for (name, _) in &rules.add {
        let value = rendered.next().and_then(Option::as_ref);
        if let Some(value) = value
            && !pairs.iter().any(|p| named(p, name))
        {
            pairs.push((
                Cow::Owned(encode_component(name).to_string()),
                Some(Cow::Owned(value.clone())),
            ));
        }
    }
    if pairs.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (k, v) in &pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
    Some(Cow::Owned(out))
}

fn bad_path(detail: &str) -> Rejection {
    Rejection::new(
        Problem::new(StatusCode::BAD_REQUEST)
            .title("Invalid request path")
            .detail(detail.to_owned()),
    )
}

fn bad_uri() -> Rejection {
    Rejection::new(
        Problem::new(StatusCode::BAD_REQUEST).detail("the rewritten request URI is not valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_prefixes() {
        assert_eq!(strip_segments("/api", "/api"), Some("/"));
        assert_eq!(strip_segments("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_segments("/apix", "/api"), None);
        assert_eq!(strip_segments("/x", ""), Some("/x"));
    }

    #[test]
    fn json_media_types() {
        use http::header::CONTENT_TYPE;
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            m
        };
        assert!(is_json(&h("application/json")));
        assert!(is_json(&h("Application/JSON; charset=utf-8")));
        assert!(is_json(&h("application/merge-patch+json")));
        assert!(!is_json(&h("text/json")));
        assert!(!is_json(&h("application/jsonx")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn content_encoding_is_a_list() {
        use crate::body::is_encoded;
        use http::header::CONTENT_ENCODING;
        let h = |values: &[&'static str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append(CONTENT_ENCODING, HeaderValue::from_static(v));
            }
            m
        };
        assert!(!is_encoded(&h(&[])));
        assert!(!is_encoded(&h(&["identity"])));
        assert!(!is_encoded(&h(&["Identity , identity"])));
        assert!(!is_encoded(&h(&["identity", "identity,"])));
        assert!(is_encoded(&h(&["gzip"])));
        assert!(is_encoded(&h(&["identity, gzip"])));
        assert!(is_encoded(&h(&["gzip, identity"])));
        assert!(is_encoded(&h(&["identity", "br"])));
    }

    mod sets {
        use proptest::prelude::*;

        use super::super::apply_headers;
        use crate::transform::compile::{Headers, Value, fuse_sets};
        use http::{HeaderMap, HeaderName, HeaderValue};

        const NAMES: [&str; 3] = ["x-a", "x-b", "x-c"];

        fn name(i: usize) -> HeaderName {
            HeaderName::from_static(NAMES[i])
        }

        fn value(v: u8) -> Value {
            Value::Literal(HeaderValue::from(u16::from(v)))
        }

        /// Rules over three names, as written: `(remove, rename,
        /// replace, add, append)`.
        type Written = (
            Vec<usize>,
            Vec<(usize, usize)>,
            Vec<(usize, u8)>,
            Vec<(usize, u8)>,
            Vec<(usize, u8)>,
        );

        fn headers(w: &Written) -> Headers {
            let (remove, rename, replace, add, append) = w;
            let named = |l: &[(usize, u8)]| l.iter().map(|&(n, v)| (name(n), value(v))).collect();
            Headers {
                remove: remove.iter().map(|&n| name(n)).collect(),
                rename: rename.iter().map(|&(f, t)| (name(f), name(t))).collect(),
                replace: named(replace),
                add: named(add),
                sets: Vec::new(),
                append: named(append),
                has_templates: false,
            }
        }

        fn written() -> impl Strategy<Value = Written> {
            let n = || 0..NAMES.len();
            let list = |max| proptest::collection::vec((n(), any::<u8>()), 0..max);
            (
                proptest::collection::vec(n(), 0..3),
                proptest::collection::vec((n(), n()), 0..2),
                list(2),
                list(4),
                list(2),
            )
        }

        fn request() -> impl Strategy<Value = Vec<(usize, u8)>> {
            proptest::collection::vec((0..NAMES.len(), any::<u8>()), 0..5)
        }

        #[test]
        fn the_set_idiom_is_fused() {
            // remove x-a, add x-a: one `insert`.
            let mut h = headers(&(vec![0], vec![], vec![], vec![(0, 7)], vec![]));
            fuse_sets(&mut h);
            assert!(h.remove.is_empty());
            assert_eq!(h.sets, [true]);
            // A rename to the name keeps the rules as written.
            let mut h = headers(&(vec![0], vec![(1, 0)], vec![], vec![(0, 7)], vec![]));
            fuse_sets(&mut h);
            assert_eq!(h.remove.len(), 1);
            assert_eq!(h.sets, [false]);
        }

        proptest! {
            /// Fused or as written, the rules leave any request's headers
            /// the same, values and their order.
            #[test]
            fn fused_rules_do_what_the_written_ones_do(w in written(), req in request()) {
                let mut map = HeaderMap::new();
                for (n, v) in &req {
                    map.append(name(*n), HeaderValue::from(u16::from(*v)));
                }
                let mut as_written = map.clone();
                let plain = headers(&w);
                apply_headers(&mut as_written, &plain, &mut [], false);
                let mut fused = headers(&w);
                fuse_sets(&mut fused);
                apply_headers(&mut map, &fused, &mut [], false);
                for n in NAMES {
                    let got: Vec<_> = map.get_all(n).iter().collect();
                    let want: Vec<_> = as_written.get_all(n).iter().collect();
                    prop_assert_eq!(got, want, "{}", n);
                }
                prop_assert_eq!(map.len(), as_written.len());
            }
        }
    }
}
