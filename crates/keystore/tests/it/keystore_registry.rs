//! The key registry against real files in temp dirs: seal/unseal round trips, every mutation
//! surviving a reopen, validation errors, wrong master key, tampering and replay refused, torn
//! tails repaired, compaction, and nothing secret in clear on disk.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyward_keystore::{generate_credential, KeystoreError, NewStore, Registry, Revoke, StoreInfo};
use keyward_keystore::{Grant, GrantOps, KeyStatus, KeyUsage};
use keyward_secret::Key32;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

const MK: [u8; 32] = [0x11; 32];
const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYabc"; // 43 characters

fn mk() -> Key32 {
    Key32::from_bytes(&MK).unwrap()
}

fn open(dir: &Path) -> Result<Registry, KeystoreError> {
    Registry::open_dir(dir, mk())
}

fn store(name: &str, prefix: &str) -> NewStore {
    NewStore {
        name: name.into(),
        uri_prefix: prefix.into(),
        region: "us-east-1".into(),
        extra_services: vec!["xks-kms".into()],
    }
}

fn grant(principal: &str) -> Grant {
    Grant {
        principal: principal.into(),
        ops: GrantOps {
            encrypt: true,
            decrypt: true,
            metadata: true,
        },
        via_service: None,
        source_vpc: None,
        source_vpce: None,
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("keystore.jsonl")
}

fn kek_of(reg: &Registry, store: &str, id: &str) -> [u8; 32] {
    *reg.snapshot().stores[store].keys[id].kek.expose()
}

fn encrypt(kek: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    let c = Aes256Gcm::new_from_slice(kek).unwrap();
    c.encrypt(Nonce::from_slice(&[7u8; 12]), Payload { msg, aad: b"a" })
        .unwrap()
}

fn decrypt(kek: &[u8; 32], ct: &[u8]) -> Option<Vec<u8>> {
    let c = Aes256Gcm::new_from_slice(kek).unwrap();
    c.decrypt(
        Nonce::from_slice(&[7u8; 12]),
        Payload { msg: ct, aad: b"a" },
    )
    .ok()
}

/// One store with one key, one imported key, and a credential.
fn populated(dir: &Path) -> Registry {
    let reg = open(dir).unwrap();
    reg.create_store(store("default", "/keyward")).unwrap();
    reg.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.import_key(
        None,
        "imported",
        KeyUsage::DecryptOnly,
        Zeroizing::new([0x42; 32]),
    )
    .unwrap();
    reg.add_credential(None, AKID, SecretString::from(SECRET.to_string()))
        .unwrap();
    reg
}

#[test]
fn seal_unseal_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    let k1 = kek_of(&reg, "default", "k1");
    let ct = encrypt(&k1, b"hello");
    drop(reg);

    let reg = open(dir.path()).unwrap();
    assert_eq!(kek_of(&reg, "default", "k1"), k1);
    assert_eq!(decrypt(&k1, &ct).unwrap(), b"hello");
    assert_eq!(kek_of(&reg, "default", "imported"), [0x42; 32]);
    let snap = reg.snapshot();
    let sv = &snap.stores["default"];
    assert_eq!(sv.uri_prefix, "/keyward");
    assert_eq!(sv.services, vec!["kms-xks-proxy", "xks-kms"]);
    assert_eq!(sv.credentials.len(), 1);
    assert_eq!(sv.credentials[0].access_key_id, AKID);
    assert_eq!(sv.credentials[0].secret_access_key.expose_secret(), SECRET);
    assert!(snap.store_by_prefix("/keyward").is_some());
}

#[test]
fn nothing_secret_in_clear_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    let k1 = kek_of(&reg, "default", "k1");
    reg.compact().unwrap(); // both the appended and the compacted form are checked
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap();
    let k2 = kek_of(&reg, "default", "k2");
    drop(reg);
    let disk = std::fs::read(log_path(dir.path())).unwrap();
    let text = String::from_utf8_lossy(&disk);
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for needle in [
        hex::encode(MK),
        b64(&MK),
        hex::encode(k1),
        b64(&k1),
        hex::encode(k2),
        b64(&k2),
        hex::encode([0x42; 32]),
        b64(&[0x42; 32]),
        SECRET.to_string(),
    ] {
        assert!(!text.contains(&needle), "found a secret in clear on disk");
    }
    for raw in [&MK, &k1, &k2, &[0x42; 32]] {
        assert!(!disk.windows(32).any(|w| w == raw), "raw key bytes on disk");
    }
    // Key ids and store names are not secret and are readable.
    assert!(text.contains("\"k1\"") && text.contains("\"default\""));
}

#[test]
fn every_mutation_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    reg.create_store(store("second", "/tenant-2")).unwrap();
    reg.create_store(store("gone", "/gone")).unwrap();
    reg.remove_store("gone", false).unwrap();
    reg.create_key(Some("second"), "s1", KeyUsage::EncryptOnly)
        .unwrap();
    reg.create_key(Some("second"), "s2", KeyUsage::None)
        .unwrap();
    reg.disable_key(Some("second"), "s1").unwrap();
    reg.disable_key(Some("second"), "s2").unwrap();
    reg.enable_key(Some("second"), "s2").unwrap();
    reg.grant(Some("default"), "k1", grant("*")).unwrap();
    let mut narrow = grant("arn:aws:iam::111122223333:role/app-*");
    narrow.ops = GrantOps {
        encrypt: true,
        decrypt: false,
        metadata: true,
    };
    narrow.via_service = Some("dynamodb.amazonaws.com".into());
    narrow.source_vpc = Some("vpc-1234".into());
    reg.grant(Some("default"), "k1", narrow.clone()).unwrap();
    reg.grant(Some("default"), "k1", grant("arn:aws:iam::1:user/x"))
        .unwrap();
    reg.revoke(
        Some("default"),
        "k1",
        &Revoke {
            principal: "arn:aws:iam::1:user/x".into(),
            ..Revoke::default()
        },
    )
    .unwrap();
    // Narrow the `*` grant to metadata only.
    reg.revoke(
        Some("default"),
        "k1",
        &Revoke {
            principal: "*".into(),
            ops: Some(GrantOps {
                encrypt: true,
                decrypt: true,
                metadata: false,
            }),
            ..Revoke::default()
        },
    )
    .unwrap();
    let (id2, s2) = generate_credential().unwrap();
    reg.add_credential(Some("second"), &id2, s2.clone())
        .unwrap();
    let (id3, s3) = generate_credential().unwrap();
    reg.add_credential(Some("default"), &id3, s3).unwrap();
    reg.remove_credential(Some("default"), AKID).unwrap();

    let stores = reg.list_stores();
    let keys_d = reg.list_keys(Some("default")).unwrap();
    let keys_s = reg.list_keys(Some("second")).unwrap();
    let creds_d = reg.list_credentials(Some("default")).unwrap();
    let creds_s = reg.list_credentials(Some("second")).unwrap();
    let keks: Vec<[u8; 32]> = ["k1", "imported"]
        .iter()
        .map(|id| kek_of(&reg, "default", id))
        .collect();
    drop(reg);

    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.list_stores(), stores);
    assert_eq!(reg.list_keys(Some("default")).unwrap(), keys_d);
    assert_eq!(reg.list_keys(Some("second")).unwrap(), keys_s);
    assert_eq!(reg.list_credentials(Some("default")).unwrap(), creds_d);
    assert_eq!(reg.list_credentials(Some("second")).unwrap(), creds_s);
    assert_eq!(kek_of(&reg, "default", "k1"), keks[0]);
    assert_eq!(kek_of(&reg, "default", "imported"), keks[1]);

    // Spot-check the content, not only equality with before.
    let names: Vec<&str> = stores.iter().map(|s: &StoreInfo| s.name.as_str()).collect();
    assert_eq!(names, ["default", "second"]);
    let k1 = keys_d.iter().find(|k| k.id == "k1").unwrap();
    assert_eq!(k1.grants.len(), 2);
    assert_eq!(k1.grants[0].principal, "*");
    assert_eq!(
        k1.grants[0].ops,
        GrantOps {
            encrypt: false,
            decrypt: false,
            metadata: true
        }
    );
    assert_eq!(k1.grants[1], narrow);
    let s1 = keys_s.iter().find(|k| k.id == "s1").unwrap();
    assert_eq!(
        (s1.status, s1.usage),
        (KeyStatus::Disabled, KeyUsage::EncryptOnly)
    );
    let s2k = keys_s.iter().find(|k| k.id == "s2").unwrap();
    assert_eq!(
        (s2k.status, s2k.usage),
        (KeyStatus::Enabled, KeyUsage::None)
    );
    assert_eq!(creds_d.len(), 1);
    assert_eq!(creds_d[0].access_key_id, id3);
    assert_eq!(creds_s[0].access_key_id, id2);
    let snap = reg.snapshot();
    assert_eq!(
        snap.stores["second"].credentials[0]
            .secret_access_key
            .expose_secret(),
        s2.expose_secret()
    );
    assert!(k1.created > 1_700_000_000);
    assert!(k1.created_rfc3339().ends_with('Z'));
}

#[test]
fn new_keys_have_no_grants_and_version_one() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    let k = reg.key_info(None, "k1").unwrap();
    assert!(k.grants.is_empty());
    assert_eq!((k.version, k.status), (1, KeyStatus::Enabled));
    assert!(reg.snapshot().stores["default"].keys["k1"]
        .grants
        .is_empty());
}

#[test]
fn changes_are_live_in_the_shared_view() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    let view = reg.view();
    let before = view.load_full();
    reg.disable_key(None, "k1").unwrap();
    assert_eq!(
        view.load().stores["default"].keys["k1"].status,
        KeyStatus::Disabled
    );
    // A reader holding the old snapshot keeps a consistent old view.
    assert_eq!(
        before.stores["default"].keys["k1"].status,
        KeyStatus::Enabled
    );
    assert_eq!(
        before.stores["default"].keys["k1"].kek.expose(),
        view.load().stores["default"].keys["k1"].kek.expose()
    );
}

#[test]
fn validation_errors_are_typed_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path()).unwrap();
    // No store yet.
    assert!(matches!(
        reg.create_key(None, "k", KeyUsage::EncryptDecrypt),
        Err(KeystoreError::StoreRequired(0))
    ));
    let e = reg.create_store(store("a", "/bad prefix")).unwrap_err();
    assert!(
        matches!(
            e,
            KeystoreError::Invalid {
                what: "uri prefix",
                ..
            }
        ),
        "{e}"
    );
    let e = reg
        .create_store(store("a", &format!("/{}", "x".repeat(117))))
        .unwrap_err();
    assert!(e.to_string().contains("128"), "{e}");
    reg.create_store(store("a", "")).unwrap();
    assert!(matches!(
        reg.create_store(store("a", "/x")),
        Err(KeystoreError::DuplicateStore(_))
    ));
    assert!(matches!(
        reg.create_store(store("b", "")),
        Err(KeystoreError::DuplicatePrefix { .. })
    ));

    // One store: the store argument is optional.
    reg.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    assert!(matches!(
        reg.create_key(None, "k", KeyUsage::EncryptDecrypt),
        Err(KeystoreError::DuplicateKey { .. })
    ));
    for (id, why) in [
        ("", "empty"),
        ("..", "dot-segment"),
        (".", "dot-segment"),
        ("a/b", "not allowed"),
        ("a b", "not allowed"),
    ] {
        let e = reg
            .create_key(None, id, KeyUsage::EncryptDecrypt)
            .unwrap_err();
        assert!(
            matches!(e, KeystoreError::Invalid { what: "key id", .. })
                && e.to_string().contains(why),
            "{id:?}: {e}"
        );
    }
    let long = "x".repeat(129);
    assert!(reg
        .create_key(None, &long, KeyUsage::EncryptDecrypt)
        .unwrap_err()
        .to_string()
        .contains("129"));
    reg.create_key(None, &"x".repeat(128), KeyUsage::EncryptDecrypt)
        .unwrap();

    // Two stores: now it must be named.
    reg.create_store(store("b", "/b")).unwrap();
    assert!(matches!(
        reg.create_key(None, "k2", KeyUsage::EncryptDecrypt),
        Err(KeystoreError::StoreRequired(2))
    ));
    assert!(matches!(
        reg.list_keys(Some("nope")),
        Err(KeystoreError::UnknownStore(_))
    ));
    assert!(matches!(
        reg.enable_key(Some("b"), "k"),
        Err(KeystoreError::UnknownKey { .. })
    ));
    assert!(matches!(
        reg.remove_store("a", false),
        Err(KeystoreError::StoreNotEmpty { keys: 2, .. })
    ));

    // Credentials.
    let sec = || SecretString::from(SECRET.to_string());
    let e = reg.add_credential(Some("a"), "SHORT", sec()).unwrap_err();
    assert!(e.to_string().contains("20-30"), "{e}");
    let e = reg
        .add_credential(
            Some("a"),
            AKID,
            SecretString::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string()),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("43-64") && !e.to_string().contains("wJalr"),
        "{e}"
    );
    reg.add_credential(Some("a"), AKID, sec()).unwrap();
    assert!(matches!(
        reg.add_credential(Some("b"), AKID, sec()),
        Err(KeystoreError::DuplicateCredential(_))
    ));
    assert!(matches!(
        reg.remove_credential(Some("b"), AKID),
        Err(KeystoreError::UnknownCredential { .. })
    ));

    // Grants.
    let mut g = grant("*");
    g.ops = GrantOps::default();
    assert!(matches!(
        reg.grant(Some("a"), "k", g),
        Err(KeystoreError::Invalid {
            what: "grant ops",
            ..
        })
    ));
    assert!(matches!(
        reg.revoke(
            Some("a"),
            "k",
            &Revoke {
                principal: "*".into(),
                ..Revoke::default()
            }
        ),
        Err(KeystoreError::NoMatchingGrant { .. })
    ));

    // Nothing refused above reached the disk.
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.list_keys(Some("a")).unwrap().len(), 2);
    assert_eq!(reg.list_credentials(Some("a")).unwrap().len(), 1);
    assert!(reg.list_keys(Some("b")).unwrap().is_empty());
}

#[test]
fn generated_credentials_are_accepted_by_kms_rules() {
    for _ in 0..20 {
        let (id, secret) = generate_credential().unwrap();
        keyward_keystore::validate::access_key_id(&id).unwrap();
        keyward_keystore::validate::secret_access_key(secret.expose_secret()).unwrap();
    }
}

#[test]
fn wrong_master_key_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let before = std::fs::read(log_path(dir.path())).unwrap();
    let e = Registry::open_dir(dir.path(), Key32::from_bytes(&[0x12; 32]).unwrap())
        .err()
        .expect("wrong key must fail");
    assert!(matches!(e, KeystoreError::WrongMasterKey), "{e}");
    assert!(e.to_string().contains("master key"));
    // The store is untouched and still opens with the right key.
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), before);
    assert_eq!(open(dir.path()).unwrap().list_keys(None).unwrap().len(), 2);
}

/// The log's lines (header first).
fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(log_path(dir))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(log_path(dir), s).unwrap();
}

fn expect_tampered(dir: &Path) {
    match open(dir) {
        Err(KeystoreError::Tampered { .. }) => {}
        Err(e) => panic!("expected Tampered, got {e}"),
        Ok(_) => panic!("a tampered store was opened"),
    }
}

#[test]
fn a_flipped_byte_in_any_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let orig = lines(dir.path());
    assert_eq!(orig.len(), 5, "header + store + 2 keys + credential");
    for (i, line) in orig.iter().enumerate().skip(1) {
        // Flip a character in the sealed value (the last quoted Base64 string) and, separately,
        // in a clear field (the key id / store name).
        let sealed_at = ["\"kek\":\"", "\"secret\":\""]
            .iter()
            .find_map(|k| line.find(k).map(|p| p + k.len() + 20));
        let name_at = line.find("\"default\"").unwrap() + 2;
        for at in sealed_at.into_iter().chain([name_at]) {
            let mut bytes = line.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let mut t = orig.clone();
            t[i] = String::from_utf8(bytes).unwrap();
            write_lines(dir.path(), &t);
            expect_tampered(dir.path());
        }
    }
    // Flipping a bit in the clear status of a key (disabled -> enabled) is refused too.
    let reg = {
        write_lines(dir.path(), &orig);
        open(dir.path()).unwrap()
    };
    reg.disable_key(None, "k1").unwrap();
    drop(reg);
    let mut t = lines(dir.path());
    let last = t.len() - 1;
    assert!(t[last].contains("\"disabled\""));
    t[last] = t[last].replace("\"disabled\"", "\"enabled\"");
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());
}

#[test]
fn swapped_ciphertexts_and_replayed_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let orig = lines(dir.path());
    // Lines 2 and 3 are the keys k1 and imported: swap their sealed KEKs.
    let kek = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["rec"]["key"]["kek"].as_str().unwrap().to_string()
    };
    let (a, b) = (kek(&orig[2]), kek(&orig[3]));
    let mut t = orig.clone();
    t[2] = orig[2].replace(&a, &b);
    t[3] = orig[3].replace(&b, &a);
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());

    // Replay: an old record appended again.
    let mut t = orig.clone();
    t.push(orig[2].clone());
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());

    // Reorder two records.
    let mut t = orig.clone();
    t.swap(2, 3);
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());

    // A record from another store sealed under the same master key.
    let other = tempfile::tempdir().unwrap();
    drop(populated(other.path()));
    let foreign = lines(other.path());
    let mut t = orig.clone();
    t[2] = foreign[2].clone();
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());

    // The untouched log still opens.
    write_lines(dir.path(), &orig);
    open(dir.path()).unwrap();
}

fn head_path(dir: &Path) -> PathBuf {
    dir.join("keystore.head")
}

#[test]
fn a_torn_last_record_is_cut_off_and_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    drop(reg);
    // A write interrupted before it was acknowledged: its record reached the log, the sealed
    // head did not move (the head file from before the write is put back to model that).
    let head_before = std::fs::read(head_path(dir.path())).unwrap();
    let reg = open(dir.path()).unwrap();
    reg.create_key(None, "torn", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    std::fs::write(head_path(dir.path()), &head_before).unwrap();
    let full = std::fs::read(log_path(dir.path())).unwrap();
    // Cut the last line in half (as a kill -9 in the middle of write(2) would).
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let cut = last_start + (full.len() - last_start) / 2;
    std::fs::write(log_path(dir.path()), &full[..cut]).unwrap();

    let reg = open(dir.path()).unwrap();
    assert!(
        reg.key_info(None, "torn").is_err(),
        "torn record must be ignored"
    );
    assert_eq!(
        std::fs::metadata(log_path(dir.path())).unwrap().len() as usize,
        last_start,
        "torn tail cut off"
    );
    reg.create_key(None, "after", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert!(reg.key_info(None, "after").is_ok());
    assert_eq!(reg.list_keys(None).unwrap().len(), 3);

    // Zero-filled tail (a file system that extended the size without the data).
    drop(reg);
    let mut f = std::fs::read(log_path(dir.path())).unwrap();
    f.extend_from_slice(&[0u8; 300]);
    std::fs::write(log_path(dir.path()), &f).unwrap();
    assert_eq!(open(dir.path()).unwrap().list_keys(None).unwrap().len(), 3);

    // But an acknowledged record cut in half is a truncation, refused.
    let full = std::fs::read(log_path(dir.path())).unwrap();
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    std::fs::write(log_path(dir.path()), &full[..last_start + 10]).unwrap();
    match open(dir.path()) {
        Err(e @ KeystoreError::Truncated { .. }) => {
            assert!(e.to_string().contains("truncated"), "{e}")
        }
        Err(e) => panic!("expected Truncated, got {e}"),
        Ok(_) => panic!("an acknowledged record was cut off silently"),
    }
}

#[test]
fn compaction_keeps_state_and_blocks_replay_of_old_lines() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    for _ in 0..20 {
        reg.disable_key(None, "k1").unwrap();
        reg.enable_key(None, "k1").unwrap();
    }
    reg.grant(None, "k1", grant("*")).unwrap();
    let old = lines(dir.path());
    let keys = reg.list_keys(None).unwrap();
    let kek = kek_of(&reg, "default", "k1");
    reg.compact().unwrap();
    let new = lines(dir.path());
    assert_eq!(
        new.len(),
        6,
        "header + checkpoint + store + credential + 2 keys"
    );
    assert!(old.len() > 40);
    // Writes after compaction append and survive.
    reg.create_key(None, "k3", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.list_keys(None).unwrap()[..2], keys[..2]);
    assert_eq!(kek_of(&reg, "default", "k1"), kek);
    assert!(reg.key_info(None, "k3").is_ok());
    drop(reg);
    // An old line (from before compaction) appended to the new log is refused.
    let mut t = lines(dir.path());
    t.push(old[old.len() - 2].clone());
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());
}

#[test]
fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path()).unwrap();
    assert!(matches!(open(dir.path()), Err(KeystoreError::Locked(_))));
    drop(reg);
    open(dir.path()).unwrap();
}

#[test]
fn remove_store_with_force_destroys_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    reg.remove_store("default", true).unwrap();
    assert!(reg.list_stores().is_empty());
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert!(reg.list_stores().is_empty());
    // The name and prefix can be used again.
    reg.create_store(store("default", "/keyward")).unwrap();
    assert!(reg.list_keys(None).unwrap().is_empty());
}

#[test]
fn create_keys_in_one_batch_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    let ids: Vec<String> = (0..50).map(|i| format!("batch-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let infos = reg
        .create_keys(None, &refs, KeyUsage::EncryptDecrypt)
        .unwrap();
    assert_eq!(infos.len(), 50);
    assert!(infos.iter().all(|k| k.grants.is_empty()));
    // A batch with one bad or duplicate id creates nothing.
    assert!(reg
        .create_keys(None, &["fresh", "k1"], KeyUsage::EncryptDecrypt)
        .is_err());
    assert!(reg
        .create_keys(None, &["fresh", ".."], KeyUsage::EncryptDecrypt)
        .is_err());
    assert!(reg.key_info(None, "fresh").is_err());
    let kek = kek_of(&reg, "default", "batch-7");
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.list_keys(None).unwrap().len(), 52);
    assert_eq!(kek_of(&reg, "default", "batch-7"), kek);
}

#[test]
fn health_probe_and_kms_uri_path() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    reg.check_readable().unwrap();
    assert_eq!(
        reg.list_stores()[0].xks_proxy_uri_path(),
        "/keyward/kms/xks/v1"
    );
    std::fs::remove_file(log_path(dir.path())).unwrap();
    assert!(reg.check_readable().is_err());
}

#[test]
fn superseded_records_are_compacted_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let reg = populated(dir.path());
    reg.create_store(store("big", "/big")).unwrap();
    let ids: Vec<String> = (0..4200).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    reg.create_keys(Some("big"), &refs, KeyUsage::EncryptDecrypt)
        .unwrap();
    assert!(lines(dir.path()).len() > 4200);
    // Removing the store makes 4200 records dead: the log is rewritten on this change.
    reg.remove_store("big", true).unwrap();
    assert_eq!(
        lines(dir.path()).len(),
        6,
        "header + checkpoint + store + credential + 2 keys"
    );
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.list_keys(None).unwrap().len(), 2);
}
