//! The watcher: a commit from another connection wakes it within 2 s; it survives a database
//! restart; the poll fallback ticks without any commit.

use std::time::Duration;

use keyward_keystore::KeyStore;
use keyward_store_pg::Watcher;

use crate::common::*;

#[test]
fn wakes_on_commits_and_survives_a_restart() {
    let mut s = server();
    let mut ks = initialised(&s, "aa");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A long poll: every wake-up below is a notification (or the reconnect one).
    let (watcher, notify) = Watcher::start(&cfg(&s), Duration::from_secs(3600)).unwrap();
    let woken = |d: Duration| {
        rt.block_on(async { tokio::time::timeout(d, notify.notified()).await.is_ok() })
    };
    // The first wake-up comes with the first connection.
    assert!(woken(Duration::from_secs(5)), "no wake-up at connect");
    assert!(!woken(Duration::from_millis(300)), "woken without a change");

    ks.append(&rec(1, "1")).unwrap();
    assert!(
        woken(Duration::from_secs(2)),
        "no wake-up within 2 s of a commit"
    );

    s.stop().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.start_again().unwrap();
    // Reconnected (its own wake-up: changes may have been missed), then notified again.
    assert!(
        woken(Duration::from_secs(10)),
        "no wake-up after the restart"
    );
    ks.append(&rec(2, "2")).unwrap();
    assert!(
        woken(Duration::from_secs(2)),
        "no wake-up after the restart's commit"
    );
    drop(watcher);
}

#[test]
fn the_poll_fallback_ticks() {
    let s = server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_watcher, notify) = Watcher::start(&cfg(&s), Duration::from_millis(300)).unwrap();
    for _ in 0..4 {
        let ok = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), notify.notified())
                .await
                .is_ok()
        });
        assert!(ok);
    }
}
