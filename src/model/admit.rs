//! [`Admit`]: the router's per-request admission and settlement hook, what
//! token limits and budgets ([`crate::spend`]) plug into.
//!
//! Once the router knows which version will answer a request (and before
//! anything is sent upstream), it asks the hook with an [`AdmitRequest`]:
//! who asks, the alias and version, the body's size and `max_tokens`. The
//! hook answers with an [`Admission`]: go ahead with a [`Ticket`], go to
//! a cheaper version of the same alias instead, or refuse with a status and
//! an error the client gets in its own API's shape. The ticket follows the
//! request: it moves to the fallback if the first version fails before
//! answering, and is [settled](Ticket::settle) with the answer's
//! [`UsageRecord`] when its body ends or is dropped (a stream the client
//! abandons settles with what was counted). A ticket dropped without being
//! settled (the request failed before any answer, or the caller went away
//! while it was being admitted) must release what it holds: that is its
//! `Drop`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use switchyard::model::{
//!     Admission, Admit, AdmitFuture, AdmitRequest, Settled, Ticket, UsageRecord,
//! };
//!
//! /// Lets at most 100,000 output tokens through, ever.
//! #[derive(Debug, Default)]
//! struct Lifetime(Arc<AtomicU64>);
//!
//! #[derive(Debug)]
//! struct Held(Arc<AtomicU64>, u64);
//!
//! impl Admit for Lifetime {
//!     fn admit(&self, req: &AdmitRequest<'_>) -> AdmitFuture {
//!         let want = req.max_tokens.unwrap_or(1000);
//!         let taken = self.0.fetch_add(want, Ordering::AcqRel) + want;
//!         if taken > 100_000 {
//!             self.0.fetch_sub(want, Ordering::AcqRel);
//!             return AdmitFuture::ready(Admission::refuse(
//!                 http::StatusCode::TOO_MANY_REQUESTS,
//!                 "You exceeded your current quota.",
//!                 "insufficient_quota",
//!             ));
//!         }
//!         AdmitFuture::ready(Admission::Admit(Box::new(Held(Arc::clone(&self.0), want))))
//!     }
//! }
//!
//! impl Ticket for Held {
//!     fn settle(mut self: Box<Self>, record: &UsageRecord) -> Settled {
//!         // Keep what was used, give back the rest of the estimate.
//!         let used = record.usage.output.min(self.1);
//!         self.0.fetch_sub(self.1 - used, Ordering::AcqRel);
//!         self.1 = 0;
//!         Settled::default()
//!     }
//! }
//!
//! impl Drop for Held {
//!     fn drop(&mut self) {
//!         // Never settled: the whole estimate comes back.
//!         self.0.fetch_sub(self.1, Ordering::AcqRel);
//!     }
//! }
//! # let _ = Lifetime::default();
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};

use super::catalog::Compiled;
use super::providers::Protocol;
use super::usage::{ClientApi, UsageRecord};

/// What the router knows of a request when it asks an [`Admit`] hook.
#[non_exhaustive]
pub struct AdmitRequest<'a> {
    /// The request's head: method, URI, headers and extensions (the
    /// caller's [`Identity`](crate::auth::Identity), a peer address).
    pub head: &'a Parts,
    /// The alias asked for, if any.
    pub alias: Option<&'a str>,
    /// The version chosen to answer.
    pub model: &'a str,
    /// The name its upstream knows it by.
    pub upstream_model: &'a str,
    /// The upstream's protocol.
    pub provider: Protocol,
    /// The API the client spoke.
    pub client: ClientApi,
    /// The request body's size in bytes as the client sent it (`None` when
    /// the router did not read it: a model named in a header or the path,
    /// and no `content-length`).
    pub body_len: Option<u64>,
    /// The most output tokens the client asked for: `max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens`, whichever it set.
    pub max_tokens: Option<u64>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// When this asks again after an [`Admission::Downgrade`]: the version
    /// first chosen. A hook must not downgrade twice (the router refuses
    /// the request if it does).
    pub downgraded_from: Option<&'a str>,
    pub(crate) group: Option<(&'a Compiled, usize)>,
}

impl AdmitRequest<'_> {
    /// The versions of the alias asked for, with their weights, so that a
    /// hook can name a cheaper one to [downgrade](Admission::Downgrade) to.
    /// Empty for a version asked for by name.
    pub fn versions(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.group.into_iter().flat_map(|(catalog, g)| {
            let group = &catalog.aliases[g];
            group
                .members
                .iter()
                .zip(group.weights.weights.iter())
                .map(|(&m, &w)| (&*catalog.models[m].name, w))
        })
    }
}

impl fmt::Debug for AdmitRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmitRequest")
            .field("alias", &self.alias)
            .field("model", &self.model)
            .field("provider", &self.provider)
            .field("client", &self.client)
            .field("body_len", &self.body_len)
            .field("max_tokens", &self.max_tokens)
            .field("stream", &self.stream)
            .field("downgraded_from", &self.downgraded_from)
            .finish_non_exhaustive()
    }
}

/// A hook's answer.
#[non_exhaustive]
pub enum Admission {
    /// Go ahead; the ticket is settled with the answer.
    Admit(Box<dyn Ticket>),
    /// Answer with this version of the same alias instead (a cheaper one,
    /// for a caller over budget). The router asks the hook again for it,
    /// with [`AdmitRequest::downgraded_from`] set.
    Downgrade(String),
    /// Refuse the request.
    Refuse(Refused),
}

impl Admission {
    /// A refusal with this status, message and code (the error's `type`
    /// and `code` in OpenAI's shape; Anthropic clients get the message in
    /// theirs).
    pub fn refuse(status: StatusCode, message: impl Into<String>, code: &'static str) -> Self {
        Self::Refuse(Refused::new(status, message, code))
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admit(_) => f.write_str("Admit(..)"),
            Self::Downgrade(v) => f.debug_tuple("Downgrade").field(v).finish(),
            Self::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

/// A refused request: the client gets `status` and an error document in
/// its API's shape, with `headers`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Refused {
    /// The status (429 for limits and budgets).
    pub status: StatusCode,
    /// The error's message.
    pub message: String,
    /// The error's `type` (OpenAI's `tokens`, `insufficient_quota`...).
    pub kind: &'static str,
    /// The error's `code` (`rate_limit_exceeded`, `insufficient_quota`).
    pub code: &'static str,
    /// Headers for the answer (`retry-after`, `x-ratelimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refused {
    /// A refusal whose `type` and `code` are both `code`.
    pub fn new(status: StatusCode, message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status,
            message: message.into(),
            kind: code,
            code,
            headers: Vec::new(),
        }
    }

    /// The same, with the error's `type` set apart from its code.
    pub fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// The same, with a header on the answer.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a request holds between admission and settlement.
///
/// Implement `Drop` to release what the ticket holds when it is dropped
/// unsettled: the router drops a ticket when the request fails before any
/// answer (an upstream that cannot be reached, with no fallback), or when
/// the caller goes away before the upstream answers.
pub trait Ticket: Send + Sync + 'static {
    /// Headers for the answer, added when its head is sent (the token
    /// limit's `x-ratelimit-*`).
    fn headers(&self, headers: &mut http::HeaderMap) {
        let _ = headers;
    }

    /// The answer is over: its usage is in `record`. Called once.
    fn settle(self: Box<Self>, record: &UsageRecord) -> Settled;
}

/// What settling a ticket says about the answer.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Settled {
    /// The answer's cost in micro-units, when it is priced: counted in the
    /// version's [`VersionStats::cost_micros`](super::VersionStats).
    pub cost_micros: Option<u64>,
    /// Fields to show the client: as response headers on an answer that is
    /// not a stream (the router then reads the answer whole before sending
    /// its head), and as comment lines (`: name: value`) after the last
    /// event of an event stream, which SSE clients ignore.
    pub fields: Vec<(HeaderName, HeaderValue)>,
}

impl Settled {
    /// The answer cost `micros`.
    pub fn cost(micros: u64) -> Self {
        Self {
            cost_micros: Some(micros),
            fields: Vec::new(),
        }
    }

    /// The same, with a field to show.
    pub fn field(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.fields.push((name, value));
        self
    }
}

/// Decides whether requests go ahead, once the router knows their version.
///
/// Given to [`ModelRouterBuilder::admit`](super::ModelRouterBuilder::admit).
pub trait Admit: Send + Sync + 'static {
    /// Admits, downgrades or refuses `req`.
    fn admit(&self, req: &AdmitRequest<'_>) -> AdmitFuture;

    /// Whether the router should read a whole answer that is not a stream
    /// before sending its head, so that [`Settled::fields`] can go in its
    /// headers. `true` by default. Such an answer is read whole up to
    /// 32 MiB (a larger one gets a 502); answers that are streams, errors
    /// or content-encoded are never held back.
    fn fields_on_answers(&self) -> bool {
        true
    }
}

/// An [`Admit`] hook's answer, ready now or later.
pub struct AdmitFuture {
    inner: Inner,
}

enum Inner {
    Ready(Option<Admission>),
    Boxed(Pin<Box<dyn Future<Output = Admission> + Send>>),
}

impl AdmitFuture {
    /// An answer known now (no allocation).
    pub fn ready(admission: Admission) -> Self {
        Self {
            inner: Inner::Ready(Some(admission)),
        }
    }

    /// An answer that needs waiting for (a round trip to Redis).
    pub fn new(future: impl Future<Output = Admission> + Send + 'static) -> Self {
        Self {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }

    /// The answer, if it is known without waiting.
    pub(crate) fn now(&mut self) -> Option<Admission> {
        match &mut self.inner {
            Inner::Ready(a) => a.take(),
            Inner::Boxed(_) => None,
        }
    }
}

impl Future for AdmitFuture {
    type Output = Admission;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Admission> {
        match &mut self.inner {
            Inner::Ready(a) => match a.take() {
                Some(a) => Poll::Ready(a),
                None => Poll::Ready(Admission::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The admission was polled after it completed.",
                    "api_error",
                )),
            },
            Inner::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for AdmitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmitFuture(..)")
    }
}
