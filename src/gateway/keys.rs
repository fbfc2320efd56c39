//! API keys managed through the admin API: added (the secret shown once,
//! only its digest kept) and revoked while the gateway serves, kept in the
//! platform's state store so that they survive reloads and restarts (and,
//! in Redis, reach every replica).
//!
//! The keys in force are the configuration's `api_keys`, less those
//! revoked through the admin API, plus those added through it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::auth::ApiKey;
use crate::state::{StateError, StateStore, load_as};

/// The state store's section and key of the managed keys (one entry).
const SECTION: &str = "api_keys";
const KEY: &str = "managed";
/// Keys added through the admin API, at most.
pub(crate) const MAX_MANAGED: usize = 10_000;
/// Changes retried when another writer changed the entry in between.
const RETRIES: usize = 8;

/// A key added through the admin API: its digest and identity, never its
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Managed {
    pub(crate) digest: String,
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tier: Option<String>,
    /// The admin who added it, and when (Unix seconds).
    pub(crate) by: String,
    pub(crate) at: u64,
}

impl Managed {
    pub(crate) fn key(&self) -> Option<ApiKey> {
        let identity = super::build::key_identity(
            &self.id,
            self.tenant.as_deref(),
            &self.scopes,
            self.tier.as_deref(),
        );
        ApiKey::from_digest(&self.digest, identity).ok()
    }
}

/// What the store keeps.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    added: Vec<Managed>,
    /// Digests revoked through the admin API (configured keys among them).
    #[serde(default)]
    revoked: BTreeSet<String>,
}

#[derive(Default)]
struct Book {
    saved: Saved,
    /// The entry's JSON text as last read or written.
    seen: Option<String>,
}

/// The managed keys, shared by every state of one gateway.
pub(crate) struct ManagedKeys {
    store: Option<Arc<dyn StateStore>>,
    book: Mutex<Book>,
}

/// Why a change to the managed keys was refused.
#[derive(Debug)]
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) enum KeyChange {
    /// A key with this digest is in force already.
    Exists,
    /// No key in force has this digest.
    Unknown,
    /// As many keys are managed as are kept.
    Full,
    /// The store could not keep it (nothing changed).
    State(StateError),
    /// Other writers kept changing the keys; try again.
    Busy,
}

impl ManagedKeys {
    /// No managed keys, kept in memory only.
    pub(crate) fn none() -> Self {
        Self {
            store: None,
            book: Mutex::new(Book::default()),
        }
    }

    /// The managed keys `store` holds (none without a store).
    pub(crate) fn open(store: Option<Arc<dyn StateStore>>) -> Result<Self, StateError> {
        let mut book = Book::default();
        if let Some(store) = &store
            && let Some((saved, text)) = load_as::<Saved>(store.as_ref(), SECTION, KEY)?
        {
            book = Book {
                saved,
                seen: Some(text),
            };
        }
        Ok(Self {
            store,
            book: Mutex::new(book),
        })
    }

    /// `configured` less the revoked, plus the added.
    pub(crate) fn merged(&self, configured: Vec<ApiKey>) -> Vec<ApiKey> {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let saved = &book.saved;
        let mut keys: Vec<ApiKey> = configured
            .into_iter()
            .filter(|k| !saved.revoked.contains(&k.digest()))
            .collect();
        for m in &saved.added {
            if !saved.revoked.contains(&m.digest)
                && !keys.iter().any(|k| k.digest() == m.digest)
                && let Some(key) = m.key()
            {
                keys.push(key);
            }
        }
        keys
    }

    /// Whether `digest` was added through the admin API.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn is_managed(&self, digest: &str) -> bool {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.saved.added.iter().any(|m| m.digest == digest)
    }

    /// Reads the store again; whether what it holds changed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn refresh(&self) -> Result<bool, StateError> {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        self.adopt(&mut book)
    }

    fn adopt(&self, book: &mut Book) -> Result<bool, StateError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let loaded = load_as::<Saved>(store.as_ref(), SECTION, KEY)?;
        let text = loaded.as_ref().map(|(_, t)| t.clone());
        if text == book.seen {
            return Ok(false);
        }
        book.saved = loaded.map(|(s, _)| s).unwrap_or_default();
        book.seen = text;
        Ok(true)
    }

    /// Adds `key` (`in_force`: the digests of the keys in force now).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn add(&self, key: Managed, in_force: &[String]) -> Result<(), KeyChange> {
        self.change(|saved| {
            if in_force.contains(&key.digest)
                || saved
                    .added
                    .iter()
                    .any(|m| m.digest == key.digest && !saved.revoked.contains(&m.digest))
            {
                return Err(KeyChange::Exists);
            }
            if saved.added.len() >= MAX_MANAGED {
                return Err(KeyChange::Full);
            }
            // A digest revoked once and added again is in force again.
            saved.revoked.remove(&key.digest);
            saved.added.retain(|m| m.digest != key.digest);
            saved.added.push(key.clone());
            Ok(())
        })
    }

    /// Revokes the key of `digest` (`in_force`: the digests in force now).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn revoke(&self, digest: &str, in_force: &[String]) -> Result<(), KeyChange> {
        self.change(|saved| {
            if !in_force.iter().any(|d| d == digest) || saved.revoked.contains(digest) {
                return Err(KeyChange::Unknown);
            }
            // An added key is forgotten; a configured one stays revoked.
            let before = saved.added.len();
            saved.added.retain(|m| m.digest != digest);
            if saved.added.len() == before {
                saved.revoked.insert(digest.to_owned());
            }
            Ok(())
        })
    }

    /// One change, made on what the store holds now, kept there (or not
    /// made), retried when another writer got in between.
    fn change(&self, f: impl Fn(&mut Saved) -> Result<(), KeyChange>) -> Result<(), KeyChange> {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..RETRIES {
            self.adopt(&mut book).map_err(KeyChange::State)?;
            let mut next = book.saved.clone();
            f(&mut next)?;
            let Some(store) = &self.store else {
                book.saved = next;
                return Ok(());
            };
            let text = serde_json::to_string(&next).map_err(|e| {
                KeyChange::State(StateError::Entry {
                    path: store.location(),
                    section: SECTION.to_owned(),
                    key: KEY.to_owned(),
                    message: e.to_string(),
                })
            })?;
            if store
                .swap(SECTION, KEY, book.seen.as_deref(), &text)
                .map_err(KeyChange::State)?
            {
                book.saved = next;
                book.seen = Some(text);
                return Ok(());
            }
        }
        Err(KeyChange::Busy)
    }
}
