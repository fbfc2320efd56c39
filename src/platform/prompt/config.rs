//! The configuration of a prompt API: serde structs a gateway loads from
//! TOML or JSON, with builder-style constructors for code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The largest caller body a prompt API reads by default: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// The largest model answer a prompt API reads by default: 1 MiB.
pub const DEFAULT_ANSWER_LIMIT: usize = 1024 * 1024;
/// Where a prompt API sends its chat-completions requests by default.
pub const DEFAULT_UPSTREAM_PATH: &str = "/v1/chat/completions";

// === PromptApiConfig ===

/// One prompt API: where it is served, which model alias answers it, its
/// versioned templates, the variables callers send and what they get back.
///
/// Deserializes from a table such as:
///
/// ```toml
/// name = "weather-summary"
/// path = "/v1/prompts/weather"
/// alias = "chat"
/// mode = { type = "text" }
/// params = { temperature = 0.2, max_tokens = 200 }
///
/// [variables.city]
/// type = "string"
/// max_length = 80
///
/// [variables.unit]
/// type = "string"
/// enum = ["celsius", "fahrenheit"]
/// required = false
/// default = "celsius"
///
/// [[versions]]
/// name = "v1"
/// weight = 100
/// messages = [
///   { role = "system", content = "You summarise weather forecasts in one sentence." },
///   { role = "user", content = "Forecast for {{city}}, in {{unit}}." },
/// ]
/// ```
///
/// Unknown keys are refused, so that a typo is an error rather than a
/// setting silently ignored. Everything is checked when the API is built
/// ([`PromptApi::builder`](super::PromptApi::builder)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PromptApiConfig {
    /// The API's name (1 to 64 visible ASCII characters): the OpenAPI
    /// document's title and operation id.
    pub name: String,
    /// The path it is served at (the gateway routes it there; the service
    /// itself answers any path). Starts with `/`.
    pub path: String,
    /// The model alias (or model) every version asks for, as the `model`
    /// of its chat-completions request: the model router behind splits,
    /// pins and falls back as it does for any request naming it.
    pub alias: String,
    /// A description for the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The `info.version` of the OpenAPI document: the version of the
    /// API's contract (its variables and answer), not of its templates.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The variables a caller sends, by name. Shared by every version:
    /// the contract of the API.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// The template versions, weighted like a split's targets (they are
    /// one). At least one, with at least one weight above zero.
    pub versions: Vec<VersionConfig>,
    /// Fixed generation parameters added to every request
    /// (`temperature`, `max_tokens`, ...). A version's own `params`
    /// override these. `model`, `messages`, `stream` and `stream_options`
    /// are not allowed.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// What a caller gets back. Default: the model's whole answer.
    #[serde(default)]
    pub mode: ResponseMode,
    /// Whether a caller may send `messages` after the template's (roles
    /// `user` and `assistant` only). Default: no, `variables` only.
    #[serde(default)]
    pub allow_extra_messages: bool,
    /// The largest caller body read, in bytes (413 beyond). Default
    /// [`DEFAULT_BODY_LIMIT`].
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// The largest model answer read, in bytes (502 beyond). Default
    /// [`DEFAULT_ANSWER_LIMIT`].
    #[serde(default = "default_answer_limit")]
    pub answer_limit: usize,
    /// The path of the chat-completions request sent to the inner
    /// service. Default [`DEFAULT_UPSTREAM_PATH`] (what a
    /// [`ModelRouter`](crate::model::ModelRouter) recognises as OpenAI
    /// Chat Completions).
    #[serde(default = "default_upstream_path")]
    pub upstream_path: String,
    /// The shape of the API's own error answers. Default: OpenAI's.
    #[serde(default)]
    pub errors: ErrorFormat,
}

fn default_api_version() -> String {
    "1.0.0".to_owned()
}

fn default_body_limit() -> usize {
    DEFAULT_BODY_LIMIT
}

fn default_answer_limit() -> usize {
    DEFAULT_ANSWER_LIMIT
}

fn default_upstream_path() -> String {
    DEFAULT_UPSTREAM_PATH.to_owned()
}

fn yes() -> bool {
    true
}

impl PromptApiConfig {
    /// An API named `name`, served at `path`, answered by the model
    /// `alias`; add versions with [`version`](Self::version).
    pub fn new(name: impl Into<String>, path: impl Into<String>, alias: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            alias: alias.into(),
            description: None,
            api_version: default_api_version(),
            variables: BTreeMap::new(),
            versions: Vec::new(),
            params: Map::new(),
            mode: ResponseMode::Full,
            allow_extra_messages: false,
            body_limit: DEFAULT_BODY_LIMIT,
            answer_limit: DEFAULT_ANSWER_LIMIT,
            upstream_path: default_upstream_path(),
            errors: ErrorFormat::OpenAi,
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the contract's version (`info.version` in the OpenAPI
    /// document).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Declares a variable.
    pub fn variable(mut self, name: impl Into<String>, variable: Variable) -> Self {
        self.variables.insert(name.into(), variable);
        self
    }

    /// Adds a template version.
    pub fn version(mut self, version: VersionConfig) -> Self {
        self.versions.push(version);
        self
    }

    /// Sets a fixed generation parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }

    /// Sets the response mode.
    pub fn mode(mut self, mode: ResponseMode) -> Self {
        self.mode = mode;
        self
    }

    /// Lets callers send `messages` after the template's.
    pub fn allow_extra_messages(mut self, allow: bool) -> Self {
        self.allow_extra_messages = allow;
        self
    }

    /// Sets the largest caller body read, in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the largest model answer read, in bytes.
    pub fn answer_limit(mut self, bytes: usize) -> Self {
        self.answer_limit = bytes;
        self
    }

    /// Sets the path of the requests sent to the inner service.
    pub fn upstream_path(mut self, path: impl Into<String>) -> Self {
        self.upstream_path = path.into();
        self
    }

    /// Sets the shape of the API's own errors.
    pub fn errors(mut self, format: ErrorFormat) -> Self {
        self.errors = format;
        self
    }
}

// === Variable ===

/// The JSON type of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariableType {
    /// A string, inserted as it is.
    String,
    /// An integer (no fraction, no exponent), inserted as written.
    Integer,
    /// Any number, inserted as JSON writes it.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl VariableType {
    /// Its JSON Schema name.
    pub fn as_str(self) -> &'static str {
        match self {
            VariableType::String => "string",
            VariableType::Integer => "integer",
            VariableType::Number => "number",
            VariableType::Boolean => "boolean",
        }
    }

    pub(crate) fn admits(self, value: &Value) -> bool {
        match self {
            VariableType::String => value.is_string(),
            VariableType::Integer => value.is_i64() || value.is_u64(),
            VariableType::Number => value.is_number(),
            VariableType::Boolean => value.is_boolean(),
        }
    }
}

/// One variable of a prompt API: its type and what a value must satisfy.
///
/// A variable is required unless said otherwise; an optional one that is
/// not sent is replaced by its `default`, or by nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Variable {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: VariableType,
    /// Whether a caller must send it. Default: yes.
    #[serde(default = "yes")]
    pub required: bool,
    /// For strings: the most characters (Unicode scalar values) allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// The only values allowed, if set (of the variable's type).
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// For an optional variable: the value used when it is not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A description for the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Variable {
    /// A required variable of type `kind`.
    pub fn new(kind: VariableType) -> Self {
        Self {
            kind,
            required: true,
            max_length: None,
            one_of: None,
            default: None,
            description: None,
        }
    }

    /// A required string.
    pub fn string() -> Self {
        Self::new(VariableType::String)
    }

    /// A required integer.
    pub fn integer() -> Self {
        Self::new(VariableType::Integer)
    }

    /// A required number.
    pub fn number() -> Self {
        Self::new(VariableType::Number)
    }

    /// A required boolean.
    pub fn boolean() -> Self {
        Self::new(VariableType::Boolean)
    }

    /// Makes it optional.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Limits a string's length, in characters.
    pub fn max_length(mut self, chars: usize) -> Self {
        self.max_length = Some(chars);
        self
    }

    /// Allows only these values.
    pub fn one_of<I, V>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        self.one_of = Some(values.into_iter().map(Into::into).collect());
        self
    }

    /// Makes it optional, with this value when it is not sent.
    pub fn default_value(mut self, value: impl Into<Value>) -> Self {
        self.required = false;
        self.default = Some(value.into());
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

// === VersionConfig and the template ===

/// One version of a prompt API's template: a target of its split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VersionConfig {
    /// Its name, the split target's (1 to 64 visible ASCII characters,
    /// unique in the API).
    pub name: String,
    /// Its relative weight (zero allowed, as for a canary not started).
    pub weight: u32,
    /// The chat messages it sends, in order, with `{{variable}}` slots.
    pub messages: Vec<TemplateMessage>,
    /// Generation parameters of this version, over the API's.
    #[serde(default)]
    pub params: Map<String, Value>,
}

impl VersionConfig {
    /// A version named `name` with weight `weight`; add its messages.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
            messages: Vec::new(),
            params: Map::new(),
        }
    }

    /// Adds a message.
    pub fn message(mut self, message: TemplateMessage) -> Self {
        self.messages.push(message);
        self
    }

    /// Adds a system message (no slots: see
    /// [`TemplateMessage::allow_variables`]).
    pub fn system(self, content: impl Into<String>) -> Self {
        self.message(TemplateMessage::new(Role::System, content))
    }

    /// Adds a user message.
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(TemplateMessage::new(Role::User, content))
    }

    /// Adds an assistant message (no slots: see
    /// [`TemplateMessage::allow_variables`]).
    pub fn assistant(self, content: impl Into<String>) -> Self {
        self.message(TemplateMessage::new(Role::Assistant, content))
    }

    /// Sets a generation parameter of this version.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }
}

/// The role of a template message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// What the user says: where caller values go.
    User,
    /// What the model said (few-shot examples).
    Assistant,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// Its name in a chat-completions request.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a template.
///
/// `{{name}}` (spaces inside the braces allowed) is a slot for the
/// variable `name`. Slots are allowed in `user` messages; a slot in a
/// `system` or `assistant` message is refused when the API is built unless
/// the message sets `allow_variables`, because a caller's value there
/// speaks with the authority of the instructions (prompt injection). Any
/// other `{{` is refused too, so that a misspelt slot is an error, not
/// text the model reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TemplateMessage {
    /// Its role.
    pub role: Role,
    /// Its text, with slots.
    pub content: String,
    /// Allows slots in a `system` or `assistant` message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_variables: bool,
}

impl TemplateMessage {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            allow_variables: false,
        }
    }

    /// Allows slots in this message whatever its role. Think twice for a
    /// system message: the caller's text becomes instructions.
    pub fn allow_variables(mut self) -> Self {
        self.allow_variables = true;
        self
    }
}

// === ResponseMode and its schema ===

/// What a caller of a prompt API gets back from a successful answer.
///
/// In TOML: `mode = { type = "full" }`, `{ type = "text" }` or
/// `{ type = "json", schema = { ... } }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "ModeRepr", into = "ModeRepr")]
#[non_exhaustive]
pub enum ResponseMode {
    /// The model's whole answer, in OpenAI's chat-completion shape, as it
    /// came.
    #[default]
    Full,
    /// The assistant's text alone, as `{"result": "…"}`.
    Text,
    /// The assistant's text parsed as a JSON object that satisfies
    /// `schema`, answered as that object; a 502 when the model answers
    /// anything else. The request asks for JSON
    /// (`response_format: {"type": "json_object"}`) unless the
    /// parameters set a `response_format` of their own; OpenAI also wants
    /// the word "JSON" in the messages, so say it in the template.
    Json {
        /// What the object must satisfy.
        schema: ObjectSchema,
    },
}

/// [`ResponseMode`] as written: serde's internally tagged enums let
/// unknown keys of unit variants through (`{ type = "text", schema = … }`),
/// which this refuses.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRepr {
    #[serde(rename = "type")]
    kind: ModeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<ObjectSchema>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeKind {
    Full,
    Text,
    Json,
}

impl TryFrom<ModeRepr> for ResponseMode {
    type Error = &'static str;

    fn try_from(repr: ModeRepr) -> Result<Self, Self::Error> {
        match (repr.kind, repr.schema) {
            (ModeKind::Full, None) => Ok(ResponseMode::Full),
            (ModeKind::Text, None) => Ok(ResponseMode::Text),
            (ModeKind::Json, Some(schema)) => Ok(ResponseMode::Json { schema }),
            (ModeKind::Json, None) => Err("mode `json` needs a `schema`"),
            (_, Some(_)) => Err("a `schema` is for mode `json` only"),
        }
    }
}

impl From<ResponseMode> for ModeRepr {
    fn from(mode: ResponseMode) -> Self {
        match mode {
            ResponseMode::Full => ModeRepr {
                kind: ModeKind::Full,
                schema: None,
            },
            ResponseMode::Text => ModeRepr {
                kind: ModeKind::Text,
                schema: None,
            },
            ResponseMode::Json { schema } => ModeRepr {
                kind: ModeKind::Json,
                schema: Some(schema),
            },
        }
    }
}

/// The JSON type of a property of an [`ObjectSchema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonType {
    /// A string.
    String,
    /// An integer (a number without a fractional part).
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An object (its members are not checked).
    Object,
    /// An array (its items are not checked).
    Array,
    /// `null`.
    Null,
}

impl JsonType {
    /// Its JSON Schema name.
    pub fn as_str(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Integer => "integer",
            JsonType::Number => "number",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Null => "null",
        }
    }

    pub(crate) fn admits(self, value: &Value) -> bool {
        match self {
            JsonType::String => value.is_string(),
            // JSON Schema: a number with a zero fractional part is an
            // integer (`1.0` is).
            JsonType::Integer => {
                value.is_i64()
                    || value.is_u64()
                    || value
                        .as_f64()
                        .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
            }
            JsonType::Number => value.is_number(),
            JsonType::Boolean => value.is_boolean(),
            JsonType::Object => value.is_object(),
            JsonType::Array => value.is_array(),
            JsonType::Null => value.is_null(),
        }
    }
}

/// A small subset of JSON Schema for the object a
/// [`ResponseMode::Json`] answer must be: written in JSON Schema's own
/// words, so it can be pasted from (and into) an OpenAPI document.
///
/// Supported: `type` (`"object"` only), `properties` (each with `type`,
/// optional `enum` and `description`), `required`, `additionalProperties`
/// (a boolean; default `true`) and `description`. Nested objects and
/// arrays are checked for their type only. Any other keyword is refused
/// when the configuration is read, rather than silently not checked.
///
/// The crate has no JSON Schema dependency, and a whole validator (with
/// `$ref` resolution and remote documents) is more than an answer's shape
/// needs, so this subset is implemented here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ObjectSchema {
    /// Always `"object"`.
    #[serde(rename = "type", default)]
    pub kind: ObjectType,
    /// A description for the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The properties, by name.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertySchema>,
    /// Properties that must be present.
    #[serde(default)]
    pub required: Vec<String>,
    /// Whether properties not in `properties` are allowed. Default: yes.
    #[serde(rename = "additionalProperties", default = "yes")]
    pub additional_properties: bool,
}

impl ObjectSchema {
    /// An object schema with no properties, additional ones allowed.
    pub fn new() -> Self {
        Self {
            kind: ObjectType::Object,
            description: None,
            properties: BTreeMap::new(),
            required: Vec::new(),
            additional_properties: true,
        }
    }

    /// Adds a required property.
    pub fn required(mut self, name: impl Into<String>, property: PropertySchema) -> Self {
        let name = name.into();
        self.required.push(name.clone());
        self.properties.insert(name, property);
        self
    }

    /// Adds an optional property.
    pub fn optional(mut self, name: impl Into<String>, property: PropertySchema) -> Self {
        self.properties.insert(name.into(), property);
        self
    }

    /// Refuses properties not declared.
    pub fn no_additional_properties(mut self) -> Self {
        self.additional_properties = false;
        self
    }
}

impl Default for ObjectSchema {
    fn default() -> Self {
        Self::new()
    }
}

/// The `type` of an [`ObjectSchema`]: only `"object"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    /// `"object"`.
    #[default]
    Object,
}

/// One property of an [`ObjectSchema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PropertySchema {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: JsonType,
    /// The only values allowed, if set.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// A description for the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PropertySchema {
    /// A property of type `kind`.
    pub fn new(kind: JsonType) -> Self {
        Self {
            kind,
            one_of: None,
            description: None,
        }
    }

    /// Allows only these values.
    pub fn one_of<I, V>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        self.one_of = Some(values.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// The shape of a prompt API's own error answers (bad variables, body
/// too large, an answer that is not what the mode promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorFormat {
    /// OpenAI's `{"error":{"message","type","param","code"}}`, as
    /// `application/json`: what AI clients read. `param` names the
    /// offending variable (`variables.city`).
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// RFC 9457 `application/problem+json`, with `code` and `param` as
    /// extension members.
    Problem,
}
