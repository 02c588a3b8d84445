//! The database goes away: calls fail fast with Unavailable naming the operation, and the same
//! PgKeyStore works again once the server is back (after a clean stop and after a kill -9).

use std::time::{Duration, Instant};

use keyward_keystore::{KeyStore, KeystoreError};
use keyward_store_pg::PgKeyStore;

use crate::common::*;

fn unavailable<T: std::fmt::Debug>(r: Result<T, KeystoreError>, what: &str) -> String {
    match r {
        Err(e @ KeystoreError::Unavailable { .. }) => e.to_string(),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[test]
fn outage_fails_fast_and_recovers_without_a_new_store() {
    let mut s = server();
    let mut c = cfg(&s);
    c.connect_timeout = Duration::from_secs(2);
    let mut ks = PgKeyStore::connect(&c).unwrap();
    ks.store_head(&sealed("aa", 0)).unwrap();
    ks.init(&header("aa")).unwrap();
    ks.append(&rec(1, "1")).unwrap();

    s.stop().unwrap();
    let t = Instant::now();
    let e = unavailable(ks.tip(), "tip");
    assert!(e.contains("127.0.0.1") && !e.contains("keyward@"), "{e}");
    unavailable(ks.append(&rec(2, "2")), "append");
    let e = unavailable(ks.header(), "header");
    assert!(e.contains("connect"), "{e}");
    unavailable(ks.load(&mut |_| Ok(())), "load");
    assert!(
        t.elapsed() < c.connect_timeout,
        "four calls took {:?}",
        t.elapsed()
    );

    s.start_again().unwrap();
    assert_eq!(ks.tip().unwrap(), Some(1));
    ks.append(&rec(2, "2")).unwrap();

    // A crash of the server, with the connection open.
    s.kill9().unwrap();
    unavailable(ks.append(&rec(3, "3")), "append after kill -9");
    s.start_again().unwrap();
    ks.append(&rec(3, "3")).unwrap();
    assert_eq!(loaded(&mut ks).len(), 3);
    // A restart between two calls, on an idle open connection: the read is retried on a new
    // connection, not failed.
    s.stop().unwrap();
    s.start_again().unwrap();
    assert_eq!(ks.tip().unwrap(), Some(3));
}
