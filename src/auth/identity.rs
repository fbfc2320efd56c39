//! Who a request comes from, as authentication layers record it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The caller of a request: an id, an optional tenant, scopes, a tier (plan)
/// and free-form labels.
///
/// Authentication layers insert it into the request's extensions; rate
/// limiting ([`KeyBy::identity`](crate::key::KeyBy::identity)), scope checks
/// ([`RequireScopes`](super::RequireScopes)), model pins and your handlers
/// read it from there. Cloning is one reference count.
///
/// ```
/// use switchyard::auth::Identity;
///
/// let who = Identity::new("svc-billing")
///     .with_tenant("acme")
///     .with_scopes(["invoices:read", "invoices:write"])
///     .with_tier("enterprise")
///     .with_label("team", "payments");
/// assert!(who.has_scope("invoices:read"));
/// assert_eq!(who.tenant(), Some("acme"));
///
/// // In a handler or a layer further in:
/// fn caller<B>(req: &http::Request<B>) -> Option<&str> {
///     req.extensions().get::<Identity>().map(Identity::id)
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Identity(Arc<Data>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    anonymous: bool,
    /// Tenant and id in one injective string: the identity's rate-limit
    /// key. Derived; kept up to date by every constructor.
    #[serde(skip)]
    key: String,
}

impl Data {
    fn rekey(&mut self) {
        self.key = key_of(self.tenant.as_deref(), &self.id);
    }
}

/// The [`Identity::key`] of the identity `id` of `tenant`.
pub(crate) fn key_of(tenant: Option<&str>, id: &str) -> String {
    match tenant {
        Some(t) => format!("t{}:{t}{id}", t.len()),
        None => format!("i{id}"),
    }
}

impl Identity {
    /// An identity with this id and nothing else.
    pub fn new(id: impl Into<String>) -> Self {
        let mut data = Data {
            id: id.into(),
            ..Data::default()
        };
        data.rekey();
        Identity(Arc::new(data))
    }

    /// The identity given to requests without credentials when a layer
    /// allows anonymous access: id `anonymous`, no scopes.
    pub fn anonymous() -> Self {
        let mut data = Data {
            id: "anonymous".to_owned(),
            anonymous: true,
            ..Data::default()
        };
        data.rekey();
        Identity(Arc::new(data))
    }

    /// With this tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        let data = Arc::make_mut(&mut self.0);
        data.tenant = Some(tenant.into());
        data.rekey();
        self
    }

    /// With these scopes added.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let data = Arc::make_mut(&mut self.0);
        data.scopes.extend(scopes.into_iter().map(Into::into));
        data.scopes.sort_unstable();
        data.scopes.dedup();
        self
    }

    /// With this tier (plan) name.
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).tier = Some(tier.into());
        self
    }

    /// With this label set.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0)
            .labels
            .insert(key.into(), value.into());
        self
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    /// The scopes, sorted, without duplicates.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Whether the identity holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0
            .scopes
            .binary_search_by(|s| s.as_str().cmp(scope))
            .is_ok()
    }

    /// The tier (plan), if any.
    pub fn tier(&self) -> Option<&str> {
        self.0.tier.as_deref()
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.0.labels.get(key).map(String::as_str)
    }

    /// All labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0.labels
    }

    /// The tenant and id as one string, different for every (tenant, id)
    /// pair: what [`KeyBy::identity`](crate::key::KeyBy::identity) keys on.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// Whether this is the anonymous identity of a request without
    /// credentials.
    pub fn is_anonymous(&self) -> bool {
        self.0.anonymous
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Identity");
        d.field("id", &self.0.id);
        if let Some(t) = &self.0.tenant {
            d.field("tenant", t);
        }
        if !self.0.scopes.is_empty() {
            d.field("scopes", &self.0.scopes);
        }
        if let Some(t) = &self.0.tier {
            d.field("tier", t);
        }
        if !self.0.labels.is_empty() {
            d.field("labels", &self.0.labels);
        }
        if self.0.anonymous {
            d.field("anonymous", &true);
        }
        d.finish()
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut data = Data::deserialize(deserializer)?;
        data.scopes.sort_unstable();
        data.scopes.dedup();
        data.rekey();
        Ok(Identity(Arc::new(data)))
    }
}
