//! The model catalog: the serde description ([`Catalog`]) and its checked,
//! immutable form the request path reads ([`Compiled`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::stats::VersionCounters;
use crate::key::Key;
use crate::split::Weights;
use crate::split::weights::Snapshot;

/// The models a [`ModelRouter`](super::ModelRouter) serves: concrete model
/// versions, aliases over weighted groups of them, and pins.
///
/// ```
/// use switchyard::model::{Alias, Catalog, Model};
///
/// let catalog = Catalog::new()
///     .model(Model::new("gpt-4o-2024-05-13", "blue"))
///     .model(Model::new("gpt-4o-2024-08-06", "green"))
///     .alias(
///         Alias::new("chat", [("gpt-4o-2024-05-13", 90), ("gpt-4o-2024-08-06", 10)])
///             .fallback("gpt-4o-2024-05-13"),
///     );
/// assert_eq!(catalog.aliases[0].versions.get("gpt-4o-2024-08-06"), Some(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Catalog {
    /// Concrete model versions.
    pub models: Vec<Model>,
    /// Aliases clients ask for, each over weighted versions.
    pub aliases: Vec<Alias>,
    /// Tenants or identities held on one version of an alias.
    pub pins: Vec<Pin>,
    /// Whether a client may ask for an exact version of an alias with the
    /// version header (`x-model-version` by default).
    pub allow_version_header: bool,
    /// The scope that lets a caller ask for a version whose
    /// [`direct`](Model::direct) is `false` by its own name or with the
    /// version header; without it (or without the scope) such versions are
    /// reached only through their aliases' weights and pins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scope: Option<String>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a model version.
    pub fn model(mut self, model: Model) -> Self {
        self.models.push(model);
        self
    }

    /// Adds an alias.
    pub fn alias(mut self, alias: Alias) -> Self {
        self.aliases.push(alias);
        self
    }

    /// Adds a pin.
    pub fn pin(mut self, pin: Pin) -> Self {
        self.pins.push(pin);
        self
    }

    /// Sets [`allow_version_header`](Self::allow_version_header).
    pub fn allow_version_header(mut self, allow: bool) -> Self {
        self.allow_version_header = allow;
        self
    }

    /// Sets [`direct_scope`](Self::direct_scope).
    pub fn direct_scope(mut self, scope: impl Into<String>) -> Self {
        self.direct_scope = Some(scope.into());
        self
    }
}

/// A concrete model version and the upstream that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Model {
    /// The name clients and the catalog use.
    pub name: String,
    /// The name of the upstream service (given to
    /// [`ModelRouterBuilder::upstream`](super::ModelRouterBuilder::upstream)).
    pub upstream: String,
    /// The model name the upstream expects in the body, when it differs
    /// from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// Whether a client may ask for this version by its own name, or with
    /// the version header, rather than through an alias (true by default).
    /// With `false`, only callers with the catalog's
    /// [`direct_scope`](Catalog::direct_scope) may: a canary at weight zero
    /// is then not reachable by anyone who learns its name.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub direct: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Model {
    /// A version served by `upstream` under its own name.
    pub fn new(name: impl Into<String>, upstream: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            upstream: upstream.into(),
            upstream_model: None,
            direct: true,
        }
    }

    /// Sets [`direct`](Self::direct).
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// The name the upstream expects instead.
    pub fn upstream_model(mut self, name: impl Into<String>) -> Self {
        self.upstream_model = Some(name.into());
        self
    }
}

/// An alias over weighted model versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Alias {
    /// The name clients ask for.
    pub name: String,
    /// Versions and their relative weights (zero is allowed; not all zero).
    pub versions: Weights,
    /// The version a failed request is retried on, once: a model of the
    /// catalog (not an alias; an unknown name is refused at
    /// `aliases[i].fallback`). Which failures count is the router's
    /// [`FallbackOn`](super::FallbackOn) (a gateway's `fallback_on` in the
    /// route's `model` section): errors, 5xx and 429 by default. A request
    /// that failed on the fallback version itself is not retried. None by
    /// default: no retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl Alias {
    /// An alias over `versions` with their weights.
    pub fn new(name: impl Into<String>, versions: impl Into<Weights>) -> Self {
        Self {
            name: name.into(),
            versions: versions.into(),
            fallback: None,
        }
    }

    /// Sets the fallback version.
    pub fn fallback(mut self, model: impl Into<String>) -> Self {
        self.fallback = Some(model.into());
        self
    }
}

/// Holds a tenant, or one identity, on one version of an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Pin {
    /// Who: a tenant or an identity id.
    pub who: PinKey,
    /// The alias.
    pub alias: String,
    /// The version.
    pub model: String,
}

impl Pin {
    /// Pins every identity of `tenant`.
    pub fn tenant(
        tenant: impl Into<String>,
        alias: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            who: PinKey::Tenant(tenant.into()),
            alias: alias.into(),
            model: model.into(),
        }
    }

    /// Pins one identity (by [`Identity::id`](crate::auth::Identity::id)).
    pub fn identity(
        id: impl Into<String>,
        alias: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            who: PinKey::Identity(id.into()),
            alias: alias.into(),
            model: model.into(),
        }
    }
}

/// Who a [`Pin`] holds. An identity's own pin wins over its tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKey {
    /// Every identity of a tenant.
    Tenant(String),
    /// One identity.
    Identity(String),
}

// === compiled ===

/// A checked catalog.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) models: Vec<Entry>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) aliases: Vec<Group>,
    pub(crate) alias_by_name: HashMap<String, usize>,
    /// Pins by tenant and by identity id: (alias index, model index).
    pub(crate) tenant_pins: HashMap<String, Vec<(usize, usize)>>,
    pub(crate) identity_pins: HashMap<String, Vec<(usize, usize)>>,
    pub(crate) allow_version_header: bool,
    pub(crate) direct_scope: Option<String>,
    pub(crate) source: Catalog,
}

/// One model version.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    pub(crate) upstream: usize,
    /// The model name as a JSON string literal, ready to splice into a
    /// body.
    pub(crate) json_name: Bytes,
    /// The upstream's model name, for a header or path segment.
    pub(crate) upstream_name: Arc<str>,
    pub(crate) header_value: HeaderValue,
    pub(crate) counters: Arc<VersionCounters>,
    /// Whether anyone may ask for it by name (else only callers with the
    /// catalog's `direct_scope`).
    pub(crate) direct: bool,
}

/// An alias's group of versions.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: Arc<str>,
    /// Model indices, in the order of the weights.
    pub(crate) members: Box<[usize]>,
    pub(crate) weights: Snapshot,
    /// Sticky-pick seeds, from the members' names.
    pub(crate) seeds: Box<[u64]>,
    pub(crate) fallback: Option<usize>,
}

/// Separates the hash of a model name from the hash of a key.
const MODEL_SEED: u64 = 0x006d_6f64_656c; // "model"

impl Compiled {
    /// Checks `catalog`. `upstreams` are the router's upstream names;
    /// `counters` finds (or makes) the counters of a version by name, so
    /// that they survive catalog changes.
    pub(crate) fn new(
        catalog: Catalog,
        upstreams: &[String],
        counters: &mut dyn FnMut(&str) -> Arc<VersionCounters>,
    ) -> Result<Self, ModelError> {
        let mut models = Vec::with_capacity(catalog.models.len());
        let mut by_name = HashMap::new();
        for (i, m) in catalog.models.iter().enumerate() {
            let header_value = valid_name(&m.name, &format!("models[{i}].name"))?;
            let upstream = upstreams
                .iter()
                .position(|u| *u == m.upstream)
                .ok_or_else(|| ModelError::UnknownUpstream {
                    at: format!("models[{i}].upstream"),
                    upstream: m.upstream.clone(),
                })?;
            if by_name.insert(m.name.clone(), i).is_some() {
                return Err(ModelError::Duplicate {
                    at: format!("models[{i}].name"),
                    name: m.name.clone(),
                });
            }
            let upstream_name = m.upstream_model.clone().unwrap_or_else(|| m.name.clone());
            if upstream_name.is_empty() {
                return Err(ModelError::InvalidName {
                    at: format!("models[{i}].upstream_model"),
                    name: upstream_name,
                });
            }
            models.push(Entry {
                name: m.name.as_str().into(),
                upstream,
                // Serializing a string cannot fail.
                json_name: Bytes::from(serde_json::to_vec(&upstream_name).unwrap_or_default()),
                upstream_name: upstream_name.into(),
                header_value,
                counters: counters(&m.name),
                direct: m.direct,
            });
        }

        let mut aliases = Vec::with_capacity(catalog.aliases.len());
        let mut alias_by_name = HashMap::new();
        for (i, a) in catalog.aliases.iter().enumerate() {
            let at = |rest: &str| format!("aliases[{i}]{rest}");
            valid_name(&a.name, &at(".name"))?;
            if by_name.contains_key(&a.name) || alias_by_name.insert(a.name.clone(), i).is_some() {
                return Err(ModelError::Duplicate {
                    at: at(".name"),
                    name: a.name.clone(),
                });
            }
            let mut members = Vec::with_capacity(a.versions.len());
            let mut weights = Vec::with_capacity(a.versions.len());
            for (model, weight) in a.versions.iter() {
                let index = *by_name.get(model).ok_or_else(|| ModelError::UnknownModel {
                    at: at(&format!(".versions.{model}")),
                    model: model.to_owned(),
                })?;
                if members.contains(&index) {
                    return Err(ModelError::Duplicate {
                        at: at(&format!(".versions.{model}")),
                        name: model.to_owned(),
                    });
                }
                members.push(index);
                weights.push(weight);
            }
            let weights = Snapshot::new(weights.into()).map_err(|_| ModelError::Weights {
                at: at(".versions"),
            })?;
            let fallback = match &a.fallback {
                Some(model) => {
                    Some(*by_name.get(model).ok_or_else(|| ModelError::UnknownModel {
                        at: at(".fallback"),
                        model: model.clone(),
                    })?)
                }
                None => None,
            };
            let seeds = members
                .iter()
                .map(|&m| Key::from(&*models[m].name).stable_hash(MODEL_SEED))
                .collect();
            aliases.push(Group {
                name: a.name.as_str().into(),
                members: members.into(),
                weights,
                seeds,
                fallback,
            });
        }

        let mut tenant_pins: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut identity_pins: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, p) in catalog.pins.iter().enumerate() {
            let at = format!("pins[{i}]");
            let group = *alias_by_name
                .get(&p.alias)
                .ok_or_else(|| ModelError::UnknownAlias {
                    at: format!("{at}.alias"),
                    alias: p.alias.clone(),
                })?;
            let model = *by_name
                .get(&p.model)
                .ok_or_else(|| ModelError::UnknownModel {
                    at: format!("{at}.model"),
                    model: p.model.clone(),
                })?;
            if !aliases[group].members.contains(&model) {
                return Err(ModelError::NotAVersion {
                    at: format!("{at}.model"),
                    alias: p.alias.clone(),
                    model: p.model.clone(),
                });
            }
            let (map, who) = match &p.who {
                PinKey::Tenant(t) => (&mut tenant_pins, t),
                PinKey::Identity(id) => (&mut identity_pins, id),
            };
            let list = map.entry(who.clone()).or_default();
            if list.iter().any(|&(g, _)| g == group) {
                return Err(ModelError::Duplicate {
                    at,
                    name: format!("{who} on {}", p.alias),
                });
            }
            list.push((group, model));
        }

        Ok(Self {
            models,
            by_name,
            aliases,
            alias_by_name,
            tenant_pins,
            identity_pins,
            allow_version_header: catalog.allow_version_header,
            direct_scope: catalog.direct_scope.clone(),
            source: catalog,
        })
    }
}

fn valid_name(name: &str, at: &str) -> Result<HeaderValue, ModelError> {
    let ok = (1..=256).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| HeaderValue::from_str(name).ok())
        .flatten()
        .ok_or_else(|| ModelError::InvalidName {
            at: at.to_owned(),
            name: name.to_owned(),
        })
}
