//! Operator roles on the admin API against a real `keyward serve`: a viewer certificate (SAN URI
//! `keyward:role:viewer`, issued by `keyward admin cert issue --role viewer`) lists stores, keys
//! and credential ids and reads `tls show`, but every write and the secret-revealing
//! `kms-config` are refused (exit 1, one `forbidden` line, an audit line naming the viewer); an
//! admin certificate does everything; a certificate without a claim is admin by default and a
//! viewer with `[admin] unclaimed_role = "viewer"`; an unknown role claim is refused everything.

use crate::serve_common;

use std::path::Path;
use std::time::Duration;

use serve_common::*;

fn issue(setup: &ServeSetup, name: &str, role: &str) -> std::path::PathBuf {
    let d = setup.dir.path();
    let ca_key = d.join("ca-key.pem");
    keyward_admin::write_file(&ca_key, setup.ca_obj.key_pem().as_bytes(), true).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["admin", "cert", "issue", "--ca-cert"])
        .arg(&setup.ca)
        .arg("--ca-key")
        .arg(&ca_key)
        .args(["--name", name, "--role", role, "--days", "2", "--out"])
        .arg(d.join(format!("{name}.pem")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("keyward:role:{role}")), "{text}");
    let prof = d.join(format!("{name}.toml"));
    setup.write_profile(
        &prof,
        &setup.admin_addr(),
        &format!("{name}.pem"),
        &format!("{name}-key.pem"),
    );
    prof
}

fn refused(prof: &Path, args: &[&str]) -> String {
    let out = admin(prof, args);
    assert_eq!(out.status.code(), Some(1), "{args:?} was not refused");
    assert!(out.stdout.is_empty(), "{args:?} printed something");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn viewer_reads_admin_writes() {
    let setup = ServeSetup::new();
    let (mut p, _xks) = setup.start();
    let viewer = issue(&setup, "vera", "viewer");
    let adm = issue(&setup, "ada", "admin");

    // The admin certificate does everything, kms-config included.
    create_open_key(&adm, "k1");
    let kms = admin_ok(&adm, &["kms-config", "main"]);
    assert!(kms.contains(SECRET_1), "{kms}");

    // The viewer reads: stores, keys, credential ids (never a secret).
    assert!(admin_ok(&viewer, &["stores"]).contains("main"));
    assert!(admin_ok(&viewer, &["keys", "list"]).contains("k1"));
    let creds = admin_ok(&viewer, &["creds", "list"]);
    assert!(
        creds.contains(AKID_1) && !creds.contains(SECRET_1),
        "{creds}"
    );

    // ... and is refused kms-config and every write, with one line naming the role.
    let err = refused(&viewer, &["kms-config", "main"]);
    assert!(
        err.contains("forbidden") && err.contains("role is viewer") && err.contains("kms_config"),
        "{err}"
    );
    assert!(!err.contains(SECRET_1));
    for args in [
        &["keys", "create", "k2"][..],
        &["keys", "disable", "k1"],
        &[
            "keys",
            "grant",
            "k1",
            "--principal",
            "x",
            "--ops",
            "decrypt",
        ],
        &["keys", "revoke", "k1", "--principal", "*"],
        &["creds", "add"],
        &["creds", "remove", AKID_1],
        &[
            "stores",
            "create",
            "--name",
            "s2",
            "--uri-prefix",
            "/s2",
            "--region",
            "us-east-1",
        ],
        &["stores", "remove", "--name", "main", "--force"],
        &["tls", "csr", "--dns-name", "a.example"],
    ] {
        let err = refused(&viewer, args);
        assert!(err.contains("forbidden"), "{args:?}: {err}");
    }
    // Nothing changed: k1 is still enabled and open, the credential still there.
    let keys = admin_ok(&adm, &["keys", "list"]);
    assert!(keys.contains("enabled") && !keys.contains("k2"), "{keys}");
    assert!(admin_ok(&adm, &["creds", "list"]).contains(AKID_1));

    // The audit log names the viewer's refusals.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("CN=vera") && l.contains("kms_config"))
        .unwrap_or_else(|| panic!("no audit line for the viewer's kms-config:\n{audit}"));
    assert!(
        line.contains("forbidden") && line.contains("\"decision\":\"error\""),
        "{line}"
    );
    assert!(!line.contains(SECRET_1));
    assert!(audit
        .lines()
        .any(|l| l.contains("CN=vera") && l.contains("keys_create") && l.contains("forbidden")));
}

#[test]
fn unclaimed_certificates_and_unknown_roles() {
    let setup = ServeSetup::new();
    // An unknown role claim, made directly with the CA (the CLI only issues known roles).
    let d = setup.dir.path();
    {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "root-wannabe");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from("keyward:role:root").unwrap(),
        )];
        let ca_key = rcgen::KeyPair::from_pem(&setup.ca_obj.key_pem()).unwrap();
        let ca_params =
            rcgen::CertificateParams::from_ca_cert_pem(&setup.ca_obj.cert_pem()).unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(d.join("root.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("root-key.pem"), key.serialize_pem()).unwrap();
    }
    let (p, _xks) = setup.start();
    // The set-up's admin certificate has no claim: admin by default (backward compatible).
    assert!(admin_ok(&setup.profile, &["kms-config", "main"]).contains(SECRET_1));
    let root = d.join("root.toml");
    setup.write_profile(&root, &setup.admin_addr(), "root.pem", "root-key.pem");
    let err = refused(&root, &["stores"]);
    assert!(err.contains("unknown role"), "{err}");
    drop(p);

    // With unclaimed_role = "viewer", the same unclaimed certificate only reads.
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        cfg.replace(
            "client_ca_file = \"ca.pem\"\n",
            "client_ca_file = \"ca.pem\"\nunclaimed_role = \"viewer\"\n",
        ),
    )
    .unwrap();
    let (_p, _xks) = setup.start();
    assert!(admin_ok(&setup.profile, &["stores"]).contains("main"));
    let err = refused(&setup.profile, &["kms-config", "main"]);
    assert!(err.contains("role is viewer"), "{err}");

    // A bad value is a config error naming the field.
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        cfg.replace("unclaimed_role = \"viewer\"", "unclaimed_role = \"root\""),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("admin.unclaimed_role"), "{text}");
}
