//! The catalog: one place where consumers find the APIs they may use, read
//! their OpenAPI documents and ask for access.
//!
//! An [`ApiCatalog`] lists API versions (each served behind a
//! [`LifecycleLayer`](super::lifecycle::LifecycleLayer), whose live stage
//! it reads) and answers, for an authenticated caller (an [`Identity`] in
//! the request's extensions, put there by an auth layer in front):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | the published and deprecated APIs the caller may see, by name, with their versions |
//! | `GET /{name}` | one API |
//! | `GET /{name}/{version}/openapi.json` | the version's OpenAPI 3.1 document: its own when it has one, else one generated from what the catalog knows of it |
//! | `GET /{name}/subscription` | the caller's subscription to it |
//! | `POST /{name}/subscription` | asks for access for the caller (with `?for=tenant`, for its whole tenant); `GET` with the same query reads the tenant's |
//!
//! Paths are relative to where the catalog is mounted (nest it under
//! `/catalog`, say, and tell it with [`ApiCatalog::mounted_at`] so the
//! links it gives are right). Drafts, retired versions and APIs whose
//! [`Visibility`] leaves the caller's team out are not shown; asking for
//! one is a 404, as for an API that does not exist. A caller's team is its
//! tenant.
//!
//! ```
//! use http::Request;
//! use http_body_util::{BodyExt, Empty};
//! use bytes::Bytes;
//! use switchyard::auth::Identity;
//! use switchyard::platform::catalog::{ApiCatalog, Listing, Visibility};
//! use switchyard::platform::lifecycle::{Api, LifecycleLayer, Stage};
//! use switchyard::platform::subscription::{Policy, Subscriptions};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let orders = LifecycleLayer::new(
//!     Api::new("orders", "v1").owner("team-orders").stage(Stage::Published),
//! )
//! .unwrap();
//! let subs = Subscriptions::new();
//! subs.register("orders", Policy::Approval).unwrap();
//! let catalog = ApiCatalog::new(subs)
//!     .mounted_at("/catalog")
//!     .list(Listing::new(orders.handle()).path("/v1/orders").visibility(Visibility::Public))
//!     .unwrap();
//!
//! let mut req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
//! req.extensions_mut().insert(Identity::new("alice").with_tenant("shop"));
//! let res = catalog.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(doc["apis"][0]["name"], "orders");
//! assert_eq!(doc["apis"][0]["versions"][0]["openapi"], "/catalog/orders/v1/openapi.json");
//! # }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tower::Service;

use super::lifecycle::{LifecycleHandle, Stage};
use super::subscription::{Consumer, Subscriptions};
use crate::auth::Identity;
use crate::body::ResponseBody;
use crate::problem::Problem;

/// Who may see an API in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Visibility {
    /// Every authenticated consumer.
    #[default]
    Public,
    /// Consumers of these teams (tenants) only, and the owner team.
    Teams(Vec<String>),
}

impl Visibility {
    fn shows(&self, owner: Option<&str>, caller: &Identity) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::Teams(teams) => caller
                .tenant()
                .is_some_and(|t| owner == Some(t) || teams.iter().any(|x| x == t)),
        }
    }
}

/// Why a catalog could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// One version listed twice.
    #[error("API `{name}` version `{version}` is listed twice")]
    Duplicate {
        /// The API.
        name: String,
        /// The version.
        version: String,
    },
    /// Versions of one API listed with different visibilities.
    #[error("the versions of API `{0}` are listed with different visibilities")]
    MixedVisibility(String),
    /// A listed path that does not start with `/`.
    #[error("API `{name}`: path `{path}` does not start with `/`")]
    BadPath {
        /// The API.
        name: String,
        /// The path.
        path: String,
    },
    /// An OpenAPI document that is not an OpenAPI 3.1 object.
    #[error("API `{name}` version `{version}`: its OpenAPI document {why}")]
    BadDocument {
        /// The API.
        name: String,
        /// The version.
        version: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// One API version as the catalog shows it.
#[derive(Debug, Clone)]
pub struct Listing {
    handle: LifecycleHandle,
    path: Option<String>,
    methods: Vec<Method>,
    visibility: Visibility,
    auth: Option<String>,
    limits: Option<String>,
    openapi: Option<Value>,
}

impl Listing {
    /// The version served behind `handle`: its name, version, owner,
    /// description and live stage come from there.
    pub fn new(handle: LifecycleHandle) -> Self {
        Self {
            handle,
            path: None,
            methods: Vec::new(),
            visibility: Visibility::Public,
            auth: None,
            limits: None,
            openapi: None,
        }
    }

    /// Where it is served (a path prefix), shown and put in its generated
    /// document.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The methods it answers, which its generated document describes as
    /// operations (without any, the document has the path and no
    /// operations: it does not guess).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Who may see it (every version of an API must say the same).
    pub fn visibility(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// How callers authenticate: `api_key` or `bearer` (a JWT) add a
    /// security scheme to the generated document; anything else is shown
    /// as written.
    pub fn auth(mut self, auth: impl Into<String>) -> Self {
        self.auth = Some(auth.into());
        self
    }

    /// Its limits, as consumers should read them ("100 requests per
    /// minute per key").
    pub fn limits(mut self, limits: impl Into<String>) -> Self {
        self.limits = Some(limits.into());
        self
    }

    /// Its own OpenAPI 3.1 document, served instead of a generated one.
    pub fn openapi(mut self, document: Value) -> Self {
        self.openapi = Some(document);
        self
    }

    fn name(&self) -> &str {
        self.handle.api().name()
    }

    fn version(&self) -> &str {
        self.handle.api().version()
    }

    fn check(&self) -> Result<(), CatalogError> {
        if let Some(path) = &self.path
            && !path.starts_with('/')
        {
            return Err(CatalogError::BadPath {
                name: self.name().to_owned(),
                path: path.clone(),
            });
        }
        if let Some(doc) = &self.openapi {
            let bad = |why| CatalogError::BadDocument {
                name: self.name().to_owned(),
                version: self.version().to_owned(),
                why,
            };
            let Some(obj) = doc.as_object() else {
                return Err(bad("is not a JSON object"));
            };
            match obj.get("openapi").and_then(Value::as_str) {
                Some(v) if v.starts_with("3.1.") => {}
                _ => return Err(bad("does not say `openapi: 3.1.x`")),
            }
            if !obj.get("info").is_some_and(Value::is_object) {
                return Err(bad("has no `info` object"));
            }
        }
        Ok(())
    }

    /// Its generated OpenAPI 3.1 document.
    fn generated(&self) -> Value {
        let api = self.handle.api();
        let mut info = json!({
            "title": api.name(),
            "version": api.version(),
        });
        if let Some(about) = api.about() {
            info["description"] = json!(about);
        }
        if let Some(team) = api.owner_team() {
            info["x-owner-team"] = json!(team);
        }
        let mut doc = json!({
            "openapi": "3.1.0",
            "info": info,
            "paths": {},
        });
        let security = match self.auth.as_deref() {
            Some("api_key") => Some((
                "apiKey",
                json!({"type": "apiKey", "in": "header", "name": "x-api-key"}),
            )),
            Some("bearer") => Some((
                "bearer",
                json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
            )),
            _ => None,
        };
        if let Some((name, scheme)) = &security {
            doc["components"] = json!({ "securitySchemes": { *name: scheme } });
            doc["security"] = json!([{ *name: [] }]);
        }
        if let Some(path) = &self.path {
            let mut item = serde_json::Map::new();
            if let Some(about) = api.about() {
                item.insert("description".into(), json!(about));
            }
            for method in &self.methods {
                let mut responses = json!({
                    "default": {
                        "description": "The API's answer.",
                    },
                });
                if security.is_some() {
                    responses["401"] = json!({"description": "No valid credentials."});
                }
                responses["403"] =
                    json!({"description": "No approved subscription (`subscription_required`)."});
                item.insert(
                    method.as_str().to_ascii_lowercase(),
                    json!({
                        "operationId": format!("{}_{}_{}", api.name(), api.version(), method.as_str().to_ascii_lowercase()),
                        "responses": responses,
                    }),
                );
            }
            doc["paths"] = json!({ path.as_str(): Value::Object(item) });
        }
        doc
    }
}

/// The catalog service (see the [module docs](self)).
#[derive(Clone)]
pub struct ApiCatalog {
    mount: String,
    /// By API name, then version in listing order.
    apis: BTreeMap<String, Vec<Listing>>,
    subscriptions: Subscriptions,
}

impl fmt::Debug for ApiCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCatalog")
            .field("mount", &self.mount)
            .field("apis", &self.apis.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ApiCatalog {
    /// An empty catalog whose APIs take subscriptions in `subscriptions`
    /// (an API registered there shows its policy, and consumers ask for
    /// access through the catalog).
    pub fn new(subscriptions: Subscriptions) -> Self {
        Self {
            mount: String::new(),
            apis: BTreeMap::new(),
            subscriptions,
        }
    }

    /// Where the catalog is served (`/catalog`), so that the links it
    /// gives (documents, subscribe) are right. Set it before listing APIs:
    /// listing tells each API's subscriptions where to ask for access.
    pub fn mounted_at(mut self, prefix: impl Into<String>) -> Self {
        self.mount = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Adds one API version.
    pub fn list(mut self, listing: Listing) -> Result<Self, CatalogError> {
        listing.check()?;
        let name = listing.name().to_owned();
        let versions = self.apis.entry(name.clone()).or_default();
        if versions.iter().any(|l| l.version() == listing.version()) {
            return Err(CatalogError::Duplicate {
                name,
                version: listing.version().to_owned(),
            });
        }
        if versions
            .first()
            .is_some_and(|l| l.visibility != listing.visibility)
        {
            return Err(CatalogError::MixedVisibility(name));
        }
        versions.push(listing);
        // Refusals of an API that takes subscriptions point here.
        let _ = self
            .subscriptions
            .set_request_link(&name, format!("{}/{name}/subscription", self.mount));
        Ok(self)
    }

    /// The versions of `name` the caller may see.
    fn visible<'a>(&'a self, name: &str, caller: &Identity) -> Option<Vec<&'a Listing>> {
        let versions = self.apis.get(name)?;
        let shown: Vec<&Listing> = versions
            .iter()
            .filter(|l| matches!(l.handle.stage(), Stage::Published | Stage::Deprecated))
            .filter(|l| l.visibility.shows(l.handle.api().owner_team(), caller))
            .collect();
        (!shown.is_empty()).then_some(shown)
    }

    fn describe(&self, name: &str, versions: &[&Listing], caller: &Identity) -> Value {
        let first = versions[0].handle.api();
        let policy = self.subscriptions.policy(name).ok();
        let subscribed = policy
            .is_some()
            .then(|| self.subscriptions.admits(name, caller));
        json!({
            "name": name,
            "owner_team": first.owner_team(),
            "description": first.about(),
            "subscription": policy.map(|p| json!({
                "policy": p,
                "subscribed": subscribed,
                "request": format!("{}/{name}/subscription", self.mount),
            })),
            "versions": versions.iter().map(|l| {
                let api = l.handle.api();
                json!({
                    "version": api.version(),
                    "state": l.handle.stage(),
                    "path": l.path,
                    "description": api.about(),
                    "auth": l.auth,
                    "limits": l.limits,
                    "deprecated_at": l.handle.deprecated_at(),
                    "openapi": format!("{}/{name}/{}/openapi.json", self.mount, api.version()),
                })
            }).collect::<Vec<_>>(),
        })
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<ResponseBody<String>> {
        let Some(caller) = req
            .extensions()
            .get::<Identity>()
            .filter(|id| !id.is_anonymous())
        else {
            return Problem::new(StatusCode::UNAUTHORIZED)
                .detail("the catalog is for authenticated consumers")
                .into_response();
        };
        let path = req.uri().path();
        let path = path.strip_prefix(self.mount.as_str()).unwrap_or(path);
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let not_found = || {
            Problem::new(StatusCode::NOT_FOUND)
                .detail("no such API in the catalog")
                .into_response()
        };
        let method = req.method();
        let allow = |allowed: &'static str| {
            let mut res = Problem::new(StatusCode::METHOD_NOT_ALLOWED).into_response();
            res.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
            res
        };
        match parts.as_slice() {
            [] => {
                if method != Method::GET && method != Method::HEAD {
                    return allow("GET, HEAD");
                }
                let apis: Vec<Value> = self
                    .apis
                    .keys()
                    .filter_map(|name| {
                        let versions = self.visible(name, caller)?;
                        Some(self.describe(name, &versions, caller))
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({ "apis": apis }))
            }
            [name] => {
                if method != Method::GET && method != Method::HEAD {
                    return allow("GET, HEAD");
                }
                match self.visible(name, caller) {
                    Some(versions) => {
                        json_response(StatusCode::OK, &self.describe(name, &versions, caller))
                    }
                    None => not_found(),
                }
            }
            [name, version, "openapi.json"] => {
                if method != Method::GET && method != Method::HEAD {
                    return allow("GET, HEAD");
                }
                let Some(listing) = self
                    .visible(name, caller)
                    .and_then(|v| v.into_iter().find(|l| l.version() == *version))
                else {
                    return not_found();
                };
                let doc = listing
                    .openapi
                    .clone()
                    .unwrap_or_else(|| listing.generated());
                json_response(StatusCode::OK, &doc)
            }
            [name, "subscription"] => {
                if self.visible(name, caller).is_none() {
                    return not_found();
                }
                if self.subscriptions.policy(name).is_err() {
                    return Problem::new(StatusCode::NOT_FOUND)
                        .detail(format!(
                            "API `{name}` takes no subscriptions: it is open to every consumer"
                        ))
                        .into_response();
                }
                let whole_tenant = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "for=tenant"));
                let consumer = if whole_tenant {
                    match caller.tenant() {
                        Some(t) => Consumer::tenant(t),
                        None => {
                            return Problem::new(StatusCode::BAD_REQUEST)
                                .detail("`for=tenant`: the caller has no tenant")
                                .into_response();
                        }
                    }
                } else {
                    Consumer::of(caller)
                };
                if *method == Method::POST {
                    match self.subscriptions.request(name, &consumer, caller.id()) {
                        Ok(sub) => json_response(StatusCode::CREATED, &json!(sub)),
                        Err(e) => Problem::new(e.status())
                            .detail(e.to_string())
                            .into_response(),
                    }
                } else if *method == Method::GET || *method == Method::HEAD {
                    match self.subscriptions.get(name, &consumer) {
                        Ok(Some(sub)) => json_response(StatusCode::OK, &json!(sub)),
                        Ok(None) => Problem::new(StatusCode::NOT_FOUND)
                            .detail(format!("{consumer} has not asked for API `{name}`"))
                            .into_response(),
                        Err(e) => Problem::new(e.status())
                            .detail(e.to_string())
                            .into_response(),
                    }
                } else {
                    allow("GET, HEAD, POST")
                }
            }
            _ => not_found(),
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody<String>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut res = Response::new(ResponseBody::full(body.clone()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    res
}

impl<B> Service<Request<B>> for ApiCatalog {
    type Response = Response<ResponseBody<String>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}
