//! Backups of the key store (issue 14 §6), the library side, on the real `FileKeyStore` in temp
//! dirs: `Registry::export` of a store with a compaction checkpoint and records after it; the
//! file parses and verifies under the master key (not under another); changes after the backup
//! are what a restore loses; a restore into an empty directory opens to exactly the backed-up
//! keys (the same KEKs); a restore into a non-empty store is refused naming it; a changed byte is
//! refused at parse (SHA-256), and a change with the SHA-256 recomputed is refused by the MAC
//! and, restored anyway (as without the master key), by the next open naming the record.

use std::path::Path;

use keyward_keystore::backup::{self, BackupError};
use keyward_keystore::KeyUsage;
use keyward_keystore::{FileKeyStore, KeystoreError, NewStore, Registry};
use keyward_secret::Key32;
use secrecy::SecretString;
use sha2::Digest;

const MK: [u8; 32] = [0x42; 32];
const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYabc";

fn open(dir: &Path, mk: [u8; 32]) -> Result<Registry, KeystoreError> {
    Registry::open(
        Box::new(FileKeyStore::open(dir)?),
        Key32::from_bytes(&mk).unwrap(),
    )
}

fn kek(reg: &Registry, id: &str) -> Option<[u8; 32]> {
    let snap = reg.snapshot();
    let k = snap.stores.get("main")?.keys.get(id)?;
    Some(*k.kek.expose())
}

/// The file with its body replaced by `f(body)` and the SHA-256 recomputed (what someone
/// without the master key can do).
fn rewrite_body(bytes: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
    let text = std::str::from_utf8(bytes).unwrap();
    let at = text.find("\"body\":").unwrap() + "\"body\":".len();
    let body = f(&text[at..text.len() - 2]);
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    format!(
        "{{\"keyward_backup\":1,\"sha256\":\"{}\",\"mac\":\"{}\",\"body\":{body}}}\n",
        hex::encode(sha2::Sha256::digest(body.as_bytes())),
        v["mac"].as_str().unwrap()
    )
    .into_bytes()
}

#[test]
fn export_restore_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let reg = open(&a, MK).unwrap();
    reg.create_store(NewStore {
        name: "main".into(),
        uri_prefix: "/kw".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(Some("main"), "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.add_credential(Some("main"), AKID, SecretString::from(SECRET.to_string()))
        .unwrap();
    reg.disable_key(Some("main"), "k1").unwrap();
    reg.enable_key(Some("main"), "k1").unwrap();
    // A checkpoint, then records after it: both kinds of MACs are in the backup.
    reg.compact().unwrap();
    reg.create_key(Some("main"), "k2", KeyUsage::EncryptOnly)
        .unwrap();
    let k1 = kek(&reg, "k1").unwrap();
    let k2 = kek(&reg, "k2").unwrap();

    let exp = reg.export().unwrap();
    assert_eq!(exp.head, reg.head());
    let text = String::from_utf8(exp.bytes.clone()).unwrap();
    assert!(text.starts_with("{\"keyward_backup\":1,"), "{text}");
    assert!(text.ends_with("}\n") && text.lines().count() == 1);
    // Sealed: no KEK and no secret in clear (nor in Base64).
    use base64::Engine;
    for secret in [
        base64::engine::general_purpose::STANDARD.encode(k1),
        hex::encode(k1),
        SECRET.to_string(),
    ] {
        assert!(!text.contains(&secret), "a secret in clear in the backup");
    }
    let b = backup::parse(&exp.bytes).unwrap();
    assert_eq!(b.head(), &reg.head());
    assert_eq!(b.body().records.len(), exp.records);
    assert!(matches!(
        b.body().records.first().map(|r| &r.rec),
        Some(keyward_keystore::Record::Checkpoint(_))
    ));
    b.verify(&Key32::from_bytes(&MK).unwrap()).unwrap();
    assert!(matches!(
        b.verify(&Key32::from_bytes(&[7; 32]).unwrap()),
        Err(BackupError::WrongMasterKey)
    ));

    // Changes after the backup: lost by a restore.
    reg.create_key(Some("main"), "k3", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.remove_credential(Some("main"), AKID).unwrap();

    // Into a non-empty store: refused, naming it, nothing written.
    let before = std::fs::read(a.join("keystore.jsonl")).unwrap();
    drop(reg);
    let mut busy = FileKeyStore::open(&a).unwrap();
    match b.restore_into(&mut busy) {
        Err(e @ BackupError::NotEmpty { .. }) => {
            assert!(e.to_string().contains(&a.display().to_string()), "{e}")
        }
        other => panic!("restored over a store: {other:?}"),
    }
    drop(busy);
    assert_eq!(std::fs::read(a.join("keystore.jsonl")).unwrap(), before);

    // Into an empty directory: opens to the backed-up state, the same KEKs.
    let r = tmp.path().join("restored");
    let restored = b
        .restore_into(&mut FileKeyStore::open(&r).unwrap())
        .unwrap();
    assert_eq!(restored.seq, exp.head.seq);
    assert_eq!(restored.records, exp.records);
    let reg = open(&r, MK).unwrap();
    assert_eq!(reg.head(), exp.head);
    assert_eq!(kek(&reg, "k1"), Some(k1));
    assert_eq!(kek(&reg, "k2"), Some(k2));
    assert_eq!(kek(&reg, "k3"), None, "a change after the backup came back");
    let creds = reg.list_credentials(Some("main")).unwrap();
    assert_eq!(
        creds.len(),
        1,
        "the credential removed after the backup is back"
    );
    // And it takes writes again.
    reg.create_key(Some("main"), "k4", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    // A restore into it now: refused.
    assert!(matches!(
        b.restore_into(&mut FileKeyStore::open(&r).unwrap()),
        Err(BackupError::NotEmpty { .. })
    ));

    // One changed byte: refused at parse, before anything is written.
    let mut flipped = exp.bytes.clone();
    let at = text.find("\"k2\"").unwrap() + 2;
    flipped[at] = b'9';
    match backup::parse(&flipped) {
        Err(e @ BackupError::Damaged(_)) => assert!(e.to_string().contains("SHA-256"), "{e}"),
        other => panic!("a changed backup parsed: {other:?}"),
    }
    // Not JSON at all.
    assert!(matches!(
        backup::parse(b"{\"keyward_backup\":1,"),
        Err(BackupError::NotABackup(_))
    ));
    // The helper below reproduces an untouched file exactly.
    assert_eq!(rewrite_body(&exp.bytes, |b| b.to_string()), exp.bytes);

    // Changed with the SHA-256 recomputed: the MAC catches it; restored anyway (no master key
    // at restore), the next open refuses the changed record.
    let forged = rewrite_body(&exp.bytes, |b| b.replacen("\"k2\"", "\"k9\"", 2));
    let fb = backup::parse(&forged).unwrap();
    assert!(matches!(
        fb.verify(&Key32::from_bytes(&MK).unwrap()),
        Err(BackupError::Mac)
    ));
    let f = tmp.path().join("forged");
    fb.restore_into(&mut FileKeyStore::open(&f).unwrap())
        .unwrap();
    match open(&f, MK) {
        Err(e @ KeystoreError::Tampered { .. }) => {
            assert!(e.to_string().contains("altered"), "{e}")
        }
        Err(e) => panic!("expected the changed record refused, got {e}"),
        Ok(_) => panic!("a changed backup opened"),
    }
    // The head moved (records dropped from the end, head edited to match): the sealed head's
    // MAC refuses it.
    let cut = rewrite_body(&exp.bytes, |b| {
        let mut v: serde_json::Value = serde_json::from_str(b).unwrap();
        let recs = v["records"].as_array_mut().unwrap();
        let last = recs.pop().unwrap();
        let prev = recs.last().unwrap().clone();
        let seq = prev["seq"].as_u64().unwrap();
        assert_eq!(last["seq"].as_u64().unwrap(), seq + 1);
        v["head"]["seq"] = seq.into();
        v["sealed_head"]["seq"] = seq.into();
        serde_json::to_string(&v).unwrap()
    });
    let cb = backup::parse(&cut).unwrap();
    assert!(matches!(
        cb.verify(&Key32::from_bytes(&MK).unwrap()),
        Err(BackupError::Mac)
    ));
    let c = tmp.path().join("cut");
    cb.restore_into(&mut FileKeyStore::open(&c).unwrap())
        .unwrap();
    match open(&c, MK) {
        Err(e @ KeystoreError::Tampered { .. }) => {
            assert!(e.to_string().contains("sealed head"), "{e}")
        }
        Err(e) => panic!("expected the sealed head refused, got {e}"),
        Ok(_) => panic!("a cut backup opened"),
    }
}

/// A store changed on disk behind the running registry's back is not exported: the backup
/// would only fail at the restore.
#[test]
fn a_store_changed_on_disk_is_not_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path(), MK).unwrap();
    reg.create_store(NewStore {
        name: "main".into(),
        uri_prefix: "/kw".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(Some("main"), "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.export().unwrap();
    let log = tmp.path().join("keystore.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"k1\"", "\"k8\"", 1)).unwrap();
    match reg.export() {
        Err(e @ KeystoreError::Tampered { .. }) => {
            assert!(e.to_string().contains("altered"), "{e}")
        }
        other => panic!("exported a changed store: {other:?}"),
    }
}

/// The restore part of the RTO at scale (docs/backup.md): 100,000 keys exported, parsed,
/// restored into an empty directory and opened. Timing only; run it with
/// `cargo test --release -p keyward-keystore --test it -- --ignored backup_of_100k_keys --nocapture`.
#[test]
#[ignore]
fn backup_of_100k_keys() {
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let reg = open(&a, MK).unwrap();
    reg.create_store(NewStore {
        name: "main".into(),
        uri_prefix: "/kw".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    let ids: Vec<String> = (0..100_000).map(|i| format!("key-{i:06}")).collect();
    for chunk in ids.chunks(10_000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        reg.create_keys(Some("main"), &refs, KeyUsage::EncryptDecrypt)
            .unwrap();
    }
    let t = Instant::now();
    let exp = reg.export().unwrap();
    let export = t.elapsed();
    drop(reg);
    let t = Instant::now();
    let b = backup::parse(&exp.bytes).unwrap();
    let parse = t.elapsed();
    let r = tmp.path().join("restored");
    let t = Instant::now();
    b.restore_into(&mut FileKeyStore::open(&r).unwrap())
        .unwrap();
    let restore = t.elapsed();
    let t = Instant::now();
    let reg = open(&r, MK).unwrap();
    let opened = t.elapsed();
    assert_eq!(reg.head(), exp.head);
    eprintln!(
        "100k keys: backup {} MB; export {:.0} ms, parse {:.0} ms, restore {:.0} ms, open {:.0} ms",
        exp.bytes.len() / 1_000_000,
        export.as_secs_f64() * 1e3,
        parse.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3,
        opened.as_secs_f64() * 1e3
    );
}
