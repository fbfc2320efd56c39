//! The rule types: plain data, built in code or deserialized with serde,
//! checked by [`TransformLayer::new`](super::TransformLayer::new).

use serde::{Deserialize, Serialize};

/// Everything a [`TransformLayer`](super::TransformLayer) does: rule sets
/// and the limits of body rewriting.
///
/// ```
/// use switchyard::transform::{RuleSet, Rules, When};
///
/// let rules = Rules::new()
///     .body_limit(64 * 1024)
///     .set(RuleSet::named("api").when(When::path_prefix("/api")).request(|r| {
///         r.headers.add("x-request-id", "{uuid}");
///         r.path.strip_prefix("/api");
///     }));
/// assert_eq!(rules.sets.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Rules {
    /// The rule sets, applied in this order to every request they match.
    pub sets: Vec<RuleSet>,
    /// The most body bytes buffered for a JSON body rule, request or
    /// response. A larger request is refused with 413; a larger response
    /// passes through untouched. Default 1 MiB.
    pub body_limit: usize,
    /// What a request body rule does when the request is not JSON
    /// (refuse it with 415 by default).
    pub non_json: NonJson,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            sets: Vec::new(),
            body_limit: 1024 * 1024,
            non_json: NonJson::Reject,
        }
    }
}

impl Rules {
    /// No rule sets, a 1 MiB body limit, non-JSON bodies refused (for
    /// requests a body rule applies to).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule set after the existing ones.
    pub fn set(mut self, set: RuleSet) -> Self {
        self.sets.push(set);
        self
    }

    /// Sets [`body_limit`](Self::body_limit).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets [`non_json`](Self::non_json).
    pub fn non_json(mut self, non_json: NonJson) -> Self {
        self.non_json = non_json;
        self
    }
}

/// What a request body rule does when the request's `Content-Type` is not
/// JSON (`application/json` or `application/*+json`), or its body is
/// content-encoded.
///
/// Refusing is the default: a rule that sets a field (say the caller's id)
/// must not be skipped because the client declared another media type for
/// a body its upstream parses as JSON anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonJson {
    /// Leave the body alone and stream it through (the other rules still
    /// apply). Only for upstreams that never read such a body as JSON.
    Skip,
    /// Refuse the request with 415 Unsupported Media Type.
    #[default]
    Reject,
}

/// What a rule does when a template value it needs is missing from the
/// request (a header, query parameter, capture, identity or target that is
/// not there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Skip the rule.
    #[default]
    Skip,
    /// Render the missing value as an empty string.
    Empty,
}

/// One rule set: a condition, request rules and response rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleSet {
    /// A name for error messages and docs.
    pub name: Option<String>,
    /// Which requests the set applies to; every request when empty.
    pub when: When,
    /// What a missing template value does.
    pub on_missing: OnMissing,
    /// Rules for the request, before it goes on.
    pub request: RequestRules,
    /// Rules for the response, on its way back.
    pub response: ResponseRules,
}

impl RuleSet {
    /// An empty rule set that applies to every request.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty rule set with a name.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Sets the condition.
    pub fn when(mut self, when: When) -> Self {
        self.when = when;
        self
    }

    /// Sets [`on_missing`](Self::on_missing).
    pub fn on_missing(mut self, on_missing: OnMissing) -> Self {
        self.on_missing = on_missing;
        self
    }

    /// Edits the request rules.
    pub fn request(mut self, edit: impl FnOnce(&mut RequestRules)) -> Self {
        edit(&mut self.request);
        self
    }

    /// Edits the response rules.
    pub fn response(mut self, edit: impl FnOnce(&mut ResponseRules)) -> Self {
        edit(&mut self.response);
        self
    }
}

/// A rule set's condition: every part that is given must hold. Conditions
/// are checked against the request as it reached the layer, before any
/// rule set changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct When {
    /// The request's method is one of these (any method when empty).
    pub methods: Vec<String>,
    /// The path is this prefix, segment-wise: `/api` matches `/api` and
    /// `/api/users`, not `/apis`.
    pub path_prefix: Option<String>,
    /// Header predicates.
    pub headers: Vec<HeaderMatch>,
}

impl When {
    /// Requests whose path starts with this prefix, segment-wise.
    pub fn path_prefix(prefix: impl Into<String>) -> Self {
        Self {
            path_prefix: Some(prefix.into()),
            ..Self::default()
        }
    }

    /// Requests with one of these methods.
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(methods: I) -> Self {
        Self {
            methods: methods.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Also requires one of these methods.
    pub fn and_methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, methods: I) -> Self {
        self.methods.extend(methods.into_iter().map(Into::into));
        self
    }

    /// Also requires the path prefix.
    pub fn and_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Also requires a header predicate.
    pub fn and_header(mut self, header: HeaderMatch) -> Self {
        self.headers.push(header);
        self
    }
}

/// A header predicate: present (default), equal to a value, or absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderMatch {
    /// The header's name.
    pub name: String,
    /// When set, some value of the header must equal this.
    pub equals: Option<String>,
    /// When true, the header must be absent.
    pub absent: bool,
}

impl HeaderMatch {
    /// The header is present.
    pub fn present(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Some value of the header equals `value`.
    pub fn equals(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            equals: Some(value.into()),
            absent: false,
        }
    }

    /// The header is absent.
    pub fn absent(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            equals: None,
            absent: true,
        }
    }
}

/// A name and a value (a template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    /// The header or query parameter name.
    pub name: String,
    /// The value; may hold templates such as `{header.x-user}`.
    pub value: String,
}

/// A rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromTo {
    /// The old name (or JSON pointer).
    pub from: String,
    /// The new name (or JSON pointer).
    pub to: String,
}

/// Header rules, applied in this fixed order: `remove`, `rename`,
/// `replace`, `add`, `append`.
///
/// Values are templates (see the [module docs](super#templates)); names are
/// case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderRules {
    /// Headers removed, every value.
    pub remove: Vec<String>,
    /// Headers renamed, every value; values `to` already had are replaced.
    pub rename: Vec<FromTo>,
    /// Headers set to a new value only if present.
    pub replace: Vec<NameValue>,
    /// Headers set only if absent.
    pub add: Vec<NameValue>,
    /// Values appended, whether or not the header is present.
    pub append: Vec<NameValue>,
}

impl HeaderRules {
    /// Removes a header.
    pub fn remove(&mut self, name: impl Into<String>) -> &mut Self {
        self.remove.push(name.into());
        self
    }

    /// Renames a header.
    pub fn rename(&mut self, from: impl Into<String>, to: impl Into<String>) -> &mut Self {
        self.rename.push(FromTo {
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Replaces a header's value if it is present.
    pub fn replace(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.replace.push(nv(name, value));
        self
    }

    /// Adds a header if it is absent.
    pub fn add(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.add.push(nv(name, value));
        self
    }

    /// Appends a value.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.append.push(nv(name, value));
        self
    }
}

fn nv(name: impl Into<String>, value: impl Into<String>) -> NameValue {
    NameValue {
        name: name.into(),
        value: value.into(),
    }
}

/// A regular-expression rewrite of the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRegex {
    /// The pattern (the `regex` crate's syntax), matched against the raw,
    /// percent-encoded path.
    pub pattern: String,
    /// The replacement for the first match: `$1`, `${name}` name capture
    /// groups, `$$` is a dollar sign.
    pub replace: String,
}

/// Path rules, applied in this order: `strip_prefix`, `regex`,
/// `add_prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PathRules {
    /// A prefix removed segment-wise (`/api` turns `/api/users` into
    /// `/users` and `/api` into `/`); paths without it are left alone.
    pub strip_prefix: Option<String>,
    /// A regular-expression rewrite; its capture groups are also the
    /// `{path.N}` / `{path.NAME}` template values.
    pub regex: Option<PathRegex>,
    /// A prefix put in front of the path; may hold templates, whose values
    /// are percent-encoded (except `{path.N}`, already encoded).
    pub add_prefix: Option<String>,
}

impl PathRules {
    /// Strips a prefix.
    pub fn strip_prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.strip_prefix = Some(prefix.into());
        self
    }

    /// Rewrites by regular expression.
    pub fn regex(&mut self, pattern: impl Into<String>, replace: impl Into<String>) -> &mut Self {
        self.regex = Some(PathRegex {
            pattern: pattern.into(),
            replace: replace.into(),
        });
        self
    }

    /// Adds a prefix.
    pub fn add_prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.add_prefix = Some(prefix.into());
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.strip_prefix.is_none() && self.regex.is_none() && self.add_prefix.is_none()
    }
}

/// Query parameter rules, applied in this order: `remove`, `rename`,
/// `replace`, `add`. Names and values are plain text: names are compared
/// percent-decoded, and what a rule writes is percent-encoded (`"en us"`
/// goes out as `en%20us`). Parameters no rule touches keep their exact
/// bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueryRules {
    /// Parameters removed, every occurrence.
    pub remove: Vec<String>,
    /// Parameters renamed, every occurrence.
    pub rename: Vec<FromTo>,
    /// Parameters given a new value if present (every occurrence folds into
    /// one, at the first one's place).
    pub replace: Vec<NameValue>,
    /// Parameters added at the end if absent.
    pub add: Vec<NameValue>,
}

impl QueryRules {
    /// Removes a parameter.
    pub fn remove(&mut self, name: impl Into<String>) -> &mut Self {
        self.remove.push(name.into());
        self
    }

    /// Renames a parameter.
    pub fn rename(&mut self, from: impl Into<String>, to: impl Into<String>) -> &mut Self {
        self.rename.push(FromTo {
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Replaces a parameter's value if present.
    pub fn replace(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.replace.push(nv(name, value));
        self
    }

    /// Adds a parameter if absent.
    pub fn add(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.add.push(nv(name, value));
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
    }
}

/// A JSON field set to a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointerValue {
    /// Where, as a JSON pointer (`/user/name`). Missing parent objects are
    /// created.
    pub pointer: String,
    /// The value; strings in it may hold templates.
    pub value: serde_json::Value,
}

/// JSON body rules (feature `json`), applied in this order: `remove`,
/// `rename`, `set`. Fields are addressed by JSON pointer (RFC 6901).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BodyRules {
    /// Fields removed.
    pub remove: Vec<String>,
    /// Fields moved to another pointer (replacing what was there).
    pub rename: Vec<FromTo>,
    /// Fields set.
    pub set: Vec<PointerValue>,
}

impl BodyRules {
    /// Removes a field.
    pub fn remove(&mut self, pointer: impl Into<String>) -> &mut Self {
        self.remove.push(pointer.into());
        self
    }

    /// Moves a field.
    pub fn rename(&mut self, from: impl Into<String>, to: impl Into<String>) -> &mut Self {
        self.rename.push(FromTo {
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Sets a field.
    pub fn set(
        &mut self,
        pointer: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> &mut Self {
        self.set.push(PointerValue {
            pointer: pointer.into(),
            value: value.into(),
        });
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty()
    }
}

/// Rules for the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestRules {
    /// Header rules.
    pub headers: HeaderRules,
    /// Path rules.
    pub path: PathRules,
    /// Query parameter rules.
    pub query: QueryRules,
    /// A new method.
    pub method: Option<String>,
    /// A new authority (`host[:port]`): the `Host` header, and the URI's
    /// authority when the request has one (HTTP/2, absolute-form).
    pub host: Option<String>,
    /// JSON body rules (feature `json`).
    pub body: BodyRules,
}

impl RequestRules {
    /// Sets the method override.
    pub fn method(&mut self, method: impl Into<String>) -> &mut Self {
        self.method = Some(method.into());
        self
    }

    /// Sets the host rewrite.
    pub fn host(&mut self, authority: impl Into<String>) -> &mut Self {
        self.host = Some(authority.into());
        self
    }
}

/// Rules for the response. Their templates read the request as it was
/// sent on (after this set's request rules).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ResponseRules {
    /// Header rules.
    pub headers: HeaderRules,
    /// JSON body rules (feature `json`).
    pub body: BodyRules,
}
