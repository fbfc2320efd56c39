//! gRPC-shaped rejections: the one place that decides how a refusal looks
//! to a gRPC client.
//!
//! (`examples/grpc.rs`, `cargo run --example grpc`: a tonic greeter behind a split, auth and a rate limit.)
//!
//! Every switchyard layer that refuses a request (authentication, scopes,
//! rate limits, transformation, the proxy's 502/504, the gateway's 404)
//! answers a plain HTTP request with its HTTP status and a problem+json
//! body, and a gRPC request (`content-type: application/grpc*`) with a
//! *trailers-only* response: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and a percent-encoded `grpc-message`, no body. The layer's
//! other headers (`RateLimit`, `Retry-After`, `WWW-Authenticate`) are kept.
//!
//! | HTTP status | gRPC status |
//! | --- | --- |
//! | 400, 415 | `INVALID_ARGUMENT` (3) |
//! | 401 | `UNAUTHENTICATED` (16) |
//! | 403 | `PERMISSION_DENIED` (7) |
//! | 404 | `NOT_FOUND` (5) |
//! | 413, 429 | `RESOURCE_EXHAUSTED` (8) |
//! | 502, 503 | `UNAVAILABLE` (14) |
//! | 504 | `DEADLINE_EXCEEDED` (4) |
//! | 500 | `INTERNAL` (13) |
//! | any other | `UNKNOWN` (2) |
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use switchyard::grpc;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", HeaderValue::from_static("application/grpc+proto"));
//! assert!(grpc::is_grpc(&headers));
//! assert_eq!(grpc::code_for(StatusCode::TOO_MANY_REQUESTS), 8);
//! assert_eq!(grpc::encode_message("retry in 3 s: 100%"), "retry in 3 s: 100%25");
//! ```

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// The `grpc-status` header.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-message` header.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request (or response) is gRPC: its `content-type` is
/// `application/grpc` or `application/grpc+…` / `application/grpc;…`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(is_grpc_value)
}

/// Whether a `content-type` value is gRPC's (see [`is_grpc`]).
pub(crate) fn is_grpc_value(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.len() >= 16
        && v[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(v.get(16), None | Some(b'+' | b';'))
}

/// The gRPC status code a switchyard refusal with this HTTP status gets.
pub fn code_for(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 415 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        413 | 429 => 8,
        502 | 503 => 14,
        504 => 4,
        500 => 13,
        _ => 2,
    }
}

/// The HTTP status class a gRPC status counts as in switchyard's counters:
/// `OK` is a success (200); the caller's mistakes (`INVALID_ARGUMENT`,
/// `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
/// `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`,
/// `UNAUTHENTICATED`, `CANCELLED`) are 4xx; the server's (`UNKNOWN`,
/// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
/// `DATA_LOSS`, and unknown codes) are 5xx.
pub fn http_status_for(code: u16) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        16 => StatusCode::UNAUTHORIZED,
        4 => StatusCode::GATEWAY_TIMEOUT,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `grpc-status` in a header map (a trailers-only response's headers,
/// or a response's trailers).
pub fn status_in(headers: &HeaderMap) -> Option<u16> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The status a response counts as: its HTTP status, or for a gRPC
/// response with its `grpc-status` in the headers (trailers-only), the
/// class of that.
pub fn effective_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    if status == StatusCode::OK
        && is_grpc(headers)
        && let Some(code) = status_in(headers)
    {
        return http_status_for(code);
    }
    status
}

/// Bytes the gRPC spec wants percent-encoded in `grpc-message`: outside
/// printable ASCII, and `%` itself.
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message` value as the gRPC spec asks.
pub fn encode_message(message: &str) -> String {
    utf8_percent_encode(message, MESSAGE).to_string()
}

/// Turns a refusal's response head into a trailers-only gRPC answer.
pub(crate) fn trailers_only(headers: &mut HeaderMap, status: &mut StatusCode, message: &str) {
    let code = code_for(*status);
    *status = StatusCode::OK;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.remove(CONTENT_LENGTH);
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    let message = encode_message(message);
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, v);
    }
}
