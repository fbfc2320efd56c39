//! Bearer JWT authentication (feature `jwt`, with the `jsonwebtoken` crate).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::credentials::{AuthStats, Authenticator, Sources};
use super::{AuthError, Identity};
use crate::body::ResponseBody;
use crate::future::ResponseFuture;

/// A verification key and the one algorithm it verifies.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

struct Shared {
    keys: Vec<VerifyKey>,
    tenant_claim: String,
    auth: Authenticator,
}

/// A [`Layer`] that authenticates `Authorization: Bearer <JWT>` requests
/// and records the caller's [`Identity`] in the request's extensions.
///
/// Each configured key verifies exactly one algorithm (HS256 with a
/// secret, RS256 or ES256 with a PEM public key, or a JWK), so a token
/// signed with another algorithm, or `alg: none`, is refused. `exp` is
/// required and checked, `nbf` is checked, both with a leeway (60 s by
/// default); `iss` and `aud` are checked when configured. A token with a
/// `kid` is verified by the key with that id (or, failing one, by the keys
/// configured without an id); one without is tried against every key of
/// its algorithm. An empty `sub` is refused.
///
/// Claims become the identity: `sub` is the id, a configurable claim
/// (`tenant` by default) the tenant, and `scope` (space-separated) or `scp`
/// (array or space-separated) the scopes.
///
/// Answers are those of [`ApiKeyLayer`](super::ApiKeyLayer): 401 without a
/// token or with any invalid one (the reason is not disclosed), 400 for an
/// unreadable `Authorization` header. The `Authorization` header is removed
/// before the request goes further unless
/// [`keep_credentials`](JwtBuilder::keep_credentials) is set.
///
/// ```
/// use switchyard::auth::JwtLayer;
///
/// let auth = JwtLayer::builder()
///     .hs256(b"a secret of at least 32 bytes, for HS256")
///     .issuer("https://issuer.example")
///     .audience("switchyard")
///     .build()?;
/// # Ok::<_, switchyard::auth::AuthError>(())
/// ```
///
/// `jsonwebtoken` must find one crypto backend: this crate enables its
/// pure-Rust `rust_crypto` backend. If your dependency tree also enables
/// its `aws_lc_rs` feature, install a provider with
/// `jsonwebtoken::crypto::CryptoProvider::install_default` at start-up.
#[derive(Clone)]
pub struct JwtLayer {
    shared: Arc<Shared>,
}

impl JwtLayer {
    /// A builder; add at least one key.
    pub fn builder() -> JwtBuilder {
        JwtBuilder::default()
    }

    /// The layer's counters, shared by every service it wrapped.
    pub fn stats(&self) -> AuthStats {
        self.shared.auth.stats()
    }
}

impl fmt::Debug for JwtLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtLayer")
            .field("keys", &self.shared.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> JwtAuth<S> {
        JwtAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service authenticated by bearer JWT; built by [`JwtLayer`].
#[derive(Clone)]
pub struct JwtAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for JwtAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for JwtAuth<S>
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
        let shared = &*self.shared;
        match shared.auth.admit(&mut req, |token| shared.verify(token)) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(rejection) => ResponseFuture::rejected(rejection.for_request(req.headers())),
        }
    }
}

impl Shared {
    /// The identity of a valid token; `None` for any invalid one.
    fn verify(&self, token: &str) -> Option<Identity> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let claims = self
            .keys
            .iter()
            .filter(|k| k.validation.algorithms.contains(&header.alg))
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .find_map(|k| {
                jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &k.validation).ok()
            })?
            .claims;
        identity(&claims, &self.tenant_claim)
    }
}

/// Maps verified claims to an identity; `None` without a string `sub`.
fn identity(claims: &Map<String, Value>, tenant_claim: &str) -> Option<Identity> {
    let sub = claims.get("sub")?.as_str().filter(|s| !s.is_empty())?;
    let mut identity = Identity::new(sub);
    if let Some(tenant) = claims.get(tenant_claim).and_then(Value::as_str) {
        identity = identity.with_tenant(tenant);
    }
    let words = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    for claim in ["scope", "scp"] {
        if let Some(v) = claims.get(claim) {
            identity = identity.with_scopes(words(v));
        }
    }
    Some(identity)
}

/// Builds a [`JwtLayer`]; see [`JwtLayer::builder`].
pub struct JwtBuilder {
    keys: Vec<(Option<String>, KeySource)>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    tenant_claim: String,
    anonymous: Option<Identity>,
    strip: bool,
    realm: String,
}

enum KeySource {
    Hs256(Vec<u8>),
    Rs256Pem(Vec<u8>),
    Es256Pem(Vec<u8>),
    Jwk(String),
}

impl Default for JwtBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
            tenant_claim: "tenant".to_owned(),
            anonymous: None,
            strip: true,
            realm: "switchyard".to_owned(),
        }
    }
}

impl fmt::Debug for JwtBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBuilder")
            .field("keys", &self.keys.len())
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtBuilder {
    /// Verifies HS256 tokens with this shared secret.
    pub fn hs256(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Hs256(secret.into())));
        self
    }

    /// Verifies RS256 tokens with this PEM-encoded RSA public key.
    pub fn rs256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Rs256Pem(pem.into())));
        self
    }

    /// Verifies ES256 tokens with this PEM-encoded P-256 public key.
    pub fn es256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Es256Pem(pem.into())));
        self
    }

    /// Verifies tokens with this JWK (JSON); its `alg` (required) names the
    /// algorithm and its `kid`, if any, the key id.
    pub fn jwk(mut self, jwk_json: impl Into<String>) -> Self {
        self.keys.push((None, KeySource::Jwk(jwk_json.into())));
        self
    }

    /// Names the last key added (its `kid`), so that tokens naming a key id
    /// are verified by that key only.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        if let Some(last) = self.keys.last_mut() {
            last.0 = Some(kid.into());
        }
        self
    }

    /// Accepts tokens issued (`iss`) by this issuer; with none configured,
    /// `iss` is not checked.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }

    /// Accepts tokens for (`aud`) this audience; with none configured,
    /// `aud` is not checked.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (60 s by default).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The claim holding the tenant (`tenant` by default).
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = claim.into();
        self
    }

    /// Lets requests without a token through with this identity. An
    /// invalid token is still refused.
    pub fn anonymous(mut self, identity: Identity) -> Self {
        self.anonymous = Some(identity);
        self
    }

    /// Leaves the `Authorization` header on the request (it is removed by
    /// default).
    pub fn keep_credentials(mut self) -> Self {
        self.strip = false;
        self
    }

    /// The realm named in `WWW-Authenticate` (`switchyard` by default).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Reads the keys and builds the layer.
    pub fn build(self) -> Result<JwtLayer, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoJwtKey);
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, (kid, source)) in self.keys.into_iter().enumerate() {
            let bad = |e: jsonwebtoken::errors::Error| AuthError::InvalidJwtKey {
                index: i,
                reason: e.to_string(),
            };
            let (key, alg, kid) = match source {
                KeySource::Hs256(secret) => {
                    (DecodingKey::from_secret(&secret), Algorithm::HS256, kid)
                }
                KeySource::Rs256Pem(pem) => (
                    DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                    Algorithm::RS256,
                    kid,
                ),
                KeySource::Es256Pem(pem) => (
                    DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                    Algorithm::ES256,
                    kid,
                ),
                KeySource::Jwk(json) => {
                    let jwk: Jwk =
                        serde_json::from_str(&json).map_err(|e| AuthError::InvalidJwtKey {
                            index: i,
                            reason: e.to_string(),
                        })?;
                    let alg = jwk
                        .common
                        .key_algorithm
                        .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                        .ok_or_else(|| AuthError::InvalidJwtKey {
                            index: i,
                            reason: "the JWK has no usable `alg`".to_owned(),
                        })?;
                    let kid = kid.or_else(|| jwk.common.key_id.clone());
                    (DecodingKey::from_jwk(&jwk).map_err(bad)?, alg, kid)
                }
            };
            let mut validation = Validation::new(alg);
            validation.leeway = self.leeway.as_secs();
            validation.validate_nbf = true;
            validation.validate_aud = !self.audiences.is_empty();
            // jsonwebtoken compares `iss` and `aud` only when the token has
            // them: make them required when they are to be checked.
            if !self.audiences.is_empty() {
                validation.set_audience(&self.audiences);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            if !self.issuers.is_empty() {
                validation.set_issuer(&self.issuers);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            keys.push(VerifyKey {
                kid,
                key,
                validation,
            });
        }
        Ok(JwtLayer {
            shared: Arc::new(Shared {
                keys,
                tenant_claim: self.tenant_claim,
                auth: Authenticator::new(
                    Sources {
                        bearer: true,
                        header: None,
                        query: None,
                    },
                    self.strip,
                    self.anonymous,
                    &self.realm,
                ),
            }),
        })
    }
}
