//! [`ModelHandle`]: live changes to the catalog, and the counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::ModelError;
use super::catalog::{Catalog, Compiled, Model, Pin, PinKey};
use super::provider::{KeyState, Keys, Provider};
use super::stats::{VersionCounters, VersionStats};
use crate::split::Weights;

/// How many earlier weight sets `rollback` can walk back through, per alias.
const HISTORY: usize = 32;

/// State shared by a router's clones and handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) catalog: ArcSwap<Compiled>,
    pub(crate) upstreams: Box<[String]>,
    /// Per upstream, in the same order: its protocol and keys (swapped
    /// whole when the keys are read again).
    pub(crate) providers: Box<[ArcSwap<Upstream>]>,
    writer: Mutex<Writer>,
    /// Told after each change of the catalog (the weight sync publishes
    /// it at once).
    pub(crate) listeners: crate::signal::Listeners,
}

/// An upstream's provider settings at run time.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) provider: Provider,
    pub(crate) keys: Keys,
}

#[derive(Debug, Default)]
struct Writer {
    /// Earlier weights per alias, for `rollback`.
    history: HashMap<String, Vec<Weights>>,
    /// Counters by version name, kept across changes.
    counters: HashMap<String, Arc<VersionCounters>>,
}

impl Shared {
    pub(crate) fn new(
        catalog: Catalog,
        upstreams: Box<[String]>,
        providers: Box<[ArcSwap<Upstream>]>,
    ) -> Result<Self, ModelError> {
        let mut writer = Writer::default();
        let compiled = writer.compile(catalog, &upstreams)?;
        Ok(Self {
            catalog: ArcSwap::from_pointee(compiled),
            upstreams,
            providers,
            writer: Mutex::new(writer),
            listeners: crate::signal::Listeners::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // Each change is checked before anything is stored, so a panic
        // cannot leave the writer state half-changed; poisoning is ignored.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to a copy of the catalog and stores the result if it
    /// checks out, all under the writers' lock.
    fn change(
        &self,
        f: impl FnOnce(&mut Catalog, &mut Writer) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let mut writer = self.lock();
        let mut catalog = self.catalog.load().source.clone();
        // A refused change leaves the rollback history as it was, too.
        let history = writer.history.clone();
        let result =
            f(&mut catalog, &mut writer).and_then(|()| writer.compile(catalog, &self.upstreams));
        match result {
            Ok(compiled) => {
                self.catalog.store(Arc::new(compiled));
                drop(writer);
                self.listeners.fire();
                Ok(())
            }
            Err(e) => {
                writer.history = history;
                Err(e)
            }
        }
    }
}

impl Writer {
    fn compile(&mut self, catalog: Catalog, upstreams: &[String]) -> Result<Compiled, ModelError> {
        let counters = &mut self.counters;
        Compiled::new(catalog, upstreams, &mut |name| {
            counters.entry(name.to_owned()).or_default().clone()
        })
    }

    fn remember(&mut self, alias: &str, weights: Weights) {
        let history = self.history.entry(alias.to_owned()).or_default();
        if history.len() == HISTORY {
            history.remove(0);
        }
        history.push(weights);
    }
}

/// A live handle on a [`ModelRouter`](super::ModelRouter)'s catalog:
/// weights, promotion and rollback per alias, pins, versions added and
/// retired, and per-version counters.
///
/// Cheap to clone. Every change is checked, then swapped in whole: the
/// next request sees it, requests under way finish on the version they
/// were sent to, and a refused change leaves everything as it was.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ModelHandle {
    /// Tells `listener` of each change of the catalog from now on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn listen(&self, listener: &Arc<dyn crate::signal::Listener>) {
        self.shared.listeners.add(listener);
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Catalog {
        self.shared.catalog.load().source.clone()
    }

    /// Replaces the whole catalog. Weight history is kept for aliases that
    /// still exist; counters are kept for versions that still exist.
    pub fn set_catalog(&self, catalog: Catalog) -> Result<(), ModelError> {
        self.shared.change(|current, _| {
            *current = catalog;
            Ok(())
        })
    }

    /// The weights of an alias's versions.
    pub fn weights(&self, alias: &str) -> Option<Weights> {
        let catalog = self.shared.catalog.load();
        catalog
            .source
            .aliases
            .iter()
            .find(|a| a.name == alias)
            .map(|a| a.versions.clone())
    }

    /// Replaces an alias's versions and weights. The set may name any
    /// version in the catalog, so this is also how a new version joins an
    /// alias (at weight 0, say) and how one leaves it.
    pub fn set_weights<I, K>(&self, alias: &str, weights: I) -> Result<(), ModelError>
    where
        I: IntoIterator<Item = (K, u32)>,
        K: AsRef<str>,
    {
        let weights: Weights = weights
            .into_iter()
            .map(|(k, w)| (k.as_ref().to_owned(), w))
            .collect();
        self.shared.change(|catalog, writer| {
            let entry = alias_mut(catalog, alias)?;
            let previous = std::mem::replace(&mut entry.versions, weights);
            writer.remember(alias, previous);
            Ok(())
        })
    }

    /// Sends all of an alias's traffic to `model`, one of its versions: it
    /// gets the sum of the weights, every other version zero.
    pub fn promote(&self, alias: &str, model: &str) -> Result<(), ModelError> {
        self.shared.change(|catalog, writer| {
            let entry = alias_mut(catalog, alias)?;
            if entry.versions.get(model).is_none() {
                return Err(ModelError::NotAVersion {
                    at: "promote".into(),
                    alias: alias.to_owned(),
                    model: model.to_owned(),
                });
            }
            let total: u64 = entry.versions.iter().map(|(_, w)| u64::from(w)).sum();
            let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
            let promoted: Weights = entry
                .versions
                .iter()
                .map(|(m, _)| (m.to_owned(), if m == model { total } else { 0 }))
                .collect();
            let previous = std::mem::replace(&mut entry.versions, promoted);
            writer.remember(alias, previous);
            Ok(())
        })
    }

    /// Returns an alias to its weights before the last change made through
    /// [`set_weights`](Self::set_weights) or [`promote`](Self::promote).
    /// An undo over the last 32 changes; a rollback is not recorded.
    pub fn rollback(&self, alias: &str) -> Result<(), ModelError> {
        self.shared.change(|catalog, writer| {
            let entry = alias_mut(catalog, alias)?;
            entry.versions = writer
                .history
                .get_mut(alias)
                .and_then(Vec::pop)
                .ok_or_else(|| ModelError::NothingToRollBack {
                    alias: alias.to_owned(),
                })?;
            Ok(())
        })
    }

    /// Pins a tenant or an identity to one version of an alias (replacing
    /// an earlier pin of the same key on that alias).
    pub fn pin(&self, pin: Pin) -> Result<(), ModelError> {
        self.shared.change(|catalog, _| {
            catalog
                .pins
                .retain(|p| !(p.who == pin.who && p.alias == pin.alias));
            catalog.pins.push(pin);
            Ok(())
        })
    }

    /// Removes a pin; `Ok(false)` if there was none.
    pub fn unpin(&self, who: &PinKey, alias: &str) -> Result<bool, ModelError> {
        let mut found = false;
        self.shared.change(|catalog, _| {
            let before = catalog.pins.len();
            catalog
                .pins
                .retain(|p| !(p.who == *who && p.alias == alias));
            found = catalog.pins.len() != before;
            Ok(())
        })?;
        Ok(found)
    }

    /// Weight sync's change: the catalog's versions and pins (if given)
    /// and the weights of some aliases, in one step, so that sets that
    /// only fit together (a pin moved off a version that an alias's new
    /// weights leave) are applied together. Each alias's weights before
    /// are remembered for [`rollback`](Self::rollback), as
    /// [`set_weights`](Self::set_weights) does. Refused, like any change,
    /// if an alias or pin would name a version that is not there.
    #[cfg(feature = "redis")]
    pub(crate) fn apply_synced(
        &self,
        models_and_pins: Option<(Vec<Model>, Vec<Pin>)>,
        aliases: Vec<(String, Weights)>,
    ) -> Result<(), ModelError> {
        self.shared.change(|catalog, writer| {
            if let Some((models, pins)) = models_and_pins {
                catalog.models = models;
                catalog.pins = pins;
            }
            for (alias, weights) in aliases {
                let entry = alias_mut(catalog, &alias)?;
                let previous = std::mem::replace(&mut entry.versions, weights);
                writer.remember(&alias, previous);
            }
            Ok(())
        })
    }

    /// Whether `other` is a handle on the same router.
    #[cfg(feature = "redis")]
    pub(crate) fn same_router(&self, other: &ModelHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Adds a model version to the catalog (then give it weight in an alias
    /// with [`set_weights`](Self::set_weights)).
    pub fn add_model(&self, model: Model) -> Result<(), ModelError> {
        self.shared.change(|catalog, _| {
            catalog.models.push(model);
            Ok(())
        })
    }

    /// Retires a model version: it leaves the catalog and every alias it is
    /// in. Refused while an alias gives it weight, names it as fallback, or
    /// a pin holds someone on it: move the traffic first.
    pub fn retire_model(&self, name: &str) -> Result<(), ModelError> {
        self.shared.change(|catalog, _| {
            if !catalog.models.iter().any(|m| m.name == name) {
                return Err(ModelError::UnknownModel {
                    at: "retire_model".into(),
                    model: name.to_owned(),
                });
            }
            for alias in &catalog.aliases {
                let reason = if alias.versions.get(name).unwrap_or(0) > 0 {
                    "it has weight"
                } else if alias.fallback.as_deref() == Some(name) {
                    "it is the fallback"
                } else if catalog
                    .pins
                    .iter()
                    .any(|p| p.alias == alias.name && p.model == name)
                {
                    "a pin holds someone on it"
                } else {
                    continue;
                };
                return Err(ModelError::InUse {
                    model: name.to_owned(),
                    alias: alias.name.clone(),
                    reason,
                });
            }
            catalog.models.retain(|m| m.name != name);
            for alias in &mut catalog.aliases {
                alias.versions = alias
                    .versions
                    .iter()
                    .filter(|(m, _)| *m != name)
                    .map(|(m, w)| (m.to_owned(), w))
                    .collect();
            }
            Ok(())
        })
    }

    /// The state of every upstream's API keys (never the keys): requests,
    /// 429s, which is in use, how long each still rests.
    pub fn keys(&self) -> Vec<KeyState> {
        self.shared
            .upstreams
            .iter()
            .zip(self.shared.providers.iter())
            .flat_map(|(name, p)| p.load().keys.states(name))
            .collect()
    }

    /// Reads every upstream's API keys again from their environment
    /// variables and files (a rotated key), and swaps them in all at once;
    /// if one cannot be read, nothing changes. Requests under way finish
    /// with the key they had. The gateway does this on every reload.
    pub fn reload_keys(&self) -> Result<(), ModelError> {
        let fresh = self.read_keys()?;
        self.store_keys(fresh);
        Ok(())
    }

    pub(crate) fn read_keys(&self) -> Result<Vec<Arc<Upstream>>, ModelError> {
        self.shared
            .upstreams
            .iter()
            .zip(self.shared.providers.iter())
            .map(|(name, p)| {
                let provider = p.load().provider.clone();
                let keys = Keys::new(&provider, &format!("providers.{name}"))?;
                Ok(Arc::new(Upstream { provider, keys }))
            })
            .collect()
    }

    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) fn current_keys(&self) -> Vec<Arc<Upstream>> {
        self.shared
            .providers
            .iter()
            .map(ArcSwap::load_full)
            .collect()
    }

    pub(crate) fn store_keys(&self, upstreams: Vec<Arc<Upstream>>) {
        for (slot, u) in self.shared.providers.iter().zip(upstreams) {
            slot.store(u);
        }
    }

    /// Each upstream's protocol, by upstream name.
    pub fn protocols(&self) -> Vec<(String, super::providers::Protocol)> {
        self.shared
            .upstreams
            .iter()
            .zip(self.shared.providers.iter())
            .map(|(name, p)| (name.clone(), p.load().provider.protocol))
            .collect()
    }

    /// Counters of every version in the catalog, in catalog order.
    pub fn stats(&self) -> Vec<VersionStats> {
        let catalog = self.shared.catalog.load();
        catalog
            .models
            .iter()
            .map(|m| m.counters.read(&m.name, None))
            .collect()
    }

    /// Counters of one version.
    pub fn model_stats(&self, model: &str) -> Option<VersionStats> {
        let catalog = self.shared.catalog.load();
        let i = *catalog.by_name.get(model)?;
        let m = &catalog.models[i];
        Some(m.counters.read(&m.name, None))
    }

    /// Counters of an alias's versions, with their weights.
    pub fn alias_stats(&self, alias: &str) -> Option<Vec<VersionStats>> {
        let catalog = self.shared.catalog.load();
        let group = &catalog.aliases[*catalog.alias_by_name.get(alias)?];
        Some(
            group
                .members
                .iter()
                .zip(group.weights.weights.iter())
                .map(|(&i, &w)| {
                    let m = &catalog.models[i];
                    m.counters.read(&m.name, Some(w))
                })
                .collect(),
        )
    }
}

fn alias_mut<'c>(
    catalog: &'c mut Catalog,
    alias: &str,
) -> Result<&'c mut super::Alias, ModelError> {
    catalog
        .aliases
        .iter_mut()
        .find(|a| a.name == alias)
        .ok_or_else(|| ModelError::UnknownAlias {
            at: "alias".into(),
            alias: alias.to_owned(),
        })
}
