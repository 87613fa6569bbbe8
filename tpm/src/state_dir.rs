//! The state directory a PCR-backed log lives in, between restarts: held
//! exclusively by one process (two writers would interleave their extends),
//! and replaced only atomically and durably (a crash leaves the old file or
//! the new one, never half of either). Shared by the enclave's launch log
//! and aver-node's node log.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Why the state directory could not be locked or written.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another process holds the directory's lock.
    #[error("state directory {0} is locked by another process")]
    Busy(PathBuf),
    /// A filesystem call on the lock or state file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// The step that failed, as the message says it: "open", "lock",
        /// "create", "write", "sync" or "replace".
        action: &'static str,
        /// What the step acted on: the lock file, the temporary file, the
        /// file being replaced, or the directory when it is fsynced.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateDirError {
    let path = path.to_owned();
    move |source| StateDirError::Io {
        action,
        path,
        source,
    }
}

/// Takes the exclusive lock on `dir/lock_file`; it is held for as long as
/// the returned file lives (or until the process dies).
pub fn lock(dir: &Path, lock_file: &str) -> Result<File, StateDirError> {
    let path = dir.join(lock_file);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StateDirError::Busy(dir.to_owned())),
        Err(TryLockError::Error(source)) => Err(StateDirError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

/// Replaces `dir/file` with `bytes`: written to `dir/temp_file`, fsynced,
/// renamed over the file, and the directory fsynced so the rename lasts.
pub fn replace(dir: &Path, file: &str, temp_file: &str, bytes: &[u8]) -> Result<(), StateDirError> {
    let temp = dir.join(temp_file);
    let mut out = File::create(&temp).map_err(io_error("create", &temp))?;
    out.write_all(bytes).map_err(io_error("write", &temp))?;
    out.sync_all().map_err(io_error("sync", &temp))?;
    drop(out);
    let path = dir.join(file);
    fs::rename(&temp, &path).map_err(io_error("replace", &path))?;
    sync_dir(dir)
}

/// Fsyncs the directory itself, so that a rename or removal in it lasts.
pub fn sync_dir(dir: &Path) -> Result<(), StateDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_atomic_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), "lock").unwrap();
        assert!(matches!(
            lock(dir.path(), "lock"),
            Err(StateDirError::Busy(_))
        ));
        drop(held);
        lock(dir.path(), "lock").unwrap();
        replace(dir.path(), "log.json", ".log.tmp", b"one").unwrap();
        replace(dir.path(), "log.json", ".log.tmp", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("log.json")).unwrap(), b"two");
        assert!(!dir.path().join(".log.tmp").exists());
    }
}
