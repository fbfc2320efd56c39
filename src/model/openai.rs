//! The OpenAI wire format bits the router speaks: the error document, the
//! model list, the `model` field of a request body, and `usage`.

use std::borrow::Cow;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::body::ModelBody;
use super::catalog::Compiled;

/// An error in OpenAI's shape:
/// `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAiError {
    #[serde(skip)]
    status: StatusCode,
    error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<Cow<'static, str>>,
    code: Option<&'static str>,
}

impl OpenAiError {
    /// An error with this status, message, OpenAI error `type`, offending
    /// parameter and machine-readable code.
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &'static str,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status,
            error: ErrorBody {
                message: message.into(),
                kind,
                param: param.map(Cow::Borrowed),
                code,
            },
        }
    }

    pub(crate) fn invalid(message: impl Into<String>, code: &'static str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            Some("model"),
            Some(code),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.error.message
    }

    /// Names the offending parameter (`messages[2].content`, `stop`).
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(Cow::Owned(param.into()));
        self
    }

    /// The OpenAI error `type` (`invalid_request_error`, ...).
    pub fn kind(&self) -> &'static str {
        self.error.kind
    }

    /// The offending parameter, if any.
    pub fn param(&self) -> Option<&str> {
        self.error.param.as_deref()
    }

    /// The code (`model_not_found`, `invalid_json`, ...).
    pub fn code(&self) -> Option<&str> {
        self.error.code
    }

    /// The complete response.
    pub fn into_response<B>(self) -> Response<ModelBody<B>> {
        // Serializing strings cannot fail.
        let json = serde_json::to_vec(&self).unwrap_or_default();
        json_response(self.status, json)
    }
}

pub(crate) fn json_response<B>(status: StatusCode, json: Vec<u8>) -> Response<ModelBody<B>> {
    let len = json.len();
    let mut res = Response::new(ModelBody::full(json));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    res
}

/// The model-not-found error, listing what is available.
pub(crate) fn unknown_model(catalog: &Compiled, requested: &str) -> OpenAiError {
    let mut names: Vec<&str> = catalog.aliases.iter().map(|a| &*a.name).collect();
    names.extend(catalog.models.iter().map(|m| &*m.name));
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "The model `{requested}` does not exist. Available models: {}.",
            names.join(", ")
        ),
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    )
}

/// `GET /v1/models`: aliases, then versions.
pub(crate) fn model_list(catalog: &Compiled) -> Vec<u8> {
    #[derive(Serialize)]
    struct Entry<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        versions: Option<Vec<&'a str>>,
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Entry<'a>>,
    }
    let aliases = catalog.aliases.iter().map(|a| Entry {
        id: &a.name,
        object: "model",
        created: 0,
        owned_by: "switchyard",
        versions: Some(
            a.members
                .iter()
                .map(|&m| &*catalog.models[m].name)
                .collect(),
        ),
    });
    let models = catalog.models.iter().map(|m| Entry {
        id: &m.name,
        object: "model",
        created: 0,
        owned_by: "switchyard",
        versions: None,
    });
    let list = List {
        object: "list",
        data: aliases.chain(models).collect(),
    };
    serde_json::to_vec(&list).unwrap_or_default()
}

/// What the router reads of a request body besides the model's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyInfo {
    /// Byte range of the `model` value (the string literal with its
    /// quotes).
    pub(crate) span: (usize, usize),
    /// `"stream": true`.
    pub(crate) stream: bool,
    /// `stream_options.include_usage` as the client set it; `None` when
    /// `stream_options` is absent (or `null`).
    pub(crate) include_usage: Option<bool>,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, the
    /// largest set (a non-integer is ignored: the upstream judges it).
    pub(crate) max_tokens: Option<u64>,
}

impl ModelField {
    pub(crate) fn info(&self) -> BodyInfo {
        BodyInfo {
            span: self.span,
            stream: self.stream,
            include_usage: self.include_usage,
            max_tokens: self.max_tokens,
        }
    }
}

/// Where the `model` field's value is in a request body, and its text.
#[derive(Debug)]
pub(crate) struct ModelField {
    pub(crate) name: String,
    /// Byte range of the value (the string literal with its quotes).
    pub(crate) span: (usize, usize),
    /// `"stream": true`.
    pub(crate) stream: bool,
    /// `stream_options.include_usage` as the client set it, `None` when
    /// `stream_options` is absent (or `null`).
    pub(crate) include_usage: Option<bool>,
    /// See [`BodyInfo::max_tokens`].
    pub(crate) max_tokens: Option<u64>,
}

/// Finds the top-level `model` string of a JSON object body, checking the
/// whole body is valid JSON on the way.
pub(crate) fn model_field(body: &[u8]) -> Result<ModelField, OpenAiError> {
    #[derive(Deserialize)]
    struct Options {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    // One pass reads what the router needs of a body: the model, and
    // whether a stream asked for its usage. Other values are skipped,
    // not parsed into anything.
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        model: Option<&'a RawValue>,
        #[serde(default)]
        stream: Option<serde_json::Value>,
        #[serde(default)]
        stream_options: Option<Box<RawValue>>,
        #[serde(borrow, default)]
        max_tokens: Option<&'a RawValue>,
        #[serde(borrow, default)]
        max_completion_tokens: Option<&'a RawValue>,
        #[serde(borrow, default)]
        max_output_tokens: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "The request body is not valid UTF-8 (at byte {}).",
                e.valid_up_to()
            ),
            "invalid_request_error",
            None,
            Some("invalid_encoding"),
        )
    })?;
    if !text.trim_start().starts_with('{') {
        return Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object with a `model` field.",
            "invalid_request_error",
            None,
            Some("invalid_json"),
        ));
    }
    let probe: Probe<'_> = serde_json::from_str(text).map_err(|e| {
        let message = if e.is_data() {
            format!("The request body must be a JSON object with a `model` field: {e}.")
        } else {
            format!("The request body is not valid JSON: {e}.")
        };
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            None,
            Some("invalid_json"),
        )
    })?;
    let raw = probe.model.ok_or_else(|| {
        OpenAiError::invalid("You must provide a model parameter.", "missing_model")
    })?;
    let name: String = serde_json::from_str(raw.get())
        .map_err(|_| OpenAiError::invalid("`model` must be a string.", "invalid_model"))?;
    // The raw value borrows from `text`, so its position is an offset.
    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    let include_usage = probe.stream_options.map(|raw| {
        serde_json::from_str::<Options>(raw.get())
            .ok()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    });
    let max_tokens = [
        probe.max_tokens,
        probe.max_completion_tokens,
        probe.max_output_tokens,
    ]
    .into_iter()
    .flatten()
    .filter_map(|raw| raw.get().parse::<u64>().ok())
    .max();
    Ok(ModelField {
        name,
        max_tokens,
        span: (start, start + raw.get().len()),
        stream: probe.stream.as_ref().and_then(serde_json::Value::as_bool) == Some(true),
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_field() {
        let body = br#"{"messages":[{"role":"user","content":"\"model\": x"}], "model" : "ch\u0061t", "n":1}"#;
        let f = model_field(body).unwrap();
        assert_eq!(f.name, "chat");
        assert_eq!(&body[f.span.0..f.span.1], br#""ch\u0061t""#);
    }

    #[test]
    fn refuses_bad_bodies() {
        let code = |b: &[u8]| model_field(b).unwrap_err().code().unwrap().to_owned();
        assert_eq!(code(b"{\"model\": 3}"), "invalid_model");
        assert_eq!(code(b"{\"messages\": []}"), "missing_model");
        assert_eq!(code(b"{\"model\": \"a\""), "invalid_json");
        assert_eq!(code(b"[1]"), "invalid_json");
        assert_eq!(
            code(b"{\"model\": \"a\", \"model\": \"b\"}"),
            "invalid_json"
        );
        assert_eq!(code(b"{\"model\": \"\xff\"}"), "invalid_encoding");
    }
}
