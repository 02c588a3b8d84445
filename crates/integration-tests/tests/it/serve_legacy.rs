//! `keyward serve` on a configuration with the earlier product's `[aws_xks_config]` section:
//! requests signed with KMS's real service name `kms-xks-proxy` and with the configured legacy
//! name `xks-kms` both work, a warning names the right value, and the earlier docs' 40-character
//! sample secret is installed (a warning at every start says KMS will refuse it) and signs
//! requests; docs/configuration.md's snippet plus the sections it says a file needs serves signed requests.

use crate::serve_common;

use std::time::Duration;

use serve_common::*;

fn legacy(secret: &str) -> String {
    format!(
        r#"[aws_xks_config]
aws_xks_enable = true
aws_xks_region = "us-east-1"
aws_xks_service = "xks-kms"
aws_xks_sigv4_access_key_id = "AKIAIOSFODNN7EXAMPLE"
aws_xks_sigv4_secret_access_key = "{secret}"
"#
    )
}

#[test]
fn legacy_section_serves_both_service_names() {
    let setup = ServeSetup::with_stores(&legacy(SECRET_1));
    let (mut p, xks) = setup.start();
    let warning = p.wait_stderr("aws_xks_config.aws_xks_service", Duration::from_secs(5));
    assert!(
        warning.contains("WARN") && warning.contains("kms-xks-proxy"),
        "{warning}"
    );

    create_open_key(&setup.profile, "k1");
    let kms = Xks {
        uri_prefix: String::new(),
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        ..xks
    };
    let (code, enc) = kms.encrypt("k1", "aGVsbG8=");
    assert_eq!(code, 200, "kms-xks-proxy: {enc}");
    let old = Xks {
        service: "xks-kms".into(),
        ..kms.clone()
    };
    let (code, dec) = old.decrypt("k1", &enc);
    assert_eq!(code, 200, "xks-kms: {dec}");
    assert_eq!(dec["plaintext"], "aGVsbG8=");
    let other = Xks {
        service: "kms".into(),
        ..kms
    };
    assert_eq!(
        other.metadata("k1").0,
        401,
        "an unconfigured service name is refused"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn legacy_sample_secret_is_installed_with_a_loud_warning_and_serves() {
    let sample = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let setup = ServeSetup::with_stores(&legacy(sample));
    let (mut p, xks) = setup.start();
    let line = p.wait_stderr(
        "aws_xks_config.aws_xks_sigv4_secret_access_key",
        Duration::from_secs(5),
    );
    assert!(line.contains("43-64"), "{line}");
    let warning = p.wait_stderr("AWS KMS WILL REFUSE ITS SECRET", Duration::from_secs(5));
    assert!(
        warning.contains("WARN") && warning.contains("AKIAIOSFODNN7EXAMPLE"),
        "{warning}"
    );
    // Requests signed with the sample credential are served.
    create_open_key(&setup.profile, "k1");
    let kms = Xks {
        uri_prefix: String::new(),
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: sample.into(),
        ..xks
    };
    let (code, enc) = kms.encrypt("k1", "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    let (code, dec) = kms.decrypt("k1", &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "aGVsbG8=");
    let wrong = Xks {
        secret: format!("{sample}x"),
        ..kms
    };
    assert_eq!(wrong.metadata("k1").0, 401, "another secret is refused");
    assert!(
        !p.stderr_text().contains("wJalrXUtnFEMI"),
        "secret in the log"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    // The warning comes again at the next start (the credential is kept in the sealed store).
    let (mut p, _) = setup.start();
    p.wait_stderr("AWS KMS WILL REFUSE ITS SECRET", Duration::from_secs(5));
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn a_secret_too_short_even_outside_kms_is_not_used_and_the_log_says_why() {
    let setup = ServeSetup::with_stores(&legacy("shortsecret"));
    let (mut p, _xks) = setup.start();
    p.wait_stderr(
        "AKIAIOSFODNN7EXAMPLE from the configuration is NOT used",
        Duration::from_secs(5),
    );
    assert!(
        !p.stderr_text().contains("shortsecret"),
        "secret in the log"
    );
    // The admin API is up: an operator can add a KMS-valid credential without a restart.
    let out = admin_ok(&setup.profile, &["creds", "add"]);
    assert!(out.contains("added credential"), "{out}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

/// The `toml` blocks of docs/configuration.md's `[aws_xks_config]` paragraph: the section, then the rest.
fn readme_blocks() -> (String, String) {
    let readme =
        std::fs::read_to_string(keyward_integration_tests::repo().join("docs/configuration.md"))
            .unwrap();
    let start = readme
        .find("**Compatibility: `[aws_xks_config]`.**")
        .expect("docs/configuration.md has the [aws_xks_config] paragraph");
    let mut blocks = readme[start..].split("```toml\n").skip(1).map(|b| {
        b.split_once("```")
            .expect("a closed toml block")
            .0
            .to_string()
    });
    (blocks.next().unwrap(), blocks.next().unwrap())
}

#[test]
fn the_readme_snippet_and_what_it_says_a_file_needs_serve_signed_requests() {
    use keyward_admin::{write_file, Ca};
    let (section, rest) = readme_blocks();
    assert!(section.contains("[aws_xks_config]") && !section.contains("[xks]"));
    assert!(rest.contains("[xks]") && rest.contains("[master_key]"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The files the documented blocks name.
    let ca = Ca::new("test CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"], 30).unwrap();
    write_file(&d.join("ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
    write_file(&d.join("xks-chain.pem"), server.cert_pem.as_bytes(), false).unwrap();
    write_file(&d.join("xks-key.pem"), server.key_pem.as_bytes(), true).unwrap();
    write_file(&d.join("master.key"), &rand32(), true).unwrap();
    // Only the port changes (443 needs root, and may be taken).
    let listen = "listen = \"0.0.0.0:443\"";
    assert!(rest.contains(listen), "{rest}");
    let text = format!(
        "{section}\n{}",
        rest.replace(listen, "listen = \"127.0.0.1:0\"")
    );
    let config = d.join("keyward.toml");
    std::fs::write(&config, &text).unwrap();

    // config check: the only error is the sample secret, so nothing else is missing.
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[0].contains("aws_xks_config.aws_xks_sigv4_secret_access_key"),
        "{report}"
    );

    // serve: the sample credential signs GetHealthStatus, with both service names. Memory
    // locking is relaxed only so the test runs where RLIMIT_MEMLOCK is small (not part of what
    // the file needs).
    std::fs::write(
        &config,
        format!("{text}\n[memory]\nallow_unlocked_memory = true\n"),
    )
    .unwrap();
    let mut p = Proc::spawn(&["serve", "--config", config.to_str().unwrap()], d);
    let line = p.wait_stderr("XKS API on ", Duration::from_secs(60));
    p.wait_stderr("AWS KMS WILL REFUSE ITS SECRET", Duration::from_secs(5));
    let xks = Xks {
        url: format!("https://{}", addr_after(&line, "XKS API on ")),
        uri_prefix: String::new(),
        region: "us-east-1".into(),
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        ca: d.join("ca.pem"),
        service: "kms-xks-proxy".into(),
    };
    let health = serde_json::json!({
        "requestMetadata": {"kmsRequestId": "readme-1", "kmsOperation": "KmsHealthCheck"}
    });
    for service in ["kms-xks-proxy", "xks-kms"] {
        let x = Xks {
            service: service.into(),
            ..xks.clone()
        };
        let (code, body) = x.call("health", &health);
        assert_eq!(code, 200, "{service}: {body}\n{}", p.stderr_text());
        assert_eq!(
            body["ekmFleetDetails"][0]["healthStatus"], "ACTIVE",
            "{body}"
        );
    }
    let wrong = Xks {
        secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEx".into(),
        ..xks
    };
    assert_eq!(wrong.call("health", &health).0, 401);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}
