//! `keyward admin` end to end against a real `keyward serve`: keys create/list/enable/disable/
//! grant/revoke/import, credentials add/remove with the old credential refused right after its
//! removal (no restart), kms-config JSON, refusals exiting non-zero with one line, the audit log
//! naming the admin, and the admin listener's mutual TLS refusing strangers.

use crate::serve_common;

use std::time::Duration;

use base64::Engine;
use serve_common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn admin_session_end_to_end() {
    let setup = ServeSetup::new();
    let (mut p, xks) = setup.start();
    let prof = setup.profile.as_path();

    // Create: deny by default, the grant command is printed.
    let out = admin_ok(prof, &["keys", "create", "orders-1"]);
    assert!(out.contains("NO grants"), "{out}");
    assert!(out.contains("keys grant orders-1"), "{out}");
    let (code, body) = xks.encrypt("orders-1", "aGVsbG8=");
    assert_eq!(
        (code, body["errorName"].as_str()),
        (403, Some("AccessDeniedException"))
    );

    // Grant opens it; metadata shows the truth.
    admin_ok(
        prof,
        &[
            "keys",
            "grant",
            "orders-1",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    let (code, enc) = xks.encrypt("orders-1", "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    let (code, md) = xks.metadata("orders-1");
    assert_eq!(code, 200);
    assert_eq!(md["keyStatus"], "ENABLED");

    // List: id, usage, status, version, grants, created; never key bytes.
    let list = admin_ok(prof, &["keys", "list"]);
    let row = list.lines().find(|l| l.starts_with("orders-1")).unwrap();
    assert!(
        row.contains("encrypt,decrypt")
            && row.contains("enabled")
            && row.contains("* -> encrypt,decrypt,metadata"),
        "{row}"
    );

    // Disable / enable, live at once.
    admin_ok(prof, &["keys", "disable", "orders-1"]);
    let (_, md) = xks.metadata("orders-1");
    assert_eq!(md["keyStatus"], "DISABLED");
    let (code, body) = xks.encrypt("orders-1", "aGVsbG8=");
    assert_eq!(
        (code, body["errorName"].as_str()),
        (400, Some("InvalidStateException"))
    );
    admin_ok(prof, &["keys", "enable", "orders-1"]);
    let (code, dec) = xks.decrypt("orders-1", &enc);
    assert_eq!((code, dec["plaintext"].as_str()), (200, Some("aGVsbG8=")));

    // Revoke only decrypt, then everything.
    admin_ok(
        prof,
        &[
            "keys",
            "revoke",
            "orders-1",
            "--principal",
            "*",
            "--ops",
            "decrypt",
        ],
    );
    assert_eq!(xks.decrypt("orders-1", &enc).0, 403);
    assert_eq!(xks.encrypt("orders-1", "aGVsbG8=").0, 200);
    admin_ok(prof, &["keys", "revoke", "orders-1", "--principal", "*"]);
    assert_eq!(xks.encrypt("orders-1", "aGVsbG8=").0, 403);

    // Import 32 raw bytes and use them; wrong sizes refused before anything is sent.
    let key_file = setup.dir.path().join("imported.key");
    std::fs::write(&key_file, [0x42u8; 32]).unwrap();
    admin_ok(
        prof,
        &[
            "keys",
            "import",
            "legacy-7",
            "--from-file",
            key_file.to_str().unwrap(),
            "--plaintext-key-material",
            "--usage",
            "encrypt",
        ],
    );
    admin_ok(
        prof,
        &[
            "keys",
            "grant",
            "legacy-7",
            "--principal",
            "arn:aws:iam::111122223333:user/*",
            "--ops",
            "encrypt,decrypt",
        ],
    );
    assert_eq!(xks.encrypt("legacy-7", "aGVsbG8=").0, 200);
    let (code, body) = xks.decrypt("legacy-7", &xks.encrypt("legacy-7", "aGVsbG8=").1);
    assert_eq!(
        (code, body["errorName"].as_str()),
        (400, Some("InvalidKeyUsageException"))
    );
    std::fs::write(&key_file, [0x42u8; 31]).unwrap();
    let out = admin(
        prof,
        &[
            "keys",
            "import",
            "short",
            "--from-file",
            key_file.to_str().unwrap(),
            "--plaintext-key-material",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("31 bytes"), "{}", stderr_of(&out));

    // Master-key versions: a key file is version 1, nothing to re-seal.
    let st: serde_json::Value =
        serde_json::from_str(admin_ok(prof, &["mk", "status"]).trim()).unwrap();
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&1.into(), &1.into()),
        "{st}"
    );
    let rs: serde_json::Value =
        serde_json::from_str(admin_ok(prof, &["mk", "reseal"]).trim()).unwrap();
    assert_eq!(rs["resealed"], false, "{rs}");

    // Refusals: exit non-zero, one line with the reason.
    for (args, why) in [
        (vec!["keys", "create", "orders-1"], "already exists"),
        (vec!["keys", "create", ".."], "key id"),
        (vec!["keys", "enable", "nope"], "unknown key"),
        (
            vec!["keys", "create", "x", "--store", "other"],
            "unknown key store",
        ),
    ] {
        let out = admin(prof, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    // Credentials: add (generated), the new one works, remove the old: refused at once.
    let out = admin_ok(prof, &["creds", "add"]);
    let new_id = out
        .lines()
        .find_map(|l| l.strip_prefix("added credential "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let new_secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret access key (shown once): "))
        .unwrap()
        .to_string();
    assert!((20..=30).contains(&new_id.len()));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&new_secret)
            .unwrap()
            .len(),
        32
    );
    let list = admin_ok(prof, &["creds", "list"]);
    assert!(list.contains(&new_id) && list.contains(AKID_1), "{list}");
    assert!(!list.contains(&new_secret) && !list.contains(SECRET_1));
    let new_xks = Xks {
        access_key_id: new_id.clone(),
        secret: new_secret.clone(),
        ..xks.clone()
    };
    assert_eq!(
        new_xks.metadata("legacy-7").0,
        403,
        "authenticated, but no metadata grant"
    );
    assert_eq!(new_xks.encrypt("legacy-7", "aGVsbG8=").0, 200);
    assert_eq!(
        xks.encrypt("legacy-7", "aGVsbG8=").0,
        200,
        "old credential still live"
    );
    admin_ok(prof, &["creds", "remove", AKID_1]);
    let (code, body) = xks.encrypt("legacy-7", "aGVsbG8=");
    assert_eq!(
        (code, body["errorName"].as_str()),
        (401, Some("AuthenticationFailedException"))
    );
    assert_eq!(new_xks.encrypt("legacy-7", "aGVsbG8=").0, 200);

    // kms-config: the JSON the KMS console accepts.
    let out = admin_ok(prof, &["kms-config", "main"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["XksProxyUriPath"], "/kw/kms/xks/v1");
    assert_eq!(
        v["XksProxyAuthenticationCredential"]["AccessKeyId"],
        new_id.as_str()
    );
    assert_eq!(
        v["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
        new_secret.as_str()
    );
    assert_eq!(v.as_object().unwrap().len(), 2);

    // Audit: admin lines name the certificate subject, never a secret or key bytes.
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    let admin_lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("CN=test-admin"))
        .collect();
    assert!(
        admin_lines.iter().any(|l| l.contains("orders-1")),
        "{audit}"
    );
    assert!(admin_lines.iter().any(|l| l.contains(&new_id)), "{audit}");
    assert!(
        admin_lines.iter().any(|l| l.contains("kms_config")),
        "{audit}"
    );
    assert!(
        admin_lines
            .iter()
            .any(|l| l.contains("refused") && l.contains("already exists")),
        "refusals are audited too: {audit}"
    );
    for secret in [new_secret.as_str(), SECRET_1, "QkJCQkJC"] {
        assert!(!audit.contains(secret), "secret in the audit log");
    }
}

#[test]
fn admin_listener_refuses_clients_without_an_operator_certificate() {
    let setup = ServeSetup::new();
    let (_p, _xks) = setup.start();
    let addr = setup.admin_addr();
    let d = setup.dir.path();

    // Positive control with curl: the operator's certificate gets in.
    let ok = tools::curl()
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            "ca.pem",
            "--cert",
            "admin.pem",
            "--key",
            "admin-key.pem",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"op":"stores"}"#,
        ])
        .arg(format!("https://{addr}/admin/v1"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("\"ok\":true"),
        "{}",
        stderr_of(&ok)
    );

    // No client certificate: the handshake is refused, nothing answered.
    let none = tools::curl()
        .args(["-sS", "--max-time", "10", "--cacert", "ca.pem"])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"op":"stores"}"#,
        ])
        .arg(format!("https://{addr}/admin/v1"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        !none.status.success(),
        "accepted without a client certificate"
    );
    assert!(!String::from_utf8_lossy(&none.stdout).contains("ok"));

    // A certificate from another CA, and an expired one from the right CA: refused.
    let other = keyward_admin::Ca::new("someone else's CA").unwrap();
    let stranger = other.client("test-admin", 30).unwrap();
    let expired = setup.ca_obj.client("test-admin", -1).unwrap();
    for (name, cert) in [("stranger", stranger), ("expired", expired)] {
        std::fs::write(d.join(format!("{name}.pem")), &cert.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}-key.pem")), cert.key_pem.as_bytes()).unwrap();
        let prof = d.join(format!("{name}.toml"));
        setup.write_profile(
            &prof,
            &addr,
            &format!("{name}.pem"),
            &format!("{name}-key.pem"),
        );
        let out = admin(&prof, &["keys", "list"]);
        assert!(!out.status.success(), "{name} certificate accepted");
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{name}");
    }
    // And the XKS port never answers the admin API.
    let (code, _) = _xks.call("../../../admin/v1", &serde_json::json!({"op": "stores"}));
    assert_ne!(code, 200);
}

/// `creds add` output: (access key id, secret).
fn added_credential(out: &str) -> (String, String) {
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("added credential "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret access key (shown once): "))
        .unwrap()
        .to_string();
    (id, secret)
}

#[test]
fn stores_created_at_run_time_serve_at_once() {
    let setup = ServeSetup::new();
    let (mut p, xks) = setup.start();
    let prof = setup.profile.as_path();

    // `stores` alone still lists (the old op), as does `stores list`.
    for args in [vec!["stores"], vec!["stores", "list"]] {
        let out = admin_ok(prof, &args);
        assert!(out.lines().any(|l| l.starts_with("main ")), "{out}");
    }

    // Create a store: live at once, no restart.
    let out = admin_ok(
        prof,
        &[
            "stores",
            "create",
            "--name",
            "pay",
            "--uri-prefix",
            "/pay",
            "--region",
            "eu-west-1",
        ],
    );
    assert!(out.contains("created key store pay"), "{out}");
    assert!(out.contains("/pay/kms/xks/v1"), "{out}");
    let list = admin_ok(prof, &["stores", "list"]);
    let row = list.lines().find(|l| l.starts_with("pay ")).unwrap();
    assert!(row.contains("/pay") && row.contains("eu-west-1"), "{row}");

    // Refusals name the field, on one line.
    for (args, why) in [
        (
            vec![
                "--name",
                "pay",
                "--uri-prefix",
                "/p2",
                "--region",
                "us-east-1",
            ],
            "already exists",
        ),
        (
            vec![
                "--name",
                "p2",
                "--uri-prefix",
                "/kw",
                "--region",
                "us-east-1",
            ],
            "uri prefix \"/kw\" is already used by key store \"main\"",
        ),
        (
            vec![
                "--name",
                "p2",
                "--uri-prefix",
                "p2/",
                "--region",
                "us-east-1",
            ],
            "invalid uri prefix",
        ),
        (
            vec![
                "--name",
                "p 2",
                "--uri-prefix",
                "/p2",
                "--region",
                "us-east-1",
            ],
            "invalid key store name",
        ),
        (
            vec!["--name", "p2", "--uri-prefix", "/p2", "--region", "US East"],
            "invalid region",
        ),
    ] {
        let out = admin(prof, &[&["stores", "create"][..], &args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    // Key, grant, credential in the new store: a SigV4 request to its prefix works.
    admin_ok(prof, &["keys", "create", "k1", "--store", "pay"]);
    admin_ok(
        prof,
        &[
            "keys",
            "grant",
            "k1",
            "--store",
            "pay",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt,metadata",
        ],
    );
    let (id, secret) = added_credential(&admin_ok(prof, &["creds", "add", "--store", "pay"]));
    let pay = Xks {
        uri_prefix: "/pay".into(),
        region: "eu-west-1".into(),
        access_key_id: id,
        secret,
        ..xks.clone()
    };
    let (code, enc) = pay.encrypt("k1", "aGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    // The other store's credential does not open it.
    let main_cred_on_pay = Xks {
        access_key_id: xks.access_key_id.clone(),
        secret: xks.secret.clone(),
        ..pay.clone()
    };
    assert_eq!(main_cred_on_pay.encrypt("k1", "aGVsbG8=").0, 401);

    // Remove: refused while it holds keys, then with --force its prefix is the spec's 404.
    let out = admin(prof, &["stores", "remove", "--name", "pay"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("force"), "{}", stderr_of(&out));
    assert_eq!(pay.encrypt("k1", "aGVsbG8=").0, 200);
    let out = admin_ok(prof, &["stores", "remove", "--name", "pay", "--force"]);
    assert!(out.contains("1 key(s) destroyed"), "{out}");
    let (code, body) = pay.encrypt("k1", "aGVsbG8=");
    assert_eq!(
        (code, body["errorName"].as_str()),
        (404, Some("InvalidUriPathException"))
    );
    assert!(!admin_ok(prof, &["stores"]).contains("pay "));

    // A store created at run time survives a restart; a store from the file removed only
    // through the admin API comes back at the next start (like file credentials).
    admin_ok(
        prof,
        &[
            "stores",
            "create",
            "--name",
            "keep",
            "--uri-prefix",
            "/keep",
            "--region",
            "us-east-1",
        ],
    );
    admin_ok(prof, &["keys", "create", "k2", "--store", "keep"]);
    admin_ok(
        prof,
        &[
            "keys",
            "grant",
            "k2",
            "--store",
            "keep",
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt",
        ],
    );
    let (id, secret) = added_credential(&admin_ok(prof, &["creds", "add", "--store", "keep"]));
    admin_ok(prof, &["stores", "remove", "--name", "main"]);
    assert_eq!(
        xks.encrypt("k1", "aGVsbG8=").1["errorName"],
        "InvalidUriPathException"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let (mut p, xks) = setup.start();
    let keep = Xks {
        uri_prefix: "/keep".into(),
        access_key_id: id,
        secret,
        ..xks.clone()
    };
    assert_eq!(keep.encrypt("k2", "aGVsbG8=").0, 200);
    let list = admin_ok(&setup.profile, &["stores"]);
    assert!(list.contains("keep ") && list.contains("main "), "{list}");
    // `main` is back from the file, with its file credential (and no keys).
    let (code, body) = xks.encrypt("k1", "aGVsbG8=");
    assert_eq!(
        (code, body["errorName"].as_str()),
        (404, Some("KeyNotFoundException"))
    );
    // A store created at run time on the prefix of a file store removed through the admin API
    // keeps it: at the next start the file's store is not created, and the log says why.
    admin_ok(&setup.profile, &["stores", "remove", "--name", "main"]);
    admin_ok(
        &setup.profile,
        &[
            "stores",
            "create",
            "--name",
            "squat",
            "--uri-prefix",
            "/kw",
            "--region",
            "us-east-1",
        ],
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let (mut p, _xks) = setup.start();
    let line = p.wait_stderr("is NOT created", Duration::from_secs(5));
    assert!(line.contains("main") && line.contains("squat"), "{line}");
    let list = admin_ok(&setup.profile, &["stores"]);
    assert!(list.contains("squat ") && !list.contains("main "), "{list}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("stores_create") && audit.contains("stores_remove"));
}
