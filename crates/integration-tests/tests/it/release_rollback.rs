//! The sealed key store cannot be rolled back behind the KRS's back (issue 12 §2), end to end:
//! the real `keyward krs serve` (SoftHSMv2) releases to `keyward serve` (simulated SNP), which
//! anchors every admin write's store head at the KRS through its per-boot key.
//!
//! Replayed: restore an older copy of the whole store directory after `keys disable` (the
//! kill switch), delete the last record, swap in another appliance's store: each next boot is
//! refused at `phase=unseal`, exits non-zero and serves nothing; the newest store still boots
//! with the key disabled. An admin write while the KRS is down fails with a clear message and
//! changes nothing, while XKS keeps answering.

use crate::common;
use crate::serve_common;

use std::path::Path;
use std::time::Duration;

use serve_common::*;

fn release_section(f: &common::KrsFixture, setup: &ServeSetup, addr: &str) -> String {
    format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{addr}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\nmax_attempts = 3\n",
        f.tls_pin,
        f.receipt_pin,
        common::ca_pin(&setup.ca)
    )
}

/// Switch `setup` to released master keys from the KRS at `addr` (again after a KRS restart).
fn use_release(f: &common::KrsFixture, setup: &ServeSetup, addr: &str) {
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let start = cfg.find("[master_key]").unwrap();
    let end = cfg[start..].find("\n[admin]").unwrap() + start;
    let cfg = format!(
        "{}{}{}",
        &cfg[..start],
        release_section(f, setup, addr),
        &cfg[end..]
    );
    std::fs::write(&setup.config, cfg).unwrap();
    let _ = std::fs::remove_file(setup.dir.path().join("master.key"));
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The last record's sequence number in a store directory.
fn last_seq(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("keystore.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .max()
        .unwrap()
}

fn stop(mut p: Proc) {
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        p.stderr_text()
    );
}

/// Boot and expect a refusal at unseal naming `what`: exit non-zero, nothing served.
fn refused_at_unseal(setup: &ServeSetup, what: &[&str]) {
    let mut p = Proc::spawn(
        &["serve", "--config", setup.config.to_str().unwrap()],
        setup.dir.path(),
    );
    let code = p.wait_exit(Duration::from_secs(60));
    let log = p.stderr_text();
    assert!(code.is_some() && code != Some(0), "exit {code:?}: {log}");
    assert!(log.contains("phase=unseal"), "{log}");
    assert!(
        what.iter().any(|w| log.contains(w)),
        "expected one of {what:?}: {log}"
    );
    assert!(!log.contains("XKS API on"), "served anyway: {log}");
}

#[test]
fn rolled_back_truncated_or_swapped_stores_are_refused_and_writes_need_the_krs() {
    let Some(f) = common::KrsFixture::new("rollback", "") else {
        return;
    };
    let text = common::policy_text_full(
        2,
        &[hex::encode(keyward_attest::DEMO_MEASUREMENT)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    let a = ServeSetup::new();
    let b = ServeSetup::new();
    f.trust_admin_ca("appliance-a", &a.ca);
    f.trust_admin_ca("appliance-b", &b.ca);
    let krs = f.serve();
    use_release(&f, &a, &krs.addr);
    use_release(&f, &b, &krs.addr);
    let store = a.dir.path().join("store");
    let older = a.dir.path().join("store-older");
    let newest = a.dir.path().join("store-newest");

    // Appliance B gets a store of its own (another deployment).
    let (pb, _) = b.start();
    create_open_key(&b.profile, "b1");
    stop(pb);

    let (pa, xks) = a.start();
    create_open_key(&a.profile, "k0");
    create_open_key(&a.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "c2VjcmV0");
    assert_eq!(code, 200, "{enc}");
    copy_dir(&store, &older);
    // The kill switch.
    admin_ok(&a.profile, &["keys", "disable", "k1"]);
    let (code, _) = xks.encrypt("k1", "c2VjcmV0");
    assert_ne!(code, 200);

    // The KRS goes down: an admin write fails with a clear message and changes nothing; XKS
    // keeps answering.
    drop(krs);
    let out = admin(&a.profile, &["keys", "create", "k2"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("key-release service"), "{err}");
    let (code, enc0) = xks.encrypt("k0", "c3RpbGw=");
    assert_eq!(code, 200, "XKS needs no KRS: {enc0}");
    let listed = admin_ok(&a.profile, &["keys", "list"]);
    assert!(!listed.contains("k2"), "{listed}");
    stop(pa);

    let krs = f.serve();
    use_release(&f, &a, &krs.addr);
    copy_dir(&store, &newest);

    // 1. The whole store directory from before `keys disable`: refused.
    copy_dir(&older, &store);
    refused_at_unseal(&a, &["rollback"]);

    // 2. The last acknowledged record (the `keys disable`) deleted from the newest store, with
    //    the never-acknowledged `k2` after it: refused.
    copy_dir(&newest, &store);
    let last_old = last_seq(&older);
    let data = store.join("keystore.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["seq"].as_u64().is_none_or(|s| s <= last_old)
        })
        .collect();
    assert!(kept.len() + 2 <= text.lines().count(), "{text}");
    std::fs::write(&data, kept.join("\n") + "\n").unwrap();
    refused_at_unseal(&a, &["rollback", "truncated"]);

    // 3. Another appliance's store in its place: refused.
    copy_dir(&b.dir.path().join("store"), &store);
    refused_at_unseal(&a, &["another key store"]);

    // The newest store still boots, with the kill switch in force and no k2.
    copy_dir(&newest, &store);
    let (pa, xks) = a.start();
    let (code, _) = xks.encrypt("k1", "c2VjcmV0");
    assert_ne!(code, 200, "the disabled key came back");
    let (code, dec) = xks.decrypt("k0", &enc0);
    assert_eq!(code, 200, "{dec}");
    let listed = admin_ok(&a.profile, &["keys", "list"]);
    assert!(!listed.contains("k2"), "{listed}");
    // And writes are anchored again.
    admin_ok(&a.profile, &["keys", "create", "k3"]);
    stop(pa);
    drop(krs);
    assert!(f.log_verify(&f.log_path()).0);
}
