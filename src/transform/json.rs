//! JSON body rules (accepted with feature `json`): fields addressed by JSON pointer
//! (RFC 6901), values that may hold templates.

use std::sync::Arc;

use std::borrow::Cow;

use regex::Regex;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::TransformError;
use super::compile::template;
use super::template::{Context, Escape, Template};

/// A parsed JSON pointer: its reference tokens, unescaped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pointer(Vec<String>);

impl Pointer {
    fn parse(text: &str, at: &str) -> Result<Arc<Self>, TransformError> {
        let err = |reason: &str| TransformError::Pointer {
            at: at.to_owned(),
            pointer: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = text.strip_prefix('/') else {
            return Err(err(if text.is_empty() {
                "the whole document cannot be the target of a rule; name a field"
            } else {
                "must start with `/`"
            }));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err(err("`~` must be followed by `0` or `1`")),
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Arc::new(Self(tokens)))
    }
}

/// An array index token: digits, no leading zero, in range.
fn index(token: &str, len: usize) -> Option<usize> {
    array_index(token).filter(|&i| i < len)
}

/// An RFC 6901 array index: `0`, or digits without a leading zero (no `+`,
/// which `usize::from_str` would take: found by the `transform_json` fuzz
/// target).
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse::<usize>().ok()
}

/// A JSON value whose strings may be templates.
#[derive(Debug)]
enum JsonTemplate {
    Literal(Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    fn compile(value: &Value, re: Option<&Regex>, at: &str) -> Result<Self, TransformError> {
        Ok(match value {
            Value::String(text) => {
                let t = template(text, re, at)?;
                match t.as_literal() {
                    Some(literal) => Self::Literal(Value::String(literal.to_owned())),
                    None => Self::String(t),
                }
            }
            Value::Array(items) => {
                let items = items
                    .iter()
                    .map(|v| Self::compile(v, re, at))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|i| matches!(i, Self::Literal(_))) {
                    Self::Literal(Value::Array(
                        items.into_iter().map(Self::into_literal).collect(),
                    ))
                } else {
                    Self::Array(items)
                }
            }
            Value::Object(map) => {
                let fields = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v, re, at)?)))
                    .collect::<Result<Vec<_>, TransformError>>()?;
                if fields.iter().all(|(_, v)| matches!(v, Self::Literal(_))) {
                    Self::Literal(Value::Object(
                        fields
                            .into_iter()
                            .map(|(k, v)| (k, v.into_literal()))
                            .collect(),
                    ))
                } else {
                    Self::Object(fields)
                }
            }
            other => Self::Literal(other.clone()),
        })
    }

    fn into_literal(self) -> Value {
        match self {
            Self::Literal(v) => v,
            _ => Value::Null,
        }
    }

    fn render(&self, ctx: &Context<'_>, empty: bool) -> Option<Value> {
        Some(match self {
            Self::Literal(v) => v.clone(),
            Self::String(t) => {
                let mut out = String::new();
                if !t.render(ctx, Escape::None, empty, &mut out) {
                    return None;
                }
                Value::String(out)
            }
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render(ctx, empty))
                    .collect::<Option<_>>()?,
            ),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.render(ctx, empty)?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }
}

/// A rule set's body rules, checked.
#[derive(Debug)]
pub(crate) struct BodyRules {
    remove: Vec<Arc<Pointer>>,
    rename: Vec<(Arc<Pointer>, Arc<Pointer>)>,
    set: Vec<(Arc<Pointer>, JsonTemplate)>,
}

impl BodyRules {
    pub(crate) fn compile(
        rules: &super::rules::BodyRules,
        re: Option<&Regex>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<Option<Self>, TransformError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let mut out = Self {
            remove: Vec::new(),
            rename: Vec::new(),
            set: Vec::new(),
        };
        for (j, p) in rules.remove.iter().enumerate() {
            out.remove
                .push(Pointer::parse(p, &at(&format!("remove[{j}]")))?);
        }
        for (j, r) in rules.rename.iter().enumerate() {
            let here = at(&format!("rename[{j}]"));
            out.rename.push((
                Pointer::parse(&r.from, &here)?,
                Pointer::parse(&r.to, &here)?,
            ));
        }
        for (j, s) in rules.set.iter().enumerate() {
            let here = at(&format!("set[{j}]"));
            out.set.push((
                Pointer::parse(&s.pointer, &here)?,
                JsonTemplate::compile(&s.value, re, &here)?,
            ));
        }
        Ok(Some(out))
    }

    /// The operations for one request, in order, with template values
    /// rendered (a `set` whose value is missing is skipped, or rendered
    /// empty, as the set says).
    pub(crate) fn plan(&self, ctx: &Context<'_>, empty: bool, ops: &mut Vec<BodyOp>) {
        ops.extend(self.remove.iter().cloned().map(BodyOp::Remove));
        ops.extend(
            self.rename
                .iter()
                .map(|(from, to)| BodyOp::Rename(from.clone(), to.clone())),
        );
        for (pointer, value) in &self.set {
            if let Some(value) = value.render(ctx, empty) {
                ops.push(BodyOp::Set(pointer.clone(), value));
            }
        }
    }
}

/// One body change for one request.
#[derive(Debug)]
pub(crate) enum BodyOp {
    Remove(Arc<Pointer>),
    Rename(Arc<Pointer>, Arc<Pointer>),
    Set(Arc<Pointer>, Value),
}

/// Why a body could not be rewritten.
#[derive(Debug)]
pub(crate) enum RewriteError {
    /// Not JSON: the parser's message.
    Invalid(serde_json::Error),
    /// An object on the way to a field a rule reaches has this key twice.
    DuplicateKey(String),
}

/// Parses `body`, applies `ops` in order, and serializes the result.
pub(crate) fn rewrite(body: &[u8], ops: Vec<BodyOp>) -> Result<Vec<u8>, RewriteError> {
    // The whole body is checked here; only what the rules reach is taken
    // apart (see `Node`).
    let raw: &RawValue = serde_json::from_slice(body).map_err(RewriteError::Invalid)?;
    let mut doc = Node::Raw(raw);
    let mut changed = false;
    for op in ops {
        changed |= match op {
            BodyOp::Remove(p) => doc.take(&p.0)?.is_some(),
            BodyOp::Rename(from, to) => match doc.take(&from.0)? {
                Some(node) => {
                    doc.set(&to.0, node)?;
                    true
                }
                None => false,
            },
            BodyOp::Set(p, value) => doc.set(&p.0, Node::Value(value))?,
        };
    }
    if !changed {
        // No rule reached anything: the body goes on byte for byte.
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    doc.write(&mut out);
    Ok(out)
}

// === Node ===

/// A JSON document taken apart only where rules reach into it.
///
/// Parsing a whole body into a `serde_json::Value` builds a map for every
/// object and a string for every key; a rule touching one field needs none
/// of that. Here the body stays raw text (validated once), and only the
/// objects and arrays on a rule's path are split into members, whose values
/// stay raw in turn. Untouched parts are written back byte for byte:
/// their spacing, number spelling and escapes do not change.
///
/// An object split here with a key twice is refused
/// ([`RewriteError::DuplicateKey`]): a rule would change one of the two,
/// and the upstream's parser might read the other.
#[derive(Debug)]
enum Node<'a> {
    /// Untouched text from the body.
    Raw(&'a RawValue),
    /// A value a rule set.
    Value(Value),
    /// An object split into members, in order.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
    /// An array split into items.
    Array(Vec<Node<'a>>),
}

impl<'a> Node<'a> {
    /// Splits a container (raw, or a value a rule set) into members or
    /// items, so that they can be changed. Scalars stay as they are.
    fn expand(&mut self) -> Result<(), RewriteError> {
        match self {
            Node::Raw(raw) => {
                let raw: &'a RawValue = raw;
                let text = raw.get().trim_start();
                // The body was validated as a whole, so these parse, but
                // for a key found twice.
                if text.starts_with('{') {
                    let Members(members) = serde_json::from_str(raw.get()).map_err(|e| {
                        let message = e.to_string();
                        let key = message
                            .strip_prefix(DUPLICATE)
                            .and_then(|rest| rest.split(SEPARATOR).next())
                            .unwrap_or_default();
                        RewriteError::DuplicateKey(key.to_owned())
                    })?;
                    *self = Node::Object(
                        members
                            .into_iter()
                            .map(|(k, v)| (k, Node::Raw(v)))
                            .collect(),
                    );
                } else if text.starts_with('[')
                    && let Ok(items) = serde_json::from_str::<Vec<&'a RawValue>>(raw.get())
                {
                    *self = Node::Array(items.into_iter().map(Node::Raw).collect());
                }
            }
            Node::Value(Value::Object(map)) => {
                let map = std::mem::take(map);
                *self = Node::Object(
                    map.into_iter()
                        .map(|(k, v)| (Cow::Owned(k), Node::Value(v)))
                        .collect(),
                );
            }
            Node::Value(Value::Array(items)) => {
                let items = std::mem::take(items);
                *self = Node::Array(items.into_iter().map(Node::Value).collect());
            }
            _ => {}
        }
        Ok(())
    }

    fn child(&mut self, token: &str) -> Result<Option<&mut Node<'a>>, RewriteError> {
        self.expand()?;
        Ok(match self {
            Node::Object(members) => members.iter_mut().find(|(k, _)| k == token).map(|(_, v)| v),
            Node::Array(items) => index(token, items.len()).and_then(|i| items.get_mut(i)),
            _ => None,
        })
    }

    /// Removes and returns the node at `tokens`.
    fn take(&mut self, tokens: &[String]) -> Result<Option<Node<'a>>, RewriteError> {
        let Some((last, path)) = tokens.split_last() else {
            return Ok(None);
        };
        let mut at = self;
        for token in path {
            at = match at.child(token)? {
                Some(child) => child,
                None => return Ok(None),
            };
        }
        at.expand()?;
        Ok(match at {
            Node::Object(members) => members
                .iter()
                .position(|(k, _)| k == last)
                .map(|i| members.remove(i).1),
            Node::Array(items) => index(last, items.len()).map(|i| items.remove(i)),
            _ => None,
        })
    }

    /// Sets the node at `tokens`, creating missing parent objects. `false`
    /// when a parent is a scalar or an array index is out of range. A field
    /// already there keeps its place; a new one goes last.
    fn set(&mut self, tokens: &[String], node: Node<'a>) -> Result<bool, RewriteError> {
        let Some((last, path)) = tokens.split_last() else {
            return Ok(false);
        };
        let mut at = self;
        for token in path {
            at.expand()?;
            at = match at {
                Node::Object(members) => {
                    let i = match members.iter().position(|(k, _)| k == token) {
                        Some(i) => i,
                        None => {
                            members.push((Cow::Owned(token.clone()), Node::Object(Vec::new())));
                            members.len() - 1
                        }
                    };
                    &mut members[i].1
                }
                Node::Array(items) => match index(token, items.len()) {
                    Some(i) => &mut items[i],
                    None => return Ok(false),
                },
                _ => return Ok(false),
            };
        }
        at.expand()?;
        Ok(match at {
            Node::Object(members) => {
                match members.iter_mut().find(|(k, _)| k == last) {
                    Some((_, v)) => *v = node,
                    None => members.push((Cow::Owned(last.clone()), node)),
                }
                true
            }
            Node::Array(items) if last == "-" => {
                items.push(node);
                true
            }
            Node::Array(items) => match array_index(last) {
                Some(i) if i < items.len() => {
                    items[i] = node;
                    true
                }
                Some(i) if i == items.len() => {
                    items.push(node);
                    true
                }
                _ => false,
            },
            _ => false,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
            // Writing a `Value` or a string into a `Vec` cannot fail.
            Node::Value(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Node::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, k.as_ref());
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
            Node::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
        }
    }
}

/// How [`Members`] reports a key found twice: `DUPLICATE`, the key,
/// `SEPARATOR` (then serde_json's position).
const DUPLICATE: &str = "duplicate key: ";
const SEPARATOR: &str = "\u{0}";

/// An object's members, keys unescaped (borrowed when they need no
/// unescaping), values raw; an error for a key found twice.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                // Small objects are searched; larger ones get a set.
                let mut seen: Option<std::collections::HashSet<Cow<'de, str>>> = None;
                while let Some(Key(k)) = map.next_key()? {
                    let twice = match &mut seen {
                        Some(seen) => !seen.insert(k.clone()),
                        None if members.len() < 16 => members.iter().any(|(m, _)| *m == k),
                        None => {
                            let mut set: std::collections::HashSet<_> =
                                members.iter().map(|(m, _)| m.clone()).collect();
                            let twice = !set.insert(k.clone());
                            seen = Some(set);
                            twice
                        }
                    };
                    if twice {
                        return Err(serde::de::Error::custom(format_args!(
                            "{DUPLICATE}{k}{SEPARATOR}"
                        )));
                    }
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> Arc<Pointer> {
        Pointer::parse(text, "test").unwrap()
    }

    #[test]
    fn array_indexes_are_rfc_6901_digits() {
        for (token, want) in [("0", Some(0)), ("12", Some(12)), ("+0", None), ("01", None)] {
            assert_eq!(array_index(token), want, "{token}");
        }
        for bad in ["", "-", " 1", "1e2", "-1"] {
            assert_eq!(array_index(bad), None, "{bad}");
        }
    }

    #[test]
    fn pointers_unescape_and_refuse_bad_input() {
        assert_eq!(p("/a~1b/c~0d").0, ["a/b", "c~d"]);
        assert!(Pointer::parse("", "t").is_err());
        assert!(Pointer::parse("a", "t").is_err());
        assert!(Pointer::parse("/a~2", "t").is_err());
    }

    fn doc_ops(body: &str, f: impl FnOnce(&mut Node<'_>)) -> String {
        let raw: &RawValue = serde_json::from_str(body).unwrap();
        let mut doc = Node::Raw(raw);
        f(&mut doc);
        let mut out = Vec::new();
        doc.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn v(value: Value) -> Node<'static> {
        Node::Value(value)
    }

    #[test]
    fn set_take_and_arrays() {
        let out = doc_ops(r#"{"a": [1, 2], "s": "x"}"#, |doc| {
            assert!(doc.set(&p("/b/c").0, v(json!(1))).unwrap());
            assert!(doc.set(&p("/a/-").0, v(json!(3))).unwrap());
            assert!(doc.set(&p("/a/0").0, v(json!(0))).unwrap());
            assert!(!doc.set(&p("/a/9").0, v(json!(9))).unwrap());
            assert!(!doc.set(&p("/s/x").0, v(json!(9))).unwrap());
            assert!(doc.take(&p("/a/01").0).unwrap().is_none());
            assert!(matches!(doc.take(&p("/a/1").0), Ok(Some(Node::Raw(r))) if r.get() == "2"));
        });
        assert_eq!(
            out,
            r#"{"a":[0,3],"s": "x","b":{"c":1}}"#.replace(r#""s": "x""#, r#""s":"x""#)
        );
    }

    #[test]
    fn untouched_parts_keep_their_bytes() {
        let body = r#"{"n": 1.0e10, "deep": {"keep": [1, 2.50, "\u00e9"], "x": 1}}"#;
        let out = doc_ops(body, |doc| {
            doc.take(&p("/deep/x").0).unwrap();
        });
        assert_eq!(out, r#"{"n":1.0e10,"deep":{"keep":[1, 2.50, "\u00e9"]}}"#);
        // Nothing reached: the body comes back as it was.
        let ops = vec![
            BodyOp::Remove(p("/nope")),
            BodyOp::Rename(p("/deep/y"), p("/z")),
        ];
        assert_eq!(rewrite(body.as_bytes(), ops).unwrap(), body.as_bytes());
        // Setting inside a value a rule set.
        let out = doc_ops("{}", |doc| {
            assert!(doc.set(&p("/a").0, v(json!({"b": [1]}))).unwrap());
            assert!(doc.set(&p("/a/b/-").0, v(json!(2))).unwrap());
            assert!(doc.set(&p("/a/c").0, v(json!(true))).unwrap());
        });
        assert_eq!(out, r#"{"a":{"b":[1,2],"c":true}}"#);
    }

    #[test]
    #[cfg(feature = "json")]
    fn rewrite_keeps_key_order() {
        let out = rewrite(
            br#"{"z":1,"a":2,"m":{"k":true}}"#,
            vec![
                BodyOp::Rename(p("/m/k"), p("/m/renamed")),
                BodyOp::Remove(p("/a")),
                BodyOp::Set(p("/b"), json!("new")),
            ],
        )
        .unwrap();
        assert_eq!(out, br#"{"z":1,"m":{"renamed":true},"b":"new"}"#);
        assert!(matches!(
            rewrite(b"{nope", vec![]),
            Err(RewriteError::Invalid(_))
        ));
    }

    #[test]
    fn keys_found_twice_on_a_rule_path_are_refused() {
        let set = |pointer: &str| vec![BodyOp::Set(p(pointer), json!("me"))];
        let dup = |body: &str, pointer: &str| match rewrite(body.as_bytes(), set(pointer)) {
            Err(RewriteError::DuplicateKey(k)) => Some(k),
            other => {
                assert!(other.is_ok(), "{body}: {other:?}");
                None
            }
        };
        assert_eq!(dup(r#"{"id":"x","id":"y"}"#, "/id").as_deref(), Some("id"));
        assert_eq!(
            dup(r#"{"id":"x","i\u0064":"y"}"#, "/id").as_deref(),
            Some("id")
        );
        assert_eq!(
            dup(r#"{"id":1,"a":{"k":1,"k":2}}"#, "/a/k").as_deref(),
            Some("k")
        );
        assert_eq!(
            dup(r#"{"a":[{"k":1,"k":2}]}"#, "/a/0/k").as_deref(),
            Some("k")
        );
        // A set over many keys.
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = format!("{{{},\"k7\":0}}", many.join(","));
        assert_eq!(dup(&body, "/x").as_deref(), Some("k7"));
        // Objects no rule walks into are left alone.
        assert_eq!(dup(r#"{"id":1,"other":{"k":1,"k":2}}"#, "/id"), None);
    }
}
