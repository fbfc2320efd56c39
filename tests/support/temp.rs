//! A directory of the test's own under the system's temporary directory,
//! removed when dropped, so that no run leaves files behind.

use std::path::{Path, PathBuf};

/// `switchyard-{name}-{pid}`, created empty (whatever an earlier run of
/// the same process id left there removed first) and removed on drop,
/// also when the test panics.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A gateway the test started may still be saving its state file
        // (written beside it, then renamed) while the directory goes: a
        // file renamed in after the listing makes the removal fail with
        // the directory not empty. Once the directory is gone, such a
        // write fails on its own rather than bringing it back.
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}
