//! Checking [`Rules`] once, when the layer is built, into the form the
//! request path applies without further checks.

use std::str::FromStr;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::TransformError;
use super::rules::{HeaderRules, NonJson, OnMissing, Rules};
use super::template::Template;

/// The most rule sets one layer carries (their matches are a bit mask).
pub(crate) const MAX_SETS: usize = 64;

/// Rules, checked.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) sets: Vec<Set>,
    pub(crate) body_limit: usize,
    pub(crate) non_json: NonJson,
    pub(crate) source: Rules,
}

#[derive(Debug)]
pub(crate) struct Set {
    pub(crate) when: When,
    pub(crate) empty_when_missing: bool,
    pub(crate) strip_prefix: Option<String>,
    pub(crate) regex: Option<(Regex, String)>,
    pub(crate) add_prefix: Option<Template>,
    pub(crate) query: Option<Query>,
    pub(crate) method: Option<Method>,
    pub(crate) host: Option<(Authority, HeaderValue)>,
    pub(crate) request_headers: Headers,
    pub(crate) response_headers: Headers,
    pub(crate) request_body: Option<super::json::BodyRules>,
    pub(crate) response_body: Option<super::json::BodyRules>,
    /// Whether the set's URI rules (path or query) are non-empty.
    pub(crate) rewrites_uri: bool,
}

#[derive(Debug, Default)]
pub(crate) struct When {
    pub(crate) methods: Vec<Method>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) headers: Vec<(HeaderName, Match)>,
}

#[derive(Debug)]
pub(crate) enum Match {
    Present,
    Equals(HeaderValue),
    Absent,
}

/// A header value: fixed, or rendered per request.
#[derive(Debug)]
pub(crate) enum Value {
    Literal(HeaderValue),
    Template(Template),
}

#[derive(Debug, Default)]
pub(crate) struct Headers {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) rename: Vec<(HeaderName, HeaderName)>,
    pub(crate) replace: Vec<(HeaderName, Value)>,
    pub(crate) add: Vec<(HeaderName, Value)>,
    /// Of `add`, by index, the rules that set their header outright: the
    /// first `add` of a name that `remove` takes out and that no `rename`
    /// or `replace` touches in between (`proxy_set_header`'s idiom). Its
    /// name is left out of `remove`: the `insert` that adds it replaces
    /// what the request had, one lookup of the name where removing,
    /// looking and inserting took three.
    pub(crate) sets: Vec<bool>,
    pub(crate) append: Vec<(HeaderName, Value)>,
    pub(crate) has_templates: bool,
}

impl Headers {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) remove: Vec<String>,
    pub(crate) rename: Vec<(String, String)>,
    pub(crate) replace: Vec<(String, Template)>,
    pub(crate) add: Vec<(String, Template)>,
}

// === compile ===

pub(crate) fn compile(rules: Rules) -> Result<Compiled, TransformError> {
    if rules.sets.len() > MAX_SETS {
        return Err(TransformError::TooManySets {
            count: rules.sets.len(),
        });
    }
    let mut sets = Vec::with_capacity(rules.sets.len());
    for (i, set) in rules.sets.iter().enumerate() {
        let at = match &set.name {
            Some(name) => format!("sets[{i}](\"{name}\")"),
            None => format!("sets[{i}]"),
        };
        let at = |rest: &str| format!("{at}.{rest}");

        let when = compile_when(&set.when, &at)?;
        let req = &set.request;

        let strip_prefix = match &req.path.strip_prefix {
            Some(prefix) => Some(path_prefix(prefix, &at("request.path.strip_prefix"))?),
            None => None,
        };
        let regex = match &req.path.regex {
            Some(rule) => {
                let here = at("request.path.regex");
                let re = Regex::new(&rule.pattern).map_err(|source| TransformError::Regex {
                    at: here.clone(),
                    source: Box::new(source),
                })?;
                check_replacement(&re, &rule.replace, &here)?;
                Some((re, rule.replace.clone()))
            }
            None => None,
        };
        let re = regex.as_ref().map(|(re, _)| re);
        let add_prefix = match &req.path.add_prefix {
            Some(prefix) => {
                let here = at("request.path.add_prefix");
                let t = template(prefix, re, &here)?;
                for literal in t.literals() {
                    check_path_chars(literal, &here)?;
                }
                if !prefix.starts_with('/') {
                    return Err(TransformError::Path {
                        at: here,
                        value: prefix.clone(),
                        reason: "must start with `/`".into(),
                    });
                }
                Some(t)
            }
            None => None,
        };
        let query = if req.query.is_empty() {
            None
        } else {
            let q = &req.query;
            let mut out = Query::default();
            for (j, name) in q.remove.iter().enumerate() {
                out.remove
                    .push(param(name, &at(&format!("request.query.remove[{j}]")))?);
            }
            for (j, r) in q.rename.iter().enumerate() {
                let here = at(&format!("request.query.rename[{j}]"));
                out.rename
                    .push((param(&r.from, &here)?, param(&r.to, &here)?));
            }
            for (j, nv) in q.replace.iter().enumerate() {
                let here = at(&format!("request.query.replace[{j}]"));
                out.replace
                    .push((param(&nv.name, &here)?, template(&nv.value, re, &here)?));
            }
            for (j, nv) in q.add.iter().enumerate() {
                let here = at(&format!("request.query.add[{j}]"));
                out.add
                    .push((param(&nv.name, &here)?, template(&nv.value, re, &here)?));
            }
            Some(out)
        };
        let method = match &req.method {
            Some(m) => {
                Some(
                    Method::from_bytes(m.as_bytes()).map_err(|_| TransformError::Method {
                        at: at("request.method"),
                        method: m.clone(),
                    })?,
                )
            }
            None => None,
        };
        let host = match &req.host {
            Some(h) => {
                let here = at("request.host");
                let authority = Authority::from_str(h)
                    .ok()
                    .filter(|a| !a.as_str().contains('@'))
                    .ok_or_else(|| TransformError::Authority {
                        at: here.clone(),
                        value: h.clone(),
                    })?;
                let value = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    TransformError::Authority {
                        at: here,
                        value: h.clone(),
                    }
                })?;
                Some((authority, value))
            }
            None => None,
        };
        let request_headers =
            compile_headers(&req.headers, re, &|r| at(&format!("request.headers.{r}")))?;
        let response_headers = compile_headers(&set.response.headers, re, &|r| {
            at(&format!("response.headers.{r}"))
        })?;

        // The body machinery is always compiled; the `json` feature is the
        // user's consent to it (and keeps rewritten JSON in key order).
        if !cfg!(feature = "json") {
            for (side, body) in [("request", &req.body), ("response", &set.response.body)] {
                if !body.is_empty() {
                    return Err(TransformError::JsonFeature {
                        at: at(&format!("{side}.body")),
                    });
                }
            }
        }
        let (request_body, response_body) = (
            super::json::BodyRules::compile(&req.body, re, &|r| at(&format!("request.body.{r}")))?,
            super::json::BodyRules::compile(&set.response.body, re, &|r| {
                at(&format!("response.body.{r}"))
            })?,
        );

        sets.push(Set {
            when,
            empty_when_missing: set.on_missing == OnMissing::Empty,
            rewrites_uri: !req.path.is_empty() || query.is_some(),
            strip_prefix,
            regex,
            add_prefix,
            query,
            method,
            host,
            request_headers,
            response_headers,
            request_body,
            response_body,
        });
    }
    Ok(Compiled {
        sets,
        body_limit: rules.body_limit,
        non_json: rules.non_json,
        source: rules,
    })
}

fn compile_when(
    when: &super::rules::When,
    at: &dyn Fn(&str) -> String,
) -> Result<When, TransformError> {
    let mut out = When::default();
    for (j, m) in when.methods.iter().enumerate() {
        out.methods.push(
            Method::from_bytes(m.as_bytes()).map_err(|_| TransformError::Method {
                at: at(&format!("when.methods[{j}]")),
                method: m.clone(),
            })?,
        );
    }
    if let Some(prefix) = &when.path_prefix {
        out.path_prefix = Some(path_prefix(prefix, &at("when.path_prefix"))?);
    }
    for (j, h) in when.headers.iter().enumerate() {
        let here = at(&format!("when.headers[{j}]"));
        let name = header_name(&h.name, &here)?;
        let m = match (&h.equals, h.absent) {
            (Some(_), true) => {
                return Err(TransformError::Condition {
                    at: here,
                    reason: "`equals` and `absent` contradict each other".into(),
                });
            }
            (Some(v), false) => Match::Equals(header_value(v, &here)?),
            (None, true) => Match::Absent,
            (None, false) => Match::Present,
        };
        out.headers.push((name, m));
    }
    Ok(out)
}

fn compile_headers(
    rules: &HeaderRules,
    re: Option<&Regex>,
    at: &dyn Fn(&str) -> String,
) -> Result<Headers, TransformError> {
    let mut out = Headers::default();
    for (j, name) in rules.remove.iter().enumerate() {
        out.remove
            .push(header_name(name, &at(&format!("remove[{j}]")))?);
    }
    for (j, r) in rules.rename.iter().enumerate() {
        let here = at(&format!("rename[{j}]"));
        out.rename
            .push((header_name(&r.from, &here)?, header_name(&r.to, &here)?));
    }
    let lists = [
        ("replace", &rules.replace, &mut out.replace),
        ("add", &rules.add, &mut out.add),
        ("append", &rules.append, &mut out.append),
    ];
    let mut has_templates = false;
    for (kind, list, dst) in lists {
        for (j, nv) in list.iter().enumerate() {
            let here = at(&format!("{kind}[{j}]"));
            let name = header_name(&nv.name, &here)?;
            let t = template(&nv.value, re, &here)?;
            let value = match t.as_literal() {
                Some(text) => Value::Literal(header_value(text, &here)?),
                None => {
                    for literal in t.literals() {
                        header_value(literal, &here)?;
                    }
                    has_templates = true;
                    Value::Template(t)
                }
            };
            dst.push((name, value));
        }
    }
    out.has_templates = has_templates;
    fuse_sets(&mut out);
    Ok(out)
}

/// Marks the `add` rules that can set their header in one step (see
/// [`Headers::sets`]) and takes their names out of `remove`.
pub(crate) fn fuse_sets(headers: &mut Headers) {
    let Headers {
        remove,
        rename,
        replace,
        add,
        sets,
        ..
    } = headers;
    sets.clear();
    sets.resize(add.len(), false);
    for (k, (name, _)) in add.iter().enumerate() {
        let fusable = remove.contains(name)
            && !rename.iter().any(|(from, to)| from == name || to == name)
            && !replace.iter().any(|(n, _)| n == name)
            && !add[..k].iter().any(|(n, _)| n == name);
        if fusable {
            sets[k] = true;
            remove.retain(|n| n != name);
        }
    }
}

pub(crate) fn template(
    text: &str,
    re: Option<&Regex>,
    at: &str,
) -> Result<Template, TransformError> {
    Template::parse(text, re).map_err(|reason| TransformError::Template {
        at: at.to_owned(),
        template: text.to_owned(),
        reason,
    })
}

fn header_name(name: &str, at: &str) -> Result<HeaderName, TransformError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| TransformError::HeaderName {
        at: at.to_owned(),
        name: name.to_owned(),
    })
}

fn header_value(value: &str, at: &str) -> Result<HeaderValue, TransformError> {
    HeaderValue::from_str(value).map_err(|_| TransformError::HeaderValue {
        at: at.to_owned(),
        value: value.to_owned(),
    })
}

fn param(name: &str, at: &str) -> Result<String, TransformError> {
    if name.is_empty() {
        return Err(TransformError::Query {
            at: at.to_owned(),
            reason: "a parameter name cannot be empty".into(),
        });
    }
    Ok(name.to_owned())
}

/// A segment-wise path prefix, stored without a trailing slash.
fn path_prefix(prefix: &str, at: &str) -> Result<String, TransformError> {
    if !prefix.starts_with('/') {
        return Err(TransformError::Path {
            at: at.to_owned(),
            value: prefix.to_owned(),
            reason: "must start with `/`".into(),
        });
    }
    check_path_chars(prefix, at)?;
    Ok(prefix.trim_end_matches('/').to_owned())
}

/// Checks that `text` can stand in a path: valid URI path characters, no
/// query or fragment.
fn check_path_chars(text: &str, at: &str) -> Result<(), TransformError> {
    let err = |reason: &str| TransformError::Path {
        at: at.to_owned(),
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    if text.contains(['?', '#']) {
        return Err(err("`?` and `#` cannot appear in a path"));
    }
    let probe = format!("/{text}");
    match PathAndQuery::from_str(&probe) {
        Ok(pq) if pq.as_str() == probe => Ok(()),
        _ => Err(err(
            "not a valid URI path (percent-encode spaces and other reserved bytes)",
        )),
    }
}

/// Checks a `regex` replacement: every `$N` / `${name}` names a group of
/// `re`, and the literal text is valid in a path.
fn check_replacement(re: &Regex, replace: &str, at: &str) -> Result<(), TransformError> {
    let bad_group = |group: &str| TransformError::Template {
        at: at.to_owned(),
        template: replace.to_owned(),
        reason: format!("the pattern has no group `{group}`"),
    };
    let known = |group: &str| match group.parse::<usize>() {
        Ok(n) => n < re.captures_len(),
        Err(_) => re.capture_names().flatten().any(|g| g == group),
    };
    let mut literal = String::new();
    let mut rest = replace;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            literal.push('$');
            rest = after;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| TransformError::Template {
                at: at.to_owned(),
                template: replace.to_owned(),
                reason: "`${` is not closed".into(),
            })?;
            let group = &braced[..end];
            if !known(group) {
                return Err(bad_group(group));
            }
            rest = &braced[end + 1..];
        } else {
            // The regex crate reads the longest run of [0-9A-Za-z_] as the
            // group name.
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let group = &after[..end];
            if group.is_empty() {
                return Err(TransformError::Template {
                    at: at.to_owned(),
                    template: replace.to_owned(),
                    reason: "a lone `$` (write `$$` for a dollar sign)".into(),
                });
            }
            if !known(group) {
                return Err(bad_group(group));
            }
            rest = &after[end..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        check_path_chars(&literal, at)?;
    }
    Ok(())
}
