//! Bearer JWT authentication (feature `jwt`, with the `jsonwebtoken` crate).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::credentials::{AuthStats, Authenticator, Invalid, Sources};
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
    /// Swapped whole by [`JwtHandle::set_keys`].
    keys: ArcSwap<Vec<VerifyKey>>,
    checks: Checks,
    tenant_claim: String,
    auth: Authenticator,
}

/// What every key's validation checks besides the signature.
struct Checks {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    /// Whether a JWK Set may hold symmetric (`oct`) keys.
    oct_in_jwks: bool,
}

/// The shortest HMAC secret accepted, in bytes: RFC 7518 §3.2 asks for a
/// key at least as long as the hash (256 bits for HS256). A shorter one,
/// a password say, falls to an offline guess from any one token.
pub const MIN_HMAC_SECRET: usize = 32;

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

    /// A handle that replaces the verification keys while the layer serves
    /// (key rotation).
    pub fn handle(&self) -> JwtHandle {
        JwtHandle {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for JwtLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtLayer")
            .field("keys", &self.shared.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// Rotates a [`JwtLayer`]'s keys while it serves: the next request is
/// verified by the new set, requests under way finish with the old one.
/// Cheap to clone.
///
/// ```
/// use switchyard::auth::{JwtKeys, JwtLayer};
///
/// let auth = JwtLayer::builder().hs256(b"the first secret, 32 bytes long!").kid("k1").build()?;
/// let keys = auth.handle();
/// // Rotation: accept the old and the new key for a while, then the new
/// // one alone.
/// keys.set_keys(
///     JwtKeys::new()
///         .hs256(b"the first secret, 32 bytes long!").kid("k1")
///         .hs256(b"the second secret, 32 bytes long").kid("k2"),
/// )?;
/// assert_eq!(keys.key_ids(), [Some("k1".to_owned()), Some("k2".to_owned())]);
/// keys.set_keys(JwtKeys::new().hs256(b"the second secret, 32 bytes long").kid("k2"))?;
/// # Ok::<_, switchyard::auth::AuthError>(())
/// ```
#[derive(Clone)]
pub struct JwtHandle {
    shared: Arc<Shared>,
}

impl JwtHandle {
    /// Replaces every key. The set is checked first: an invalid or empty
    /// one is refused and the keys in use stay.
    pub fn set_keys(&self, keys: JwtKeys) -> Result<(), AuthError> {
        let compiled = keys.compile(&self.shared.checks)?;
        self.shared.keys.store(Arc::new(compiled));
        Ok(())
    }

    /// Replaces every key with those of a JWK Set document
    /// (`{"keys": [...]}`, as an identity provider's `jwks_uri` serves it);
    /// see [`JwtKeys::jwks`]. Returns how many keys are in use.
    pub fn set_jwks(&self, jwks_json: &str) -> Result<usize, AuthError> {
        self.set_keys(JwtKeys::new().jwks(jwks_json))?;
        Ok(self.shared.keys.load().len())
    }

    /// The key ids in use, in order (`None` for a key without one).
    pub fn key_ids(&self) -> Vec<Option<String>> {
        self.shared
            .keys
            .load()
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// The layer's counters.
    pub fn stats(&self) -> AuthStats {
        self.shared.auth.stats()
    }
}

impl fmt::Debug for JwtHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtHandle")
            .field("keys", &self.key_ids())
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
    /// The identity of a valid token, or why it is not valid. Of the keys
    /// tried, the refusal that got furthest is kept: a token whose
    /// signature one key verified but that expired is `ExpiredToken`,
    /// however many other keys did not verify it.
    fn verify(&self, token: &str) -> Result<Identity, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::MalformedToken)?;
        let keys = self.keys.load();
        let mut refused = Invalid::NoMatchingKey;
        let claims = keys
            .iter()
            .filter(|k| k.validation.algorithms.contains(&header.alg))
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .find_map(|k| {
                match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &k.validation) {
                    Ok(data) => Some(data),
                    Err(e) => {
                        let why = refusal(e.kind());
                        if rank(why) >= rank(refused) {
                            refused = why;
                        }
                        None
                    }
                }
            })
            .ok_or(refused)?
            .claims;
        identity(&claims, &self.tenant_claim).ok_or(Invalid::Claims)
    }
}

/// The reason counted for one key's refusal of a token.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> Invalid {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => Invalid::ExpiredToken,
        K::InvalidIssuer
        | K::InvalidAudience
        | K::InvalidSubject
        | K::ImmatureSignature
        | K::MissingRequiredClaim(_)
        | K::InvalidClaimFormat(_) => Invalid::Claims,
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => Invalid::MalformedToken,
        _ => Invalid::BadSignature,
    }
}

/// How far a token got with a key: its claims are read only once its
/// signature verified.
fn rank(why: Invalid) -> u8 {
    match why {
        Invalid::ExpiredToken | Invalid::Claims => 3,
        Invalid::BadSignature => 2,
        Invalid::MalformedToken => 1,
        _ => 0,
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
    keys: JwtKeys,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    tenant_claim: String,
    anonymous: Option<Identity>,
    strip: bool,
    realm: String,
    oct_in_jwks: bool,
    keys_later: bool,
}

enum KeySource {
    Hs256(Vec<u8>),
    Rs256Pem(Vec<u8>),
    Es256Pem(Vec<u8>),
    Jwk(String),
    Jwks(String),
}

impl Default for JwtBuilder {
    fn default() -> Self {
        Self {
            keys: JwtKeys::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
            tenant_claim: "tenant".to_owned(),
            anonymous: None,
            strip: true,
            realm: "switchyard".to_owned(),
            oct_in_jwks: false,
            keys_later: false,
        }
    }
}

impl fmt::Debug for JwtBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBuilder")
            .field("keys", &self.keys.keys.len())
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtBuilder {
    /// Verifies HS256 tokens with this shared secret.
    pub fn hs256(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.keys = self.keys.hs256(secret);
        self
    }

    /// Verifies RS256 tokens with this PEM-encoded RSA public key.
    pub fn rs256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys = self.keys.rs256_pem(pem);
        self
    }

    /// Verifies ES256 tokens with this PEM-encoded P-256 public key.
    pub fn es256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys = self.keys.es256_pem(pem);
        self
    }

    /// Verifies tokens with this JWK (JSON); its `alg` (required) names the
    /// algorithm and its `kid`, if any, the key id.
    pub fn jwk(mut self, jwk_json: impl Into<String>) -> Self {
        self.keys = self.keys.jwk(jwk_json);
        self
    }

    /// Verifies tokens with the keys of this JWK Set; see
    /// [`JwtKeys::jwks`].
    pub fn jwks(mut self, jwks_json: impl Into<String>) -> Self {
        self.keys = self.keys.jwks(jwks_json);
        self
    }

    /// Names the last key added (its `kid`), so that tokens naming a key id
    /// are verified by that key only.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.keys = self.keys.kid(kid);
        self
    }

    /// Uses these keys (replacing any added before).
    pub fn keys(mut self, keys: JwtKeys) -> Self {
        self.keys = keys;
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

    /// Lets a JWK Set ([`jwks`](Self::jwks), [`JwtHandle::set_jwks`]) hold
    /// symmetric (`oct`) keys, with an `alg` and at least
    /// [`MIN_HMAC_SECRET`] bytes. Refused by default: a JWK Set is usually
    /// fetched from a provider's public `jwks_uri`, and a shared secret
    /// published there lets anyone sign tokens.
    pub fn allow_oct_in_jwks(mut self) -> Self {
        self.oct_in_jwks = true;
        self
    }

    /// Builds the layer even without keys: every token is refused (401)
    /// until keys are given through [`JwtHandle::set_keys`] or
    /// [`JwtHandle::set_jwks`] (a JWK Set fetched once the application
    /// runs, say).
    pub fn keys_later(mut self) -> Self {
        self.keys_later = true;
        self
    }

    /// Reads the keys and builds the layer. An HS256 secret (or `oct` JWK)
    /// shorter than [`MIN_HMAC_SECRET`] bytes is refused, and so is a layer
    /// without keys, unless [`keys_later`](Self::keys_later).
    pub fn build(self) -> Result<JwtLayer, AuthError> {
        let checks = Checks {
            issuers: self.issuers,
            audiences: self.audiences,
            leeway: self.leeway,
            oct_in_jwks: self.oct_in_jwks,
        };
        let keys = if self.keys_later && self.keys.keys.is_empty() {
            Vec::new()
        } else {
            self.keys.compile(&checks)?
        };
        Ok(JwtLayer {
            shared: Arc::new(Shared {
                keys: ArcSwap::from_pointee(keys),
                checks,
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

/// An ordered set of verification keys: for [`JwtBuilder::keys`] and for
/// rotating a running layer's keys with [`JwtHandle::set_keys`].
#[derive(Default)]
pub struct JwtKeys {
    keys: Vec<(Option<String>, KeySource)>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An HS256 shared secret, at least [`MIN_HMAC_SECRET`] bytes.
    pub fn hs256(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Hs256(secret.into())));
        self
    }

    /// A PEM-encoded RSA public key, for RS256.
    pub fn rs256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Rs256Pem(pem.into())));
        self
    }

    /// A PEM-encoded P-256 public key, for ES256.
    pub fn es256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.keys.push((None, KeySource::Es256Pem(pem.into())));
        self
    }

    /// A JWK (JSON); its `alg` (required) names the algorithm and its
    /// `kid`, if any, the key id.
    pub fn jwk(mut self, jwk_json: impl Into<String>) -> Self {
        self.keys.push((None, KeySource::Jwk(jwk_json.into())));
        self
    }

    /// Every signature key of a JWK Set document (`{"keys": [...]}`), with
    /// their `kid`s. Keys marked `"use": "enc"` are left out; a symmetric
    /// (`oct`) key is an error unless the layer
    /// [allows it](JwtBuilder::allow_oct_in_jwks). A key
    /// without `alg` gets the one algorithm its type allows here: RS256
    /// for RSA, ES256 for EC P-256; any other key without `alg` is an
    /// error, as is a set with no key left.
    pub fn jwks(mut self, jwks_json: impl Into<String>) -> Self {
        self.keys.push((None, KeySource::Jwks(jwks_json.into())));
        self
    }

    /// Names the last key added (its `kid`), so that tokens naming a key id
    /// are verified by that key only. (A JWK Set's keys keep their own.)
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        if let Some(last) = self.keys.last_mut() {
            last.0 = Some(kid.into());
        }
        self
    }

    fn compile(self, checks: &Checks) -> Result<Vec<VerifyKey>, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoJwtKey);
        }
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, (kid, source)) in self.keys.into_iter().enumerate() {
            let invalid = |reason: String| AuthError::InvalidJwtKey { index: i, reason };
            let bad = |e: jsonwebtoken::errors::Error| invalid(e.to_string());
            match source {
                KeySource::Hs256(secret) => {
                    check_secret_len(secret.len()).map_err(invalid)?;
                    keys.push(verify_key(
                        kid,
                        DecodingKey::from_secret(&secret),
                        Algorithm::HS256,
                        checks,
                    ))
                }
                KeySource::Rs256Pem(pem) => keys.push(verify_key(
                    kid,
                    DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                    Algorithm::RS256,
                    checks,
                )),
                KeySource::Es256Pem(pem) => keys.push(verify_key(
                    kid,
                    DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                    Algorithm::ES256,
                    checks,
                )),
                KeySource::Jwk(json) => {
                    let jwk: Jwk =
                        serde_json::from_str(&json).map_err(|e| invalid(e.to_string()))?;
                    let alg = jwk_alg(&jwk, false)
                        .ok_or_else(|| invalid("the JWK has no usable `alg`".to_owned()))?;
                    if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
                        check_secret_len(base64url_len(&oct.value)).map_err(invalid)?;
                    }
                    let kid = kid.or_else(|| jwk.common.key_id.clone());
                    keys.push(verify_key(
                        kid,
                        DecodingKey::from_jwk(&jwk).map_err(bad)?,
                        alg,
                        checks,
                    ));
                }
                KeySource::Jwks(json) => {
                    let set: JwkSet =
                        serde_json::from_str(&json).map_err(|e| invalid(e.to_string()))?;
                    let before = keys.len();
                    for (j, jwk) in set.keys.iter().enumerate() {
                        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                            continue;
                        }
                        let at = |reason: &str| invalid(format!("keys[{j}]: {reason}"));
                        if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
                            if !checks.oct_in_jwks {
                                return Err(at(
                                    "a symmetric (`oct`) key in a JWK Set is not allowed here",
                                ));
                            }
                            check_secret_len(base64url_len(&oct.value)).map_err(|e| at(&e))?;
                        }
                        let alg = jwk_alg(jwk, true).ok_or_else(|| at("no usable `alg`"))?;
                        let key = DecodingKey::from_jwk(jwk).map_err(|e| at(&e.to_string()))?;
                        keys.push(verify_key(jwk.common.key_id.clone(), key, alg, checks));
                    }
                    if keys.len() == before {
                        return Err(invalid("the JWK Set has no signature key".to_owned()));
                    }
                }
            }
        }
        Ok(keys)
    }
}

/// Refuses an HMAC secret shorter than [`MIN_HMAC_SECRET`].
fn check_secret_len(len: usize) -> Result<(), String> {
    if len < MIN_HMAC_SECRET {
        return Err(format!(
            "an HMAC secret of {len} bytes is too short (at least {MIN_HMAC_SECRET})"
        ));
    }
    Ok(())
}

/// How many bytes a base64url text (padded or not) decodes to.
fn base64url_len(text: &str) -> usize {
    text.trim_end_matches('=').len() * 3 / 4
}

/// A JWK's algorithm: its `alg`, or (`infer`, for JWK Sets) the only one
/// its key type is used with here.
fn jwk_alg(jwk: &Jwk, infer: bool) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse::<Algorithm>().ok();
    }
    if !infer {
        return None;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

fn verify_key(kid: Option<String>, key: DecodingKey, alg: Algorithm, checks: &Checks) -> VerifyKey {
    let mut validation = Validation::new(alg);
    validation.leeway = checks.leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_aud = !checks.audiences.is_empty();
    // jsonwebtoken compares `iss` and `aud` only when the token has them:
    // make them required when they are to be checked.
    if !checks.audiences.is_empty() {
        validation.set_audience(&checks.audiences);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    if !checks.issuers.is_empty() {
        validation.set_issuer(&checks.issuers);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    VerifyKey {
        kid,
        key,
        validation,
    }
}
