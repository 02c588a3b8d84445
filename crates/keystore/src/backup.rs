//! Backups of a key store: one file holding everything a backend holds (the header, every
//! sealed record verbatim, the sealed head) and the head it ends in, MACed as a whole under a
//! master-key subkey; and the restore of such a file into an empty backend.
//!
//! The file is JSON, one line (backup format [`VERSION`]):
//!
//! ```text
//! {"keyward_backup":1,"sha256":"<hex>","mac":"<hex>","body":{...}}
//! ```
//!
//! `body` is a [`Body`]; both digests cover the body's exact bytes as written:
//! * `sha256`: SHA-256 of the body. No key is needed to check it, so a restore catches a damaged
//!   or edited file at once, naming it; anyone can recompute it, so it proves nothing about who
//!   made the file;
//! * `mac`: HMAC-SHA256 under the `backup` subkey of the master key (`HMAC(MK, "keyward
//!   keystore v2 backup")`) over `"keyward/backup" ‖ 2 ‖ u64 len ‖ store id ‖ u32 version ‖
//!   body`: only a holder of the master key can make it or check it.
//!
//! Nothing in a backup is in clear that is not in clear in the store itself: KEKs, credential
//! secrets and the appliance TLS key stay sealed (AES-256-GCM under the master key), record
//! MACs and the sealed head stay what they are. A backup is useless without the HSM's master
//! key, and restoring it changes nothing about what the key-release service (KRS) accepts: the
//! KRS still holds the newest head, so a restored (older) store is refused as a rollback until
//! the KRS operator moves the deployment's head back to the backup's (`keyward krs heads set`).
//!
//! Restoring needs no master key (it is only ever released to an attested appliance): the file's
//! structure and SHA-256 are checked, its MACs cannot be. The next boot verifies every record,
//! the chain and the sealed head as it does for any store, and refuses a store that was changed.
//! Given the master key ([`Backup::verify`]: development stores with a key file) the MAC and
//! every record are checked before anything is written.

use crate::now_unix;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::head::StoreHead;
use super::load;
use super::model::{Header, KeyStore, SealedHead, SignedRecord, LOG_FORMAT};
use super::seal::{decode_mac, mac_matches, Sealer};
use super::KeystoreError;
use super::MasterKeys;
use keyward_secret::Key32;

/// What [`Body::format`] says.
pub const FORMAT: &str = "keyward-store-backup";
/// The backup format this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest backup file read (a store of 100,000 keys exports to about 40 MB).
pub const MAX_BACKUP_BYTES: usize = 1 << 30;

/// Why a backup was refused or could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The bytes are not a backup (or are damaged so badly they do not parse).
    #[error("not a readable keyward key store backup (damaged?): {0}")]
    NotABackup(#[source] serde_json::Error),
    /// Larger than any backup may be (refused before it is parsed).
    #[error("not a readable keyward key store backup (damaged?): {0} bytes, more than the {MAX_BACKUP_BYTES} a backup may have")]
    TooLarge(usize),
    /// A backup format this build does not read.
    #[error("backup format version {0}: this build reads version {VERSION}")]
    Version(u32),
    /// The file was changed or damaged after it was written (its SHA-256 or its structure).
    #[error("the backup is damaged or was changed after it was made: {0}")]
    Damaged(String),
    /// The MAC does not verify under the master key given.
    #[error(
        "the backup's MAC does not verify under this master key: the file was changed after it \
         was made, or made under another master key"
    )]
    Mac,
    /// The master key given does not open the backed-up store.
    #[error("the master key does not open the backed-up key store (another master key?)")]
    WrongMasterKey,
    /// The records do not verify (checked with the master key).
    #[error("the backed-up records do not verify: {0}")]
    Records(#[source] KeystoreError),
    /// The target store already holds a store.
    #[error(
        "the key store at {location} is not empty (it holds {what}): a backup is restored only \
         into an empty store; move it aside (or drop the database's keyward tables) first"
    )]
    NotEmpty {
        /// Where the target store lives.
        location: String,
        /// What it holds.
        what: String,
    },
    /// The restored store does not read back as it was written.
    #[error("the restored key store does not read back as written: {0}")]
    ReadBack(String),
    /// A re-wrap was asked for a master-key version this appliance does not hold.
    #[error(
        "the backup is sealed under master-key version {0}, which this appliance does not hold \
         (retired at the key-release service?): it cannot be opened, so it cannot be re-wrapped"
    )]
    VersionNotHeld(u32),
    /// A re-wrap of a backup already sealed under the newest version held.
    #[error(
        "the backup is already sealed under master-key version {0}, the newest this appliance \
         holds: nothing to re-wrap"
    )]
    AlreadyCurrent(u32),
    /// The backend failed.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
}

/// The head a backup ends in (what the KRS must hold for the restored store to open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyHead {
    /// Sequence number of the last acknowledged record.
    pub seq: u64,
    /// Its chain MAC. Hex.
    pub chain_mac: String,
}

/// A backup's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The keyward version that made it.
    pub keyward_version: String,
    /// When it was made, Unix seconds.
    pub created: u64,
    /// The store id (hex), as in the header.
    pub store_id: String,
    /// The head the records end in.
    pub head: BodyHead,
    /// The store's header, verbatim.
    pub header: Header,
    /// The sealed head for `head` (MACed under the head subkey).
    pub sealed_head: SealedHead,
    /// Every record of the store up to `head`, verbatim, in `seq` order.
    pub records: Vec<SignedRecord>,
}

/// A store exported by [`super::Registry::export`]: the file's bytes and what they hold.
pub struct Export {
    /// The backup file.
    pub bytes: Vec<u8>,
    /// The head it ends in.
    pub head: StoreHead,
    /// Records it holds.
    pub records: usize,
    /// When it was made, Unix seconds.
    pub created: u64,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("bytes", &self.bytes.len())
            .field("head", &self.head)
            .field("records", &self.records)
            .finish()
    }
}

/// Write the backup file of a store (the registry holds its lock).
pub(crate) fn export(
    sealer: &Sealer,
    header: Header,
    head: &StoreHead,
    sealed_head: SealedHead,
    records: Vec<SignedRecord>,
) -> Result<Export, KeystoreError> {
    let created = now_unix();
    let n = records.len();
    let body = Body {
        format: FORMAT.into(),
        version: VERSION,
        keyward_version: env!("CARGO_PKG_VERSION").into(),
        created,
        store_id: hex::encode(&head.store_id),
        head: BodyHead {
            seq: head.seq,
            chain_mac: hex::encode(&head.chain_mac),
        },
        header,
        sealed_head,
        records,
    };
    // What was read back from the backend must verify (every record's MAC, the chain, the
    // sealed head) and end in the head: a store changed on disk since it was opened is refused
    // now, not found out at a restore.
    let mut copy = MemStore {
        header: &body.header,
        records: &body.records,
        sealed_head: &body.sealed_head,
    };
    if load::verify_copy(&mut copy, sealer, false)? != *head {
        return Err(KeystoreError::Format(
            "the records read for the backup do not end in the store's head".into(),
        ));
    }
    let body = serde_json::to_vec(&body).map_err(|_| KeystoreError::Seal)?;
    let sha = hex::encode(Sha256::digest(&body));
    let mac = hex::encode(sealer.backup_mac(VERSION, &body));
    let mut bytes = Vec::with_capacity(body.len() + 200);
    bytes.extend_from_slice(
        format!("{{\"keyward_backup\":{VERSION},\"sha256\":\"{sha}\",\"mac\":\"{mac}\",\"body\":")
            .as_bytes(),
    );
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"}\n");
    Ok(Export {
        bytes,
        head: head.clone(),
        records: n,
        created,
    })
}

/// A parsed backup whose structure and SHA-256 were checked (not its MAC: see
/// [`Backup::verify`]).
pub struct Backup {
    body: Body,
    raw_body: Vec<u8>,
    mac: String,
    head: StoreHead,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("store_id", &self.body.store_id)
            .field("head", &self.head)
            .field("records", &self.body.records.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    keyward_backup: u32,
    sha256: String,
    mac: String,
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
}

fn damaged(why: impl Into<String>) -> BackupError {
    BackupError::Damaged(why.into())
}

/// Parse a backup file and check what can be checked without the master key: the format, the
/// SHA-256 of the body, and that header, head, sealed head and records agree with each other.
pub fn parse(bytes: &[u8]) -> Result<Backup, BackupError> {
    if bytes.len() > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge(bytes.len()));
    }
    let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(BackupError::NotABackup)?;
    if env.keyward_backup != VERSION {
        return Err(BackupError::Version(env.keyward_backup));
    }
    let raw = env.body.get().as_bytes();
    let want =
        decode_mac(&env.sha256).ok_or_else(|| damaged("its sha256 is not 32 bytes of hex"))?;
    let got: [u8; 32] = Sha256::digest(raw).into();
    if got != want {
        return Err(damaged(
            "the SHA-256 of its body does not match the one it carries (a byte changed?)",
        ));
    }
    if decode_mac(&env.mac).is_none() {
        return Err(damaged("its mac is not 32 bytes of hex"));
    }
    let body: Body = serde_json::from_slice(raw)
        .map_err(|e| damaged(format!("the body does not parse: {e}")))?;
    let head = check_body(&body)?;
    Ok(Backup {
        raw_body: raw.to_vec(),
        mac: env.mac,
        body,
        head,
    })
}

/// The consistency rules of a body; its head.
fn check_body(b: &Body) -> Result<StoreHead, BackupError> {
    if b.format != FORMAT || b.version != VERSION {
        return Err(damaged(format!(
            "the body says format {:?} version {}",
            b.format, b.version
        )));
    }
    let id = hex::decode(&b.store_id)
        .ok()
        .filter(|id| id.len() == 16)
        .ok_or_else(|| damaged("the store id is not 16 bytes of hex"))?;
    if b.header.store_id != b.store_id || b.sealed_head.store_id != b.store_id {
        return Err(damaged(
            "the header, sealed head and body name different stores",
        ));
    }
    if b.header.format != LOG_FORMAT || b.sealed_head.format != LOG_FORMAT {
        return Err(damaged(format!(
            "log format {} (a backup holds log format {LOG_FORMAT})",
            b.header.format
        )));
    }
    let chain = decode_mac(&b.head.chain_mac)
        .ok_or_else(|| damaged("the head's chain MAC is not 32 bytes of hex"))?;
    if b.sealed_head.seq != b.head.seq || b.sealed_head.chain_mac != b.head.chain_mac {
        return Err(damaged("the sealed head is not the head the body names"));
    }
    let mut prev = 0u64;
    for r in &b.records {
        if r.seq < prev {
            return Err(damaged(format!("record {} is out of order", r.seq)));
        }
        prev = r.seq;
    }
    if prev != b.head.seq {
        return Err(damaged(format!(
            "the records end at {prev} but the head is record {}",
            b.head.seq
        )));
    }
    Ok(StoreHead {
        store_id: id,
        seq: b.head.seq,
        chain_mac: chain.to_vec(),
        mk_version: b.header.mk_version,
    })
}

/// What [`Backup::restore_into`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// The target store.
    pub location: String,
    /// The store id (hex).
    pub store_id: String,
    /// The head restored.
    pub seq: u64,
    /// Records written.
    pub records: usize,
}

impl Backup {
    /// The content.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The head the backup ends in.
    pub fn head(&self) -> &StoreHead {
        &self.head
    }

    /// The master-key version the backup is sealed under (its header's): restoring it needs
    /// that version, so it must not be retired at the KRS while the backup is kept.
    pub fn mk_version(&self) -> u32 {
        self.body.header.mk_version
    }

    /// Check the backup under the master key: the header's check value (the right master key),
    /// the MAC over the whole body, and every record, the chain and the sealed head as a boot
    /// checks them (the KEKs are unsealed into locked memory and dropped).
    pub fn verify(&self, master: &Key32) -> Result<(), BackupError> {
        let sealer = Sealer::versioned(master, &self.head.store_id, self.mk_version())?;
        if !sealer.verify_check(&self.body.header.check) {
            return Err(BackupError::WrongMasterKey);
        }
        if !mac_matches(&sealer.backup_mac(VERSION, &self.raw_body), &self.mac) {
            return Err(BackupError::Mac);
        }
        let mut mem = MemStore {
            header: &self.body.header,
            records: &self.body.records,
            sealed_head: &self.body.sealed_head,
        };
        let replayed = load::verify_copy(&mut mem, &sealer, true).map_err(BackupError::Records)?;
        if replayed != self.head {
            return Err(BackupError::Records(KeystoreError::Format(
                "the records verify but end in another head than the backup names".into(),
            )));
        }
        Ok(())
    }

    /// Write the backup into `backend`, which must be empty: the sealed head first, then the
    /// header and every record in one atomic rewrite (a crash in between leaves a store with no
    /// header: empty, restorable again), then read back and compared.
    pub fn restore_into(&self, backend: &mut dyn KeyStore) -> Result<Restored, BackupError> {
        let location = backend.location();
        if let Some(h) = backend.header()? {
            return Err(BackupError::NotEmpty {
                location,
                what: format!("key store {}", h.store_id),
            });
        }
        if backend.shared() {
            let mut n = 0usize;
            backend.load(&mut |_| {
                n += 1;
                Ok(())
            })?;
            if n > 0 {
                return Err(BackupError::NotEmpty {
                    location,
                    what: format!("{n} record(s) without a header"),
                });
            }
        }
        backend.store_head(&self.body.sealed_head)?;
        backend.rewrite(
            &self.body.header,
            &mut self.body.records.iter().cloned().map(Ok),
        )?;
        // Read back what a boot will read.
        let back = backend.header()?;
        if back.as_ref() != Some(&self.body.header) {
            return Err(BackupError::ReadBack("the header differs".into()));
        }
        if backend.load_head()?.as_ref() != Some(&self.body.sealed_head) {
            return Err(BackupError::ReadBack("the sealed head differs".into()));
        }
        let mut i = 0usize;
        let records = &self.body.records;
        backend.load(&mut |r| {
            if records.get(i) != Some(&r) {
                return Err(KeystoreError::Format(format!(
                    "record {i} (seq {}) differs",
                    r.seq
                )));
            }
            i += 1;
            Ok(())
        })?;
        if i != records.len() {
            return Err(BackupError::ReadBack(format!(
                "{i} of {} records read back",
                records.len()
            )));
        }
        Ok(Restored {
            location,
            store_id: self.body.store_id.clone(),
            seq: self.head.seq,
            records: i,
        })
    }
}

/// Re-wrap a backup under the newest master-key version in `keys`: the file is parsed and
/// verified under the version it names exactly as a restore given the master key does
/// ([`Backup::verify`]: its MAC, the header's check value, every record, the chain, the sealed
/// head), restored into a store held in memory, opened there and re-sealed as the live store
/// is ([`super::Registry::reseal`]: every secret sealed anew, every MAC under the new
/// version's subkeys, the same `seq` and chain MAC), and exported again. Nothing is written to
/// any backend; the KEKs are unsealed into locked memory and dropped with the copy.
pub fn rewrap(bytes: &[u8], keys: MasterKeys) -> Result<Export, BackupError> {
    let backup = parse(bytes)?;
    let version = backup.mk_version();
    let current = keys.current_version();
    let old = keys
        .get(version)
        .ok_or(BackupError::VersionNotHeld(version))?;
    if version >= current {
        return Err(BackupError::AlreadyCurrent(version));
    }
    backup.verify(old)?;
    let mut mem = Box::new(OwnedMem::default());
    backup.restore_into(mem.as_mut())?;
    let registry = super::Registry::open_keys(mem, keys, super::Freshness::Unanchored)?;
    registry.reseal()?;
    let out = registry.export()?;
    if out.head.mk_version != current || out.head.seq != backup.head.seq {
        return Err(BackupError::ReadBack(
            "the re-wrapped copy does not end in the backup's head under the new version".into(),
        ));
    }
    Ok(out)
}

/// A store held in memory only: where [`rewrap`] re-seals a backup's copy.
#[derive(Default)]
struct OwnedMem {
    header: Option<Header>,
    records: Vec<SignedRecord>,
    sealed_head: Option<SealedHead>,
}

impl KeyStore for OwnedMem {
    fn location(&self) -> String {
        "the backup's copy in memory".into()
    }
    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        Ok(self.header.clone())
    }
    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        self.header = Some(header.clone());
        self.records.clear();
        Ok(())
    }
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        self.records.iter().try_for_each(|r| visit(r.clone()))
    }
    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        self.records.push(rec.clone());
        Ok(())
    }
    fn record_count(&self) -> usize {
        self.records.len()
    }
    fn compact(
        &mut self,
        recs: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.records = recs.collect::<Result<_, _>>()?;
        Ok(())
    }
    fn rewrite(
        &mut self,
        header: &Header,
        recs: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let records = recs.collect::<Result<_, _>>()?;
        self.header = Some(header.clone());
        self.records = records;
        Ok(())
    }
    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        self.records.retain(|r| r.seq <= seq);
        Ok(())
    }
    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        Ok(self.sealed_head.clone())
    }
    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        self.sealed_head = Some(head.clone());
        Ok(())
    }
}

/// A backup's content as a read-only [`KeyStore`], for verifying it as a boot would.
struct MemStore<'a> {
    header: &'a Header,
    records: &'a [SignedRecord],
    sealed_head: &'a SealedHead,
}

fn read_only() -> KeystoreError {
    KeystoreError::Format("a backup being verified is read-only".into())
}

impl KeyStore for MemStore<'_> {
    fn location(&self) -> String {
        "the backup".into()
    }
    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        Ok(Some(self.header.clone()))
    }
    fn init(&mut self, _: &Header) -> Result<(), KeystoreError> {
        Err(read_only())
    }
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        self.records.iter().try_for_each(|r| visit(r.clone()))
    }
    fn append(&mut self, _: &SignedRecord) -> Result<(), KeystoreError> {
        Err(read_only())
    }
    fn record_count(&self) -> usize {
        self.records.len()
    }
    fn compact(
        &mut self,
        _: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        Err(read_only())
    }
    fn rewrite(
        &mut self,
        _: &Header,
        _: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        Err(read_only())
    }
    fn truncate_after(&mut self, _: u64) -> Result<(), KeystoreError> {
        Err(read_only())
    }
    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        Ok(Some(self.sealed_head.clone()))
    }
    fn store_head(&mut self, _: &SealedHead) -> Result<(), KeystoreError> {
        Err(read_only())
    }
}
