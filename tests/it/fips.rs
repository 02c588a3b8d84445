//! The FIPS build against the default one (`make fips` runs this module with `--features fips`;
//! `make test` runs it on the default build): the demo's GetHealthStatus model, the
//! `keyward_fips_mode` gauge, and which TLS suites the XKS endpoint accepts (ChaCha20-Poly1305 is
//! not FIPS-approved, so the FIPS build refuses a client that offers only it), seen by openssl.

use std::process::Command;

use serde_json::{json, Value};

use crate::serve_common::start_demo;
use crate::serve_common::Xks;

const FIPS: bool = cfg!(feature = "fips");

fn profile_field(profile: &std::path::Path, field: &str) -> String {
    let text = std::fs::read_to_string(profile).unwrap();
    let t: toml::Value = toml::from_str(&text).unwrap();
    t[field].as_str().unwrap().to_string()
}

/// An openssl TLS 1.3 handshake with the XKS endpoint offering only `suite`: did it complete?
fn tls13_handshake(url: &str, ca: &std::path::Path, suite: &str) -> bool {
    let host = url.trim_start_matches("https://").trim_end_matches('/');
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            host,
            "-tls1_3",
            "-ciphersuites",
            suite,
            "-CAfile",
        ])
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains(&format!("Cipher is {suite}")) || text.contains(&format!("Cipher    : {suite}"))
}

#[test]
fn the_build_says_whether_it_is_fips_and_serves_only_what_it_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (_p, ready, line) = start_demo(&tmp.path().join("state"));
    let v: Value = serde_json::from_str(&line).unwrap();

    // GetHealthStatus: the model names the FIPS build.
    let xks = Xks::from(&ready);
    let (code, h) = xks.call(
        "health",
        &json!({"requestMetadata": {"kmsRequestId": "f", "kmsOperation": "KmsHealthCheck"}}),
    );
    assert_eq!(code, 200, "{h}");
    let model = h["xksProxyModel"].as_str().unwrap_or_default();
    assert_eq!(model.ends_with(" FIPS"), FIPS, "xksProxyModel {model:?}");

    // Encrypt and decrypt work either way (AES-256-GCM from ring or from the FIPS module).
    let key = &ready.key_ids[0];
    let (code, enc) = xks.encrypt(key, "SGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    assert_eq!(xks.decrypt(key, &enc).0, 200);

    // The gauge.
    let url = v["metrics_url"].as_str().expect("metrics_url");
    let p = &ready.admin_profile;
    let out = crate::tools::curl()
        .args(["-sS", "--fail", "--max-time", "20", "--cacert"])
        .arg(profile_field(p, "ca_cert"))
        .arg("--cert")
        .arg(profile_field(p, "client_cert"))
        .arg("--key")
        .arg(profile_field(p, "client_key"))
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("keyward_fips_mode {}\n", u8::from(FIPS));
    assert!(text.contains(&want), "no {want:?} in the metrics:\n{text}");

    // TLS: AES-256-GCM always; ChaCha20-Poly1305 only outside the FIPS build.
    assert!(tls13_handshake(
        &ready.url,
        &ready.ca_cert,
        "TLS_AES_256_GCM_SHA384"
    ));
    assert_eq!(
        tls13_handshake(&ready.url, &ready.ca_cert, "TLS_CHACHA20_POLY1305_SHA256"),
        !FIPS,
        "ChaCha20-Poly1305 accepted by the {} build",
        if FIPS { "FIPS" } else { "default" }
    );
}
