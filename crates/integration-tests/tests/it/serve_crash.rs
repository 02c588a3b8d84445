//! Crash safety at binary level: `kill -9` a running `keyward serve` while `keyward admin keys
//! create` runs in a loop; restart on the same store; every acknowledged key is there and
//! decrypts what it encrypted before the crash.

use crate::serve_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serve_common::*;

#[test]
fn kill_9_during_admin_writes_loses_no_acknowledged_key() {
    let setup = ServeSetup::new();
    let prof = setup.profile.clone();

    // Round 1: keys with ciphertexts made before the crash.
    let (mut p, xks) = setup.start();
    let mut ciphertexts: BTreeMap<String, (String, serde_json::Value)> = BTreeMap::new();
    for i in 0..3 {
        let id = format!("before-{i}");
        admin_ok(&prof, &["keys", "create", &id]);
        admin_ok(
            &prof,
            &[
                "keys",
                "grant",
                &id,
                "--principal",
                "*",
                "--ops",
                "encrypt,decrypt,metadata",
            ],
        );
        let pt = base64_of(&format!("plaintext for {id}"));
        let (code, enc) = xks.encrypt(&id, &pt);
        assert_eq!(code, 200, "{enc}");
        ciphertexts.insert(id, (pt, enc));
    }

    // Writes in a loop while a timer kills the server with SIGKILL mid-stream.
    let pid = p.child.id() as i32;
    let killed = Arc::new(AtomicBool::new(false));
    let k = killed.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        k.store(true, Ordering::SeqCst);
    });
    let mut acknowledged = Vec::new();
    let mut refused_after_kill = 0;
    for i in 0..10_000 {
        let id = format!("during-{i}");
        let out = admin(&prof, &["keys", "create", &id]);
        if out.status.success() {
            acknowledged.push(id);
        } else if killed.load(Ordering::SeqCst) {
            refused_after_kill += 1;
            if refused_after_kill >= 3 {
                break;
            }
        } else {
            panic!(
                "refused before the kill: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    killer.join().unwrap();
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)),
        None,
        "killed by a signal"
    );
    assert!(
        acknowledged.len() >= 2,
        "too few writes before the kill: {}",
        acknowledged.len()
    );
    drop(p);

    // Restart on the same store.
    let (mut p2, xks2) = setup.start();
    let list = admin_ok(&prof, &["keys", "list"]);
    let listed: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for id in acknowledged.iter().chain(ciphertexts.keys()) {
        assert!(
            listed.contains(&id.as_str()),
            "acknowledged key {id} lost after kill -9:\n{list}"
        );
    }
    for (id, (pt, enc)) in &ciphertexts {
        let (code, dec) = xks2.decrypt(id, enc);
        assert_eq!(code, 200, "{id}: {dec}");
        assert_eq!(dec["plaintext"].as_str(), Some(pt.as_str()));
    }
    // A key acknowledged right before the kill works too.
    let last = acknowledged.last().unwrap();
    admin_ok(
        &prof,
        &[
            "keys",
            "grant",
            last,
            "--principal",
            "*",
            "--ops",
            "encrypt,decrypt",
        ],
    );
    let (code, enc) = xks2.encrypt(last, "aGk=");
    assert_eq!(code, 200, "{enc}");
    assert_eq!(xks2.decrypt(last, &enc).1["plaintext"], "aGk=");
    p2.signal(libc::SIGTERM);
    assert_eq!(p2.wait_exit(Duration::from_secs(20)), Some(0));
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
