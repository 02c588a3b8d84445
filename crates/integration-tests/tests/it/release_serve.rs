//! `keyward serve` with `[master_key] source = "release"`, all real binaries over loopback: the
//! KRS (`keyward krs serve`, SoftHSMv2 token of its own) releases the master key to the
//! appliance (simulated SNP attester), which then serves XKS; encrypt/decrypt through
//! `curl --aws-sigv4`; restart and decrypt what was encrypted before. A KRS whose policy does
//! not allow the measurement keeps the appliance from ever serving, without a tight loop.

use crate::common;
use crate::serve_common;

use std::time::Duration;

use serve_common::*;

/// The `[master_key]` release section for `setup`'s appliance (its operator CA pinned); the
/// KRS must have been told to serve that CA ([`common::KrsFixture::trust_admin_ca`]).
fn release_section(f: &common::KrsFixture, setup: &ServeSetup, addr: &str, extra: &str) -> String {
    format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{addr}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\n{extra}\n",
        f.tls_pin,
        f.receipt_pin,
        common::ca_pin(&setup.ca)
    )
}

fn use_release(setup: &ServeSetup, section: &str) {
    // `release_section` already pins the set-up's operator CA (required with [admin]).
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let cfg = cfg.replace(
        "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
        section,
    );
    assert!(cfg.contains("source = \"release\""));
    std::fs::write(&setup.config, cfg).unwrap();
    std::fs::remove_file(setup.dir.path().join("master.key")).unwrap();
}

fn sign_demo_measurement_policy(f: &common::KrsFixture, version: u64, meas: [u8; 48]) {
    let text = common::policy_text_full(
        version,
        &[hex::encode(meas)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(version, &text, &f.policy_file);
}

#[test]
fn serve_releases_unseals_serves_and_restarts() {
    let Some(f) = common::KrsFixture::new("serve-release", "") else {
        return;
    };
    sign_demo_measurement_policy(&f, 2, keyward_attest::DEMO_MEASUREMENT);
    let setup = ServeSetup::new();
    f.trust_admin_ca("appliance", &setup.ca);
    let krs = f.serve();
    use_release(&setup, &release_section(&f, &setup, &krs.addr, ""));

    let (mut p, xks) = setup.start();
    let log = p.stderr_text();
    for phase in [
        "phase=attest",
        "phase=release",
        "phase=unseal",
        "phase=serve",
    ] {
        assert!(log.contains(phase), "{phase} missing:\n{log}");
    }
    let at = |s: &str| log.find(s).unwrap();
    assert!(at("phase=attest") < at("phase=release") && at("phase=release") < at("phase=unseal"));
    assert!(log.contains("released (receipt log index"), "{log}");

    create_open_key(&setup.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "cmVsZWFzZWQ=");
    assert_eq!(code, 200, "{enc}");
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "cmVsZWFzZWQ=");
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );

    // Restart: a new release of the same master key unseals the same store.
    let (mut p2, xks2) = setup.start();
    let (code, dec) = xks2.decrypt("k1", &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "cmVsZWFzZWQ=");
    p2.signal(libc::SIGTERM);
    assert_eq!(p2.wait_exit(Duration::from_secs(20)), Some(0));

    drop(krs);
    let releases = f
        .log_entries()
        .iter()
        .filter(|e| e["decision"] == "release")
        .count();
    assert_eq!(releases, 2);
    assert!(f.log_verify(&f.log_path()).0);
}

#[test]
fn serve_never_serves_without_a_release_and_does_not_spin_on_policy_deny() {
    let Some(f) = common::KrsFixture::new("serve-deny", "") else {
        return;
    };
    // The policy allows another measurement only.
    sign_demo_measurement_policy(&f, 2, [0x99; 48]);
    let setup = ServeSetup::new();
    f.trust_admin_ca("appliance", &setup.ca);
    let krs = f.serve();
    use_release(
        &setup,
        &release_section(
            &f,
            &setup,
            &krs.addr,
            "policy_deny_retry_secs = 2\nmax_attempts = 2\n",
        ),
    );
    let started = std::time::Instant::now();
    let mut p = Proc::spawn(
        &["serve", "--config", setup.config.to_str().unwrap()],
        setup.dir.path(),
    );
    let code = p.wait_exit(Duration::from_secs(60));
    let log = p.stderr_text();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        !log.contains("phase=unseal") && !log.contains("phase=serve"),
        "{log}"
    );
    assert!(log.contains("policy deny"), "{log}");
    assert!(log.contains("retrying in 2.0s"), "{log}");
    // Two attempts, 2 s apart (not a tight loop), then it gives up.
    assert!(started.elapsed() >= Duration::from_secs(2));
    let denies: Vec<_> = f
        .log_entries()
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert_eq!(denies.len(), 2);
    assert!(denies.iter().all(|e| e["reason"] == "measurement"));
}
