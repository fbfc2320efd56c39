//! Authorization by scope.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::Identity;
use super::reject::Challenge;
use crate::body::ResponseBody;
use crate::future::ResponseFuture;

/// A [`Layer`] that lets a request through only if its [`Identity`] (put
/// there by an authentication layer in front) holds the required scopes:
/// all of them ([`RequireScopes::all`]) or at least one
/// ([`RequireScopes::any`]).
///
/// A request without an identity (no authentication layer in front, or an
/// anonymous one) gets 401; an identity without the scopes gets 403 naming
/// what is missing. Use it per route with axum's `route_layer`:
///
/// ```
/// use axum::{routing::get, Router};
/// use switchyard::auth::RequireScopes;
///
/// let app: Router = Router::new()
///     .route("/admin/users", get(|| async { "users" }))
///     .route_layer(RequireScopes::all(["admin"]))
///     .route("/v1/chat", get(|| async { "chat" }));
/// // ... then `.layer(api_keys)` so every route is authenticated first.
/// ```
#[derive(Clone)]
pub struct RequireScopes {
    rule: Arc<Rule>,
    counters: Arc<ScopeCounters>,
}

/// The refusals of a scope check, shared by its clones (and, in the
/// gateway, carried over from the check a reload replaces). Counted on
/// the refusal path only.
#[derive(Debug, Default)]
pub(crate) struct ScopeCounters {
    insufficient: AtomicU64,
    unauthenticated: AtomicU64,
}

impl ScopeCounters {
    pub(crate) fn read(&self) -> ScopeStats {
        ScopeStats {
            insufficient_scope: self.insufficient.load(Ordering::Relaxed),
            unauthenticated: self.unauthenticated.load(Ordering::Relaxed),
        }
    }
}

/// The refusals of a [`RequireScopes`] check since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ScopeStats {
    /// Callers refused with 403 for want of a scope.
    pub insufficient_scope: u64,
    /// Requests refused with 401 for want of an identity (no
    /// authentication in front, or an anonymous caller).
    pub unauthenticated: u64,
}

struct Rule {
    scopes: Vec<String>,
    all: bool,
    joined: String,
    challenge: Challenge,
}

impl RequireScopes {
    /// Requires every one of `scopes`.
    pub fn all<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(scopes, true)
    }

    /// Requires at least one of `scopes`.
    pub fn any<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(scopes, false)
    }

    fn new<I, S>(scopes: I, all: bool) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        let joined = scopes.join(" ");
        Self {
            rule: Arc::new(Rule {
                scopes,
                all,
                joined,
                challenge: Challenge::new("switchyard"),
            }),
            counters: Arc::default(),
        }
    }

    /// The realm named in `WWW-Authenticate` (`switchyard` by default).
    pub fn realm(self, realm: impl Into<String>) -> Self {
        let realm = realm.into();
        let r = &self.rule;
        Self {
            rule: Arc::new(Rule {
                scopes: r.scopes.clone(),
                all: r.all,
                joined: r.joined.clone(),
                challenge: Challenge::new(&realm),
            }),
            counters: self.counters,
        }
    }

    /// Its refusals so far, shared by its clones and the services it
    /// wrapped.
    pub fn stats(&self) -> ScopeStats {
        self.counters.read()
    }

    /// Counts refusals in `counters` (kept from the check this one
    /// replaces) instead of its own.
    #[cfg(feature = "config")]
    pub(crate) fn counting(mut self, counters: Arc<ScopeCounters>) -> Self {
        self.counters = counters;
        self
    }

    #[cfg(feature = "prometheus")]
    pub(crate) fn counters(&self) -> &Arc<ScopeCounters> {
        &self.counters
    }

    /// The scopes `identity` lacks under this rule; empty if it passes.
    fn missing<'a>(&'a self, identity: &Identity) -> Vec<&'a str> {
        let missing: Vec<&str> = self
            .rule
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !identity.has_scope(s))
            .collect();
        let passes = if self.rule.all {
            missing.is_empty()
        } else {
            self.rule.scopes.is_empty() || missing.len() < self.rule.scopes.len()
        };
        if passes { Vec::new() } else { missing }
    }
}

impl fmt::Debug for RequireScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.rule.all { "all" } else { "any" };
        write!(f, "RequireScopes::{kind}({:?})", self.rule.scopes)
    }
}

impl<S> Layer<S> for RequireScopes {
    type Service = ScopeCheck<S>;

    fn layer(&self, inner: S) -> ScopeCheck<S> {
        ScopeCheck {
            inner,
            rule: self.clone(),
        }
    }
}

/// A service behind a scope check; built by [`RequireScopes`].
#[derive(Clone, Debug)]
pub struct ScopeCheck<S> {
    inner: S,
    rule: RequireScopes,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ScopeCheck<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let rule = &self.rule.rule;
        match req.extensions().get::<Identity>() {
            Some(identity) if !identity.is_anonymous() => {
                let missing = self.rule.missing(identity);
                if !missing.is_empty() {
                    let refused = &self.rule.counters.insufficient;
                    refused.fetch_add(1, Ordering::Relaxed);
                    return ResponseFuture::rejected(
                        rule.challenge
                            .insufficient(&rule.joined, &missing, rule.all)
                            .for_request(req.headers()),
                    );
                }
            }
            _ => {
                let refused = &self.rule.counters.unauthenticated;
                refused.fetch_add(1, Ordering::Relaxed);
                return ResponseFuture::rejected(
                    rule.challenge.missing().for_request(req.headers()),
                );
            }
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}
