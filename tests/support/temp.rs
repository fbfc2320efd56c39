//! A directory of the test's own under the system's temporary directory,
//! removed when dropped, so that no run leaves files behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A test's directory, removed on drop, also when the test panics unless
/// it is to be kept then ([`keep_on_panic`](Self::keep_on_panic)).
pub struct TempDir {
    path: PathBuf,
    /// What it holds, named on stderr when it is kept for a failed test.
    kept_on_panic: Option<&'static str>,
}

impl TempDir {
    /// `switchyard-{name}-{pid}`, created empty (whatever an earlier run
    /// of the same process id left there removed first).
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("switchyard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self::removed_on_drop(path)
    }

    /// A directory no other in this process shares, for a harness that
    /// may run in several tests at once: `switchyard-{name}-{pid}-{n}-{ns}`
    /// (a counter and the clock's nanoseconds).
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "the Redis harness's")
    )]
    pub fn unique(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "switchyard-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir(&path).expect("create the test's temporary directory");
        Self::removed_on_drop(path)
    }

    fn removed_on_drop(path: PathBuf) -> Self {
        Self {
            path,
            kept_on_panic: None,
        }
    }

    /// Kept, and named on stderr as `what`, when the test panics with
    /// something written in it (a harness's logs, for the test that
    /// failed).
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "the Redis harness's")
    )]
    pub fn keep_on_panic(mut self, what: &'static str) -> Self {
        self.kept_on_panic = Some(what);
        self
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(what) = self.kept_on_panic
            && std::thread::panicking()
            && std::fs::read_dir(&self.path).is_ok_and(|mut d| d.next().is_some())
        {
            eprintln!("{what} kept in {}", self.path.display());
            return;
        }
        // A gateway the test started may still be saving its state file
        // (written beside it, then renamed) while the directory goes: a
        // file renamed in after the listing makes the removal fail with
        // the directory not empty. Once the directory is gone, such a
        // write fails on its own rather than bringing it back.
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}
