//! `keyward serve` on a configuration with the earlier product's `[aws_xks_config]` section:
//! requests signed with KMS's real service name `kms-xks-proxy` and with the configured legacy
//! name `xks-kms` both work, a warning names the right value, and the earlier docs' 40-character
//! sample secret still lets the file load (the credential is not used; the log says why).

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
fn legacy_sample_secret_loads_and_the_log_says_it_is_not_usable() {
    let setup = ServeSetup::with_stores(&legacy("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"));
    let (mut p, _xks) = setup.start();
    let line = p.wait_stderr(
        "aws_xks_config.aws_xks_sigv4_secret_access_key",
        Duration::from_secs(5),
    );
    assert!(line.contains("43-64"), "{line}");
    assert!(
        !p.stderr_text().contains("wJalrXUtnFEMI"),
        "secret in the log"
    );
    p.wait_stderr(
        "AKIAIOSFODNN7EXAMPLE from the configuration is NOT used",
        Duration::from_secs(5),
    );
    // The admin API is up: an operator can add a KMS-valid credential without a restart.
    let out = admin_ok(&setup.profile, &["creds", "add"]);
    assert!(out.contains("added credential"), "{out}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}
