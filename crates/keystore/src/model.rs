//! The persistent model and the storage seam: what a key store holds on disk (or, later, in a
//! shared database), already sealed, and the [`KeyStore`] trait that persists it.
//!
//! A store is a sequence of [`SignedRecord`]s after one [`Header`]. Each record is an upsert or a
//! removal; replaying them in `seq` order gives the current state. Sequence numbers are
//! contiguous (`1, 2, 3, ...`), and every record carries a chain MAC: HMAC-SHA256 (under a key
//! derived from the master key) over the store id, its `seq`, the previous record's chain MAC
//! and its canonical JSON. So no record can be changed, removed, reordered, moved between
//! stores or replayed unnoticed, and the last record's `seq` and chain MAC (the store's
//! [`super::StoreHead`]) name the whole history. The head is kept sealed next to the records
//! ([`SealedHead`], so a cut-short log is refused) and, with a key-release service, recorded
//! there too (so a whole older copy is refused).
//!
//! Compaction keeps the head: the rewritten log starts with a [`Record::Checkpoint`] carrying
//! the head it replaces and the number of live records that follow it (each MACed under the
//! checkpoint, in a chain of their own); later records continue the main chain from the head.
//!
//! Secrets inside records (KEKs, credential secrets, the appliance TLS key) are additionally
//! sealed with AES-256-GCM (see `seal.rs`). A backend stores and returns these records; it never
//! needs the master key and never sees a secret in clear.
//!
//! Format 1 (the previous release: increasing but not contiguous `seq`, per-record MACs, no
//! head) is still read, verified under its own rules and rewritten as format 2 at open.

use serde::{Deserialize, Serialize};

use super::view::{Grant, KeyStatus, KeyUsage};
use super::KeystoreError;

/// The sealing format (bound into every AAD and sealed blob, and into format-1 record MACs).
/// Unchanged by the log format 2: sealed values are carried over verbatim.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// The log format this build writes: contiguous chained records, checkpoints, a sealed head.
pub(crate) const LOG_FORMAT: u8 = 2;
/// The previous release's log format (unchained), read and migrated at open.
pub(crate) const LEGACY_LOG_FORMAT: u8 = 1;

/// Bytes that are only ever written sealed: `format ‖ IV(12) ‖ ciphertext ‖ tag(16)`.
/// Serialized as standard Base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Serialize for Sealed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Sealed)
            .map_err(serde::de::Error::custom)
    }
}

/// The first entry of every store: identifies it and proves the master key opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`LOG_FORMAT`] (or [`LEGACY_LOG_FORMAT`] for a store not yet migrated).
    pub format: u8,
    /// Random id of this store (bound into every record MAC, so records cannot be moved
    /// between stores sealed under the same master key). Hex.
    pub store_id: String,
    /// A known constant sealed under the master key; opening it checks the master key.
    pub check: Sealed,
    /// The master-key version that sealed this store (its header check, every sealed value
    /// and every MAC). Absent (1) in stores written before master-key rotation, so their
    /// header line is unchanged.
    #[serde(default = "mk_v1", skip_serializing_if = "is_mk_v1")]
    pub mk_version: u32,
}

/// The master-key version of stores, heads and backups written before rotation existed.
pub(crate) const MK_VERSION_1: u32 = 1;

pub(crate) fn mk_v1() -> u32 {
    MK_VERSION_1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
pub(crate) fn is_mk_v1(v: &u32) -> bool {
    *v == MK_VERSION_1
}

/// A logical key store (one URI prefix), as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// Store name.
    pub name: String,
    /// Path before `/kms/xks/v1`; empty for none.
    pub uri_prefix: String,
    /// Region expected in the SigV4 scope.
    pub region: String,
    /// Service names accepted besides `kms-xks-proxy`.
    pub extra_services: Vec<String>,
    /// Creation time, Unix seconds.
    pub created: u64,
}

/// An external key, as persisted. The KEK is sealed with AAD binding format version, store,
/// key id and key version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Store the key belongs to.
    pub store: String,
    /// External key id.
    pub id: String,
    /// Key version.
    pub version: u32,
    /// Allowed operations.
    pub usage: KeyUsage,
    /// Enabled or disabled.
    pub status: KeyStatus,
    /// Grants (none for a new key: deny by default).
    pub grants: Vec<Grant>,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The sealed KEK.
    pub kek: Sealed,
    /// When `version` became current (absent: at `created`, version 1 never rotated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<u64>,
    /// Earlier versions, newest first, each sealed under its own version's AAD: they keep
    /// decrypting. Absent in records written before rotation existed (their JSON, and so their
    /// MAC, is unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub older: Vec<KeyVersionRecord>,
    /// The rotation schedule, seconds (absent: by hand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_every_secs: Option<u64>,
    /// Scheduled for destruction at this time (Unix seconds); disabled meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_at: Option<u64>,
    /// The status to restore when the destruction is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_before_destroy: Option<KeyStatus>,
}

/// A destroyed key: every version's KEK erased; its id and the time stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyedKeyRecord {
    pub store: String,
    pub id: String,
    /// When it was destroyed, Unix seconds.
    pub destroyed: u64,
}

/// An earlier version of a key, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub version: u32,
    /// When it became current, Unix seconds.
    pub created: u64,
    /// Its KEK, sealed with the AAD of this version.
    pub kek: Sealed,
}

/// A SigV4 credential, as persisted; the secret is sealed with AAD binding format version,
/// store and access key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Store the credential opens.
    pub store: String,
    /// Access key id (public).
    pub access_key_id: String,
    /// The sealed secret access key.
    pub secret: Sealed,
    /// Creation time, Unix seconds.
    pub created: u64,
}

/// The appliance-managed TLS identity (the XKS and admin listeners' key when no TLS files are
/// configured): its PKCS#8 private key sealed with AAD binding format version and purpose, and
/// the certificate chain installed for it (public, integrity-protected by the record MAC).
/// There is at most one; a new record replaces the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsKeyRecord {
    /// The sealed PKCS#8 DER private key.
    pub key: Sealed,
    /// PEM chain (leaf first) installed for this key; `None` until `tls install`.
    #[serde(default)]
    pub chain_pem: Option<String>,
    /// Key creation time, Unix seconds.
    pub created: u64,
    /// When the chain was installed, Unix seconds.
    #[serde(default)]
    pub chain_installed: Option<u64>,
    /// A new key made by `tls csr --new-key`, sealed: not served until a chain for it is
    /// installed, which makes it the key (and drops this record's `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Sealed>,
    /// When the pending key was made, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_created: Option<u64>,
}

/// One change: an upsert of a store, key or credential, or a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// Create a store.
    Store(StoreRecord),
    /// Remove a store with its keys and credentials.
    RemoveStore {
        /// Store name.
        name: String,
    },
    /// Create or replace a key.
    Key(KeyRecord),
    /// Add a credential.
    Credential(CredentialRecord),
    /// Remove a credential.
    RemoveCredential {
        /// Store name.
        store: String,
        /// Access key id.
        access_key_id: String,
    },
    /// Create or replace the appliance TLS identity.
    TlsKey(TlsKeyRecord),
    /// A key destroyed (crypto-shredded): its KEKs are gone, its id is kept and never reused.
    KeyDestroyed(DestroyedKeyRecord),
    /// First record of a compacted log: the head it replaces (the record's `seq` and this chain
    /// MAC) and how many live records follow it.
    Checkpoint(CheckpointRecord),
    /// Create or replace an approval request (M-of-N dual control on the admin API), by id.
    /// In the chained log like every record, so on a fleet every member sees it and a database
    /// writer cannot forge, alter or replay one unnoticed.
    Approval(ApprovalRecord),
    /// The RSA wrapping private key of an outstanding wrapped-import token (`keys
    /// import-params`), sealed, so that any member of a fleet can unwrap with it.
    ImportKey(ImportKeyRecord),
    /// An import token used (once, fleet-wide: appended with a compare-and-set); its key is
    /// dropped from every member's view, and from the log at the next compaction.
    ImportKeyUsed(ImportKeyUsedRecord),
}

/// A wrapped-import token's wrapping key as persisted: the SHA-256 of the token (never the
/// token), what it was issued for, until when, and the PKCS#8 DER private key sealed with AAD
/// binding format version and the token hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportKeyRecord {
    /// SHA-256 of the import token, hex (64 digits).
    pub token_sha256: String,
    /// The wrapping algorithm the token was issued for (KMS name).
    pub algorithm: String,
    /// The wrapping key spec (KMS name).
    pub key_spec: String,
    /// Issued, Unix seconds (trusted time).
    pub created: u64,
    /// Refused from this time on, Unix seconds (trusted time).
    pub valid_to: u64,
    /// The sealed PKCS#8 DER RSA private key.
    pub key: Sealed,
}

/// An import token used: its key is gone from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportKeyUsedRecord {
    /// SHA-256 of the import token, hex.
    pub token_sha256: String,
    /// When, Unix seconds.
    pub used: u64,
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Filed, waiting for approvers.
    Pending,
    /// Approved by enough operators; not used yet.
    Approved,
    /// Denied (by an operator holding the role the action needs, or the requester).
    Denied,
    /// Used: the request it approved was carried out (once).
    Used,
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverRecord {
    /// The approver's client certificate subject (for display and audit).
    pub subject: String,
    /// SHA-256 of the approver's client certificate SubjectPublicKeyInfo, hex (the identity).
    pub spki_sha256: String,
    /// When, Unix seconds.
    pub at: u64,
}

/// An approval request as persisted: what it is for (the operation, a description with names
/// and ids only, the SHA-256 of the canonical request JSON), who filed it, who approved it, and
/// where it stands. Never a secret: a request's secret fields are not part of the description,
/// and only the hash of the request is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Random id, 32 hex digits.
    pub id: String,
    /// The admin operation (`keys_schedule_destroy`, ...).
    pub op: String,
    /// What it changes or reveals (names and ids).
    pub what: String,
    /// SHA-256 of the canonical JSON of the exact request, hex.
    pub request_sha256: String,
    /// The role an approver needs.
    pub role: String,
    /// The requester's client certificate subject.
    pub requester: String,
    /// SHA-256 of the requester's client certificate SPKI, hex.
    pub requester_spki_sha256: String,
    /// Approvers needed besides the requester.
    pub needed: u32,
    /// Filed, Unix seconds.
    pub created: u64,
    /// Refused after this, Unix seconds.
    pub expires: u64,
    pub state: ApprovalState,
    pub approvers: Vec<ApproverRecord>,
    /// Who denied or used it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<u64>,
}

/// What a compaction checkpoint carries (see [`Record::Checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The chain MAC of the head at the checkpoint's `seq`. Hex.
    pub chain_mac: String,
    /// Number of live records that follow (each with the checkpoint's `seq`).
    pub live: u64,
}

/// The store head, sealed (MACed under a master-key subkey) and kept next to the records,
/// rewritten with each acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedHead {
    /// [`LOG_FORMAT`].
    pub format: u8,
    /// The store id (hex), as in the header.
    pub store_id: String,
    /// Sequence number of the last acknowledged record.
    pub seq: u64,
    /// Its chain MAC. Hex.
    pub chain_mac: String,
    /// HMAC-SHA256 over the above under the head subkey. Hex.
    pub mac: String,
    /// The master-key version whose head subkey made `mac` (absent: 1). During a re-seal the
    /// log may already be sealed under the new version while this head is still the old one's.
    #[serde(default = "mk_v1", skip_serializing_if = "is_mk_v1")]
    pub mk_version: u32,
}

/// A record with its sequence number and MAC, as a backend stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// Contiguous within a store (format 1: strictly increasing). The live records after a
    /// checkpoint carry the checkpoint's `seq`.
    pub seq: u64,
    /// The chain MAC (format 1: HMAC-SHA256 over `seq`, the store id and the record's JSON). Hex.
    pub mac: String,
    /// On the first record of a write of several records: how many it wrote (absent: one).
    /// Covered by the chain MAC. Lets the open tell one unacknowledged write from several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// The change.
    pub rec: Record,
}

/// Persistence of sealed records: the seam between the registry and where records live (a
/// directory of files now, a shared database later).
///
/// Every method that writes is durable when it returns `Ok`: the change survives a crash or
/// `kill -9` at any later moment. A crash during a write leaves either the old or the new
/// state, never an unreadable store.
pub trait KeyStore: Send {
    /// Where the store lives, for messages (a path, a database URL without credentials).
    fn location(&self) -> String;

    /// The header, or `None` for a store that has never been initialised.
    fn header(&mut self) -> Result<Option<Header>, KeystoreError>;

    /// Initialise an empty store with `header` (atomically: afterwards [`KeyStore::header`]
    /// returns it, or the store is still uninitialised).
    fn init(&mut self, header: &Header) -> Result<(), KeystoreError>;

    /// Hand every stored record to `visit`, in `seq` order. Records may include superseded
    /// ones; the caller applies them in order. Stops at the first error `visit` returns.
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError>;

    /// Whether several appliances share this backend (a database): then records may appear
    /// that this process did not write, compaction and truncation are left to no one (a record
    /// another member may already have read is never removed), and [`KeyStore::append_batch`]
    /// is a compare-and-set on the head (see there). The file store is not shared.
    fn shared(&self) -> bool {
        false
    }

    /// Sequence number of the newest record the backend holds, read cheaply (one row), or
    /// `None` if the backend cannot tell without [`KeyStore::load`] (the file store: nobody
    /// else writes it). A shared backend's members poll it to notice each other's writes.
    fn tip(&mut self) -> Result<Option<u64>, KeystoreError> {
        Ok(None)
    }

    /// [`KeyStore::load`] of only the records after `seq` (a member catching up with the
    /// others' writes). The default loads everything and skips the rest.
    fn load_after(
        &mut self,
        seq: u64,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        self.load(&mut |r| if r.seq > seq { visit(r) } else { Ok(()) })
    }

    /// Durably persist one record.
    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError>;

    /// Durably persist several records (in order). Durable together when it returns; a crash
    /// before that may keep any prefix of them. The default appends one by one.
    ///
    /// A shared backend writes all of them or none, and only if the first one's `seq` is one
    /// above the newest record it holds (a compare-and-set on the head, under a primary key
    /// on `seq`); otherwise it returns [`KeystoreError::Conflict`] and writes nothing.
    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        recs.iter().try_for_each(|r| self.append(r))
    }

    /// Number of records the backend holds (superseded ones included), to decide compaction.
    fn record_count(&self) -> usize;

    /// Atomically replace all records with `records` (the live state), keeping the header. If
    /// the iterator yields an error, nothing is replaced and that error is returned.
    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError>;

    /// Atomically replace the header and all records (format migration); as [`KeyStore::compact`]
    /// otherwise.
    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError>;

    /// Whether the last [`KeyStore::load`] found an incomplete last entry (an interrupted
    /// write). It stays until [`KeyStore::truncate_after`] removes it; appends are refused
    /// meanwhile.
    fn has_torn_tail(&self) -> bool {
        false
    }

    /// Durably remove every record after the one with sequence number `seq` (and any torn
    /// tail): undoes a write whose head was not recorded, or cuts off one never acknowledged.
    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError>;

    /// The sealed head, or `None` if there is none.
    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError>;

    /// Durably replace the sealed head (atomically: the old or the new one survives a crash).
    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError>;

    /// A shared backend's re-seal: replace the header, every record (a new generation: a
    /// checkpoint at `head.seq` and the live records) and the sealed head `head`, all at once,
    /// and only if the store still ends at `head.seq` in the generation the last
    /// [`KeyStore::load`] read (else [`KeystoreError::Conflict`] and nothing changes). The
    /// generation moves, so appends computed from the old one are refused from then on and
    /// the other members' [`KeyStore::rewritten`] says so. The default (an unshared store):
    /// [`KeyStore::rewrite`] then [`KeyStore::store_head`].
    fn reseal(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
        head: &SealedHead,
    ) -> Result<(), KeystoreError> {
        self.rewrite(header, records)?;
        self.store_head(head)
    }

    /// A shared backend: whether the last [`KeyStore::tip`] found the log replaced (another
    /// member re-sealed it) since the last [`KeyStore::load`], although its tip may be the
    /// same. Then only a whole re-read is right. The default: never.
    fn rewritten(&self) -> bool {
        false
    }
}
