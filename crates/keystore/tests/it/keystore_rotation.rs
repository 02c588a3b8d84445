//! Key rotation in the registry against real files: a rotated key keeps every earlier
//! version's KEK (sealed, surviving a reopen and a compaction) and encrypts with a new one;
//! the schedule is due only when the current version is old enough, and a due rotation
//! decided twice (two members) happens once.

use std::path::Path;

use keyward_keystore::KeyUsage;
use keyward_keystore::{KeystoreError, NewStore, Registry, MIN_ROTATION_SECS};
use keyward_secret::Key32;

fn open(dir: &Path) -> Registry {
    Registry::open_dir(dir, Key32::from_bytes(&[0x22; 32]).unwrap()).unwrap()
}

fn kek(reg: &Registry, id: &str, version: u32) -> Option<[u8; 32]> {
    let snap = reg.snapshot();
    let k = snap.stores["s"].keys.get(id)?.clone();
    k.kek_of(version).map(|k| *k.expose())
}

#[test]
fn rotation_keeps_every_version_across_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    reg.create_store(NewStore {
        name: "s".into(),
        uri_prefix: String::new(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    let v1 = kek(&reg, "k", 1).unwrap();
    let info = reg.rotate_key(None, "k").unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(
        info.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );
    let v2 = kek(&reg, "k", 2).unwrap();
    assert_ne!(v1, v2, "a rotation makes a new KEK");
    assert_eq!(kek(&reg, "k", 1), Some(v1), "version 1 is kept");
    reg.rotate_key(None, "k").unwrap();
    // A later change (disable) keeps every version too.
    reg.disable_key(None, "k").unwrap();
    drop(reg);

    let reg = open(dir.path());
    assert_eq!(reg.key_info(None, "k").unwrap().version, 3);
    assert_eq!(kek(&reg, "k", 1), Some(v1));
    assert_eq!(kek(&reg, "k", 2), Some(v2));
    assert_eq!(kek(&reg, "k", 4), None);
    reg.compact().unwrap();
    drop(reg);
    let reg = open(dir.path());
    assert_eq!(kek(&reg, "k", 1), Some(v1), "compaction keeps the versions");
    assert_eq!(kek(&reg, "k", 2), Some(v2));
    // No KEK of any version is on disk in clear.
    let disk = std::fs::read(dir.path().join("keystore.jsonl")).unwrap();
    for k in [v1, v2] {
        assert!(!disk.windows(32).any(|w| w == k));
        assert!(!String::from_utf8_lossy(&disk).contains(&hex::encode(k)));
    }
}

#[test]
fn the_schedule_rotates_once_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    reg.create_store(NewStore {
        name: "s".into(),
        uri_prefix: String::new(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    match reg.set_rotation(None, "k", Some(60)) {
        Err(KeystoreError::Invalid { what, .. }) => assert_eq!(what, "rotation period"),
        other => panic!("a one-minute schedule was accepted: {other:?}"),
    }
    let info = reg
        .set_rotation(None, "k", Some(MIN_ROTATION_SECS))
        .unwrap();
    assert_eq!(info.rotate_every_secs, Some(MIN_ROTATION_SECS));
    let made = info.versions[0].created;
    assert!(reg.rotations_due(made + MIN_ROTATION_SECS - 1).is_empty());
    let due = reg.rotations_due(made + MIN_ROTATION_SECS);
    assert_eq!(due, [("s".into(), "k".into(), 1)]);
    // Two deciders (two members of a fleet) with the same view: one rotation.
    let is_due = |v: u32| move |k: &keyward_keystore::LiveKey| k.version == v;
    let (_, first) = reg.rotate_key_if(Some("s"), "k", is_due(1)).unwrap();
    let (info, second) = reg.rotate_key_if(Some("s"), "k", is_due(1)).unwrap();
    assert!(first && !second);
    assert_eq!(info.version, 2);
    // The schedule survives the rotation and a reopen; the new version is not due yet.
    drop(reg);
    let reg = open(dir.path());
    assert_eq!(
        reg.key_info(None, "k").unwrap().rotate_every_secs,
        Some(MIN_ROTATION_SECS)
    );
    let since = reg.key_info(None, "k").unwrap().versions[0].created;
    assert!(since >= made);
    assert!(reg.rotations_due(since + MIN_ROTATION_SECS - 1).is_empty());
    assert_eq!(reg.rotations_due(since + MIN_ROTATION_SECS).len(), 1);
    reg.set_rotation(None, "k", None).unwrap();
    assert!(reg.rotations_due(u64::MAX / 2).is_empty());
}

fn one_key(dir: &Path) -> Registry {
    let reg = open(dir);
    reg.create_store(NewStore {
        name: "s".into(),
        uri_prefix: String::new(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    reg.create_key(None, "other", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.rotate_key(None, "k").unwrap();
    reg
}

#[test]
fn scheduled_destruction_disables_then_erases_every_version() {
    use keyward_keystore::KeyStatus;
    let dir = tempfile::tempdir().unwrap();
    let reg = one_key(dir.path());
    let keks = [kek(&reg, "k", 1).unwrap(), kek(&reg, "k", 2).unwrap()];
    let now = 1_900_000_000;
    for bad in [6, 31] {
        assert!(matches!(
            reg.schedule_destroy(None, "k", bad, now),
            Err(KeystoreError::Invalid { what: "days", .. })
        ));
    }
    let info = reg.schedule_destroy(None, "k", 7, now).unwrap();
    assert_eq!(info.status, KeyStatus::Disabled, "disabled at once");
    assert_eq!(info.destroy_at, Some(now + 7 * 86_400));
    assert!(
        reg.enable_key(None, "k").is_err(),
        "enable is refused while scheduled"
    );
    // Cancel restores the status it had; schedule again.
    assert_eq!(
        reg.cancel_destroy(None, "k").unwrap().status,
        KeyStatus::Enabled
    );
    reg.schedule_destroy(None, "k", 7, now).unwrap();
    // Before the date nothing happens; at the date it is destroyed once.
    assert!(!reg.destroy_due(None, "k", now + 7 * 86_400 - 1).unwrap());
    assert_eq!(
        reg.destructions_due(now + 7 * 86_400),
        [("s".into(), "k".into())]
    );
    assert!(reg.destroy_due(None, "k", now + 7 * 86_400).unwrap());
    assert!(kek(&reg, "k", 1).is_none() && kek(&reg, "k", 2).is_none());
    assert!(reg.snapshot().stores["s"].destroyed.contains_key("k"));
    // The id is never reused.
    assert!(reg.create_key(None, "k", KeyUsage::EncryptDecrypt).is_err());
    drop(reg);

    // After a restart it is still gone, the other key untouched, and no record of the log
    // holds any of its sealed KEKs (the store was compacted: crypto-shredded).
    let reg = open(dir.path());
    assert!(reg.snapshot().stores["s"].destroyed.contains_key("k"));
    assert!(kek(&reg, "other", 1).is_some());
    let log = std::fs::read_to_string(dir.path().join("keystore.jsonl")).unwrap();
    let with_k: Vec<&str> = log.lines().filter(|l| l.contains("\"id\":\"k\"")).collect();
    assert!(!with_k.is_empty());
    assert!(
        with_k.iter().all(|l| !l.contains("\"kek\"")),
        "a record still carries a sealed KEK of the destroyed key: {with_k:?}"
    );
    let _ = keks;
}
