//! Opening a store: verify the records against the chain, the sealed head and the freshness
//! floor, replay them, and cut off only what was never acknowledged.
//!
//! Which record is the acknowledged head ("the cut"): with a key-release service (KRS), the head
//! it recorded (the floor from the release receipt): records after it were never acknowledged
//! (an admin write returns only after the KRS recorded its head). Without a floor (no KRS, or
//! its first head), the sealed head kept next to the records. Everything up to the cut must be
//! there and verify, ending in exactly the recorded chain MAC; after the cut there may be at
//! most one write (one batch, possibly torn), which is cut off with a warning. So:
//! * a deleted or reordered record breaks the chain or leaves a gap: refused;
//! * a log cut short (or its last record deleted) ends before the cut: refused (`Truncated`,
//!   or `Rollback` when the floor says so);
//! * a whole older copy (log and head together) is older than the floor: refused (`Rollback`);
//!   without a KRS it cannot be told apart, which the appliance warns about;
//! * another store: a different id than the floor's (`OtherStore`) or master key
//!   (`WrongMasterKey`).
//!
//! Format 1 stores (the previous release) are verified under their own rules and rewritten as
//! format 2 (their records chained `1..n`, verbatim), then opened as such.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

use super::head::{AnchorError, Freshness, HeadAnchor, StoreHead};
use super::model::{
    Header, KeyStore, Record, SealedHead, SignedRecord, LEGACY_LOG_FORMAT, LOG_FORMAT,
};
use super::registry::{apply, ApplyError, Sidecar, StoreBuild};
use super::seal::{decode_mac, mac_matches, ChainMac, Sealer};
use super::source::MasterKeys;
use super::KeystoreError;
use keyward_secret::getrandom_fill;

/// A verified, replayed store.
pub(super) struct Opened {
    pub(super) sealer: Sealer,
    pub(super) builds: HashMap<String, StoreBuild>,
    /// The TLS identity and the approval requests (state beside the stores).
    pub(super) tls: Sidecar,
    /// The acknowledged head (records after it were cut off).
    pub(super) head: StoreHead,
    /// A shared store's verified history (see [`Replayed::chain`]).
    pub(super) chain: ChainLog,
}

/// The sealed form of `head`.
pub(super) fn seal_head(sealer: &Sealer, head: &StoreHead) -> Result<SealedHead, KeystoreError> {
    let chain: ChainMac = head
        .chain_mac
        .as_slice()
        .try_into()
        .map_err(|_| KeystoreError::Seal)?;
    Ok(SealedHead {
        format: LOG_FORMAT,
        store_id: hex::encode(&head.store_id),
        seq: head.seq,
        chain_mac: hex::encode(chain),
        mac: hex::encode(sealer.head_mac(head.seq, &chain)),
        mk_version: sealer.mk_version(),
    })
}

fn head_tampered(why: &'static str) -> KeystoreError {
    KeystoreError::Tampered {
        record: "sealed head".into(),
        why,
    }
}

/// Check a sealed head against this store and the head key of the master-key version that
/// sealed it: the log's own, or (a re-seal interrupted after the log was switched, before the
/// head was) an older one this boot still holds. A head newer than the log is refused.
fn open_head(
    sealer: &Sealer,
    sealed: &SealedHead,
    keys: Option<&MasterKeys>,
) -> Result<StoreHead, KeystoreError> {
    if sealed.mk_version > sealer.mk_version() {
        return Err(head_tampered(
            "the sealed head names a newer master-key version than the log (an older log put \
             back after a re-seal?)",
        ));
    }
    if sealed.mk_version != sealer.mk_version() {
        let key = keys.and_then(|k| k.get(sealed.mk_version)).ok_or_else(|| {
            KeystoreError::MasterKeyVersionMissing {
                needed: sealed.mk_version,
                held: keys.map_or_else(|| vec![sealer.mk_version()], MasterKeys::versions),
            }
        })?;
        let old = Sealer::versioned(key, sealer.store_id(), sealed.mk_version)?;
        return open_head_with(&old, sealed);
    }
    open_head_with(sealer, sealed)
}

fn open_head_with(sealer: &Sealer, sealed: &SealedHead) -> Result<StoreHead, KeystoreError> {
    if sealed.format != LOG_FORMAT {
        return Err(head_tampered("the sealed head has another format"));
    }
    if hex::decode(&sealed.store_id).ok().as_deref() != Some(sealer.store_id()) {
        return Err(head_tampered(
            "the sealed head belongs to another store (another store id)",
        ));
    }
    let chain = decode_mac(&sealed.chain_mac)
        .ok_or_else(|| head_tampered("the sealed head's chain MAC is not 32 bytes of hex"))?;
    if !mac_matches(&sealer.head_mac(sealed.seq, &chain), &sealed.mac) {
        return Err(head_tampered(
            "the sealed head's MAC does not verify (altered, or sealed under another master key)",
        ));
    }
    Ok(StoreHead {
        store_id: sealer.store_id().to_vec(),
        seq: sealed.seq,
        chain_mac: chain.to_vec(),
        mk_version: sealed.mk_version,
    })
}

/// The sealer for `header` (under the master-key version it names), after checking the key.
pub(super) fn sealer_for(header: &Header, keys: &MasterKeys) -> Result<Sealer, KeystoreError> {
    let id = hex::decode(&header.store_id)
        .map_err(|_| KeystoreError::Format("store id is not hex".into()))?;
    let master =
        keys.get(header.mk_version)
            .ok_or_else(|| KeystoreError::MasterKeyVersionMissing {
                needed: header.mk_version,
                held: keys.versions(),
            })?;
    let sealer = Sealer::versioned(master, &id, header.mk_version)?;
    if !sealer.verify_check(&header.check) {
        return Err(KeystoreError::WrongMasterKey);
    }
    Ok(sealer)
}

/// Open (initialise, migrate) and verify the store in `backend`.
pub(super) fn open_store(
    backend: &mut dyn KeyStore,
    master: &MasterKeys,
    freshness: &Freshness,
) -> Result<Opened, KeystoreError> {
    let floor = match freshness {
        Freshness::Anchored { floor, .. } => floor.as_ref(),
        Freshness::Unanchored => None,
    };
    let opened = match backend.header()? {
        None => {
            if let Some(f) = floor {
                // The KRS recorded a store here: an empty directory is that store deleted.
                return Err(KeystoreError::StoreMissing {
                    location: backend.location(),
                    anchor_seq: f.seq,
                });
            }
            match init(backend, master) {
                // A shared store another member initialised at the same moment: open theirs.
                Err(KeystoreError::Conflict { expected: 0, .. }) if backend.shared() => {
                    tracing::info!("another member initialised the shared key store first");
                    return open_store(backend, master, freshness);
                }
                r => r?,
            }
        }
        Some(h) if h.format == LEGACY_LOG_FORMAT => {
            let sealer = sealer_for(&h, master)?;
            if let Some(f) = floor {
                if f.store_id != sealer.store_id() {
                    return Err(other_store(sealer.store_id(), &f.store_id));
                }
                // The KRS recorded a head of this store, so it was migrated already: this is
                // a copy from before.
                tracing::error!(
                    "the key store is in format 1 (the release before freshness anchoring) but \
                     the key-release service recorded record {} of it: an older copy",
                    f.seq
                );
                return Err(KeystoreError::Rollback {
                    store_seq: 0,
                    anchor_seq: f.seq,
                });
            }
            migrate(backend, &h, sealer)?;
            open_v2(backend, master, floor)?
        }
        Some(h) if h.format == LOG_FORMAT => open_v2(backend, master, floor)?,
        Some(h) => {
            return Err(KeystoreError::Format(format!(
                "log format {} (this build reads {LEGACY_LOG_FORMAT} and {LOG_FORMAT})",
                h.format
            )))
        }
    };
    match freshness {
        Freshness::Unanchored => tracing::warn!(
            store = %backend.location(),
            "the key store has no freshness anchor (master_key.source = \"file\"): a restored \
             older copy of it cannot be detected; for development only"
        ),
        Freshness::Anchored {
            floor: None,
            anchor,
        } => match anchor_first(anchor.as_ref(), &opened.head) {
            Ok(()) => {}
            // A fleet's members booting for the first time together: another member recorded
            // the first head after this one's release. Fine if it is on the history verified
            // here (then record ours from it); anything else is refused as before.
            Err(e) if backend.shared() => match anchor.current() {
                Ok(Some(h)) if h == opened.head => {}
                Ok(Some(h)) if h.seq < opened.head.seq && opened.chain.contains(&h) => {
                    anchor
                        .advance(Some(&h), &opened.head)
                        .map_err(KeystoreError::AnchorFirstHead)?;
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        },
        Freshness::Anchored { floor: Some(_), .. } => {}
    }
    Ok(opened)
}

fn other_store(found: &[u8], expected: &[u8]) -> KeystoreError {
    KeystoreError::OtherStore {
        found: hex::encode(found),
        expected: hex::encode(expected),
    }
}

/// First boot (or upgrade) with a KRS that holds no head for this deployment yet: record ours.
fn anchor_first(anchor: &dyn HeadAnchor, head: &StoreHead) -> Result<(), KeystoreError> {
    let err = match anchor.advance(None, head) {
        Ok(()) => {
            tracing::info!(
                seq = head.seq,
                "key store head recorded at the key-release service"
            );
            return Ok(());
        }
        Err(e) => e,
    };
    if let AnchorError::Unreachable(_) = &err {
        // The answer may have been lost: ask what it holds.
        if let Ok(Some(h)) = anchor.current() {
            if &h == head {
                return Ok(());
            }
        }
    }
    Err(KeystoreError::AnchorFirstHead(err))
}

/// A new store: its sealed head (the empty chain) first, then its header.
fn init(backend: &mut dyn KeyStore, master: &MasterKeys) -> Result<Opened, KeystoreError> {
    let mut id = [0u8; 16];
    getrandom_fill(&mut id)?;
    let v = master.current_version();
    let key = master
        .get(v)
        .ok_or_else(|| KeystoreError::MasterKeyVersionMissing {
            needed: v,
            held: master.versions(),
        })?;
    let sealer = Sealer::versioned(key, &id, v)?;
    let header = Header {
        format: LOG_FORMAT,
        store_id: hex::encode(id),
        check: sealer.seal_check()?,
        mk_version: v,
    };
    let head = StoreHead {
        store_id: id.to_vec(),
        seq: 0,
        chain_mac: sealer.chain_start().to_vec(),
        mk_version: v,
    };
    // Head before header: a log never exists without its head (a crash in between leaves an
    // uninitialised store, initialised afresh next time).
    backend.store_head(&seal_head(&sealer, &head)?)?;
    backend.init(&header)?;
    // Opens the append handle on the new, empty log.
    backend.load(&mut |_| Err(KeystoreError::Format("new store is not empty".into())))?;
    let mut chain = ChainLog::default();
    if backend.shared() {
        chain.restart(0, sealer.chain_start());
    }
    Ok(Opened {
        sealer,
        builds: HashMap::new(),
        tls: Sidecar::default(),
        head,
        chain,
    })
}

fn tampered(seq: u64, why: &'static str) -> KeystoreError {
    KeystoreError::Tampered {
        record: format!("seq {seq}"),
        why,
    }
}

pub(super) fn replay(
    sealer: &Sealer,
    builds: &mut HashMap<String, StoreBuild>,
    tls: &mut Sidecar,
    seq: u64,
    rec: Record,
) -> Result<(), KeystoreError> {
    apply(sealer, builds, tls, rec).map_err(|e| match e {
        ApplyError::Tampered(why) => tampered(seq, why),
        ApplyError::Other(e) => e,
    })
}

/// The checkpoint being read: its `seq`, live records still expected, the last live MAC.
struct Section {
    seq: u64,
    remaining: u64,
    index: u64,
    prev: ChainMac,
}

/// Verify and replay a format-2 store; cut off what lies beyond the acknowledged head.
fn open_v2(
    backend: &mut dyn KeyStore,
    master: &MasterKeys,
    floor: Option<&StoreHead>,
) -> Result<Opened, KeystoreError> {
    let header = backend
        .header()?
        .ok_or_else(|| KeystoreError::Format("key store header is gone".into()))?;
    let sealer = sealer_for(&header, master)?;
    let Replayed {
        builds,
        tls,
        head,
        chain,
    } = replay_v2(backend, &sealer, Some(master), floor, true)?;
    Ok(Opened {
        sealer,
        builds,
        tls,
        head,
        chain,
    })
}

/// A verified, replayed store under a sealer the caller already holds.
pub(super) struct Replayed {
    pub(super) builds: HashMap<String, StoreBuild>,
    /// The TLS identity and the approval requests (state beside the stores).
    pub(super) tls: Sidecar,
    pub(super) head: StoreHead,
    /// A shared store's chain MAC at every `seq` since its start (or its checkpoint), to tell
    /// whether a head the KRS holds is on the history this member verified. Empty otherwise.
    pub(super) chain: ChainLog,
}

/// The chain MACs of a shared store by `seq`, from `base` on (32 bytes a record: 3.2 MB for
/// 100,000 records).
#[derive(Default)]
pub(super) struct ChainLog {
    base: u64,
    macs: Vec<ChainMac>,
}

impl ChainLog {
    fn restart(&mut self, base: u64, mac: ChainMac) {
        self.base = base;
        self.macs.clear();
        self.macs.push(mac);
    }

    /// Record the MAC of the next `seq`.
    pub(super) fn push(&mut self, mac: ChainMac) {
        self.macs.push(mac);
    }

    /// Whether `head` is a point of this history (same `seq`, same chain MAC).
    pub(super) fn contains(&self, head: &StoreHead) -> bool {
        head.seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.macs.get(i))
            .is_some_and(|m| bool::from(m.as_slice().ct_eq(&head.chain_mac)))
    }
}

/// Re-read a shared store (another member wrote to it) under the sealer this member opened it
/// with: the same checks as at open, with `known` (the head this member has applied) as the
/// floor, so a database that lost or replaced records this member has seen is refused
/// (`Rollback`, `Fork`) instead of applied.
pub(super) fn reload_shared(
    backend: &mut dyn KeyStore,
    sealer: &Sealer,
    known: &StoreHead,
) -> Result<Replayed, KeystoreError> {
    let header = backend
        .header()?
        .ok_or_else(|| KeystoreError::Format("key store header is gone".into()))?;
    if hex::decode(&header.store_id).ok().as_deref() != Some(sealer.store_id()) {
        return Err(other_store(
            &hex::decode(&header.store_id).unwrap_or_default(),
            sealer.store_id(),
        ));
    }
    if header.format != LOG_FORMAT
        || header.mk_version != sealer.mk_version()
        || !sealer.verify_check(&header.check)
    {
        return Err(KeystoreError::WrongMasterKey);
    }
    replay_v2(backend, sealer, None, Some(known), true)
}

/// Verify a copy of a store (a backup) under `sealer` as [`open_v2`] verifies a store without a
/// floor (every record's MAC, the chain, the sealed head; with `unseal` also every sealed value,
/// into locked memory and dropped); its head. Nothing is written.
pub(super) fn verify_copy(
    backend: &mut dyn KeyStore,
    sealer: &Sealer,
    unseal: bool,
) -> Result<StoreHead, KeystoreError> {
    replay_v2(backend, sealer, None, None, unseal).map(|r| r.head)
}

/// The work of [`open_v2`]. On a shared backend ([`KeyStore::shared`]) records after the cut
/// are not an interrupted write of this process but other members' writes (or one whose head
/// a member has not yet recorded at the KRS): they are verified like the rest and applied, the
/// head is the last record, and nothing is ever cut off (another member may have read it).
fn replay_v2(
    backend: &mut dyn KeyStore,
    sealer: &Sealer,
    keys: Option<&MasterKeys>,
    floor: Option<&StoreHead>,
    unseal: bool,
) -> Result<Replayed, KeystoreError> {
    let shared = backend.shared();
    let sealed = backend
        .load_head()?
        .ok_or_else(|| head_tampered("the sealed head file is missing (deleted?)"))?;
    let local = open_head(sealer, &sealed, keys)?;
    let (cut, expect) = match floor {
        Some(f) => {
            if f.store_id != sealer.store_id() {
                return Err(other_store(sealer.store_id(), &f.store_id));
            }
            if f.mk_version > sealer.mk_version() {
                // The KRS recorded a re-seal this log does not have: a copy from before it.
                return Err(KeystoreError::MasterKeyRollback {
                    store_version: sealer.mk_version(),
                    anchor_version: f.mk_version,
                });
            }
            if local.seq > f.seq && !shared {
                return Err(KeystoreError::AnchorBehind {
                    store_seq: local.seq,
                    anchor_seq: f.seq,
                });
            }
            (f.seq, f.chain_mac.clone())
        }
        None => (local.seq, local.chain_mac.clone()),
    };
    // Errors naming the cut's source: the KRS's floor, or the sealed head.
    let ended_early = |last: u64| match floor {
        Some(_) => KeystoreError::Rollback {
            store_seq: last,
            anchor_seq: cut,
        },
        None => KeystoreError::Truncated {
            store_seq: last,
            head_seq: cut,
        },
    };

    let mut builds: HashMap<String, StoreBuild> = HashMap::new();
    let mut tls = Sidecar::default();
    let start = sealer.chain_start();
    let mut prev = start;
    let mut next = 1u64;
    let mut last = 0u64;
    let mut at_cut: Option<ChainMac> = (cut == 0).then_some(start);
    let mut past_cut = false;
    let mut history = ChainLog::default();
    if shared {
        history.restart(0, start);
    }
    let mut first = true;
    let mut section: Option<Section> = None;
    let mut beyond = 0u64;
    let mut beyond_limit = 0u64;
    backend.load(&mut |sr: SignedRecord| {
        let seq = sr.seq;
        if std::mem::take(&mut first) {
            if let Record::Checkpoint(c) = &sr.rec {
                let chain = decode_mac(&c.chain_mac)
                    .ok_or_else(|| tampered(seq, "checkpoint chain MAC is not 32 bytes of hex"))?;
                if sr.batch.is_some()
                    || !mac_matches(&sealer.checkpoint_mac(seq, &chain, c.live), &sr.mac)
                {
                    return Err(tampered(seq, "checkpoint MAC does not verify"));
                }
                if seq > cut && shared {
                    // Another member compacted after writing past this member's head (a
                    // destruction shreds the log): the checkpoint is MACed under the master
                    // key and newer than the floor, so it is no rollback; the history before
                    // it is gone and cannot be compared.
                    past_cut = true;
                } else if seq > cut {
                    // Compacted past the acknowledged head: cannot happen from this code.
                    return Err(match floor {
                        Some(_) => KeystoreError::AnchorBehind {
                            store_seq: seq,
                            anchor_seq: cut,
                        },
                        None => head_tampered("the sealed head is older than the compacted log"),
                    });
                }
                let Some(mac) = decode_mac(&sr.mac) else {
                    return Err(tampered(seq, "checkpoint MAC is not hex"));
                };
                section = Some(Section {
                    seq,
                    remaining: c.live,
                    index: 0,
                    prev: mac,
                });
                prev = chain;
                next = seq + 1;
                if shared {
                    history.restart(seq, chain);
                }
                last = seq;
                if seq == cut {
                    at_cut = Some(chain);
                }
                return Ok(());
            }
        }
        if let Some(s) = section.as_mut().filter(|s| s.remaining > 0) {
            if seq != s.seq || sr.batch.is_some() {
                return Err(tampered(
                    seq,
                    "records of the compacted section are missing or out of place",
                ));
            }
            s.index += 1;
            let mac = sealer.live_mac(s.seq, s.index, &s.prev, &sr.rec)?;
            if !mac_matches(&mac, &sr.mac) {
                return Err(tampered(
                    seq,
                    "compacted record MAC does not verify (altered, reordered or from another \
                     store)",
                ));
            }
            s.prev = mac;
            s.remaining -= 1;
            return match unseal {
                true => replay(sealer, &mut builds, &mut tls, seq, sr.rec),
                false => Ok(()),
            };
        }
        if matches!(sr.rec, Record::Checkpoint(_)) {
            return Err(tampered(seq, "a checkpoint in the middle of the log"));
        }
        if seq < next {
            return Err(tampered(
                seq,
                "sequence number repeated or out of order (record replayed or moved)",
            ));
        }
        if seq > next {
            return Err(tampered(
                seq,
                "a record is missing before this one (gap in the sequence numbers)",
            ));
        }
        let batch = match sr.batch {
            None => 1,
            Some(n) if n >= 2 => n,
            Some(_) => return Err(tampered(seq, "impossible batch size")),
        };
        let mac = sealer.chain_mac(seq, batch, &prev, &sr.rec)?;
        if !mac_matches(&mac, &sr.mac) {
            return Err(tampered(
                seq,
                "chain MAC does not verify (record altered, reordered, removed or from another \
                 store)",
            ));
        }
        prev = mac;
        last = seq;
        next = seq + 1;
        if shared {
            history.push(mac);
        }
        if seq <= cut {
            if seq == cut {
                at_cut = Some(mac);
            }
            return match unseal {
                true => replay(sealer, &mut builds, &mut tls, seq, sr.rec),
                false => Ok(()),
            };
        }
        if shared {
            // Another member's write (verified above): applied.
            beyond += 1;
            return match unseal {
                true => replay(sealer, &mut builds, &mut tls, seq, sr.rec),
                false => Ok(()),
            };
        }
        // After the acknowledged head: at most the one write that was never acknowledged.
        if seq == cut + 1 {
            beyond_limit = batch;
        } else if sr.batch.is_some() {
            beyond_limit = 0;
        }
        beyond += 1;
        if beyond > beyond_limit {
            return Err(tampered(
                seq,
                "more than one write after the acknowledged store head (an older sealed head \
                 was put back?)",
            ));
        }
        Ok(())
    })?;

    if section.as_ref().is_some_and(|s| s.remaining > 0) {
        return Err(tampered(
            last,
            "the compacted section ends early (records deleted or the log cut short)",
        ));
    }
    if last < cut {
        return Err(ended_early(last));
    }
    let at_cut = match at_cut {
        Some(m) => m,
        None if past_cut => prev,
        None => return Err(ended_early(last)),
    };
    if !past_cut && !bool::from(at_cut.as_slice().ct_eq(&expect)) {
        return Err(match floor {
            Some(_) => KeystoreError::Fork { seq: cut },
            None => head_tampered(
                "the records do not end in the sealed head's chain MAC (records replaced)",
            ),
        });
    }
    if shared {
        let head = StoreHead {
            store_id: sealer.store_id().to_vec(),
            seq: last,
            chain_mac: prev.to_vec(),
            mk_version: sealer.mk_version(),
        };
        if beyond > 0 {
            tracing::debug!(
                from = cut,
                to = last,
                "applied records written by other members"
            );
        }
        if head.seq > local.seq || local.mk_version != head.mk_version {
            // Best effort: the shared backend only ever moves its sealed head forward.
            if let Err(e) = backend.store_head(&seal_head(sealer, &head)?) {
                tracing::warn!(error = %e, "could not move the shared store's sealed head forward");
            }
        }
        return Ok(Replayed {
            builds,
            tls,
            head,
            chain: history,
        });
    }
    let torn = backend.has_torn_tail();
    if beyond > 0 || torn {
        tracing::warn!(
            records = beyond,
            incomplete_line = torn,
            head = cut,
            store = %backend.location(),
            "cutting off a write that was never acknowledged (interrupted before its head was \
             recorded)"
        );
        backend.truncate_after(cut)?;
    }
    let head = StoreHead {
        store_id: sealer.store_id().to_vec(),
        seq: cut,
        chain_mac: at_cut.to_vec(),
        mk_version: sealer.mk_version(),
    };
    if head.seq != local.seq || head.mk_version != local.mk_version {
        // (Or a re-seal switched the log to a new master-key version and stopped before the
        // sealed head followed: finish it.)
        // The KRS recorded a head the sealed head had not caught up with (a crash between the
        // two): bring the local one up to date.
        backend.store_head(&seal_head(sealer, &head)?)?;
    }
    Ok(Replayed {
        builds,
        tls,
        head,
        chain: history,
    })
}

/// Verify a format-1 store under its rules (increasing `seq`, per-record MACs, replayable),
/// then rewrite it as format 2: the same records, verbatim, chained as `1..n`; the sealed head
/// first (a crash before the rewrite leaves format 1, migrated again next time).
fn migrate(
    backend: &mut dyn KeyStore,
    header: &Header,
    sealer: Sealer,
) -> Result<(), KeystoreError> {
    let mut builds: HashMap<String, StoreBuild> = HashMap::new();
    let mut tls = Sidecar::default();
    let mut last_seq = 0u64;
    let mut records: Vec<Record> = Vec::new();
    backend.load(&mut |sr: SignedRecord| {
        let seq = sr.seq;
        if seq <= last_seq {
            return Err(tampered(
                seq,
                "sequence numbers out of order (record replayed or moved)",
            ));
        }
        if sr.batch.is_some()
            || matches!(sr.rec, Record::Checkpoint(_))
            || !sealer.verify_record_v1(seq, &sr.rec, &sr.mac)?
        {
            return Err(tampered(seq, "record MAC does not verify"));
        }
        last_seq = seq;
        records.push(sr.rec.clone());
        replay(&sealer, &mut builds, &mut tls, seq, sr.rec)
    })?;
    drop((builds, tls));
    let mut prev = sealer.chain_start();
    let mut signed = Vec::with_capacity(records.len());
    for (i, rec) in records.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let mac = sealer.chain_mac(seq, 1, &prev, &rec)?;
        prev = mac;
        signed.push(SignedRecord {
            seq,
            mac: hex::encode(mac),
            batch: None,
            rec,
        });
    }
    let head = StoreHead {
        store_id: sealer.store_id().to_vec(),
        seq: signed.len() as u64,
        chain_mac: prev.to_vec(),
        mk_version: sealer.mk_version(),
    };
    backend.store_head(&seal_head(&sealer, &head)?)?;
    let new_header = Header {
        format: LOG_FORMAT,
        ..header.clone()
    };
    let n = signed.len();
    backend.rewrite(&new_header, &mut signed.into_iter().map(Ok))?;
    tracing::warn!(
        records = n,
        store = %backend.location(),
        "migrated the key store from format 1 to format 2 (contiguous chained records and a \
         sealed head; sealed values unchanged)"
    );
    Ok(())
}
