//! JSON body rules (accepted with feature `json`): fields addressed by JSON pointer
//! (RFC 6901), values that may hold templates.

use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

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

    /// The parent container of the pointed-to value, and the last token.
    fn parent<'v>(&self, doc: &'v mut Value) -> Option<(&'v mut Value, &str)> {
        let (last, path) = self.0.split_last()?;
        let mut at = doc;
        for token in path {
            at = child(at, token)?;
        }
        Some((at, last))
    }

    /// Removes and returns the value.
    fn take(&self, doc: &mut Value) -> Option<Value> {
        match self.parent(doc)? {
            // Keep the order of the fields that stay (`preserve_order`).
            #[cfg(feature = "json")]
            (Value::Object(map), key) => map.shift_remove(key),
            #[cfg(not(feature = "json"))]
            (Value::Object(map), key) => map.remove(key),
            (Value::Array(items), key) => {
                let i = index(key, items.len())?;
                Some(items.remove(i))
            }
            _ => None,
        }
    }

    /// Sets the value, creating missing parent objects. `false` when a
    /// parent is a scalar or an array index is out of range.
    fn set(&self, doc: &mut Value, value: Value) -> bool {
        let Some((last, path)) = self.0.split_last() else {
            return false;
        };
        let mut at = doc;
        for token in path {
            at = match at {
                Value::Object(map) => map
                    .entry(token.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => match index(token, items.len()) {
                    Some(i) => &mut items[i],
                    None => return false,
                },
                _ => return false,
            };
        }
        match at {
            Value::Object(map) => {
                map.insert(last.clone(), value);
                true
            }
            Value::Array(items) if last == "-" => {
                items.push(value);
                true
            }
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items[i] = value;
                    true
                }
                Ok(i) if i == items.len() => {
                    items.push(value);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

fn child<'v>(value: &'v mut Value, token: &str) -> Option<&'v mut Value> {
    match value {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => {
            let i = index(token, items.len())?;
            items.get_mut(i)
        }
        _ => None,
    }
}

/// An array index token: digits, no leading zero, in range.
fn index(token: &str, len: usize) -> Option<usize> {
    if token.len() > 1 && token.starts_with('0') {
        return None;
    }
    token.parse::<usize>().ok().filter(|&i| i < len)
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
}

/// Parses `body`, applies `ops` in order, and serializes the result.
pub(crate) fn rewrite(body: &[u8], ops: Vec<BodyOp>) -> Result<Vec<u8>, RewriteError> {
    let mut doc: Value = serde_json::from_slice(body).map_err(RewriteError::Invalid)?;
    for op in ops {
        match op {
            BodyOp::Remove(p) => {
                p.take(&mut doc);
            }
            BodyOp::Rename(from, to) => {
                if let Some(value) = from.take(&mut doc) {
                    to.set(&mut doc, value);
                }
            }
            BodyOp::Set(p, value) => {
                p.set(&mut doc, value);
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    // Writing a `Value` into a `Vec` cannot fail.
    serde_json::to_writer(&mut out, &doc).map_err(RewriteError::Invalid)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> Arc<Pointer> {
        Pointer::parse(text, "test").unwrap()
    }

    #[test]
    fn pointers_unescape_and_refuse_bad_input() {
        assert_eq!(p("/a~1b/c~0d").0, ["a/b", "c~d"]);
        assert!(Pointer::parse("", "t").is_err());
        assert!(Pointer::parse("a", "t").is_err());
        assert!(Pointer::parse("/a~2", "t").is_err());
    }

    #[test]
    fn set_take_and_arrays() {
        let mut doc = json!({"a": [1, 2], "s": "x"});
        assert!(p("/b/c").set(&mut doc, json!(1)));
        assert!(p("/a/-").set(&mut doc, json!(3)));
        assert!(p("/a/0").set(&mut doc, json!(0)));
        assert!(!p("/a/9").set(&mut doc, json!(9)));
        assert!(!p("/s/x").set(&mut doc, json!(9)));
        assert_eq!(p("/a/01").take(&mut doc), None);
        assert_eq!(p("/a/1").take(&mut doc), Some(json!(2)));
        assert_eq!(doc, json!({"a": [0, 3], "s": "x", "b": {"c": 1}}));
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
}
