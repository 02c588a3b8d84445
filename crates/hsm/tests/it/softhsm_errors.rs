//! What a real token's refusal looks like through [`keyward_hsm::HsmError`]: the PKCS#11
//! function is named once in the message and cryptoki's error (with the token's `CKR_*`) is the
//! `source()`, so the CLI's chain and the KRS's log show what the token said.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::Command;

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use keyward_hsm::{Hsm, HsmConfig, HsmError, PinSource};

const MODULES: [&str; 4] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A fresh token labelled `errs` with user PIN `1234` under `dir`, and the module's path. A
/// machine without SoftHSMv2 fails the test naming the package (never a silent pass).
fn token(dir: &std::path::Path) -> Option<PathBuf> {
    let Some(module) = MODULES.iter().map(PathBuf::from).find(|p| p.exists()) else {
        panic!("SoftHSMv2 is not installed: apt-get install softhsm2 (or scripts/setup.sh --install test)");
    };
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // One test in this binary sets it, before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "errs"])
        .args(["--so-pin", "5678", "--pin", "1234"])
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util: {e} (apt-get install softhsm2)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(module)
}

#[test]
fn a_wrong_pin_is_c_login_with_the_tokens_error_as_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let Some(module) = token(dir.path()) else {
        return;
    };
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "9999\n").unwrap();
    let mut cfg = HsmConfig {
        module,
        token_label: "errs".into(),
        pin: PinSource {
            pin_file: Some(pin_file.clone()),
            pin_env: None,
        },
        master_key_label: "keyward-master".into(),
        receipt_key_label: "keyward-receipt".into(),
    };
    let Err(e) = Hsm::open(&cfg) else {
        panic!("a wrong PIN logged in")
    };
    assert!(matches!(e, HsmError::Call { op: "C_Login", .. }), "{e:?}");
    assert_eq!(e.to_string(), "PKCS#11 C_Login");
    let src = e.source().and_then(|s| s.downcast_ref::<Error>());
    assert!(
        matches!(
            src,
            Some(Error::Pkcs11(RvError::PinIncorrect, Function::Login))
        ),
        "{src:?}"
    );

    // The right PIN opens it; an unknown label is named, with no cause to show.
    std::fs::write(&pin_file, "1234\n").unwrap();
    Hsm::open(&cfg).unwrap();
    cfg.token_label = "other".into();
    let Err(e) = Hsm::open(&cfg) else {
        panic!("a missing token opened")
    };
    assert!(
        matches!(e, HsmError::NoToken(ref l) if l == "other"),
        "{e:?}"
    );
    assert!(e.source().is_none());
}
