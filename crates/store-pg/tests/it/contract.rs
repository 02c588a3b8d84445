//! The KeyStore contract: init and header, append and load order, the compare-and-set between
//! connections, tip, the monotonic sealed head, rewrite, compact, truncate; the schema
//! migration; the fleet board.

use std::sync::Barrier;

use keyward_keystore::{FleetBoard, Member};
use keyward_keystore::{KeyStore, KeystoreError};
use keyward_store_pg::{migrate, PgFleetBoard, SCHEMA_VERSION};

use crate::common::*;

#[test]
fn init_append_load_and_a_second_connection() {
    let s = server();
    let mut a = connect(&s);
    assert!(a.shared());
    assert_eq!(a.header().unwrap(), None);
    assert_eq!(a.tip().unwrap(), Some(0));
    assert!(!a.location().contains('@'), "{}", a.location());
    a.store_head(&sealed("aa", 0)).unwrap();
    a.init(&header("aa")).unwrap();
    assert_eq!(a.header().unwrap(), Some(header("aa")));
    assert!(loaded(&mut a).is_empty());

    a.append(&rec(1, "one")).unwrap();
    let mut batch = vec![rec(2, "two"), rec(3, "three")];
    batch[0].batch = Some(2);
    a.append_batch(&batch).unwrap();
    assert_eq!(a.tip().unwrap(), Some(3));
    assert_eq!(a.record_count(), 3);
    let want = vec![rec(1, "one"), batch[0].clone(), batch[1].clone()];
    assert_eq!(loaded(&mut a), want);

    // Exactly the JSON the record serializes to is stored.
    let mut db = sql(&s);
    let text: String = db
        .query_one("SELECT rec::text FROM keyward_records WHERE seq = 2", &[])
        .unwrap()
        .get(0);
    assert_eq!(text, serde_json::to_string(&batch[0]).unwrap());

    let mut b = connect(&s);
    assert_eq!(b.header().unwrap(), Some(header("aa")));
    assert_eq!(loaded(&mut b), want);
    assert_eq!(b.record_count(), 3);
    assert_eq!(b.tip().unwrap(), Some(3));
    assert_eq!(b.load_head().unwrap(), Some(sealed("aa", 0)));
    // Someone initialised it already: a conflict, and nothing changed.
    b.store_head(&sealed("bb", 0)).unwrap();
    match b.init(&header("bb")) {
        Err(KeystoreError::Conflict {
            expected: 0,
            found: 0,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(b.header().unwrap(), Some(header("aa")));
    assert_eq!(b.load_head().unwrap(), Some(sealed("aa", 0)));
    assert_eq!(loaded(&mut b), want);
}

#[test]
fn racing_appends_of_the_same_seq_have_one_winner() {
    let s = server();
    let mut a = initialised(&s, "aa");
    let mut b = connect(&s);
    b.load(&mut |_| Ok(())).unwrap();
    let mut winners = Vec::new();
    for seq in 1..=25u64 {
        let barrier = Barrier::new(2);
        let (ra, rb) = std::thread::scope(|sc| {
            let ta = sc.spawn(|| {
                barrier.wait();
                a.append(&rec(seq, &format!("a{seq}")))
            });
            let tb = sc.spawn(|| {
                barrier.wait();
                b.append(&rec(seq, &format!("b{seq}")))
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let (won, lost) = match (ra, rb) {
            (Ok(()), Err(e)) => (format!("a{seq}"), e),
            (Err(e), Ok(())) => (format!("b{seq}"), e),
            other => panic!("seq {seq}: exactly one append must win: {other:?}"),
        };
        match lost {
            KeystoreError::Conflict { expected, found } => {
                assert_eq!((expected, found), (seq, seq))
            }
            e => panic!("the loser must get Conflict, got {e}"),
        }
        winners.push(won);
    }
    let got = loaded(&mut a);
    assert_eq!(got.len(), 25, "nothing of a loser is stored");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.mac, winners[i]);
    }
}

#[test]
fn a_stale_or_gapped_append_is_a_conflict_and_writes_nothing() {
    let s = server();
    let mut a = initialised(&s, "aa");
    a.append_batch(&[rec(1, "1"), rec(2, "2"), rec(3, "3")])
        .unwrap();
    for bad in [
        vec![rec(5, "x")],
        vec![rec(3, "x")],
        vec![rec(2, "x"), rec(3, "y")],
    ] {
        match a.append_batch(&bad) {
            Err(KeystoreError::Conflict { expected, found }) => {
                assert_eq!((expected, found), (bad[0].seq, 3))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        a.append_batch(&[rec(4, "x"), rec(6, "y")]),
        Err(KeystoreError::Invalid { .. })
    ));
    // A tip put back by hand: the record already there makes it a conflict (primary key).
    sql(&s)
        .execute("UPDATE keyward_head SET tip = 1", &[])
        .unwrap();
    match a.append(&rec(2, "again")) {
        Err(KeystoreError::Conflict {
            expected: 2,
            found: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
    let got = loaded(&mut a);
    assert_eq!(
        got.iter().map(|r| r.mac.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
}

#[test]
fn the_sealed_head_only_moves_forward() {
    let s = server();
    let mut a = initialised(&s, "aa");
    let mut b = connect(&s);
    a.store_head(&sealed("aa", 5)).unwrap();
    assert_eq!(b.load_head().unwrap(), Some(sealed("aa", 5)));
    b.store_head(&sealed("aa", 3)).unwrap();
    a.store_head(&sealed("aa", 4)).unwrap();
    assert_eq!(a.load_head().unwrap(), Some(sealed("aa", 5)));
    b.store_head(&sealed("aa", 7)).unwrap();
    assert_eq!(a.load_head().unwrap(), Some(sealed("aa", 7)));
}

#[test]
fn rewrite_compact_and_truncate() {
    let s = server();
    let mut a = initialised(&s, "aa");
    a.append_batch(&[rec(1, "1"), rec(2, "2"), rec(3, "3"), rec(4, "4")])
        .unwrap();

    a.truncate_after(2).unwrap();
    assert_eq!(a.tip().unwrap(), Some(2));
    assert_eq!(a.record_count(), 2);
    assert_eq!(loaded(&mut a), vec![rec(1, "1"), rec(2, "2")]);
    a.append(&rec(3, "3b")).unwrap();

    // Compaction: a checkpoint at seq 3 and its live records, all with seq 3.
    let compacted = vec![rec(3, "ck"), rec(3, "live1"), rec(3, "live2")];
    let mut other = connect(&s);
    other.load(&mut |_| Ok(())).unwrap();
    other.append(&rec(4, "4")).unwrap();
    // The log moved on since: refused, nothing replaced.
    assert!(matches!(
        a.compact(&mut compacted.clone().into_iter().map(Ok)),
        Err(KeystoreError::Conflict {
            expected: 3,
            found: 4
        })
    ));
    other.truncate_after(3).unwrap();
    a.compact(&mut compacted.clone().into_iter().map(Ok))
        .unwrap();
    assert_eq!(loaded(&mut a), compacted);
    assert_eq!(a.tip().unwrap(), Some(3));
    assert_eq!(a.header().unwrap(), Some(header("aa")));
    a.append(&rec(4, "after")).unwrap();
    assert_eq!(loaded(&mut a).len(), 4);
    // An iterator error replaces nothing.
    let err = a.compact(&mut vec![Ok(rec(4, "x")), Err(KeystoreError::Seal)].into_iter());
    assert!(matches!(err, Err(KeystoreError::Seal)));
    assert_eq!(loaded(&mut a).len(), 4);

    // Rewrite: a new header and log in one go (a restore); the sealed head given just before
    // goes with it.
    let restored: Vec<_> = (1..=1500).map(|i| rec(i, &format!("r{i}"))).collect();
    a.store_head(&sealed("bb", 1500)).unwrap();
    a.rewrite(&header("bb"), &mut restored.clone().into_iter().map(Ok))
        .unwrap();
    let mut b = connect(&s);
    assert_eq!(b.header().unwrap(), Some(header("bb")));
    assert_eq!(b.load_head().unwrap(), Some(sealed("bb", 1500)));
    assert_eq!(loaded(&mut b), restored);
    assert_eq!(b.tip().unwrap(), Some(1500));
    b.append(&rec(1501, "next")).unwrap();
}

#[test]
fn two_members_initialising_at_once_agree_on_one_store() {
    let s = server();
    let mut a = connect(&s);
    let mut b = connect(&s);
    // Both saw no header and stored their own empty head; then both initialise.
    b.store_head(&sealed("bb", 0)).unwrap();
    a.store_head(&sealed("aa", 0)).unwrap();
    a.init(&header("aa")).unwrap();
    assert!(matches!(
        b.init(&header("bb")),
        Err(KeystoreError::Conflict { .. })
    ));
    // The head that won is the header's store's.
    assert_eq!(b.header().unwrap(), Some(header("aa")));
    assert_eq!(b.load_head().unwrap(), Some(sealed("aa", 0)));
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let s = server();
    let first = migrate(&cfg(&s)).unwrap();
    assert_eq!(
        (first.from, first.to, first.applied.clone()),
        (0, SCHEMA_VERSION, vec![1, 2])
    );
    let _ks = connect(&s);
    let again = migrate(&cfg(&s)).unwrap();
    assert_eq!((again.from, again.to), (SCHEMA_VERSION, SCHEMA_VERSION));
    assert!(again.applied.is_empty());
    let n: i64 = sql(&s)
        .query_one("SELECT count(*) FROM keyward_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // Several members migrating together: each version applied once.
    std::thread::scope(|sc| {
        for _ in 0..3 {
            sc.spawn(|| migrate(&cfg(&s)).unwrap());
        }
    });
    // A database from a newer build is refused.
    sql(&s)
        .execute("INSERT INTO keyward_schema (version) VALUES (99)", &[])
        .unwrap();
    let e = migrate(&cfg(&s)).unwrap_err().to_string();
    assert!(e.contains("99") && e.contains("upgrade"), "{e}");
}

#[test]
fn fleet_board_heartbeats() {
    let s = server();
    let board = PgFleetBoard::connect(&cfg(&s)).unwrap();
    let member = |id: &str, seq| Member {
        id: id.into(),
        version: "0.1.0".into(),
        label: "az-a/host".into(),
        last_seen: 0,
        keks: 3,
        seq,
    };
    board.beat(&member("m1", 4)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    board.beat(&member("m2", 5)).unwrap();
    board.beat(&member("m2", 6)).unwrap();
    let (ms, now) = board.members(60).unwrap();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(unix) <= 2, "{now} vs {unix}");
    assert_eq!(
        ms.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m2", "m1"]
    );
    assert_eq!(ms[0].seq, 6);
    assert!(ms[0].last_seen.abs_diff(now) <= 1);
    // Rows not seen within the window are left out.
    sql(&s)
        .execute(
            "UPDATE keyward_members SET last_seen = now() - interval '1 hour' WHERE id = 'm1'",
            &[],
        )
        .unwrap();
    assert_eq!(board.members(60).unwrap().0.len(), 1);
    board.leave("m2").unwrap();
    assert!(board.members(60).unwrap().0.is_empty());
    assert_eq!(board.members(7200).unwrap().0.len(), 1);
    assert!(board.beat(&member(&"x".repeat(65), 1)).is_err());
}

#[test]
fn a_large_log_loads_in_order_through_the_portal() {
    let s = server();
    let mut a = initialised(&s, "aa");
    let n = 100_000u64;
    let t = std::time::Instant::now();
    a.rewrite(&header("aa"), &mut (1..=n).map(|i| Ok(rec(i, "r"))))
        .unwrap();
    let written = t.elapsed();
    let t = std::time::Instant::now();
    let mut b = connect(&s);
    let mut next = 1u64;
    b.load(&mut |r| {
        assert_eq!(r.seq, next);
        next += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(next, n + 1);
    assert_eq!(b.record_count(), n as usize);
    eprintln!("{n} records: rewrite {written:?}, load {:?}", t.elapsed());
}
