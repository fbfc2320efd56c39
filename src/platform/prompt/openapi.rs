//! The OpenAPI 3.1 document a prompt API publishes of itself.

use serde_json::{Map, Value, json};

use super::config::{ErrorFormat, PromptApiConfig, ResponseMode, Variable};
use super::schema::MAX_EXTRA_MESSAGES;

/// The OpenAPI 3.1 document of the prompt API `config` describes: one
/// `POST` operation at its path, the request body's schema derived from
/// its variables (types, `required`, `maxLength`, `enum`, `default`; no
/// other member, as the API refuses them), the 200 answer of its mode,
/// and its errors (400, 413, 415, 502, and the model's own errors passed
/// through as `default`).
///
/// JSON Schema in OpenAPI 3.1 is draft 2020-12, so the schemas here are
/// plain JSON Schema.
///
/// ```
/// use switchyard::platform::prompt::{PromptApiConfig, Variable, VersionConfig, openapi};
///
/// let config = PromptApiConfig::new("greeting", "/v1/prompts/greeting", "chat")
///     .variable("name", Variable::string().max_length(40))
///     .version(VersionConfig::new("v1", 100).user("Greet {{name}}."));
/// let doc = openapi(&config);
/// assert_eq!(doc["openapi"], "3.1.0");
/// let body = &doc["paths"]["/v1/prompts/greeting"]["post"]["requestBody"];
/// let variables = &body["content"]["application/json"]["schema"]["properties"]["variables"];
/// assert_eq!(variables["properties"]["name"]["maxLength"], 40);
/// ```
pub fn openapi(config: &PromptApiConfig) -> Value {
    document(config)
}

pub(crate) fn document(config: &PromptApiConfig) -> Value {
    let mut info = Map::new();
    info.insert("title".to_owned(), Value::from(config.name.as_str()));
    info.insert(
        "version".to_owned(),
        Value::from(config.api_version.as_str()),
    );
    if let Some(description) = &config.description {
        info.insert("description".to_owned(), Value::from(description.as_str()));
    }
    let error_media = match config.errors {
        ErrorFormat::OpenAi => "application/json",
        ErrorFormat::Problem => "application/problem+json",
    };
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { error_media: { "schema": { "$ref": "#/components/schemas/Error" } } }
        })
    };
    let mut responses = Map::new();
    responses.insert("200".to_owned(), success(&config.mode));
    responses.insert(
        "400".to_owned(),
        error("The body is not JSON, or a variable is missing, unknown, too long, of the wrong type or not one of its allowed values (`param` names it), or `stream` is true."),
    );
    responses.insert(
        "413".to_owned(),
        error(&format!(
            "The body is larger than {} bytes.",
            config.body_limit
        )),
    );
    responses.insert(
        "415".to_owned(),
        error("The body is not `application/json`, or is content-encoded."),
    );
    responses.insert(
        "502".to_owned(),
        error("The model's answer could not be read, or is not what the response mode promises."),
    );
    responses.insert(
        "default".to_owned(),
        json!({
            "description": "An error of the model or of the gateway in front of it, passed through with its status.",
            "content": { "application/json": { "schema": { "type": "object" } } }
        }),
    );
    let mut operation = Map::new();
    operation.insert(
        "operationId".to_owned(),
        Value::from(operation_id(&config.name)),
    );
    operation.insert(
        "summary".to_owned(),
        Value::from(format!("Run the `{}` prompt", config.name)),
    );
    if let Some(description) = &config.description {
        operation.insert("description".to_owned(), Value::from(description.as_str()));
    }
    operation.insert(
        "requestBody".to_owned(),
        json!({
            "required": true,
            "content": { "application/json": { "schema": request_schema(config) } }
        }),
    );
    operation.insert("responses".to_owned(), Value::Object(responses));
    let mut path = Map::new();
    path.insert("post".to_owned(), Value::Object(operation));
    let mut paths = Map::new();
    paths.insert(config.path.clone(), Value::Object(path));
    json!({
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": { "schemas": { "Error": error_schema(config.errors) } }
    })
}

/// An `operationId`: the name with anything but letters, digits, `_`,
/// `-` and `.` replaced by `_`.
fn operation_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn request_schema(config: &PromptApiConfig) -> Value {
    let mut properties = Map::new();
    let required: Vec<&str> = config
        .variables
        .iter()
        .filter(|(_, v)| v.required)
        .map(|(n, _)| n.as_str())
        .collect();
    for (name, variable) in &config.variables {
        properties.insert(name.clone(), variable_schema(variable));
    }
    let mut variables = Map::new();
    variables.insert("type".to_owned(), Value::from("object"));
    variables.insert("properties".to_owned(), Value::Object(properties));
    if !required.is_empty() {
        variables.insert("required".to_owned(), json!(required));
    }
    variables.insert("additionalProperties".to_owned(), Value::Bool(false));
    let mut top = Map::new();
    top.insert("variables".to_owned(), Value::Object(variables));
    top.insert(
        "stream".to_owned(),
        json!({ "type": "boolean", "const": false, "description": "Prompt APIs do not stream." }),
    );
    if config.allow_extra_messages {
        top.insert(
            "messages".to_owned(),
            json!({
                "type": "array",
                "description": "Messages sent after the template's.",
                "maxItems": MAX_EXTRA_MESSAGES,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": { "type": "string", "enum": ["user", "assistant"] },
                        "content": { "type": "string" }
                    },
                    "required": ["role", "content"],
                    "additionalProperties": false
                }
            }),
        );
    }
    let mut schema = Map::new();
    schema.insert("type".to_owned(), Value::from("object"));
    schema.insert("properties".to_owned(), Value::Object(top));
    if !required.is_empty() {
        schema.insert("required".to_owned(), json!(["variables"]));
    }
    schema.insert("additionalProperties".to_owned(), Value::Bool(false));
    Value::Object(schema)
}

fn variable_schema(variable: &Variable) -> Value {
    let mut schema = Map::new();
    schema.insert("type".to_owned(), Value::from(variable.kind.as_str()));
    if let Some(description) = &variable.description {
        schema.insert("description".to_owned(), Value::from(description.as_str()));
    }
    if let Some(max) = variable.max_length {
        schema.insert("maxLength".to_owned(), Value::from(max));
    }
    if let Some(allowed) = &variable.one_of {
        schema.insert("enum".to_owned(), Value::Array(allowed.clone()));
    }
    if let Some(default) = &variable.default {
        schema.insert("default".to_owned(), default.clone());
    }
    Value::Object(schema)
}

fn success(mode: &ResponseMode) -> Value {
    let (description, schema) = match mode {
        ResponseMode::Full => (
            "The model's answer, an OpenAI chat completion.",
            json!({
                "type": "object",
                "properties": {
                    "id": { "type": "string" },
                    "object": { "type": "string" },
                    "created": { "type": "integer" },
                    "model": { "type": "string" },
                    "choices": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": { "type": "integer" },
                                "message": {
                                    "type": "object",
                                    "properties": {
                                        "role": { "type": "string" },
                                        "content": { "type": ["string", "null"] }
                                    }
                                },
                                "finish_reason": { "type": ["string", "null"] }
                            }
                        }
                    },
                    "usage": {
                        "type": "object",
                        "properties": {
                            "prompt_tokens": { "type": "integer" },
                            "completion_tokens": { "type": "integer" },
                            "total_tokens": { "type": "integer" }
                        }
                    }
                },
                "required": ["choices"]
            }),
        ),
        ResponseMode::Text => (
            "The model's text.",
            json!({
                "type": "object",
                "properties": { "result": { "type": "string" } },
                "required": ["result"],
                "additionalProperties": false
            }),
        ),
        ResponseMode::Json { schema } => (
            "The model's answer: a JSON object of this schema.",
            // Written in JSON Schema's words already; serializing plain
            // data cannot fail.
            serde_json::to_value(schema).unwrap_or_else(|_| json!({ "type": "object" })),
        ),
    };
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

fn error_schema(format: ErrorFormat) -> Value {
    match format {
        ErrorFormat::OpenAi => json!({
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "message": { "type": "string" },
                        "type": { "type": "string" },
                        "param": { "type": ["string", "null"] },
                        "code": { "type": ["string", "null"] }
                    },
                    "required": ["message", "type", "param", "code"]
                }
            },
            "required": ["error"]
        }),
        ErrorFormat::Problem => json!({
            "type": "object",
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "code": { "type": "string" },
                "param": { "type": "string" }
            },
            "required": ["type", "title", "status"]
        }),
    }
}
