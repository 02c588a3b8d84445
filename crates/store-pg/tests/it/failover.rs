//! The fleet's database fails over to a promoted standby, or aborts transactions with
//! serialization failures: registries of several members on real servers (`LocalPostgres` with a
//! streaming standby from `pg_basebackup`), reaching whichever server is primary through a
//! libpq multi-host URL with `target_session_attrs=read-write`.
//!
//! * a synchronous standby promoted after a `kill -9` of the primary under writers: nothing
//!   acknowledged is lost, the members reconnect by themselves;
//! * an asynchronous standby that is behind, promoted: the database now holds an older head
//!   than the members applied, and they refuse it (and any write) instead of undoing a
//!   revocation or forking, and keep serving what they hold;
//! * `default_transaction_isolation = 'serializable'` on the database: concurrent writers get
//!   SQLSTATE 40001 from the server, and the store runs the aborted transaction again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_keystore::{Freshness, HeadAnchor, KeystoreError, Registry};
use keyward_keystore::{KeyStatus, KeyUsage};
use keyward_secret::Key32;
use keyward_store_pg::local::{LocalOptions, LocalPostgres};
use keyward_store_pg::{PgConfig, SharedPgStore};

use crate::common::*;
use crate::fleet::{anchored, ids, member, new_store, Book, MK};

/// The URL naming both servers: the store connects to whichever accepts writes.
fn both(primary: &LocalPostgres, standby: &LocalPostgres) -> PgConfig {
    let mut c = PgConfig::new(format!(
        "postgresql://keyward@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    ));
    c.ca_file = primary.ca_file().map(std::path::Path::to_path_buf);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn sql_at(pg: &LocalPostgres) -> postgres::Client {
    postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap()
}

fn in_recovery(pg: &LocalPostgres) -> bool {
    sql_at(pg)
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0)
}

/// Wait until `standby` has replayed everything `primary` has written so far.
fn caught_up(primary: &LocalPostgres, standby: &LocalPostgres) {
    let lsn: String = sql_at(primary)
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let mut s = sql_at(standby);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done: bool = s
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never replayed {lsn}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The keys in the database, straight from its rows: the log holds no record twice (a `seq`
/// per record; the registry checked the chain when it opened it).
fn rows(pg: &LocalPostgres) -> (i64, i64) {
    let r = sql_at(pg)
        .query_one(
            "SELECT (SELECT tip FROM keyward_head), (SELECT count(*) FROM keyward_records)",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Writers create keys as fast as they can (each on its own registry) until `stop`; each
/// returns the ids it was told were created, those it was told were not, and the errors' text.
type Outcome = (Vec<String>, Vec<String>, Vec<String>, usize);

fn writer(
    cfg: &PgConfig,
    w: usize,
    stop: &AtomicBool,
    promoted: &AtomicBool,
    retry_same_id: bool,
) -> Outcome {
    let r = member(cfg, Freshness::Unanchored);
    let (mut acked, mut refused, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut after = 0usize;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("w{w}-{i}");
        match r.create_key(None, &id, KeyUsage::EncryptDecrypt) {
            Ok(_) => {
                if promoted.load(Ordering::SeqCst) {
                    after += 1;
                }
                acked.push(id);
                i += 1;
            }
            Err(e) => {
                errors.push(format!("{e:?}"));
                if !retry_same_id {
                    refused.push(id);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    (acked, refused, errors, after)
}

/// A synchronous standby: the primary is killed (`kill -9`, no shutdown) while four members
/// write, and the standby promoted. Every write a member was told succeeded is on the promoted
/// server, exactly once; every refused one is wholly there or absent; the members find the new
/// primary through the multi-host URL by themselves (over TLS, the certificate checked) and get
/// writes through again; the chain verifies on a fresh open.
#[test]
fn a_synchronous_standby_promoted_after_a_crash_keeps_every_acknowledged_write() {
    let mut primary = server_with(LocalOptions {
        tls: true,
        ..LocalOptions::default()
    });
    let sdir = tempfile::tempdir().unwrap();
    let mut standby = primary.start_standby(sdir.path(), true).unwrap();
    let cfg = both(&primary, &standby);
    assert!(cfg.ca_file.is_some(), "the test runs over TLS");
    let first = member(&cfg, Freshness::Unanchored);
    new_store(&first);
    drop(first);

    let stop = AtomicBool::new(false);
    let promoted = AtomicBool::new(false);
    let outcomes: Vec<Outcome> = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (cfg, stop, promoted) = (&cfg, &stop, &promoted);
                sc.spawn(move || writer(cfg, w, stop, promoted, false))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2000));
        primary.kill9().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        standby.promote().unwrap();
        promoted.store(true, Ordering::SeqCst);
        eprintln!("promoted in {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(3000));
        stop.store(true, Ordering::SeqCst);
        writers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(primary.pid().is_none() && !in_recovery(&standby));

    let reader = member(&cfg, Freshness::Unanchored);
    let present: HashSet<String> = ids(&reader).into_iter().collect();
    let mut n_acked = 0;
    let mut n_refused = 0;
    for (w, (acked, refused, errors, after)) in outcomes.iter().enumerate() {
        n_acked += acked.len();
        n_refused += refused.len();
        // (More would measure the race between four writers, which one may keep losing.)
        assert!(
            *after >= 1,
            "writer {w} got no write through after the promotion: it did not reconnect \
             (last errors: {:?})",
            errors.iter().rev().take(3).collect::<Vec<_>>()
        );
        for id in acked {
            assert!(
                present.contains(id),
                "acknowledged key {id} lost in the failover"
            );
        }
    }
    assert!(
        n_refused > 0,
        "the crash refused no write: it did not happen while they wrote"
    );
    let all: HashSet<&String> = outcomes
        .iter()
        .flat_map(|(a, r, _, _)| a.iter().chain(r.iter()))
        .collect();
    for id in &present {
        assert!(all.contains(id), "a key nobody wrote: {id}");
    }
    let committed_refused = outcomes
        .iter()
        .flat_map(|(_, r, _, _)| r.iter())
        .filter(|id| present.contains(*id))
        .count();
    // One store record plus one per key, each once.
    let (tip, count) = rows(&standby);
    assert_eq!(tip, count, "the records end at the tip, none twice");
    assert_eq!(
        usize::try_from(tip).unwrap(),
        present.len() + 1,
        "one record per key present"
    );
    // Writes go through again, and every member ends on one head.
    reader
        .create_key(None, "after-failover", KeyUsage::EncryptDecrypt)
        .unwrap();
    let check = member(&cfg, Freshness::Unanchored);
    assert_eq!(check.head(), reader.head());
    eprintln!(
        "{n_acked} writes acknowledged and all kept; {n_refused} refused, of which \
         {committed_refused} had committed"
    );
}

/// An asynchronous standby that stopped receiving (its WAL receiver cut off) while the
/// members went on writing, a disable among it; the primary is killed and the standby
/// promoted: the database now holds an older head than the members have applied. The
/// members refuse it (`SharedRollback`), refuse every write rather than fork the history,
/// and keep serving what they hold (the key stays disabled); a member booting now is refused
/// by the KRS floor (`Rollback`). A member with no floor that opens now and writes at the
/// database's tip does fork it: the members that saw the newer head refuse that history too
/// (its records do not chain from their head). What is not stopped: a member that had not
/// applied the lost records yet writes on top of the older head; the write commits and takes
/// effect on it, and its caller gets `NotAnchored` (the KRS holds a head not on its history).
///
/// (Pausing the standby's replay with `pg_wal_replay_pause()` does not make it behind: a
/// promotion replays all the WAL it received first; tried here, it ended at the members'
/// head. Cutting off its WAL receiver does.)
#[test]
fn an_asynchronous_standby_that_was_behind_is_refused_not_applied() {
    let mut primary = server();
    let sdir = tempfile::tempdir().unwrap();
    let mut standby = primary.start_standby(sdir.path(), false).unwrap();
    let cfg = both(&primary, &standby);
    // The members record their heads at the KRS (its head book's rules).
    let book = Arc::new(Book::default());
    let a = member(&cfg, anchored(&book));
    new_store(&a);
    a.create_key(None, "k1", KeyUsage::EncryptDecrypt).unwrap();
    a.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    caught_up(&primary, &standby);
    // A member that will not have applied what follows when the failover comes (it stays at
    // record 3: a NOTIFY not yet acted on).
    let lag = member(&cfg, anchored(&book));
    assert_eq!(
        rows(&standby),
        (3, 3),
        "the standby has the first three records"
    );

    // The standby stops receiving: what follows is committed on the primary only.
    let mut s = sql_at(&standby);
    s.batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s
        .query_opt("SELECT 1 FROM pg_stat_wal_receiver", &[])
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the WAL receiver did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.disable_key(None, "k1").unwrap();
    a.create_key(None, "k3", KeyUsage::EncryptDecrypt).unwrap();
    let b = member(&cfg, anchored(&book));
    assert_eq!((a.head().seq, b.head().seq), (5, 5));
    assert_eq!(book.current().unwrap().map(|h| h.seq), Some(5));
    assert_eq!(rows(&standby), (3, 3), "the standby did not receive them");

    primary.kill9().unwrap();
    standby.promote().unwrap();
    assert_eq!(
        rows(&standby),
        (3, 3),
        "the promoted server holds the older head"
    );

    for (name, m) in [("a", &a), ("b", &b)] {
        match m.refresh() {
            Err(e @ KeystoreError::SharedRollback { .. }) => {
                let t = e.to_string();
                assert!(
                    t.contains("rollback") && t.contains("record 3") && t.contains("record 5"),
                    "{t}"
                );
                eprintln!("member {name} refreshing: {t}");
            }
            other => panic!("member {name} accepted the older database: {other:?}"),
        }
        // The revocation is not undone, and nothing is forgotten.
        assert_eq!(m.key_info(None, "k1").unwrap().status, KeyStatus::Disabled);
        assert_eq!(ids(m), ["k1", "k2", "k3"]);
        assert_eq!(m.head().seq, 5);
    }
    // Writes are refused with the same error, and leave the database as it was.
    match b.enable_key(None, "k1") {
        Err(KeystoreError::SharedRollback { .. }) => {}
        other => panic!("a write on the older database: {other:?}"),
    }
    match a.create_key(None, "k4", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::SharedRollback { .. }) => {}
        other => panic!("a write on the older database: {other:?}"),
    }
    assert_eq!(
        rows(&standby),
        (3, 3),
        "no member wrote on top of the older head"
    );

    // A member booting now gets the KRS's head as its floor: it refuses the store.
    match Registry::open_with(
        Box::new(SharedPgStore::connect(&cfg).unwrap()),
        Key32::from_bytes(&MK).unwrap(),
        anchored(&book),
    ) {
        Err(KeystoreError::Rollback {
            store_seq: 3,
            anchor_seq: 5,
        }) => {}
        Err(e) => panic!("expected Rollback, got {e}"),
        Ok(_) => panic!("a member booted on the older database"),
    }

    // The lagging member finds the database where it left it and writes on top of it: the
    // write commits and is in effect on it, but the KRS holds a later head that is not on its
    // history, and the caller is told so. Nobody else takes that history.
    match lag.create_key(None, "late", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::NotAnchored(why)) => {
            assert!(why.contains("not on this member's history"), "{why}");
            eprintln!("the lagging member's write: {why}");
        }
        other => panic!("the lagging member's write on the older database: {other:?}"),
    }
    assert_eq!(rows(&standby), (4, 4), "its record is in the database");
    assert_eq!(
        book.current().unwrap().map(|h| h.seq),
        Some(5),
        "not at the KRS"
    );
    assert!(matches!(
        a.refresh(),
        Err(KeystoreError::SharedRollback {
            store_seq: 4,
            member_seq: 5
        })
    ));

    // A member without a KRS floor (development mode) cannot know; it writes at the
    // database's tip, past the old members' head. They refuse that history: its records do
    // not chain from their head.
    let c = member(&cfg, Freshness::Unanchored);
    assert_eq!(c.key_info(None, "k1").unwrap().status, KeyStatus::Enabled);
    for k in ["f1", "f2", "f3"] {
        c.create_key(None, k, KeyUsage::EncryptDecrypt).unwrap();
    }
    assert_eq!(c.head().seq, 7);
    match a.refresh() {
        Err(KeystoreError::Tampered { why, .. }) => {
            assert!(why.contains("another history"), "{why}")
        }
        other => panic!("member a applied a forked history: {other:?}"),
    }
    assert_eq!(a.key_info(None, "k1").unwrap().status, KeyStatus::Disabled);
    assert!(a.create_key(None, "k5", KeyUsage::EncryptDecrypt).is_err());
    assert_eq!(a.head().seq, 5);
}

/// A DBA sets `default_transaction_isolation = 'serializable'` on the database: four members
/// writing at once hit SQLSTATE 40001 (the server's log shows it). Each write is acknowledged
/// or refused as a plain conflict (nothing else), nothing is half-applied, and every key is
/// there once.
#[test]
fn serialization_failures_are_retried_and_nothing_is_half_applied() {
    let s = server();
    sql(&s)
        .batch_execute("ALTER DATABASE postgres SET default_transaction_isolation = 'serializable'")
        .unwrap();
    let level: String = sql(&s)
        .query_one("SHOW default_transaction_isolation", &[])
        .unwrap()
        .get(0);
    assert_eq!(level, "serializable");
    let cfg = s.config();
    let first = member(&cfg, Freshness::Unanchored);
    new_store(&first);
    drop(first);

    const KEYS: usize = 30;
    let outcomes: Vec<(Vec<String>, Vec<String>)> = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let cfg = &cfg;
                sc.spawn(move || {
                    let r = member(cfg, Freshness::Unanchored);
                    let (mut acked, mut errors) = (Vec::new(), Vec::new());
                    for i in 0..KEYS {
                        let id = format!("w{w}-{i}");
                        loop {
                            match r.create_key(None, &id, KeyUsage::EncryptDecrypt) {
                                Ok(_) => break,
                                Err(e) => errors.push(format!("{e:?}")),
                            }
                        }
                        acked.push(id);
                    }
                    (acked, errors)
                })
            })
            .collect();
        writers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let log = std::fs::read_to_string(s.log_path()).unwrap();
    let aborted = log.matches("could not serialize access").count();
    assert!(
        aborted > 0,
        "no serialization failure happened: the test did not test it"
    );
    let mut refused = 0;
    for (_, errors) in &outcomes {
        for e in errors {
            assert!(
                e.starts_with("Conflict"),
                "a write was refused with something else than a conflict: {e}"
            );
            refused += 1;
        }
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = outcomes.iter().flat_map(|(a, _)| a.clone()).collect();
        v.sort();
        v
    };
    let check = member(&cfg, Freshness::Unanchored);
    assert_eq!(ids(&check), want, "every key there, once");
    assert_eq!(rows(&s), (4 * KEYS as i64 + 1, 4 * KEYS as i64 + 1));
    eprintln!(
        "{} serialization failures in the server's log; {refused} writes refused as conflicts \
         and retried by the writer",
        aborted
    );
}

/// The multi-host URL without `target_session_attrs=read-write` is refused at configuration,
/// naming the key: a member could otherwise settle on a read-only standby.
#[test]
fn a_multi_host_url_must_ask_for_the_read_write_server() {
    let e = match keyward_store_pg::PgKeyStore::connect(&PgConfig::new(
        "postgresql://keyward@127.0.0.1:1,127.0.0.1:2/postgres",
    )) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(
        e.contains("url") && e.contains("target_session_attrs=read-write"),
        "{e}"
    );
}
