//! `[master_key] source = "release"` through `keyward config check` (the real binary): a valid
//! sub-table passes; bad pins, unknown attesters, unknown keys and a missing sub-table are each
//! reported with their key path.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn check(dir: &Path, master_key: &str) -> (i32, String) {
    for f in ["chain.pem", "key.pem"] {
        std::fs::write(dir.join(f), "placeholder").unwrap();
    }
    let text = format!(
        "[xks]\nlisten = \"127.0.0.1:0\"\ntls_cert_chain_file = \"chain.pem\"\ntls_key_file = \"key.pem\"\n\n[storage]\ndir = \"store\"\n\n[[key_store]]\nname = \"a\"\nuri_prefix = \"/a\"\nregion = \"us-east-1\"\n[[key_store.credentials]]\naccess_key_id = \"KWTESTACCESSKEYAAAAAAA\"\nsecret_access_key = \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\"\n\n{master_key}"
    );
    let f = dir.join("keyward.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    let s =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), s)
}

const PIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn release_section_is_checked_with_paths() {
    let d = tempfile::tempdir().unwrap();
    let good = format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"krs.example:7443\"\nkrs_tls_spki_sha256 = \"{PIN}\"\nreceipt_spki_sha256 = \"{PIN}\"\nattesters = [\"snp\", \"nitrotpm\"]\nretry_max_secs = 30\n"
    );
    let (code, out) = check(d.path(), &good);
    assert_eq!(code, 0, "{out}");

    let bad = format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"krs.example:7443\"\nkrs_tls_spki_sha256 = \"abcd\"\nreceipt_spki_sha256 = \"{PIN}\"\nattesters = [\"snp\", \"sgx\"]\ncolour = \"blue\"\nmax_attempts = -1\n"
    );
    let (code, out) = check(d.path(), &bad);
    assert_ne!(code, 0);
    for needle in [
        "master_key.release.krs_tls_spki_sha256",
        "master_key.release.attesters[1]",
        "master_key.release.colour",
        "master_key.release.max_attempts",
    ] {
        assert!(out.contains(needle), "{needle} missing in:\n{out}");
    }

    let (code, out) = check(d.path(), "[master_key]\nsource = \"release\"\n");
    assert_ne!(code, 0);
    assert!(out.contains("master_key.release"), "{out}");

    let sim = good.replace("[\"snp\", \"nitrotpm\"]", "[\"simulated-snp\"]");
    let (code, out) = check(d.path(), &sim);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("simulated-snp proves nothing"), "{out}");
}
