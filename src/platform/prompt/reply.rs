//! The prompt API's own answers: refusals of the caller's request (400,
//! 405, 413, 415) and of the model's answer (502), in the configured
//! [`ErrorFormat`].

use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use super::config::ErrorFormat;
use crate::body::ResponseBody;
use crate::model::OpenAiError;
use crate::problem::Problem;

/// An error the prompt API answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// The offending parameter: `variables.city`, `messages[1].role`.
    pub(crate) param: Option<String>,
    /// A machine-readable code: `missing_variable`, `invalid_answer`.
    pub(crate) code: &'static str,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code,
        }
    }

    /// A 400.
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 502: the model answered something the mode cannot give back.
    pub(crate) fn bad_answer(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "invalid_answer", message)
    }

    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The OpenAI error `type` for the status.
    fn kind(&self) -> &'static str {
        if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    /// The response, in `format`.
    pub(crate) fn into_response<B>(self, format: ErrorFormat) -> Response<ResponseBody<B>> {
        let method_not_allowed = self.status == StatusCode::METHOD_NOT_ALLOWED;
        let kind = self.kind();
        let mut res = match format {
            ErrorFormat::OpenAi => {
                let mut error =
                    OpenAiError::new(self.status, self.message, kind, None, Some(self.code));
                if let Some(param) = self.param {
                    error = error.with_param(param);
                }
                // Serializing strings cannot fail.
                let json = serde_json::to_vec(&error).unwrap_or_default();
                let len = json.len();
                let mut res = Response::new(ResponseBody::full(json));
                *res.status_mut() = self.status;
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                res.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(len));
                res
            }
            ErrorFormat::Problem => {
                let mut problem = Problem::new(self.status)
                    .detail(self.message)
                    .with("code", self.code);
                if let Some(param) = self.param {
                    problem = problem.with("param", param);
                }
                problem.into_response()
            }
        };
        if method_not_allowed {
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
        }
        res
    }
}
