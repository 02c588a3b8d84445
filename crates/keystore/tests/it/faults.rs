//! Fault injection at the key store seam: a [`KeyStore`] wrapper around the real
//! [`FileKeyStore`] that fails one chosen call (append, head write, truncate, compaction) with
//! EIO or ENOSPC, either before delegating (nothing reached the disk: a failed `write`) or after
//! (the bytes reached the disk, then `fsync`/`fdatasync` of the file or directory failed). The
//! real [`Registry`] is driven through admin writes on top of it and the test checks, after each
//! fault: an acknowledged write is never lost (a reopen on a clean store shows it), an
//! unacknowledged one is never half-applied (a reopen shows the state before it), the registry
//! keeps serving reads, its error names the operation and the OS error, and the next write after
//! the fault clears works.
//!
//! The OS cannot be made to fail `fsync` on demand here (no loop mounts or tmpfs of our own in
//! this sandbox), so the faults go through the trait the production code uses, and the real
//! file store does the real I/O around them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use keyward_keystore::KeyUsage;
use keyward_keystore::{FileKeyStore, KeyStore, KeystoreError, NewStore, Registry};
use keyward_keystore::{Header, SealedHead, SignedRecord};
use keyward_secret::Key32;

const MK: [u8; 32] = [0x6b; 32];

/// The call a fault hits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Append,
    Head,
    Truncate,
    Compact,
}

/// One armed fault: the `nth` next call of `op` (1 = the next one) fails with `errno`;
/// `after` means the real store did the call first (the bytes are on disk; the sync failed).
#[derive(Clone, Copy, Debug)]
struct Fault {
    op: Op,
    nth: u32,
    errno: i32,
    after: bool,
}

#[derive(Default)]
struct Plan {
    armed: Vec<Fault>,
    fired: Vec<Fault>,
}

impl Plan {
    /// Whether this call of `op` fails, and how.
    fn hit(&mut self, op: Op) -> Option<Fault> {
        let mut out = None;
        for f in self.armed.iter_mut().filter(|f| f.op == op) {
            f.nth -= 1;
            if f.nth == 0 && out.is_none() {
                out = Some(*f);
            }
        }
        self.armed.retain(|f| f.nth > 0);
        if let Some(f) = out {
            self.fired.push(f);
        }
        out
    }
}

#[derive(Clone, Default)]
struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    fn arm(&self, op: Op, nth: u32, errno: i32, after: bool) {
        self.0.lock().unwrap().armed.push(Fault {
            op,
            nth,
            errno,
            after,
        });
    }
    fn fired(&self) -> usize {
        self.0.lock().unwrap().fired.len()
    }
    fn hit(&self, op: Op) -> Option<Fault> {
        self.0.lock().unwrap().hit(op)
    }
}

struct Faulty {
    inner: FileKeyStore,
    faults: Faults,
}

fn os_err(op: &'static str, errno: i32) -> KeystoreError {
    KeystoreError::Io {
        op,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

impl Faulty {
    /// Run `call` on the real store unless a fault is armed for `op`; with an "after" fault,
    /// run it and then fail.
    fn run<T>(
        &mut self,
        op: Op,
        what: &'static str,
        call: impl FnOnce(&mut FileKeyStore) -> Result<T, KeystoreError>,
    ) -> Result<T, KeystoreError> {
        match self.faults.hit(op) {
            None => call(&mut self.inner),
            Some(f) if f.after => {
                call(&mut self.inner)?;
                Err(os_err(what, f.errno))
            }
            Some(f) => Err(os_err(what, f.errno)),
        }
    }
}

impl KeyStore for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        self.inner.header()
    }
    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        self.inner.init(header)
    }
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        self.inner.load(visit)
    }
    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        self.append_batch(std::slice::from_ref(rec))
    }
    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        self.run(Op::Append, "append", |s| s.append_batch(recs))
    }
    fn record_count(&self) -> usize {
        self.inner.record_count()
    }
    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.run(Op::Compact, "rename compacted log", |s| s.compact(records))
    }
    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.inner.rewrite(header, records)
    }
    fn has_torn_tail(&self) -> bool {
        self.inner.has_torn_tail()
    }
    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        self.run(Op::Truncate, "truncate", |s| s.truncate_after(seq))
    }
    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        self.inner.load_head()
    }
    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        // Before: creating or writing the temp file failed. After: the rename happened and the
        // directory fsync failed.
        self.run(Op::Head, "fsync directory", |s| s.store_head(head))
    }
}

fn mk() -> Key32 {
    Key32::from_bytes(&MK).unwrap()
}

fn open_faulty(dir: &Path, faults: &Faults) -> Registry {
    let inner = FileKeyStore::open(dir).unwrap();
    Registry::open(
        Box::new(Faulty {
            inner,
            faults: faults.clone(),
        }),
        mk(),
    )
    .unwrap()
}

/// Key ids the store holds after a clean reopen (the registry first dropped, so its lock is
/// free). A reopen that fails is returned as the error.
fn reopen_ids(dir: &Path) -> Result<Vec<String>, KeystoreError> {
    let reg = Registry::open_dir(dir, mk())?;
    Ok(ids(&reg))
}

fn ids(reg: &Registry) -> Vec<String> {
    let mut v: Vec<String> = reg.snapshot().stores["default"]
        .keys
        .keys()
        .cloned()
        .collect();
    v.sort();
    v
}

fn setup(dir: &Path) {
    let reg = Registry::open_dir(dir, mk()).unwrap();
    reg.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
    reg.create_key(None, "k0", KeyUsage::EncryptDecrypt)
        .unwrap();
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// One fault during `create_key("k1")`: the write fails with a message naming the operation and
/// the OS error, the view keeps serving k0 and does not show k1, the next write (k2) works, and
/// a reopen shows exactly k0 and k2.
fn unacknowledged_write_is_not_applied(op: Op, errno: i32, after: bool, says: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(op, 1, errno, after);
    let err = reg
        .create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("the faulted write must fail");
    assert_eq!(faults.fired(), 1, "{op:?} fault did not fire");
    let msg = err.to_string();
    for s in says {
        assert!(msg.contains(s), "{op:?}/{errno}: error {msg:?} lacks {s:?}");
    }
    // Reads keep being served, from the state before the failed write.
    assert_eq!(ids(&reg), ["k0"], "{op:?}: view after the failure");
    assert!(reg.key_info(None, "k0").is_ok());
    assert!(reg.key_info(None, "k1").is_err(), "{op:?}: k1 half-applied");
    // The fault cleared: the next write works and is acknowledged.
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap_or_else(|e| panic!("{op:?}/{errno} after={after}: next write failed: {e}"));
    assert_eq!(ids(&reg), ["k0", "k2"]);
    drop(reg);
    let got = reopen_ids(tmp.path())
        .unwrap_or_else(|e| panic!("{op:?}/{errno} after={after}: reopen refused: {e}"));
    assert_eq!(got, ["k0", "k2"], "{op:?}/{errno} after={after}: reopen");
}

#[test]
fn append_write_enospc_is_not_applied() {
    unacknowledged_write_is_not_applied(Op::Append, ENOSPC, false, &["append", "No space left"]);
}

#[test]
fn append_write_eio_is_not_applied() {
    unacknowledged_write_is_not_applied(Op::Append, EIO, false, &["append", "Input/output"]);
}

#[test]
fn head_write_enospc_is_not_applied() {
    unacknowledged_write_is_not_applied(Op::Head, ENOSPC, false, &["No space left"]);
}

#[test]
fn head_write_eio_is_not_applied() {
    unacknowledged_write_is_not_applied(Op::Head, EIO, false, &["Input/output"]);
}

/// The head was renamed into place, then the directory fsync failed: the registry undoes the
/// log records of the write, but the new head may already be on disk.
#[test]
fn head_dir_fsync_eio_is_not_applied() {
    unacknowledged_write_is_not_applied(Op::Head, EIO, true, &["fsync directory"]);
}

/// The head write failed and so did the undo of the appended records: the write is refused
/// (its error is the head's), not in the view, and the next write first finishes the undo, then
/// works; a reopen shows exactly what was acknowledged.
#[test]
fn head_write_then_undo_fails_is_not_applied() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Head, 1, ENOSPC, false);
    faults.arm(Op::Truncate, 1, EIO, false);
    let err = reg
        .create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("must fail");
    assert_eq!(faults.fired(), 2);
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(ids(&reg), ["k0"]);
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap_or_else(|e| panic!("next write: {e}"));
    drop(reg);
    assert_eq!(reopen_ids(tmp.path()).unwrap(), ["k0", "k2"]);
}

/// As above, but the process stops before another write: the records beyond the head are cut
/// off at the next open.
#[test]
fn head_write_then_undo_fails_then_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Head, 1, ENOSPC, false);
    faults.arm(Op::Truncate, 1, EIO, false);
    reg.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("must fail");
    drop(reg);
    assert_eq!(reopen_ids(tmp.path()).unwrap(), ["k0"]);
}

/// Compaction failing (ENOSPC on the rewrite) after an acknowledged write: the write stays
/// acknowledged and survives a reopen; the log is only longer.
#[test]
fn compaction_enospc_keeps_the_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Compact, 1, ENOSPC, false);
    reg.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.compact().expect_err("the faulted compaction must fail");
    assert_eq!(faults.fired(), 1);
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap();
    reg.compact().unwrap();
    drop(reg);
    assert_eq!(reopen_ids(tmp.path()).unwrap(), ["k0", "k1", "k2"]);
}

/// Many writes with a fault every few calls, alternating kinds: every acknowledged key is there
/// after a reopen and no refused one is.
#[test]
fn mixed_faults_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    let mut acked = vec!["k0".to_string()];
    let kinds = [
        (Op::Append, ENOSPC, false),
        (Op::Head, EIO, false),
        (Op::Append, EIO, false),
        (Op::Head, ENOSPC, false),
        (Op::Head, EIO, true),
        (Op::Append, EIO, true),
    ];
    let mut refused = 0;
    for i in 0..40u32 {
        if i % 3 == 1 {
            let (op, errno, after) = kinds[(i as usize / 3) % kinds.len()];
            faults.arm(op, 1, errno, after);
        }
        let id = format!("m{i}");
        match reg.create_key(None, &id, KeyUsage::EncryptDecrypt) {
            Ok(_) => acked.push(id),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 10, "only {refused} faults hit");
    acked.sort();
    assert_eq!(ids(&reg), acked);
    drop(reg);
    assert_eq!(reopen_ids(tmp.path()).unwrap(), acked);
}

/// The head was renamed into place, then the directory fsync failed, and the process stops
/// before any other write: the reopen must still open the store (with or without k1).
#[test]
fn head_dir_fsync_eio_then_reopen_opens() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Head, 1, EIO, true);
    let err = reg
        .create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("must fail");
    assert!(err.to_string().contains("fsync directory"), "{err}");
    assert_eq!(ids(&reg), ["k0"]);
    drop(reg);
    let got = reopen_ids(tmp.path()).unwrap_or_else(|e| panic!("reopen refused: {e}"));
    assert_eq!(got, ["k0"]);
}

/// The append's bytes reached the disk, then `fdatasync` failed and the store returned the
/// error without undoing them (as a shared database whose commit answer is lost): the next
/// write and a reopen must still work.
#[test]
fn append_sync_eio_with_bytes_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Append, 1, EIO, true);
    let err = reg
        .create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("must fail");
    assert!(err.to_string().contains("Input/output"), "{err}");
    assert_eq!(ids(&reg), ["k0"]);
    reg.create_key(None, "k2", KeyUsage::EncryptDecrypt)
        .unwrap_or_else(|e| panic!("next write: {e}"));
    assert_eq!(ids(&reg), ["k0", "k2"]);
    drop(reg);
    let got = reopen_ids(tmp.path()).unwrap_or_else(|e| panic!("reopen refused: {e}"));
    assert_eq!(got, ["k0", "k2"]);
}

/// Bytes on disk after a failed sync, then the process stops: the reopen cuts them off.
#[test]
fn append_sync_eio_with_bytes_on_disk_then_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let faults = Faults::default();
    let reg = open_faulty(tmp.path(), &faults);
    faults.arm(Op::Append, 1, EIO, true);
    faults.arm(Op::Truncate, 1, EIO, false);
    reg.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .expect_err("must fail");
    assert_eq!(faults.fired(), 2);
    drop(reg);
    let got = reopen_ids(tmp.path()).unwrap_or_else(|e| panic!("reopen refused: {e}"));
    assert_eq!(got, ["k0"]);
}
