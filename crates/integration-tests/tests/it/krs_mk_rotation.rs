//! Master-key rotation end to end, against the real `keyward krs serve` on SoftHSMv2 and the
//! library's boot agent (simulated SNP evidence) and key store: a store sealed under version 1
//! holding ciphertexts; `krs mk rotate`; the next boot gets versions 2 and 1, re-seals the
//! store online and the KRS head follows; `krs mk retire 1` is refused before the re-seal and
//! without `--backups-moved`, allowed after, and logged; after it, a boot gets version 2 only,
//! the store opens and decrypts the old ciphertexts, and the pre-rotation copy of the store
//! cannot be opened (its version is gone, and the KRS head names version 2).

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use keyward_agent::KrsAnchor;
use keyward_agent::{parse_pins, Agent, Released};
use keyward_keystore::KeyUsage;
use keyward_keystore::{
    FileKeyStore, Freshness, HeadAnchor, KeystoreError, MasterKeys, NewStore, Registry,
};
use keyward_verify::testsign::test_root_policy_toml;

const MEAS: [u8; 48] = [0x11; 48];

fn release(f: &common::KrsFixture, addr: &str) -> Released {
    Agent {
        cfg: f.agent_config(addr),
        attesters: vec![Box::new(common::honest_snp(MEAS))],
        product_release: "keyward-test".into(),
    }
    .release()
    .unwrap()
}

/// What the appliance's boot does with a release: every version as `MasterKeys`, the head in
/// the receipt as the floor, the KRS through the boot key as the anchor.
fn open(
    f: &common::KrsFixture,
    addr: &str,
    r: Released,
    store: &Path,
) -> (Result<Registry, KeystoreError>, Arc<KrsAnchor>) {
    let pins = parse_pins(&f.agent_config(addr)).unwrap();
    let anchor = Arc::new(KrsAnchor::new(
        &[addr],
        pins.tls,
        r.receipt_spki.clone(),
        r.boot_key.clone().expect("boot key registered"),
        Duration::from_secs(5),
    ));
    let floor = r.receipt.head.clone();
    let mut keys = MasterKeys::new(r.receipt.key_version, r.key);
    for (v, k) in r.also {
        keys.insert(v, k);
    }
    let reg = Registry::open_keys(
        Box::new(FileKeyStore::open(store).unwrap()),
        keys,
        Freshness::Anchored {
            floor,
            anchor: anchor.clone(),
        },
    );
    (reg, anchor)
}

fn encrypt(reg: &Registry, id: &str, msg: &[u8]) -> Vec<u8> {
    let snap = reg.snapshot();
    let c = Aes256Gcm::new_from_slice(snap.stores["default"].keys[id].kek.expose()).unwrap();
    c.encrypt(Nonce::from_slice(&[7; 12]), msg).unwrap()
}

fn decrypt(reg: &Registry, id: &str, ct: &[u8]) -> Vec<u8> {
    let snap = reg.snapshot();
    let c = Aes256Gcm::new_from_slice(snap.stores["default"].keys[id].kek.expose()).unwrap();
    c.decrypt(Nonce::from_slice(&[7; 12]), ct).unwrap()
}

/// One release by hand with `key_versions` in the Hello (`None`: an agent from before
/// rotation): `Ok((key_version, further versions))` or `Err(deny code)`.
fn raw_release(
    f: &common::KrsFixture,
    addr: &str,
    key_versions: Option<Vec<u32>>,
) -> Result<(u32, Vec<u32>), u32> {
    use keyward_agent::{accept_release, Client};
    use keyward_attest::Attester;
    use keyward_evidence::EvidenceBundle;
    use keyward_krp::cbor::to_canonical;
    use keyward_krp::messages::{Evidence, Hello, Request, Response};
    use keyward_krp::transcript;
    use keyward_krp::EphemeralKey;
    let pins = parse_pins(&f.agent_config(addr)).unwrap();
    let mut c = Client::connect(addr, pins.tls, Duration::from_secs(5)).unwrap();
    let hello = Hello {
        v: 1,
        platform: "simulated-snp".into(),
        product_release: "keyward-test".into(),
        algs: vec![],
        pins: pins.pins.clone(),
        key_versions,
    };
    let Response::Challenge(ch) = c.call(&Request::Hello(hello.clone())).unwrap() else {
        panic!("no challenge")
    };
    let esk = EphemeralKey::generate();
    let t = transcript::transcript(&hello, &ch, &esk.public_sec1()).unwrap();
    let binding = transcript::binding(
        &t,
        &ch.nonce,
        &transcript::p384_spki_der(&esk.public_sec1()).unwrap(),
    );
    let mut bundle = EvidenceBundle {
        version: 1,
        ..Default::default()
    };
    common::honest_snp(MEAS)
        .attest(&binding, &mut bundle)
        .unwrap();
    let ev = Evidence {
        v: 1,
        session_id: ch.session_id.clone(),
        epk: esk.public_sec1(),
        policy_digest: ch.policy_digest.clone(),
        evidence: to_canonical(&bundle).unwrap(),
        boot_key: vec![],
    };
    match c.call(&Request::Evidence(ev.clone())).unwrap() {
        Response::Release(rel) => {
            let ok = accept_release(&esk, &ch, &ev, &t, &rel).unwrap();
            Ok((
                ok.receipt.key_version,
                ok.also.iter().map(|(v, _)| *v).collect(),
            ))
        }
        Response::Deny(d) => Err(d.code),
        _ => panic!("unexpected answer"),
    }
}

fn mk(f: &common::KrsFixture, args: &[&str]) -> std::process::Output {
    f.cmd()
        .args(["krs", "mk"])
        .args(args)
        .arg("--config")
        .arg(&f.config)
        .output()
        .unwrap()
}

fn mk_list(f: &common::KrsFixture) -> Vec<serde_json::Value> {
    let out = mk(f, &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "keystore.lock" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn rotate_reseal_retire_through_the_krs() {
    let Some(f) = common::KrsFixture::new("krs-mk", "") else {
        return;
    };
    let text = common::policy_text_full(2, &[hex::encode(MEAS)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let store = f.dir.join("store");
    let old_copy = f.dir.join("store-before-rotation");

    // Boot 1, before any rotation: version 1 only, as agents always had it.
    let krs = f.serve();
    let r = release(&f, &krs.addr);
    assert_eq!(r.receipt.key_version, 1);
    assert!(r.also.is_empty());
    // An agent from before rotation gets version 1 too.
    assert_eq!(raw_release(&f, &krs.addr, None), Ok((1, vec![])));
    let (reg, _) = open(&f, &krs.addr, r, &store);
    let reg = reg.unwrap();
    reg.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    reg.create_keys(None, &refs, KeyUsage::EncryptDecrypt)
        .unwrap();
    let cts: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| encrypt(&reg, id, id.as_bytes()))
        .collect();
    assert_eq!(reg.mk_status().sealed, 1);
    drop(reg);
    drop(krs);
    copy_dir(&store, &old_copy);

    // Rotate (KRS stopped): version 2 current, version 1 previous, the deployment still on 1.
    let out = mk(&f, &["rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = mk_list(&f);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        (&list[0]["version"], &list[0]["state"]),
        (&1.into(), &"previous".into())
    );
    assert_eq!(
        (&list[1]["version"], &list[1]["state"]),
        (&2.into(), &"current".into())
    );
    assert_eq!(list[0]["deployments"], serde_json::json!(["test"]));
    assert_eq!(list[1]["label"], "keyward-master.v2");
    // Retire before the re-seal: refused, by name of the deployment still on it.
    let out = mk(&f, &["retire", "1", "--backups-moved"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("test"), "{err}");
    let out = mk(&f, &["retire", "2", "--backups-moved"]);
    assert!(
        !out.status.success(),
        "the current version cannot be retired"
    );

    // Boot 2: versions 2 and 1 released; re-seal online; the KRS head follows.
    let krs = f.serve();
    let r = release(&f, &krs.addr);
    assert_eq!(r.receipt.key_version, 2);
    assert_eq!(r.receipt.key_id, "keyward-master.v2");
    assert_eq!(r.also.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1]);
    // Old agents keep getting version 1 while it is not retired; one that names a version
    // gets it.
    assert_eq!(raw_release(&f, &krs.addr, None), Ok((1, vec![])));
    assert_eq!(raw_release(&f, &krs.addr, Some(vec![1])), Ok((2, vec![1])));
    let (reg, anchor) = open(&f, &krs.addr, r, &store);
    let reg = reg.unwrap();
    let st = reg.mk_status();
    assert_eq!((st.sealed, st.current), (1, 2));
    let head = reg.reseal().unwrap().expect("re-sealed");
    assert_eq!(head.mk_version, 2);
    assert_eq!(anchor.current().unwrap(), Some(head.clone()));
    for (id, ct) in ids.iter().zip(&cts) {
        assert_eq!(decrypt(&reg, id, ct), id.as_bytes());
    }
    // A write after the re-seal is anchored as usual.
    reg.create_key(None, "after-reseal", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    drop(krs);

    // Retire: refused without --backups-moved, then done, destroyed and logged.
    let list = mk_list(&f);
    assert_eq!(list[0]["deployments"], serde_json::json!([]));
    assert_eq!(list[1]["deployments"], serde_json::json!(["test"]));
    let out = mk(&f, &["retire", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--backups-moved"),
        "{err}"
    );
    let out = mk(&f, &["retire", "1", "--backups-moved"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = mk_list(&f);
    assert_eq!(list[0]["state"], "retired");
    let decisions: Vec<String> = f
        .log_entries()
        .iter()
        .map(|e| e["decision"].as_str().unwrap().to_string())
        .collect();
    assert!(
        decisions.contains(&"mk-rotate".to_string()),
        "{decisions:?}"
    );
    assert!(
        decisions.contains(&"mk-retire".to_string()),
        "{decisions:?}"
    );
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");

    // Boot 3, after retirement: version 2 only; the store opens and decrypts the old
    // ciphertexts.
    let krs = f.serve();
    let r = release(&f, &krs.addr);
    assert_eq!(r.receipt.key_version, 2);
    assert!(r.also.is_empty(), "a retired version is not released");
    // Asking for the retired version, or being an agent that only knows version 1: denied.
    let retired = keyward_krp::DenyCode::KeyRetired.number();
    assert_eq!(raw_release(&f, &krs.addr, Some(vec![1])), Err(retired));
    assert_eq!(raw_release(&f, &krs.addr, None), Err(retired));
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["reason"], "key_retired", "{last}");
    let (reg, _) = open(&f, &krs.addr, r, &store);
    let reg = reg.unwrap();
    assert_eq!(reg.mk_status().sealed, 2);
    for (id, ct) in ids.iter().zip(&cts) {
        assert_eq!(decrypt(&reg, id, ct), id.as_bytes());
    }
    drop(reg);

    // The host puts the pre-rotation copy back: its version is gone.
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&old_copy, &store);
    let r = release(&f, &krs.addr);
    let (reg, _) = open(&f, &krs.addr, r, &store);
    match reg {
        Err(KeystoreError::MasterKeyVersionMissing { needed: 1, .. }) => {}
        Err(e) => panic!("expected the retired version to be missing, got {e}"),
        Ok(_) => panic!("the pre-rotation store opened after its master key was retired"),
    }
}

/// The real appliance (`keyward serve`, master key released by the KRS): a store of 20,000
/// keys under version 1 and a ciphertext; `krs mk rotate`; then boots that re-seal (about
/// 1.5 s in a debug build) are `kill -9`ed at random moments up to 2.5 s after the re-seal
/// starts (while the new generation is written, or after the switch), until a boot finds the
/// store re-sealed; a last boot completes it: the store ends under version 2, the KRS head
/// follows, the old ciphertext decrypts. (The narrow windows between the switch, the sealed
/// head and the KRS record are hit exactly by `keystore_reseal::reseal_crash_at_every_step_resumes`.)
#[test]
fn serve_reseal_survives_kill9_at_random_points() {
    use crate::serve_common::{self, admin_ok, Proc, ServeSetup};
    use rand::Rng;
    let Some(f) = common::KrsFixture::new("serve-mk", "") else {
        return;
    };
    let meas = keyward_attest::DEMO_MEASUREMENT;
    let text = common::policy_text_full(2, &[hex::encode(meas)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let setup = ServeSetup::new();
    let ca_pin = f.trust_admin_ca("appliance", &setup.ca);
    let krs = f.serve();
    let section = |addr: &str| {
        format!(
            "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{addr}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{ca_pin}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\n",
            f.tls_pin, f.receipt_pin
        )
    };
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let use_krs = |addr: &str| {
        let cfg = base.replace(
            "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
            &section(addr),
        );
        assert!(cfg.contains("source = \"release\""));
        std::fs::write(&setup.config, cfg).unwrap();
    };
    use_krs(&krs.addr);

    // Version 1: a key and a ciphertext through XKS.
    let (mut p, xks) = setup.start();
    serve_common::create_open_key(&setup.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "cm90YXRlZA==");
    assert_eq!(code, 200, "{enc}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    // 20,000 more keys, written by the library with a release for the same deployment.
    {
        let mut acfg = f.agent_config(&krs.addr);
        acfg.admin_ca_sha256 = ca_pin.clone();
        let r = Agent {
            cfg: acfg.clone(),
            attesters: vec![Box::new(common::honest_snp(meas))],
            product_release: "keyward-test".into(),
        }
        .release()
        .unwrap();
        let pins = parse_pins(&acfg).unwrap();
        let anchor = Arc::new(KrsAnchor::new(
            &[krs.addr.as_str()],
            pins.tls,
            r.receipt_spki.clone(),
            r.boot_key.clone().unwrap(),
            Duration::from_secs(5),
        ));
        let reg = Registry::open_keys(
            Box::new(FileKeyStore::open(&setup.dir.path().join("store")).unwrap()),
            MasterKeys::new(r.receipt.key_version, r.key),
            Freshness::Anchored {
                floor: r.receipt.head.clone(),
                anchor,
            },
        )
        .unwrap();
        let ids: Vec<String> = (0..20_000).map(|i| format!("bulk-{i}")).collect();
        for chunk in ids.chunks(5_000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            reg.create_keys(Some("main"), &refs, KeyUsage::EncryptDecrypt)
                .unwrap();
        }
    }
    drop(krs);
    let out = mk(&f, &["rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krs = f.serve();
    use_krs(&krs.addr);

    // Boots killed at random moments once the re-seal has started.
    let mut rng = rand::thread_rng();
    let mut killed = 0;
    for _ in 0..8 {
        let mut p = Proc::spawn(
            &["serve", "--config", setup.config.to_str().unwrap()],
            setup.dir.path(),
        );
        let line = p.wait_stderr(
            "key store sealed under master key version",
            Duration::from_secs(60),
        );
        if !line.contains("re-sealing") {
            // Already done by an earlier boot that was killed after the switch.
            p.signal(libc::SIGKILL);
            p.wait_exit(Duration::from_secs(10));
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..2500)));
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
        killed += 1;
    }
    assert!(killed > 0, "no boot was killed during a re-seal");

    // The last boot: re-sealed (now or by an earlier one), old ciphertext decrypts.
    let (mut p, xks) = setup.start();
    let mut st = serde_json::Value::Null;
    for _ in 0..100 {
        st = serde_json::from_str(admin_ok(&setup.profile, &["mk", "status"]).trim()).unwrap();
        if st["sealed"] == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        (&st["sealed"], &st["krs_recorded"]),
        (&2.into(), &true.into()),
        "{st}"
    );

    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("cm90YXRlZA==")),
        "{dec}"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    drop(krs);
    let list = mk_list(&f);
    let v1 = list.iter().find(|l| l["version"] == 1).unwrap();
    let v2 = list.iter().find(|l| l["version"] == 2).unwrap();
    assert_eq!(v1["deployments"], serde_json::json!([]), "{list:?}");
    assert_eq!(
        v2["deployments"],
        serde_json::json!(["appliance"]),
        "{list:?}"
    );
}

/// The `[master_key]` section of a `keyward serve` released by the fixture's KRS at `addr`.
pub(crate) fn release_section(f: &common::KrsFixture, addr: &str, ca_pin: &str) -> String {
    format!(
        "[master_key]\nsource = \"release\"\n[master_key.release]\nkrs_url = \"{addr}\"\nkrs_tls_spki_sha256 = \"{}\"\nreceipt_spki_sha256 = \"{}\"\nadmin_ca_sha256 = \"{ca_pin}\"\nattesters = [\"simulated-snp\"]\nretry_initial_ms = 200\nretry_max_secs = 1\n",
        f.tls_pin, f.receipt_pin
    )
}

/// Start the KRS and keep its port: a restart (around `krs mk rotate`) listens there again,
/// so the running appliances' configured address stays right.
pub(crate) fn serve_krs_pinned(f: &common::KrsFixture) -> common::Running {
    let krs = f.serve();
    let cfg = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        cfg.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", krs.addr),
        ),
    )
    .unwrap();
    krs
}

/// `krs mk rotate` with the KRS stopped, then the KRS started again on the same port.
fn rotate_with_krs_stopped(f: &common::KrsFixture, krs: common::Running) -> common::Running {
    let addr = krs.addr.clone();
    drop(krs);
    let out = mk(f, &["rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krs = f.serve();
    assert_eq!(krs.addr, addr);
    krs
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A running `keyward serve` learns master-key version 2 without a restart: `krs mk rotate`
/// (the KRS restarted), then `admin mk reseal` on the running appliance runs a fresh attested
/// release (the KRS logs it), re-seals, and the KRS records the head under version 2; old
/// ciphertexts decrypt, new writes land, the process never restarted. Then the KRS's policy
/// changes to refuse this measurement: `mk reseal` is refused with the KRS's deny code
/// (audited), and XKS keeps serving.
#[test]
fn serve_learns_a_new_master_key_version_without_a_restart() {
    use crate::serve_common::{self, admin, admin_ok};
    let (f, krs, setup) = crate::boot_kill::released_setup("serve-mk-live");

    let (mut p, xks) = setup.start();
    let pid = p.child.id();
    serve_common::create_open_key(&setup.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "YmVmb3JlLXJvdGF0aW9u");
    assert_eq!(code, 200, "{enc}");
    let st = json(&admin_ok(&setup.profile, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&1.into(), &1.into()),
        "{st}"
    );
    let releases_before = f.log_entries().len();

    let krs = rotate_with_krs_stopped(&f, krs);
    // XKS served all along; the appliance has not heard of version 2 yet.
    let (code, _) = xks.decrypt("k1", &enc);
    assert_eq!(code, 200);
    let st = json(&admin_ok(&setup.profile, &["mk", "status"]));
    assert_eq!(st["current"], 1, "{st}");

    let r = json(&admin_ok(&setup.profile, &["mk", "reseal"]));
    assert_eq!(
        (
            &r["released"],
            &r["resealed"],
            &r["sealed"],
            &r["krs_recorded"]
        ),
        (&2.into(), &true.into(), &2.into(), &true.into()),
        "{r}"
    );
    // The KRS released it in a new session it logged (fresh evidence, judged as at boot).
    let log = f.log_entries();
    let fresh: Vec<&serde_json::Value> = log[releases_before..]
        .iter()
        .filter(|e| e["decision"] == "release")
        .collect();
    assert_eq!(fresh.len(), 1, "{log:?}");
    let st = json(&admin_ok(&setup.profile, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"], &st["krs_recorded"]),
        (&2.into(), &2.into(), &true.into()),
        "{st}"
    );
    // Same process; old ciphertexts decrypt; new writes land and serve.
    assert_eq!(p.child.id(), pid);
    assert!(p.child.try_wait().unwrap().is_none(), "serve exited");
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("YmVmb3JlLXJvdGF0aW9u")),
        "{dec}"
    );
    serve_common::create_open_key(&setup.profile, "k2");
    let (code, enc2) = xks.encrypt("k2", "YWZ0ZXI=");
    assert_eq!(code, 200, "{enc2}");

    // The KRS now refuses this appliance's measurement: a fresh release is denied; the
    // appliance keeps serving from memory, and says why (the deny code, audited).
    let other = common::policy_text_full(3, &[hex::encode([0x22u8; 48])], &test_root_policy_toml());
    drop(krs);
    f.sign_policy_text(3, &other, &f.policy_file);
    let krs = f.serve();
    let out = admin(&setup.profile, &["mk", "reseal"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("denied the release (code"),
        "{err}"
    );
    let (code, _) = xks.decrypt("k2", &enc2);
    assert_eq!(code, 200);
    let st = json(&admin_ok(&setup.profile, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&2.into(), &2.into()),
        "{st}"
    );
    let audit = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("mk_reseal") && l.contains("denied the release (code")),
        "{audit}"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    drop(krs);
    // The KRS holds the deployment's head under version 2.
    let list = mk_list(&f);
    let v2 = list.iter().find(|l| l["version"] == 2).unwrap();
    assert_eq!(
        v2["deployments"],
        serde_json::json!(["appliance"]),
        "{list:?}"
    );
}

/// A PostgreSQL server in a temporary directory (stopped before the directory goes).
struct Pg {
    pg: keyward_store_pg::local::LocalPostgres,
    _dir: tempfile::TempDir,
}

fn pg_server() -> Pg {
    let dir = tempfile::tempdir().unwrap();
    let pg = keyward_store_pg::local::LocalPostgres::start(dir.path(), None)
        .unwrap_or_else(|e| panic!("a local PostgreSQL server (apt-get install postgresql): {e}"));
    Pg { pg, _dir: dir }
}

/// The configuration of a fleet member: `base` (a [`crate::serve_common::ServeSetup`]
/// configuration) with its `[storage]` on the database at `url` (a state directory and audit
/// file of its own) and `release` as its `[master_key]` section.
fn pg_member_config(base: &str, url: &str, release: &str, state: &str, audit: &str) -> String {
    let start = base.find("[storage]").unwrap();
    let end = base[start..].find("\n[admin]").unwrap() + start;
    format!(
        "{}[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\ndir = \"{state}\"\n\n{release}{}",
        &base[..start],
        &base[end..]
    )
    .replace(
        "audit_file = \"audit.jsonl\"",
        &format!("audit_file = \"{audit}\""),
    )
}

/// What the fleet tests start from: the KRS on SoftHSMv2 (its policy admitting the simulated
/// attester, its port kept across restarts), a PostgreSQL server, a serve set-up whose
/// operator CA the KRS trusts for deployment `appliance`, its configuration text and the
/// `[master_key]` section that releases from that KRS.
struct PgFleet {
    f: common::KrsFixture,
    db: Pg,
    setup: crate::serve_common::ServeSetup,
    krs: common::Running,
    base: String,
    release: String,
}

fn pg_fleet(label: &str) -> Option<PgFleet> {
    let f = common::KrsFixture::new(label, "")?;
    let meas = keyward_attest::DEMO_MEASUREMENT;
    let text = common::policy_text_full(2, &[hex::encode(meas)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let db = pg_server();
    let setup = crate::serve_common::ServeSetup::new();
    let ca_pin = f.trust_admin_ca("appliance", &setup.ca);
    let krs = serve_krs_pinned(&f);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let release = release_section(&f, &krs.addr, &ca_pin);
    Some(PgFleet {
        f,
        db,
        setup,
        krs,
        base,
        release,
    })
}

/// A running fleet member: its process, its admin profile and its XKS endpoint.
struct Member {
    proc: crate::serve_common::Proc,
    profile: std::path::PathBuf,
    xks: crate::serve_common::Xks,
}

/// Start `keyward serve --config CONFIG` in `setup`'s directory; its admin profile is
/// `profile-NAME.toml` there (the set-up's operator certificate).
fn start_member(setup: &crate::serve_common::ServeSetup, config: &Path, name: &str) -> Member {
    use crate::serve_common::{addr_after, Proc};
    let mut proc = Proc::spawn(
        &["serve", "--config", config.to_str().unwrap()],
        setup.dir.path(),
    );
    let xks_line = proc.wait_stderr("XKS API on ", Duration::from_secs(60));
    let admin_line = proc.wait_stderr("admin API on ", Duration::from_secs(10));
    let profile = setup.dir.path().join(format!("profile-{name}.toml"));
    setup.write_profile(
        &profile,
        &addr_after(&admin_line, "admin API on "),
        "admin.pem",
        "admin-key.pem",
    );
    let xks = setup.xks_at(&addr_after(&xks_line, "XKS API on "));
    Member { proc, profile, xks }
}

/// Two `keyward serve` members on one PostgreSQL store, both booted before `krs mk rotate`:
/// member 1 runs `mk reseal` (a fresh release, the re-seal, the KRS head under version 2);
/// member 2, which holds only version 1, finds the store re-sealed on its next re-read,
/// fetches version 2 from the KRS by itself (audited `mk_release`) and accepts admin writes
/// again, without a restart; both decrypt what was encrypted before.
#[test]
fn a_fleet_follower_fetches_the_new_master_key_version_by_itself() {
    use crate::serve_common::{self, admin, admin_ok};
    let Some(PgFleet {
        f,
        db,
        setup,
        krs,
        base: cfg,
        release,
    }) = pg_fleet("fleet-mk-live")
    else {
        return;
    };
    let member =
        |state: &str, audit: &str| pg_member_config(&cfg, &db.pg.url(), &release, state, audit);
    std::fs::write(&setup.config, member("state-a", "audit-a.jsonl")).unwrap();
    let config_b = setup.dir.path().join("member-b.toml");
    std::fs::write(&config_b, member("state-b", "audit-b.jsonl")).unwrap();

    let (mut pa, xks) = setup.start();
    let profile_a = setup.profile.clone();
    serve_common::create_open_key(&profile_a, "k1");
    let (code, enc) = xks.encrypt("k1", "ZmxlZXQ=");
    assert_eq!(code, 200, "{enc}");
    let Member {
        proc: mut pb,
        profile: profile_b,
        xks: xks_b,
    } = start_member(&setup, &config_b, "b");
    let st = json(&admin_ok(&profile_b, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&1.into(), &1.into()),
        "{st}"
    );

    let releases = |f: &common::KrsFixture| {
        f.log_entries()
            .iter()
            .filter(|e| e["decision"] == "release")
            .count()
    };
    let released_before = releases(&f);
    let krs = rotate_with_krs_stopped(&f, krs);
    let r = json(&admin_ok(&profile_a, &["mk", "reseal"]));
    assert_eq!(
        (&r["released"], &r["sealed"], &r["krs_recorded"]),
        (&2.into(), &2.into(), &true.into()),
        "{r}"
    );

    // Member 2 follows by itself: an admin write there works again within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = admin(&profile_b, &["keys", "create", "k-on-b"]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member 2 still refuses writes: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            pb.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = json(&admin_ok(&profile_b, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&2.into(), &2.into()),
        "{st}"
    );
    assert!(pb.child.try_wait().unwrap().is_none(), "member 2 restarted");
    // The KRS recorded both: member 1's release for the re-seal and member 2's own fetch,
    // each a fresh attested release in its log.
    assert_eq!(releases(&f), released_before + 2, "{:?}", f.log_entries());
    assert!(pa.child.try_wait().unwrap().is_none(), "member 1 restarted");
    for x in [&xks, &xks_b] {
        let (code, dec) = x.decrypt("k1", &enc);
        assert_eq!(
            (code, dec["plaintext"].as_str()),
            (200, Some("ZmxlZXQ=")),
            "{dec}"
        );
    }
    let audit_b = std::fs::read_to_string(setup.dir.path().join("audit-b.jsonl")).unwrap();
    assert!(
        audit_b
            .lines()
            .any(|l| l.contains("mk_release") && l.contains("version 2 released")),
        "{audit_b}"
    );
    // Member 1 sees member 2's write.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !admin_ok(&profile_a, &["keys", "list"]).contains("k-on-b") {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in [&mut pa, &mut pb] {
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    }
    drop(krs);
    let list = mk_list(&f);
    let v2 = list.iter().find(|l| l["version"] == 2).unwrap();
    assert_eq!(
        v2["deployments"],
        serde_json::json!(["appliance"]),
        "{list:?}"
    );
}

/// The arguments of `keyward admin backup rewrap --in INPUT --out OUTPUT`.
fn rewrap_args<'a>(input: &'a Path, output: &'a Path) -> [&'a str; 6] {
    [
        "backup",
        "rewrap",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ]
}

/// `backup rewrap` against the appliance of `profile`.
fn rewrap(profile: &Path, input: &Path, output: &Path) -> std::process::Output {
    crate::serve_common::admin(profile, &rewrap_args(input, output))
}

/// [`rewrap`], which must succeed: its answer.
fn rewrap_ok(profile: &Path, input: &Path, output: &Path) -> String {
    crate::serve_common::admin_ok(profile, &rewrap_args(input, output))
}

/// `keyward admin backup rewrap`: a backup taken under master-key version 1 is re-wrapped by
/// the running appliance after `krs mk rotate` and `mk reseal` (its header then names version
/// 2, same head); the re-wrapped backup restores into an empty store (`keyward store
/// restore`) that boots under version 2 with the same keys (a ciphertext from before the
/// backup decrypts). A damaged backup is refused naming the field, nothing re-wrapped.
#[test]
fn a_backup_is_rewrapped_under_the_new_master_key_version_and_restores() {
    use crate::serve_common::{self, admin_ok};
    let (f, krs, setup) = crate::boot_kill::released_setup("backup-rewrap");

    let (mut p, xks) = setup.start();
    serve_common::create_open_key(&setup.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "YmVmb3JlLXJld3JhcA==");
    assert_eq!(code, 200, "{enc}");
    let dir = setup.dir.path();
    let old = dir.join("old.json");
    let b = json(&admin_ok(
        &setup.profile,
        &["backup", "--out", old.to_str().unwrap()],
    ));
    assert_eq!(b["mk_version"], 1, "{b}");

    let _krs = rotate_with_krs_stopped(&f, krs);
    let r = json(&admin_ok(&setup.profile, &["mk", "reseal"]));
    assert_eq!(
        (&r["resealed"], &r["sealed"]),
        (&true.into(), &2.into()),
        "{r}"
    );

    // A damaged backup: refused, naming the field.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"keyward_backup\":1}").unwrap();
    let out = rewrap(&setup.profile, &bad, &dir.join("x.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("file:"), "{err}");
    assert!(!dir.join("x.json").exists());

    let new = dir.join("new.json");
    let w = json(&rewrap_ok(&setup.profile, &old, &new));
    assert_eq!(w["mk_version"], 2, "{w}");
    assert_eq!(
        (&w["seq"], &w["store_id"]),
        (&b["seq"], &b["store_id"]),
        "{w} {b}"
    );
    let parsed = keyward_keystore::backup::parse(&std::fs::read(&new).unwrap()).unwrap();
    assert_eq!(parsed.mk_version(), 2);
    assert_eq!(parsed.body().header.mk_version, 2);
    // Nothing was restored: the running store still serves as before.
    let (code, _) = xks.decrypt("k1", &enc);
    assert_eq!(code, 200);
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("backup_rewrap")),
        "{audit}"
    );
    // Already under the current version: refused.
    let out = rewrap(&setup.profile, &new, &dir.join("y.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already sealed under master-key version 2"),
        "{err}"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    // The store is lost; the re-wrapped backup restores into the empty store and boots under
    // version 2 with the same keys.
    let store = dir.join("store");
    std::fs::remove_dir_all(&store).unwrap();
    let out = std::process::Command::new(keyward_integration_tests::keyward_bin_str())
        .args(["store", "restore", "--config"])
        .arg(&setup.config)
        .arg(&new)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut p, xks) = setup.start();
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("YmVmb3JlLXJld3JhcA==")),
        "{dec}"
    );
    let st = json(&admin_ok(&setup.profile, &["mk", "status"]));
    assert_eq!(st["sealed"], 2, "{st}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

/// `krs mk retire` for a fleet, a year's master-key rotation on three `keyward serve` members
/// of one PostgreSQL store, against the real KRS on SoftHSMv2:
/// - a backup under version 1, larger than the admin API's normal body cap, is taken;
/// - `krs mk retire 1` is refused while it is current, and after `krs mk rotate` while the
///   deployment's head is still sealed under it;
/// - one member runs `mk reseal`; the other two follow by themselves, with no write and no
///   restart;
/// - the retire is refused without `--backups-moved`; the backup is re-wrapped through the
///   file route; then the retire is done and logged;
/// - the old backup can no longer be re-wrapped, and boots nowhere after a restore; the
///   re-wrapped one restores and boots;
/// - every member keeps serving, and a restarted member boots on version 2 alone.
#[test]
fn three_members_move_to_a_new_master_key_then_the_old_one_is_retired() {
    use crate::serve_common::{self, admin_ok, Proc};
    let Some(PgFleet {
        f,
        db,
        setup,
        mut krs,
        base,
        release,
    }) = pg_fleet("fleet-mk-retire")
    else {
        return;
    };
    let dir = setup.dir.path().to_path_buf();
    let names = ["a", "b", "c"];
    let configs: Vec<std::path::PathBuf> = names
        .iter()
        .map(|n| {
            let p = dir.join(format!("member-{n}.toml"));
            let text = pg_member_config(
                &base,
                &db.pg.url(),
                &release,
                &format!("state-{n}"),
                &format!("audit-{n}.jsonl"),
            );
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let mut members: Vec<Member> = configs
        .iter()
        .zip(names)
        .map(|(c, n)| start_member(&setup, c, n))
        .collect();

    // Keys on every member: one the XKS API uses, and enough others (made on all three at
    // once) that the backup is larger than the admin API's 64 KiB body cap.
    serve_common::create_open_key(&members[0].profile, "k1");
    let (code, enc) = members[0].xks.encrypt("k1", "ZmxlZXQtcmV0aXJl");
    assert_eq!(code, 200, "{enc}");
    std::thread::scope(|s| {
        for (i, m) in members.iter().enumerate() {
            let profile = m.profile.clone();
            s.spawn(move || {
                for j in 0..70 {
                    admin_ok(&profile, &["keys", "create", &format!("bulk-{i}-{j}")]);
                }
            });
        }
    });
    // Every member sees every key before the backup.
    for m in &members {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !["bulk-0-69", "bulk-1-69", "bulk-2-69"]
            .iter()
            .all(|k| admin_ok(&m.profile, &["keys", "list"]).contains(k))
        {
            assert!(std::time::Instant::now() < deadline, "a member lags");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let old = dir.join("old.json");
    let b = json(&admin_ok(
        &members[0].profile,
        &["backup", "--out", old.to_str().unwrap()],
    ));
    assert_eq!(b["mk_version"], 1, "{b}");
    let old_len = std::fs::metadata(&old).unwrap().len();
    assert!(old_len > 64 * 1024, "the backup is only {old_len} bytes");

    // The KRS state is changed with the KRS stopped (its state lock); the members keep
    // serving XKS meanwhile.
    let retire = |krs: common::Running, args: &[&str]| -> (common::Running, String) {
        let addr = krs.addr.clone();
        drop(krs);
        let out = mk(&f, args);
        let krs = f.serve();
        assert_eq!(krs.addr, addr);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.success(),
            args.contains(&"--backups-moved") && !text.contains("refused"),
            "{text}"
        );
        (krs, text)
    };
    let (k, text) = retire(krs, &["retire", "1", "--backups-moved"]);
    assert!(text.contains("version 1 is the current one"), "{text}");
    krs = rotate_with_krs_stopped(&f, k);
    let (k, text) = retire(krs, &["retire", "1", "--backups-moved"]);
    assert!(
        text.contains("deployment(s) appliance is still sealed under master key version 1"),
        "{text}"
    );
    krs = k;

    // One member re-seals; the other two follow by themselves (no write, no restart).
    let r = json(&admin_ok(&members[1].profile, &["mk", "reseal"]));
    assert_eq!(
        (&r["released"], &r["sealed"], &r["krs_recorded"]),
        (&2.into(), &2.into(), &true.into()),
        "{r}"
    );
    for m in &members {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = json(&admin_ok(&m.profile, &["mk", "status"]));
            if st["sealed"] == 2 && st["current"] == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a member did not follow: {st}\n{}",
                m.proc.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let (code, dec) = m.xks.decrypt("k1", &enc);
        assert_eq!(
            (code, dec["plaintext"].as_str()),
            (200, Some("ZmxlZXQtcmV0aXJl")),
            "{dec}"
        );
    }
    let (k, text) = retire(krs, &["retire", "1"]);
    assert!(text.contains("--backups-moved not given"), "{text}");
    krs = k;

    // The backup moves to version 2 (through the file route: it is over the normal cap), on
    // a member other than the one that re-sealed.
    let new = dir.join("new.json");
    let w = json(&rewrap_ok(&members[2].profile, &old, &new));
    assert_eq!(
        (&w["mk_version"], &w["seq"], &w["store_id"]),
        (&2.into(), &b["seq"], &b["store_id"]),
        "{w} {b}"
    );
    let (k, text) = retire(krs, &["retire", "1", "--backups-moved"]);
    assert!(text.contains("\"retired\":true"), "{text}");
    krs = k;
    let list = mk_list(&f);
    let v1 = list.iter().find(|l| l["version"] == 1).unwrap();
    assert_eq!(v1["state"], "retired", "{list:?}");
    let v2 = list.iter().find(|l| l["version"] == 2).unwrap();
    assert_eq!(
        v2["deployments"],
        serde_json::json!(["appliance"]),
        "{list:?}"
    );
    assert!(
        f.log_entries().iter().any(|e| e["decision"] == "mk-retire"),
        "the retire is not in the release log"
    );

    // Version 1 is gone: the old backup cannot be re-wrapped any more.
    let out = rewrap(&members[0].profile, &old, &dir.join("again.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("retired"), "{err}");
    assert!(!dir.join("again.json").exists());
    // Every member still serves; a restarted one boots on version 2 alone.
    for m in &members {
        let (code, _) = m.xks.decrypt("k1", &enc);
        assert_eq!(code, 200);
    }
    let b_member = members.remove(1);
    b_member.proc.signal(libc::SIGTERM);
    let mut b_proc = b_member.proc;
    assert_eq!(b_proc.wait_exit(Duration::from_secs(20)), Some(0));
    drop(b_proc);
    let again = start_member(&setup, &configs[1], "b2");
    let (code, dec) = again.xks.decrypt("k1", &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("ZmxlZXQtcmV0aXJl")),
        "{dec}"
    );
    members.push(again);
    for mut m in members {
        m.proc.signal(libc::SIGTERM);
        assert_eq!(m.proc.wait_exit(Duration::from_secs(20)), Some(0));
    }

    // The fleet is lost. Restored from the old backup, a store boots nowhere (version 1 is
    // not released any more); from the re-wrapped one it boots and serves the same keys.
    let restore = |backup: &Path, name: &str| -> std::path::PathBuf {
        let cfg = dir.join(format!("{name}.toml"));
        let text = base
            .replace(
                "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
                &release,
            )
            .replace("dir = \"store\"", &format!("dir = \"{name}\""))
            .replace(
                "audit_file = \"audit.jsonl\"",
                &format!("audit_file = \"audit-{name}.jsonl\""),
            );
        assert!(text.contains("source = \"release\""));
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(keyward_integration_tests::keyward_bin_str())
            .args(["store", "restore", "--config"])
            .arg(&cfg)
            .arg(backup)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cfg
    };
    let cfg_old = restore(&old, "restored-old");
    let mut p = Proc::spawn(&["serve", "--config", cfg_old.to_str().unwrap()], &dir);
    let code = p.wait_exit(Duration::from_secs(60));
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    assert!(p.stderr_text().contains("retired"), "{}", p.stderr_text());
    let cfg_new = restore(&new, "restored-new");
    let m = start_member(&setup, &cfg_new, "restored");
    let (code, dec) = m.xks.decrypt("k1", &enc);
    assert_eq!(
        (code, dec["plaintext"].as_str()),
        (200, Some("ZmxlZXQtcmV0aXJl")),
        "{dec}"
    );
    let st = json(&admin_ok(&m.profile, &["mk", "status"]));
    assert_eq!(
        (&st["sealed"], &st["current"]),
        (&2.into(), &2.into()),
        "{st}"
    );
    let mut p = m.proc;
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    drop(krs);
}
