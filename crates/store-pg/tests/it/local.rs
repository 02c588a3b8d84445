//! LocalPostgres itself: a directory that already holds a server is started again with its
//! data (`keyward demo --fleet` reuses its state directory), also when an earlier process left
//! its server running; the server is gone after drop.

use keyward_keystore::KeyStore;
use keyward_store_pg::local::{LocalOptions, LocalPostgres};
use keyward_store_pg::PgKeyStore;

use crate::common::*;

#[test]
fn a_state_directory_is_reused_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LocalOptions::default();
    let first = LocalPostgres::start_with(dir.path(), opts.clone()).unwrap();
    let pid = first.pid().unwrap();
    let mut ks = PgKeyStore::connect(&first.config()).unwrap();
    ks.store_head(&sealed("aa", 0)).unwrap();
    ks.init(&header("aa")).unwrap();
    ks.append(&rec(1, "1")).unwrap();
    drop(ks);
    // As if the process died: the server keeps running.
    std::mem::forget(first);

    let mut again = LocalPostgres::start_with(dir.path(), opts.clone()).unwrap();
    assert_ne!(again.pid(), Some(pid), "the left-over server was replaced");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie nobody reaped is not a running server.
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            st.contains(") Z")
        }
    );
    let mut ks = PgKeyStore::connect(&again.config()).unwrap();
    assert_eq!(ks.tip().unwrap(), Some(1));
    assert_eq!(loaded(&mut ks).len(), 1);
    drop(ks);
    let port = again.port();
    again.stop().unwrap();
    assert!(again.pid().is_none());
    drop(again);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
