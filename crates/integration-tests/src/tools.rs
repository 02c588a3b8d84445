//! The outside programs the integration tests run (SoftHSMv2, swtpm, curl, shellcheck, ...):
//! found on PATH, or the test FAILS naming the Debian package that provides it. A missing tool
//! never turns into a silent pass or a bare `NotFound` panic. `scripts/setup.sh test` (what
//! `make test` runs first) installs all of them.
//!
//! A module of the keyward-integration-tests library (re-exported as `common::tools`,
//! `serve_common::tools` and `xks_common::tools`), and included (`#[path]`) by keyward-xks's
//! tests beside `xks_common`, so every test binary finds the same programs the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `program` is: the first executable file of that name on PATH (then /usr/sbin, /sbin).
pub fn find(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The message a test fails with when `program` is missing.
pub fn missing(program: &str, package: &str) -> String {
    format!(
        "{program} not found: apt-get install {package} (scripts/setup.sh test installs \
         everything the tests need)"
    )
}

/// `program`'s path; panics (fails the test) naming `package` when it is not installed.
pub fn need(program: &str, package: &str) -> PathBuf {
    find(program).unwrap_or_else(|| panic!("{}", missing(program, package)))
}

/// A file a package installs (e.g. a PKCS#11 module): the first of `candidates` that exists;
/// panics naming `package` when none does.
pub fn need_file(candidates: &[&str], package: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found: apt-get install {package}",
                candidates.join(" or ")
            )
        })
}

/// `curl`, found or failing with the package name.
pub fn curl() -> Command {
    Command::new(need("curl", "curl"))
}

/// `swtpm`, found or failing with the package name.
pub fn swtpm() -> Command {
    Command::new(need("swtpm", "swtpm"))
}

/// `softhsm2-util`, found or failing with the package name.
pub fn softhsm2_util() -> Command {
    Command::new(need("softhsm2-util", "softhsm2"))
}

/// `/usr/bin/python3` (Debian's, which sees the python3-* packages; `python3` on PATH may be
/// another interpreter).
pub fn debian_python3() -> PathBuf {
    let p = Path::new("/usr/bin/python3");
    if !p.is_file() {
        panic!("{}", missing("/usr/bin/python3", "python3"));
    }
    p.to_path_buf()
}
