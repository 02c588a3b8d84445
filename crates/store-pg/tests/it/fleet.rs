//! Registries of several members on one PostgreSQL store (the fleet's view of the seam): each
//! applies the others' writes with `refresh`, a write computed from an older view loses a
//! compare-and-set race instead of forking the chain, a database put back to an older state is
//! refused rather than applied, and the KRS-held head (here a compare-and-set book with the
//! KRS's semantics) rolls forward only from a head on the verified history.

use std::sync::{Arc, Mutex};

use keyward_keystore::view::{KeyStatus, KeyUsage};
use keyward_keystore::{
    AnchorError, Freshness, HeadAnchor, KeystoreError, NewStore, Registry, StoreHead,
};
use keyward_secret::Key32;
use keyward_store_pg::{PgConfig, SharedPgStore};

use crate::common::*;

const MK: [u8; 32] = [0x5c; 32];

fn member(cfg: &PgConfig, freshness: Freshness) -> Registry {
    Registry::open_with(
        Box::new(SharedPgStore::connect(cfg).unwrap()),
        Key32::from_bytes(&MK).unwrap(),
        freshness,
    )
    .unwrap()
}

fn new_store(r: &Registry) {
    r.create_store(NewStore {
        name: "default".into(),
        uri_prefix: "/keyward".into(),
        region: "us-east-1".into(),
        extra_services: vec![],
    })
    .unwrap();
}

fn ids(r: &Registry) -> Vec<String> {
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
    let due = |k: &keyward_keystore::view::LiveKey| k.version == 2;
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
        Err(KeystoreError::Rollback { .. }) | Err(KeystoreError::Truncated { .. }) => {}
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
struct Book {
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
        if h.as_ref().is_some_and(|h| h.seq >= next.seq) || h.as_ref() != prev {
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

fn anchored(book: &Arc<Book>) -> Freshness {
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

/// Master-key rotation on a fleet is not built yet: a member released a newer version than
/// the shared store is sealed under says so and refuses to re-seal, leaving the store (and
/// every other member) under the version it has, still opening and writing.
#[test]
fn a_shared_store_is_not_resealed_yet_and_stays_usable() {
    use keyward_keystore::MasterKeys;
    let s = server();
    let a = member(&s.config(), Freshness::Unanchored);
    new_store(&a);
    a.create_key(None, "k1", KeyUsage::EncryptDecrypt).unwrap();
    let mut keys = MasterKeys::new(2, Key32::from_bytes(&[0x5d; 32]).unwrap());
    keys.insert(1, Key32::from_bytes(&MK).unwrap());
    let b = Registry::open_keys(
        Box::new(SharedPgStore::connect(&s.config()).unwrap()),
        keys,
        Freshness::Unanchored,
    )
    .unwrap();
    let st = b.mk_status();
    assert_eq!((st.sealed, st.current), (1, 2));
    let err = b.reseal().unwrap_err().to_string();
    assert!(err.contains("not built"), "{err}");
    b.create_key(None, "k2", KeyUsage::EncryptDecrypt).unwrap();
    a.refresh().unwrap();
    assert_eq!(ids(&a), ["k1", "k2"]);
    assert_eq!(a.mk_status().sealed, 1);
}
