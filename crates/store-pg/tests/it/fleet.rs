//! Registries of several members on one PostgreSQL store (the fleet's view of the seam): each
//! applies the others' writes with `refresh`, a write computed from an older view loses a
//! compare-and-set race instead of forking the chain, a database put back to an older state is
//! refused rather than applied, and the KRS-held head (here a compare-and-set book with the
//! KRS's semantics) rolls forward only from a head on the verified history.

use std::sync::{Arc, Mutex};

use keyward_keystore::KeyStore;
use keyward_keystore::{
    AnchorError, Freshness, HeadAnchor, KeystoreError, NewStore, Registry, StoreHead,
};
use keyward_keystore::{Header, SealedHead, SignedRecord};
use keyward_keystore::{KeyStatus, KeyUsage};
use keyward_secret::Key32;
use keyward_store_pg::{PgConfig, SharedPgStore};

use crate::common::*;

pub(crate) const MK: [u8; 32] = [0x5c; 32];

pub(crate) fn member(cfg: &PgConfig, freshness: Freshness) -> Registry {
    Registry::open_with(
        Box::new(SharedPgStore::connect(cfg).unwrap()),
        Key32::from_bytes(&MK).unwrap(),
        freshness,
    )
    .unwrap()
}

pub(crate) fn new_store(r: &Registry) {
    r.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
}

pub(crate) fn ids(r: &Registry) -> Vec<String> {
    let mut v: Vec<String> = r
        .list_keys(None)
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    v.sort();
    v
}

#[test]
fn members_apply_each_others_writes_with_refresh() {
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    let b = member(&s.config(), Freshness::Unanchored);
    assert!(!b.refresh().unwrap(), "nothing new yet");
    a.create_key(None, "k1", KeyUsage::EncryptDecrypt).unwrap();
    assert!(b.refresh().unwrap());
    assert_eq!(ids(&b), ["k1"]);
    assert_eq!(b.head(), a.head());
    // The kill switch from the other side.
    b.disable_key(None, "k1").unwrap();
    a.refresh().unwrap();
    assert_eq!(
        a.key_info(None, "k1").unwrap().status,
        KeyStatus::Disabled,
        "a key disabled on one member must be disabled on the others"
    );
    // A write refreshes first: a member that never called refresh still writes after the tip.
    b.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    a.create_key(None, "k3", KeyUsage::EncryptDecrypt).unwrap();
    b.refresh().unwrap();
    assert_eq!(ids(&a), ["k1", "k2", "k3"]);
    assert_eq!(ids(&b), ids(&a));
    assert_eq!(a.head(), b.head());
}

#[test]
fn a_rotation_on_one_member_is_live_on_the_others_and_a_due_schedule_rotates_once() {
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    a.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    let b = member(&s.config(), Freshness::Unanchored);
    let v1 = *b.snapshot().stores["default"].keys["k"].kek.expose();
    a.rotate_key(None, "k").unwrap();
    b.refresh().unwrap();
    let k = b.snapshot().stores["default"].keys["k"].clone();
    assert_eq!(k.version, 2);
    assert_eq!(
        k.kek_of(1).map(|x| *x.expose()),
        Some(v1),
        "version 1 still decrypts on b"
    );
    // Both members find the key due at the same moment: one rotation in the shared store.
    let due = |k: &keyward_keystore::LiveKey| k.version == 2;
    let (_, ra) = a.rotate_key_if(Some("default"), "k", due).unwrap();
    let (_, rb) = b.rotate_key_if(Some("default"), "k", due).unwrap();
    assert!(ra ^ rb, "exactly one member rotated ({ra}, {rb})");
    a.refresh().unwrap();
    assert_eq!(a.key_info(None, "k").unwrap().version, 3);
    assert_eq!(b.key_info(None, "k").unwrap().version, 3);
}

#[test]
fn a_destroyed_key_is_gone_on_every_member_and_from_the_database() {
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    a.create_key(None, "k", KeyUsage::EncryptDecrypt).unwrap();
    a.create_key(None, "keep", KeyUsage::EncryptDecrypt)
        .unwrap();
    a.rotate_key(None, "k").unwrap();
    let b = member(&s.config(), Freshness::Unanchored);
    let now = 1_900_000_000;
    a.schedule_destroy(None, "k", 7, now).unwrap();
    b.refresh().unwrap();
    assert_eq!(b.key_info(None, "k").unwrap().status, KeyStatus::Disabled);
    // b decides at the date (any member may); a catches up.
    assert!(b.destroy_due(None, "k", now + 7 * 86_400).unwrap());
    assert!(!a.destroy_due(None, "k", now + 7 * 86_400).unwrap_or(false));
    a.refresh().unwrap();
    for m in [&a, &b] {
        let snap = m.snapshot();
        assert!(!snap.stores["default"].keys.contains_key("k"));
        assert!(snap.stores["default"].destroyed.contains_key("k"));
        assert!(snap.stores["default"].keys.contains_key("keep"));
    }
    // No row of the shared store holds a sealed KEK of it any more.
    let mut db = sql(&s);
    let rows = db
        .query(
            "SELECT rec::text FROM keyward_records WHERE rec::text LIKE '%\"id\":\"k\"%'",
            &[],
        )
        .unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let t: String = r.get(0);
        assert!(!t.contains("\"kek\""), "{t}");
    }
    // A member that opens the store now sees it destroyed too.
    let c = member(&s.config(), Freshness::Unanchored);
    assert!(c.snapshot().stores["default"].destroyed.contains_key("k"));
    assert_eq!(ids(&c), ["keep"]);
}

#[test]
fn racing_writers_lose_a_race_instead_of_forking_and_nothing_is_lost() {
    let s = server();
    let first = member(&s.config(), Freshness::Unanchored);
    new_store(&first);
    drop(first);
    let conflicts = Arc::new(Mutex::new(0u32));
    let threads: Vec<_> = (0..3)
        .map(|m| {
            let cfg = s.config();
            let conflicts = conflicts.clone();
            std::thread::spawn(move || {
                let r = member(&cfg, Freshness::Unanchored);
                for i in 0..40 {
                    let id = format!("m{m}-k{i}");
                    loop {
                        match r.create_key(None, &id, KeyUsage::EncryptDecrypt) {
                            Ok(_) => break,
                            Err(KeystoreError::Conflict { .. }) => {
                                *conflicts.lock().unwrap() += 1;
                            }
                            Err(e) => panic!("{id}: {e}"),
                        }
                    }
                }
                r
            })
        })
        .collect();
    let members: Vec<Registry> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &members {
        r.refresh().unwrap();
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..3)
            .flat_map(|m| (0..40).map(move |i| format!("m{m}-k{i}")))
            .collect();
        v.sort();
        v
    };
    for r in &members {
        assert_eq!(ids(r), want, "every member holds every key exactly once");
        assert_eq!(r.head(), members[0].head());
    }
    // One store record, then 120 keys: contiguous, none duplicated.
    assert_eq!(members[0].head().seq, 121);
    // A fresh open verifies the whole chain the three wrote.
    let check = member(&s.config(), Freshness::Unanchored);
    assert_eq!(ids(&check), want);
    eprintln!("conflicts retried: {}", conflicts.lock().unwrap());
}

#[test]
fn a_database_put_back_to_an_older_state_is_refused_not_applied() {
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    a.create_key(None, "k1", KeyUsage::EncryptDecrypt).unwrap();
    a.disable_key(None, "k1").unwrap();
    let b = member(&s.config(), Freshness::Unanchored);
    assert_eq!(b.head().seq, 3);
    // The database operator deletes the last record (the kill switch) and the tip with it.
    let mut db = sql(&s);
    db.batch_execute("DELETE FROM keyward_records WHERE seq = 3; UPDATE keyward_head SET tip = 2;")
        .unwrap();
    match b.refresh() {
        Err(KeystoreError::SharedRollback { .. }) => {}
        other => panic!("a store behind what this member applied was accepted: {other:?}"),
    }
    // The member keeps the view it had: the key stays disabled.
    assert_eq!(b.key_info(None, "k1").unwrap().status, KeyStatus::Disabled);
    // And a write from it is refused too (it refreshes first), rather than forking.
    assert!(b.enable_key(None, "k1").is_err());
}

#[test]
fn a_record_changed_after_a_members_head_is_refused_on_catch_up() {
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    let b = member(&s.config(), Freshness::Unanchored);
    a.create_key(None, "k1", KeyUsage::EncryptDecrypt).unwrap();
    a.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    // The database operator edits the newest record before member b reads it: its usage.
    let mut db = sql(&s);
    let n = db
        .execute(
            "UPDATE keyward_records SET rec = replace(rec::text, '\"k2\"', '\"k9\"')::json \
             WHERE seq = 3",
            &[],
        )
        .unwrap();
    assert_eq!(n, 1);
    match b.refresh() {
        Err(KeystoreError::Tampered { .. }) => {}
        other => panic!("an edited record was applied: {other:?}"),
    }
    assert_eq!(ids(&b), Vec::<String>::new(), "nothing of it was applied");
}

/// The KRS head book's rules: compare-and-set, forward only, same store.
#[derive(Default)]
pub(crate) struct Book {
    head: Mutex<Option<StoreHead>>,
    down: Mutex<bool>,
}

impl HeadAnchor for Book {
    fn advance(&self, prev: Option<&StoreHead>, next: &StoreHead) -> Result<(), AnchorError> {
        if *self.down.lock().unwrap() {
            return Err(AnchorError::Unreachable("down".into()));
        }
        let mut h = self.head.lock().unwrap();
        if h.as_ref() == Some(next) {
            return Ok(());
        }
        if let Some(held) = h.as_ref() {
            // The KRS's rules: never an older master-key version; the same head under a newer
            // one is a re-seal; otherwise only forward.
            let reseal = held.seq == next.seq
                && held.chain_mac == next.chain_mac
                && next.mk_version > held.mk_version;
            if next.mk_version < held.mk_version || (held.seq >= next.seq && !reseal) {
                return Err(AnchorError::Refused("not forward".into()));
            }
        }
        if h.as_ref() != prev {
            return Err(AnchorError::Refused("not extending".into()));
        }
        *h = Some(next.clone());
        Ok(())
    }
    fn current(&self) -> Result<Option<StoreHead>, AnchorError> {
        if *self.down.lock().unwrap() {
            return Err(AnchorError::Unreachable("down".into()));
        }
        Ok(self.head.lock().unwrap().clone())
    }
}

pub(crate) fn anchored(book: &Arc<Book>) -> Freshness {
    Freshness::Anchored {
        floor: book.head.lock().unwrap().clone(),
        anchor: book.clone(),
    }
}

#[test]
fn the_anchor_rolls_forward_only_along_the_verified_history() {
    let s = server();
    let book = Arc::new(Book::default());
    let a = member(&s.config(), anchored(&book));
    new_store(&a);
    assert_eq!(book.current().unwrap(), Some(a.head()));
    let b = member(&s.config(), anchored(&book));

    // The KRS unreachable: the write is in the fleet's store and in effect, but not anchored,
    // and the caller is told so.
    *book.down.lock().unwrap() = true;
    match a.create_key(None, "k1", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::NotAnchored(_)) => {}
        other => panic!("expected NotAnchored, got {other:?}"),
    }
    *book.down.lock().unwrap() = false;
    assert_eq!(book.current().unwrap().unwrap().seq, 1);
    // The next write (another member's) records its head, rolling forward over record 2.
    b.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    assert_eq!(book.current().unwrap(), Some(b.head()));
    assert_eq!(b.head().seq, 3);

    // A head the KRS holds that is NOT on this member's verified history (a database showing
    // members different histories): never rolled forward from.
    let foreign = StoreHead {
        store_id: b.head().store_id,
        seq: 2,
        chain_mac: vec![0xee; 32],
        mk_version: 1,
    };
    *book.head.lock().unwrap() = Some(foreign.clone());
    match b.create_key(None, "k3", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::NotAnchored(why)) => {
            assert!(why.contains("not on this member's history"), "{why}")
        }
        other => panic!("expected NotAnchored, got {other:?}"),
    }
    assert_eq!(book.current().unwrap(), Some(foreign));

    // A member booting with a floor newer than the database: refused.
    let ahead = StoreHead {
        seq: 99,
        ..b.head()
    };
    *book.head.lock().unwrap() = Some(ahead);
    match Registry::open_with(
        Box::new(SharedPgStore::connect(&s.config()).unwrap()),
        Key32::from_bytes(&MK).unwrap(),
        anchored(&book),
    ) {
        Err(KeystoreError::Rollback { .. }) => {}
        Err(e) => panic!("expected Rollback, got {e}"),
        Ok(_) => panic!("a store behind the KRS head opened"),
    }
}

/// The KRS's book, with something else happening at the KRS just before a given `advance`
/// (counted from 1): another member writing, or recording its head late.
struct Hooked {
    book: Arc<Book>,
    calls: Mutex<usize>,
    hooks: Mutex<Vec<(usize, Hook)>>,
}

/// What happens at the KRS before an advance.
type Hook = Box<dyn FnOnce() + Send>;

impl Hooked {
    fn new(book: &Arc<Book>) -> Arc<Hooked> {
        Arc::new(Hooked {
            book: book.clone(),
            calls: Mutex::new(0),
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// Run `f` just before the `n`-th advance from now.
    fn before(&self, n: usize, f: impl FnOnce() + Send + 'static) {
        let at = *self.calls.lock().unwrap() + n;
        self.hooks.lock().unwrap().push((at, Box::new(f)));
    }

    fn member(self: &Arc<Self>, cfg: &PgConfig) -> Registry {
        let floor = self.book.head.lock().unwrap().clone();
        Registry::open_with(
            Box::new(SharedPgStore::connect(cfg).unwrap()),
            Key32::from_bytes(&MK).unwrap(),
            Freshness::Anchored {
                floor,
                anchor: self.clone(),
            },
        )
        .unwrap()
    }
}

impl HeadAnchor for Hooked {
    fn advance(&self, prev: Option<&StoreHead>, next: &StoreHead) -> Result<(), AnchorError> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        let hook = {
            let mut hooks = self.hooks.lock().unwrap();
            hooks
                .iter()
                .position(|(at, _)| *at == n)
                .map(|i| hooks.remove(i).1)
        };
        if let Some(f) = hook {
            f();
        }
        self.book.advance(prev, next)
    }
    fn current(&self) -> Result<Option<StoreHead>, AnchorError> {
        self.book.current()
    }
}

#[test]
fn a_write_overtaken_at_the_krs_by_a_later_head_on_its_history_is_anchored() {
    let s = server();
    let book = Arc::new(Book::default());
    let hooked = Hooked::new(&book);
    let a = hooked.member(&s.config());
    new_store(&a);
    let b = Arc::new(member(&s.config(), anchored(&book)));
    // A appends record 2 and, before it tells the KRS, B appends record 3 on top of it and has
    // the KRS record 3 (rolling forward over 2, which is on B's verified history).
    let b2 = b.clone();
    hooked.before(1, move || {
        b2.create_key(None, "by-b", KeyUsage::EncryptDecrypt)
            .unwrap();
    });
    // A's own advance (1 -> 2) is then refused, but the head the KRS holds follows A's write
    // on the store's history: the write IS anchored, and A says so.
    match a.create_key(None, "by-a", KeyUsage::EncryptDecrypt) {
        Ok(_) => {}
        Err(e) => panic!("an anchored write reported as not anchored: {e}"),
    }
    assert_eq!(book.current().unwrap(), Some(b.head()));
    assert_eq!(b.head().seq, 3);
    assert_eq!(a.head(), b.head(), "A read B's record while checking");
    assert_eq!(ids(&a), ["by-a", "by-b"]);
}

#[test]
fn a_write_follows_the_krs_head_while_another_member_moves_it() {
    let s = server();
    let book = Arc::new(Book::default());
    let hooked = Hooked::new(&book);
    let a = hooked.member(&s.config());
    new_store(&a);
    let b = member(&s.config(), anchored(&book));
    // B's record 2 is stored, but the KRS (down) did not record it: it holds 1.
    let one = book.current().unwrap().unwrap();
    *book.down.lock().unwrap() = true;
    assert!(matches!(
        b.create_key(None, "by-b", KeyUsage::EncryptDecrypt),
        Err(KeystoreError::NotAnchored(_))
    ));
    *book.down.lock().unwrap() = false;
    let two = b.head();
    // A writes record 3 on top of it. Its advance 2 -> 3 is refused (the KRS holds 1); A
    // tries again from 1, and just before that B records 2 late: refused again, and A
    // follows to 2 -> 3.
    let late = book.clone();
    hooked.before(2, move || late.advance(Some(&one), &two).unwrap());
    match a.create_key(None, "by-a", KeyUsage::EncryptDecrypt) {
        Ok(_) => {}
        Err(e) => panic!("a write lost the KRS head to a moving target: {e}"),
    }
    assert_eq!(book.current().unwrap(), Some(a.head()));
    assert_eq!(a.head().seq, 3);
}

// --- Master-key re-seal on a fleet ---------------------------------------------------------

const MK2: [u8; 32] = [0x5d; 32];

fn v1() -> keyward_keystore::MasterKeys {
    keyward_keystore::MasterKeys::single(Key32::from_bytes(&MK).unwrap())
}

/// Version 2 current, version 1 still released (a member booted after `krs mk rotate`).
fn both() -> keyward_keystore::MasterKeys {
    let mut keys = keyward_keystore::MasterKeys::new(2, Key32::from_bytes(&MK2).unwrap());
    keys.insert(1, Key32::from_bytes(&MK).unwrap());
    keys
}

fn v2() -> keyward_keystore::MasterKeys {
    keyward_keystore::MasterKeys::new(2, Key32::from_bytes(&MK2).unwrap())
}

fn open_keys(
    cfg: &PgConfig,
    keys: keyward_keystore::MasterKeys,
    freshness: Freshness,
) -> Result<Registry, KeystoreError> {
    Registry::open_keys(
        Box::new(SharedPgStore::connect(cfg).unwrap()),
        keys,
        freshness,
    )
}

/// The log generation, its master-key version and the header's, as the database has them.
fn generation(s: &Server) -> (i64, i32, i64) {
    let row = sql(s)
        .query_one(
            "SELECT generation, mk_version, (SELECT COALESCE((header->>'mk_version')::bigint, 1) \
             FROM keyward_header) FROM keyward_head",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Three members: one re-seals, the one released both versions follows and keeps writing,
/// the one booted before the rotation (version 1 only) stops writing, says why, and keeps
/// serving what it has; the KRS-held head moves to the new version, so the old one is no
/// longer needed by anyone (a member with version 2 alone opens, one with version 1 alone
/// is refused): what `krs mk retire` checks.
#[test]
fn a_fleet_reseal_moves_every_member_and_they_keep_serving_and_writing() {
    let s = server();
    let book = Arc::new(Book::default());
    let old = open_keys(&s.config(), v1(), anchored(&book)).unwrap();
    new_store(&old);
    old.create_key(None, "k1", KeyUsage::EncryptDecrypt)
        .unwrap();
    let a = open_keys(&s.config(), both(), anchored(&book)).unwrap();
    let b = open_keys(&s.config(), both(), anchored(&book)).unwrap();
    assert_eq!(generation(&s), (0, 1, 1));
    let before = book.current().unwrap().unwrap();
    assert_eq!(before.mk_version, 1);

    let head = a.reseal().unwrap().expect("a re-seal was due");
    assert_eq!((head.seq, head.mk_version), (before.seq, 2));
    assert_eq!(
        generation(&s),
        (1, 2, 2),
        "one transaction: records, tip row, header"
    );
    assert_eq!(
        book.current().unwrap(),
        Some(head.clone()),
        "the KRS follows"
    );
    assert_eq!(a.mk_status().sealed, 2);

    // The follower notices although the tip did not move, and continues under version 2.
    assert!(b.refresh().unwrap(), "the re-seal is a change");
    assert_eq!(b.mk_status().sealed, 2);
    assert_eq!(b.head(), head);
    assert_eq!(
        b.reseal().unwrap(),
        None,
        "the fleet moved: nothing left to re-seal"
    );
    b.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    assert_eq!(b.head().mk_version, 2);
    a.create_key(None, "k3", KeyUsage::EncryptDecrypt).unwrap();
    b.refresh().unwrap();
    assert_eq!(ids(&b), ["k1", "k2", "k3"]);
    assert_eq!(book.current().unwrap(), Some(a.head()));

    // The member without version 2: refuses to apply or write, keeps its view for XKS.
    match old.refresh() {
        Err(KeystoreError::MasterKeyVersionMissing { needed: 2, .. }) => {}
        other => panic!("expected MasterKeyVersionMissing, got {other:?}"),
    }
    match old.create_key(None, "k4", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::MasterKeyVersionMissing { needed: 2, .. }) => {}
        other => panic!("a member without the new version must not write: {other:?}"),
    }
    assert_eq!(ids(&old), ["k1"], "it still serves what it has");
    assert!(old.snapshot().stores["default"].keys.contains_key("k1"));

    // Version 1 is needed by no one now.
    let only2 = open_keys(&s.config(), v2(), anchored(&book)).unwrap();
    assert_eq!(ids(&only2), ["k1", "k2", "k3"]);
    match open_keys(&s.config(), v1(), anchored(&book)) {
        Err(KeystoreError::MasterKeyVersionMissing { needed: 2, .. }) => {}
        Err(e) => panic!("expected MasterKeyVersionMissing, got {e}"),
        Ok(_) => panic!("a version-1-only member opened the re-sealed store"),
    }
    // The KRS never takes the old version back.
    assert!(book.advance(Some(&a.head()), &before).is_err());
}

/// A [`SharedPgStore`] that runs a hook once, right after a `tip` read: the member's refresh
/// sees the store as it was, and the hook (another member's re-seal) lands before its append.
type RaceHook = Arc<Mutex<Option<Hook>>>;

struct Raced {
    inner: SharedPgStore,
    hook: RaceHook,
}

impl keyward_keystore::KeyStore for Raced {
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
    fn shared(&self) -> bool {
        true
    }
    fn tip(&mut self) -> Result<Option<u64>, KeystoreError> {
        let t = self.inner.tip();
        let hook = self.hook.lock().unwrap().take();
        if let Some(h) = hook {
            h();
        }
        t
    }
    fn load_after(
        &mut self,
        seq: u64,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        self.inner.load_after(seq, visit)
    }
    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        self.inner.append(rec)
    }
    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        self.inner.append_batch(recs)
    }
    fn record_count(&self) -> usize {
        self.inner.record_count()
    }
    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.inner.compact(records)
    }
    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.inner.rewrite(header, records)
    }
    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        self.inner.truncate_after(seq)
    }
    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        self.inner.load_head()
    }
    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        self.inner.store_head(head)
    }
    fn reseal(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
        head: &SealedHead,
    ) -> Result<(), KeystoreError> {
        self.inner.reseal(header, records, head)
    }
    fn rewritten(&self) -> bool {
        self.inner.rewritten()
    }
}

/// A member that has not noticed the re-seal appends a record sealed and chained under the
/// old version right after it (its refresh read the tip just before the re-seal committed):
/// the append's compare-and-set checks the generation, so it is refused (Conflict), not
/// chained onto the new generation; the member re-reads under the new version and the retry
/// lands there. Also at the store level: an old-generation append at the same tip is refused.
#[test]
fn a_stale_members_append_after_a_reseal_is_refused_then_lands_under_the_new_version() {
    let s = server();
    let book = Arc::new(Book::default());
    {
        let old = open_keys(&s.config(), v1(), anchored(&book)).unwrap();
        new_store(&old);
        old.create_key(None, "k1", KeyUsage::EncryptDecrypt)
            .unwrap();
    }
    let a = Arc::new(open_keys(&s.config(), both(), anchored(&book)).unwrap());

    // Store level: a connection that loaded generation 0 appends at the tip after the re-seal.
    let mut raw = connect(&s);
    let mut last = None;
    raw.load(&mut |r| {
        last = Some(r);
        Ok(())
    })
    .unwrap();
    let mut stale = last.unwrap();

    let hook: RaceHook = Arc::new(Mutex::new(None));
    let b = Registry::open_keys(
        Box::new(Raced {
            inner: SharedPgStore::connect(&s.config()).unwrap(),
            hook: hook.clone(),
        }),
        both(),
        anchored(&book),
    )
    .unwrap();
    assert_eq!(b.mk_status().sealed, 1);
    let a2 = a.clone();
    *hook.lock().unwrap() = Some(Box::new(move || {
        a2.reseal().unwrap().expect("re-sealed");
    }));
    let tip_before = generation(&s);
    match b.create_key(None, "k2", KeyUsage::EncryptDecrypt) {
        Err(KeystoreError::Conflict { .. }) => {}
        other => panic!("the stale append must be refused, got {other:?}"),
    }
    assert_eq!(
        tip_before.0 + 1,
        generation(&s).0,
        "the re-seal happened in between"
    );
    assert!(
        !ids(&a).contains(&"k2".to_string()) && {
            a.refresh().unwrap();
            !ids(&a).contains(&"k2".to_string())
        },
        "nothing of the refused write is in the store"
    );
    // The conflict made it re-read: it is under version 2 now, and the retry lands.
    assert_eq!(b.mk_status().sealed, 2);
    b.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    assert_eq!(b.head().mk_version, 2);
    a.refresh().unwrap();
    assert_eq!(ids(&a), ["k1", "k2"]);
    let fresh = open_keys(&s.config(), v2(), anchored(&book)).unwrap();
    assert_eq!(
        ids(&fresh),
        ["k1", "k2"],
        "the whole store verifies under version 2"
    );

    // The raw old-generation connection: its next seq is taken now, but even the seq after
    // the new tip is refused for the generation.
    let tip = raw.tip().unwrap().unwrap();
    assert!(raw.rewritten(), "the tip read shows the log was replaced");
    stale.seq = tip + 1;
    match raw.append(&stale) {
        Err(KeystoreError::Conflict { .. }) => {}
        other => panic!("an old-generation append must be refused, got {other:?}"),
    }
}

const PG_URL_ENV: &str = "KEYWARD_TEST_PG_URL";

/// The child: open with both versions and re-seal; aborts at `KEYWARD_TEST_CRASH_AT`.
#[test]
#[ignore = "helper process for a_reseal_killed_before_its_commit_leaves_the_old_generation"]
fn reseal_child() {
    let Ok(url) = std::env::var(PG_URL_ENV) else {
        eprintln!("reseal_child: helper for the crash test; nothing to do without {PG_URL_ENV}");
        return;
    };
    let r = open_keys(&PgConfig::new(url), both(), Freshness::Unanchored).unwrap();
    r.reseal().unwrap();
    println!("RESEALED");
}

/// The re-sealing member killed inside its transaction (every row written, not committed):
/// PostgreSQL rolls it back, the old generation is intact and usable by version-1 members,
/// and a later re-seal completes.
#[test]
fn a_reseal_killed_before_its_commit_leaves_the_old_generation() {
    let s = server();
    let a = open_keys(&s.config(), v1(), Freshness::Unanchored).unwrap();
    new_store(&a);
    for i in 0..20 {
        a.create_key(None, &format!("k{i:02}"), KeyUsage::EncryptDecrypt)
            .unwrap();
    }
    let before = ids(&a);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fleet::reseal_child", "--ignored", "--nocapture"])
        .env(PG_URL_ENV, s.url())
        .env("KEYWARD_TEST_CRASH_AT", "pg-reseal-uncommitted")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("KEYWARD_TEST_CRASH_AT=pg-reseal-uncommitted"),
        "the child did not stop inside the transaction: {stderr}"
    );
    assert_eq!(
        generation(&s),
        (0, 1, 1),
        "nothing of the re-seal committed"
    );
    assert!(!a.refresh().unwrap(), "no change for the members");
    a.create_key(None, "after", KeyUsage::EncryptDecrypt)
        .unwrap();
    let v1_member = open_keys(&s.config(), v1(), Freshness::Unanchored).unwrap();
    assert_eq!(ids(&v1_member).len(), before.len() + 1);
    let b = open_keys(&s.config(), both(), Freshness::Unanchored).unwrap();
    b.reseal()
        .unwrap()
        .expect("the re-seal is still due and completes");
    assert_eq!(generation(&s), (1, 2, 2));
    assert_eq!(ids(&b), ids(&v1_member));
}

/// Two members booted after the rotation re-seal at once (as `spawn_reseal` does at boot):
/// exactly one re-seals, the other finds it done and follows.
#[test]
fn members_resealing_together_reseal_once() {
    let s = server();
    {
        let old = open_keys(&s.config(), v1(), Freshness::Unanchored).unwrap();
        new_store(&old);
        old.create_key(None, "k1", KeyUsage::EncryptDecrypt)
            .unwrap();
    }
    let a = Arc::new(open_keys(&s.config(), both(), Freshness::Unanchored).unwrap());
    let b = Arc::new(open_keys(&s.config(), both(), Freshness::Unanchored).unwrap());
    let go = Arc::new(std::sync::Barrier::new(2));
    let run = |r: Arc<Registry>, go: Arc<std::sync::Barrier>| {
        std::thread::spawn(move || {
            go.wait();
            r.reseal().unwrap().is_some()
        })
    };
    let (ta, tb) = (run(a.clone(), go.clone()), run(b.clone(), go));
    let done = [ta.join().unwrap(), tb.join().unwrap()];
    assert_eq!(done.iter().filter(|d| **d).count(), 1, "{done:?}");
    assert_eq!(generation(&s), (1, 2, 2));
    assert_eq!((a.mk_status().sealed, b.mk_status().sealed), (2, 2));
    a.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    b.create_key(None, "k3", KeyUsage::EncryptDecrypt).unwrap();
    a.refresh().unwrap();
    assert_eq!(ids(&a), ["k1", "k2", "k3"]);
}

/// PostgreSQL crashes (`kill -9` of the postmaster and its backends) twice while four members
/// create keys as fast as they can, each retrying what is refused: every write a member was told
/// succeeded is there afterwards, exactly once; a write it was told failed is either wholly
/// there (committed, its answer lost with the connection) or wholly absent; the members
/// reconnect by themselves and end on one head.
#[test]
fn writers_lose_nothing_acknowledged_across_database_crashes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let mut s = server();
    let c = s.config();
    let first = member(&c, Freshness::Unanchored);
    new_store(&first);
    drop(first);
    let stop = AtomicBool::new(false);
    let (acked, refused) = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (c, stop) = (&c, &stop);
                sc.spawn(move || {
                    let r = member(c, Freshness::Unanchored);
                    let (mut acked, mut refused) = (Vec::new(), Vec::new());
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let id = format!("w{w}-{i}");
                        i += 1;
                        match r.create_key(None, &id, KeyUsage::EncryptDecrypt) {
                            Ok(_) => acked.push(id),
                            Err(_) => {
                                refused.push(id);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    (acked, refused)
                })
            })
            .collect();
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(1500));
            s.kill9().unwrap();
            std::thread::sleep(Duration::from_millis(700));
            s.start_again().unwrap();
        }
        // Time after the last restart for every writer to get writes through again.
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        let mut refused = Vec::new();
        for h in writers {
            let (a, r) = h.join().unwrap();
            acked.push(a);
            refused.push(r);
        }
        eprintln!("writers stopped {:?} after the last restart", t.elapsed());
        (acked, refused)
    });
    let reader = member(&c, Freshness::Unanchored);
    let present: std::collections::HashSet<String> = ids(&reader).into_iter().collect();
    let n_acked: usize = acked.iter().map(Vec::len).sum();
    let n_refused: usize = refused.iter().map(Vec::len).sum();
    assert!(
        n_refused > 0,
        "the crashes refused no write: they did not happen"
    );
    for (w, a) in acked.iter().enumerate() {
        assert!(
            a.len() > 5,
            "writer {w} got only {} writes through: it did not reconnect",
            a.len()
        );
        for id in a {
            assert!(present.contains(id), "acknowledged key {id} lost");
        }
    }
    // Nothing else is there but the refused ones that did commit (and the log has no gap: the
    // registry opened it and chained every record).
    let all: std::collections::HashSet<&String> =
        acked.iter().chain(refused.iter()).flatten().collect();
    for id in &present {
        assert!(all.contains(id), "a key nobody wrote: {id}");
    }
    let committed_refused = refused
        .iter()
        .flatten()
        .filter(|id| present.contains(*id))
        .count();
    eprintln!(
        "{n_acked} writes acknowledged and all kept; {n_refused} refused, of which {committed_refused} had committed"
    );
}
