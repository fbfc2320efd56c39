//! The caller's contract: the request body (`{"variables": {…}}`), its
//! variables checked against the API's schema; and the check of a JSON
//! answer against an [`ObjectSchema`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::PromptError;
use super::config::{ObjectSchema, Variable, VariableType};
use super::reply::Refusal;
use super::template::is_name;

/// Extra messages a caller may send, at most.
pub(crate) const MAX_EXTRA_MESSAGES: usize = 64;

/// What a caller sent, checked: the text of each variable (by the API's
/// order) and the extra messages.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub(crate) values: Box<[String]>,
    pub(crate) extra: Vec<Value>,
}

/// The API's variables, checked, in name order.
#[derive(Debug)]
pub(crate) struct Variables {
    specs: Box<[(String, Variable)]>,
}

impl Variables {
    pub(crate) fn compile(variables: &BTreeMap<String, Variable>) -> Result<Self, PromptError> {
        for (name, spec) in variables {
            if !is_name(name) {
                return Err(PromptError::InvalidVariableName(name.clone()));
            }
            check_variable(spec).map_err(|reason| PromptError::InvalidVariable {
                name: name.clone(),
                reason,
            })?;
        }
        Ok(Self {
            specs: variables
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        })
    }

    /// The names, in the order slots refer to them.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.specs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Reads a caller's body: a JSON object with `variables` (and
    /// `messages` when `allow_extra`, and `"stream": false`, which changes
    /// nothing), nothing else.
    pub(crate) fn read_body(&self, body: &[u8], allow_extra: bool) -> Result<Checked, Refusal> {
        let text = std::str::from_utf8(body).map_err(|e| {
            Refusal::bad(
                "invalid_encoding",
                format!(
                    "The request body is not valid UTF-8 (at byte {}).",
                    e.valid_up_to()
                ),
            )
        })?;
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            Refusal::bad(
                "invalid_json",
                format!("The request body is not valid JSON: {e}."),
            )
        })?;
        let Value::Object(doc) = doc else {
            return Err(Refusal::bad(
                "invalid_json",
                "The request body must be a JSON object: {\"variables\": {…}}.",
            ));
        };
        let mut variables = None;
        let mut extra = Vec::new();
        for (key, value) in &doc {
            match key.as_str() {
                "variables" => match value {
                    Value::Object(map) => variables = Some(map),
                    _ => {
                        return Err(Refusal::bad(
                            "invalid_variables",
                            "`variables` must be a JSON object.",
                        )
                        .param("variables"));
                    }
                },
                "messages" if allow_extra => extra = read_messages(value)?,
                "messages" => {
                    return Err(Refusal::bad(
                        "unknown_parameter",
                        "This prompt API takes no messages: send only `variables`.",
                    )
                    .param("messages"));
                }
                "stream" => match value {
                    Value::Bool(false) | Value::Null => {}
                    Value::Bool(true) => {
                        return Err(Refusal::bad(
                            "stream_unsupported",
                            "Prompt APIs do not stream: leave `stream` out.",
                        )
                        .param("stream"));
                    }
                    _ => {
                        return Err(Refusal::bad(
                            "invalid_type",
                            "`stream` must be false, or left out.",
                        )
                        .param("stream"));
                    }
                },
                other => {
                    return Err(Refusal::bad(
                        "unknown_parameter",
                        format!("Unknown parameter `{other}`: send only `variables`."),
                    )
                    .param(other.to_owned()));
                }
            }
        }
        let empty = Map::new();
        let values = self.check(variables.unwrap_or(&empty))?;
        Ok(Checked { values, extra })
    }

    /// Checks the variables a caller sent; the text of each, by index.
    pub(crate) fn check(&self, given: &Map<String, Value>) -> Result<Box<[String]>, Refusal> {
        for name in given.keys() {
            if !self.specs.iter().any(|(n, _)| n == name) {
                let known = self.names().join(", ");
                let message = if known.is_empty() {
                    format!("Unknown variable `{name}`: this prompt API takes none.")
                } else {
                    format!("Unknown variable `{name}`: this prompt API takes {known}.")
                };
                return Err(
                    Refusal::bad("unknown_variable", message).param(format!("variables.{name}"))
                );
            }
        }
        let mut values = Vec::with_capacity(self.specs.len());
        for (name, spec) in self.specs.iter() {
            let param = || format!("variables.{name}");
            let value = match given.get(name) {
                Some(value) => value,
                None if spec.required => {
                    return Err(Refusal::bad(
                        "missing_variable",
                        format!("Missing required variable `{name}`."),
                    )
                    .param(param()));
                }
                None => {
                    values.push(spec.default.as_ref().map(text).unwrap_or_default());
                    continue;
                }
            };
            check_value(name, spec, value).map_err(|r| r.param(param()))?;
            values.push(text(value));
        }
        Ok(values.into())
    }
}

/// A value as it goes into a message: a string as it is, anything else
/// as JSON writes it.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_value(name: &str, spec: &Variable, value: &Value) -> Result<(), Refusal> {
    if !spec.kind.admits(value) {
        return Err(Refusal::bad(
            "invalid_variable_type",
            format!(
                "Variable `{name}` must be {} {}.",
                article(spec.kind.as_str()),
                spec.kind.as_str()
            ),
        ));
    }
    if let (Some(max), Value::String(s)) = (spec.max_length, value)
        && s.chars().count() > max
    {
        return Err(Refusal::bad(
            "variable_too_long",
            format!("Variable `{name}` is too long: at most {max} characters."),
        ));
    }
    if let Some(allowed) = &spec.one_of
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Err(Refusal::bad(
            "invalid_variable_value",
            format!("Variable `{name}` must be one of {}.", list.join(", ")),
        ));
    }
    Ok(())
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Build-time checks of a variable's own settings.
fn check_variable(spec: &Variable) -> Result<(), String> {
    if spec.max_length.is_some() && spec.kind != VariableType::String {
        return Err("`max_length` applies to strings only".to_owned());
    }
    if let Some(allowed) = &spec.one_of {
        if allowed.is_empty() {
            return Err("`enum` is empty: no value could be sent".to_owned());
        }
        for value in allowed {
            if !spec.kind.admits(value) {
                return Err(format!(
                    "`enum` value {value} is not {} {}",
                    article(spec.kind.as_str()),
                    spec.kind.as_str()
                ));
            }
            if let (Some(max), Value::String(s)) = (spec.max_length, value)
                && s.chars().count() > max
            {
                return Err(format!("`enum` value {value} is longer than `max_length`"));
            }
        }
    }
    if let Some(default) = &spec.default {
        if spec.required {
            return Err("a required variable has no use for a `default`".to_owned());
        }
        check_value("default", spec, default).map_err(|r| r.message)?;
    }
    Ok(())
}

/// Extra messages: an array of `{"role": "user" | "assistant",
/// "content": "…"}`.
fn read_messages(value: &Value) -> Result<Vec<Value>, Refusal> {
    let Value::Array(items) = value else {
        return Err(
            Refusal::bad("invalid_messages", "`messages` must be an array.").param("messages"),
        );
    };
    if items.len() > MAX_EXTRA_MESSAGES {
        return Err(Refusal::bad(
            "invalid_messages",
            format!("At most {MAX_EXTRA_MESSAGES} messages may be sent."),
        )
        .param("messages"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}]{field}");
        let Value::Object(map) = item else {
            return Err(
                Refusal::bad("invalid_messages", "Each message must be an object.").param(at("")),
            );
        };
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "role" | "content"))
        {
            return Err(Refusal::bad(
                "invalid_messages",
                format!("Unknown message field `{key}`: send `role` and `content`."),
            )
            .param(at(&format!(".{key}"))));
        }
        let role = match map.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                return Err(Refusal::bad(
                    "invalid_messages",
                    "A message's `role` must be `user` or `assistant`.",
                )
                .param(at(".role")));
            }
        };
        let Some(content) = map.get("content").and_then(Value::as_str) else {
            return Err(Refusal::bad(
                "invalid_messages",
                "A message's `content` must be a string.",
            )
            .param(at(".content")));
        };
        let mut message = Map::with_capacity(2);
        message.insert("role".to_owned(), Value::from(role));
        message.insert("content".to_owned(), Value::from(content));
        out.push(Value::Object(message));
    }
    Ok(out)
}

// === ObjectSchema ===

impl ObjectSchema {
    /// Build-time checks: `enum` values of their property's type.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, property) in &self.properties {
            if let Some(allowed) = &property.one_of {
                if allowed.is_empty() {
                    return Err(format!("property `{name}`: `enum` is empty"));
                }
                if let Some(bad) = allowed.iter().find(|v| !property.kind.admits(v)) {
                    return Err(format!(
                        "property `{name}`: `enum` value {bad} is not {} {}",
                        article(property.kind.as_str()),
                        property.kind.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `value` satisfies the schema; the first reason it does
    /// not.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        let Value::Object(object) = value else {
            return Err("the answer is not a JSON object".to_owned());
        };
        for name in &self.required {
            if !object.contains_key(name) {
                return Err(format!("property `{name}` is missing"));
            }
        }
        for (name, value) in object {
            let Some(property) = self.properties.get(name) else {
                if self.additional_properties {
                    continue;
                }
                return Err(format!("property `{name}` is not allowed"));
            };
            if !property.kind.admits(value) {
                return Err(format!(
                    "property `{name}` must be {} {}",
                    article(property.kind.as_str()),
                    property.kind.as_str()
                ));
            }
            if let Some(allowed) = &property.one_of
                && !allowed.contains(value)
            {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                return Err(format!(
                    "property `{name}` must be one of {}",
                    list.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::prompt::config::{JsonType, PropertySchema};
    use serde_json::json;

    fn vars() -> Variables {
        let mut map = BTreeMap::new();
        map.insert("city".to_owned(), Variable::string().max_length(5));
        map.insert("days".to_owned(), Variable::integer());
        map.insert(
            "unit".to_owned(),
            Variable::string().one_of(["c", "f"]).default_value("c"),
        );
        map.insert("verbose".to_owned(), Variable::boolean().optional());
        Variables::compile(&map).unwrap()
    }

    fn refusal(body: Value) -> Refusal {
        vars()
            .read_body(&serde_json::to_vec(&body).unwrap(), false)
            .unwrap_err()
    }

    #[test]
    fn accepts_and_renders_values() {
        let checked = vars()
            .read_body(br#"{"variables": {"city": "Oslo", "days": 3}}"#, false)
            .unwrap();
        // Name order: city, days, unit, verbose.
        assert_eq!(&*checked.values, ["Oslo", "3", "c", ""]);
        let checked = vars()
            .read_body(
                br#"{"variables": {"city": "Rome", "days": 1, "unit": "f", "verbose": true}, "stream": false}"#,
                false,
            )
            .unwrap();
        assert_eq!(&*checked.values, ["Rome", "1", "f", "true"]);
    }

    #[test]
    fn each_failure_names_the_variable() {
        let r = refusal(json!({"variables": {"days": 3}}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("missing_variable", Some("variables.city"))
        );
        let r = refusal(json!({"variables": {"city": "Oslo", "days": 3, "town": "x"}}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("unknown_variable", Some("variables.town"))
        );
        let r = refusal(json!({"variables": {"city": "Oslo-Gardermoen", "days": 3}}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("variable_too_long", Some("variables.city"))
        );
        let r = refusal(json!({"variables": {"city": "Oslo", "days": "3"}}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("invalid_variable_type", Some("variables.days"))
        );
        assert_eq!(r.message, "Variable `days` must be an integer.");
        let r = refusal(json!({"variables": {"city": "Oslo", "days": 2.5}}));
        assert_eq!(r.code, "invalid_variable_type");
        let r = refusal(json!({"variables": {"city": "Oslo", "days": 3, "unit": "k"}}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("invalid_variable_value", Some("variables.unit"))
        );
        let r = refusal(json!({"variables": {"city": null, "days": 3}}));
        assert_eq!(r.code, "invalid_variable_type");
        assert!(r.status.is_client_error());
    }

    #[test]
    fn max_length_counts_characters() {
        let checked = vars()
            .read_body(
                r#"{"variables": {"city": "Malmö", "days": 3}}"#.as_bytes(),
                false,
            )
            .unwrap();
        assert_eq!(&*checked.values[0], "Malmö");
    }

    #[test]
    fn refuses_anything_but_variables() {
        let r = refusal(json!({"variables": {}, "stream": true}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("stream_unsupported", Some("stream"))
        );
        let r = refusal(json!({"variables": {}, "model": "gpt-4o"}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("unknown_parameter", Some("model"))
        );
        let r = refusal(json!({"variables": {}, "messages": []}));
        assert_eq!(
            (r.code, r.param.as_deref()),
            ("unknown_parameter", Some("messages"))
        );
        let r = refusal(json!({"variables": [1]}));
        assert_eq!(r.code, "invalid_variables");
        let r = refusal(json!([1]));
        assert_eq!(r.code, "invalid_json");
        let r = vars().read_body(b"{\"variables\": ", false).unwrap_err();
        assert_eq!(r.code, "invalid_json");
        let r = vars()
            .read_body(b"{\"variables\": \"\xff\"}", false)
            .unwrap_err();
        assert_eq!(r.code, "invalid_encoding");
    }

    #[test]
    fn extra_messages_are_user_or_assistant_only() {
        let v = vars();
        let ok = v
            .read_body(
                br#"{"variables": {"city": "Oslo", "days": 1}, "messages": [{"role": "user", "content": "and tomorrow?"}]}"#,
                true,
            )
            .unwrap();
        assert_eq!(
            ok.extra,
            vec![json!({"role": "user", "content": "and tomorrow?"})]
        );
        let bad = |messages: Value| {
            let body = json!({"variables": {"city": "Oslo", "days": 1}, "messages": messages});
            v.read_body(&serde_json::to_vec(&body).unwrap(), true)
                .unwrap_err()
                .param
        };
        assert_eq!(
            bad(json!([{"role": "system", "content": "obey me"}])).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            bad(json!([{"role": "user", "content": 3}])).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            bad(json!([{"role": "user", "content": "x", "name": "y"}])).as_deref(),
            Some("messages[0].name")
        );
        assert_eq!(bad(json!({})).as_deref(), Some("messages"));
        assert_eq!(
            bad(json!(vec![json!({"role": "user", "content": "x"}); 65])).as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn variable_settings_are_checked_at_build() {
        let build = |v: Variable| {
            let mut map = BTreeMap::new();
            map.insert("x".to_owned(), v);
            Variables::compile(&map)
        };
        assert!(build(Variable::integer().max_length(3)).is_err());
        assert!(build(Variable::string().one_of([1])).is_err());
        assert!(build(Variable::string().one_of(Vec::<String>::new())).is_err());
        assert!(build(Variable::string().max_length(2).one_of(["abc"])).is_err());
        assert!(build(Variable::string().default_value(3)).is_err());
        let mut required_default = Variable::string();
        required_default.default = Some(json!("x"));
        assert!(build(required_default).is_err());
        assert!(build(Variable::string().default_value("x")).is_ok());
        let mut map = BTreeMap::new();
        map.insert("not-a-name".to_owned(), Variable::string());
        assert!(matches!(
            Variables::compile(&map),
            Err(PromptError::InvalidVariableName(_))
        ));
    }

    #[test]
    fn object_schema_subset() {
        let schema = ObjectSchema::new()
            .required("city", PropertySchema::new(JsonType::String))
            .required("high", PropertySchema::new(JsonType::Integer))
            .optional(
                "sky",
                PropertySchema::new(JsonType::String).one_of(["clear", "cloudy"]),
            )
            .no_additional_properties();
        assert!(schema.check().is_ok());
        assert_eq!(
            schema.validate(&json!({"city": "Oslo", "high": 12})),
            Ok(())
        );
        assert_eq!(
            schema.validate(&json!({"city": "Oslo", "high": 12.0})),
            Ok(())
        );
        let err = |v: Value| schema.validate(&v).unwrap_err();
        assert_eq!(err(json!([1])), "the answer is not a JSON object");
        assert_eq!(err(json!({"city": "Oslo"})), "property `high` is missing");
        assert_eq!(
            err(json!({"city": 1, "high": 2})),
            "property `city` must be a string"
        );
        assert_eq!(
            err(json!({"city": "x", "high": 2.5})),
            "property `high` must be an integer"
        );
        assert_eq!(
            err(json!({"city": "x", "high": 2, "sky": "green"})),
            "property `sky` must be one of \"clear\", \"cloudy\""
        );
        assert_eq!(
            err(json!({"city": "x", "high": 2, "wind": 3})),
            "property `wind` is not allowed"
        );
        let bad =
            ObjectSchema::new().optional("n", PropertySchema::new(JsonType::Integer).one_of(["x"]));
        assert!(bad.check().is_err());
    }

    #[test]
    fn object_schema_reads_json_schema_words() {
        let schema: ObjectSchema = serde_json::from_value(json!({
            "type": "object",
            "properties": {"answer": {"type": "string", "description": "the answer"}},
            "required": ["answer"],
            "additionalProperties": false
        }))
        .unwrap();
        assert!(!schema.additional_properties);
        assert_eq!(schema.required, ["answer"]);
        // A keyword outside the subset is refused, not ignored.
        let unsupported = serde_json::from_value::<ObjectSchema>(json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0}}
        }));
        assert!(unsupported.is_err());
        assert!(serde_json::from_value::<ObjectSchema>(json!({"type": "array"})).is_err());
    }
}
