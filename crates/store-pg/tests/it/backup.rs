//! Backups on the PostgreSQL store (issue 14 §6): a fleet's database is exported by one
//! member's registry, the database is lost, the backup is restored into a new, empty database
//! and opens there to exactly the backed-up state (two members see it, writes continue by
//! compare-and-set from the restored tip); a database that is not empty is refused, naming it;
//! and a file store's backup restores into PostgreSQL (moving a single appliance to a fleet).

use keyward_keystore::backup::{self, BackupError};
use keyward_keystore::KeyUsage;
use keyward_keystore::{FileKeyStore, KeyStore, KeystoreError, NewStore, Registry};
use keyward_secret::Key32;
use keyward_store_pg::{PgConfig, PgKeyStore};

use crate::common::*;

const MK: [u8; 32] = [0x5c; 32];

fn open(backend: Box<dyn KeyStore>) -> Result<Registry, KeystoreError> {
    Registry::open(backend, Key32::from_bytes(&MK).unwrap())
}

fn open_pg(cfg: &PgConfig) -> Registry {
    open(Box::new(PgKeyStore::connect(cfg).unwrap())).unwrap()
}

fn populate(reg: &Registry) {
    reg.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    for id in ["k1", "k2"] {
        reg.create_key(None, id, KeyUsage::EncryptDecrypt).unwrap();
    }
}

fn kek(reg: &Registry, id: &str) -> Option<[u8; 32]> {
    let snap = reg.snapshot();
    let k = snap.stores.get("default")?.keys.get(id)?;
    Some(*k.kek.expose())
}

#[test]
fn a_lost_database_is_restored_from_a_backup_into_an_empty_one() {
    let old = server();
    let reg = open_pg(&cfg(&old));
    populate(&reg);
    let k1 = kek(&reg, "k1").unwrap();
    let exp = reg.export().unwrap();
    // Another member's write after the backup: not in it.
    open_pg(&cfg(&old))
        .create_key(None, "k3", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    let b = backup::parse(&exp.bytes).unwrap();
    b.verify(&Key32::from_bytes(&MK).unwrap()).unwrap();

    // Not over the database that still holds the store.
    match b.restore_into(&mut PgKeyStore::connect(&cfg(&old)).unwrap()) {
        Err(e @ BackupError::NotEmpty { .. }) => {
            assert!(e.to_string().contains(&cfg(&old).location()), "{e}")
        }
        other => panic!("restored over a store: {other:?}"),
    }

    // The database is lost; a new, empty one takes the backup.
    drop(old);
    let new = server();
    let r = b
        .restore_into(&mut PgKeyStore::connect(&cfg(&new)).unwrap())
        .unwrap();
    assert_eq!(r.seq, exp.head.seq);
    let m1 = open_pg(&cfg(&new));
    let m2 = open_pg(&cfg(&new));
    assert_eq!(m1.head(), exp.head);
    assert_eq!(kek(&m1, "k1"), Some(k1));
    assert_eq!(kek(&m2, "k1"), Some(k1));
    assert!(
        kek(&m1, "k3").is_none(),
        "a write after the backup came back"
    );
    // Writes continue from the restored tip, by compare-and-set; the other member applies them.
    m1.create_key(None, "k4", KeyUsage::EncryptDecrypt).unwrap();
    assert!(m2.refresh().unwrap());
    assert!(kek(&m2, "k4").is_some());
    assert_eq!(m2.head().seq, exp.head.seq + 1);
    // Now not empty: refused.
    assert!(matches!(
        b.restore_into(&mut PgKeyStore::connect(&cfg(&new)).unwrap()),
        Err(BackupError::NotEmpty { .. })
    ));

    // A single appliance's file store, moved into a database by backup and restore.
    let dir = tempfile::tempdir().unwrap();
    let file_reg = open(Box::new(FileKeyStore::open(dir.path()).unwrap())).unwrap();
    populate(&file_reg);
    let fk = kek(&file_reg, "k2").unwrap();
    let fexp = file_reg.export().unwrap();
    drop(file_reg);
    let third = server();
    backup::parse(&fexp.bytes)
        .unwrap()
        .restore_into(&mut PgKeyStore::connect(&cfg(&third)).unwrap())
        .unwrap();
    let moved = open_pg(&cfg(&third));
    assert_eq!(moved.head(), fexp.head);
    assert_eq!(kek(&moved, "k2"), Some(fk));
    moved
        .create_key(None, "k5", KeyUsage::EncryptDecrypt)
        .unwrap();
}
