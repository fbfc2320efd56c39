//! API-key authentication.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderName, Request, Response};
use sha2::{Digest as _, Sha256};
use tower::{Layer, Service};

use super::credentials::{AuthStats, Authenticator, Invalid, Sources};
use super::{AuthError, Identity};
use crate::body::ResponseBody;
use crate::future::ResponseFuture;

// === impl ApiKey ===

/// One API key: the SHA-256 digest of the secret, the [`Identity`] it
/// stands for, and whether it is usable (enabled, not past `not_after`).
///
/// The secret itself is never stored: build a key from the plaintext (it
/// is hashed at once) or from a `sha256:<hex>` digest, so that
/// configuration files need not hold secrets.
///
/// ```
/// use switchyard::auth::{ApiKey, Identity, digest};
///
/// let from_plain = ApiKey::new("sk-live-123", Identity::new("alice"));
/// let from_digest = ApiKey::from_digest(&digest("sk-live-123"), Identity::new("alice"))?;
/// assert_eq!(from_plain.digest(), from_digest.digest());
/// # Ok::<_, switchyard::auth::AuthError>(())
/// ```
#[derive(Clone)]
pub struct ApiKey {
    digest: Digest,
    identity: Identity,
    disabled: bool,
    not_after: Option<SystemTime>,
    /// Requests it admitted: shared by its clones, and carried over when
    /// a key of the same digest replaces it in a layer.
    uses: Arc<AtomicU64>,
}

/// The `sha256:<hex>` digest of a key, as [`ApiKey::from_digest`] reads it.
pub fn digest(key: &str) -> String {
    Digest::of(key).to_string()
}

impl ApiKey {
    /// A key from its plaintext secret, hashed at once.
    pub fn new(key: &str, identity: Identity) -> Self {
        Self::with_digest(Digest::of(key), identity)
    }

    /// A key from the `sha256:<64 hex digits>` digest of its secret.
    pub fn from_digest(digest: &str, identity: Identity) -> Result<Self, AuthError> {
        let parsed =
            Digest::parse(digest).ok_or_else(|| AuthError::InvalidDigest(digest.to_owned()))?;
        Ok(Self::with_digest(parsed, identity))
    }

    fn with_digest(digest: Digest, identity: Identity) -> Self {
        Self {
            digest,
            identity,
            disabled: false,
            not_after: None,
            uses: Arc::default(),
        }
    }

    /// Disables the key (it is refused like an unknown one) or enables it.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// The key is refused from this instant on.
    pub fn not_after(mut self, at: SystemTime) -> Self {
        self.not_after = Some(at);
        self
    }

    /// The key's digest, `sha256:<hex>`.
    pub fn digest(&self) -> String {
        self.digest.to_string()
    }

    /// The identity the key stands for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the key is disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// When the key expires, if it does.
    pub fn expires(&self) -> Option<SystemTime> {
        self.not_after
    }

    /// How many requests the key has admitted (in a layer; counted on
    /// from the key it replaced, if that had the same digest).
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Whether the key may be used now, or why not.
    fn check(&self) -> Result<(), Invalid> {
        if self.disabled {
            Err(Invalid::DisabledKey)
        } else if self.not_after.is_some_and(|t| SystemTime::now() >= t) {
            Err(Invalid::ExpiredKey)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("digest", &format_args!("{}", self.digest))
            .field("identity", &self.identity)
            .field("disabled", &self.disabled)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A SHA-256 digest; its first eight bytes are its hash (digests of
/// secrets are uniformly distributed and cannot be chosen by a client).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Digest {
    fn of(key: &str) -> Self {
        Digest(Sha256::digest(key.as_bytes()).into())
    }

    fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Passes a digest's own bits through as its hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<Digest, ApiKey, BuildHasherDefault<DigestHasher>>;

// === impl ApiKeyLayer ===

struct Shared {
    table: ArcSwap<Table>,
    write: Mutex<()>,
    auth: Authenticator,
}

/// A [`Layer`] that authenticates requests by API key and records the
/// caller's [`Identity`] in the request's extensions.
///
/// Credentials are looked for in this order: `Authorization: Bearer
/// <key>`, the `x-api-key` header (name configurable), and — only if you
/// opt in — a query parameter; the first present is used. Requests without
/// credentials get 401 (or pass as [`Identity::anonymous`] if configured);
/// unknown, disabled, expired or revoked keys get 401 with
/// `error="invalid_token"`, all alike; unreadable credentials (two
/// `Authorization` headers, `Bearer` with nothing after it, non-ASCII
/// values) get 400. Every answer is problem+json with `WWW-Authenticate`.
/// By default every credential source is removed from the request before
/// it goes further, so upstream services never see client keys.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = ApiKeyLayer::builder()
///     .key(ApiKey::new("demo-key", Identity::new("demo").with_scopes(["chat"])))
///     .build()?;
/// let keys = auth.handle();
/// let svc = auth.layer(service_fn(|req: Request<String>| async move {
///     let who = req.extensions().get::<Identity>().unwrap().id().to_owned();
///     assert!(req.headers().get("x-api-key").is_none()); // stripped
///     Ok::<_, Infallible>(Response::new(who))
/// }));
///
/// let req = || Request::builder().header("x-api-key", "demo-key").body(String::new()).unwrap();
/// assert_eq!(svc.clone().oneshot(req()).await?.status(), 200);
///
/// keys.revoke("demo-key"); // effective on the very next request
/// assert_eq!(svc.clone().oneshot(req()).await?.status(), 401);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ApiKeyLayer {
    shared: Arc<Shared>,
}

impl ApiKeyLayer {
    /// A builder.
    pub fn builder() -> ApiKeyBuilder {
        ApiKeyBuilder::default()
    }

    /// The live handle on this layer's keys.
    pub fn handle(&self) -> ApiKeyHandle {
        ApiKeyHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyAuth<S>;

    fn layer(&self, inner: S) -> ApiKeyAuth<S> {
        ApiKeyAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("keys", &self.shared.table.load().len())
            .field("sources", &self.shared.auth.sources)
            .finish_non_exhaustive()
    }
}

// === impl ApiKeyAuth ===

/// A service authenticated by API key; built by [`ApiKeyLayer`].
///
/// `poll_ready` is the inner service's; a refused request is answered
/// without calling it.
#[derive(Clone)]
pub struct ApiKeyAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for ApiKeyAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let table = self.shared.table.load();
        let verify = |key: &str| {
            let key = table.get(&Digest::of(key)).ok_or(Invalid::UnknownKey)?;
            key.check()?;
            key.uses.fetch_add(1, Ordering::Relaxed);
            Ok(key.identity.clone())
        };
        match self.shared.auth.admit(&mut req, verify) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(rejection) => ResponseFuture::rejected(rejection.for_request(req.headers())),
        }
    }
}

// === impl ApiKeyHandle ===

/// A live handle on an [`ApiKeyLayer`]'s keys: add, replace and revoke keys
/// while serving. A change is one atomic swap, seen by the very next
/// request.
#[derive(Clone)]
pub struct ApiKeyHandle {
    shared: Arc<Shared>,
}

impl ApiKeyHandle {
    /// Adds a key, or replaces the key with the same digest (to disable it,
    /// change its identity or expiry).
    pub fn insert(&self, mut key: ApiKey) {
        self.update(|t| {
            if let Some(old) = t.get(&key.digest) {
                key.uses = Arc::clone(&old.uses);
            }
            t.insert(key.digest, key);
        });
    }

    /// Revokes the key with this plaintext secret; whether it existed.
    pub fn revoke(&self, key: &str) -> bool {
        self.revoke_digest_of(Digest::of(key))
    }

    /// Revokes the key with this `sha256:<hex>` digest; whether it existed.
    pub fn revoke_digest(&self, digest: &str) -> Result<bool, AuthError> {
        let parsed =
            Digest::parse(digest).ok_or_else(|| AuthError::InvalidDigest(digest.to_owned()))?;
        Ok(self.revoke_digest_of(parsed))
    }

    /// Revokes every key of the identity `id`; how many there were.
    pub fn revoke_identity(&self, id: &str) -> usize {
        let mut removed = 0;
        self.update(|t| {
            let before = t.len();
            t.retain(|_, k| k.identity.id() != id);
            removed = before - t.len();
        });
        removed
    }

    fn revoke_digest_of(&self, digest: Digest) -> bool {
        let mut found = false;
        self.update(|t| found = t.remove(&digest).is_some());
        found
    }

    /// Replaces every key at once with `keys`, in one swap: the next
    /// request sees exactly these. Fails, changing nothing, if two of them
    /// share a digest.
    pub fn set_keys(&self, keys: impl IntoIterator<Item = ApiKey>) -> Result<(), AuthError> {
        let mut table = Table::default();
        for key in keys {
            let digest = key.digest;
            if table.insert(digest, key).is_some() {
                return Err(AuthError::DuplicateKey(digest.to_string()));
            }
        }
        self.update(|t| {
            // A key kept across the swap keeps counting.
            for (digest, key) in &mut table {
                if let Some(old) = t.get(digest) {
                    key.uses = Arc::clone(&old.uses);
                }
            }
            *t = table;
        });
        Ok(())
    }

    /// The keys (digests and identities, never secrets), in no particular
    /// order.
    pub fn keys(&self) -> Vec<ApiKey> {
        self.shared.table.load().values().cloned().collect()
    }

    /// The layer's counters.
    pub fn stats(&self) -> AuthStats {
        self.shared.auth.stats()
    }

    fn update(&self, f: impl FnOnce(&mut Table)) {
        let _write = self.shared.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = Table::clone(&self.shared.table.load());
        f(&mut table);
        self.shared.table.store(Arc::new(table));
    }
}

impl fmt::Debug for ApiKeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyHandle")
            .field("keys", &self.shared.table.load().len())
            .finish_non_exhaustive()
    }
}

// === impl ApiKeyBuilder ===

/// Builds an [`ApiKeyLayer`]; see [`ApiKeyLayer::builder`].
#[derive(Debug)]
pub struct ApiKeyBuilder {
    keys: Vec<ApiKey>,
    sources: Sources,
    strip: bool,
    anonymous: Option<Identity>,
    realm: String,
}

impl Default for ApiKeyBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            sources: Sources {
                bearer: true,
                header: Some(HeaderName::from_static("x-api-key")),
                query: None,
            },
            strip: true,
            anonymous: None,
            realm: "switchyard".to_owned(),
        }
    }
}

impl ApiKeyBuilder {
    /// Adds a key.
    pub fn key(mut self, key: ApiKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds keys.
    pub fn keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// Whether to read `Authorization: Bearer <key>` (yes by default).
    pub fn bearer(mut self, on: bool) -> Self {
        self.sources.bearer = on;
        self
    }

    /// The header to read a key from (`x-api-key` by default); `None` to
    /// read no header.
    pub fn header(mut self, name: Option<HeaderName>) -> Self {
        self.sources.header = name;
        self
    }

    /// Also read a key from this query parameter (off by default: URLs end
    /// up in logs). Its value is percent-decoded; `+` stays `+`.
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.sources.query = Some(name.into());
        self
    }

    /// Leave credentials on the request for the inner service (they are
    /// removed by default).
    pub fn keep_credentials(mut self) -> Self {
        self.strip = false;
        self
    }

    /// Let requests without any credentials through with this identity
    /// (usually [`Identity::anonymous`]). A wrong credential is still
    /// refused.
    pub fn anonymous(mut self, identity: Identity) -> Self {
        self.anonymous = Some(identity);
        self
    }

    /// The realm named in `WWW-Authenticate` (`switchyard` by default).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Builds the layer. Fails if no credential source is enabled or two
    /// keys share a digest.
    pub fn build(self) -> Result<ApiKeyLayer, AuthError> {
        let s = &self.sources;
        if !s.bearer && s.header.is_none() && s.query.is_none() {
            return Err(AuthError::NoCredentialSource);
        }
        let mut table = Table::default();
        for key in self.keys {
            let digest = key.digest;
            if table.insert(digest, key).is_some() {
                return Err(AuthError::DuplicateKey(digest.to_string()));
            }
        }
        Ok(ApiKeyLayer {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(table),
                write: Mutex::new(()),
                auth: Authenticator::new(self.sources, self.strip, self.anonymous, &self.realm),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trip() {
        let d = Digest::of("abc");
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Digest::parse(&d.to_string()) == Some(d));
        assert!(
            Digest::parse(&d.to_string().to_uppercase().replace("SHA256", "sha256")) == Some(d)
        );
        for bad in ["", "sha256:", "sha256:zz", "md5:ba78", &d.to_string()[..70]] {
            assert!(Digest::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn each_key_counts_what_it_admits_across_swaps() {
        use tower::{Layer, ServiceExt, service_fn};
        let layer = ApiKeyLayer::builder()
            .key(ApiKey::new("a", Identity::new("alice")))
            .key(ApiKey::new("b", Identity::new("bob")))
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let call = |key: &'static str| {
            let req = Request::builder()
                .header("x-api-key", key)
                .body(())
                .unwrap();
            svc.clone().oneshot(req)
        };
        let uses = |id: &str| {
            handle
                .keys()
                .into_iter()
                .find(|k| k.identity().id() == id)
                .map(|k| k.uses())
        };
        for _ in 0..3 {
            assert_eq!(call("a").await.unwrap().status(), 200);
        }
        assert_eq!(call("wrong").await.unwrap().status(), 401);
        assert_eq!((uses("alice"), uses("bob")), (Some(3), Some(0)));
        // Replaced by a key of the same digest (a reload): counting on.
        handle
            .set_keys([
                ApiKey::new("a", Identity::new("alice").with_tier("gold")),
                ApiKey::new("c", Identity::new("carol")),
            ])
            .unwrap();
        call("a").await.unwrap();
        assert_eq!((uses("alice"), uses("carol")), (Some(4), Some(0)));
        handle.insert(ApiKey::new("a", Identity::new("alice")));
        assert_eq!(uses("alice"), Some(4));
        // A disabled key admits nothing, so counts nothing.
        handle.insert(ApiKey::new("a", Identity::new("alice")).disabled(true));
        assert_eq!(call("a").await.unwrap().status(), 401);
        assert_eq!(uses("alice"), Some(4));
    }
}
