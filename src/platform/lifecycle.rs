//! API lifecycle: each version of an API is in one [`Stage`], and the
//! stage decides how its requests are answered.
//!
//! | stage | requests |
//! | --- | --- |
//! | `draft` | 404 problem+json, except from testers (a tester header, or an [`Identity`] with the tester scope) |
//! | `published` | passed on |
//! | `deprecated` | passed on; answers carry `Deprecation` (RFC 9745), `Sunset` (RFC 8594) when a sunset is set, and `Link: <successor>; rel="successor-version"`; callers counted by identity |
//! | `retired` | 410 Gone, problem+json, with the successor's `Link` |
//!
//! A [`LifecycleHandle`] moves a version between stages while it serves
//! ([`transition`](LifecycleHandle::transition)), and keeps who moved it
//! and when.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{HeaderName, HeaderValue, Request, Response};
//! use switchyard::platform::lifecycle::{Api, LifecycleLayer, Stage};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = LifecycleLayer::new(
//!     Api::new("orders", "v2")
//!         .owner("team-orders")
//!         .tester_header(HeaderName::from_static("x-tester"), HeaderValue::from_static("yes")),
//! )
//! .unwrap();
//! let svc = layer.layer(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("orders")))
//! }));
//!
//! // A draft (the default stage) is hidden from everyone but testers.
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 404);
//! let tester = Request::builder().header("x-tester", "yes").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(tester).await.unwrap().status(), 200);
//!
//! layer.handle().transition(Stage::Published, "bob").unwrap();
//! assert_eq!(svc.oneshot(Request::new(())).await.unwrap().status(), 200);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::header::LINK;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::auth::Identity;
use crate::calendar::http_date;
use crate::future::{Rejection, ResponseFuture};
use crate::problem::Problem;
use crate::state::{StateStore, load_as};

/// The `Deprecation` header (RFC 9745).
static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
/// The `Sunset` header (RFC 8594).
static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// Distinct callers of a deprecated version counted one by one; later
/// ones are counted together (see [`LifecycleHandle::callers`]).
const MAX_CALLERS: usize = 10_000;
/// Transitions kept in a version's history (the oldest go first).
const MAX_HISTORY: usize = 1_000;

// === Stage ===

/// Where a version of an API is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Being built: reachable by testers only.
    #[default]
    Draft,
    /// Open to every caller.
    Published,
    /// Still served, with headers telling callers to move on.
    Deprecated,
    /// No longer served: 410 Gone.
    Retired,
}

impl Stage {
    /// Its name: `draft`, `published`, `deprecated`, `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Draft => "draft",
            Stage::Published => "published",
            Stage::Deprecated => "deprecated",
            Stage::Retired => "retired",
        }
    }

    /// Whether a version may move from this stage to `to`: forward
    /// (draft → published → deprecated → retired, or published straight
    /// to retired) or one step back from deprecated or retired, to undo a
    /// move. A published version never goes back to draft.
    pub fn can_move_to(self, to: Stage) -> bool {
        use Stage::*;
        matches!(
            (self, to),
            (Draft, Published)
                | (Published, Deprecated | Retired)
                | (Deprecated, Published | Retired)
                | (Retired, Deprecated)
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft" => Ok(Stage::Draft),
            "published" => Ok(Stage::Published),
            "deprecated" => Ok(Stage::Deprecated),
            "retired" => Ok(Stage::Retired),
            other => Err(LifecycleError::UnknownStage(other.to_owned())),
        }
    }
}

// === Errors ===

/// Why an [`Api`] cannot be served or a stage cannot be entered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The API has no name or no version.
    #[error("an API needs a name and a version")]
    Unnamed,
    /// The successor link is not a valid header value (or holds `<`, `>`
    /// or a quote, which would break the `Link` header).
    #[error("the successor link `{0}` cannot go in a `Link` header")]
    BadSuccessor(String),
    /// The sunset comes before the deprecation.
    #[error("the sunset ({sunset}) is before the deprecation ({deprecated})")]
    SunsetBeforeDeprecation {
        /// Unix seconds of the deprecation.
        deprecated: u64,
        /// Unix seconds of the sunset.
        sunset: u64,
    },
    /// A stage name that is not one.
    #[error("`{0}` is not a stage (draft, published, deprecated, retired)")]
    UnknownStage(String),
    /// The state file could not be read or written (the message of the
    /// [`StateError`](crate::state::StateError)); a move it could not
    /// keep is not made.
    #[error("{0}")]
    State(String),
    /// The move is not allowed (see [`Stage::can_move_to`]).
    #[error("API `{api}` cannot move from {from} to {to}")]
    Move {
        /// The API and version.
        api: String,
        /// Its stage.
        from: Stage,
        /// The stage asked for.
        to: Stage,
    },
}

// === Api ===

/// One version of an API: who owns it, where it is in its life, and what
/// its callers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    name: String,
    version: String,
    owner: Option<String>,
    description: Option<String>,
    stage: Stage,
    deprecated_at: Option<u64>,
    sunset: Option<u64>,
    successor: Option<String>,
    tester_header: Option<(HeaderName, HeaderValue)>,
    tester_scope: Option<String>,
}

impl Api {
    /// Version `version` of API `name`, a [`Stage::Draft`] with no testers.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            owner: None,
            description: None,
            stage: Stage::Draft,
            deprecated_at: None,
            sunset: None,
            successor: None,
            tester_header: None,
            tester_scope: None,
        }
    }

    /// The team that owns it.
    pub fn owner(mut self, team: impl Into<String>) -> Self {
        self.owner = Some(team.into());
        self
    }

    /// What it does, for people.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Its stage when served first ([`Stage::Draft`] by default).
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stage = stage;
        self
    }

    /// When it was deprecated, in Unix seconds (the `Deprecation` date; a
    /// move to [`Stage::Deprecated`] sets it to the time of the move if
    /// unset).
    pub fn deprecated_at(mut self, unix: u64) -> Self {
        self.deprecated_at = Some(unix);
        self
    }

    /// When it stops being served, in Unix seconds (the `Sunset` date of
    /// a deprecated version's answers). Informational: retiring it is a
    /// move, made by someone.
    pub fn sunset(mut self, unix: u64) -> Self {
        self.sunset = Some(unix);
        self
    }

    /// Where its callers should go: a URI reference (`/v2/orders`,
    /// `https://api.example.com/v2`), sent in `Link` headers.
    pub fn successor(mut self, link: impl Into<String>) -> Self {
        self.successor = Some(link.into());
        self
    }

    /// Requests carrying this header with this value are testers': they
    /// reach a draft.
    pub fn tester_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.tester_header = Some((name, value));
        self
    }

    /// Callers whose [`Identity`] has this scope are testers.
    pub fn tester_scope(mut self, scope: impl Into<String>) -> Self {
        self.tester_scope = Some(scope.into());
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The team that owns it, if set.
    pub fn owner_team(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// What it does, if set.
    pub fn about(&self) -> Option<&str> {
        self.description.as_deref()
    }

    fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    fn check(&self) -> Result<(), LifecycleError> {
        if self.name.is_empty() || self.version.is_empty() {
            return Err(LifecycleError::Unnamed);
        }
        if let Some(link) = &self.successor {
            link_header(link)?;
        }
        if let (Some(deprecated), Some(sunset)) = (self.deprecated_at, self.sunset)
            && sunset < deprecated
        {
            return Err(LifecycleError::SunsetBeforeDeprecation { deprecated, sunset });
        }
        Ok(())
    }
}

/// `Link: <link>; rel="successor-version"`.
fn link_header(link: &str) -> Result<HeaderValue, LifecycleError> {
    if link.is_empty() || link.contains(['<', '>', '"', ' ']) {
        return Err(LifecycleError::BadSuccessor(link.to_owned()));
    }
    HeaderValue::from_str(&format!("<{link}>; rel=\"successor-version\""))
        .map_err(|_| LifecycleError::BadSuccessor(link.to_owned()))
}

// === State ===

/// A version's stage as its requests see it, with the headers it adds,
/// made once per move.
#[derive(Debug)]
struct Current {
    stage: Stage,
    deprecated_at: Option<u64>,
    /// What a deprecated version's answers carry.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The successor's `Link`.
    link: Option<HeaderValue>,
}

impl Current {
    fn of(api: &Api, stage: Stage, deprecated_at: Option<u64>) -> Self {
        // Checked when the layer was built.
        let link = api.successor.as_deref().and_then(|l| link_header(l).ok());
        let mut headers = Vec::new();
        if stage == Stage::Deprecated {
            if let Some(at) = deprecated_at
                && let Ok(v) = HeaderValue::from_str(&format!("@{at}"))
            {
                headers.push((DEPRECATION.clone(), v));
            }
            if let Some(sunset) = api.sunset
                && let Ok(v) = HeaderValue::from_str(&http_date(sunset))
            {
                headers.push((SUNSET.clone(), v));
            }
            if let Some(link) = &link {
                headers.push((LINK, link.clone()));
            }
        }
        Self {
            stage,
            deprecated_at,
            headers,
            link,
        }
    }
}

/// One move of a version between stages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Transition {
    /// The stage it left.
    pub from: Stage,
    /// The stage it entered.
    pub to: Stage,
    /// Who moved it.
    pub by: String,
    /// When, in Unix seconds.
    pub at: u64,
}

/// What a state file keeps of a version: section `lifecycle`, key
/// `"<name> <version>"`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved<H = Vec<Transition>> {
    stage: Stage,
    deprecated_at: Option<u64>,
    history: H,
}

/// The section of a state file that lifecycles are kept in.
const SECTION: &str = "lifecycle";

/// Callers of a deprecated version, by identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Callers {
    /// Requests per identity (the [`Identity::id`]; `""` for requests
    /// with none).
    pub by_identity: HashMap<String, u64>,
    /// Requests of identities past the first 10,000 met.
    pub others: u64,
}

struct Shared {
    api: Api,
    /// Where moves are kept across restarts (and shared by replicas), if
    /// anywhere.
    state: Option<Arc<dyn StateStore>>,
    current: ArcSwap<Current>,
    /// Serialises moves, and keeps them.
    book: Mutex<Book>,
    callers: Mutex<Callers>,
}

/// A version's moves, and its state entry as last read or written.
#[derive(Default)]
struct Book {
    history: Vec<Transition>,
    /// The entry's JSON text as this process last saw it.
    seen: Option<String>,
}

/// Moves retried when another writer changed the entry in between.
const RETRIES: usize = 8;

impl Shared {
    /// Takes what the store holds, if it changed since `book` saw it.
    fn adopt(&self, book: &mut Book) -> Result<(), LifecycleError> {
        let Some(store) = &self.state else {
            return Ok(());
        };
        let label = self.api.label();
        let loaded = load_as::<Saved>(store.as_ref(), SECTION, &label)
            .map_err(|e| LifecycleError::State(e.to_string()))?;
        let text = loaded.as_ref().map(|(_, t)| t.clone());
        if text == book.seen {
            return Ok(());
        }
        if let Some((saved, _)) = loaded {
            self.current.store(Arc::new(Current::of(
                &self.api,
                saved.stage,
                saved.deprecated_at,
            )));
            book.history = saved.history;
        }
        book.seen = text;
        Ok(())
    }
}

// === Handle ===

/// Moves a served version between stages, and reports on it.
#[derive(Clone)]
pub struct LifecycleHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for LifecycleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleHandle")
            .field("api", &self.shared.api.label())
            .field("stage", &self.stage())
            .finish()
    }
}

impl LifecycleHandle {
    /// The version described.
    pub fn api(&self) -> &Api {
        &self.shared.api
    }

    /// Its stage now.
    pub fn stage(&self) -> Stage {
        self.shared.current.load().stage
    }

    /// When it was deprecated (Unix seconds), if it was.
    pub fn deprecated_at(&self) -> Option<u64> {
        self.shared.current.load().deprecated_at
    }

    /// Moves it to `to`, by `by`, now; requests that start after this
    /// returns see the new stage.
    pub fn transition(&self, to: Stage, by: &str) -> Result<Transition, LifecycleError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.transition_at(to, by, now)
    }

    /// The same, dated `at` (Unix seconds).
    pub fn transition_at(
        &self,
        to: Stage,
        by: &str,
        at: u64,
    ) -> Result<Transition, LifecycleError> {
        let shared = &*self.shared;
        let mut book = shared.book.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..RETRIES {
            // Another replica's move first, if there was one.
            shared.adopt(&mut book)?;
            let now = shared.current.load();
            if !now.stage.can_move_to(to) {
                return Err(LifecycleError::Move {
                    api: shared.api.label(),
                    from: now.stage,
                    to,
                });
            }
            let deprecated_at = match to {
                Stage::Deprecated => now.deprecated_at.or(Some(at)),
                Stage::Published => None,
                _ => now.deprecated_at,
            };
            let transition = Transition {
                from: now.stage,
                to,
                by: by.to_owned(),
                at,
            };
            let mut next = book.history.clone();
            if next.len() == MAX_HISTORY {
                next.remove(0);
            }
            next.push(transition.clone());
            let mut seen = book.seen.clone();
            if let Some(state) = &shared.state {
                let saved = Saved {
                    stage: to,
                    deprecated_at,
                    history: &next,
                };
                let text = serde_json::to_string(&saved)
                    .map_err(|e| LifecycleError::State(e.to_string()))?;
                let swapped = state
                    .swap(SECTION, &shared.api.label(), book.seen.as_deref(), &text)
                    .map_err(|e| LifecycleError::State(e.to_string()))?;
                if !swapped {
                    // Moved elsewhere since it was read: read it again.
                    continue;
                }
                seen = Some(text);
            }
            shared
                .current
                .store(Arc::new(Current::of(&shared.api, to, deprecated_at)));
            book.history = next;
            book.seen = seen;
            return Ok(transition);
        }
        Err(LifecycleError::State(format!(
            "API `{}` kept being moved elsewhere; try again",
            shared.api.label()
        )))
    }

    /// Takes the stage and moves its state store holds, if another
    /// process (a replica sharing a Redis store) changed them; a no-op
    /// without a store. The gateway calls this every second for a Redis
    /// store.
    pub fn refresh(&self) -> Result<(), LifecycleError> {
        let mut book = self.shared.book.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.adopt(&mut book)
    }

    /// Its moves, oldest first (the last 1,000).
    pub fn history(&self) -> Vec<Transition> {
        self.shared
            .book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .history
            .clone()
    }

    /// Who called it while it was deprecated, so that its owners know
    /// whom to tell.
    pub fn callers(&self) -> Callers {
        self.shared
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

// === Layer ===

/// Serves one version of an API as its [`Stage`] says (see the [module
/// docs](self)).
#[derive(Clone)]
pub struct LifecycleLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for LifecycleLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleLayer")
            .field("api", &self.shared.api.label())
            .finish_non_exhaustive()
    }
}

impl LifecycleLayer {
    /// A layer serving `api` in its configured stage, its moves kept in
    /// memory only.
    pub fn new(api: Api) -> Result<Self, LifecycleError> {
        Self::build(api, None)
    }

    /// A layer serving `api`, its moves kept in `state` (a
    /// [`StateFile`](crate::state::StateFile), or a Redis store shared by
    /// replicas): if the store holds this version's stage (a move made
    /// before a restart, or on another replica), it is served in that
    /// stage, with its history, rather than the configured one.
    pub fn with_state(api: Api, state: Arc<dyn StateStore>) -> Result<Self, LifecycleError> {
        Self::build(api, Some(state))
    }

    fn build(api: Api, state: Option<Arc<dyn StateStore>>) -> Result<Self, LifecycleError> {
        api.check()?;
        let loaded: Option<(Saved, String)> = match &state {
            Some(state) => load_as(state.as_ref(), SECTION, &api.label())
                .map_err(|e| LifecycleError::State(e.to_string()))?,
            None => None,
        };
        let seen = loaded.as_ref().map(|(_, text)| text.clone());
        let (stage, deprecated_at, history) = match loaded.map(|(saved, _)| saved) {
            Some(saved) => (saved.stage, saved.deprecated_at, saved.history),
            None => {
                let deprecated_at = match api.stage {
                    Stage::Deprecated | Stage::Retired => api.deprecated_at,
                    Stage::Draft | Stage::Published => None,
                };
                (api.stage, deprecated_at, Vec::new())
            }
        };
        let current = Current::of(&api, stage, deprecated_at);
        Ok(Self {
            shared: Arc::new(Shared {
                api,
                state,
                current: ArcSwap::from_pointee(current),
                book: Mutex::new(Book { history, seen }),
                callers: Mutex::new(Callers::default()),
            }),
        })
    }

    /// The handle that moves this version between stages.
    pub fn handle(&self) -> LifecycleHandle {
        LifecycleHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for LifecycleLayer {
    type Service = Lifecycle<S>;

    fn layer(&self, inner: S) -> Lifecycle<S> {
        Lifecycle {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`LifecycleLayer`].
#[derive(Clone)]
pub struct Lifecycle<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Lifecycle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("api", &self.shared.api.label())
            .finish_non_exhaustive()
    }
}

impl<S> Lifecycle<S> {
    /// The handle that moves this version between stages.
    pub fn handle(&self) -> LifecycleHandle {
        LifecycleHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Shared {
    fn is_tester<B>(&self, req: &Request<B>) -> bool {
        let by_header = self
            .api
            .tester_header
            .as_ref()
            .is_some_and(|(name, value)| req.headers().get(name) == Some(value));
        by_header
            || self.api.tester_scope.as_deref().is_some_and(|scope| {
                req.extensions()
                    .get::<Identity>()
                    .is_some_and(|id| id.has_scope(scope))
            })
    }

    fn count_caller<B>(&self, req: &Request<B>) {
        let id = req.extensions().get::<Identity>().map_or("", Identity::id);
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        let full = callers.by_identity.len() >= MAX_CALLERS;
        match callers.by_identity.get_mut(id) {
            Some(n) => *n += 1,
            None if full => callers.others += 1,
            None => {
                callers.by_identity.insert(id.to_owned(), 1);
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Lifecycle<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<crate::body::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let current = self.shared.current.load();
        match current.stage {
            Stage::Published => ResponseFuture::inner(self.inner.call(req)),
            Stage::Draft if self.shared.is_tester(&req) => {
                ResponseFuture::inner(self.inner.call(req))
            }
            Stage::Draft => ResponseFuture::rejected(Rejection::new(
                // Not revealed to callers who are not testers.
                Problem::new(StatusCode::NOT_FOUND),
            )),
            Stage::Deprecated => {
                self.shared.count_caller(&req);
                ResponseFuture::inner_with_headers(self.inner.call(req), current.headers.clone())
            }
            Stage::Retired => {
                let api = &self.shared.api;
                let mut problem = Problem::new(StatusCode::GONE).detail(format!(
                    "API `{}` version `{}` is retired",
                    api.name, api.version
                ));
                if let Some(successor) = &api.successor {
                    problem = problem.with("successor", successor.as_str());
                }
                let mut rejection = Rejection::new(problem);
                if let Some(link) = &current.link {
                    rejection = rejection.header(LINK, link.clone());
                }
                ResponseFuture::rejected(rejection)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateFile;

    #[test]
    fn stages_read_and_move_as_documented() {
        for s in [
            Stage::Draft,
            Stage::Published,
            Stage::Deprecated,
            Stage::Retired,
        ] {
            assert_eq!(s.as_str().parse::<Stage>(), Ok(s));
            assert!(!s.can_move_to(s));
            assert!(!s.can_move_to(Stage::Draft));
        }
        assert!(matches!(
            "gone".parse::<Stage>(),
            Err(LifecycleError::UnknownStage(_))
        ));
        assert!(Stage::Published.can_move_to(Stage::Retired));
        assert!(!Stage::Draft.can_move_to(Stage::Retired));
        assert!(!Stage::Retired.can_move_to(Stage::Published));
    }

    #[test]
    fn bad_apis_are_refused_when_built() {
        assert_eq!(
            LifecycleLayer::new(Api::new("", "v1")).unwrap_err(),
            LifecycleError::Unnamed
        );
        assert!(matches!(
            LifecycleLayer::new(Api::new("a", "v1").successor("/v2> ; rel=x")),
            Err(LifecycleError::BadSuccessor(_))
        ));
        assert!(matches!(
            LifecycleLayer::new(Api::new("a", "v1").successor("/v2\n")),
            Err(LifecycleError::BadSuccessor(_))
        ));
        assert_eq!(
            LifecycleLayer::new(Api::new("a", "v1").deprecated_at(10).sunset(5)).unwrap_err(),
            LifecycleError::SunsetBeforeDeprecation {
                deprecated: 10,
                sunset: 5
            }
        );
    }

    #[test]
    fn moves_survive_a_restart_through_the_state_file() {
        let dir = std::env::temp_dir().join(format!("switchyard-lifecycle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let api = || Api::new("orders", "v1").stage(Stage::Published);
        {
            let state = Arc::new(StateFile::open(&path).unwrap());
            let layer = LifecycleLayer::with_state(api(), state).unwrap();
            layer
                .handle()
                .transition_at(Stage::Deprecated, "carol", 7)
                .unwrap();
        }
        // Restarted: served deprecated, with its date and history, though
        // the configuration says published.
        let state = Arc::new(StateFile::open(&path).unwrap());
        let h = LifecycleLayer::with_state(api(), state.clone())
            .unwrap()
            .handle();
        assert_eq!(h.stage(), Stage::Deprecated);
        assert_eq!(h.deprecated_at(), Some(7));
        assert_eq!(h.history().len(), 1);
        assert_eq!(h.history()[0].by, "carol");
        // Another version in the same file is its own.
        let v2 = LifecycleLayer::with_state(Api::new("orders", "v2"), state).unwrap();
        assert_eq!(v2.handle().stage(), Stage::Draft);
        // A move the file cannot keep is not made.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = h.transition_at(Stage::Retired, "dave", 9).unwrap_err();
        assert!(matches!(err, LifecycleError::State(_)), "{err}");
        assert_eq!(h.stage(), Stage::Deprecated);
        assert_eq!(h.history().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_move_is_checked_against_the_store_not_memory() {
        // Two layers over one store stand for two replicas over one Redis.
        let dir =
            std::env::temp_dir().join(format!("switchyard-lifecycle2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(StateFile::open(dir.join("state.json")).unwrap());
        let api = || Api::new("orders", "v1").stage(Stage::Published);
        let one = LifecycleLayer::with_state(api(), store.clone())
            .unwrap()
            .handle();
        let two = LifecycleLayer::with_state(api(), store).unwrap().handle();
        one.transition_at(Stage::Retired, "a", 1).unwrap();
        assert_eq!(two.stage(), Stage::Published, "not refreshed yet");
        // Published -> retired would be allowed; retired -> retired is not.
        let err = two.transition_at(Stage::Retired, "b", 2).unwrap_err();
        assert!(
            matches!(
                err,
                LifecycleError::Move {
                    from: Stage::Retired,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(two.stage(), Stage::Retired, "and it took the store's stage");
        two.transition_at(Stage::Deprecated, "b", 3).unwrap();
        one.refresh().unwrap();
        assert_eq!(one.stage(), Stage::Deprecated);
        assert_eq!(one.history().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn moves_are_checked_kept_and_dated() {
        let layer = LifecycleLayer::new(Api::new("orders", "v1")).unwrap();
        let h = layer.handle();
        assert_eq!(h.stage(), Stage::Draft);
        let err = h.transition_at(Stage::Retired, "eve", 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "API `orders v1` cannot move from draft to retired"
        );
        h.transition_at(Stage::Published, "bob", 10).unwrap();
        h.transition_at(Stage::Deprecated, "bob", 20).unwrap();
        assert_eq!(h.deprecated_at(), Some(20));
        // Undeprecated, then deprecated again: a new date.
        h.transition_at(Stage::Published, "amy", 30).unwrap();
        assert_eq!(h.deprecated_at(), None);
        h.transition_at(Stage::Deprecated, "amy", 40).unwrap();
        h.transition_at(Stage::Retired, "amy", 50).unwrap();
        assert_eq!(h.deprecated_at(), Some(40));
        let history = h.history();
        assert_eq!(history.len(), 5);
        assert_eq!(
            history[0],
            Transition {
                from: Stage::Draft,
                to: Stage::Published,
                by: "bob".into(),
                at: 10
            }
        );
        assert_eq!(history[4].to, Stage::Retired);
    }
}
