//! `keyward demo` as the real binary: the one JSON line with exactly the documented fields, the
//! printed curl, admin and verify commands working as printed through `sh -c` (the last two
//! from `/`, with no `keyward` on PATH), a restart on the same state
//! directory decrypting what was encrypted before, and SIGTERM exiting 0.

use crate::serve_common;

use std::process::Command;
use std::time::Duration;

use serve_common::*;

#[test]
fn demo_prints_the_ready_line_and_a_curl_command_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (mut p, ready, line) = start_demo(&state);

    // Every documented field; later issues may add only their documented fields
    // (`attestation`, `attestation_url`, `audit_log`, `metrics_url`).
    let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
    for k in [
        "access_key_id",
        "admin_profile",
        "ca_cert",
        "key_ids",
        "pid",
        "region",
        "secret_access_key",
        "uri_prefix",
        "url",
        "audit_log",
        "metrics_url",
    ] {
        assert!(raw.contains_key(k), "{k} missing from {line}");
    }
    // The audit log it names is a verifiable chain (issue 15: `keyward audit verify`).
    let audit_log = raw["audit_log"].as_str().unwrap().to_string();
    let out = Command::new(keyward_integration_tests::keyward_bin_str())
        .args(["audit", "verify", &audit_log])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK: "),
        "keyward audit verify {audit_log}: {out:?}"
    );
    for k in raw.keys() {
        assert!(
            !k.starts_with("attestation") || k == "attestation" || k == "attestation_url",
            "{k}"
        );
    }
    assert_eq!(
        raw.len(),
        11 + raw.keys().filter(|k| k.starts_with("attestation")).count(),
        "{line}"
    );
    assert!(ready.url.starts_with("https://127.0.0.1:"), "{}", ready.url);
    assert_eq!(
        ready.url.matches('/').count(),
        2,
        "url is scheme, host and port only"
    );
    assert_eq!(ready.uri_prefix, "/keyward");
    assert_eq!(ready.attestation, "simulated");
    // The master key came through the embedded KRS: its phases are in the log.
    let log = p.stderr_text();
    assert!(
        log.contains("phase=attest") && log.contains("released (receipt log index"),
        "{log}"
    );
    assert_eq!(ready.region, "us-east-1");
    assert_eq!(ready.pid, p.child.id());
    assert!(ready.ca_cert.is_absolute() && ready.ca_cert.is_file());
    assert!(ready.admin_profile.is_absolute() && ready.admin_profile.is_file());
    assert_eq!(ready.key_ids.len(), 1);
    // KMS's credential formats.
    let akid = &ready.access_key_id;
    assert!((20..=30).contains(&akid.len()), "{akid}");
    assert!(akid
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    let sk = &ready.secret_access_key;
    assert!((43..=64).contains(&sk.len()));
    assert!(sk
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/+=".contains(&b)));

    // The printed curl command, run as printed.
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
    let resp: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(resp["ciphertext"].is_string(), "{resp}");
    assert!(resp["authenticationTag"].is_string(), "{resp}");

    // The key really works both ways, and the admin profile works.
    let xks = Xks::from(&ready);
    let (code, enc) = xks.encrypt(&ready.key_ids[0], "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    let (code, dec) = xks.decrypt(&ready.key_ids[0], &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "aGVsbG8=");
    let list = admin_ok(&ready.admin_profile, &["keys", "list"]);
    assert!(
        list.contains(&ready.key_ids[0]) && list.contains("* -> encrypt,decrypt,metadata"),
        "{list}"
    );

    // The printed admin and verify commands, run as printed from another directory with no
    // `keyward` on PATH: they name the running binary by its real path.
    for needle in ["  admin:         ", "verify --url "] {
        let printed = p.wait_stderr(needle, Duration::from_secs(10));
        let cmd = printed.trim().trim_start_matches("admin:").trim();
        assert!(
            cmd.starts_with(keyward_integration_tests::keyward_bin_str()),
            "{cmd} does not start with the binary's path"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir("/")
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // SIGTERM: clean exit 0.
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn demo_restart_on_the_same_state_dir_decrypts_earlier_ciphertexts() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (mut p, first, _) = start_demo(&state);
    let xks = Xks::from(&first);
    let (code, enc) = xks.encrypt(&first.key_ids[0], "cmVzdGFydCBtZQ==");
    assert_eq!(code, 200, "{enc}");
    p.signal(libc::SIGINT);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );

    let (mut p2, second, _) = start_demo(&state);
    assert_eq!(second.access_key_id, first.access_key_id);
    assert_eq!(second.secret_access_key, first.secret_access_key);
    assert_eq!(second.key_ids, first.key_ids);
    assert_eq!(second.ca_cert, first.ca_cert);
    let xks2 = Xks::from(&second);
    let (code, dec) = xks2.decrypt(&second.key_ids[0], &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "cmVzdGFydCBtZQ==");
    // The embedded KRS kept the store head across the restart (state/krs/heads.json): the
    // second boot's release receipt carried it as the floor.
    let log = p2.stderr_text();
    assert!(log.contains("store head at the KRS: seq"), "{log}");
    let heads = std::fs::read_to_string(state.join("krs").join("heads.json")).unwrap();
    assert!(
        heads.contains("\"demo\"") && heads.contains("chain_mac"),
        "{heads}"
    );
    p2.signal(libc::SIGTERM);
    assert_eq!(p2.wait_exit(Duration::from_secs(20)), Some(0));
}
