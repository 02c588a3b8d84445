//! The tamper-evident audit log end to end: two writer segments (a restart) in one file,
//! `verify` accepts it with the writers' keys, and names the first line removed, changed or
//! reordered, a foreign checkpoint, an unknown key, and a torn line cut at restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_audit::{verify, VerifyError};
use keyward_audit::{AuditLog, AuditSink, Field, XksRecord};

fn write(path: &Path, n: usize) -> String {
    let log = AuditLog::start(AuditSink::File(path.to_path_buf())).unwrap();
    for i in 0..n {
        let mut r = XksRecord::new();
        r.set_operation("Encrypt");
        r.set(Field::KmsRequestId, &format!("req-{i}"));
        r.finish(200, None, Duration::from_micros(10));
        log.xks(r);
    }
    log.admin("CN=op", "keys_disable", "key=k1", true);
    log.shutdown().unwrap();
    log.public_key().to_string()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(p: &Path, lines: &[String]) -> PathBuf {
    let out = p.with_extension("edited");
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    out
}

#[test]
fn a_clean_log_verifies_and_every_edit_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let k1 = write(&p, 20);
    let k2 = write(&p, 20); // a restart: a second segment continues the chain
    assert_ne!(k1, k2, "each start makes a new key");
    let r = verify(std::slice::from_ref(&p), &[k1.clone(), k2.clone()]).unwrap();
    assert_eq!(r.segments, 2);
    assert_eq!(r.checkpoints, 2);
    assert_eq!(r.unsigned_tail, 0);
    assert_eq!(r.lines as usize, lines(&p).len());

    let l = lines(&p);
    // Removed: line 5 (1-based) deleted.
    let mut removed = l.clone();
    removed.remove(4);
    match verify(&[put(&p, &removed)], &[]) {
        Err(VerifyError::Removed { line, count, .. }) => assert_eq!((line, count), (5, 1)),
        other => panic!("removal not named: {other:?}"),
    }
    // Changed: line 7's status edited.
    let mut changed = l.clone();
    changed[6] = changed[6].replace("\"httpStatus\":200", "\"httpStatus\":400");
    assert_ne!(changed[6], l[6]);
    match verify(&[put(&p, &changed)], &[]) {
        Err(VerifyError::Changed { line, .. }) => assert_eq!(line, 7),
        other => panic!("change not named: {other:?}"),
    }
    // Reordered: lines 9 and 10 swapped.
    let mut swapped = l.clone();
    swapped.swap(8, 9);
    match verify(&[put(&p, &swapped)], &[]) {
        Err(VerifyError::Reordered { line, .. }) => assert_eq!(line, 9),
        other => panic!("reordering not named: {other:?}"),
    }
    // A key that is not pinned.
    match verify(std::slice::from_ref(&p), std::slice::from_ref(&k1)) {
        Err(VerifyError::UnknownKey { key, .. }) => assert_eq!(key, k2),
        other => panic!("an unpinned segment key passed: {other:?}"),
    }
    // The last checkpoint cut off: still chained, but the second segment's lines after its
    // chain line (20 requests and one admin line) are reported as covered by no signature.
    let cut = &l[..l.len() - 1];
    let r = verify(&[put(&p, cut)], &[]).unwrap();
    assert_eq!(r.unsigned_tail, 21);
}

#[test]
fn a_grafted_checkpoint_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    write(&p, 5);
    // Another writer's checkpoint (another key) in place of this log's last line.
    let q = dir.path().join("other.jsonl");
    write(&q, 5);
    let mut l = lines(&p);
    let theirs = lines(&q);
    let last = l.len() - 1;
    l[last] = theirs[theirs.len() - 1].clone();
    match verify(&[put(&p, &l)], &[]) {
        Err(VerifyError::Checkpoint { .. }) | Err(VerifyError::Changed { .. }) => {}
        other => panic!("a foreign checkpoint passed: {other:?}"),
    }
}

#[test]
fn a_torn_last_line_is_cut_at_restart_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    write(&p, 3);
    // A crash mid-line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"time\":\"2026-").unwrap();
    drop(f);
    write(&p, 3);
    let r = verify(std::slice::from_ref(&p), &[]).unwrap();
    assert_eq!(r.segments, 2);
    let l = lines(&p);
    let second_chain = l
        .iter()
        .filter(|x| x.contains("\"type\":\"chain\""))
        .nth(1)
        .unwrap();
    assert!(
        second_chain.contains("\"truncated_bytes\":14"),
        "{second_chain}"
    );
}
