//! The registry on the PostgreSQL store: create a store and keys with a test master key, see
//! them from a second registry on another connection, and refuse rows tampered with in the
//! database (the backend is trusted for nothing). The registry runs in tokio spawn_blocking
//! threads, as the appliance runs it, which checks that the blocking client works there.

use keyward_keystore::KeyUsage;
use keyward_keystore::{KeystoreError, NewStore, Registry};
use keyward_secret::Key32;
use keyward_store_pg::{PgConfig, PgKeyStore};

use crate::common::*;

const MK: [u8; 32] = [0x4b; 32];

fn open(cfg: &PgConfig) -> Result<Registry, KeystoreError> {
    Registry::open(
        Box::new(PgKeyStore::connect(cfg)?),
        Key32::from_bytes(&MK).unwrap(),
    )
}

/// A store "default" with keys k1..k3 (records 1..4).
fn populate(cfg: &PgConfig) {
    let reg = open(cfg).unwrap();
    reg.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    for id in ["k1", "k2", "k3"] {
        reg.create_key(None, id, KeyUsage::EncryptDecrypt).unwrap();
    }
}

fn key_ids(reg: &Registry) -> Vec<String> {
    let mut ids: Vec<String> = reg
        .list_keys(None)
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn blocking_client_in_spawn_blocking() {
    let s = server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = cfg(&s);
    rt.block_on(async move {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || populate(&c))
            .await
            .unwrap();
        // A second registry, on its own connection, sees what the first wrote.
        let c = cfg.clone();
        let ids = tokio::task::spawn_blocking(move || {
            let reg = open(&c).unwrap();
            assert_eq!(reg.head().seq, 4);
            assert_eq!(reg.list_stores().len(), 1);
            key_ids(&reg)
        })
        .await
        .unwrap();
        assert_eq!(ids, ["k1", "k2", "k3"]);
    });
}

#[test]
fn reopen_sees_the_store_and_keys() {
    let s = server();
    populate(&cfg(&s));
    let reg = open(&cfg(&s)).unwrap();
    assert_eq!(key_ids(&reg), ["k1", "k2", "k3"]);
    reg.disable_key(None, "k2").unwrap();
    let again = open(&cfg(&s)).unwrap();
    assert_eq!(again.head().seq, 5);
    assert_eq!(
        again.key_info(None, "k2").unwrap().status,
        keyward_keystore::KeyStatus::Disabled
    );
}

fn expect_tampered(cfg: &PgConfig, what: &str) {
    match open(cfg) {
        Err(KeystoreError::Tampered { .. }) => {}
        Err(e) => panic!("{what}: expected Tampered, got {e}"),
        Ok(_) => panic!("{what}: a tampered store was opened"),
    }
}

#[test]
fn a_record_changed_in_the_database_is_refused() {
    let s = server();
    populate(&cfg(&s));
    let n = sql(&s)
        .execute(
            "UPDATE keyward_records SET rec = replace(rec::text, 'us-east-1', 'eu-west-1')::json \
             WHERE seq = 1",
            &[],
        )
        .unwrap();
    assert_eq!(n, 1);
    expect_tampered(&cfg(&s), "UPDATE of record 1");
}

#[test]
fn a_record_deleted_in_the_database_is_refused() {
    let s = server();
    populate(&cfg(&s));
    let n = sql(&s)
        .execute("DELETE FROM keyward_records WHERE seq = 2", &[])
        .unwrap();
    assert_eq!(n, 1);
    expect_tampered(&cfg(&s), "DELETE of record 2");
}
