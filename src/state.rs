//! Runtime state that must survive a restart (an API's lifecycle stage and
//! its moves, subscriptions), kept in a JSON file that is replaced whole on
//! every change: written to a temporary file beside it, flushed to disk,
//! then renamed over it, so a crash leaves the old file or the new one,
//! never half of either; or in Redis, shared by replicas
//! ([`redis::RedisState`], feature `redis`).
//!
//! A file that cannot be read as state is refused with where it went wrong,
//! never silently reset. Nothing here is read on a request's path: state is
//! loaded into the handles that serve, and written when they change.
//!
//! Both [`StateFile`] and, with the `redis` feature, [`RedisState`](redis::RedisState)
//! (shared by every replica) are a [`StateStore`]: entries of JSON text by
//! section and key, replaced only if they are still what the writer last
//! read, so that two writers never undo each other's change unseen.
//!
//! ```
//! use switchyard::state::StateFile;
//!
//! let dir = std::env::temp_dir().join(format!("switchyard-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("state.json");
//! # let _ = std::fs::remove_file(&path);
//! let state = StateFile::open(&path).unwrap();
//! state.put("lifecycle", "orders v1", &"deprecated").unwrap();
//!
//! // After a restart.
//! let state = StateFile::open(&path).unwrap();
//! let stage: Option<String> = state.get("lifecycle", "orders v1").unwrap();
//! assert_eq!(stage.as_deref(), Some("deprecated"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why state could not be read or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file exists but could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state document: where, and why.
    #[error("state file {path} is corrupt at line {line}, column {column}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The column (from 1).
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// An entry does not have the shape its reader expects.
    #[error("state {}: entry `{section}.{key}`: {message}", path.display())]
    Entry {
        /// The file (for Redis, `redis:` and the key prefix).
        path: PathBuf,
        /// The entry's section.
        section: String,
        /// Its key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// Redis could not be reached, or answered with an error.
    #[error("state in Redis: {0}")]
    Redis(String),
}

impl StateError {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis(e: impl fmt::Display) -> Self {
        StateError::Redis(e.to_string())
    }
}

/// Where runtime state is kept: entries of JSON text, by section and key.
///
/// The platform's handles ([`LifecycleLayer::with_state`](crate::platform::lifecycle::LifecycleLayer::with_state),
/// [`Subscriptions::with_state`](crate::platform::subscription::Subscriptions::with_state))
/// read an entry, change it, and [`swap`](StateStore::swap) it in only if
/// it is still what they read; when another writer (another replica) got
/// there first, they read it again and retry.
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Where it is, for messages: a file's path, or `redis:` and a prefix.
    fn location(&self) -> PathBuf;

    /// Entry `key` of `section`, as JSON text, if kept.
    fn load(&self, section: &str, key: &str) -> Result<Option<String>, StateError>;

    /// Replaces entry `key` of `section` with `value` (JSON text) if it
    /// is `expected` now (`None`: absent). `Ok(false)`, and nothing
    /// changed, if it is not; an error if it could not be kept.
    fn swap(
        &self,
        section: &str,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError>;
}

/// A state document kept in a file (see the [module docs](self)).
///
/// Open a file once and share it (`Arc<StateFile>`) between everything
/// that keeps state in it: each `StateFile` writes the whole document it
/// holds, so two opened on one path would undo each other's changes.
pub struct StateFile {
    path: PathBuf,
    /// Sections of entries; the lock also serialises writes.
    doc: Mutex<Map<String, Value>>,
}

impl fmt::Debug for StateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateFile {
    /// The state kept at `path`: empty if there is no file yet (it is
    /// made on the first change); an error if the file cannot be read or
    /// is not a state document (a JSON object of objects).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let doc = match fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        Ok(Self {
            path,
            doc: Mutex::new(doc),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entry `key` of `section`, if kept.
    pub fn get<T: DeserializeOwned>(
        &self,
        section: &str,
        key: &str,
    ) -> Result<Option<T>, StateError> {
        let doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
        let Some(value) = doc.get(section).and_then(|s| s.get(key)) else {
            return Ok(None);
        };
        T::deserialize(value)
            .map(Some)
            .map_err(|e| self.entry_error(section, key, e))
    }

    /// Keeps `value` as entry `key` of `section`: the file is replaced
    /// before this returns (and left as it was if that fails).
    pub fn put<T: Serialize>(&self, section: &str, key: &str, value: &T) -> Result<(), StateError> {
        let value = serde_json::to_value(value).map_err(|e| self.entry_error(section, key, e))?;
        self.replace(section, key, value, |_| true).map(drop)
    }

    /// Replaces entry `key` of `section` with `value` when `keep(current)`
    /// says so: the file is replaced before this returns (and left as it
    /// was if that fails).
    fn replace(
        &self,
        section: &str,
        key: &str,
        value: Value,
        keep: impl FnOnce(Option<&Value>) -> bool,
    ) -> Result<bool, StateError> {
        let mut doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
        if !keep(doc.get(section).and_then(|s| s.get(key))) {
            return Ok(false);
        }
        let mut next = doc.clone();
        let entries = next
            .entry(section.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(entries) = entries {
            entries.insert(key.to_owned(), value);
        }
        self.write(&next)?;
        *doc = next;
        Ok(true)
    }

    fn entry_error(&self, section: &str, key: &str, e: serde_json::Error) -> StateError {
        StateError::Entry {
            path: self.path.clone(),
            section: section.to_owned(),
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    /// Replaces the file with `doc`: a temporary file beside it, flushed,
    /// renamed over it.
    fn write(&self, doc: &Map<String, Value>) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| io(e.into()))?;
        bytes.push(b'\n');
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename itself is durable once the directory is.
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(dir) = fs::File::open(dir)
            {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io)
    }
}

impl StateStore for StateFile {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn load(&self, section: &str, key: &str) -> Result<Option<String>, StateError> {
        let doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
        Ok(doc
            .get(section)
            .and_then(|s| s.get(key))
            .map(Value::to_string))
    }

    fn swap(
        &self,
        section: &str,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError> {
        let value: Value =
            serde_json::from_str(value).map_err(|e| self.entry_error(section, key, e))?;
        self.replace(section, key, value, |now| {
            now.map(Value::to_string).as_deref() == expected
        })
    }
}

/// Reads entry `key` of `section` of `store` as a `T`: its JSON text too,
/// for a later [`StateStore::swap`].
pub(crate) fn load_as<T: DeserializeOwned>(
    store: &dyn StateStore,
    section: &str,
    key: &str,
) -> Result<Option<(T, String)>, StateError> {
    let Some(text) = store.load(section, key)? else {
        return Ok(None);
    };
    let value = serde_json::from_str(&text).map_err(|e| StateError::Entry {
        path: store.location(),
        section: section.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Some((value, text)))
}

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// `bytes` as a state document: a JSON object whose values are objects.
fn parse(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, StateError> {
    let corrupt = |line, column, message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.line(), e.column(), e.to_string()))?;
    let Value::Object(doc) = value else {
        return Err(corrupt(1, 1, "not a JSON object".to_owned()));
    };
    if let Some((name, _)) = doc.iter().find(|(_, v)| !v.is_object()) {
        return Err(corrupt(
            1,
            1,
            format!("section `{name}` is not a JSON object"),
        ));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn kept_across_opens_and_replaced_whole() {
        let dir = dir("kept");
        let path = dir.join("state.json");
        let state = StateFile::open(&path).unwrap();
        assert_eq!(state.get::<u64>("a", "x").unwrap(), None);
        assert!(!path.exists(), "made on the first change");
        state.put("a", "x", &1u64).unwrap();
        state.put("a", "y", &2u64).unwrap();
        state.put("b", "x", &"three").unwrap();
        let again = StateFile::open(&path).unwrap();
        assert_eq!(again.get::<u64>("a", "x").unwrap(), Some(1));
        assert_eq!(again.get::<u64>("a", "y").unwrap(), Some(2));
        assert_eq!(
            again.get::<String>("b", "x").unwrap().as_deref(),
            Some("three")
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        // An entry of another shape is an error naming it.
        let err = again.get::<u64>("b", "x").unwrap_err();
        assert!(err.to_string().contains("entry `b.x`"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_refused_where_it_breaks() {
        let dir = dir("corrupt");
        let path = dir.join("state.json");
        fs::write(&path, "{\n  \"lifecycle\": {\n    \"orders v1\": ,\n").unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { line: 3, .. }), "{err}");
        fs::write(&path, "[1, 2]").unwrap();
        assert!(matches!(
            StateFile::open(&path),
            Err(StateError::Corrupt { .. })
        ));
        fs::write(&path, r#"{"lifecycle": 3}"#).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(err.to_string().contains("section `lifecycle`"), "{err}");
        // Refused, not reset: the file is as it was.
        assert_eq!(fs::read_to_string(&path).unwrap(), r#"{"lifecycle": 3}"#);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = dir("failed");
        // A directory where the file should be: the rename fails.
        let path = dir.join("state.json");
        let state = StateFile::open(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(matches!(
            state.put("a", "x", &1u64),
            Err(StateError::Io { .. })
        ));
        assert_eq!(state.get::<u64>("a", "x").unwrap(), None);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "the temporary file removed");
        fs::remove_dir_all(&dir).unwrap();
    }
}
