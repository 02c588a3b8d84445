//! The KRS state directory's lock (`STATE/krs.lock`, an exclusive `flock`): held by `keyward krs
//! serve` for as long as it runs and by the operator commands that change the state it keeps in
//! memory (`keyward krs heads set`), so the two never write the release log or the head book at
//! the same time (the service would otherwise overwrite the operator's change with its own
//! copy, or append to a log whose end it no longer knows).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateLockError {
    /// Another process holds it.
    #[error(
        "the KRS state directory {0} is in use (a running `keyward krs serve`, or another \
         operator command): stop the KRS first (e.g. `systemctl stop keyward-krs`)"
    )]
    Busy(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("the KRS state directory lock {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
}

/// The held lock (released when dropped, or when the process ends however it ends).
pub(crate) struct StateLock {
    _file: nix::fcntl::Flock<File>,
}

/// Take the lock of `state_dir` (created if missing), without waiting.
pub(crate) fn lock(state_dir: &Path) -> Result<StateLock, StateLockError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| StateLockError::Io(state_dir.to_path_buf(), e))?;
    let path = state_dir.join("krs.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StateLockError::Io(path.clone(), e))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(StateLock { _file: l }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            Err(StateLockError::Busy(state_dir.to_path_buf()))
        }
        Err((_, e)) => Err(StateLockError::Io(path, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(StateLockError::Busy(_))));
        drop(held);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn a_state_directory_that_cannot_be_made_keeps_the_io_error() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let Err(e) = lock(&file.join("state")) else {
            panic!("a state directory under a file was locked")
        };
        assert!(matches!(e, StateLockError::Io(..)), "{e}");
        // The message names the path once; the OS error is the source, not a copy.
        assert!(!e.to_string().contains("os error"), "{e}");
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some(),
            "{e:?}"
        );
    }
}
