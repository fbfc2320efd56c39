//! [`FileSource`]: endpoints listed in a file, reread when it changes.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;

use super::{Snapshot, SnapshotFuture, Source, SourceError};
use crate::proxy::EndpointSpec;

/// Endpoints listed in a JSON or TOML file (TOML when its name ends in
/// `.toml`, and with the `config` feature), reread each time it is asked
/// ([`follow`](super::follow) asks every [`Refresh::max`](super::Refresh)
/// at most; the read is skipped while the file's modification time and
/// length are unchanged). A file that cannot be read or parsed, or lists
/// nothing, is an error: the upstream keeps its last endpoints, and the
/// log and the status say why.
///
/// The file lists `endpoints`, each an address or a table:
///
/// ```json
/// { "endpoints": ["10.0.0.5:8080", { "address": "10.0.0.6:8080", "weight": 2, "host": "green.internal" }] }
/// ```
///
/// ```toml
/// endpoints = ["10.0.0.5:8080", { address = "10.0.0.6:8080", weight = 2 }]
/// ```
///
/// Each endpoint's key is its address.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// The last read: the file's modification time and length, and what
    /// it said.
    last: Option<((SystemTime, u64), Snapshot)>,
}

impl FileSource {
    /// The endpoints listed in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            last: None,
        }
    }
}

/// How a [`FileSource`]'s file is written ([`FileSource::parse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFormat {
    /// JSON.
    Json,
    /// TOML (with the `config` feature).
    Toml,
}

impl FileSource {
    /// The endpoints `text` lists, as a file of `format` would: to check a
    /// file before it is put in place. Every mistake is an error naming
    /// it: not JSON or TOML, a field unknown, an address listed twice, a
    /// weight of 0.
    pub fn parse(text: &str, format: FileFormat) -> Result<Snapshot, SourceError> {
        parse(text, format == FileFormat::Toml)
    }
}

/// The file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listed {
    endpoints: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Address(String),
    Table(Table),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    address: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    host: Option<String>,
}

/// The snapshot a file's `text` lists; `toml` says how to read it.
fn parse(text: &str, toml: bool) -> Result<Snapshot, SourceError> {
    let listed: Listed = if toml {
        #[cfg(feature = "config")]
        {
            ::toml::from_str(text).map_err(|e| SourceError::new(format!("invalid TOML: {e}")))?
        }
        #[cfg(not(feature = "config"))]
        {
            let _ = text;
            return Err(SourceError::new(
                "a TOML file needs switchyard's `config` feature; write JSON",
            ));
        }
    } else {
        serde_json::from_str(text).map_err(|e| SourceError::new(format!("invalid JSON: {e}")))?
    };
    let mut endpoints: Vec<(String, EndpointSpec)> = Vec::new();
    for entry in listed.endpoints {
        let (address, weight, host) = match entry {
            Entry::Address(a) => (a, None, None),
            Entry::Table(t) => (t.address, t.weight, t.host),
        };
        if endpoints.iter().any(|(k, _)| *k == address) {
            return Err(SourceError::new(format!("`{address}` is listed twice")));
        }
        let mut spec = EndpointSpec::new(address.clone());
        if let Some(w) = weight {
            if w == 0 {
                return Err(SourceError::new(format!("`{address}`: a weight of 0")));
            }
            spec = spec.weight(w);
        }
        if let Some(h) = host {
            spec = spec.host(h);
        }
        endpoints.push((address, spec));
    }
    Ok(Snapshot::new(endpoints, None))
}

impl Source for FileSource {
    fn snapshot(&mut self) -> SnapshotFuture<'_> {
        Box::pin(async move {
            let path = self.path.clone();
            let meta = tokio::task::spawn_blocking({
                let path = path.clone();
                move || std::fs::metadata(&path)
            })
            .await
            .map_err(|e| SourceError::new(e.to_string()))?
            .map_err(|e| SourceError::new(format!("{}: {e}", path.display())))?;
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if let Some((last, snapshot)) = &self.last
                && *last == stamp
            {
                return Ok(snapshot.clone());
            }
            if meta.len() > 16 * 1024 * 1024 {
                return Err(SourceError::new(format!(
                    "{}: larger than 16 MiB",
                    path.display()
                )));
            }
            let text = tokio::task::spawn_blocking({
                let path = path.clone();
                move || std::fs::read_to_string(&path)
            })
            .await
            .map_err(|e| SourceError::new(e.to_string()))?
            .map_err(|e| SourceError::new(format!("{}: {e}", path.display())))?;
            let toml = path.extension().is_some_and(|e| e == "toml");
            let snapshot = parse(&text, toml)
                .map_err(|e| SourceError::new(format!("{}: {}", path.display(), e.0)))?;
            self.last = Some((stamp, snapshot.clone()));
            Ok(snapshot)
        })
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_mistakes_are_named() {
        let s = parse(
            r#"{"endpoints": ["10.0.0.5:8080", {"address": "10.0.0.6:8080", "weight": 2, "host": "g"}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(
            s.endpoints[1].1,
            EndpointSpec::new("10.0.0.6:8080").weight(2).host("g")
        );
        for (bad, why) in [
            (r#"{"endpoints": ["a:1", "a:1"]}"#, "listed twice"),
            (
                r#"{"endpoints": [{"address": "a:1", "weight": 0}]}"#,
                "weight of 0",
            ),
            (r#"{"endpoints": [{"addr": "a:1"}]}"#, "invalid JSON"),
            (r#"{"servers": []}"#, "invalid JSON"),
            ("not json", "invalid JSON"),
        ] {
            let e = parse(bad, false).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
    }

    #[cfg(feature = "config")]
    #[test]
    fn toml_lists_parse() {
        let s = parse(
            r#"endpoints = ["10.0.0.5:8080", { address = "10.0.0.6:8080", weight = 3 }]"#,
            true,
        )
        .unwrap();
        assert_eq!(s.endpoints[1].1.weight, 3);
    }
}
