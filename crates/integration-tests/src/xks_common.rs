//! Shared by the XKS integration tests (keyward-integration-tests, and `crates/xks/tests/it`
//! through `#[path]`, with `tools.rs` beside it at its crate root): the botocore venv (an
//! independent SigV4 signer).

// the same programs, found the same way (`common::tools::need`, ... as before)
pub use crate::tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The workspace root (the directory holding Cargo.lock), from whichever package includes this.
fn workspace() -> PathBuf {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !p.join("Cargo.lock").exists() && p.pop() {}
    p
}

/// The botocore driver script.
#[allow(dead_code)]
pub fn botocore_script() -> PathBuf {
    workspace().join("tests/python/xks_sign.py")
}

/// A venv with botocore under target/, built once. The test fails (naming what is missing) when
/// it cannot be built: python3-venv not installed, or PyPI unreachable.
pub fn botocore_python() -> PathBuf {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let py = PY.get_or_init(|| {
        let root = workspace().join("target").join("xks-pyvenv");
        let py = root.join("bin").join("python3");
        let has = |py: &Path| {
            Command::new(py)
                .args(["-c", "import botocore"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if py.exists() && has(&py) {
            return Ok(py);
        }
        let lock = root.with_extension("lock");
        let _ = std::fs::create_dir_all(root.parent().unwrap());
        // Serialize venv creation across test binaries with a lock directory.
        for _ in 0..600 {
            if std::fs::create_dir(&lock).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            if py.exists() && has(&py) {
                return Ok(py);
            }
        }
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(root.join("bin").join("pip"))
                .args(["install", "-q", "--disable-pip-version-check", "botocore"])
                .status()
                .is_ok_and(|s| s.success());
        let _ = std::fs::remove_dir(&lock);
        if ok && has(&py) {
            Ok(py)
        } else {
            Err(format!(
                "botocore (the independent SigV4 signer) could not be installed into {}: \
                 `python3 -m venv` needs python3-venv (apt-get install python3-venv) and pip \
                 needs PyPI",
                root.display()
            ))
        }
    });
    match py {
        Ok(py) => py.clone(),
        Err(e) => panic!("{e}"),
    }
}
