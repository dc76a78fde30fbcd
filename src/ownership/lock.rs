//! Lock files: an exclusive advisory lock (`flock`) on a file that records its holder's pid.
//! The one helper behind the daemon's lock (one daemon per state directory) and the disk
//! locks (one process per disk). The lock is released when the file is dropped or the
//! process dies, so a crash never leaves a stale lock.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{path} is held{holder}")]
    Held {
        path: PathBuf,
        /// " by pid N" when the holder recorded its pid.
        holder: String,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the lock on `path` (creating it and its directory), without waiting.
pub fn try_lock(path: &Path) -> Result<File, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|pid| format!(" by pid {pid}"))
                .unwrap_or_default();
            Err(LockError::Held {
                path: path.to_path_buf(),
                holder,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.lock");
        let held = try_lock(&path).unwrap();
        match try_lock(&path) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, format!(" by pid {}", std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(try_lock(&path).is_ok());
    }
}
