//! Request and response rewriting: headers, path, query, method, host and
//! JSON bodies, declared as [`Rules`] and checked when the layer is built.
//!
//! (`examples/transform.rs`, `cargo run --example transform`: rules loaded from TOML in front of an echo handler.)
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::body::RequestBody;
//! use switchyard::transform::{RuleSet, Rules, TransformLayer, When};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = Rules::new().set(
//!     RuleSet::named("api v2")
//!         .when(When::path_prefix("/api"))
//!         .request(|r| {
//!             r.headers.remove("x-debug").add("x-request-id", "{uuid}");
//!             r.path.strip_prefix("/api").regex("^/users/(\\d+)$", "/v2/users/$1");
//!             r.query.rename("q", "search");
//!         })
//!         .response(|r| {
//!             r.headers.add("x-request-id", "{header.x-request-id}");
//!         }),
//! );
//! let layer = TransformLayer::new(rules)?;
//!
//! // What the upstream sees.
//! let upstream = service_fn(|req: Request<RequestBody<String>>| async move {
//!     Ok::<_, Infallible>(Response::new(req.uri().to_string()))
//! });
//! let res = layer
//!     .layer(upstream)
//!     .oneshot(Request::get("/api/users/42?q=blue").header("x-debug", "1").body(String::new())?)
//!     .await?;
//! assert!(res.headers().contains_key("x-request-id"));
//! let body = http_body_util::BodyExt::collect(res.into_body()).await?.to_bytes();
//! assert_eq!(body, "/v2/users/42?search=blue");
//! # Ok(())
//! # }
//! ```
//!
//! # Rules
//!
//! A [`TransformLayer`] carries [rule sets](RuleSet). Each set has a
//! condition ([`When`]: methods, a path prefix, header predicates) checked
//! against the request as it reached the layer; every set that matches
//! applies, in order.
//!
//! Within a set, request rules apply in this fixed order, so a set means
//! one thing however it was written:
//!
//! 1. headers: `remove`, `rename`, `replace` (only if present), `add`
//!    (only if absent), `append`;
//! 2. path: `strip_prefix`, `regex`, `add_prefix`; then query parameters:
//!    `remove`, `rename`, `replace`, `add`;
//! 3. `method`, then `host` (the `Host` header and, for HTTP/2 or
//!    absolute-form requests, the URI's authority);
//! 4. the JSON body: `remove`, `rename`, `set`.
//!
//! Response rules (headers, JSON body) apply in the same orders on the way
//! back.
//!
//! # Templates
//!
//! Values (header values, query values, `add_prefix`, strings in JSON
//! `set` values) may hold templates, checked when the layer is built:
//!
//! | template | value |
//! | --- | --- |
//! | `{header.NAME}` | the request header (several values joined with `, `) |
//! | `{query.NAME}` | the query parameter, percent-decoded |
//! | `{path.N}`, `{path.NAME}` | a capture group of the set's `path.regex` (raw, as in the path) |
//! | `{identity.id}`, `{identity.tenant}`, `{identity.tier}` | the [`Identity`](crate::auth::Identity) an auth layer recorded |
//! | `{target}` | the [`Target`](crate::split::Target) a `Split` recorded (when the transform runs inside a split's target) |
//! | `{method}` | the request method |
//! | `{uuid}` | a random UUID, the same for every `{uuid}` of one request |
//!
//! `{{` and `}}` are literal braces. Request templates read the request as
//! the set found it, before its rules ran; response templates read the
//! request as it was sent on. A value missing at request time skips the
//! rule, or renders as an empty string with [`OnMissing::Empty`]. Values
//! put into a query or a path are percent-encoded.
//!
//! # Bodies
//!
//! Only requests a body rule applies to are buffered, up to
//! [`Rules::body_limit`] (413 beyond it); every other request streams
//! through untouched, and so does a request without a body. A request body
//! rule meets a non-JSON request (or a content-encoded one, whose bytes are
//! not JSON text) with [`NonJson::Reject`] (415, the default) or
//! [`NonJson::Skip`] (stream it through); invalid JSON is a 400, and so is
//! an object with a key twice on the way to a field a rule reaches
//! (`{"user_id": "x", "user_id": "y"}`: parsers disagree on which one
//! counts, so a rule setting the first could be undone by the second). `Content-Length` is set to the rewritten length.
//! Response body rules rewrite JSON responses up to the same limit; larger,
//! non-JSON or invalid responses pass through untouched, every byte. A
//! response without body rules, such as a server-sent event stream, is
//! never buffered. Body rules need the cargo feature `json`.
//!
//! # From a config file
//!
//! [`Rules`] is plain serde data:
//!
//! ```
//! use switchyard::transform::{Rules, TransformLayer};
//!
//! let rules: Rules = toml::from_str(r#"
//!     body_limit = 65536
//!
//!     [[sets]]
//!     name = "legacy clients"
//!     when = { path_prefix = "/v1", headers = [{ name = "x-client", equals = "legacy" }] }
//!     request.headers.rename = [{ from = "x-user", to = "x-forwarded-user" }]
//!     request.path = { strip_prefix = "/v1", add_prefix = "/api/v2" }
//!     request.query.add = [{ name = "tenant", value = "{identity.tenant}" }]
//!     response.headers.append = [{ name = "via", value = "switchyard" }]
//! "#)?;
//! TransformLayer::new(rules)?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! Errors name the rule: a header value with a newline in `sets[0]`'s
//! `add` list is refused with `sets[0]("legacy clients").request.headers.add[0]:
//! invalid header value ...`.

mod apply;
mod compile;
pub mod future;
mod json;
mod rules;
mod service;
mod template;

pub use rules::{
    BodyRules, FromTo, HeaderMatch, HeaderRules, NameValue, NonJson, OnMissing, PathRegex,
    PathRules, PointerValue, QueryRules, RequestRules, ResponseRules, RuleSet, Rules, When,
};
pub use service::{Transform, TransformHandle, TransformLayer, TransformStats};

/// Why rules were refused when a [`TransformLayer`] was built or its rules
/// replaced. Every variant names the rule (`at`), as a path into
/// [`Rules`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// More rule sets than one layer carries (64).
    #[error("a transform layer carries at most 64 rule sets, got {count}; use several layers")]
    TooManySets {
        /// How many were given.
        count: usize,
    },
    /// A header name that is not a valid HTTP field name.
    #[error("{at}: invalid header name `{name}`")]
    HeaderName {
        /// The rule.
        at: String,
        /// The name.
        name: String,
    },
    /// A header value with characters HTTP does not allow (control
    /// characters, newlines).
    #[error("{at}: invalid header value `{value}`")]
    HeaderValue {
        /// The rule.
        at: String,
        /// The value.
        value: String,
    },
    /// A method that is not a valid HTTP method token.
    #[error("{at}: invalid method `{method}`")]
    Method {
        /// The rule.
        at: String,
        /// The method.
        method: String,
    },
    /// A host that is not a valid `host[:port]` authority.
    #[error("{at}: invalid host `{value}` (expected host[:port])")]
    Authority {
        /// The rule.
        at: String,
        /// The value.
        value: String,
    },
    /// A path or prefix that cannot stand in a URI path.
    #[error("{at}: invalid path `{value}`: {reason}")]
    Path {
        /// The rule.
        at: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A query parameter rule that cannot work.
    #[error("{at}: {reason}")]
    Query {
        /// The rule.
        at: String,
        /// Why.
        reason: String,
    },
    /// A regular expression that does not compile.
    #[error("{at}: invalid regular expression: {source}")]
    Regex {
        /// The rule.
        at: String,
        /// The regex crate's error.
        #[source]
        source: Box<regex::Error>,
    },
    /// A template (or regex replacement) that names an unknown value or is
    /// malformed.
    #[error("{at}: template `{template}`: {reason}")]
    Template {
        /// The rule.
        at: String,
        /// The template text.
        template: String,
        /// Why.
        reason: String,
    },
    /// A malformed JSON pointer.
    #[error("{at}: invalid JSON pointer `{pointer}`: {reason}")]
    Pointer {
        /// The rule.
        at: String,
        /// The pointer.
        pointer: String,
        /// Why.
        reason: String,
    },
    /// A condition that can never hold.
    #[error("{at}: {reason}")]
    Condition {
        /// The rule.
        at: String,
        /// Why.
        reason: String,
    },
    /// Body rules while the `json` feature is off.
    #[error("{at}: body rules need switchyard's `json` feature")]
    JsonFeature {
        /// The rule.
        at: String,
    },
}

impl TransformError {
    /// The rule the error is about, as a path into [`Rules`]
    /// (`sets[1]("api").request.headers.add[0]`); empty for
    /// [`TooManySets`](Self::TooManySets).
    pub fn at(&self) -> &str {
        match self {
            Self::TooManySets { .. } => "",
            Self::HeaderName { at, .. }
            | Self::HeaderValue { at, .. }
            | Self::Method { at, .. }
            | Self::Authority { at, .. }
            | Self::Path { at, .. }
            | Self::Query { at, .. }
            | Self::Regex { at, .. }
            | Self::Template { at, .. }
            | Self::Pointer { at, .. }
            | Self::Condition { at, .. }
            | Self::JsonFeature { at } => at,
        }
    }
}
