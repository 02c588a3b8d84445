//! Wrapped-import wrapping keys as key store records, against real files: a key added is there
//! after a reopen; a use drops it (and a second use finds nothing); an expired key is dropped
//! from memory and, at the compaction, from the log; a refused check writes nothing; and the
//! PKCS#8 bytes are never on disk in clear (raw, hex or Base64).

use std::path::Path;

use base64::Engine;
use keyward_keystore::{ImportKeyMaterial, KeystoreError, Registry};
use keyward_secret::Key32;
use rand::RngCore;
use zeroize::Zeroizing;

fn open(dir: &Path) -> Registry {
    Registry::open_dir(dir, Key32::from_bytes(&[0x33; 32]).unwrap()).unwrap()
}

fn material(token: u8, valid_to: u64) -> ImportKeyMaterial {
    let mut der = vec![0u8; 1218];
    rand::thread_rng().fill_bytes(&mut der);
    ImportKeyMaterial {
        token_sha256: format!("{token:02x}").repeat(32),
        algorithm: "RSAES_OAEP_SHA_256".into(),
        key_spec: "RSA_3072".into(),
        created: 1000,
        valid_to,
        pkcs8_der: Zeroizing::new(der),
    }
}

/// Whether `bytes` (or its hex, or its Base64 at any of the three alignments) is in `hay`.
fn in_clear(hay: &[u8], bytes: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<Vec<u8>> =
        vec![bytes[..64].to_vec(), hex::encode(&bytes[..64]).into_bytes()];
    for off in 0..3 {
        needles.push(b64.encode(&bytes[off..off + 96]).into_bytes());
    }
    needles
        .iter()
        .any(|n| hay.windows(n.len()).any(|w| w == n.as_slice()))
}

fn store_files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

#[test]
fn import_keys_are_sealed_single_use_and_compacted_away() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let a = material(0xa1, 5000);
    let b = material(0xb2, 2000);
    let c = material(0xc3, 5000);
    for k in [&a, &b, &c] {
        assert!(reg.add_import_key(k.clone(), 32, 1500).unwrap());
    }
    // The limit is counted at the time given: full at 3, room again once `b` expired.
    assert!(!reg.add_import_key(material(0xd4, 5000), 3, 1500).unwrap());
    assert_eq!(reg.import_keys_outstanding(1500).unwrap(), 3);
    // Debug never shows the key.
    let dbg = format!("{a:?}");
    assert!(dbg.contains("redacted") && !dbg.contains(&hex::encode(&a.pkcs8_der[..8])));
    drop(reg);

    // After a reopen all three are there; none is on disk in clear.
    let files = store_files(dir.path());
    for k in [&a, &b, &c] {
        assert!(
            !in_clear(&files, &k.pkcs8_der),
            "an import key is on disk in clear"
        );
        assert!(!in_clear(&files, &material(0, 0).pkcs8_der));
    }
    // (The check can fail: the same bytes written out are found.)
    assert!(in_clear(&a.pkcs8_der, &a.pkcs8_der));
    let reg = open(dir.path());
    assert_eq!(reg.import_keys_outstanding(1500).unwrap(), 3);

    // A refused check writes nothing and keeps the key.
    let e = reg
        .use_import_key::<KeystoreError>(&a.token_sha256, 1600, |k| {
            assert_eq!(k.map(|k| k.algorithm.as_str()), Some("RSAES_OAEP_SHA_256"));
            Err(KeystoreError::Invalid {
                what: "wrapping_algorithm",
                why: "other".into(),
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("wrapping_algorithm"), "{e}");
    let seq = reg.head().seq;
    // Used once: the key comes back; a second use sees nothing.
    let got = reg
        .use_import_key::<KeystoreError>(&a.token_sha256, 1600, |k| {
            assert!(k.is_some());
            Ok(())
        })
        .unwrap();
    assert_eq!(*got.pkcs8_der, *a.pkcs8_der);
    assert_eq!(reg.head().seq, seq + 1, "one `used` record");
    reg.use_import_key::<KeystoreError>(&a.token_sha256, 1601, |k| {
        assert!(k.is_none(), "used twice");
        Err(KeystoreError::Invalid {
            what: "import_token",
            why: "none".into(),
        })
    })
    .unwrap_err();
    // `b` expires at 2000: dropped from memory at 2500.
    assert_eq!(reg.import_keys_outstanding(2500).unwrap(), 1);
    let log = std::fs::read_to_string(dir.path().join("keystore.jsonl")).unwrap();
    assert_eq!(log.matches("\"import_key\"").count(), 3, "{log}");
    reg.compact().unwrap();
    drop(reg);

    // The compacted log holds only `c`; after a reopen the used one stays gone.
    let log = std::fs::read_to_string(dir.path().join("keystore.jsonl")).unwrap();
    assert_eq!(log.matches("\"import_key\"").count(), 1, "{log}");
    assert!(log.contains(&c.token_sha256) && !log.contains(&b.token_sha256));
    let reg = open(dir.path());
    assert_eq!(reg.import_keys_outstanding(2500).unwrap(), 1);
    let got = reg
        .use_import_key::<KeystoreError>(&c.token_sha256, 2600, |k| {
            assert!(k.is_some());
            Ok(())
        })
        .unwrap();
    assert_eq!(*got.pkcs8_der, *c.pkcs8_der);
    drop(reg);
    let reg = open(dir.path());
    assert_eq!(reg.import_keys_outstanding(2600).unwrap(), 0);
}

#[test]
fn a_moved_sealed_import_key_is_refused() {
    // A token hash changed on disk is refused at the open (the chain MAC; the sealed key is
    // bound to its token hash by its AAD as well).
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let a = material(0xa1, 5000);
    assert!(reg.add_import_key(a.clone(), 32, 1500).unwrap());
    drop(reg);
    let path = dir.path().join("keystore.jsonl");
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, log.replace(&a.token_sha256, &"ee".repeat(32))).unwrap();
    match Registry::open_dir(dir.path(), Key32::from_bytes(&[0x33; 32]).unwrap()) {
        Err(KeystoreError::Tampered { .. }) => {}
        Err(e) => panic!("expected Tampered, got {e}"),
        Ok(_) => panic!("a moved import key was opened"),
    }
}
