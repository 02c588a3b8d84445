//! Three writers on separate connections, 200 appends each, retrying on Conflict: no lost or
//! duplicated record, the log is exactly 1..600.

use std::collections::HashSet;

use keyward_keystore::{KeyStore, KeystoreError};

use crate::common::*;

#[test]
fn three_writers_never_lose_an_update() {
    let s = server();
    drop(initialised(&s, "aa"));
    let conflicts: u64 = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..3)
            .map(|w| {
                let s = &s;
                sc.spawn(move || {
                    let mut ks = connect(s);
                    let mut conflicts = 0u64;
                    for i in 0..200 {
                        loop {
                            let next = ks.tip().unwrap().unwrap() + 1;
                            match ks.append(&rec(next, &format!("w{w}-{i}"))) {
                                Ok(()) => break,
                                Err(KeystoreError::Conflict { .. }) => conflicts += 1,
                                Err(e) => panic!("writer {w}: {e}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let mut ks = connect(&s);
    let all = loaded(&mut ks);
    assert_eq!(all.len(), 600);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "contiguous");
    }
    let tags: HashSet<&str> = all.iter().map(|r| r.mac.as_str()).collect();
    assert_eq!(tags.len(), 600, "no write stored twice, none lost");
    assert_eq!(ks.tip().unwrap(), Some(600));
    eprintln!("3 x 200 appends: {conflicts} conflicts retried");
}
