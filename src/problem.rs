//! Rejections as `application/problem+json` responses (RFC 9457).
//!
//! Every switchyard layer that refuses a request answers with the right
//! status and a [`Problem`] document, so clients get one error shape from
//! the whole gateway. Your own handlers can use it too.
//!
//! ```
//! use http::StatusCode;
//! use switchyard::problem::Problem;
//!
//! let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS)
//!     .detail("rate limit `per-key` exceeded; retry in 3 s")
//!     .with("policy", "per-key");
//! let res = problem.into_response::<String>();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! ```

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::body::ResponseBody;

/// The media type of a problem document.
pub const CONTENT_TYPE_PROBLEM: &str = "application/problem+json";

/// A problem details document (RFC 9457).
///
/// `type` defaults to `about:blank` and `title` to the status's reason
/// phrase, as the RFC recommends for problems without a type of their own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    #[serde(serialize_with = "serialize_status")]
    status: StatusCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(flatten)]
    extensions: Map<String, Value>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem with this status, `type` `about:blank` and the status's
    /// reason phrase as `title`.
    pub fn new(status: StatusCode) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status,
            detail: None,
            extensions: Map::new(),
        }
    }

    /// Sets the `type` URI.
    pub fn kind(mut self, uri: impl Into<String>) -> Self {
        self.kind = uri.into();
        self
    }

    /// Sets the `title`.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the human-readable `detail` of this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member. Members named like the standard ones
    /// (`type`, `title`, `status`, `detail`) are ignored.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        if !matches!(name.as_str(), "type" | "title" | "status" | "detail") {
            self.extensions.insert(name, value.into());
        }
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The detail, or the title when there is none: a one-line message
    /// (what a gRPC client sees as `grpc-message`).
    pub fn message(&self) -> String {
        self.detail.clone().unwrap_or_else(|| self.title.clone())
    }

    /// The document as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a map of strings, numbers and JSON values to a Vec
        // cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A complete response: the status, `Content-Type:
    /// application/problem+json`, and the document as body. The problem
    /// itself goes in the response's extensions too, so that an outer
    /// layer can answer it in another shape (as
    /// [`OpenAiErrors`](crate::model::OpenAiErrors) does) without parsing
    /// the body.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let json = self.to_json();
        let len = json.len();
        let mut res = Response::new(ResponseBody::full(json));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PROBLEM));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        res.extensions_mut().insert(self);
        res
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// A problem is also an error, so that `?` can carry it.
impl std::error::Error for Problem {}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        Problem::into_response::<axum::body::Body>(self).map(axum::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_shape() {
        let p = Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .detail("slow down")
            .with("policy", "per-ip")
            .with("status", 200);
        let v: Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "about:blank",
                "title": "Too Many Requests",
                "status": 429,
                "detail": "slow down",
                "policy": "per-ip",
            })
        );
    }
}
