//! Shared fixtures for the release/KRS/HSM integration tests: a SoftHSMv2 token in a temp dir
//! with its own SOFTHSM2_CONF, and helpers to run the real `keyward` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A SoftHSM token of our own. The SOFTHSM2_CONF path must be in the environment of whatever
/// loads the module (this process for library tests, the child for binary tests).
pub struct Token {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub label: String,
    pub pin: String,
}

/// None (after a loud message) only when softhsm2-util is not installed.
pub fn softhsm_token(label: &str) -> Option<Token> {
    let which = Command::new("sh")
        .args(["-c", "command -v softhsm2-util"])
        .output()
        .ok()?;
    if !which.status.success() {
        eprintln!(
            "\n\n*** SKIPPING: softhsm2-util is not installed (apt install softhsm2) ***\n\n"
        );
        return None;
    }
    let module = MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("softhsm2-util is installed but libsofthsm2.so was not found");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "0000",
            "--pin",
            "1234",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Token {
        dir,
        conf,
        module,
        label: label.into(),
        pin: "1234".into(),
    })
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyward")
}

pub fn write(path: &Path, s: &str) {
    std::fs::write(path, s).unwrap();
}
