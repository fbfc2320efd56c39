//! The gateway's configuration: plain serde data, usually read from TOML.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::model::providers::Unsupported;
use crate::model::{Catalog, Provider};
use crate::transform::Rules;

/// The whole gateway: upstreams, API keys, routes, admin keys. Listeners
/// are your application's business; this says what happens to a request.
///
/// `examples/gateway.toml` is a complete example; [`GatewayConfig::from_toml`]
/// reads one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Upstream servers by name.
    pub upstreams: std::collections::BTreeMap<String, UpstreamConfig>,
    /// API keys accepted on routes with `auth`.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Routes, matched in order; the first that matches serves.
    pub routes: Vec<RouteConfig>,
    /// The admin API's keys.
    pub admin: AdminConfig,
    /// Redis, for rate limits shared by every replica (`rate_limit.redis =
    /// true` on a route; feature `redis`).
    pub redis: Option<RedisConfig>,
    /// Keep every split's and model route's weights the same on every
    /// replica through `[redis]` (feature `redis`; see [`crate::sync`]).
    pub weight_sync: Option<WeightSyncConfig>,
    /// A rate limit every request meets before anything else on every
    /// route, authentication included, keyed by the caller's address
    /// (`key = "peer_ip"`, or `{ client_ip = [trusted proxies] }` behind a
    /// load balancer): it bounds credential stuffing and 401 floods, which
    /// per-identity limits never see. Counted in this process; `identity`
    /// keys (unknown before authentication) and `redis = true` are
    /// refused. None by default.
    pub pre_auth_limit: Option<RateLimitConfig>,
    /// Route on, and forward, the request path as it came, instead of its
    /// normal form (see [`crate::path`]: `..` resolved, `//` merged,
    /// unreserved escapes decoded, escaped `/` refused with a 400). Off by
    /// default: with raw paths, `/public/../admin` matches the `/` route
    /// here and may reach `/admin` upstream.
    pub raw_paths: bool,
    /// `false` passes the W3C trace context (`traceparent`, `tracestate`)
    /// on as the client sent it, or not at all, instead of starting a new
    /// trace for a request without a valid one (see [`crate::trace`]; on
    /// by default). The access log still names the trace of a request
    /// that came with one valid `traceparent`.
    pub trace_context: Option<bool>,
    /// `[server]`: the limits, TLS and shutdown deadline of the server the
    /// gateway is served with (see [`crate::server::ServerConfig`]; every
    /// field has a safe default). Read when the server is built: a reload
    /// of the gateway does not change a running server's limits (its
    /// certificate reloads with [`ServerHandle::reload_tls`](crate::server::ServerHandle::reload_tls)).
    pub server: crate::server::ServerConfig,
    /// `[platform]`: where the runtime changes of routes' APIs (lifecycle
    /// moves, subscriptions) are kept.
    pub platform: PlatformConfig,
    /// `[rollouts]`: what every route's rollout (`[routes.rollout]`)
    /// shares: the webhooks told of its events.
    pub rollouts: RolloutsConfig,
    /// `[jwt]`: bearer JWT authentication for routes with
    /// `auth = { jwt = true }` (feature `jwt`).
    pub jwt: Option<JwtConfig>,
}

/// Bearer JWT authentication (`[jwt]`, feature `jwt`; see
/// [`JwtLayer`](crate::auth::JwtLayer) for what is checked): static keys,
/// a JWK Set file, and a `jwks_uri` fetched in the background.
///
/// ```
/// # use switchyard::gateway::GatewayConfig;
/// let config = GatewayConfig::from_toml(r#"
///     [jwt]
///     issuers = ["https://login.example.com/"]
///     audiences = ["orders"]
///     jwks_uri = "https://login.example.com/.well-known/jwks.json"
///     keys = [{ kid = "ci", hs256_secret = { env = "CI_JWT_SECRET" } }]
/// "#)?;
/// assert_eq!(config.jwt.unwrap().keys.len(), 1);
/// # Ok::<_, toml::de::Error>(())
/// ```
///
/// **`jwks_uri`.** Fetched when the gateway starts (on a tokio runtime)
/// and every `jwks_refresh_ms` (5 minutes by default; sooner when the
/// answer's `Cache-Control: max-age` says so, never more often than every
/// 10 s). A failed fetch (no answer, not a 2xx, not a JWK Set with a
/// usable key) keeps the last good set and is retried after 1 s, 2 s,
/// 4 s… up to the refresh period. Until the first fetch succeeds, only
/// the static keys verify. A reload that keeps `jwks_uri` keeps the
/// fetched set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtConfig {
    /// Accepted `iss` values; any when empty.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; `aud` is not checked when empty.
    pub audiences: Vec<String>,
    /// Clock leeway for `exp` and `nbf`, 60 s by default.
    pub leeway_ms: Option<u64>,
    /// The claim read as the tenant, `tenant` by default.
    pub tenant_claim: Option<String>,
    /// Static keys.
    pub keys: Vec<JwtKeyConfig>,
    /// A JWK Set document read from a file (at start and on reload).
    pub jwks_file: Option<String>,
    /// A JWK Set fetched from this `http://` (or, with feature `tls`,
    /// `https://`) URL and refreshed in the background.
    pub jwks_uri: Option<String>,
    /// How often `jwks_uri` is fetched again, 300,000 ms by default.
    pub jwks_refresh_ms: Option<u64>,
    /// How long one fetch may take, 5,000 ms by default.
    pub jwks_timeout_ms: Option<u64>,
}

/// One static JWT verification key: exactly one of `hs256_secret`,
/// `rs256_pem_file` and `es256_pem_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtKeyConfig {
    /// The key's id: tokens naming it (`kid`) are verified by it alone.
    pub kid: Option<String>,
    /// An HS256 secret (at least 32 bytes), from `{ env = "NAME" }` or
    /// `{ file = "PATH" }`: never written in the configuration.
    pub hs256_secret: Option<crate::model::KeySource>,
    /// An RSA public key (PEM) verifying RS256.
    pub rs256_pem_file: Option<String>,
    /// An EC P-256 public key (PEM) verifying ES256.
    pub es256_pem_file: Option<String>,
}

/// A route's shadow traffic (`[routes.mirror]`, feature `mirror`; see
/// [`crate::mirror`]): a share of the requests the route's split (or model
/// router) gets, after its transform, copied to `upstream`, the copy's
/// answer thrown away after it is compared with the primary's. Never
/// delays the caller; bounded by `max_concurrent` and `shadow_timeout_ms`.
/// `percent` changes live through the admin API
/// (`PUT /mirrors/{route}/percent`).
///
/// ```
/// # use switchyard::gateway::GatewayConfig;
/// let config = GatewayConfig::from_toml(r#"
///     [upstreams.blue]
///     url = "http://127.0.0.1:3001"
///     [upstreams.green]
///     url = "http://127.0.0.1:3002"
///     [[routes]]
///     name = "api"
///     split.targets = [{ name = "blue", upstream = "blue", weight = 100 }]
///     mirror = { upstream = "green", percent = 5.0, methods = ["GET", "POST"], compare_json = true }
/// "#)?;
/// assert_eq!(config.routes[0].mirror.as_ref().unwrap().percent, 5.0);
/// # Ok::<_, toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MirrorConfig {
    /// The shadow: an upstream's name.
    pub upstream: String,
    /// The share of eligible requests copied, 0 to 100 (100 by default).
    #[serde(default = "hundred")]
    pub percent: f64,
    /// The methods copied (`GET`, `HEAD` and `OPTIONS` by default; `["*"]`
    /// for all, `POST` included: only for shadows without side effects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Compare JSON response bodies too, not only status classes.
    #[serde(default)]
    pub compare_json: bool,
    /// The most body bytes buffered to copy a request or compare an
    /// answer (64 KiB by default; larger requests are not copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<usize>,
    /// Shadow calls at once (64 by default); more copies are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// The longest a shadow call may take (30,000 ms by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_timeout_ms: Option<u64>,
    /// Pairs of differing answers kept for the admin API (10 by default;
    /// bodies cut to 1 KiB, kept in memory only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

fn hundred() -> f64 {
    100.0
}

/// What every rollout shares (see [`RouteRolloutConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutsConfig {
    /// Told of every rollout event, in order, each with its own queue and
    /// retries, so that a pipeline follows a rollout without polling.
    pub webhooks: Vec<WebhookConfig>,
    /// How often the gateway leading a rollout renews its lease in the
    /// state store, in milliseconds (10 000 by default).
    pub heartbeat_ms: Option<u64>,
    /// How long a lease holds without renewal, in milliseconds (30 000 by
    /// default; more than `heartbeat_ms`): past it, the next gateway over
    /// the same store to look (each looks every `heartbeat_ms`) takes the
    /// lead and carries the rollout on from its recorded step.
    pub lease_ms: Option<u64>,
    /// With `[redis]`: how often each gateway shares its counters of the
    /// versions of every route with a rollout plan, in milliseconds (500
    /// by default; 0 keeps them its own). The gateway leading a rollout
    /// judges the sum of every replica's counters, so a canary is judged
    /// on all of its traffic, whichever replica served it (each replica's
    /// share lags by up to this period).
    pub samples_ms: Option<u64>,
}

/// A URL told of rollout events: each event is `POST`ed as JSON
/// (`{"route", "event", "seq", "at", "step", "state", "canary_weight",
/// "detail"}`), in order; a delivery that fails (no answer, or not a 2xx)
/// is retried after 0.5 s, 1 s, 2 s… up to `retries` times before the
/// next event is sent. At most 1,024 events wait per webhook; beyond that
/// new events are dropped and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// `http://` (or, with feature `tls`, `https://`) URL.
    pub url: String,
    /// The events sent (`started`, `step`, `paused`, `resumed`, `skipped`,
    /// `verdict`, `promoted`, `aborted`, `lead`: another gateway took the
    /// lead); all when empty.
    pub events: Vec<String>,
    /// Headers sent with each delivery (an `authorization` for the
    /// receiver, say); their values are redacted by `GET /config`.
    pub headers: BTreeMap<String, String>,
    /// Attempts after the first, 5 by default.
    pub retries: Option<u32>,
    /// How long one attempt may take, 5 s by default.
    pub timeout_ms: Option<u64>,
}

/// A route's rollout plan (`[routes.rollout]`): which target (a split's)
/// or version (a model alias's) is stable, which is the canary, and the
/// [`Plan`](crate::rollout::Plan) that moves traffic between them. It runs
/// when started through the admin API (`POST /rollouts/{route}`) or
/// [`Gateway::start_rollout`](super::Gateway::start_rollout), and is
/// paused, resumed, skipped and aborted there.
///
/// * **Reloads.** A running rollout keeps going: it finds its route by
///   name in the configuration in force at each step (a rebuilt split
///   too), and a reload that sets the route's weights has the rollout's
///   weight put back before the new configuration takes requests. A
///   reload that changes the plan changes the next rollout, not the one
///   running.
/// * **Restarts.** Its record (state, step, weight, verdicts, history) is
///   kept in `[platform]`'s store (a state file or Redis; in memory
///   without one) on every event, with a heartbeat every 10 s while it
///   runs. A gateway that stops mid-rollout cannot finish it: the next
///   gateway over the same store that finds the record running with a
///   heartbeat over 30 s old **aborts it** — traffic back on `stable`,
///   the reason recorded, webhooks told `aborted` — and it can be started
///   again. (Resuming mid-plan after a restart would judge the canary on
///   windows the restart cut; an abort is the safe side.)
/// * **Webhooks** (`[[rollouts.webhooks]]`) hear every event in order.
///
/// ```
/// # use switchyard::gateway::GatewayConfig;
/// let config = GatewayConfig::from_toml(r#"
///     [upstreams.blue]
///     url = "http://127.0.0.1:3001"
///     [upstreams.green]
///     url = "http://127.0.0.1:3002"
///     [[routes]]
///     name = "api"
///     split.targets = [
///         { name = "blue", upstream = "blue", weight = 100 },
///         { name = "green", upstream = "green", weight = 0 },
///     ]
///     [routes.rollout]
///     stable = "blue"
///     canary = "green"
///     plan.steps = [{ set_weight = 10 }, { analyze = { windows = 3 } }, { set_weight = 50 }, { pause = "5m" }]
///     plan.analysis = { max_error_rate = 0.02 }
/// "#)?;
/// assert_eq!(config.routes[0].rollout.as_ref().unwrap().canary, "green");
/// # Ok::<_, toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteRolloutConfig {
    /// The stable target (or model version).
    pub stable: String,
    /// The canary target (or model version).
    pub canary: String,
    /// On a model route: the alias whose versions the rollout moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The steps, the analysis and the rollback.
    pub plan: crate::rollout::Plan,
}

impl RouteRolloutConfig {
    /// A rollout from `stable` to `canary` along `plan`.
    pub fn new(
        stable: impl Into<String>,
        canary: impl Into<String>,
        plan: crate::rollout::Plan,
    ) -> Self {
        Self {
            stable: stable.into(),
            canary: canary.into(),
            alias: None,
            plan,
        }
    }

    /// On a model route: the alias whose versions it moves.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = Some(alias.into());
        self
    }
}

/// Where the platform's runtime state is kept (see [`crate::state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PlatformConfig {
    /// A JSON file, replaced atomically on every change and read at
    /// start: lifecycle moves and subscriptions made through the admin
    /// API and the catalog survive a restart. A corrupt file is refused
    /// with its line and column. It cannot change on a reload.
    ///
    /// Without either this or `redis`, they live as long as the process.
    pub state_file: Option<String>,
    /// Keep them in `[redis]` instead (feature `redis`), shared by every
    /// replica: a change made on one is announced on a Redis channel and
    /// read again by the others at once (within `refresh_ms` for one that
    /// missed the announcement). The gateway refuses to start when Redis cannot be
    /// read, as it refuses a corrupt state file: serving with keys revoked
    /// there in force again, or drafts published, would be worse. (So it
    /// is asked for here, not implied by `[redis]`, which rate limits may
    /// use with Redis away.) Not over mutual TLS yet (`client_cert_file`
    /// in `[redis]` is refused with it).
    pub redis: bool,
    /// With the state in Redis: the prefix of its hashes
    /// (`switchyard:state:` by default).
    pub redis_prefix: Option<String>,
    /// With the state in Redis: how often each replica reads it again
    /// for the others' changes it did not hear announced, in milliseconds
    /// (1000 by default).
    pub refresh_ms: Option<u64>,
}

/// A route served as an API of the platform: named, versioned, owned, in
/// a lifecycle stage, listed in the catalog, and open to subscribers only
/// when it has a `subscription` policy (see [`crate::platform`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// The API's name, the same for each of its versions.
    pub name: String,
    /// This route's version of it (`v1`).
    pub version: String,
    /// The team that owns it: team-scoped admin keys of this team change it.
    pub owner: Option<String>,
    /// What it is for, shown in the catalog.
    pub description: Option<String>,
    /// Its stage when first built: `draft` (the default), `published`,
    /// `deprecated` or `retired`. A stage moved through the admin API is
    /// kept in `[platform] state_file` and wins over this at a restart;
    /// a reload that changes this field moves the API (if the move is
    /// allowed), as if by an admin named `config`.
    pub stage: Option<crate::platform::lifecycle::Stage>,
    /// When it was deprecated, Unix seconds (the `Deprecation` header);
    /// the time of the move when it is deprecated by a move.
    pub deprecated_at: Option<u64>,
    /// When it stops being served, Unix seconds (the `Sunset` header).
    pub sunset: Option<u64>,
    /// Where its successor is (`/v2/orders`), linked from deprecated and
    /// retired answers.
    pub successor: Option<String>,
    /// Choose this version by a request header rather than by path: with
    /// `version_header = "api-version"`, the route takes only requests
    /// whose `api-version` is this `version` (routes are matched in
    /// order, so a route of the same path without a version header,
    /// after it, serves the rest).
    pub version_header: Option<String>,
    /// A header that lets testers reach a draft: `{ name = "x-tester",
    /// value = "yes" }`.
    pub tester_header: Option<TesterHeaderConfig>,
    /// A scope that lets its holders reach a draft.
    pub tester_scope: Option<String>,
    /// Who sees it in the catalog: every consumer (no value), or the
    /// listed teams (tenants) and the owner.
    pub visible_to: Option<Vec<String>>,
    /// `open` or `approval`: callers need a subscription (403
    /// `subscription_required` otherwise). None by default: no
    /// subscription needed. Needs `auth` on the route.
    pub subscription: Option<crate::platform::subscription::Policy>,
    /// Its limits as consumers should read them, shown in the catalog.
    pub limits: Option<String>,
    /// A file holding its own OpenAPI 3.1 document (JSON), served by the
    /// catalog instead of one generated from this route.
    pub openapi_file: Option<String>,
}

/// A route serving a prompt API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PromptRouteConfig {
    /// The route, earlier in `routes` and with `model`, whose model router
    /// answers the prompt's chat requests (the alias behind the prompt
    /// splits, pins and falls back there).
    pub model_route: String,
    /// Keep each caller on one template version: the sticky key, as a
    /// split's (`"identity"`, `{ header = "x-user" }`, ...). Random by
    /// weight without one.
    #[serde(default)]
    pub sticky: Option<KeyConfig>,
    /// The prompt API: variables, template versions, mode.
    pub api: crate::platform::prompt::PromptApiConfig,
}

/// A tester header: its name and the value that marks a tester.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TesterHeaderConfig {
    /// The header's name.
    pub name: String,
    /// The value.
    pub value: String,
}

impl GatewayConfig {
    /// Parses TOML. Unknown fields are refused.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// An upstream server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// `http://host[:port][/prefix]`, or `https://` with the `tls`
    /// feature.
    pub url: String,
    /// Speak HTTP/2: h2c for `http://` (gRPC upstreams), ALPN `h2` for
    /// `https://`.
    pub http2: bool,
    /// For `https://`: a PEM file of the root certificates to check the
    /// upstream against, instead of the system's (a private CA). Read when
    /// the upstream is built; a reload with the same configuration keeps
    /// the upstream, and so the roots, it has.
    pub ca_file: Option<String>,
    /// For `https://`: a PEM file holding the client certificate (then any
    /// intermediates) to present to an upstream that asks for one (mutual
    /// TLS); needs `client_key_file`. Read like `ca_file`.
    pub client_cert_file: Option<String>,
    /// The PEM file of `client_cert_file`'s private key.
    pub client_key_file: Option<String>,
    /// How long a WebSocket (any upgraded connection) may stay silent both
    /// ways before it is closed, in milliseconds (300000, five minutes, by
    /// default; 0 for no limit).
    pub upgrade_idle_timeout_ms: Option<u64>,
    /// Connect timeout in milliseconds (5000 by default).
    pub connect_timeout_ms: Option<u64>,
    /// Time to response headers in milliseconds, counted from when the
    /// request has been sent (15000 by default, as Envoy's; 0 for no
    /// limit). Response bodies (streams) are not limited.
    pub response_timeout_ms: Option<u64>,
    /// A circuit breaker: with this many requests in flight to the
    /// upstream, more are answered 503 with `Retry-After` (no limit by
    /// default; see [`crate::proxy::UpstreamBuilder::max_in_flight`]).
    pub max_in_flight: Option<u64>,
    /// A circuit breaker: with this many requests waiting for their
    /// response head, more are answered 503 with `Retry-After` (no limit
    /// by default).
    pub max_pending: Option<u64>,
    /// The protocols a client may upgrade to (`["websocket"]` by default;
    /// `h2c` is never passed on).
    pub upgrade_protocols: Option<Vec<String>>,
    /// `"append"` (the default) adds the peer to `X-Forwarded-For`;
    /// `"replace"`, at the edge, replaces the list an untrusted peer sent.
    pub forwarded_for: Option<ForwardedForConfig>,
    /// `false` leaves `X-Real-IP` out (written by default; see
    /// [`crate::proxy::UpstreamBuilder::real_ip_header`]): a client's own
    /// is still removed unless it came through a trusted proxy.
    pub real_ip_header: Option<bool>,
    /// The reverse proxies in front (IP addresses or CIDR ranges) whose
    /// `X-Forwarded-Proto`, `X-Real-IP` and `X-Forwarded-For` are believed
    /// (none by default).
    pub trusted_proxies: Vec<String>,
    /// Pass the client's `Host` on.
    pub preserve_host: bool,
    /// More servers of this upstream beside `url` (same scheme and path):
    /// requests go to each in turn, skipping those out of service (see
    /// [`crate::proxy::UpstreamBuilder::endpoint`]).
    pub endpoints: Vec<String>,
    /// With `endpoints`: failed requests in a row that take an endpoint
    /// out of service (3 by default).
    pub eject_failures: Option<u32>,
    /// With `endpoints`: for how long, in milliseconds (10000 by default).
    pub eject_ms: Option<u64>,
    /// With `endpoints`: count 5xx answers as failures too (see
    /// [`crate::proxy::UpstreamBuilder::eject_on_5xx`]).
    pub eject_on_5xx: bool,
    /// Active health checks of every endpoint (none by default).
    pub health_check: Option<HealthCheckConfig>,
    /// With `endpoints`: `"round_robin"` (the default) or
    /// `"least_requests"` (the endpoint with the fewest requests in
    /// flight; see [`crate::proxy::Balance`]).
    pub balance: Option<BalanceConfig>,
    /// Where the endpoints come from, followed as they change (see
    /// [`crate::discovery`]): DNS records, SRV records or a file. `url`
    /// still gives the scheme, the path and, for `dns`, the port; its host
    /// is used until the first answer. `endpoints` cannot be given with it.
    pub discovery: Option<DiscoveryConfig>,
}

/// `[upstreams.NAME] discovery`: one of `dns`, `srv` or `file`, and how
/// often it is asked.
///
/// ```toml
/// [upstreams.green]
/// url = "http://green.svc.internal:8080"
/// discovery = { dns = "green.svc.internal", refresh_min_ms = 1000, refresh_max_ms = 30000 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// A DNS name whose A and AAAA records are the endpoints, on the
    /// port of `url` (feature `dns`).
    pub dns: Option<String>,
    /// A DNS name whose SRV records are the endpoints: their targets'
    /// addresses, ports and weights (feature `dns`).
    pub srv: Option<String>,
    /// A JSON or TOML file listing the endpoints (see
    /// [`crate::discovery::FileSource`]), reread when it changes.
    pub file: Option<String>,
    /// For `dns` and `srv`: the DNS server to ask (`ip:port`) instead of
    /// the system's (`/etc/resolv.conf`).
    pub nameserver: Option<String>,
    /// The shortest time between two answers, in milliseconds (1000 by
    /// default).
    pub refresh_min_ms: Option<u64>,
    /// The longest (the records' TTL is followed between the two; a file
    /// is looked at this often), in milliseconds (30000 by default).
    pub refresh_max_ms: Option<u64>,
    /// How long the last endpoints are kept while the source fails or
    /// answers with none, in milliseconds (3600000, an hour, by default;
    /// 0 for ever).
    pub max_stale_ms: Option<u64>,
    /// Answers in a row an endpoint must be missing from to be removed
    /// (2 by default).
    pub remove_after: Option<u32>,
}

/// `[upstreams.NAME] forwarded_for`: how `X-Forwarded-For` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardedForConfig {
    /// Append the peer to the list.
    Append,
    /// Replace the list an untrusted peer sent.
    Replace,
}

/// `[upstreams.NAME] balance`: how requests are spread over the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BalanceConfig {
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastRequests,
}

/// `[upstreams.NAME.health_check]`: a `GET` of `path` on every endpoint
/// every `interval_ms`; an endpoint failing `unhealthy_after` checks in a
/// row (no 2xx within `timeout_ms`) is out of service until it passes
/// `healthy_after` in a row (see [`crate::proxy::HealthCheck`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// The path to ask, below the upstream's own (`/healthz`, say).
    pub path: String,
    /// Milliseconds between checks (5000 by default).
    pub interval_ms: Option<u64>,
    /// Milliseconds a check may take (1000 by default).
    pub timeout_ms: Option<u64>,
    /// Failed checks in a row that take an endpoint out (2 by default).
    pub unhealthy_after: Option<u32>,
    /// Passed checks in a row that bring it back (2 by default).
    pub healthy_after: Option<u32>,
}

impl UpstreamConfig {
    /// An upstream at `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// An API key: its SHA-256 digest (`sha256:<hex>`, what real configs
/// hold) or, for demos, the key itself; and the identity it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiKeyConfig {
    /// The key in plain text (demos only).
    pub key: Option<String>,
    /// The key's digest, `sha256:<64 hex digits>`.
    pub digest: Option<String>,
    /// The identity's id.
    pub id: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its tier.
    pub tier: Option<String>,
    /// Admin keys only: the team the key acts for. It may change only the
    /// routes whose `api.owner` is this team (their splits, models and
    /// lifecycle) and the subscriptions of those APIs; every other change
    /// is refused with 403. Reads are not limited.
    pub team: Option<String>,
    /// Admin keys only: the key reads and never changes (403).
    pub read_only: bool,
}

/// The Redis server rate limits with `redis = true` count in (see
/// [`crate::ratelimit::redis`]). Every replica given the same server and
/// prefix shares those limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS
    /// (switchyard's `tls` feature: rustls with ring, checking the server
    /// against the system's root certificates or `ca_file`). Give this,
    /// `cluster` or `sentinel`: one of the three.
    pub url: String,
    /// A Redis Cluster instead of one server: the URLs of some of its
    /// nodes (any one that answers is enough to find the others), each
    /// like `url`. Every key switchyard's scripts touch in one call shares
    /// a `{hash tag}`, so each call runs on one node.
    pub cluster: Vec<String>,
    /// The primary Redis Sentinel names, followed through failovers.
    pub sentinel: Option<RedisSentinelConfig>,
    /// For `rediss://`: a PEM file of the root certificates to check the
    /// server against, instead of the system's (a private CA). Read when
    /// the connection is made from this section; a reload with the same
    /// `[redis]` keeps the connection, and so the roots, it has.
    pub ca_file: Option<String>,
    /// For `rediss://`: a PEM file holding the client certificate (then
    /// any intermediates) to present to a server that asks for one (mutual
    /// TLS, `tls-auth-clients yes`); needs `client_key_file`. Read like
    /// `ca_file`.
    pub client_cert_file: Option<String>,
    /// The PEM file of `client_cert_file`'s private key.
    pub client_key_file: Option<String>,
    /// The prefix of every key (`switchyard:rl:` by default).
    pub prefix: Option<String>,
    /// How long a check may take, in milliseconds (100 by default).
    pub timeout_ms: Option<u64>,
    /// Refuse requests with 503 when Redis does not answer, instead of
    /// letting them through: the same as `on_failure = "reject"`.
    pub fail_closed: bool,
    /// What a request whose check Redis does not answer gets: `"allow"`
    /// (let through, the default), `"reject"` (503), or `"local"` (limited
    /// in this replica's memory with its share of the quotas, see
    /// `replicas`, until Redis answers again).
    pub on_failure: Option<RedisFailureConfig>,
    /// With `on_failure = "local"`: how many replicas share each limit,
    /// so each limits with that share of it (1 by default).
    pub replicas: Option<u32>,
    /// Failed checks in a row after which the limiters stop asking Redis
    /// for `breaker_cooldown_ms` and go straight to `on_failure` (3 by
    /// default; 0 always asks).
    pub breaker_failures: Option<u32>,
    /// How long the limiters stop asking, in milliseconds (1000 by
    /// default); then one request asks again.
    pub breaker_cooldown_ms: Option<u64>,
}

/// `[redis] sentinel`: the primary of a service Redis Sentinel watches
/// (see [`crate::redis_conn`]). Over TLS when the sentinels' URLs are
/// `rediss://` (both to the sentinels and to the primary, with `ca_file`
/// and the client certificate for both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisSentinelConfig {
    /// The service's name, as in the sentinels' `sentinel monitor`.
    pub master: String,
    /// The sentinels' URLs (`redis://[user:password@]host:port`, their
    /// own credentials), at least one; give them all.
    pub urls: Vec<String>,
    /// The primary's username, if it wants one.
    pub username: Option<String>,
    /// The primary's password, if it wants one.
    pub password: Option<String>,
    /// The database (0 by default).
    pub db: i64,
}

/// `[redis] on_failure`: what a rate-limited request gets when Redis does
/// not answer (see [`crate::ratelimit::redis::RedisFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RedisFailureConfig {
    /// Let it through.
    Allow,
    /// Refuse it with 503.
    Reject,
    /// Limit it in this replica's memory, with its share of the quotas.
    Local,
}

/// `[weight_sync]`: the weights of every route's split and model router,
/// and the quotas and dry-run of its Redis rate limit, kept the same on
/// every replica given the same `[redis]` (see
/// [`crate::sync`]), under the route's name. A change on one replica, by
/// the admin API, a rollout or a reload, reaches the others within about
/// one check interval (announced on a Redis channel), or one interval when
/// announcements are off or missed; a replica that starts takes the
/// fleet's weights.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WeightSyncConfig {
    /// Milliseconds between rounds (1000 by default).
    pub interval_ms: Option<u64>,
    /// The prefix of its keys (`switchyard:weights:` by default): fleets
    /// sharing one Redis need different prefixes.
    pub prefix: Option<String>,
    /// How long one Redis call may take, in milliseconds (1000 by
    /// default).
    pub timeout_ms: Option<u64>,
    /// Milliseconds between looks for changes made on this replica, which
    /// read memory and publish what changed (100 by default).
    pub check_interval_ms: Option<u64>,
    /// Listen for the other replicas' announcements on a Redis channel and
    /// apply their changes at once, instead of at the next round (true by
    /// default; see [`crate::sync::WeightSyncBuilder::notify`]).
    pub notify: Option<bool>,
    /// Share each upstream's set of servers too (true by default): a
    /// server added, removed or drained through the admin API on one
    /// replica is on every other, and a replica that starts takes the
    /// fleet's set (see [`crate::sync::WeightSyncBuilder::upstream`]).
    /// Upstreams that follow a `discovery` source are left out: each
    /// replica follows it. `false` keeps each replica's servers its own.
    pub endpoints: Option<bool>,
}

/// The admin API's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Keys accepted by the admin API (bearer or `x-api-key`).
    pub keys: Vec<ApiKeyConfig>,
}

/// A route: which requests, and the pipeline they go through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The route's name (unique; the admin API addresses routes by it).
    pub name: String,
    /// The path prefix, segment-wise (`/api` matches `/api/x`, not
    /// `/apix`); `/` by default.
    pub path_prefix: Option<String>,
    /// The host (without port), any host when absent.
    pub host: Option<String>,
    /// Methods, any when empty.
    pub methods: Vec<String>,
    /// Require an API key from `api_keys`.
    pub auth: Option<AuthConfig>,
    /// Rate limits.
    pub rate_limit: Option<RateLimitConfig>,
    /// Request and response rewriting.
    pub transform: Option<Rules>,
    /// Split over upstreams. A route has a split or a model router.
    pub split: Option<SplitConfig>,
    /// Model router over upstreams.
    pub model: Option<ModelConfig>,
    /// Serve the platform's catalog here (instead of a split or a model
    /// router): the APIs of every route with `api`, as the caller may see
    /// them (see [`crate::platform::catalog`]). Give it `auth`: the
    /// catalog is for authenticated consumers.
    pub catalog: bool,
    /// A prompt API (instead of a split or a model router): callers send
    /// `{"variables": {…}}`, a version of its template (weighted, sticky,
    /// promoted and rolled back through `/splits/{route}/…` like a
    /// split's targets) becomes a chat request to another route's model
    /// router (see [`crate::platform::prompt`]).
    pub prompt: Option<PromptRouteConfig>,
    /// This route as an API of the platform: name, version, owner,
    /// lifecycle stage, catalog listing, subscriptions.
    pub api: Option<ApiConfig>,
    /// Copies a share of the route's requests to another upstream and
    /// compares the answers (feature `mirror`).
    pub mirror: Option<MirrorConfig>,
    /// A rollout plan for the route's split (or a model alias), started,
    /// paused, resumed, skipped and aborted through the admin API
    /// (`/rollouts/{route}`).
    pub rollout: Option<RouteRolloutConfig>,
    /// Take paths with `;` parameters (`/a;jsessionid=1/b`); refused with a
    /// 400 by default (see [`crate::path`]). Routes are matched on the path
    /// without parameters either way, so `/admin;x/users` is the `/admin`
    /// route's request, never another route's.
    pub allow_path_params: bool,
}

/// Authentication on a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Scopes the caller must all have (403 otherwise).
    pub scopes: Vec<String>,
    /// Authenticate with a bearer JWT (`[jwt]`) instead of an API key.
    pub jwt: bool,
}

/// Rate limiting on a route (see [`crate::ratelimit`]), or before
/// authentication (`pre_auth_limit`).
///
/// ```
/// # use switchyard::gateway::GatewayConfig;
/// let config = GatewayConfig::from_toml(r#"
///     [upstreams.api]
///     url = "http://127.0.0.1:3001"
///     [[api_keys]]
///     key = "demo-key"
///     id = "demo"
///     tier = "gold"
///     [[routes]]
///     name = "api"
///     auth = {}
///     split.targets = [{ name = "api", upstream = "api", weight = 1 }]
///     [routes.rate_limit]
///     key = "identity"
///     quotas = [{ limit = 60, period = "1m" }]
///     tiers.gold = [{ limit = 600, period = "1m", name = "gold" }]
///     cost = { header = "x-estimated-cost", default = 1 }
///     allow = ["ops-bot"]
///     dry_run = true
///     max_keys = 50000
///     on_missing_key = "allow"
/// "#)?;
/// let rl = config.routes[0].rate_limit.as_ref().unwrap();
/// assert_eq!(rl.tiers["gold"][0].limit, 600);
/// # Ok::<_, toml::de::Error>(())
/// ```
///
/// # Reloads
///
/// A reload keeps a route's limiter counted in this process, and every
/// key's state in it, while its `key` and the options a limiter is built
/// with (`cost`, `max_keys`, `when_full`, `on_missing_key`,
/// `missing_key_status`, `headers_on_allowed`, `legacy_headers`) stay the
/// same; it then changes `quotas`, `tiers`, `dry_run` and `allow` in place,
/// all at once, as [`RateLimitHandle`](crate::ratelimit::RateLimitHandle)
/// does (each key's state kept per quota position). A reload that changes
/// one of the build options builds a new limiter: every key starts fresh.
/// A limit counted in Redis is built again on any change, its state being
/// in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// What is limited: `"identity"`, `"peer_ip"`, `"global"`,
    /// `{ header = "x-user" }`, `{ client_ip = ["10.0.0.0/8"] }` ...
    pub key: KeyConfig,
    /// The quotas, all of which must allow a request (up to four): every
    /// caller's, or, with `tiers`, those of callers without a tier of
    /// their own there.
    pub quotas: Vec<QuotaConfig>,
    /// Count in the gateway's `[redis]`, shared by every replica, instead
    /// of in this process. Such a limit takes `cost`, `dry_run`, `allow`,
    /// `on_missing_key` and the header options; `tiers`, `max_keys` and
    /// `when_full` are refused with it.
    #[serde(default)]
    pub redis: bool,
    /// Quotas by tier (the [`tier`](ApiKeyConfig::tier) of the caller's
    /// API key, [`Identity::tier`](crate::auth::Identity::tier)): a caller
    /// of a tier listed here is limited by that tier's quotas instead of
    /// `quotas` (`tiers.gold = [{ limit = 600, period = "1m" }]`). None by
    /// default. Needs `auth` on the route; refused before authentication
    /// and with `redis = true`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, Vec<QuotaConfig>>,
    /// What a request costs in quota units: 1 by default; `{ fixed = 5 }`,
    /// or `{ header = "x-estimated-tokens", default = 100 }` (see
    /// [`CostConfig`]). A cost above a quota's burst is always refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostConfig>,
    /// Count, and send the headers, but never refuse: requests over the
    /// limit are let through and counted as dry-run refusals (to try a
    /// limit on real traffic first). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Keys never limited (nor counted), in the form `key` takes: IP
    /// addresses for `peer_ip` and `client_ip`, header or cookie values,
    /// and for `identity` an API key's `id` (`"tenant/id"` for one with a
    /// tenant). Refused with `key = "global"`. Empty by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The most keys counted at once in this process (100000 by default):
    /// the memory bound of the limiter (see [`crate::ratelimit`]'s
    /// "Memory"). Refused with `redis = true`, where Redis keeps the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
    /// With `max_keys` keys in use and none fully recovered: `"share"` (the
    /// default) limits every new key with one shared state, `"allow"` lets
    /// new keys through unlimited. Refused with `redis = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_full: Option<WhenFullConfig>,
    /// A request without a key (no `x-user` header, no identity):
    /// `"reject"` (the default, with `missing_key_status`) or `"allow"`
    /// (let through unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_key: Option<MissingKeyConfig>,
    /// With `on_missing_key = "reject"`: the status of the refusal, a 4xx
    /// (400 by default; 401 or 429 also make sense).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_key_status: Option<u16>,
    /// Whether allowed responses carry `RateLimit` and `RateLimit-Policy`
    /// too (true by default; refusals always do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_on_allowed: Option<bool>,
    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset`, for
    /// clients that expect them (off by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_headers: bool,
}

/// `rate_limit.cost`: what one request costs. Give exactly one of `fixed`
/// and `header`.
///
/// A cost read from a header is only as honest as whoever sets the header:
/// a client that may send it can make its requests cost as little as 1
/// (never less). Use it for a header set by the gateway's own `transform`
/// or a trusted front, or for a declared estimate (tokens) checked later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CostConfig {
    /// Every request costs this many units (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed: Option<u32>,
    /// A request costs the whole number in this header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `header`: the cost of a request without the header, or whose
    /// value is not a whole number of at least 1 (1 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<u32>,
}

/// `rate_limit.when_full`: what new keys get when the limiter's table is
/// full of keys still counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WhenFullConfig {
    /// Every new key shares one state with the same quotas.
    Share,
    /// New keys are let through unlimited (fail open).
    Allow,
}

/// `rate_limit.on_missing_key`: what a request without a key gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingKeyConfig {
    /// Refused with `missing_key_status` and a problem+json body.
    Reject,
    /// Let through unlimited.
    Allow,
}

/// A quota: `limit` requests per `period`, with bursts of `burst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QuotaConfig {
    /// Requests per period.
    pub limit: u32,
    /// `"1s"`, `"500ms"`, `"1m"`, `"1h"`, `"1d"`.
    pub period: String,
    /// The burst (the limit by default).
    #[serde(default)]
    pub burst: Option<u32>,
    /// A name for the `RateLimit` headers.
    #[serde(default)]
    pub name: Option<String>,
}

/// Where a key comes from (see [`KeyBy`](crate::key::KeyBy)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyConfig {
    /// One key for everyone.
    Global,
    /// The peer's IP address.
    PeerIp,
    /// The client's IP behind these trusted proxy ranges.
    ClientIp(Vec<String>),
    /// A header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The authenticated identity.
    Identity,
}

/// A split over upstreams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SplitConfig {
    /// The targets, in order.
    pub targets: Vec<TargetConfig>,
    /// Sticky key.
    pub sticky: Option<KeyConfig>,
    /// Header that forces a target (testers).
    pub override_header: Option<String>,
    /// The scope a caller needs for `override_header` to count (see
    /// [`crate::split::SplitBuilder::override_scope`]); anyone's when
    /// absent.
    pub override_scope: Option<String>,
    /// Response header naming the target.
    pub echo_header: Option<String>,
}

/// A split target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TargetConfig {
    /// The target's name.
    pub name: String,
    /// The upstream that serves it.
    pub upstream: String,
    /// Its weight.
    pub weight: u32,
}

/// A model router over upstreams (its models name upstreams).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelConfig {
    /// The catalog.
    pub catalog: Catalog,
    /// Sticky key within an alias.
    pub sticky: Option<KeyConfig>,
    /// Request body limit in bytes (4 MiB by default).
    pub body_limit: Option<usize>,
    /// How each upstream is spoken to, by upstream name: its protocol
    /// (`openai`, `anthropic`, `gemini`, `openai_compatible`) and where
    /// its API keys are read from (`keys = [{ env = "OPENAI_API_KEY" }]`).
    /// An upstream without an entry speaks OpenAI with no key.
    pub providers: BTreeMap<String, Provider>,
    /// A request parameter an upstream cannot honour: `"drop"` (the
    /// default) or `"reject"` (400 naming it).
    pub unsupported: Unsupported,
    /// Prices, token limits and budgets (see [`SpendConfig`](super::SpendConfig)).
    pub spend: Option<super::spend::SpendConfig>,
    /// When a request that failed on a version of an alias with a
    /// [`fallback`](crate::model::Alias::fallback) is sent once more, to the
    /// fallback (`catalog.aliases[].fallback`, a model of the catalog): on
    /// `errors` (the upstream could not be reached or timed out),
    /// `server_errors` (a 5xx) and `too_many_requests` (a 429), all true by
    /// default (`fallback_on = { too_many_requests = false }` turns one
    /// off). A request is retried once, before anything of the answer
    /// reached the client; both attempts count in the versions' counters
    /// and `switchyard_model_fallbacks_total`. A reload that changes it
    /// builds the router again (its catalog's weights, as the
    /// configuration has them).
    #[serde(skip_serializing_if = "is_default_fallback")]
    pub fallback_on: crate::model::FallbackOn,
}

fn is_default_fallback(on: &crate::model::FallbackOn) -> bool {
    *on == crate::model::FallbackOn::default()
}
