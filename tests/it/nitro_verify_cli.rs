//! `keyward verify` as a process on a saved NitroTPM bundle (`tests/data/nitro/`, signed under
//! a test root): accepted at a time inside its validity, refused when too old, refused under
//! the built-in policy (which pins AWS's real Nitro root), refused when the document is altered.

use std::process::Command;

fn data(f: &str) -> String {
    format!("{}/tests/data/nitro/{f}", env!("CARGO_MANIFEST_DIR"))
}

fn verify(bundle: &str, policy: Option<&str>, at: &str) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.args(["verify", "--evidence", bundle, "--json", "--at", at]);
    if let Some(p) = policy {
        cmd.args(["--policy", p]);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn status(v: &serde_json::Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("{name} missing in {v:#}"))
}

#[test]
fn saved_nitro_bundle() {
    let at = "2026-01-01T00:00:00Z";
    let (code, v) = verify(&data("bundle.json"), Some(&data("policy.toml")), at);
    assert_eq!(code, 0, "{v:#}");
    for n in [
        "nitro.root",
        "nitro.chain",
        "nitro.cert_dates",
        "nitro.signature",
        "nitro.timestamp",
        "nitro.pcr12_no_override",
        "nitro.pcrs",
    ] {
        assert_eq!(status(&v, n), "passed", "{n}");
    }
    // Offline: no expected nonce/user data, so the binding checks are skipped, not passed.
    assert_eq!(status(&v, "nitro.nonce"), "skipped");

    // An hour later the document is too old.
    let (code, v) = verify(
        &data("bundle.json"),
        Some(&data("policy.toml")),
        "2026-01-01T01:00:00Z",
    );
    assert_eq!(code, 1);
    assert_eq!(status(&v, "nitro.timestamp"), "failed");
    // Three days later the leaf has expired as well.
    let (code, v) = verify(
        &data("bundle.json"),
        Some(&data("policy.toml")),
        "2026-01-04T00:00:00Z",
    );
    assert_eq!(code, 1);
    assert_eq!(status(&v, "nitro.cert_dates"), "failed");

    // The built-in policy pins AWS's root only.
    let (code, v) = verify(&data("bundle.json"), None, at);
    assert_eq!(code, 1);
    assert_eq!(status(&v, "nitro.root"), "failed");

    // One byte of the document flipped (inside the signature).
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("bundle.json")).unwrap()).unwrap();
    use base64::Engine;
    let e = base64::engine::general_purpose::STANDARD;
    let mut doc = e.decode(b["nitro"]["document"].as_str().unwrap()).unwrap();
    let n = doc.len();
    doc[n - 5] ^= 0x01;
    b["nitro"]["document"] = e.encode(&doc).into();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flipped.json");
    std::fs::write(&p, serde_json::to_vec(&b).unwrap()).unwrap();
    let (code, v) = verify(p.to_str().unwrap(), Some(&data("policy.toml")), at);
    assert_eq!(code, 1);
    assert_eq!(status(&v, "nitro.signature"), "failed");
}
