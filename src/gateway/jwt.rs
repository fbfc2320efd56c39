//! `[jwt]`: the JWT layer of routes with `auth = { jwt = true }`, its
//! static keys read from the configuration, its `jwks_uri` fetched and
//! refreshed in the background (see [`JwtConfig`]).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Inner;
use super::build::Problems;
use super::config::{GatewayConfig, JwtConfig};
use crate::auth::{JwtKeys, JwtLayer};

/// The longest JWK Set document read.
const MAX_JWKS: usize = 1 << 20;
/// Never fetched more often than this.
const MIN_REFRESH: Duration = Duration::from_secs(10);

/// A static key as read.
enum Material {
    Hs256(Vec<u8>),
    Rs256(Vec<u8>),
    Es256(Vec<u8>),
}

/// How the `jwks_uri` fetches went.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct JwksStatus {
    pub(crate) fetched: u64,
    pub(crate) failed: u64,
    /// The last good fetch (Unix seconds).
    pub(crate) last_ok: Option<u64>,
    pub(crate) last_error: Option<String>,
    /// The key ids in use.
    pub(crate) keys: Vec<Option<String>>,
}

/// The `[jwt]` of one state.
pub(crate) struct BuiltJwt {
    pub(crate) config: JwtConfig,
    pub(crate) layer: JwtLayer,
    statics: Arc<Vec<(Option<String>, Material)>>,
    jwks_file: Option<String>,
    /// The last set fetched from `jwks_uri` (the URI, the document),
    /// handed from each state to the next.
    fetched: Arc<Mutex<Option<(String, String)>>>,
    pub(crate) status: Arc<Mutex<JwksStatus>>,
}

impl BuiltJwt {
    /// The static keys, the file's and `fetched` (a JWK Set document).
    fn keys(&self, fetched: Option<&str>) -> JwtKeys {
        keys(&self.statics, self.jwks_file.as_deref(), fetched)
    }

    /// Puts a fetched set in force beside the static keys; how many keys
    /// are in force.
    fn apply(&self, uri: &str, document: &str) -> Result<usize, String> {
        self.layer
            .handle()
            .set_keys(self.keys(Some(document)))
            .map_err(|e| e.to_string())?;
        *self.fetched.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((uri.to_owned(), document.to_owned()));
        Ok(self.layer.handle().key_ids().len())
    }
}

fn keys(
    statics: &[(Option<String>, Material)],
    jwks_file: Option<&str>,
    fetched: Option<&str>,
) -> JwtKeys {
    let mut keys = JwtKeys::new();
    for (kid, m) in statics {
        keys = match m {
            Material::Hs256(s) => keys.hs256(s.clone()),
            Material::Rs256(p) => keys.rs256_pem(p.clone()),
            Material::Es256(p) => keys.es256_pem(p.clone()),
        };
        if let Some(kid) = kid {
            keys = keys.kid(kid.clone());
        }
    }
    if let Some(doc) = jwks_file {
        keys = keys.jwks(doc);
    }
    if let Some(doc) = fetched {
        keys = keys.jwks(doc);
    }
    keys
}

/// The `[jwt]` of `config`: `old`'s layer when `[jwt]` is unchanged (its
/// counters and fetched keys kept), a new one otherwise (with the set
/// fetched from the same `jwks_uri`, if any).
pub(crate) fn build(
    config: &GatewayConfig,
    old: Option<&BuiltJwt>,
    problems: &mut Problems,
) -> Option<BuiltJwt> {
    let jc = config.jwt.as_ref()?;
    if let Some(old) = old
        && old.config == *jc
    {
        return Some(BuiltJwt {
            config: jc.clone(),
            layer: old.layer.clone(),
            statics: Arc::clone(&old.statics),
            jwks_file: old.jwks_file.clone(),
            fetched: Arc::clone(&old.fetched),
            status: Arc::clone(&old.status),
        });
    }
    let before = problems.len();
    let mut statics = Vec::new();
    for (i, k) in jc.keys.iter().enumerate() {
        let at = format!("jwt.keys[{i}]");
        let read =
            |path: &str| std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"));
        let material = match (&k.hs256_secret, &k.rs256_pem_file, &k.es256_pem_file) {
            (Some(source), None, None) => source.read().map(|s| Material::Hs256(s.into_bytes())),
            (None, Some(path), None) => read(path).map(Material::Rs256),
            (None, None, Some(path)) => read(path).map(Material::Es256),
            _ => Err(
                "give exactly one of `hs256_secret`, `rs256_pem_file` and `es256_pem_file`"
                    .to_owned(),
            ),
        };
        match material {
            Ok(m) => statics.push((k.kid.clone(), m)),
            Err(e) => problems.push(at, e),
        }
    }
    let jwks_file = match &jc.jwks_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(doc) => Some(doc),
            Err(e) => {
                problems.push("jwt.jwks_file", format!("cannot read `{path}`: {e}"));
                None
            }
        },
        None => None,
    };
    if let Some(uri) = &jc.jwks_uri
        && super::rollouts::split_url(uri).is_none()
    {
        problems.push("jwt.jwks_uri", "an http:// or https:// URL");
    }
    for (at, v) in [
        ("jwt.jwks_refresh_ms", jc.jwks_refresh_ms),
        ("jwt.jwks_timeout_ms", jc.jwks_timeout_ms),
    ] {
        if v == Some(0) {
            problems.push(at, "must be above 0");
        }
    }
    if jc.keys.is_empty() && jc.jwks_file.is_none() && jc.jwks_uri.is_none() {
        problems.push("jwt", "no keys: give `keys`, `jwks_file` or `jwks_uri`");
    }
    if problems.len() > before {
        return None;
    }
    let fetched = old
        .map(|o| Arc::clone(&o.fetched))
        .filter(|f| {
            let f = f.lock().unwrap_or_else(|e| e.into_inner());
            f.as_ref().map(|(uri, _)| uri) == jc.jwks_uri.as_ref()
        })
        .unwrap_or_default();
    let document = fetched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|(_, doc)| doc.clone());
    let mut builder = JwtLayer::builder()
        .keys(keys(&statics, jwks_file.as_deref(), document.as_deref()))
        .leeway(Duration::from_millis(jc.leeway_ms.unwrap_or(60_000)));
    if jc.jwks_uri.is_some() {
        builder = builder.keys_later();
    }
    for iss in &jc.issuers {
        builder = builder.issuer(iss.clone());
    }
    for aud in &jc.audiences {
        builder = builder.audience(aud.clone());
    }
    if let Some(claim) = &jc.tenant_claim {
        builder = builder.tenant_claim(claim.clone());
    }
    match builder.build() {
        Ok(layer) => Some(BuiltJwt {
            config: jc.clone(),
            layer,
            statics: Arc::new(statics),
            jwks_file,
            fetched,
            status: old.map(|o| Arc::clone(&o.status)).unwrap_or_default(),
        }),
        Err(e) => {
            problems.push("jwt", e);
            None
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl super::Gateway {
    /// Starts the `jwks_uri` refresher if the configuration has one and it
    /// is not running; wakes it (a reload may have changed the URI).
    pub(crate) fn run_jwks(&self) {
        let wanted = self
            .inner
            .state
            .load()
            .jwt
            .as_ref()
            .is_some_and(|j| j.config.jwks_uri.is_some());
        let mut running = self.inner.jwks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wake) = running.as_ref() {
            if Arc::strong_count(wake) > 1 {
                wake.notify_one();
                return;
            }
            *running = None;
        }
        if !wanted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        *running = Some(Arc::clone(&wake));
        runtime.spawn(refresh(Arc::downgrade(&self.inner), wake));
    }
}

/// Fetches `jwks_uri` now and again, for as long as the gateway lives and
/// its configuration has one.
async fn refresh(gateway: Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(inner) = gateway.upgrade() else {
            return;
        };
        let state = inner.state.load_full();
        drop(inner);
        let Some(jwt) = state.jwt.as_ref() else {
            return;
        };
        let Some(uri) = jwt.config.jwks_uri.clone() else {
            return;
        };
        let period = Duration::from_millis(jwt.config.jwks_refresh_ms.unwrap_or(300_000).max(1));
        let timeout = Duration::from_millis(jwt.config.jwks_timeout_ms.unwrap_or(5000).max(1));
        let shown = super::redact::redact_url(&uri);
        let outcome = match fetch(&uri, timeout).await {
            Ok((doc, max_age)) => jwt.apply(&uri, &doc).map(|n| (n, max_age)),
            Err(e) => Err(e),
        };
        let wait = {
            let mut status = jwt.status.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok((n, max_age)) => {
                    status.fetched += 1;
                    status.last_ok = Some(now());
                    status.last_error = None;
                    status.keys = jwt.layer.handle().key_ids();
                    tracing::debug!(url = %shown, keys = n, "jwt: JWK Set fetched");
                    backoff = Duration::from_secs(1);
                    max_age
                        .map_or(period, |a| a.min(period))
                        .max(MIN_REFRESH.min(period))
                }
                Err(e) => {
                    status.failed += 1;
                    tracing::warn!(url = %shown, error = %e, retry_in = ?backoff, "jwt: JWK Set not fetched; the last good set stays");
                    status.last_error = Some(e);
                    let wait = backoff.min(period);
                    backoff = (backoff * 2).min(period);
                    wait
                }
            }
        };
        drop(state);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

/// One GET of a JWK Set: the document and the answer's `max-age`.
async fn fetch(uri: &str, timeout: Duration) -> Result<(String, Option<Duration>), String> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (base, path) = super::rollouts::split_url(uri).ok_or("not an http(s) URL")?;
    let upstream = crate::proxy::Upstream::builder(&base)
        .response_timeout(timeout)
        .connect_timeout(Some(timeout))
        .build()
        .map_err(|e| e.to_string())?;
    let req = http::Request::get(path.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "switchyard-jwks")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = match upstream.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if !res.status().is_success() {
        return Err(format!("answered {}", res.status()));
    }
    let max_age = res
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(res.into_body(), MAX_JWKS).collect(),
    )
    .await
    .map_err(|_| "the body took too long".to_owned())?
    .map_err(|e| format!("the body: {e}"))?
    .to_bytes();
    let doc = String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())?;
    Ok((doc, max_age))
}
