//! Freshness of the sealed key store, replayed as the host would attack it: delete a record,
//! delete the last one, truncate, reorder, flip a byte, restore an older copy of the whole
//! directory, swap in another appliance's store. Every attack is refused at open, or the
//! revocation it aimed to undo (a disabled key, a removed credential) stays in force. The real
//! `FileKeyStore` in a temp dir; an in-memory compare-and-set anchor stands in for the KRS (the
//! KRS side replays the same attacks end to end against the real service).
//!
//! Also: anchored writes (refusal rolls back, a lost answer is settled, an unknown outcome stays
//! pending until the next write settles it), compaction keeping the head, and the migration of
//! a format-1 store written by the previous release.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keyward_keystore::{
    AnchorError, FileKeyStore, Freshness, HeadAnchor, KeystoreError, NewStore, Registry, StoreHead,
};
use keyward_keystore::{KeyStatus, KeyUsage};
use keyward_secret::Key32;
use secrecy::SecretString;

const MK: [u8; 32] = [0x21; 32];
const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYabc";

/// The KRS's head record, in memory: compare-and-set, with switches for failures.
#[derive(Default)]
struct MemAnchor {
    held: Mutex<Option<StoreHead>>,
    /// `advance` answers `Refused` without recording.
    refuse: AtomicBool,
    /// `advance` answers `Unreachable`; with `record_anyway` it records first (a lost answer).
    unreachable: AtomicBool,
    record_anyway: AtomicBool,
    /// `current` fails.
    current_fails: AtomicBool,
    advances: AtomicUsize,
}

impl MemAnchor {
    fn held(&self) -> Option<StoreHead> {
        self.held.lock().unwrap().clone()
    }
    fn heal(&self) {
        for f in [
            &self.refuse,
            &self.unreachable,
            &self.record_anyway,
            &self.current_fails,
        ] {
            f.store(false, Ordering::SeqCst);
        }
    }
}

impl HeadAnchor for MemAnchor {
    fn advance(&self, prev: Option<&StoreHead>, next: &StoreHead) -> Result<(), AnchorError> {
        self.advances.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(AnchorError::Refused("test: refused".into()));
        }
        let unreachable = self.unreachable.load(Ordering::SeqCst);
        if unreachable && !self.record_anyway.load(Ordering::SeqCst) {
            return Err(AnchorError::Unreachable("test: connection reset".into()));
        }
        let mut held = self.held.lock().unwrap();
        if held.as_ref() != prev && held.as_ref() != Some(next) {
            return Err(AnchorError::Refused(format!(
                "holds {:?}, not {prev:?}",
                *held
            )));
        }
        *held = Some(next.clone());
        if unreachable {
            return Err(AnchorError::Unreachable("test: answer lost".into()));
        }
        Ok(())
    }

    fn current(&self) -> Result<Option<StoreHead>, AnchorError> {
        if self.current_fails.load(Ordering::SeqCst) {
            return Err(AnchorError::Unreachable("test: still down".into()));
        }
        Ok(self.held())
    }
}

fn mk() -> Key32 {
    Key32::from_bytes(&MK).unwrap()
}

fn open_free(dir: &Path) -> Result<Registry, KeystoreError> {
    Registry::open_with(
        Box::new(FileKeyStore::open(dir)?),
        mk(),
        Freshness::Unanchored,
    )
}

/// Open anchored at `anchor`, with the floor it holds now (as the release receipt gives it).
fn open_anchored(dir: &Path, anchor: &Arc<MemAnchor>) -> Result<Registry, KeystoreError> {
    Registry::open_with(
        Box::new(FileKeyStore::open(dir)?),
        mk(),
        Freshness::Anchored {
            floor: anchor.held(),
            anchor: anchor.clone(),
        },
    )
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("keystore.jsonl")
}

fn head_path(dir: &Path) -> PathBuf {
    dir.join("keystore.head")
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

fn new_store() -> NewStore {
    NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    }
}

/// A store with keys k1 (enabled), k2, and the credential AKID.
fn populate(reg: &Registry) {
    reg.create_store(new_store()).unwrap();
    reg.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.add_credential(None, AKID, SecretString::from(SECRET.to_string()))
        .unwrap();
}

/// The customer's kill switch and a leaked credential's removal: the records an attacker wants
/// gone.
fn revoke(reg: &Registry) {
    reg.disable_key(None, "k1").unwrap();
    reg.remove_credential(None, AKID).unwrap();
}

/// Either refused, or opened with the revocations in force.
fn refused_or_revoked(r: Result<Registry, KeystoreError>) -> Option<KeystoreError> {
    match r {
        Err(e) => Some(e),
        Ok(reg) => {
            let snap = reg.snapshot();
            let sv = &snap.stores["default"];
            assert_eq!(
                sv.keys["k1"].status,
                KeyStatus::Disabled,
                "kill switch undone"
            );
            assert!(
                sv.credentials.iter().all(|c| c.access_key_id != AKID),
                "removed credential back"
            );
            None
        }
    }
}

/// A revoked store, unanchored, in `dir`.
fn revoked_store(dir: &Path) {
    let reg = open_free(dir).unwrap();
    populate(&reg);
    revoke(&reg);
}

/// A revoked store in `dir`, anchored at the returned anchor.
fn revoked_anchored_store(dir: &Path) -> Arc<MemAnchor> {
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir, &anchor).unwrap();
    populate(&reg);
    revoke(&reg);
    assert_eq!(anchor.held(), Some(reg.head()));
    anchor
}

#[test]
fn first_boot_records_the_head_and_every_write_advances_it() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    let h0 = reg.head();
    assert_eq!(h0.seq, 0);
    assert_eq!(anchor.held(), Some(h0.clone()), "first head recorded");
    populate(&reg);
    revoke(&reg);
    let h = reg.head();
    assert_eq!(h.seq, 6, "store, 2 keys, credential, disable, remove");
    assert_eq!(h.store_id, h0.store_id);
    assert_eq!(anchor.held(), Some(h.clone()));
    drop(reg);
    // The next boot, with that floor, opens the same head.
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(reg.head(), h);
    assert!(refused_or_revoked(Ok(reg)).is_none());
}

#[test]
fn first_head_not_recorded_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    revoked_store(dir.path());
    let anchor = Arc::new(MemAnchor::default());
    anchor.refuse.store(true, Ordering::SeqCst);
    let e = open_anchored(dir.path(), &anchor)
        .err()
        .expect("must refuse");
    assert!(matches!(e, KeystoreError::AnchorFirstHead(_)), "{e}");
    assert!(e.to_string().contains("key-release service"), "{e}");
    // Unreachable and not recorded: refused too.
    anchor.heal();
    anchor.unreachable.store(true, Ordering::SeqCst);
    anchor.current_fails.store(true, Ordering::SeqCst);
    assert!(matches!(
        open_anchored(dir.path(), &anchor),
        Err(KeystoreError::AnchorFirstHead(_))
    ));
    // Its answer lost but recorded: open.
    anchor.heal();
    anchor.unreachable.store(true, Ordering::SeqCst);
    anchor.record_anyway.store(true, Ordering::SeqCst);
    let reg = Registry::open_with(
        Box::new(FileKeyStore::open(dir.path()).unwrap()),
        mk(),
        Freshness::Anchored {
            floor: None,
            anchor: anchor.clone(),
        },
    )
    .unwrap();
    assert_eq!(anchor.held(), Some(reg.head()));
}

fn copy_dir(from: &Path, to: &Path) {
    for f in ["keystore.jsonl", "keystore.head"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn an_older_copy_of_the_whole_store_is_refused_with_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    drop(reg);
    copy_dir(dir.path(), old.path()); // yesterday's copy, before the revocations
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    revoke(&reg);
    drop(reg);

    copy_dir(old.path(), dir.path());
    let e = open_anchored(dir.path(), &anchor).err().expect("rollback");
    match &e {
        KeystoreError::Rollback {
            store_seq,
            anchor_seq,
        } => assert_eq!((*store_seq, *anchor_seq), (4, 6)),
        other => panic!("expected Rollback, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("rollback") && msg.contains('4') && msg.contains('6'),
        "{msg}"
    );
    // Without an anchor the copy cannot be told apart (opened, with the warning at open): the
    // documented limit of master_key.source = "file".
    let reg = open_free(dir.path()).unwrap();
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Enabled
    );
}

#[test]
fn deleting_any_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = revoked_anchored_store(dir.path());
    let orig = lines(dir.path());
    assert_eq!(orig.len(), 7, "header + 6 records");
    for i in 1..orig.len() {
        let mut t = orig.clone();
        t.remove(i);
        write_lines(dir.path(), &t);
        let last = i == orig.len() - 1;
        let e = refused_or_revoked(open_free(dir.path())).expect("refused");
        if last {
            assert!(
                matches!(
                    e,
                    KeystoreError::Truncated {
                        store_seq: 5,
                        head_seq: 6
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("truncated"), "{e}");
        } else {
            assert!(matches!(e, KeystoreError::Tampered { .. }), "line {i}: {e}");
        }
        // And with the KRS's floor (a head file put back along with it changes nothing).
        let e = refused_or_revoked(open_anchored(dir.path(), &anchor)).expect("refused");
        if last {
            assert!(
                matches!(
                    e,
                    KeystoreError::Rollback {
                        store_seq: 5,
                        anchor_seq: 6
                    }
                ),
                "{e}"
            );
        }
    }
    write_lines(dir.path(), &orig);
    assert!(refused_or_revoked(open_anchored(dir.path(), &anchor)).is_none());
}

#[test]
fn deleting_the_last_record_with_an_older_head_file_is_refused_with_the_floor() {
    // The host deletes the last record (the credential removal) and puts back the sealed head
    // from before it: consistent on disk, older than the KRS's head.
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    reg.disable_key(None, "k1").unwrap();
    drop(reg);
    let head_before = std::fs::read(head_path(dir.path())).unwrap();
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    reg.remove_credential(None, AKID).unwrap();
    drop(reg);
    let mut t = lines(dir.path());
    t.pop();
    write_lines(dir.path(), &t);
    std::fs::write(head_path(dir.path()), &head_before).unwrap();
    let e = refused_or_revoked(open_anchored(dir.path(), &anchor)).expect("refused");
    assert!(
        matches!(
            e,
            KeystoreError::Rollback {
                store_seq: 5,
                anchor_seq: 6
            }
        ),
        "{e}"
    );
}

#[test]
fn truncating_an_acknowledged_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = revoked_anchored_store(dir.path());
    let full = std::fs::read(log_path(dir.path())).unwrap();
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    for cut in [
        last_start + 1,
        (last_start + full.len()) / 2,
        full.len() - 1,
    ] {
        std::fs::write(log_path(dir.path()), &full[..cut]).unwrap();
        let e = refused_or_revoked(open_free(dir.path())).expect("refused");
        assert!(matches!(e, KeystoreError::Truncated { .. }), "{e}");
        let e = refused_or_revoked(open_anchored(dir.path(), &anchor)).expect("refused");
        assert!(matches!(e, KeystoreError::Rollback { .. }), "{e}");
        // Nothing was cut off by the refused opens.
        assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), &full[..cut]);
    }
}

#[test]
fn reordering_two_lines_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = revoked_anchored_store(dir.path());
    let orig = lines(dir.path());
    for i in 1..orig.len() - 1 {
        let mut t = orig.clone();
        t.swap(i, i + 1);
        write_lines(dir.path(), &t);
        assert!(refused_or_revoked(open_free(dir.path())).is_some());
        assert!(refused_or_revoked(open_anchored(dir.path(), &anchor)).is_some());
    }
}

#[test]
fn another_appliances_store_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let anchor = revoked_anchored_store(ours.path());
    // Another appliance's store under the same master key (or a re-created one): another id.
    let theirs = tempfile::tempdir().unwrap();
    let reg = open_free(theirs.path()).unwrap();
    populate(&reg); // k1 enabled, credential present
    drop(reg);
    copy_dir(theirs.path(), ours.path());
    let e = refused_or_revoked(open_anchored(ours.path(), &anchor)).expect("refused");
    assert!(matches!(e, KeystoreError::OtherStore { .. }), "{e}");
    assert!(e.to_string().contains("another key store"), "{e}");
    // Under another master key: the header does not open.
    let other_mk = tempfile::tempdir().unwrap();
    let reg = Registry::open_dir(other_mk.path(), Key32::from_bytes(&[0x22; 32]).unwrap()).unwrap();
    populate(&reg);
    drop(reg);
    copy_dir(other_mk.path(), ours.path());
    let e = refused_or_revoked(open_anchored(ours.path(), &anchor)).expect("refused");
    assert!(matches!(e, KeystoreError::WrongMasterKey), "{e}");
    // Only the other store's log with our head file: refused too.
    let o = tempfile::tempdir().unwrap();
    let anchor2 = revoked_anchored_store(o.path());
    std::fs::copy(log_path(theirs.path()), log_path(o.path())).unwrap();
    assert!(refused_or_revoked(open_free(o.path())).is_some());
    assert!(refused_or_revoked(open_anchored(o.path(), &anchor2)).is_some());
    // The store deleted altogether: an empty directory is not accepted in its place.
    let gone = tempfile::tempdir().unwrap();
    let anchor3 = revoked_anchored_store(gone.path());
    std::fs::remove_file(log_path(gone.path())).unwrap();
    std::fs::remove_file(head_path(gone.path())).unwrap();
    let e = open_anchored(gone.path(), &anchor3).err().expect("refused");
    assert!(matches!(e, KeystoreError::StoreMissing { .. }), "{e}");
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = revoked_anchored_store(dir.path());
    for file in [log_path(dir.path()), head_path(dir.path())] {
        let orig = std::fs::read(&file).unwrap();
        for i in 0..orig.len() {
            let mut t = orig.clone();
            t[i] ^= 0x01;
            std::fs::write(&file, &t).unwrap();
            let e = refused_or_revoked(open_free(dir.path()));
            assert!(e.is_some(), "{} byte {i} flipped: opened", file.display());
            assert!(
                refused_or_revoked(open_anchored(dir.path(), &anchor)).is_some(),
                "{} byte {i} flipped: opened anchored",
                file.display()
            );
        }
        std::fs::write(&file, &orig).unwrap();
    }
    assert!(refused_or_revoked(open_anchored(dir.path(), &anchor)).is_none());
}

#[test]
fn the_sealed_head_file_deleted_or_replaced_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    revoked_store(dir.path());
    let head = std::fs::read(head_path(dir.path())).unwrap();
    std::fs::remove_file(head_path(dir.path())).unwrap();
    let e = open_free(dir.path()).err().expect("refused");
    assert!(e.to_string().contains("sealed head"), "{e}");
    // Another store's head (same master key).
    let other = tempfile::tempdir().unwrap();
    revoked_store(other.path());
    std::fs::copy(head_path(other.path()), head_path(dir.path())).unwrap();
    let e = open_free(dir.path()).err().expect("refused");
    assert!(e.to_string().contains("another store"), "{e}");
    std::fs::write(head_path(dir.path()), head).unwrap();
    assert!(refused_or_revoked(open_free(dir.path())).is_none());
}

#[test]
fn more_than_one_write_after_the_head_is_refused() {
    // An older sealed head put back under a complete log: only one unacknowledged write may
    // follow the head, so the two revocations cannot both be cut off.
    let dir = tempfile::tempdir().unwrap();
    let reg = open_free(dir.path()).unwrap();
    populate(&reg);
    drop(reg);
    let head_before = std::fs::read(head_path(dir.path())).unwrap();
    revoked_store_continue(dir.path());
    std::fs::write(head_path(dir.path()), &head_before).unwrap();
    let e = refused_or_revoked(open_free(dir.path())).expect("refused");
    assert!(e.to_string().contains("more than one write"), "{e}");
}

fn revoked_store_continue(dir: &Path) {
    let reg = open_free(dir).unwrap();
    revoke(&reg);
}

#[test]
fn an_unacknowledged_write_beyond_the_floor_is_cut_off() {
    // A crash after the append and before the KRS recorded the head: the record is on disk,
    // the floor is the previous head. It was never acknowledged: cut off, not applied.
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    let before = std::fs::read(log_path(dir.path())).unwrap();
    let floor = anchor.held().unwrap();
    anchor.unreachable.store(true, Ordering::SeqCst);
    anchor.current_fails.store(true, Ordering::SeqCst);
    let e = reg.disable_key(None, "k1").expect_err("unknown outcome");
    assert!(matches!(e, KeystoreError::AnchorUnknown(_)), "{e}");
    drop(reg); // the appliance stops (or dies) with the write pending
    assert!(std::fs::read(log_path(dir.path())).unwrap().len() > before.len());
    anchor.heal();
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(reg.head(), floor);
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Enabled
    );
    assert_eq!(
        std::fs::read(log_path(dir.path())).unwrap(),
        before,
        "cut off"
    );
    // Writes continue from the floor.
    reg.disable_key(None, "k1").unwrap();
    assert_eq!(anchor.held(), Some(reg.head()));
}

#[test]
fn a_write_the_krs_recorded_is_kept_even_if_the_sealed_head_lags() {
    // A crash after the KRS recorded the head, before the sealed head file was rewritten.
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    drop(reg);
    let head_before = std::fs::read(head_path(dir.path())).unwrap();
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    reg.disable_key(None, "k1").unwrap();
    drop(reg);
    std::fs::write(head_path(dir.path()), &head_before).unwrap();
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Disabled
    );
    assert_eq!(Some(reg.head()), anchor.held());
    // The sealed head caught up: it now opens without the anchor too.
    drop(reg);
    assert_eq!(open_free(dir.path()).unwrap().head().seq, 5);
}

#[test]
fn a_refused_head_rolls_the_write_back() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    let before = std::fs::read(log_path(dir.path())).unwrap();
    let head = reg.head();
    anchor.refuse.store(true, Ordering::SeqCst);
    let e = reg.disable_key(None, "k1").expect_err("refused");
    assert!(matches!(e, KeystoreError::AnchorRefused(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("did not record") && msg.contains("nothing changed"),
        "{msg}"
    );
    // Unchanged: the view, the head, the log.
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Enabled
    );
    assert_eq!(reg.head(), head);
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), before);
    // Unreachable, and it still holds the old head: rolled back too.
    anchor.heal();
    anchor.unreachable.store(true, Ordering::SeqCst);
    let e = reg
        .create_keys(None, &["b1", "b2"], KeyUsage::EncryptDecrypt)
        .expect_err("not recorded");
    assert!(matches!(e, KeystoreError::AnchorRefused(_)), "{e}");
    assert!(reg.key_info(None, "b1").is_err());
    assert_eq!(std::fs::read(log_path(dir.path())).unwrap(), before);
    anchor.heal();
    // The next write works and the reopened store holds it, not the refused ones.
    reg.create_key(None, "k3", KeyUsage::EncryptDecrypt)
        .unwrap();
    drop(reg);
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Enabled
    );
    assert!(reg.key_info(None, "k3").is_ok());
    assert!(reg.key_info(None, "b1").is_err());
}

#[test]
fn a_lost_answer_for_a_recorded_head_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    anchor.unreachable.store(true, Ordering::SeqCst);
    anchor.record_anyway.store(true, Ordering::SeqCst);
    reg.disable_key(None, "k1").unwrap();
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Disabled
    );
    assert_eq!(anchor.held(), Some(reg.head()));
    anchor.heal();
    drop(reg);
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(
        reg.snapshot().stores["default"].keys["k1"].status,
        KeyStatus::Disabled
    );
}

#[test]
fn an_unknown_outcome_stays_pending_until_the_next_write_settles_it() {
    for recorded in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let anchor = Arc::new(MemAnchor::default());
        let reg = open_anchored(dir.path(), &anchor).unwrap();
        populate(&reg);
        let head = reg.head();
        anchor.unreachable.store(true, Ordering::SeqCst);
        anchor.record_anyway.store(recorded, Ordering::SeqCst);
        anchor.current_fails.store(true, Ordering::SeqCst);
        let e = reg.disable_key(None, "k1").expect_err("unknown outcome");
        assert!(matches!(e, KeystoreError::AnchorUnknown(_)), "{e}");
        assert!(e.to_string().contains("unknown"), "{e}");
        // Not in effect, whatever the KRS did.
        assert_eq!(
            reg.snapshot().stores["default"].keys["k1"].status,
            KeyStatus::Enabled
        );
        assert_eq!(reg.head(), head);
        // While the KRS stays unreachable, every write fails without touching anything.
        anchor.record_anyway.store(false, Ordering::SeqCst);
        let e = reg
            .create_key(None, "k3", KeyUsage::EncryptDecrypt)
            .expect_err("still unknown");
        assert!(matches!(e, KeystoreError::AnchorUnknown(_)), "{e}");
        assert!(reg.key_info(None, "k3").is_err());
        // A backup needs no KRS: it ends at the acknowledged head, without the pending write.
        let exp = reg.export().unwrap();
        assert_eq!(exp.head, head);
        keyward_keystore::backup::parse(&exp.bytes)
            .unwrap()
            .verify(&mk())
            .unwrap();
        // The KRS is back: the next write settles the pending one first.
        anchor.heal();
        reg.create_key(None, "k3", KeyUsage::EncryptDecrypt)
            .unwrap();
        let want = if recorded {
            KeyStatus::Disabled
        } else {
            KeyStatus::Enabled
        };
        assert_eq!(
            reg.snapshot().stores["default"].keys["k1"].status,
            want,
            "recorded={recorded}"
        );
        assert_eq!(anchor.held(), Some(reg.head()));
        assert_eq!(reg.head().seq, head.seq + 1 + u64::from(recorded));
        drop(reg);
        let reg = open_anchored(dir.path(), &anchor).unwrap();
        assert_eq!(reg.snapshot().stores["default"].keys["k1"].status, want);
        assert!(reg.key_info(None, "k3").is_ok());
    }
}

#[test]
fn compaction_keeps_the_head_and_the_chain_verifies_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    populate(&reg);
    for _ in 0..10 {
        reg.disable_key(None, "k2").unwrap();
        reg.enable_key(None, "k2").unwrap();
    }
    revoke(&reg);
    let old = lines(dir.path());
    let head = reg.head();
    let calls = anchor.advances.load(Ordering::SeqCst);
    // The KRS is down: compaction does not need it.
    anchor.refuse.store(true, Ordering::SeqCst);
    reg.compact().unwrap();
    anchor.heal();
    assert_eq!(
        anchor.advances.load(Ordering::SeqCst),
        calls,
        "no KRS round trip"
    );
    assert_eq!(reg.head(), head, "compaction keeps the head");
    let compacted = lines(dir.path());
    assert_eq!(compacted.len(), 5, "header + checkpoint + store + 2 keys");
    // Writes continue the chain from the same head.
    reg.create_key(None, "k3", KeyUsage::EncryptDecrypt)
        .unwrap();
    assert_eq!(reg.head().seq, head.seq + 1);
    drop(reg);
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert!(refused_or_revoked(Ok(reg)).is_none());
    let now = lines(dir.path());
    // Deleting a compacted record, or reordering two of them, is refused.
    for i in 1..compacted.len() {
        let mut t = now.clone();
        t.remove(i);
        write_lines(dir.path(), &t);
        assert!(
            refused_or_revoked(open_free(dir.path())).is_some(),
            "line {i}"
        );
        assert!(refused_or_revoked(open_anchored(dir.path(), &anchor)).is_some());
    }
    let mut t = now.clone();
    t.swap(2, 3);
    write_lines(dir.path(), &t);
    assert!(refused_or_revoked(open_free(dir.path())).is_some());
    // An old line (from before compaction) appended is refused.
    let mut t = now.clone();
    t.push(old[old.len() - 1].clone());
    write_lines(dir.path(), &t);
    assert!(refused_or_revoked(open_free(dir.path())).is_some());
    // The uncompacted log is the same history: with the new record after it, it is the same
    // store (the chain continues from the head either way), revocations included.
    let mut t = old.clone();
    t.push(now[now.len() - 1].clone());
    write_lines(dir.path(), &t);
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert!(reg.key_info(None, "k3").is_ok());
    assert!(refused_or_revoked(Ok(reg)).is_none());
    // But the old log without it is older than the floor.
    write_lines(dir.path(), &old);
    let e = open_anchored(dir.path(), &anchor).err().expect("refused");
    assert!(matches!(e, KeystoreError::Rollback { .. }), "{e}");
    write_lines(dir.path(), &now);
    assert!(refused_or_revoked(open_anchored(dir.path(), &anchor)).is_none());
}

/// Format 1, as the previous release wrote it: header `format: 1`, records with increasing
/// (not contiguous) `seq`, each MACed on its own, no head file.
mod format1 {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn subkey(mk: &[u8; 32], label: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(mk).unwrap();
        m.update(label);
        m.finalize().into_bytes().into()
    }

    fn seal(mk: &[u8; 32], plain: &[u8], aad: &[u8], iv: u8) -> String {
        let c = Aes256Gcm::new_from_slice(&subkey(mk, b"keyward keystore v1 seal")).unwrap();
        let mut buf = plain.to_vec();
        let ivb = [iv; 12];
        let tag = c
            .encrypt_in_place_detached(Nonce::from_slice(&ivb), aad, &mut buf)
            .unwrap();
        let mut out = vec![1u8];
        out.extend_from_slice(&ivb);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn lp(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// The log lines of a format-1 store: store, k1, k2, credential, k1 disabled, credential
    /// removed, with gaps in `seq` (left by the old compaction).
    pub(crate) fn store(mk: &[u8; 32], id: &[u8; 16], kek: &[u8; 32]) -> Vec<String> {
        let mut header_aad = b"keyward/header".to_vec();
        header_aad.push(1);
        header_aad.extend_from_slice(id);
        let header = serde_json::json!({
            "format": 1,
            "store_id": hex::encode(id),
            "check": seal(mk, b"keyward key store master check!!", &header_aad, 1),
        });
        let kek_aad = |key: &str| {
            let mut a = b"keyward/kek".to_vec();
            a.push(1);
            a.extend(lp("default"));
            a.extend(lp(key));
            a.extend_from_slice(&1u32.to_be_bytes());
            a
        };
        let mut cred_aad = b"keyward/cred".to_vec();
        cred_aad.push(1);
        cred_aad.extend(lp("default"));
        cred_aad.extend(lp(super::AKID));
        let key = |id: &str, status: &str, iv: u8| {
            serde_json::json!({"key": {"store": "default", "id": id, "version": 1,
                "usage": "encrypt_decrypt", "status": status, "grants": [], "created": 1700000000,
                "kek": seal(mk, kek, &kek_aad(id), iv)}})
        };
        let recs = [
            (
                2u64,
                serde_json::json!({"store": {"name": "default", "uri_prefix": "/keyward",
                "region": "us-east-1", "extra_services": [], "created": 1700000000}}),
            ),
            (3, key("k1", "enabled", 2)),
            (7, key("k2", "enabled", 3)),
            (
                8,
                serde_json::json!({"credential": {"store": "default",
                "access_key_id": super::AKID,
                "secret": seal(mk, super::SECRET.as_bytes(), &cred_aad, 4),
                "created": 1700000000}}),
            ),
            (12, key("k1", "disabled", 5)),
            (
                13,
                serde_json::json!({"remove_credential": {"store": "default",
                "access_key_id": super::AKID}}),
            ),
        ];
        let mac_key = subkey(mk, b"keyward keystore v1 mac");
        let mut out = vec![header.to_string()];
        for (seq, rec) in recs {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).unwrap();
            m.update(b"keyward/record");
            m.update(&[1]);
            m.update(&16u64.to_be_bytes());
            m.update(id);
            m.update(&seq.to_be_bytes());
            // The MAC is over the record's canonical JSON (its struct field order).
            let canonical: keyward_keystore::Record = serde_json::from_value(rec.clone()).unwrap();
            m.update(&serde_json::to_vec(&canonical).unwrap());
            let mac = hex::encode(m.finalize().into_bytes());
            out.push(serde_json::json!({"seq": seq, "mac": mac, "rec": rec}).to_string());
        }
        out
    }
}

#[test]
fn a_format_1_store_is_verified_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let kek = [0x77u8; 32];
    let v1 = format1::store(&MK, &[5; 16], &kek);
    write_lines(dir.path(), &v1);
    // First boot with the KRS anchoring it (floor None, as after an upgrade).
    let anchor = Arc::new(MemAnchor::default());
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(
        *reg.snapshot().stores["default"].keys["k2"].kek.expose(),
        kek
    );
    let head = reg.head();
    assert_eq!(head.seq, 6, "the six records, chained 1..6");
    assert_eq!(head.store_id, vec![5; 16], "the store keeps its id");
    assert_eq!(anchor.held(), Some(head.clone()));
    let migrated = lines(dir.path());
    assert!(migrated[0].contains("\"format\":2"), "{}", migrated[0]);
    assert!(head_path(dir.path()).exists());
    assert!(refused_or_revoked(Ok(reg)).is_none());
    // It now reopens as format 2, and writes continue.
    let reg = open_anchored(dir.path(), &anchor).unwrap();
    assert_eq!(reg.head(), head);
    reg.enable_key(None, "k2").unwrap();
    drop(reg);

    // A format-1 copy put back after the KRS anchored the store: refused as a rollback.
    write_lines(dir.path(), &v1);
    let e = open_anchored(dir.path(), &anchor).err().expect("refused");
    assert!(matches!(e, KeystoreError::Rollback { .. }), "{e}");

    // A format-1 store is verified under its rules before it is migrated: a tampered record
    // (k1 re-enabled) or a deleted one out of order is refused, and the file is left as it was.
    for (i, change) in [(5usize, "tamper"), (3, "swap")] {
        let d = tempfile::tempdir().unwrap();
        let mut t = v1.clone();
        match change {
            "tamper" => t[i] = t[i].replace("disabled", "enabled"),
            _ => t.swap(i, i + 1),
        }
        write_lines(d.path(), &t);
        let e = open_free(d.path()).err().expect("refused");
        assert!(matches!(e, KeystoreError::Tampered { .. }), "{e}");
        assert_eq!(lines(d.path()), t, "left unchanged");
        assert!(!head_path(d.path()).exists());
    }

    // Unanchored, the migration happens too (and says so in the log).
    let d = tempfile::tempdir().unwrap();
    write_lines(d.path(), &v1);
    let reg = open_free(d.path()).unwrap();
    assert_eq!(reg.head().seq, 6);
    assert!(refused_or_revoked(Ok(reg)).is_none());
}
