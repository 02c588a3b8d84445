//! The shared fixtures of keyward's integration tests: a SoftHSMv2 token of a test's own
//! (`common`), the real `keyward` binary as serve / demo / KRS processes with their ready
//! signals and admin and XKS clients (`serve_common`), the botocore SigV4 signer (`xks_common`)
//! and the outside programs found on PATH or named by their Debian package (`tools`).
//!
//! Used by this crate's own tests (the cross-crate flows in `tests/it/`, the standalone binaries
//! in `tests/*.rs`) and by the root package's CLI tests; test-only (`publish = false`, never a
//! dependency of the binary).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod common;
pub mod serve_common;
pub mod tools;
pub mod xks_common;

/// The repository root: test data (`tests/data`, `tests/python`), policies, docs and scripts.
pub fn repo() -> &'static Path {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        here.parent()
            .and_then(Path::parent)
            .unwrap_or(here)
            .to_path_buf()
    })
}

/// The `keyward` binary the tests run: `KEYWARD_BIN` if set, else `keyward` in the target
/// profile directory of the running executable (`target/debug/deps/it-0123` and
/// `target/debug/examples/soak` both give `target/debug/keyward`). Tests outside the root
/// package do not get `CARGO_BIN_EXE_keyward`, and cargo does not build another package's
/// binary for them: `cargo test --workspace` (what `make test` runs) builds it, for the root
/// package's own tests, before any test runs. Panics with one line when the file is missing.
pub fn keyward_bin() -> &'static Path {
    static BIN_PATH: OnceLock<PathBuf> = OnceLock::new();
    BIN_PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        match existing(locate(std::env::var_os("KEYWARD_BIN"), &exe)) {
            Ok(bin) => bin,
            Err(line) => panic!("{line}"),
        }
    })
}

/// Where the binary should be: `given` (KEYWARD_BIN), else `keyward` two levels above `exe`.
fn locate(given: Option<std::ffi::OsString>, exe: &Path) -> PathBuf {
    match given {
        Some(b) => PathBuf::from(b),
        None => exe
            .parent()
            .and_then(Path::parent)
            .map(|profile| profile.join("keyward"))
            .unwrap_or_else(|| PathBuf::from("target/debug/keyward")),
    }
}

/// `bin` if it is a file, else the one line a test panics with.
fn existing(bin: PathBuf) -> Result<PathBuf, String> {
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (`cargo build`; make test does)",
            bin.display()
        ))
    }
}

/// [`keyward_bin`] as a `&str`, for the places that print it or compare command lines.
pub fn keyward_bin_str() -> &'static str {
    match keyward_bin().to_str() {
        Some(s) => s,
        None => panic!("the keyward binary's path is not UTF-8: set KEYWARD_BIN"),
    }
}

/// The `keyward` binary as a value `Command::new` takes (`Command::new(BIN)`), looked up on
/// first use by [`keyward_bin`].
#[derive(Clone, Copy, Debug)]
pub struct KeywardBin;

/// The `keyward` binary (see [`keyward_bin`]).
pub const BIN: KeywardBin = KeywardBin;

impl AsRef<std::ffi::OsStr> for KeywardBin {
    fn as_ref(&self) -> &std::ffi::OsStr {
        keyward_bin().as_os_str()
    }
}

impl AsRef<Path> for KeywardBin {
    fn as_ref(&self) -> &Path {
        keyward_bin()
    }
}

impl std::fmt::Display for KeywardBin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        keyward_bin().display().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_looked_up_in_the_profile_dir_of_the_test_or_example() {
        for exe in [
            "/w/target/debug/deps/it-0123abcd",
            "/w/target/debug/examples/soak",
        ] {
            assert_eq!(
                locate(None, Path::new(exe)),
                Path::new("/w/target/debug/keyward")
            );
        }
        assert_eq!(
            locate(
                Some("/opt/kw".into()),
                Path::new("/w/target/release/deps/x")
            ),
            Path::new("/opt/kw")
        );
    }

    #[test]
    fn a_missing_binary_is_one_line_naming_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("debug/keyward");
        let e = existing(missing.clone()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{} not found: build it first (`cargo build`; make test does)",
                missing.display()
            )
        );
        assert!(!e.contains('\n'));
        std::fs::create_dir_all(dir.path().join("debug")).unwrap();
        std::fs::write(&missing, b"").unwrap();
        assert_eq!(existing(missing.clone()).unwrap(), missing);
    }
}
