//! `keyward admin trust`: the first admin contact pins the appliance's TLS key only after live
//! attestation bound to that key verifies. Against a real `keyward serve` (appliance-managed TLS
//! key, master key released by a real `keyward krs serve` over SoftHSMv2 to the simulated SNP
//! attester, `[attestation] listen`): a man in the middle serving another key at the admin
//! address is refused (exit 1, one line, no pin written), so is evidence that does not meet the
//! policy; the genuine endpoint gets its pin written into the profile, which then works.

use crate::common;
use crate::serve_common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serve_common::*;

/// A TLS endpoint with a key of its own (what a relay in front of the appliance would serve).
fn mitm_endpoint(rt: &tokio::runtime::Runtime) -> u16 {
    let ca = keyward_admin::Ca::new("mitm").unwrap();
    let leaf = ca.server(&["127.0.0.1"], 1).unwrap();
    let cert = rustls_pemfile::certs(&mut leaf.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(tcp).await;
            });
        }
    });
    port
}

fn trust(profile: &Path, extra: &[&str], att: &str, policy: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["admin", "--profile"])
        .arg(profile)
        .args(["trust", "--attestation-url", att, "--policy"])
        .arg(policy)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn trust_pins_only_the_attested_key() {
    let Some(f) = common::KrsFixture::new("admin-trust", "") else {
        return;
    };
    let text = common::policy_text_full(
        2,
        &[hex::encode(keyward_attest::DEMO_MEASUREMENT)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    let setup = ServeSetup::new();
    let d = setup.dir.path();
    // The appliance-managed TLS key on both listeners, a released master key, live attestation.
    let ca_der = rustls_pemfile::certs(&mut std::fs::read(&setup.ca).unwrap().as_slice())
        .next()
        .unwrap()
        .unwrap();
    use sha2::Digest;
    let admin_ca = hex::encode(sha2::Sha256::digest(ca_der.as_ref()));
    // The KRS serves this appliance's deployment (its operator CA).
    f.add_deployment("appliance", &format!("admin_ca_sha256 = \"{admin_ca}\""));
    let krs = f.serve();
    let cfg = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("tls_cert_chain_file = \"server.pem\"\n", "")
        .replace("tls_key_file = \"server-key.pem\"\n", "")
        .replace(
            "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
            &format!(
                "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{admin_ca}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\n\n[attestation]\nlisten = \"127.0.0.1:0\"\n",
                krs.addr, f.tls_pin, f.receipt_pin
            ),
        );
    assert!(cfg.contains("source = \"release\"") && !cfg.contains("tls_key_file"));
    std::fs::write(&setup.config, cfg).unwrap();
    let (mut p, xks) = setup.start();
    let line = p.wait_stderr("xks tls key spki_sha256=", Duration::from_secs(10));
    let logged: String = line[line.find("spki_sha256=").unwrap() + 12..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let line = p.wait_stderr("live attestation on http://", Duration::from_secs(20));
    let att: String = line[line.find("http://").unwrap()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    let policy = d.join("verify-policy.toml");
    std::fs::write(&policy, &text).unwrap();

    // A first-contact profile: where and who, no server trust yet; unusable as it is.
    let first = d.join("first.toml");
    let profile_text = format!(
        "# operator alice\nurl = \"https://{}\"\nclient_cert = \"admin.pem\"\nclient_key = \"admin-key.pem\"\n",
        setup.admin_addr()
    );
    std::fs::write(&first, &profile_text).unwrap();
    let out = admin(&first, &["stores"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyward admin trust"));

    // A man in the middle at the admin address, with its own key: the evidence (fetched from
    // the genuine attestation listener) names the appliance's key, not this one. Refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mitm = mitm_endpoint(&rt);
    let mitm_url = format!("https://127.0.0.1:{mitm}");
    let (code, stdout, err) = trust(&first, &["--url", &mitm_url], &att, &policy);
    assert_eq!(code, 1, "{stdout}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("refused") && err.contains("not bound to the TLS key"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&first).unwrap(), profile_text);

    // Evidence the policy does not accept (another measurement): refused, nothing written.
    let other = d.join("other-policy.toml");
    std::fs::write(
        &other,
        common::policy_text_full(
            2,
            &["ab".repeat(48)],
            &keyward_verify::testsign::test_root_policy_toml(),
        ),
    )
    .unwrap();
    let (code, stdout, err) = trust(&first, &[], &att, &other);
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(err.contains("does not verify"), "{err}");
    assert_eq!(std::fs::read_to_string(&first).unwrap(), profile_text);

    // The genuine endpoint: verified, pinned, and the profile works from now on.
    let (code, stdout, err) = trust(&first, &[], &att, &policy);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("snp.report_data"), "{stdout}");
    assert!(err.contains(&format!("spki_sha256={logged}")), "{err}");
    let pinned = std::fs::read_to_string(&first).unwrap();
    assert!(
        pinned.contains(&format!("server_spki_sha256 = \"{logged}\"")),
        "{pinned}"
    );
    assert!(pinned.starts_with("# operator alice\n"), "{pinned}");
    assert!(admin_ok(&first, &["tls", "show"]).contains(&logged));
    assert!(admin_ok(&first, &["stores"]).contains("main"));

    // The live evidence also binds the key that signs this boot's audit checkpoints:
    // `keyward verify --url` passes the binding checks with it and names the key the
    // appliance logged at start (what `keyward audit verify --key` pins).
    let line = p.wait_stderr(
        "audit log checkpoints are signed by this boot's key ",
        Duration::from_secs(5),
    );
    let audit_key: String = line[line.find("boot's key ").unwrap() + 11..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    assert!(audit_key.len() >= 66, "{line}");
    let out = std::process::Command::new(BIN)
        .args(["verify", "--url", &att, "--xks-url", &xks.url, "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("binds the audit checkpoint key {audit_key}")),
        "{err}"
    );

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    drop(krs);
}
