//! Approval requests (admin dual control) as key store records, against real files: they
//! survive a reopen and a compaction, a change to one is refused under the writer lock when the
//! caller says no, and a database or disk writer can neither forge an approval (turn a pending
//! request into an approved one) nor replay an older state of one (a used approval back to
//! approved): the chain MAC catches both at the next open.

use std::path::{Path, PathBuf};

use keyward_keystore::{ApprovalRecord, ApprovalState, ApproverRecord};
use keyward_keystore::{KeystoreError, NewStore, Registry};
use keyward_secret::Key32;

fn open(dir: &Path) -> Result<Registry, KeystoreError> {
    Registry::open_dir(dir, Key32::from_bytes(&[0x22; 32]).unwrap())
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("keystore.jsonl")
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(log_path(dir))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(log_path(dir), s).unwrap();
}

fn expect_tampered(dir: &Path) {
    match open(dir) {
        Err(KeystoreError::Tampered { .. }) => {}
        Err(e) => panic!("expected Tampered, got {e}"),
        Ok(_) => panic!("a tampered store was opened"),
    }
}

fn pending(id: &str) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        op: "keys_schedule_destroy".into(),
        what: "store=default key=k1 days=7".into(),
        request_sha256: "ab".repeat(32),
        role: "security".into(),
        requester: "CN=sam".into(),
        requester_spki_sha256: "11".repeat(32),
        needed: 1,
        created: 1000,
        expires: 4600,
        state: ApprovalState::Pending,
        approvers: vec![],
        closed_by: None,
        closed: None,
    }
}

fn filed(dir: &Path) -> Registry {
    let reg = open(dir).unwrap();
    reg.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/kw".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.update_approval::<KeystoreError>("a1", |cur| {
        assert!(cur.is_none());
        Ok(pending("a1"))
    })
    .unwrap();
    reg
}

#[test]
fn approvals_survive_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let reg = filed(dir.path());
    // A refusal from the caller writes nothing.
    let n = lines(dir.path()).len();
    let r = reg.update_approval("a1", |_| Err(KeystoreError::Format("no".into())));
    assert!(r.is_err());
    assert_eq!(lines(dir.path()).len(), n);
    // Approved, then used.
    reg.update_approval::<KeystoreError>("a1", |cur| {
        let mut a = cur.unwrap().clone();
        a.state = ApprovalState::Approved;
        a.approvers.push(ApproverRecord {
            subject: "CN=tom".into(),
            spki_sha256: "22".repeat(32),
            at: 1001,
        });
        Ok(a)
    })
    .unwrap();
    reg.update_approval::<KeystoreError>("a2", |_| Ok(pending("a2")))
        .unwrap();
    // The id cannot change.
    assert!(reg
        .update_approval::<KeystoreError>("a2", |_| Ok(pending("a3")))
        .is_err());
    drop(reg);
    let reg = open(dir.path()).unwrap();
    let all = reg.approvals().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, ApprovalState::Approved);
    assert_eq!(all[0].approvers[0].subject, "CN=tom");
    reg.compact().unwrap();
    drop(reg);
    let reg = open(dir.path()).unwrap();
    assert_eq!(reg.approvals().unwrap(), all);
}

#[test]
fn a_forged_or_replayed_approval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reg = filed(dir.path());
    drop(reg);
    let orig = lines(dir.path());
    let last = orig.len() - 1;
    assert!(orig[last].contains("\"pending\""), "{}", orig[last]);
    // Forged: the pending request edited into an approved one.
    let mut t = orig.clone();
    t[last] = t[last].replace("\"pending\"", "\"approved\"");
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());
    // Replayed: after it was used, its approved record appended again.
    write_lines(dir.path(), &orig);
    let reg = open(dir.path()).unwrap();
    for state in [ApprovalState::Approved, ApprovalState::Used] {
        reg.update_approval::<KeystoreError>("a1", |cur| {
            let mut a = cur.unwrap().clone();
            a.state = state;
            Ok(a)
        })
        .unwrap();
    }
    drop(reg);
    let mut t = lines(dir.path());
    let approved = t[t.len() - 2].clone();
    assert!(approved.contains("\"approved\""));
    t.push(approved);
    write_lines(dir.path(), &t);
    expect_tampered(dir.path());
}
