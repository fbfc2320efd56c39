//! Cost of authenticating a request, over calling the service directly.
//!
//! Every function builds the same kind of request (one credential header
//! cycling through a few values, an empty `()` body), drives `ready()` +
//! `call` + the response future, and drops the response inside the
//! iteration, so the differences between them are the authentication
//! alone. The inner service answers with an immediately ready future, so
//! futures are polled once with a no-op waker instead of running an
//! executor.
//!
//! * `passthrough`: the inner service alone, no layer (the baseline).
//! * `api_key_hit`: through `ApiKeyLayer` (default configuration: bearer
//!   and `x-api-key` sources, credentials stripped) with 10,000 keys, the
//!   request carrying one of a few valid keys: SHA-256 of the key, one
//!   table lookup, the `Identity` clone and extension insert, the removal
//!   of the `x-api-key` header.
//! * `api_key_miss`: the same with unknown keys: the 401 problem+json
//!   answer, built without calling the inner service.
//! * `jwt_hs256` (feature `jwt`): a valid HS256 bearer token through
//!   `JwtLayer`.
//!
//! ```text
//! cargo bench --bench auth --features jwt -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Budget (see DESIGN.md): `api_key_hit` − `passthrough` ≤ 300 ns.

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use tower::{Layer, Service, ServiceExt};

mod support;
use support::{Noop, now};

/// Ready, call and poll to completion: the response.
#[inline]
fn call_once<S, B>(svc: &mut S, req: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let svc = now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

/// One full round trip: ready, call, poll to completion, drop the response.
#[inline]
fn round_trip<S, B>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    drop(black_box(call_once(svc, req)));
}

/// Keys in the table.
const KEYS: usize = 10_000;

/// How many distinct credentials the requests cycle through.
const CYCLE: usize = 8;

/// The plaintext of key `i`.
fn key(i: usize) -> String {
    format!("key-{i}")
}

/// Requests carrying one credential header, cycling through `values`.
struct Requests {
    name: HeaderName,
    values: Vec<HeaderValue>,
    next: usize,
}

impl Requests {
    fn new(name: HeaderName, values: impl IntoIterator<Item = String>) -> Self {
        let values: Vec<HeaderValue> = values
            .into_iter()
            .map(|v| HeaderValue::try_from(v).unwrap())
            .collect();
        assert!(!values.is_empty());
        Self {
            name,
            values,
            next: 0,
        }
    }

    /// `x-api-key` with valid keys, spread over the table.
    fn valid_keys() -> Self {
        Self::new(
            HeaderName::from_static("x-api-key"),
            (0..CYCLE).map(|i| key(i * (KEYS / CYCLE) + 7)),
        )
    }

    /// `x-api-key` with keys that are not in the table, as long as valid
    /// ones.
    fn unknown_keys() -> Self {
        Self::new(
            HeaderName::from_static("x-api-key"),
            (0..CYCLE).map(|i| format!("bad-{}", i * (KEYS / CYCLE) + 7)),
        )
    }

    /// The request every function builds, identically.
    #[inline]
    fn build(&mut self) -> Request<()> {
        self.next = (self.next + 1) % self.values.len();
        Request::builder()
            .header(self.name.clone(), self.values[self.next].clone())
            .body(())
            .unwrap()
    }
}

fn api_key_layer() -> ApiKeyLayer {
    ApiKeyLayer::builder()
        .keys((0..KEYS).map(|i| ApiKey::new(&key(i), Identity::new(format!("user-{i}")))))
        .build()
        .unwrap()
}

fn auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    // Criterion runs each closure once per sample: build the services (and
    // hash 10,000 keys) once, outside them.
    let layer = api_key_layer();

    let mut reqs = Requests::valid_keys();
    let mut svc = Noop;
    group.bench_function("passthrough", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let mut reqs = Requests::valid_keys();
    let mut svc = layer.layer(Noop);
    for _ in 0..CYCLE {
        assert_eq!(call_once(&mut svc, reqs.build()).status(), 200);
    }
    group.bench_function("api_key_hit", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let mut reqs = Requests::unknown_keys();
    let mut svc = layer.layer(Noop);
    for _ in 0..CYCLE {
        assert_eq!(call_once(&mut svc, reqs.build()).status(), 401);
    }
    group.bench_function("api_key_miss", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    #[cfg(feature = "jwt")]
    jwt_hs256(&mut group);

    group.finish();
}

/// A valid HS256 bearer token (minted once, expiring in 2100) through
/// `JwtLayer`.
#[cfg(feature = "jwt")]
fn jwt_hs256(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use switchyard::auth::JwtLayer;

    const SECRET: &[u8] = b"a secret of at least 32 bytes, for HS256";
    let claims = serde_json::json!({
        "sub": "alice",
        "exp": 4_102_444_800_u64,
        "scope": "chat",
    });
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();

    let mut reqs = Requests::new(http::header::AUTHORIZATION, [format!("Bearer {token}")]);
    let mut svc = JwtLayer::builder()
        .hs256(SECRET)
        .build()
        .unwrap()
        .layer(Noop);
    assert_eq!(call_once(&mut svc, reqs.build()).status(), 200);
    group.bench_function("jwt_hs256", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
