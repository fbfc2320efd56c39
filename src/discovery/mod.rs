//! Service discovery (feature `proxy`): an [`Upstream`]'s endpoints
//! following a source as the services behind it scale, move and are
//! replaced, without a config edit or a reload.
//!
//! A [`Source`] lists every endpoint it knows each time it is asked (a DNS
//! answer, a file); [`follow`] asks it again when its answer expires (the
//! DNS records' TTL, held within [`Refresh`]'s bounds) and makes the
//! upstream's set what it says: endpoints that appear join at once,
//! those that are gone leave and drain (their requests in flight finish).
//! Built in: [`FileSource`] (a JSON or TOML list, reread when it changes)
//! and, with the `dns` feature, `DnsSource` (A/AAAA records, or SRV with
//! their weights and ports). Anything else — a registry, an orchestrator's
//! API — is a [`Source`] of your own, or a [`tower::discover::Discover`]
//! stream of changes handed to [`Upstream::follow`].
//!
//! When the source fails (a DNS outage, an unreadable or invalid file) or
//! answers with no endpoint at all, the upstream keeps the last endpoints
//! it had: an upstream is never emptied by accident. That lasts at most
//! [`Refresh::max_stale`] (one hour by default) after the last good
//! answer; past it the endpoints are dropped and requests are answered
//! 503 until the source answers again (an answer that old no longer says
//! where the service is). A flapping source is damped: an endpoint
//! missing from one answer stays until it has been missing from
//! [`Refresh::remove_after`] answers in a row (two by default), and
//! answers are never asked for more often than [`Refresh::min`].
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard::discovery::{self, FileSource, Refresh};
//! use switchyard::proxy::Upstream;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The scheme and path the endpoints share; the file lists the servers.
//! let green = Upstream::new("http://green.internal:8080")?;
//! let following = discovery::follow(
//!     &green,
//!     FileSource::new("/etc/switchyard/green.json"),
//!     Refresh::default().min(Duration::from_secs(1)),
//! );
//! // `following.status()` says where it stands; dropping it stops it.
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::proxy::{EndpointSpec, Upstream};

mod file;
pub use file::{FileFormat, FileSource};

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use dns::{DnsSource, ResolverConfig};

/// What a [`Source`] says at one time: every endpoint it lists (a key for
/// each, unique, and where it is), and for how long that holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The endpoints, by key (an address `ip:port` for DNS, the listed
    /// address for a file).
    pub endpoints: Vec<(String, EndpointSpec)>,
    /// How long the answer may be kept (a DNS record's TTL); `None`: as
    /// long as [`Refresh::max`].
    pub ttl: Option<Duration>,
}

impl Snapshot {
    /// A snapshot of `endpoints`, valid for `ttl`.
    pub fn new(endpoints: Vec<(String, EndpointSpec)>, ttl: Option<Duration>) -> Self {
        Self { endpoints, ttl }
    }
}

/// Why a [`Source`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// The future of [`Source::snapshot`].
pub type SnapshotFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Snapshot, SourceError>> + Send + 'a>>;

/// Somewhere an upstream's endpoints are listed: asked by [`follow`] for
/// the whole list each time its last answer expires.
pub trait Source: Send + 'static {
    /// Every endpoint the source lists now.
    fn snapshot(&mut self) -> SnapshotFuture<'_>;

    /// What it is, for the admin API, the metrics and the log
    /// (`dns:green.internal`, `file:/etc/green.json`).
    fn describe(&self) -> String;
}

impl Source for Box<dyn Source> {
    fn snapshot(&mut self) -> SnapshotFuture<'_> {
        (**self).snapshot()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// How often [`follow`] asks its source, and how it holds on when the
/// source fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    min: Duration,
    max: Duration,
    max_stale: Option<Duration>,
    remove_after: u32,
    timeout: Duration,
}

impl Default for Refresh {
    /// Asked again when the answer's TTL runs out, but no sooner than 1 s
    /// and no later than 30 s after the last time; after a failure, 1 s
    /// then twice as long each time, up to 30 s; the last endpoints kept
    /// at most an hour after the last good answer; an endpoint removed
    /// when missing from 2 answers in a row; 5 s for an answer.
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_stale: Some(Duration::from_secs(3600)),
            remove_after: 2,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Refresh {
    /// The shortest time between two answers (a TTL of 0 asks no more
    /// often than this).
    pub fn min(mut self, min: Duration) -> Self {
        self.min = min;
        self
    }

    /// The longest: an answer with a longer TTL, or none, is asked again
    /// after this.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// How long after the last good answer the endpoints are kept while
    /// the source fails; `None`: for ever.
    pub fn max_stale(mut self, max_stale: Option<Duration>) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// How many answers in a row an endpoint must be missing from before
    /// it is removed (at least 1: at once).
    pub fn remove_after(mut self, answers: u32) -> Self {
        self.remove_after = answers.max(1);
        self
    }

    /// How long the source may take to answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The wait before the next answer, after one valid for `ttl`.
    fn after(&self, ttl: Option<Duration>) -> Duration {
        let max = self.max.max(self.min);
        ttl.unwrap_or(max).clamp(self.min, max)
    }

    /// The wait before the next try after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let max = self.max.max(self.min);
        self.min
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(max)
    }
}

/// Where a followed source stands ([`Discovery::status`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// The source ([`Source::describe`]).
    pub source: String,
    /// Endpoints the upstream has from it now.
    pub endpoints: usize,
    /// Answers that changed the upstream's set.
    pub updates: u64,
    /// Answers that failed, or listed no endpoint.
    pub failures: u64,
    /// When the last good answer came (seconds since the Unix epoch).
    pub last_ok_unix: Option<u64>,
    /// Why the last answer failed, while it is the latest.
    pub last_error: Option<String>,
    /// Whether the endpoints are the last known ones, kept because the
    /// source fails or answers with none.
    pub stale: bool,
    /// Whether they were dropped, stale for longer than
    /// [`Refresh::max_stale`].
    pub expired: bool,
}

/// A source being followed ([`follow`]): its [status](Self::status), and
/// the task asking it, stopped when this is dropped.
#[derive(Debug)]
pub struct Discovery {
    status: Arc<Mutex<DiscoveryStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    /// Where the source stands.
    pub fn status(&self) -> DiscoveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows `source` into `upstream`'s endpoints on a task of the current
/// Tokio runtime (see the [module docs](self)), until the [`Discovery`] is
/// dropped or the upstream (every clone of it) is. The first answer is
/// asked for at once; until it comes, the upstream keeps the endpoints it
/// was built with.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub fn follow(upstream: &Upstream, source: impl Source, refresh: Refresh) -> Discovery {
    let status = Arc::new(Mutex::new(DiscoveryStatus {
        source: source.describe(),
        endpoints: upstream.endpoints().iter().filter(|e| !e.draining).count(),
        updates: 0,
        failures: 0,
        last_ok_unix: None,
        last_error: None,
        stale: false,
        expired: false,
    }));
    let task = tokio::spawn(run(
        upstream.downgrade(),
        source,
        refresh,
        Arc::clone(&status),
    ));
    Discovery { status, task }
}

/// The follower's loop.
async fn run(
    upstream: crate::proxy::WeakUpstream,
    mut source: impl Source,
    refresh: Refresh,
    status: Arc<Mutex<DiscoveryStatus>>,
) {
    let name = source.describe();
    // The endpoints this follower put in the set, as last listed, and how
    // many answers in a row each has been missing from since.
    let mut known: Vec<(String, EndpointSpec, u32)> = Vec::new();
    let mut last_ok = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let answer = match tokio::time::timeout(refresh.timeout, source.snapshot()).await {
            Ok(Ok(snapshot)) if snapshot.endpoints.is_empty() => {
                Err(SourceError::new("the source lists no endpoint"))
            }
            Ok(answer) => answer,
            Err(_) => Err(SourceError::new(format!(
                "no answer within {:?}",
                refresh.timeout
            ))),
        };
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let wait = match answer {
            Ok(snapshot) => {
                let next = damped(&mut known, &snapshot.endpoints, refresh.remove_after);
                match upstream.set_endpoints(next) {
                    Ok(changes) => {
                        failures = 0;
                        last_ok = tokio::time::Instant::now();
                        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                        if !changes.is_empty() {
                            s.updates += 1;
                            tracing::info!(
                                source = %name,
                                added = ?changes.added,
                                removed = ?changes.removed.iter().map(|d| d.key()).collect::<Vec<_>>(),
                                "discovered endpoints changed"
                            );
                        }
                        s.last_ok_unix = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs());
                        s.last_error = None;
                        s.stale = false;
                        s.expired = false;
                        s.endpoints = known.len();
                        refresh.after(snapshot.ttl)
                    }
                    Err(e) => {
                        failures += 1;
                        failed(&status, &name, &e.to_string());
                        refresh.backoff(failures)
                    }
                }
            }
            Err(e) => {
                failures += 1;
                failed(&status, &name, &e.0);
                if let Some(max) = refresh.max_stale
                    && last_ok.elapsed() >= max
                    && !known.is_empty()
                {
                    let dropped = upstream
                        .set_endpoints(Vec::<(String, EndpointSpec)>::new())
                        .map_or(0, |c| c.removed.len());
                    tracing::error!(
                        source = %name,
                        max_stale = ?max,
                        dropped,
                        "discovered endpoints expired: the source has failed for longer than max_stale"
                    );
                    known.clear();
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    s.expired = true;
                    s.endpoints = 0;
                }
                refresh.backoff(failures)
            }
        };
        drop(upstream);
        tokio::time::sleep(wait).await;
    }
}

/// The set after an answer listing `listed`, damped: every endpoint
/// listed (as listed), then those missing from fewer than `remove_after`
/// answers in a row (as they were).
fn damped(
    known: &mut Vec<(String, EndpointSpec, u32)>,
    listed: &[(String, EndpointSpec)],
    remove_after: u32,
) -> Vec<(String, EndpointSpec)> {
    let mut next: Vec<(String, EndpointSpec, u32)> = listed
        .iter()
        .map(|(k, s)| (k.clone(), s.clone(), 0))
        .collect();
    for (key, spec, missed) in known.drain(..) {
        if !listed.iter().any(|(k, _)| *k == key) && missed + 1 < remove_after {
            next.push((key, spec, missed + 1));
        }
    }
    *known = next;
    known
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect()
}

/// Notes a failed answer; the endpoints stay.
fn failed(status: &Mutex<DiscoveryStatus>, name: &str, why: &str) {
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.failures += 1;
    if s.last_error.as_deref() != Some(why) {
        tracing::warn!(source = %name, error = %why, "discovery failed; keeping the last endpoints");
    }
    s.last_error = Some(why.to_owned());
    s.stale = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A source answering whatever the test last set, counting the asks.
    #[derive(Clone)]
    struct Scripted {
        answer: Arc<Mutex<Result<Snapshot, SourceError>>>,
        asked: Arc<AtomicU32>,
    }

    impl Default for Scripted {
        fn default() -> Self {
            Self {
                answer: Arc::new(Mutex::new(Ok(Snapshot::default()))),
                asked: Arc::default(),
            }
        }
    }

    impl Scripted {
        fn set(&self, answer: Result<Snapshot, SourceError>) {
            *self.answer.lock().unwrap() = answer;
        }
        fn list(&self, addresses: &[&str], ttl: Option<u64>) {
            let endpoints = addresses
                .iter()
                .map(|a| ((*a).to_owned(), EndpointSpec::new(*a)))
                .collect();
            self.set(Ok(Snapshot::new(endpoints, ttl.map(Duration::from_secs))));
        }
    }

    impl Source for Scripted {
        fn snapshot(&mut self) -> SnapshotFuture<'_> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let answer = self.answer.lock().unwrap().clone();
            Box::pin(async move { answer })
        }
        fn describe(&self) -> String {
            "scripted".to_owned()
        }
    }

    /// The keys in the upstream's set, sorted.
    fn keys(upstream: &Upstream) -> Vec<String> {
        let mut keys: Vec<String> = upstream
            .endpoints()
            .into_iter()
            .filter(|e| !e.draining)
            .map(|e| e.key)
            .collect();
        keys.sort();
        keys
    }

    /// Lets the follower run up to `secs` seconds on, on the paused clock.
    async fn run_for(secs: f64) {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_followed_on_their_ttl_within_bounds() {
        let upstream = Upstream::new("http://svc.internal:8080").unwrap();
        let source = Scripted::default();
        source.list(&["10.0.0.1:8080", "10.0.0.2:8080"], Some(5));
        let refresh = Refresh::default()
            .min(Duration::from_secs(2))
            .max(Duration::from_secs(10));
        let following = follow(&upstream, source.clone(), refresh);
        run_for(0.1).await;
        // The first answer replaces the URL the upstream was built with.
        assert_eq!(keys(&upstream), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(source.asked.load(Ordering::Relaxed), 1);
        // TTL 5 s: asked again at 5 s, not before.
        run_for(4.8).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), 1);
        run_for(0.3).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), 2);
        // TTL 0: no sooner than `min` (2 s); TTL of an hour: `max` (10 s).
        source.list(&["10.0.0.1:8080", "10.0.0.2:8080"], Some(0));
        run_for(5.0).await; // asked at 10 s (the 5 s TTL before)
        let at = source.asked.load(Ordering::Relaxed);
        run_for(1.7).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), at);
        run_for(0.2).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), at + 1);
        source.list(&["10.0.0.1:8080", "10.0.0.2:8080"], Some(3600));
        run_for(2.1).await; // asked at 14 s
        let at = source.asked.load(Ordering::Relaxed);
        run_for(9.6).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), at);
        run_for(0.3).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), at + 1);
        let status = following.status();
        assert_eq!(
            (status.endpoints, status.updates, status.failures),
            (2, 1, 0)
        );
        assert!(!status.stale && status.last_ok_unix.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_leaves_after_missing_from_answers_in_a_row() {
        let upstream = Upstream::new("http://svc.internal:8080").unwrap();
        let source = Scripted::default();
        source.list(&["a:1", "b:1", "c:1"], Some(1));
        let refresh = Refresh::default()
            .min(Duration::from_secs(1))
            .remove_after(2);
        let _following = follow(&upstream, source.clone(), refresh);
        run_for(0.1).await;
        assert_eq!(keys(&upstream), ["a:1", "b:1", "c:1"]);
        // `b` flaps: missing from one answer, back in the next: it stays.
        source.list(&["a:1", "c:1"], Some(1));
        run_for(1.0).await;
        assert_eq!(keys(&upstream), ["a:1", "b:1", "c:1"]);
        source.list(&["a:1", "b:1", "c:1"], Some(1));
        run_for(1.0).await;
        source.list(&["a:1", "c:1", "d:1"], Some(1));
        run_for(1.0).await;
        assert_eq!(keys(&upstream), ["a:1", "b:1", "c:1", "d:1"]);
        // Missing from a second answer in a row: gone.
        run_for(1.0).await;
        assert_eq!(keys(&upstream), ["a:1", "c:1", "d:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_last_endpoints_until_they_expire() {
        let upstream = Upstream::new("http://svc.internal:8080").unwrap();
        let source = Scripted::default();
        source.list(&["a:1", "b:1"], Some(1));
        let refresh = Refresh::default()
            .min(Duration::from_secs(1))
            .max(Duration::from_secs(8))
            .max_stale(Some(Duration::from_secs(60)));
        let following = follow(&upstream, source.clone(), refresh);
        run_for(0.1).await;
        // An outage, then an empty answer: the endpoints stay, stale.
        source.set(Err(SourceError::new("SERVFAIL")));
        run_for(1.0).await;
        let s = following.status();
        assert!(s.stale && !s.expired);
        assert_eq!(s.last_error.as_deref(), Some("SERVFAIL"));
        assert_eq!(keys(&upstream), ["a:1", "b:1"]);
        source.list(&[], Some(1));
        run_for(3.0).await;
        assert_eq!(keys(&upstream), ["a:1", "b:1"]);
        assert_eq!(
            following.status().last_error.as_deref(),
            Some("the source lists no endpoint")
        );
        // Backing off: 1, 2, 4, 8, 8 s ... not once a second.
        let before = source.asked.load(Ordering::Relaxed);
        run_for(30.0).await;
        let asks = source.asked.load(Ordering::Relaxed) - before;
        assert!((3..=6).contains(&asks), "{asks}");
        // Past max_stale (60 s after the last good answer): dropped.
        run_for(40.0).await;
        let s = following.status();
        assert!(s.expired && s.endpoints == 0, "{s:?}");
        assert!(keys(&upstream).is_empty());
        // The source answers again: back.
        source.list(&["c:1"], Some(1));
        run_for(9.0).await;
        let s = following.status();
        assert!(!s.stale && !s.expired && s.last_error.is_none());
        assert_eq!(keys(&upstream), ["c:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn following_stops_with_the_handle_or_the_upstream() {
        let upstream = Upstream::new("http://svc.internal:8080").unwrap();
        let source = Scripted::default();
        source.list(&["a:1"], Some(1));
        let following = follow(&upstream, source.clone(), Refresh::default());
        run_for(2.5).await;
        drop(following);
        let at = source.asked.load(Ordering::Relaxed);
        run_for(10.0).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), at);

        let _following = follow(&upstream, source.clone(), Refresh::default());
        run_for(0.1).await;
        drop(upstream);
        let at = source.asked.load(Ordering::Relaxed);
        run_for(10.0).await;
        // At most the ask in progress when the upstream went.
        assert!(source.asked.load(Ordering::Relaxed) <= at + 1);
    }
}
