//! Typed errors of the key store: validation (what the admin typed), state (what exists), and
//! storage (what is on disk). Messages never carry key bytes or secrets.

/// Everything [`super::Registry`] and [`super::KeyStore`] can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// An input was malformed; `what` names the field, `why` says which rule it broke.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field, e.g. `key id`, `access key id`, `uri prefix`.
        what: &'static str,
        /// The rule that was broken, in words.
        why: String,
    },
    /// No key store with this name.
    #[error("unknown key store {0:?}")]
    UnknownStore(String),
    /// A store argument is needed because there is not exactly one store.
    #[error("{0} key stores exist: name one with --store")]
    StoreRequired(usize),
    /// A key store with this name already exists.
    #[error("key store {0:?} already exists")]
    DuplicateStore(String),
    /// Another key store already serves this URI prefix.
    #[error("uri prefix {prefix:?} is already used by key store {store:?}")]
    DuplicatePrefix {
        /// The prefix asked for.
        prefix: String,
        /// The store that has it.
        store: String,
    },
    /// The store still holds keys (removing it would destroy them) and `force` was not given.
    #[error(
        "key store {store:?} still holds {keys} key(s); removing it destroys them (force needed)"
    )]
    StoreNotEmpty {
        /// The store.
        store: String,
        /// How many keys it holds.
        keys: usize,
    },
    /// No key with this id in the store.
    #[error("unknown key {id:?} in key store {store:?}")]
    UnknownKey {
        /// The store searched.
        store: String,
        /// The key id.
        id: String,
    },
    /// A key with this id already exists in the store.
    #[error("key {id:?} already exists in key store {store:?}")]
    DuplicateKey {
        /// The store.
        store: String,
        /// The key id.
        id: String,
    },
    /// The access key id is already in use (in this or another store: it must map to one secret).
    #[error("access key id {0:?} already exists")]
    DuplicateCredential(String),
    /// No credential with this access key id in the store.
    #[error("unknown access key id {access_key_id:?} in key store {store:?}")]
    UnknownCredential {
        /// The store.
        store: String,
        /// The access key id.
        access_key_id: String,
    },
    /// `revoke` matched no grant.
    #[error("no grant on key {id:?} matches principal {principal:?}")]
    NoMatchingGrant {
        /// The key id.
        id: String,
        /// The principal pattern given.
        principal: String,
    },
    /// The master key does not open this key store (wrong key, or its header was altered).
    #[error("the master key does not open this key store (wrong master key?)")]
    WrongMasterKey,
    /// The store is sealed under a master-key version this boot was not given (retired at
    /// the KRS, or an older copy of the store put back after a re-seal).
    #[error(
        "the key store is sealed under master-key version {needed}, which this boot does not \
         hold (it holds {held:?}): retired at the key-release service, or an older copy of \
         the store"
    )]
    MasterKeyVersionMissing {
        /// The version the header names.
        needed: u32,
        /// The versions released to this boot.
        held: Vec<u32>,
    },
    /// The store is sealed under an older master-key version than the head the key-release
    /// service recorded: a copy from before a re-seal was put back.
    #[error(
        "the key store is sealed under master-key version {store_version} but the \
         key-release service recorded its re-seal under version {anchor_version}: an older \
         copy of the store; refusing it"
    )]
    MasterKeyRollback {
        /// The header's version.
        store_version: u32,
        /// The version in the head the KRS holds.
        anchor_version: u32,
    },
    /// A record failed authentication or decryption: the store was altered or damaged.
    #[error("key store record {record} was altered or damaged: {why}")]
    Tampered {
        /// Where: line number or entry identity (never secret).
        record: String,
        /// Which check failed.
        why: &'static str,
    },
    /// The store is older than the head the key-release service recorded: a restored older
    /// copy, or its last records deleted.
    #[error(
        "key store rollback refused: the store on disk ends at record {store_seq} but the \
         key-release service recorded record {anchor_seq} (an older copy of the store was put \
         back, or its last records were deleted)"
    )]
    Rollback {
        /// Last record on disk.
        store_seq: u64,
        /// Head the KRS holds.
        anchor_seq: u64,
    },
    /// A shared store (the fleet's database) now ends before a record this member has already
    /// applied: the database failed over to a standby that had not received the newest
    /// commits, or an older copy was put back. Applying it would undo changes in effect (a
    /// disabled key enabled again) and writing on top of it would fork the history, so the
    /// member refuses both and keeps serving what it holds.
    #[error(
        "key store rollback refused: the shared database's store ends at record {store_seq} \
         but this member has already applied record {member_seq} (the database failed over to \
         a standby that was behind, or an older copy was put back); writes are refused and the \
         member keeps serving the state it holds"
    )]
    SharedRollback {
        /// Where the database's store ends.
        store_seq: u64,
        /// The member's head.
        member_seq: u64,
    },
    /// The log ends before its own sealed head: records were deleted or the log cut short.
    #[error(
        "key store truncated: its records end at {store_seq} but its sealed head says \
         {head_seq} (records deleted or the log cut short)"
    )]
    Truncated {
        /// Last record on disk.
        store_seq: u64,
        /// The sealed head's record.
        head_seq: u64,
    },
    /// The record at the KRS's head is not the one it recorded: another history of this store.
    #[error(
        "key store fork refused: record {seq} on disk is not the one the key-release service \
         recorded (a different history of this store)"
    )]
    Fork {
        /// Where the histories differ.
        seq: u64,
    },
    /// The store id is not the one the key-release service recorded for this deployment.
    #[error(
        "another key store: this store's id is {found} but the key-release service recorded \
         store {expected} (another appliance's store, or a re-created one, was put in its place)"
    )]
    OtherStore {
        /// This store's id (hex).
        found: String,
        /// The recorded id (hex).
        expected: String,
    },
    /// The store is gone but the key-release service recorded one.
    #[error(
        "the key store is missing ({location} is empty) but the key-release service recorded \
         record {anchor_seq} of it (deleted?); refusing to start with an empty store"
    )]
    StoreMissing {
        /// Where it was looked for.
        location: String,
        /// Head the KRS holds.
        anchor_seq: u64,
    },
    /// The store is newer than what the key-release service recorded: its record of the head
    /// was rolled back or lost.
    #[error(
        "key store head {store_seq} is newer than the head the key-release service recorded \
         ({anchor_seq}): the service's record was rolled back or lost; refusing to continue"
    )]
    AnchorBehind {
        /// The store's acknowledged head.
        store_seq: u64,
        /// Head the KRS holds.
        anchor_seq: u64,
    },
    /// An admin write was not recorded at the key-release service and was undone.
    #[error("the key-release service did not record the new store head: {0}; nothing changed")]
    AnchorRefused(String),
    /// An admin write's outcome is unknown: the key-release service did not answer, and could
    /// not be asked again. The change is not in effect; the next admin write settles it.
    #[error(
        "the key-release service is unreachable and the outcome of this write is unknown ({0}); \
         the change is not in effect, and the next admin write settles it first"
    )]
    AnchorUnknown(String),
    /// The store's head could not be recorded at the key-release service when it was first
    /// anchored (first boot or upgrade).
    #[error("the key-release service did not record this key store's head at first boot: {0}")]
    AnchorFirstHead(#[source] crate::head::AnchorError),
    /// The on-disk format is not one this build reads.
    #[error("unsupported key store format: {0}")]
    Format(String),
    /// Another process holds the key store's lock.
    #[error("key store at {0} is in use by another process")]
    Locked(String),
    /// File system error; `op` says what was being done.
    #[error("key store {op}: {source}")]
    Io {
        /// The operation, e.g. `append`, `open`, `compact`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A shared store: the change is stored in the fleet's database and in effect on every
    /// member, but the KRS did not record the new head (unreachable, or it refused): until a
    /// later write or boot records it, a database rolled back to the KRS's older head would not
    /// be caught.
    #[error(
        "the change is stored in the shared key store and in effect, but the key-release \
         service did not record the new store head ({0}); the next write or boot records it"
    )]
    NotAnchored(String),
    /// A shared backend (a database): another appliance appended first, so the record this
    /// write computed from an older view would not follow the store's head. Nothing was
    /// written; the registry re-reads the store and the caller may try again.
    #[error(
        "another appliance changed the shared key store at the same time (this write expected \
         record {expected} to be next; the store is at record {found}): nothing was written, \
         try again"
    )]
    Conflict {
        /// The sequence number this write would have taken.
        expected: u64,
        /// The store's head now.
        found: u64,
    },
    /// A shared backend could not be reached or answered with an error (not a conflict). A
    /// write that gets this may or may not have been stored: the registry re-reads before the
    /// next one.
    #[error("key store database {location}: {what}: {source}")]
    Unavailable {
        /// The database, without credentials.
        location: String,
        /// What was being done (`connect`, `append`, `load`, ...).
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Locked memory or RNG failure.
    #[error(transparent)]
    Secret(#[from] keyward_secret::SecretError),
    /// Sealing failed (should not happen with valid keys).
    #[error("sealing failed")]
    Seal,
}

impl KeystoreError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> KeystoreError {
        move |source| KeystoreError::Io { op, source }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> KeystoreError {
        KeystoreError::Invalid {
            what,
            why: why.into(),
        }
    }
}
