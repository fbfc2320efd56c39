//! [`Provider`]: how the router speaks to one upstream — its wire
//! protocol and its credentials — and the pool of API keys behind it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName};
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::providers::Protocol;
use crate::ratelimit::{Clock, MonotonicClock};

/// How the router speaks to one upstream: its [`Protocol`] and where its
/// API keys come from.
///
/// Keys never sit in the configuration: each [`KeySource`] names an
/// environment variable or a file, read when the router is built (and
/// again on every gateway reload). They are sent the provider's way —
/// `Authorization: Bearer` (OpenAI and compatible servers), `api-key`
/// (Azure OpenAI), `x-api-key` with `anthropic-version` (Anthropic),
/// `x-goog-api-key` (Gemini) — and whatever credential the caller sent
/// (`Authorization`, `x-api-key`, `x-goog-api-key`, `api-key`) is
/// removed first, so a gateway key never reaches a provider.
///
/// Several keys make a pool: requests use one key until the provider
/// answers 429 with it; that key then rests (for `Retry-After`, or
/// [`key_cooldown`](Self::key_cooldown), whichever is longer) and the next
/// takes over. [`ModelHandle::keys`](super::ModelHandle::keys) shows each
/// key's state (never the key).
///
/// ```
/// use switchyard::model::{KeySource, Provider};
/// use switchyard::model::providers::Protocol;
///
/// let claude = Provider::new(Protocol::Anthropic)
///     .key(KeySource::Env("ANTHROPIC_API_KEY".into()))
///     .key(KeySource::File("/run/secrets/anthropic-2".into()));
/// let toml_form: Provider = serde_json::from_str(
///     r#"{"protocol": "anthropic", "keys": [{"env": "ANTHROPIC_API_KEY"}, {"file": "/run/secrets/anthropic-2"}]}"#,
/// ).unwrap();
/// assert_eq!(claude, toml_form);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Provider {
    /// The wire protocol.
    pub protocol: Protocol,
    /// Its API keys, in the order they are used; none sends no
    /// credential (a local server).
    pub keys: Vec<KeySource>,
    /// `anthropic-version` sent to Anthropic upstreams (`2023-06-01` by
    /// default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// Azure OpenAI: the `api-version` query parameter. With it, Chat
    /// Completions go to `/openai/deployments/{upstream model}/chat/completions`
    /// and the key in `api-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_api_version: Option<String>,
    /// Whether the upstream accepts `stream_options` (OpenAI does; some
    /// OpenAI-compatible servers refuse it). When it does and a streaming
    /// client did not ask for usage, the router asks for it and hides the
    /// extra chunk from the client, so the tokens are counted. True by
    /// default for `openai`, false for `openai_compatible`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<bool>,
    /// `max_tokens` sent when a client sets none and the protocol needs
    /// one (Anthropic): 4096 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    /// How long a key answered with 429 rests, at least (60 s by default;
    /// a longer `Retry-After` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_cooldown_ms: Option<u64>,
}

impl Default for Provider {
    fn default() -> Self {
        Self::new(Protocol::OpenAi)
    }
}

impl Provider {
    /// A provider speaking `protocol`, with no keys.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            keys: Vec::new(),
            anthropic_version: None,
            azure_api_version: None,
            stream_options: None,
            default_max_tokens: None,
            key_cooldown_ms: None,
        }
    }

    /// Adds a key.
    pub fn key(mut self, source: KeySource) -> Self {
        self.keys.push(source);
        self
    }

    /// Sets [`anthropic_version`](Self::anthropic_version).
    pub fn anthropic_version(mut self, version: impl Into<String>) -> Self {
        self.anthropic_version = Some(version.into());
        self
    }

    /// Sets [`azure_api_version`](Self::azure_api_version).
    pub fn azure_api_version(mut self, version: impl Into<String>) -> Self {
        self.azure_api_version = Some(version.into());
        self
    }

    /// Sets [`stream_options`](Self::stream_options).
    pub fn stream_options(mut self, accepted: bool) -> Self {
        self.stream_options = Some(accepted);
        self
    }

    /// Sets [`default_max_tokens`](Self::default_max_tokens).
    pub fn default_max_tokens(mut self, tokens: u32) -> Self {
        self.default_max_tokens = Some(tokens);
        self
    }

    /// Sets [`key_cooldown_ms`](Self::key_cooldown_ms).
    pub fn key_cooldown(mut self, cooldown: Duration) -> Self {
        self.key_cooldown_ms = Some(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub(crate) fn accepts_stream_options(&self) -> bool {
        self.stream_options
            .unwrap_or(self.protocol == Protocol::OpenAi)
    }
}

/// Where an API key is read from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeySource {
    /// An environment variable.
    Env(String),
    /// A file holding the key (surrounding whitespace ignored).
    File(PathBuf),
    /// The key itself, given in code (tests, or keys from your own secret
    /// store). Never read from or written to a configuration file.
    #[serde(skip)]
    Value(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Value(_) => f.write_str("Value(..)"),
        }
    }
}

impl KeySource {
    /// How the key is named in the admin API: `env:NAME`, `file:PATH`,
    /// `value#N`.
    fn label(&self, i: usize) -> String {
        match self {
            Self::Env(name) => format!("env:{name}"),
            Self::File(path) => format!("file:{}", path.display()),
            Self::Value(_) => format!("value#{i}"),
        }
    }

    pub(crate) fn read(&self) -> Result<String, String> {
        let key = match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|e| format!("environment variable `{name}`: {e}"))?
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("file `{}`: {e}", path.display()))?,
            Self::Value(v) => v.clone(),
        };
        let key = key.trim();
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(key.to_owned())
    }
}

// === Keys ===

/// The state of one API key in a pool, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyState {
    /// The upstream.
    pub upstream: String,
    /// Where the key came from (`env:OPENAI_API_KEY`, `file:/run/...`).
    pub source: String,
    /// Requests sent with it.
    pub requests: u64,
    /// 429 answers it got.
    pub rate_limited: u64,
    /// Whether it is the one in use.
    pub current: bool,
    /// Milliseconds it still rests after a 429 (0: available).
    pub resting_ms: u64,
}

/// One upstream's credentials at run time.
pub(crate) struct Keys {
    pub(crate) protocol: Protocol,
    header: Option<HeaderName>,
    /// Extra fixed headers (`anthropic-version`).
    fixed: Vec<(HeaderName, HeaderValue)>,
    slots: Vec<Slot>,
    current: AtomicUsize,
    cooldown: Duration,
    clock: Arc<dyn Clock>,
}

struct Slot {
    label: String,
    value: HeaderValue,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    /// Clock nanoseconds until which it rests.
    resting_until: AtomicU64,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("protocol", &self.protocol)
            .field(
                "keys",
                &self.slots.iter().map(|s| &s.label).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The headers a caller may have put its own credential in.
const CALLER_CREDENTIALS: [HeaderName; 4] = [
    AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];

impl Keys {
    pub(crate) fn new(provider: &Provider, at: &str) -> Result<Self, ModelError> {
        Self::with_clock(provider, at, Arc::new(MonotonicClock::new()))
    }

    pub(crate) fn with_clock(
        provider: &Provider,
        at: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ModelError> {
        let azure = provider.azure_api_version.is_some();
        let header = match provider.protocol {
            _ if provider.keys.is_empty() => None,
            Protocol::Anthropic => Some(HeaderName::from_static("x-api-key")),
            Protocol::Gemini => Some(HeaderName::from_static("x-goog-api-key")),
            Protocol::OpenAi | Protocol::OpenAiCompatible if azure => {
                Some(HeaderName::from_static("api-key"))
            }
            _ => Some(AUTHORIZATION),
        };
        let bearer = header.as_ref() == Some(&AUTHORIZATION);
        let mut slots = Vec::with_capacity(provider.keys.len());
        for (i, source) in provider.keys.iter().enumerate() {
            let problem = |reason: String| ModelError::Credential {
                at: format!("{at}.keys[{i}]"),
                reason,
            };
            let key = source.read().map_err(problem)?;
            let text = if bearer { format!("Bearer {key}") } else { key };
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| problem("the key is not a valid header value".into()))?;
            value.set_sensitive(true);
            slots.push(Slot {
                label: source.label(i),
                value,
                requests: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
                resting_until: AtomicU64::new(0),
            });
        }
        let mut fixed = Vec::new();
        if provider.protocol == Protocol::Anthropic {
            let version = provider
                .anthropic_version
                .as_deref()
                .unwrap_or("2023-06-01");
            let value = HeaderValue::from_str(version).map_err(|_| ModelError::Credential {
                at: format!("{at}.anthropic_version"),
                reason: "not a valid header value".into(),
            })?;
            fixed.push((ANTHROPIC_VERSION, value));
        }
        Ok(Self {
            protocol: provider.protocol,
            header,
            fixed,
            slots,
            current: AtomicUsize::new(0),
            cooldown: Duration::from_millis(provider.key_cooldown_ms.unwrap_or(60_000)),
            clock,
        })
    }

    /// Removes the caller's credentials and puts the provider's in;
    /// returns the key used (for [`rate_limited`](Self::rate_limited)).
    pub(crate) fn apply(
        &self,
        headers: &mut HeaderMap,
        keep_anthropic_headers: bool,
    ) -> Option<usize> {
        for name in &CALLER_CREDENTIALS {
            headers.remove(name);
        }
        if !keep_anthropic_headers {
            headers.remove(&ANTHROPIC_VERSION);
            headers.remove(&ANTHROPIC_BETA);
        }
        for (name, value) in &self.fixed {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let header = self.header.as_ref()?;
        let i = self.pick()?;
        let slot = &self.slots[i];
        slot.requests.fetch_add(1, Ordering::Relaxed);
        headers.insert(header.clone(), slot.value.clone());
        Some(i)
    }

    /// The current key if it is not resting, else the next one that is
    /// not, else the one whose rest ends first.
    fn pick(&self) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let now = self.clock.now_nanos();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut soonest = (u64::MAX, start);
        for k in 0..n {
            let i = (start + k) % n;
            let until = self.slots[i].resting_until.load(Ordering::Relaxed);
            if until <= now {
                if i != start {
                    self.current.store(i, Ordering::Relaxed);
                }
                return Some(i);
            }
            if until < soonest.0 {
                soonest = (until, i);
            }
        }
        Some(soonest.1)
    }

    /// Key `i` got a 429: it rests, and the next key takes over.
    pub(crate) fn rate_limited(&self, i: usize, retry_after: Option<Duration>) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        slot.rate_limited.fetch_add(1, Ordering::Relaxed);
        let rest = retry_after.map_or(self.cooldown, |r| r.max(self.cooldown));
        let until = self
            .clock
            .now_nanos()
            .saturating_add(u64::try_from(rest.as_nanos()).unwrap_or(u64::MAX));
        slot.resting_until.store(until, Ordering::Relaxed);
        let n = self.slots.len();
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn states(&self, upstream: &str) -> Vec<KeyState> {
        let now = self.clock.now_nanos();
        let current = self.current.load(Ordering::Relaxed);
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| KeyState {
                upstream: upstream.to_owned(),
                source: s.label.clone(),
                requests: s.requests.load(Ordering::Relaxed),
                rate_limited: s.rate_limited.load(Ordering::Relaxed),
                current: i == current,
                resting_ms: s.resting_until.load(Ordering::Relaxed).saturating_sub(now) / 1_000_000,
            })
            .collect()
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not read).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ManualClock;

    #[test]
    fn a_rate_limited_key_rests_and_the_next_takes_over() {
        let clock = Arc::new(ManualClock::new());
        let provider = Provider::new(Protocol::OpenAi)
            .key(KeySource::Value("k1".into()))
            .key(KeySource::Value("k2".into()))
            .key_cooldown(Duration::from_secs(10));
        let keys = Keys::with_clock(&provider, "p", clock.clone()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer gateway-key"),
        );
        h.insert("x-api-key", HeaderValue::from_static("caller"));
        assert_eq!(keys.apply(&mut h, false), Some(0));
        assert_eq!(h[AUTHORIZATION], "Bearer k1");
        assert!(!h.contains_key("x-api-key"));
        keys.rate_limited(0, Some(Duration::from_secs(2)));
        assert_eq!(keys.apply(&mut h, false), Some(1));
        assert_eq!(h[AUTHORIZATION], "Bearer k2");
        // Both resting: the one whose rest ends first.
        keys.rate_limited(1, Some(Duration::from_secs(30)));
        assert_eq!(keys.apply(&mut h, false), Some(0));
        clock.advance(Duration::from_secs(11));
        assert_eq!(keys.pick(), Some(0));
        let states = keys.states("openai");
        assert_eq!(states[0].source, "value#0");
        assert_eq!(states[1].rate_limited, 1);
        assert!(states[1].resting_ms > 18_000);
    }

    #[test]
    fn provider_headers() {
        let p = Provider::new(Protocol::Anthropic).key(KeySource::Value("a".into()));
        let keys = Keys::new(&p, "p").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer gateway-key"),
        );
        keys.apply(&mut h, false);
        assert_eq!(h["x-api-key"], "a");
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert!(!h.contains_key(AUTHORIZATION));
        let g = Keys::new(
            &Provider::new(Protocol::Gemini).key(KeySource::Value("g".into())),
            "p",
        )
        .unwrap();
        g.apply(&mut h, false);
        assert_eq!(h["x-goog-api-key"], "g");
        let az = Keys::new(
            &Provider::new(Protocol::OpenAiCompatible)
                .azure_api_version("2024-10-21")
                .key(KeySource::Value("z".into())),
            "p",
        )
        .unwrap();
        az.apply(&mut h, false);
        assert_eq!(h["api-key"], "z");
        let err = Keys::new(
            &Provider::new(Protocol::OpenAi).key(KeySource::Env("SWITCHYARD_NO_SUCH_VAR".into())),
            "providers.x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("providers.x.keys[0]"), "{err}");
        assert!(!format!("{:?}", KeySource::Value("secret".into())).contains("secret"));
    }
}
