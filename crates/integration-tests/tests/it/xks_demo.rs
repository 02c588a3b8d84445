//! `keyward demo` as the real binary, seen from the XKS side: the printed curl command run
//! exactly as printed, its ciphertext decrypted through botocore's signer (independent of curl
//! and of our verifier), deep health, metadata, the 405/404/401 answers and the liveness path.

use crate::serve_common;
use crate::xks_common;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use serve_common::*;

#[test]
fn demo_serves_the_xks_api_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Our own start (not serve_common's `start_demo`): the ready line may gain fields over time;
    // this test reads the documented ones and ignores the rest.
    let mut p = Proc::spawn(
        &[
            "demo",
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        tmp.path(),
    );
    let line = p.stdout_line(Duration::from_secs(60));
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("bad ready line {line}: {e}\n{}", p.stderr_text()));
    let ready = Ready {
        url: v["url"].as_str().unwrap().into(),
        uri_prefix: v["uri_prefix"].as_str().unwrap().into(),
        region: v["region"].as_str().unwrap().into(),
        access_key_id: v["access_key_id"].as_str().unwrap().into(),
        secret_access_key: v["secret_access_key"].as_str().unwrap().into(),
        ca_cert: v["ca_cert"].as_str().unwrap().into(),
        key_ids: serde_json::from_value(v["key_ids"].clone()).unwrap(),
        admin_profile: v["admin_profile"].as_str().unwrap().into(),
        pid: v["pid"].as_u64().unwrap() as u32,
        attestation: v["attestation"].as_str().unwrap_or_default().into(),
        attestation_url: v["attestation_url"].as_str().unwrap_or_default().into(),
    };
    let xks = Xks::from(&ready);
    let key = &ready.key_ids[0];

    // 1. The printed curl command, exactly as printed.
    tools::need("curl", "curl");
    let curl = p.wait_stderr("curl -sS --aws-sigv4", Duration::from_secs(10));
    let out = Command::new("sh")
        .arg("-c")
        .arg(curl.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{curl}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    for f in [
        "ciphertext",
        "initializationVector",
        "authenticationTag",
        "ciphertextMetadata",
    ] {
        assert!(enc[f].is_string(), "{f} missing: {enc}");
    }
    // The printed body encrypts "Hello, keyward!"; curl decrypts it back.
    let (code, dec) = xks.decrypt(key, &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("SGVsbG8sIGtleXdhcmQh")),
        "{dec}"
    );

    // 2. botocore decrypts the same ciphertext (independent signer).
    {
        let py = xks_common::botocore_python();
        let body = json!({
            "requestMetadata": {"awsPrincipalArn": "arn:aws:iam::111122223333:user/boto", "kmsOperation": "Decrypt", "kmsRequestId": "demo-boto-1"},
            "ciphertext": enc["ciphertext"], "ciphertextMetadata": enc["ciphertextMetadata"],
            "initializationVector": enc["initializationVector"], "authenticationTag": enc["authenticationTag"],
            "encryptionAlgorithm": "AES_GCM",
        });
        let body_file = tmp.path().join("boto-body.json");
        std::fs::write(&body_file, body.to_string()).unwrap();
        let url = format!(
            "{}{}/kms/xks/v1/keys/{key}/decrypt",
            ready.url, ready.uri_prefix
        );
        let out = Command::new(py)
            .arg(xks_common::botocore_script())
            .args([
                "--url",
                &url,
                "--ak",
                &ready.access_key_id,
                "--sk",
                &ready.secret_access_key,
                "--region",
                &ready.region,
                "--cafile",
            ])
            .arg(&ready.ca_cert)
            .arg("--body-file")
            .arg(&body_file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (status, resp) = text.split_once('\n').unwrap_or((&text, ""));
        assert_eq!(
            status.trim(),
            "200",
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resp: Value = serde_json::from_str(resp).unwrap();
        assert_eq!(resp["plaintext"], "SGVsbG8sIGtleXdhcmQh");
    }

    // 3. Deep health and metadata.
    let (code, h) = xks.call(
        "health",
        &json!({"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "KmsHealthCheck"}}),
    );
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
    assert!(h["xksProxyModel"]
        .as_str()
        .unwrap()
        .contains(env!("CARGO_PKG_VERSION")));
    let (code, m) = xks.metadata(key);
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["keySpec"], "AES_256");
    assert_eq!(m["keyUsage"], json!(["ENCRYPT", "DECRYPT"]));

    // 4. GET -> 405 before authentication, unknown prefix -> 404, wrong secret -> 401, /ping.
    let plain = |method: &str, path: &str| {
        let out = tools::curl()
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "--cacert",
            ])
            .arg(&ready.ca_cert)
            .arg(format!("{}{path}", ready.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        plain("GET", &format!("{}/kms/xks/v1/health", ready.uri_prefix)),
        "405"
    );
    assert_eq!(plain("GET", "/ping"), "200");
    let mut other = xks.clone();
    other.uri_prefix = "/not-a-store".into();
    assert_eq!(
        other.call("health", &json!({})).1["errorName"],
        "InvalidUriPathException"
    );
    let mut wrong = xks.clone();
    wrong.secret = "A".repeat(44);
    let (code, e) = wrong.metadata(key);
    assert_eq!(
        (code, e["errorName"].as_str()),
        (401, Some("AuthenticationFailedException"))
    );

    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );
}
