//! The registry: opens a [`KeyStore`] with the master key, unseals every KEK into locked memory,
//! publishes the result as a [`Snapshot`] in a [`SharedView`], and applies admin changes. Each
//! change is durable before the call returns and live at once (a new snapshot is swapped in).

use crate::now_unix;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use zeroize::Zeroizing;

use super::head::{AnchorError, HeadAnchor, StoreHead};
use super::load;
use super::model::{
    ApprovalRecord, CheckpointRecord, CredentialRecord, DestroyedKeyRecord, Header,
    ImportKeyRecord, ImportKeyUsedRecord, KeyRecord, KeyStore, KeyVersionRecord, Record,
    SealedHead, SignedRecord, StoreRecord, TlsKeyRecord, LOG_FORMAT,
};
use super::seal::{
    cred_aad, decode_mac, import_key_aad, mac_matches, tls_key_aad, tls_pending_key_aad, ChainMac,
    Sealer,
};
use super::source::MasterKeys;
use super::validate;
use super::view::{
    Credential, Grant, GrantOps, KeyStatus, KeyUsage, LiveKey, OlderKek, SharedView, Snapshot,
    StoreView,
};
use super::KeystoreError;
use keyward_secret::{getrandom_fill, Key32};

/// The SigV4 service name AWS KMS signs with; every store accepts it.
pub const KMS_SERVICE: &str = "kms-xks-proxy";

/// What `create_store` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStore {
    /// Store name: 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Path before `/kms/xks/v1`: empty, or `/...` of `[a-zA-Z0-9/_-]` (at most 117 characters).
    pub uri_prefix: String,
    /// Region expected in the SigV4 credential scope, e.g. `us-east-1`.
    pub region: String,
    /// Service names accepted besides `kms-xks-proxy` (e.g. the legacy `xks-kms`).
    pub extra_services: Vec<String>,
}

/// A key store as `list_stores` reports it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// Store name.
    pub name: String,
    /// URI prefix (may be empty).
    pub uri_prefix: String,
    /// Region.
    pub region: String,
    /// Accepted service names, `kms-xks-proxy` first.
    pub services: Vec<String>,
    /// Number of keys.
    pub keys: usize,
    /// Access key ids of its credentials.
    pub access_key_ids: Vec<String>,
    /// Creation time, Unix seconds.
    pub created: u64,
}

/// A key as `list_keys` reports it: never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Store it belongs to.
    pub store: String,
    /// External key id.
    pub id: String,
    /// Key version.
    pub version: u32,
    /// Allowed operations.
    pub usage: KeyUsage,
    /// Enabled or disabled.
    pub status: KeyStatus,
    /// Grants (empty: nobody may use it).
    pub grants: Vec<Grant>,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Every version kept, current first, with when it became current: the current one
    /// encrypts, all of them decrypt.
    pub versions: Vec<KeyVersionInfo>,
    /// The rotation schedule, seconds (`None`: by hand only).
    pub rotate_every_secs: Option<u64>,
    /// Scheduled for destruction at this time, Unix seconds.
    pub destroy_at: Option<u64>,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyVersionInfo {
    pub version: u32,
    /// When it became current, Unix seconds.
    pub created: u64,
}

/// Shortest rotation period accepted (a day): a schedule is for key hygiene, not a load.
pub const MIN_ROTATION_SECS: u64 = 86_400;
/// The waiting period of a scheduled destruction, in days (as KMS's own keys: 7-30).
pub const MIN_DESTROY_DAYS: u32 = 7;
pub const MAX_DESTROY_DAYS: u32 = 30;
/// The default waiting period.
pub const DEFAULT_DESTROY_DAYS: u32 = 30;

/// What [`Registry::schedule_destroy`] and [`Registry::cancel_destroy`] change.
struct KeyEdit {
    status: KeyStatus,
    destroy_at: Option<u64>,
    status_before_destroy: Option<KeyStatus>,
}

impl StoreInfo {
    /// The `XksProxyUriPath` to configure in AWS KMS: the prefix followed by `/kms/xks/v1`.
    pub fn xks_proxy_uri_path(&self) -> String {
        format!("{}/kms/xks/v1", self.uri_prefix)
    }
}

impl KeyInfo {
    /// Creation time as RFC 3339 (UTC).
    pub fn created_rfc3339(&self) -> String {
        unix_rfc3339(self.created)
    }
}

/// A credential as `list_credentials` reports it: the id, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// Access key id.
    pub access_key_id: String,
    /// Creation time, Unix seconds (KMS alarms on credential age).
    pub created: u64,
}

/// Which grants `revoke` removes: those with exactly this principal pattern and, for each
/// narrowing given here, the same narrowing. With `ops`, only those operations are taken away
/// (a grant left with none is removed); without, the whole grant goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoke {
    /// Principal pattern, compared exactly with the grant's.
    pub principal: String,
    /// Operations to take away; `None` removes the matching grants entirely.
    pub ops: Option<GrantOps>,
    /// Only grants narrowed to this via-service.
    pub via_service: Option<String>,
    /// Only grants narrowed to this source VPC.
    pub source_vpc: Option<String>,
    /// Only grants narrowed to this source VPC endpoint.
    pub source_vpce: Option<String>,
}

/// The key registry: sole writer of the key store and of the live [`SharedView`].
///
/// `Send + Sync`; every method takes `&self` and writers are serialised inside. Mutations do
/// blocking file I/O (an `fsync` or two): call them from `spawn_blocking` in async code.
pub struct Registry {
    view: SharedView,
    inner: Mutex<Inner>,
}

/// Writer state: the backend, the sealer, and what the snapshot does not carry.
struct Inner {
    backend: Box<dyn KeyStore>,
    sealer: Sealer,
    location: String,
    /// The last acknowledged record (the next one is `head.seq + 1`).
    head: StoreHead,
    /// Where heads are recorded before a write is acknowledged (`None`: unanchored).
    anchor: Option<Arc<dyn HeadAnchor>>,
    /// A write appended but neither published nor undone: the anchor's answer was lost and it
    /// could not be asked again. Settled before any later write.
    pending: Option<Pending>,
    meta: HashMap<String, StoreMeta>,
    /// The appliance TLS identity, unsealed (not part of the XKS request-path view).
    tls: Option<TlsMaterial>,
    /// Approval requests by id (not part of the XKS request-path view).
    approvals: Approvals,
    /// Outstanding wrapped-import keys by token hash (not part of the XKS request-path view).
    imports: ImportKeys,
    /// The backend is shared by a fleet ([`KeyStore::shared`]): writes are compare-and-set,
    /// other members' records are applied by [`Registry::refresh`], nothing is compacted or cut.
    shared: bool,
    /// A shared store's verified chain MACs by `seq`.
    history: load::ChainLog,
    /// The sealer of a newer master-key version released to this boot than the store is
    /// sealed under: [`Registry::reseal`] moves the store to it.
    target: Option<Sealer>,
    /// A re-seal whose new head the KRS has not recorded yet (it still holds this head, under
    /// the old version): recorded before the next write.
    reseal_unrecorded: Option<StoreHead>,
    /// A failed write of a file store may have left records after `head` in the backend, or
    /// its own head on disk (a directory fsync failing after the rename): the previous head is
    /// rewritten and those records cut off before the next write (see [`settle_tail`]).
    unsettled_tail: bool,
}

/// Master-key versions of an open store ([`Registry::mk_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MkStatus {
    /// The version the store is sealed under.
    pub sealed: u32,
    /// The newest version released to this boot (`> sealed`: a re-seal is due).
    pub current: u32,
    /// Whether the KRS holds the head under `sealed` (false: a re-seal it has not recorded).
    pub krs_recorded: bool,
}

/// What a write changes besides the snapshot (creation times, the TLS identity), applied when
/// the write takes effect.
type Effect = Box<
    dyn FnOnce(
            &mut HashMap<String, StoreMeta>,
            &mut Option<TlsMaterial>,
            &mut Approvals,
            &mut ImportKeys,
        ) + Send,
>;

fn no_effect() -> Effect {
    Box::new(|_, _, _, _| {})
}

/// Approval requests by id.
pub(super) type Approvals = BTreeMap<String, ApprovalRecord>;

/// Outstanding wrapped-import keys by token hash.
pub(super) type ImportKeys = BTreeMap<String, ImportKeyMaterial>;

/// A wrapped-import token's RSA wrapping key as the key store holds it: the PKCS#8 DER private
/// key (zeroized on drop, never shown by `Debug`), what it was issued for and until when. The
/// token itself is never kept, only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct ImportKeyMaterial {
    /// SHA-256 of the import token, hex (64 digits).
    pub token_sha256: String,
    /// The wrapping algorithm the token was issued for (the admin API's name).
    pub algorithm: String,
    /// The wrapping key spec (the admin API's name).
    pub key_spec: String,
    /// Issued, Unix seconds (trusted time).
    pub created: u64,
    /// Refused from this time on, Unix seconds (trusted time).
    pub valid_to: u64,
    /// PKCS#8 DER RSA private key.
    pub pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ImportKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportKeyMaterial")
            .field("token_sha256", &self.token_sha256)
            .field("algorithm", &self.algorithm)
            .field("key_spec", &self.key_spec)
            .field("created", &self.created)
            .field("valid_to", &self.valid_to)
            .field("pkcs8_der", &"<redacted>")
            .finish()
    }
}

/// Largest PKCS#8 private key the key store accepts for a wrapped-import token (RSA-4096 is
/// about 2.4 KiB).
const MAX_IMPORT_KEY_DER: usize = 8 * 1024;

fn is_token_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The record of an import key, its private key sealed afresh.
fn import_record(sealer: &Sealer, k: &ImportKeyMaterial) -> Result<Record, KeystoreError> {
    Ok(Record::ImportKey(ImportKeyRecord {
        token_sha256: k.token_sha256.clone(),
        algorithm: k.algorithm.clone(),
        key_spec: k.key_spec.clone(),
        created: k.created,
        valid_to: k.valid_to,
        key: sealer.seal(&k.pkcs8_der, &import_key_aad(&k.token_sha256))?,
    }))
}

/// What replaying records builds besides the stores: the TLS identity and the approvals.
#[derive(Default)]
pub(super) struct Sidecar {
    pub(super) tls: Option<TlsMaterial>,
    pub(super) approvals: Approvals,
    pub(super) imports: ImportKeys,
}

/// Largest approval request record the key store accepts (its JSON).
const MAX_APPROVAL_JSON: usize = 8 * 1024;

/// A write whose outcome at the anchor is unknown.
struct Pending {
    prev: StoreHead,
    next: StoreHead,
    snap: Snapshot,
    effect: Effect,
}

/// The appliance-managed TLS identity as the key store holds it: the private key (PKCS#8 DER,
/// zeroized on drop, never shown by `Debug`) and the chain installed for it. `PartialEq` lets a
/// fleet member tell whether another member changed it.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// PKCS#8 DER private key.
    pub pkcs8_der: Zeroizing<Vec<u8>>,
    /// PEM chain, leaf first, when one was installed.
    pub chain_pem: Option<String>,
    /// Key creation time, Unix seconds.
    pub created: u64,
    /// Chain installation time, Unix seconds.
    pub chain_installed: Option<u64>,
    /// The pending key (`tls csr --new-key`): PKCS#8 DER, not served until a chain for it is
    /// installed ([`Registry::promote_tls_pending`]).
    pub pending_pkcs8_der: Option<Zeroizing<Vec<u8>>>,
    /// When the pending key was made, Unix seconds.
    pub pending_created: Option<u64>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("pkcs8_der", &"<redacted>")
            .field("chain_pem", &self.chain_pem.as_ref().map(|c| c.len()))
            .field("created", &self.created)
            .field("chain_installed", &self.chain_installed)
            .field(
                "pending_pkcs8_der",
                &self.pending_pkcs8_der.as_ref().map(|_| "<redacted>"),
            )
            .field("pending_created", &self.pending_created)
            .finish()
    }
}

/// Largest PEM chain the key store accepts for the TLS identity.
pub const MAX_TLS_CHAIN_PEM: usize = 48 * 1024;
/// Largest PKCS#8 private key the key store accepts for the TLS identity.
const MAX_TLS_KEY_DER: usize = 8 * 1024;

/// Creation times (not part of the request-path view).
#[derive(Default, Clone)]
pub(super) struct StoreMeta {
    created: u64,
    keys: HashMap<String, u64>,
    creds: HashMap<String, u64>,
}

/// A store being assembled while records are replayed.
pub(super) struct StoreBuild {
    record: StoreRecord,
    keys: HashMap<String, Arc<LiveKey>>,
    creds: Vec<Arc<Credential>>,
    meta: StoreMeta,
    destroyed: HashMap<String, u64>,
}

/// How many times a shared-store write tries to move the KRS head forward from the head the KRS
/// holds when other members move it meanwhile.
const ANCHOR_TRIES: usize = 8;

/// Compact when superseded records exceed live ones and this floor.
const COMPACT_FLOOR: usize = 4096;

/// Records needed to describe `snap` (stores, keys, credentials) and the TLS identity.
fn live_count(
    snap: &Snapshot,
    tls: &Option<TlsMaterial>,
    approvals: &Approvals,
    imports: &ImportKeys,
) -> usize {
    snap.stores
        .values()
        .map(|s| 1 + s.keys.len() + s.credentials.len() + s.destroyed.len())
        .sum::<usize>()
        + usize::from(tls.is_some())
        + approvals.len()
        + imports.len()
}

/// The record of a TLS identity, its key sealed afresh.
fn tls_record(sealer: &Sealer, t: &TlsMaterial) -> Result<Record, KeystoreError> {
    Ok(Record::TlsKey(TlsKeyRecord {
        key: sealer.seal(&t.pkcs8_der, &tls_key_aad())?,
        chain_pem: t.chain_pem.clone(),
        created: t.created,
        chain_installed: t.chain_installed,
        pending: t
            .pending_pkcs8_der
            .as_ref()
            .map(|k| sealer.seal(k, &tls_pending_key_aad()))
            .transpose()?,
        pending_created: t.pending_created.filter(|_| t.pending_pkcs8_der.is_some()),
    }))
}

fn services_of(r: &StoreRecord) -> Vec<String> {
    let mut v = vec![KMS_SERVICE.to_string()];
    for s in &r.extra_services {
        if !v.contains(s) {
            v.push(s.clone());
        }
    }
    v
}

/// A new view of one store with `keys`/`credentials` replaced or kept.
fn store_view(
    base: &StoreView,
    keys: Option<HashMap<String, Arc<LiveKey>>>,
    credentials: Option<Vec<Arc<Credential>>>,
) -> StoreView {
    StoreView {
        name: base.name.clone(),
        uri_prefix: base.uri_prefix.clone(),
        region: base.region.clone(),
        services: base.services.clone(),
        credentials: credentials.unwrap_or_else(|| base.credentials.clone()),
        keys: keys.unwrap_or_else(|| base.keys.clone()),
        destroyed: base.destroyed.clone(),
    }
}

/// A new key (version 1, enabled, no grants): its sealed record for disk and its live view.
fn new_key(
    sealer: &Sealer,
    store: &str,
    id: &str,
    usage: KeyUsage,
    kek: Key32,
    created: u64,
) -> Result<(KeyRecord, Arc<LiveKey>), KeystoreError> {
    let record = KeyRecord {
        store: store.to_string(),
        id: id.to_string(),
        version: 1,
        usage,
        status: KeyStatus::Enabled,
        grants: Vec::new(),
        created,
        kek: sealer.seal_kek(store, id, 1, &kek)?,
        rotated: None,
        older: Vec::new(),
        rotate_every_secs: None,
        destroy_at: None,
        status_before_destroy: None,
    };
    let live = Arc::new(LiveKey {
        id: id.to_string(),
        version: 1,
        usage,
        status: KeyStatus::Enabled,
        grants: Vec::new(),
        kek,
        version_created: created,
        older: Vec::new(),
        rotate_every_secs: None,
        destroy_at: None,
        status_before_destroy: None,
    });
    Ok((record, live))
}

/// The record of `k` (every version's KEK sealed afresh under its own version's AAD).
fn key_record(
    sealer: &Sealer,
    store: &str,
    k: &LiveKey,
    created: u64,
) -> Result<KeyRecord, KeystoreError> {
    let older = k
        .older
        .iter()
        .map(|o| {
            Ok(KeyVersionRecord {
                version: o.version,
                created: o.created,
                kek: sealer.seal_kek(store, &k.id, o.version, &o.kek)?,
            })
        })
        .collect::<Result<Vec<_>, KeystoreError>>()?;
    Ok(KeyRecord {
        store: store.to_string(),
        id: k.id.clone(),
        version: k.version,
        usage: k.usage,
        status: k.status,
        grants: k.grants.clone(),
        created,
        kek: sealer.seal_kek(store, &k.id, k.version, &k.kek)?,
        rotated: (k.version > 1 || k.version_created != created).then_some(k.version_created),
        older,
        rotate_every_secs: k.rotate_every_secs,
        destroy_at: k.destroy_at,
        status_before_destroy: k.status_before_destroy,
    })
}

/// When `id` of `store` was created (Unix seconds; 0 if unknown).
fn key_created(inner: &Inner, store: &str, id: &str) -> u64 {
    inner
        .meta
        .get(store)
        .and_then(|m| m.keys.get(id).copied())
        .unwrap_or(0)
}

/// A copy of `k` (every version's KEK copied in locked memory), to change and publish.
fn copy_key(k: &LiveKey) -> Result<LiveKey, KeystoreError> {
    Ok(LiveKey {
        id: k.id.clone(),
        version: k.version,
        usage: k.usage,
        status: k.status,
        grants: k.grants.clone(),
        kek: k.kek.try_clone()?,
        version_created: k.version_created,
        older: older_of(k)?,
        rotate_every_secs: k.rotate_every_secs,
        destroy_at: k.destroy_at,
        status_before_destroy: k.status_before_destroy,
    })
}

/// Copies of `k`'s earlier versions (their KEKs copied in locked memory).
fn older_of(k: &LiveKey) -> Result<Vec<OlderKek>, KeystoreError> {
    k.older
        .iter()
        .map(|o| {
            Ok(OlderKek {
                version: o.version,
                created: o.created,
                kek: o.kek.try_clone()?,
            })
        })
        .collect()
}

fn key_info(store: &str, k: &LiveKey, created: u64) -> KeyInfo {
    let mut versions = vec![KeyVersionInfo {
        version: k.version,
        created: k.version_created,
    }];
    versions.extend(k.older.iter().map(|o| KeyVersionInfo {
        version: o.version,
        created: o.created,
    }));
    KeyInfo {
        store: store.to_string(),
        id: k.id.clone(),
        version: k.version,
        usage: k.usage,
        status: k.status,
        grants: k.grants.clone(),
        created,
        versions,
        rotate_every_secs: k.rotate_every_secs,
        destroy_at: k.destroy_at,
    }
}

fn validate_grant(g: &Grant) -> Result<(), KeystoreError> {
    if g.principal.is_empty() || g.principal.len() > 2048 {
        return Err(KeystoreError::invalid(
            "principal",
            "1-2048 characters needed",
        ));
    }
    if g.principal
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(KeystoreError::invalid(
            "principal",
            "it contains whitespace or control characters",
        ));
    }
    if !(g.ops.encrypt || g.ops.decrypt || g.ops.metadata) {
        return Err(KeystoreError::invalid(
            "grant ops",
            "at least one of encrypt, decrypt, metadata needed",
        ));
    }
    for (what, v) in [
        ("via service", &g.via_service),
        ("source vpc", &g.source_vpc),
        ("source vpce", &g.source_vpce),
    ] {
        if let Some(v) = v {
            if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control()) {
                return Err(KeystoreError::invalid(
                    what,
                    "1-256 printable characters needed",
                ));
            }
        }
    }
    Ok(())
}

/// The request-path snapshot and the creation times from replayed stores.
fn build_snapshot(builds: HashMap<String, StoreBuild>) -> (Snapshot, HashMap<String, StoreMeta>) {
    let mut snapshot = Snapshot::default();
    let mut meta = HashMap::new();
    for (name, b) in builds {
        let services = services_of(&b.record);
        snapshot.stores.insert(
            name.clone(),
            Arc::new(StoreView {
                name: name.clone(),
                uri_prefix: b.record.uri_prefix,
                region: b.record.region,
                services,
                credentials: b.creds,
                keys: b.keys,
                destroyed: b.destroyed,
            }),
        );
        meta.insert(name, b.meta);
    }
    (snapshot, meta)
}

/// The replay state of `snap` (what [`load`] would have built from the records): stores with
/// their keys and credentials shared, not copied.
fn builds_of(snap: &Snapshot, meta: &HashMap<String, StoreMeta>) -> HashMap<String, StoreBuild> {
    snap.stores
        .iter()
        .map(|(name, v)| {
            let m = meta.get(name).cloned().unwrap_or_default();
            (
                name.clone(),
                StoreBuild {
                    record: StoreRecord {
                        name: v.name.clone(),
                        uri_prefix: v.uri_prefix.clone(),
                        region: v.region.clone(),
                        extra_services: v
                            .services
                            .iter()
                            .filter(|s| s.as_str() != KMS_SERVICE)
                            .cloned()
                            .collect(),
                        created: m.created,
                    },
                    keys: v.keys.clone(),
                    creds: v.credentials.clone(),
                    meta: m,
                    destroyed: v.destroyed.clone(),
                },
            )
        })
        .collect()
}

/// Have the anchor record `head` (verified, later than what it holds) on a shared store; a
/// failure is logged, not fatal: the floor only lags, and the next write or boot retries.
/// Have the anchor record a re-seal: `next` is `held` (same store, `seq` and chain MAC) under
/// a newer master-key version. A lost answer is settled by asking what it holds.
fn record_reseal(
    anchor: &dyn HeadAnchor,
    held: &StoreHead,
    next: &StoreHead,
) -> Result<(), KeystoreError> {
    match anchor.advance(Some(held), next) {
        Ok(()) => {}
        Err(AnchorError::Unreachable(why)) => match anchor.current() {
            Ok(Some(h)) if &h == next => {}
            _ => return Err(KeystoreError::AnchorUnknown(why)),
        },
        Err(AnchorError::Refused(why)) => return Err(KeystoreError::AnchorRefused(why)),
    }
    tracing::info!(
        seq = next.seq,
        from = held.mk_version,
        to = next.mk_version,
        "the key-release service recorded the key store's re-seal under the new master key"
    );
    Ok(())
}

fn roll_forward(anchor: &dyn HeadAnchor, held: Option<&StoreHead>, head: &StoreHead) {
    match anchor.advance(held, head) {
        Ok(()) => tracing::info!(
            from = held.map_or(0, |h| h.seq),
            to = head.seq,
            "recorded the shared store's newest head at the key-release service"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            seq = head.seq,
            "the key-release service did not record the shared store's newest head (another \
             member may have); retried with the next write"
        ),
    }
}

impl Registry {
    /// Open (or initialise, if empty) `backend` with `master`, verify and unseal every record
    /// into locked memory, and publish the snapshot. A wrong master key gives
    /// [`KeystoreError::WrongMasterKey`]; any altered, missing or reordered record gives
    /// [`KeystoreError::Tampered`] or [`KeystoreError::Truncated`] (nothing partial is ever
    /// published). The master key is used to derive the sealing and MAC subkeys and then
    /// dropped (zeroized); it is never written anywhere. No freshness anchor: see
    /// [`Registry::open_with`].
    pub fn open(backend: Box<dyn KeyStore>, master: Key32) -> Result<Registry, KeystoreError> {
        Self::open_with(backend, master, super::Freshness::Unanchored)
    }

    /// [`Registry::open`] with the store's freshness checked against `freshness` (the floor
    /// from the KRS's release receipt) and every later write anchored there: a store older than
    /// the floor is refused ([`KeystoreError::Rollback`]), another store's
    /// ([`KeystoreError::OtherStore`]) or another history ([`KeystoreError::Fork`]) too; records
    /// after the floor were never acknowledged and are cut off. With no floor (first boot or
    /// upgrade) the current head is recorded first, or the open fails.
    pub fn open_with(
        backend: Box<dyn KeyStore>,
        master: Key32,
        freshness: super::Freshness,
    ) -> Result<Registry, KeystoreError> {
        Self::open_keys(backend, MasterKeys::single(master), freshness)
    }

    /// [`Registry::open_with`] with every master-key version released to this boot: the store
    /// opens under the version its header names (which must be among `keys`, else
    /// [`KeystoreError::MasterKeyVersionMissing`]); when `keys` has a newer current version,
    /// [`Registry::reseal`] moves the store to it. A store sealed under an older version than
    /// the head the KRS holds is refused ([`KeystoreError::MasterKeyRollback`]); one re-sealed
    /// after the head the KRS holds (a re-seal interrupted before the KRS recorded it) has
    /// that head recorded now. The keys are dropped (zeroized) once their subkeys are derived.
    pub fn open_keys(
        mut backend: Box<dyn KeyStore>,
        keys: MasterKeys,
        freshness: super::Freshness,
    ) -> Result<Registry, KeystoreError> {
        let location = backend.location();
        let opened = load::open_store(backend.as_mut(), &keys, &freshness)?;
        let current = keys.current_version();
        let target = match keys.get(current) {
            Some(k) if current > opened.sealer.mk_version() => {
                Some(Sealer::versioned(k, opened.sealer.store_id(), current)?)
            }
            _ => None,
        };
        drop(keys);
        let load::Opened {
            sealer,
            builds,
            tls:
                Sidecar {
                    tls,
                    approvals,
                    imports,
                },
            head,
            chain,
        } = opened;
        let (snapshot, meta) = build_snapshot(builds);
        let live = live_count(&snapshot, &tls, &approvals, &imports);
        let shared = backend.shared();
        let anchor = match freshness {
            super::Freshness::Anchored { anchor, floor } => {
                if let Some(f) = floor.as_ref().filter(|f| {
                    f.seq == head.seq
                        && f.chain_mac == head.chain_mac
                        && f.mk_version < head.mk_version
                }) {
                    // A re-seal that stopped after the store switched, before the KRS recorded it.
                    record_reseal(anchor.as_ref(), f, &head)?;
                }
                if shared && floor.as_ref().map_or(0, |f| f.seq) < head.seq {
                    // Another member's write whose head it has not recorded yet (or never
                    // will: it stopped in between). The records verified: record the head.
                    roll_forward(anchor.as_ref(), floor.as_ref(), &head);
                }
                Some(anchor)
            }
            super::Freshness::Unanchored => None,
        };
        let mut inner = Inner {
            backend,
            sealer,
            location,
            head,
            anchor,
            pending: None,
            meta,
            tls,
            approvals,
            imports,
            shared,
            history: chain,
            target,
            reseal_unrecorded: None,
            unsettled_tail: false,
        };
        if !shared && inner.backend.record_count() > COMPACT_FLOOR.max(2 * live) {
            if let Err(e) = compact(&mut inner, &snapshot) {
                tracing::warn!(error = %e, "key store compaction at open failed");
            }
        }
        Ok(Registry {
            view: Arc::new(ArcSwap::from_pointee(snapshot)),
            inner: Mutex::new(inner),
        })
    }

    /// Export the store as a backup file ([`super::backup`]): the header, every record up to the
    /// acknowledged head (verbatim, still sealed), the sealed head, MACed as a whole under the
    /// master key's `backup` subkey. Taken under the writer lock (on a shared store after
    /// applying the other members' writes), so it is one consistent head: the acknowledged one
    /// (a write whose outcome at the KRS is still unknown is not in it); admin writes wait for
    /// it. It needs no KRS. What was read is verified before it is exported (every
    /// record's MAC, the chain, the sealed head; no KEK is unsealed again): a store changed in
    /// its backend since it was opened is refused now, not found out at a restore. Blocking
    /// I/O: one read of the whole store.
    pub fn export(&self) -> Result<super::backup::Export, KeystoreError> {
        // No settling of a pending write (that needs the KRS, and a backup must work while it
        // is down): the export ends at the acknowledged head, and a pending write lies beyond.
        let mut inner = self.lock();
        if inner.shared {
            self.refresh_locked(&mut inner)?;
        }
        let head = inner.head.clone();
        let header = inner
            .backend
            .header()?
            .ok_or_else(|| KeystoreError::Format("key store header is gone".into()))?;
        if hex::decode(&header.store_id).ok().as_deref() != Some(inner.sealer.store_id()) {
            return Err(KeystoreError::Format(
                "the key store's header names another store than the one opened".into(),
            ));
        }
        let mut records = Vec::new();
        inner.backend.load(&mut |sr| {
            // On a shared store, records after this member's head are other members' writes
            // made since the refresh above: the next backup has them.
            if sr.seq <= head.seq {
                records.push(sr);
            }
            Ok(())
        })?;
        let sealed = load::seal_head(&inner.sealer, &head)?;
        super::backup::export(&inner.sealer, header, &head, sealed, records)
    }

    /// Which master-key version seals the store, and the newest one released to this boot.
    pub fn mk_status(&self) -> MkStatus {
        let inner = self.lock();
        let sealed = inner.sealer.mk_version();
        MkStatus {
            sealed,
            current: inner.target.as_ref().map_or(sealed, Sealer::mk_version),
            krs_recorded: inner.reseal_unrecorded.is_none(),
        }
    }

    /// Add master-key versions released while running (a fresh release after `krs mk rotate`)
    /// to what this boot holds: when `keys` has a newer current version than the store's and
    /// than any re-seal target, it becomes the target ([`Registry::reseal`] moves the store to
    /// it; a fleet member that finds the shared store re-sealed under it continues under it at
    /// its next re-read). Older versions in `keys` are not needed (the store opened under its
    /// own) and are dropped with the rest, zeroized, once the subkeys are derived. Returns
    /// the status after.
    pub fn learn_master_keys(&self, keys: MasterKeys) -> Result<MkStatus, KeystoreError> {
        let mut inner = self.lock();
        let current = keys.current_version();
        let held = inner
            .target
            .as_ref()
            .map_or(inner.sealer.mk_version(), Sealer::mk_version);
        if current > held.max(inner.sealer.mk_version()) {
            if let Some(k) = keys.get(current) {
                let target = Sealer::versioned(k, inner.sealer.store_id(), current)?;
                tracing::info!(
                    sealed = inner.sealer.mk_version(),
                    current,
                    "learned a newer master-key version while running"
                );
                inner.target = Some(target);
            }
        }
        drop(keys);
        let sealed = inner.sealer.mk_version();
        Ok(MkStatus {
            sealed,
            current: inner.target.as_ref().map_or(sealed, Sealer::mk_version),
            krs_recorded: inner.reseal_unrecorded.is_none(),
        })
    }

    /// Re-seal the store under the newest master-key version released to this boot, online:
    /// admin writes wait on the writer lock; the XKS request path never does (the KEKs in
    /// memory do not change). `Ok(None)`: already sealed under it.
    ///
    /// Steps, each durable before the next, so a crash at any point leaves a store that opens:
    /// 1. a complete new generation of the log (header naming the new version, a checkpoint
    ///    carrying the head, every live record with every secret sealed anew and MACed under
    ///    the new version's subkeys) is written to a temp file and renamed over the log (as a
    ///    compaction); a crash before the rename leaves the old version intact;
    /// 2. the sealed head is rewritten under the new version (a crash before: the next open
    ///    verifies the old head with the old version, still released, and finishes this);
    /// 3. the KRS records the head (same `seq` and chain MAC) under the new version; it never
    ///    takes an older version back, so the old-version store is refused from then on (a
    ///    crash before: the next open records it).
    pub fn reseal(&self) -> Result<Option<StoreHead>, KeystoreError> {
        let mut inner = self.lock_write()?;
        if inner.target.is_none() {
            return Ok(None);
        }
        let snap = self.view.load_full();
        let prev = inner.head.clone();
        let target = inner.target.take().ok_or(KeystoreError::Seal)?;
        let header = Header {
            format: LOG_FORMAT,
            store_id: hex::encode(&prev.store_id),
            check: target.seal_check()?,
            mk_version: target.mk_version(),
        };
        let started = std::time::Instant::now();
        let next = StoreHead {
            mk_version: target.mk_version(),
            ..prev.clone()
        };
        // A shared store switches the records and the sealed head in one transaction.
        let shared_head = if inner.shared {
            Some(load::seal_head(&target, &next)?)
        } else {
            None
        };
        let written = {
            let Inner {
                backend,
                head,
                meta,
                tls,
                approvals,
                imports,
                ..
            } = &mut *inner;
            write_generation(
                backend.as_mut(),
                &target,
                Some(&header),
                shared_head.as_ref(),
                head,
                Live {
                    meta,
                    tls,
                    approvals,
                    imports,
                    snap: &snap,
                },
            )
        };
        if let Err(e) = written {
            let version = target.mk_version();
            inner.target = Some(target);
            if inner.shared && matches!(e, KeystoreError::Conflict { .. }) {
                // Another member wrote or re-sealed first: re-read; if it re-sealed under this
                // version, the fleet is there and nothing is left to do.
                self.refresh_locked(&mut inner)?;
                if inner.sealer.mk_version() >= version {
                    return Ok(None);
                }
            }
            return Err(e);
        }
        crash_point("reseal-switched");
        let from = inner.sealer.mk_version();
        inner.sealer = target;
        inner.head = next.clone();
        if shared_head.is_none() {
            let sealed_head = load::seal_head(&inner.sealer, &next)?;
            inner.backend.store_head(&sealed_head)?;
        }
        crash_point("reseal-head");
        tracing::info!(
            from,
            to = next.mk_version,
            records = inner.backend.record_count(),
            ms = started.elapsed().as_millis() as u64,
            "re-sealed the key store under the new master-key version"
        );
        if let Some(anchor) = inner.anchor.clone() {
            if let Err(e) = record_reseal(anchor.as_ref(), &prev, &next) {
                inner.reseal_unrecorded = Some(prev);
                return Err(e);
            }
        }
        Ok(Some(next))
    }

    /// The store's acknowledged head (what the KRS holds once writes are anchored).
    pub fn head(&self) -> StoreHead {
        self.lock().head.clone()
    }

    /// [`Registry::open`] on a [`super::FileKeyStore`] in `dir` (created if missing).
    pub fn open_dir(dir: &Path, master: Key32) -> Result<Registry, KeystoreError> {
        Self::open(Box::new(super::FileKeyStore::open(dir)?), master)
    }

    /// The live view for the request path (clone of the `Arc`; load it per request).
    pub fn view(&self) -> SharedView {
        Arc::clone(&self.view)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.view.load_full()
    }

    /// Health probe: the backing store can still be read (its header is there and unchanged).
    pub fn check_readable(&self) -> Result<(), KeystoreError> {
        let mut inner = self.lock();
        match inner.backend.header()? {
            Some(h) if inner.sealer.verify_check(&h.check) => Ok(()),
            Some(_) => Err(KeystoreError::WrongMasterKey),
            None => Err(KeystoreError::Format("key store header is gone".into())),
        }
    }

    /// Where the records live (for messages and health).
    pub fn location(&self) -> String {
        self.lock().location.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: the snapshot is
        // swapped only after the record is durable, and `meta` only holds creation times.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolve the store argument against `snap`.
    fn resolve(snap: &Snapshot, store: Option<&str>) -> Result<Arc<StoreView>, KeystoreError> {
        match store {
            Some(name) => snap
                .stores
                .get(name)
                .cloned()
                .ok_or_else(|| KeystoreError::UnknownStore(name.to_string())),
            None if snap.stores.len() == 1 => snap
                .stores
                .values()
                .next()
                .cloned()
                .ok_or(KeystoreError::StoreRequired(0)),
            None => Err(KeystoreError::StoreRequired(snap.stores.len())),
        }
    }

    fn find_key(
        snap: &Snapshot,
        store: Option<&str>,
        id: &str,
    ) -> Result<(Arc<StoreView>, Arc<LiveKey>), KeystoreError> {
        let sv = Self::resolve(snap, store)?;
        let k = sv
            .keys
            .get(id)
            .cloned()
            .ok_or_else(|| KeystoreError::UnknownKey {
                store: sv.name.clone(),
                id: id.to_string(),
            })?;
        Ok((sv, k))
    }

    /// Lock the writer state for a change: an earlier write whose outcome is unknown is
    /// settled first (published or undone), and on a shared store what other members wrote is
    /// applied first, so the change is computed from the true state.
    fn lock_write(&self) -> Result<MutexGuard<'_, Inner>, KeystoreError> {
        let mut inner = self.lock();
        if inner.unsettled_tail {
            settle_tail(&mut inner)?;
        }
        self.settle(&mut inner)?;
        if inner.shared {
            self.refresh_locked(&mut inner)?;
        }
        Ok(inner)
    }

    /// Whether the store is shared by a fleet (a database backend).
    pub fn is_shared(&self) -> bool {
        self.lock().shared
    }

    /// A shared store: apply what other members wrote since this member's head (every record
    /// verified, as at open), publishing a new snapshot when anything changed. A store that
    /// went back before what this member has applied, or now holds another history, is refused
    /// ([`KeystoreError::SharedRollback`], [`KeystoreError::Tampered`]) and the current view is
    /// kept.
    /// Returns whether the view changed. A file store is never written by anyone else: `false`.
    pub fn refresh(&self) -> Result<bool, KeystoreError> {
        let mut inner = self.lock();
        if !inner.shared {
            return Ok(false);
        }
        self.refresh_locked(&mut inner)
    }

    fn refresh_locked(&self, inner: &mut Inner) -> Result<bool, KeystoreError> {
        let tip = inner.backend.tip()?;
        if inner.backend.rewritten() {
            // Another member re-sealed the store: same tip, a new generation.
            return self.reload(inner);
        }
        if tip == Some(inner.head.seq) {
            return Ok(false);
        }
        if let Some(t) = tip.filter(|t| *t < inner.head.seq) {
            // The database lost records this member has applied (a failover to a standby that
            // was behind, a restore, a truncation). Refused, not applied: the records it lost
            // may be a revocation, and writing at its tip would fork the history the other
            // members hold. The view stays as it is; an operator decides (docs/fleet.md).
            return Err(KeystoreError::SharedRollback {
                store_seq: t,
                member_seq: inner.head.seq,
            });
        }
        match self.catch_up(inner)? {
            Some(changed) => Ok(changed),
            None => self.reload(inner),
        }
    }

    /// Apply the records after this member's head to the current view: each is checked to
    /// follow the chain from the head (seq, batch, chain MAC), then replayed onto the stores as
    /// they are, so catching up costs the new records, not the whole store. `None` when it
    /// cannot be done incrementally (a checkpoint: the store was rewritten), and the caller
    /// re-reads everything.
    fn catch_up(&self, inner: &mut Inner) -> Result<Option<bool>, KeystoreError> {
        let known = inner.head.clone();
        let mut prev: ChainMac = known
            .chain_mac
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::Seal)?;
        let mut next = known.seq + 1;
        let mut new: Vec<(u64, ChainMac, Record)> = Vec::new();
        let mut rewritten = false;
        let sealer = &inner.sealer;
        inner
            .backend
            .load_after(known.seq, &mut |sr: SignedRecord| {
                if rewritten {
                    return Ok(());
                }
                if matches!(sr.rec, Record::Checkpoint(_)) {
                    rewritten = true;
                    return Ok(());
                }
                let tampered = |why| KeystoreError::Tampered {
                    record: format!("seq {}", sr.seq),
                    why,
                };
                if sr.seq != next {
                    return Err(tampered(
                        "a record is missing, repeated or out of order after this member's head",
                    ));
                }
                let batch = match sr.batch {
                    None => 1,
                    Some(n) if n >= 2 => n,
                    Some(_) => return Err(tampered("impossible batch size")),
                };
                let mac = sealer.chain_mac(sr.seq, batch, &prev, &sr.rec)?;
                if !mac_matches(&mac, &sr.mac) {
                    return Err(tampered(
                        "chain MAC does not verify from this member's head (altered, or another \
                     history)",
                    ));
                }
                prev = mac;
                next += 1;
                new.push((sr.seq, mac, sr.rec));
                Ok(())
            })?;
        if rewritten {
            return Ok(None);
        }
        let Some(last) = new.last().map(|(seq, mac, _)| (*seq, *mac)) else {
            return Ok(Some(false));
        };
        let snap = self.view.load_full();
        let mut builds = builds_of(&snap, &inner.meta);
        let mut tls = Sidecar {
            tls: inner.tls.clone(),
            approvals: inner.approvals.clone(),
            imports: inner.imports.clone(),
        };
        let mut macs = Vec::with_capacity(new.len());
        for (seq, mac, rec) in new {
            load::replay(&inner.sealer, &mut builds, &mut tls, seq, rec)?;
            macs.push(mac);
        }
        let (snap, meta) = build_snapshot(builds);
        tracing::info!(
            from = known.seq,
            to = last.0,
            "applied changes other members made to the shared key store"
        );
        for m in macs {
            inner.history.push(m);
        }
        inner.head = StoreHead {
            store_id: known.store_id,
            seq: last.0,
            chain_mac: last.1.to_vec(),
            mk_version: inner.sealer.mk_version(),
        };
        inner.meta = meta;
        inner.tls = tls.tls;
        inner.approvals = tls.approvals;
        inner.imports = tls.imports;
        self.view.store(Arc::new(snap));
        Ok(Some(true))
    }

    /// Re-read the whole shared store (every record verified as at open).
    ///
    /// A store another member re-sealed under a newer master-key version is read with that
    /// version when this boot holds it (released at boot: then this member continues under
    /// it); when it does not, nothing is applied, the error says so (loudly, every time) and
    /// this member stops writing, while the XKS request path keeps the view it has.
    fn reload(&self, inner: &mut Inner) -> Result<bool, KeystoreError> {
        let known = inner.head.clone();
        let version = inner
            .backend
            .header()?
            .ok_or_else(|| KeystoreError::Format("key store header is gone".into()))?
            .mk_version;
        let switch = version != inner.sealer.mk_version();
        if switch && inner.target.as_ref().map(Sealer::mk_version) != Some(version) {
            let mut held = vec![inner.sealer.mk_version()];
            held.extend(inner.target.as_ref().map(Sealer::mk_version));
            tracing::error!(
                store_version = version,
                held = ?held,
                "another fleet member re-sealed the shared key store under a master-key version \
                 this member was not released: it stops writing (XKS keeps serving the keys it \
                 has in memory); restart it so the key-release service releases that version"
            );
            return Err(KeystoreError::MasterKeyVersionMissing {
                needed: version,
                held,
            });
        }
        let r = {
            let sealer = match (&inner.target, switch) {
                (Some(t), true) => t,
                _ => &inner.sealer,
            };
            load::reload_shared(inner.backend.as_mut(), sealer, &known)?
        };
        if switch {
            if let Some(t) = inner.target.take() {
                inner.sealer = t;
            }
            tracing::info!(
                from = known.mk_version,
                to = version,
                seq = r.head.seq,
                "another fleet member re-sealed the shared key store: continuing under the new \
                 master-key version"
            );
            if let Some(anchor) = inner.anchor.clone() {
                // The re-sealing member records it; if it stopped before, do it here.
                if r.head.seq == known.seq
                    && r.head.chain_mac == known.chain_mac
                    && anchor.current().ok().flatten().as_ref() == Some(&known)
                {
                    if let Err(e) = record_reseal(anchor.as_ref(), &known, &r.head) {
                        tracing::warn!(error = %e, "recording the fleet's re-seal at the key-release service failed; retried with the next write");
                    }
                }
            }
        }
        if r.head == known {
            return Ok(false);
        }
        let (snap, meta) = build_snapshot(r.builds);
        tracing::info!(
            from = known.seq,
            to = r.head.seq,
            "applied changes other members made to the shared key store"
        );
        inner.head = r.head;
        inner.history = r.chain;
        inner.meta = meta;
        inner.tls = r.tls.tls;
        inner.approvals = r.tls.approvals;
        inner.imports = r.tls.imports;
        self.view.store(Arc::new(snap));
        Ok(true)
    }

    /// Settle a pending write by asking the anchor which head it holds.
    fn settle(&self, inner: &mut Inner) -> Result<(), KeystoreError> {
        let Some(p) = inner.pending.take() else {
            return Ok(());
        };
        let Some(anchor) = inner.anchor.clone() else {
            return Ok(());
        };
        match anchor.current() {
            Ok(Some(h)) if h == p.next => {
                tracing::info!(
                    seq = p.next.seq,
                    "an earlier admin write whose outcome was unknown was recorded by the \
                     key-release service: it is now in effect"
                );
                self.take_effect(inner, p.next, Arc::new(p.snap), p.effect)
            }
            Ok(h) => {
                rollback(inner, &p.prev)?;
                let held = h.as_ref().map_or(0, |h| h.seq);
                if h.as_ref() == Some(&p.prev) {
                    tracing::info!(
                        seq = p.next.seq,
                        "an earlier admin write whose outcome was unknown was not recorded by \
                         the key-release service: undone"
                    );
                    Ok(())
                } else {
                    Err(KeystoreError::AnchorRefused(format!(
                        "it holds record {held}, neither this store's head nor the pending write"
                    )))
                }
            }
            Err(e) => {
                inner.pending = Some(p);
                Err(KeystoreError::AnchorUnknown(format!(
                    "an earlier write is still unsettled: {e}"
                )))
            }
        }
    }

    /// Durably append `rec`, then publish `snap`, then compact if due.
    fn commit(
        &self,
        inner: &mut Inner,
        rec: Record,
        snap: Snapshot,
        effect: Effect,
    ) -> Result<(), KeystoreError> {
        self.commit_batch(inner, vec![rec], snap, effect)
    }

    /// Append `recs` durably (one write, one `fdatasync`), chained after the head; have the
    /// anchor record the new head; only then publish `snap` and apply `effect`, then compact if
    /// due. The lock was taken with [`Registry::lock_write`] (nothing pending).
    fn commit_batch(
        &self,
        inner: &mut Inner,
        recs: Vec<Record>,
        snap: Snapshot,
        effect: Effect,
    ) -> Result<(), KeystoreError> {
        let prev = inner.head.clone();
        let mut chain: ChainMac = prev
            .chain_mac
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::Seal)?;
        let batch = (recs.len() > 1).then_some(recs.len() as u64);
        let mut seq = prev.seq;
        let mut signed = Vec::with_capacity(recs.len());
        for (i, rec) in recs.into_iter().enumerate() {
            seq += 1;
            let b = if i == 0 { batch } else { None };
            chain = inner.sealer.chain_mac(seq, b.unwrap_or(1), &chain, &rec)?;
            signed.push(SignedRecord {
                seq,
                mac: hex::encode(chain),
                batch: b,
                rec,
            });
        }
        let next = StoreHead {
            store_id: prev.store_id.clone(),
            seq,
            chain_mac: chain.to_vec(),
            mk_version: inner.sealer.mk_version(),
        };
        if let (Some(held), Some(anchor)) = (inner.reseal_unrecorded.clone(), inner.anchor.clone())
        {
            // The KRS must hold the re-sealed head before a write can extend it.
            if !(inner.shared && anchor.current().ok().flatten().as_ref() != Some(&held)) {
                record_reseal(anchor.as_ref(), &held, &prev)?;
            }
            inner.reseal_unrecorded = None;
        }
        if inner.shared {
            return self.commit_shared(inner, &signed, prev, next, snap, effect);
        }
        // Durable, not yet published.
        if let Err(e) = inner.backend.append_batch(&signed) {
            // A file backend may keep some of the records it failed to make durable: cut them
            // off (now if possible, else before the next write) so the next write's `seq` is
            // free. Never on a shared store: there a failed append is a lost compare-and-set
            // (another member's records lie after our head) or a transaction that rolled back,
            // and cutting would delete the other members' writes.
            if !inner.shared {
                inner.unsettled_tail = true;
                let _ = settle_tail(inner);
            }
            return Err(e);
        }
        drop(signed);
        if let Some(anchor) = inner.anchor.clone() {
            match anchor.advance(Some(&prev), &next) {
                Ok(()) => {}
                Err(AnchorError::Refused(why)) => {
                    rollback(inner, &prev)?;
                    return Err(KeystoreError::AnchorRefused(why));
                }
                Err(AnchorError::Unreachable(why)) => match anchor.current() {
                    Ok(Some(h)) if h == next => {
                        tracing::info!(
                            seq = next.seq,
                            error = %why,
                            "the key-release service's answer was lost but it holds the new \
                             store head: the write took effect"
                        );
                    }
                    Ok(h) => {
                        rollback(inner, &prev)?;
                        return Err(KeystoreError::AnchorRefused(if h.as_ref() == Some(&prev) {
                            format!("{why}; it still holds the previous head")
                        } else {
                            format!("{why}; it holds an unexpected head")
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(
                            seq = next.seq,
                            "admin write appended but its outcome at the key-release service \
                             is unknown: not in effect; settled before the next write"
                        );
                        inner.pending = Some(Pending {
                            prev,
                            next,
                            snap,
                            effect,
                        });
                        return Err(KeystoreError::AnchorUnknown(format!("{why}; then {e}")));
                    }
                },
            }
        }
        self.take_effect(inner, next, Arc::new(snap), effect)
    }

    /// [`Registry::commit_batch`] on a shared store. The compare-and-set append is the commit
    /// point: once it succeeded the records are the fleet's (other members may apply them at
    /// once), so they are never undone. The KRS is then told the new head, rolling forward from
    /// an older head it holds if that head is on the history this member verified (another
    /// member's write whose head it had not recorded yet); never from one that is not, so a
    /// database showing members different histories is caught at the KRS. When the KRS already
    /// holds a later head (another member wrote on top of this write and recorded its head
    /// first), the write is anchored if that head follows it on the store's history, which a
    /// re-read of the newer records shows.
    fn commit_shared(
        &self,
        inner: &mut Inner,
        signed: &[SignedRecord],
        prev: StoreHead,
        next: StoreHead,
        snap: Snapshot,
        effect: Effect,
    ) -> Result<(), KeystoreError> {
        match inner.backend.append_batch(signed) {
            Ok(()) => {}
            Err(e @ KeystoreError::Conflict { .. }) => {
                // Catch up so that a retry is computed from the new state.
                if let Err(r) = self.refresh_locked(inner) {
                    tracing::warn!(error = %r, "re-reading the shared key store after a conflict failed");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        for r in signed {
            if let Some(mac) = decode_mac(&r.mac) {
                inner.history.push(mac);
            }
        }
        // `Err((why, Some(h)))`: the KRS already holds `h`, a later head than this write's,
        // recorded by another member that wrote on top of it before this one told the KRS.
        // Members writing together race at the KRS too: the head it holds may move between
        // asking and advancing, so an advance from an older head on this member's history is
        // tried again from the head it then holds, a few times.
        let anchored: Result<(), (String, Option<StoreHead>)> = match inner.anchor.clone() {
            None => Ok(()),
            Some(anchor) => {
                let mut from = prev.clone();
                let mut tries = 0;
                loop {
                    let Err(refused) = anchor.advance(Some(&from), &next) else {
                        break Ok(());
                    };
                    tries += 1;
                    match anchor.current() {
                        Ok(Some(h)) if h == next => break Ok(()),
                        // (The head it holds now may be the one advanced from: it was
                        // recorded, late, after the refusal.)
                        Ok(Some(h))
                            if h.seq < next.seq
                                && tries < ANCHOR_TRIES
                                && inner.history.contains(&h) =>
                        {
                            from = h;
                        }
                        Ok(Some(h)) if h.seq > next.seq => {
                            break Err((refused.to_string(), Some(h)))
                        }
                        Ok(Some(h)) if h.seq < next.seq && inner.history.contains(&h) => {
                            break Err((
                                format!(
                                    "{refused}; it holds record {} (from record {}, try \
                                     {tries})",
                                    h.seq, from.seq
                                ),
                                None,
                            ))
                        }
                        Ok(Some(h)) => {
                            break Err((
                                format!(
                                    "{refused}; it holds record {}, which is not on this \
                                     member's history",
                                    h.seq
                                ),
                                None,
                            ))
                        }
                        Ok(None) => break Err((format!("{refused}; it holds no head"), None)),
                        Err(e) => break Err((format!("{refused}; then {e}"), None)),
                    }
                }
            }
        };
        self.take_effect(inner, next, Arc::new(snap), effect)?;
        match anchored {
            Ok(()) => Ok(()),
            // The later head covers this write when it follows it on the store's history: read
            // the records after this write (verified, as every re-read) and look for it there.
            Err((first, Some(h))) => match self.refresh_locked(inner) {
                Ok(_) if inner.history.contains(&h) => Ok(()),
                Ok(_) => Err(KeystoreError::NotAnchored(format!(
                    "{first}; it holds record {}, which is not on this member's history",
                    h.seq
                ))),
                Err(e) => Err(KeystoreError::NotAnchored(format!(
                    "{first}; it holds record {}, and re-reading the store to place it failed: \
                     {e}",
                    h.seq
                ))),
            },
            Err((why, None)) => Err(KeystoreError::NotAnchored(why)),
        }
    }

    /// The write that ends in `next` is acknowledged: seal the head locally, publish, compact.
    fn take_effect(
        &self,
        inner: &mut Inner,
        next: StoreHead,
        snap: Arc<Snapshot>,
        effect: Effect,
    ) -> Result<(), KeystoreError> {
        let sealed = load::seal_head(&inner.sealer, &next)?;
        if let Err(e) = inner.backend.store_head(&sealed) {
            if inner.anchor.is_none() && !inner.shared {
                // Without an anchor the sealed head is what makes the write count: undo it. The
                // new head may be on disk already (the rename done, the directory fsync failed):
                // the previous head is put back before the records it does not name are cut.
                inner.unsettled_tail = true;
                let _ = settle_tail(inner);
                return Err(e);
            }
            // The KRS holds the new head (the floor at the next boot); the local copy catches
            // up with the next write.
            tracing::warn!(
                error = %e,
                "could not update the sealed key store head (the key-release service holds \
                 it); rewritten with the next write"
            );
        }
        inner.head = next;
        effect(
            &mut inner.meta,
            &mut inner.tls,
            &mut inner.approvals,
            &mut inner.imports,
        );
        self.view.store(Arc::clone(&snap));
        if !inner.shared
            && inner.backend.record_count()
                > COMPACT_FLOOR
                    .max(2 * live_count(&snap, &inner.tls, &inner.approvals, &inner.imports))
        {
            if let Err(e) = compact(inner, &snap) {
                // The change is already durable; only the log stays longer than needed.
                tracing::warn!(error = %e, "key store compaction failed; retried on the next change");
            }
        }
        Ok(())
    }

    /// Rewrite the store with only the live records (also done automatically when superseded
    /// records outnumber live ones).
    pub fn compact(&self) -> Result<(), KeystoreError> {
        let mut inner = self.lock_write()?;
        if inner.shared {
            // Members may be reading any record: a shared store keeps its whole history.
            return Ok(());
        }
        let snap = self.view.load_full();
        compact(&mut inner, &snap)
    }

    /// Create a key store with no keys and no credentials.
    pub fn create_store(&self, spec: NewStore) -> Result<StoreInfo, KeystoreError> {
        validate::store_name(&spec.name)?;
        validate::uri_prefix(&spec.uri_prefix)?;
        validate::region(&spec.region)?;
        for s in &spec.extra_services {
            validate::service(s)?;
        }
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        if snap.stores.contains_key(&spec.name) {
            return Err(KeystoreError::DuplicateStore(spec.name));
        }
        if let Some(other) = snap.store_by_prefix(&spec.uri_prefix) {
            return Err(KeystoreError::DuplicatePrefix {
                prefix: spec.uri_prefix,
                store: other.name.clone(),
            });
        }
        let record = StoreRecord {
            name: spec.name.clone(),
            uri_prefix: spec.uri_prefix,
            region: spec.region,
            extra_services: spec.extra_services,
            created: now_unix(),
        };
        let view = StoreView {
            name: record.name.clone(),
            uri_prefix: record.uri_prefix.clone(),
            region: record.region.clone(),
            services: services_of(&record),
            credentials: Vec::new(),
            keys: HashMap::new(),
            destroyed: HashMap::new(),
        };
        let info = StoreInfo {
            name: view.name.clone(),
            uri_prefix: view.uri_prefix.clone(),
            region: view.region.clone(),
            services: view.services.clone(),
            keys: 0,
            access_key_ids: Vec::new(),
            created: record.created,
        };
        let mut stores = snap.stores.clone();
        stores.insert(record.name.clone(), Arc::new(view));
        let created = record.created;
        let effect: Effect = Box::new(move |meta, _, _, _| {
            meta.insert(
                spec.name,
                StoreMeta {
                    created,
                    ..StoreMeta::default()
                },
            );
        });
        self.commit(
            &mut inner,
            Record::Store(record),
            Snapshot { stores },
            effect,
        )?;
        Ok(info)
    }

    /// Every key store, sorted by name.
    pub fn list_stores(&self) -> Vec<StoreInfo> {
        let inner = self.lock();
        let snap = self.view.load_full();
        let mut v: Vec<StoreInfo> = snap
            .stores
            .values()
            .map(|s| {
                let mut ids: Vec<String> = s
                    .credentials
                    .iter()
                    .map(|c| c.access_key_id.clone())
                    .collect();
                ids.sort();
                StoreInfo {
                    name: s.name.clone(),
                    uri_prefix: s.uri_prefix.clone(),
                    region: s.region.clone(),
                    services: s.services.clone(),
                    keys: s.keys.len(),
                    access_key_ids: ids,
                    created: inner.meta.get(&s.name).map(|m| m.created).unwrap_or(0),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Remove a key store with its credentials. If it still holds keys, refuses with
    /// [`KeystoreError::StoreNotEmpty`] unless `force` (the keys are then destroyed).
    pub fn remove_store(&self, name: &str, force: bool) -> Result<(), KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, Some(name))?;
        if !sv.keys.is_empty() && !force {
            return Err(KeystoreError::StoreNotEmpty {
                store: name.to_string(),
                keys: sv.keys.len(),
            });
        }
        let mut stores = snap.stores.clone();
        stores.remove(name);
        let rec = Record::RemoveStore {
            name: name.to_string(),
        };
        let gone = name.to_string();
        let effect: Effect = Box::new(move |meta, _, _, _| {
            meta.remove(&gone);
        });
        self.commit(&mut inner, rec, Snapshot { stores }, effect)
    }

    /// Create a key with a fresh random KEK, version 1, enabled, and **no grants**.
    /// `store` may be `None` when exactly one store exists.
    pub fn create_key(
        &self,
        store: Option<&str>,
        id: &str,
        usage: KeyUsage,
    ) -> Result<KeyInfo, KeystoreError> {
        validate::key_id(id)?;
        self.add_key(store, id, usage, Key32::random()?)
    }

    /// Create many keys at once (fresh random KEKs, version 1, enabled, no grants), with a
    /// single write and `fdatasync`: for provisioning and benchmarks. All ids are checked first;
    /// on error nothing is created. Durable together when it returns.
    pub fn create_keys(
        &self,
        store: Option<&str>,
        ids: &[&str],
        usage: KeyUsage,
    ) -> Result<Vec<KeyInfo>, KeystoreError> {
        for id in ids {
            validate::key_id(id)?;
        }
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        let mut keys = sv.keys.clone();
        let created = now_unix();
        let mut records = Vec::with_capacity(ids.len());
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            if keys.contains_key(*id) || sv.destroyed.contains_key(*id) {
                return Err(KeystoreError::DuplicateKey {
                    store: sv.name.clone(),
                    id: id.to_string(),
                });
            }
            let (record, live) = new_key(
                &inner.sealer,
                &sv.name,
                id,
                usage,
                Key32::random()?,
                created,
            )?;
            records.push(Record::Key(record));
            infos.push(key_info(&sv.name, &live, created));
            keys.insert(id.to_string(), live);
        }
        let mut stores = snap.stores.clone();
        stores.insert(sv.name.clone(), Arc::new(store_view(&sv, Some(keys), None)));
        let name = sv.name.clone();
        let new: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let effect: Effect = Box::new(move |meta, _, _, _| {
            if let Some(m) = meta.get_mut(&name) {
                m.keys.extend(new.into_iter().map(|id| (id, created)));
            }
        });
        self.commit_batch(&mut inner, records, Snapshot { stores }, effect)?;
        Ok(infos)
    }

    /// Create a key from 32 raw bytes (migration of an existing key); otherwise as
    /// [`Registry::create_key`].
    pub fn import_key(
        &self,
        store: Option<&str>,
        id: &str,
        usage: KeyUsage,
        bytes: Zeroizing<[u8; 32]>,
    ) -> Result<KeyInfo, KeystoreError> {
        validate::key_id(id)?;
        let kek = Key32::from_bytes(&bytes)?;
        drop(bytes);
        self.add_key(store, id, usage, kek)
    }

    fn add_key(
        &self,
        store: Option<&str>,
        id: &str,
        usage: KeyUsage,
        kek: Key32,
    ) -> Result<KeyInfo, KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        if sv.destroyed.contains_key(id) {
            return Err(KeystoreError::invalid(
                "key id",
                format!("{id} was destroyed; a destroyed key's id is never reused"),
            ));
        }
        if sv.keys.contains_key(id) {
            return Err(KeystoreError::DuplicateKey {
                store: sv.name.clone(),
                id: id.to_string(),
            });
        }
        let created = now_unix();
        let (record, live) = new_key(&inner.sealer, &sv.name, id, usage, kek, created)?;
        let info = key_info(&sv.name, &live, created);
        let mut keys = sv.keys.clone();
        keys.insert(id.to_string(), live);
        let mut stores = snap.stores.clone();
        stores.insert(sv.name.clone(), Arc::new(store_view(&sv, Some(keys), None)));
        let (name, key) = (sv.name.clone(), id.to_string());
        let effect: Effect = Box::new(move |meta, _, _, _| {
            if let Some(m) = meta.get_mut(&name) {
                m.keys.insert(key, created);
            }
        });
        self.commit(&mut inner, Record::Key(record), Snapshot { stores }, effect)?;
        Ok(info)
    }

    /// Replace one key (same KEK, same version) with `change` applied to its metadata.
    fn update_key(
        &self,
        store: Option<&str>,
        id: &str,
        change: impl FnOnce(&mut KeyStatus, &mut Vec<Grant>) -> Result<(), KeystoreError>,
    ) -> Result<KeyInfo, KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let (sv, old) = Self::find_key(&snap, store, id)?;
        let mut status = old.status;
        let mut grants = old.grants.clone();
        change(&mut status, &mut grants)?;
        let created = key_created(&inner, &sv.name, id);
        let mut k = copy_key(&old)?;
        k.status = status;
        k.grants = grants;
        let live = Arc::new(k);
        let info = self.replace_key(&mut inner, &snap, &sv, live, created)?;
        Ok(info)
    }

    /// Write `live` as the new state of its key in `sv` (one sealed record, every version
    /// re-sealed) and publish it: the common end of every change to one key.
    fn replace_key(
        &self,
        inner: &mut Inner,
        snap: &Snapshot,
        sv: &StoreView,
        live: Arc<LiveKey>,
        created: u64,
    ) -> Result<KeyInfo, KeystoreError> {
        let record = key_record(&inner.sealer, &sv.name, &live, created)?;
        let info = key_info(&sv.name, &live, created);
        let mut keys = sv.keys.clone();
        keys.insert(live.id.clone(), live);
        let mut stores = snap.stores.clone();
        stores.insert(sv.name.clone(), Arc::new(store_view(sv, Some(keys), None)));
        self.commit(inner, Record::Key(record), Snapshot { stores }, no_effect())?;
        Ok(info)
    }

    /// The keys of a store, sorted by id. Never key bytes.
    pub fn list_keys(&self, store: Option<&str>) -> Result<Vec<KeyInfo>, KeystoreError> {
        let inner = self.lock();
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        let meta = inner.meta.get(&sv.name);
        let mut v: Vec<KeyInfo> = sv
            .keys
            .values()
            .map(|k| {
                let created = meta.and_then(|m| m.keys.get(&k.id).copied()).unwrap_or(0);
                key_info(&sv.name, k, created)
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// One key's description.
    pub fn key_info(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        let inner = self.lock();
        let snap = self.view.load_full();
        let (sv, k) = Self::find_key(&snap, store, id)?;
        let created = key_created(&inner, &sv.name, id);
        Ok(key_info(&sv.name, &k, created))
    }

    /// Enable a key.
    pub fn enable_key(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        let snap = self.view.load_full();
        let (_, k) = Self::find_key(&snap, store, id)?;
        if let Some(at) = k.destroy_at {
            return Err(KeystoreError::invalid(
                "key",
                format!(
                    "is scheduled for destruction at {}: `keys cancel-destroy` first",
                    unix_rfc3339(at)
                ),
            ));
        }
        self.set_status(store, id, KeyStatus::Enabled)
    }

    /// Rotate a key: a new random KEK becomes the current version (version + 1) and encrypts
    /// from now on; every earlier version is kept and still decrypts what it encrypted, so
    /// ciphertexts made before keep working (KMS `ReEncrypt` under the same key moves data to
    /// the current version). Status, usage and grants are unchanged. On a fleet the new
    /// version is live on every member within the poll interval.
    pub fn rotate_key(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        self.rotate_key_if(store, id, |_| true)
            .map(|(info, _)| info)
    }

    /// Rotate `id` only if `due` says so for its current state, judged under the write lock
    /// after catching up with the fleet, so members racing on a schedule rotate it once: the
    /// loser sees the winner's new version, no longer due. Returns whether it rotated.
    pub fn rotate_key_if(
        &self,
        store: Option<&str>,
        id: &str,
        due: impl FnOnce(&LiveKey) -> bool,
    ) -> Result<(KeyInfo, bool), KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let (sv, old) = Self::find_key(&snap, store, id)?;
        let created = key_created(&inner, &sv.name, id);
        if !due(&old) {
            return Ok((key_info(&sv.name, &old, created), false));
        }
        let version = old.version.checked_add(1).ok_or_else(|| {
            KeystoreError::invalid("key version", "this key has reached the last version")
        })?;
        let mut older = Vec::with_capacity(old.older.len() + 1);
        older.push(OlderKek {
            version: old.version,
            created: old.version_created,
            kek: old.kek.try_clone()?,
        });
        older.extend(older_of(&old)?);
        let live = Arc::new(LiveKey {
            id: id.to_string(),
            version,
            usage: old.usage,
            status: old.status,
            grants: old.grants.clone(),
            kek: Key32::random()?,
            version_created: now_unix(),
            older,
            rotate_every_secs: old.rotate_every_secs,
            destroy_at: old.destroy_at,
            status_before_destroy: old.status_before_destroy,
        });
        let info = self.replace_key(&mut inner, &snap, &sv, live, created)?;
        Ok((info, true))
    }

    /// Set (`Some`, at least [`MIN_ROTATION_SECS`]) or clear (`None`) a key's rotation
    /// schedule. The appliance rotates a key when its current version is that old.
    pub fn set_rotation(
        &self,
        store: Option<&str>,
        id: &str,
        every_secs: Option<u64>,
    ) -> Result<KeyInfo, KeystoreError> {
        if let Some(s) = every_secs {
            if s < MIN_ROTATION_SECS {
                return Err(KeystoreError::invalid(
                    "rotation period",
                    format!("{s} s is shorter than a day ({MIN_ROTATION_SECS} s)"),
                ));
            }
        }
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let (sv, old) = Self::find_key(&snap, store, id)?;
        let created = key_created(&inner, &sv.name, id);
        let mut k = copy_key(&old)?;
        k.rotate_every_secs = every_secs;
        let live = Arc::new(k);
        let info = self.replace_key(&mut inner, &snap, &sv, live, created)?;
        Ok(info)
    }

    /// Keys whose schedule says they are due at `now` (Unix seconds): (store, id, version).
    pub fn rotations_due(&self, now: u64) -> Vec<(String, String, u32)> {
        let snap = self.view.load_full();
        let mut due = Vec::new();
        for (name, sv) in &snap.stores {
            for k in sv.keys.values() {
                if let Some(every) = k.rotate_every_secs {
                    if now >= k.version_created.saturating_add(every) {
                        due.push((name.clone(), k.id.clone(), k.version));
                    }
                }
            }
        }
        due
    }

    /// Schedule `id` for destruction in `days` (7-30, as KMS does for its own keys): it is
    /// disabled at once (Encrypt and Decrypt refused with `InvalidStateException`, metadata
    /// `DISABLED`) until [`Registry::cancel_destroy`] or the date, when every version's KEK is
    /// erased ([`Registry::destroy_due`]).
    pub fn schedule_destroy(
        &self,
        store: Option<&str>,
        id: &str,
        days: u32,
        now: u64,
    ) -> Result<KeyInfo, KeystoreError> {
        if !(MIN_DESTROY_DAYS..=MAX_DESTROY_DAYS).contains(&days) {
            return Err(KeystoreError::invalid(
                "days",
                format!("{days}: must be {MIN_DESTROY_DAYS} to {MAX_DESTROY_DAYS}"),
            ));
        }
        self.update_key_full(store, id, |k| {
            if let Some(at) = k.destroy_at {
                return Err(KeystoreError::invalid(
                    "key",
                    format!(
                        "already scheduled for destruction at {}; cancel-destroy first",
                        unix_rfc3339(at)
                    ),
                ));
            }
            k.status_before_destroy = Some(k.status);
            k.status = KeyStatus::Disabled;
            k.destroy_at = Some(now.saturating_add(u64::from(days) * 86_400));
            Ok(())
        })
    }

    /// Cancel a scheduled destruction: the key gets back the status it had.
    pub fn cancel_destroy(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        self.update_key_full(store, id, |k| {
            if k.destroy_at.is_none() {
                return Err(KeystoreError::invalid(
                    "key",
                    "is not scheduled for destruction",
                ));
            }
            k.status = k.status_before_destroy.take().unwrap_or(KeyStatus::Enabled);
            k.destroy_at = None;
            Ok(())
        })
    }

    /// Keys whose destruction date has come at `now`: (store, id).
    pub fn destructions_due(&self, now: u64) -> Vec<(String, String)> {
        let snap = self.view.load_full();
        let mut due = Vec::new();
        for (name, sv) in &snap.stores {
            for k in sv.keys.values() {
                if k.destroy_at.is_some_and(|at| now >= at) {
                    due.push((name.clone(), k.id.clone()));
                }
            }
        }
        due
    }

    /// Destroy `id` if its date has come (judged under the write lock after catching up, so a
    /// fleet destroys it once): a tombstone record replaces it, every version's KEK leaves
    /// memory (zeroized when the last request holding it is done), and the store is compacted
    /// so no sealed copy of any of its KEKs is left in the log. Returns whether it destroyed.
    pub fn destroy_due(
        &self,
        store: Option<&str>,
        id: &str,
        now: u64,
    ) -> Result<bool, KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let (sv, old) = Self::find_key(&snap, store, id)?;
        if old.destroy_at.is_none_or(|at| now < at) {
            return Ok(false);
        }
        let mut keys = sv.keys.clone();
        keys.remove(id);
        let mut view = store_view(&sv, Some(keys), None);
        view.destroyed.insert(id.to_string(), now);
        let mut stores = snap.stores.clone();
        stores.insert(sv.name.clone(), Arc::new(view));
        drop(old);
        let (name, key) = (sv.name.clone(), id.to_string());
        let effect: Effect = Box::new(move |meta, _, _, _| {
            if let Some(m) = meta.get_mut(&name) {
                m.keys.remove(&key);
            }
        });
        self.commit(
            &mut inner,
            Record::KeyDestroyed(DestroyedKeyRecord {
                store: sv.name.clone(),
                id: id.to_string(),
                destroyed: now,
            }),
            Snapshot { stores },
            effect,
        )?;
        // Crypto-shredding: rewrite the log without the records that held its sealed KEKs.
        let snap = self.view.load_full();
        if let Err(e) = compact(&mut inner, &snap) {
            tracing::error!(
                store = %sv.name,
                key = %id,
                "the key is destroyed in memory and marked destroyed, but the log still holds \
                 its sealed KEKs: compaction failed ({e}); retried at the next destruction or \
                 `compact`"
            );
        }
        Ok(true)
    }

    /// [`Registry::update_key`] with the whole key to change.
    fn update_key_full(
        &self,
        store: Option<&str>,
        id: &str,
        change: impl FnOnce(&mut KeyEdit) -> Result<(), KeystoreError>,
    ) -> Result<KeyInfo, KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let (sv, old) = Self::find_key(&snap, store, id)?;
        let mut e = KeyEdit {
            status: old.status,
            destroy_at: old.destroy_at,
            status_before_destroy: old.status_before_destroy,
        };
        change(&mut e)?;
        let created = key_created(&inner, &sv.name, id);
        let mut k = copy_key(&old)?;
        k.status = e.status;
        k.destroy_at = e.destroy_at;
        k.status_before_destroy = e.status_before_destroy;
        let live = Arc::new(k);
        let info = self.replace_key(&mut inner, &snap, &sv, live, created)?;
        Ok(info)
    }

    /// Disable a key (metadata says `DISABLED`; encrypt and decrypt are refused).
    pub fn disable_key(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        self.set_status(store, id, KeyStatus::Disabled)
    }

    /// Set a key's status.
    pub fn set_status(
        &self,
        store: Option<&str>,
        id: &str,
        status: KeyStatus,
    ) -> Result<KeyInfo, KeystoreError> {
        self.update_key(store, id, |s, _| {
            *s = status;
            Ok(())
        })
    }

    /// Add a grant. A grant with the same principal and narrowing gets the new ops added.
    pub fn grant(
        &self,
        store: Option<&str>,
        id: &str,
        grant: Grant,
    ) -> Result<KeyInfo, KeystoreError> {
        validate_grant(&grant)?;
        self.update_key(store, id, |_, grants| {
            let same = grants.iter_mut().find(|g| {
                g.principal == grant.principal
                    && g.via_service == grant.via_service
                    && g.source_vpc == grant.source_vpc
                    && g.source_vpce == grant.source_vpce
            });
            match same {
                Some(g) => {
                    g.ops.encrypt |= grant.ops.encrypt;
                    g.ops.decrypt |= grant.ops.decrypt;
                    g.ops.metadata |= grant.ops.metadata;
                }
                None => grants.push(grant),
            }
            Ok(())
        })
    }

    /// Remove or narrow grants (see [`Revoke`]); [`KeystoreError::NoMatchingGrant`] if none
    /// matched.
    pub fn revoke(
        &self,
        store: Option<&str>,
        id: &str,
        revoke: &Revoke,
    ) -> Result<KeyInfo, KeystoreError> {
        fn narrowed(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        self.update_key(store, id, |_, grants| {
            let mut hit = 0usize;
            grants.retain_mut(|g| {
                let matches = g.principal == revoke.principal
                    && narrowed(&revoke.via_service, &g.via_service)
                    && narrowed(&revoke.source_vpc, &g.source_vpc)
                    && narrowed(&revoke.source_vpce, &g.source_vpce);
                if !matches {
                    return true;
                }
                hit += 1;
                match revoke.ops {
                    None => false,
                    Some(ops) => {
                        g.ops.encrypt &= !ops.encrypt;
                        g.ops.decrypt &= !ops.decrypt;
                        g.ops.metadata &= !ops.metadata;
                        g.ops.encrypt || g.ops.decrypt || g.ops.metadata
                    }
                }
            });
            if hit == 0 {
                return Err(KeystoreError::NoMatchingGrant {
                    id: id.to_string(),
                    principal: revoke.principal.clone(),
                });
            }
            Ok(())
        })
    }

    /// Add a SigV4 credential to a store (live at once). The access key id must be unique
    /// across all stores.
    pub fn add_credential(
        &self,
        store: Option<&str>,
        access_key_id: &str,
        secret: SecretString,
    ) -> Result<(), KeystoreError> {
        validate::access_key_id(access_key_id)?;
        validate::secret_access_key(secret.expose_secret())?;
        self.insert_credential(store, access_key_id, secret)
    }

    /// Add a credential from the configuration file whose secret AWS KMS itself would refuse
    /// (e.g. the earlier docs' 40-character sample): requests signed with it are served, but no
    /// KMS external key store can be set up with it. The caller warns; the secret must still
    /// pass [`validate::secret_access_key_usable`].
    pub fn add_credential_kms_incompatible(
        &self,
        store: Option<&str>,
        access_key_id: &str,
        secret: SecretString,
    ) -> Result<(), KeystoreError> {
        validate::access_key_id(access_key_id)?;
        validate::secret_access_key_usable(secret.expose_secret())?;
        self.insert_credential(store, access_key_id, secret)
    }

    fn insert_credential(
        &self,
        store: Option<&str>,
        access_key_id: &str,
        secret: SecretString,
    ) -> Result<(), KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        if snap.stores.values().any(|s| {
            s.credentials
                .iter()
                .any(|c| c.access_key_id == access_key_id)
        }) {
            return Err(KeystoreError::DuplicateCredential(
                access_key_id.to_string(),
            ));
        }
        let created = now_unix();
        let record = CredentialRecord {
            store: sv.name.clone(),
            access_key_id: access_key_id.to_string(),
            secret: inner.sealer.seal(
                secret.expose_secret().as_bytes(),
                &cred_aad(&sv.name, access_key_id),
            )?,
            created,
        };
        let mut creds = sv.credentials.clone();
        creds.push(Arc::new(Credential {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret,
        }));
        let mut stores = snap.stores.clone();
        stores.insert(
            sv.name.clone(),
            Arc::new(store_view(&sv, None, Some(creds))),
        );
        let (name, akid) = (sv.name.clone(), access_key_id.to_string());
        let effect: Effect = Box::new(move |meta, _, _, _| {
            if let Some(m) = meta.get_mut(&name) {
                m.creds.insert(akid, created);
            }
        });
        self.commit(
            &mut inner,
            Record::Credential(record),
            Snapshot { stores },
            effect,
        )
    }

    /// Remove a credential (requests signed with it fail at once).
    pub fn remove_credential(
        &self,
        store: Option<&str>,
        access_key_id: &str,
    ) -> Result<(), KeystoreError> {
        let mut inner = self.lock_write()?;
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        if !sv
            .credentials
            .iter()
            .any(|c| c.access_key_id == access_key_id)
        {
            return Err(KeystoreError::UnknownCredential {
                store: sv.name.clone(),
                access_key_id: access_key_id.to_string(),
            });
        }
        let creds: Vec<Arc<Credential>> = sv
            .credentials
            .iter()
            .filter(|c| c.access_key_id != access_key_id)
            .cloned()
            .collect();
        let mut stores = snap.stores.clone();
        stores.insert(
            sv.name.clone(),
            Arc::new(store_view(&sv, None, Some(creds))),
        );
        let rec = Record::RemoveCredential {
            store: sv.name.clone(),
            access_key_id: access_key_id.to_string(),
        };
        let (name, akid) = (sv.name.clone(), access_key_id.to_string());
        let effect: Effect = Box::new(move |meta, _, _, _| {
            if let Some(m) = meta.get_mut(&name) {
                m.creds.remove(&akid);
            }
        });
        self.commit(&mut inner, rec, Snapshot { stores }, effect)
    }

    /// A store's credentials: ids and ages only.
    pub fn list_credentials(
        &self,
        store: Option<&str>,
    ) -> Result<Vec<CredentialInfo>, KeystoreError> {
        let inner = self.lock();
        let snap = self.view.load_full();
        let sv = Self::resolve(&snap, store)?;
        let meta = inner.meta.get(&sv.name);
        let mut v: Vec<CredentialInfo> = sv
            .credentials
            .iter()
            .map(|c| CredentialInfo {
                access_key_id: c.access_key_id.clone(),
                created: meta
                    .and_then(|m| m.creds.get(&c.access_key_id).copied())
                    .unwrap_or(0),
            })
            .collect();
        v.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
        Ok(v)
    }

    /// The appliance TLS identity (private key and installed chain), if one was created.
    pub fn tls_material(&self) -> Option<TlsMaterial> {
        self.lock().tls.clone()
    }

    /// Store a new appliance TLS private key (PKCS#8 DER), sealed under the master key,
    /// replacing any previous identity and the chain installed for it. Durable when it returns.
    pub fn set_tls_key(&self, pkcs8_der: Zeroizing<Vec<u8>>) -> Result<(), KeystoreError> {
        if pkcs8_der.is_empty() || pkcs8_der.len() > MAX_TLS_KEY_DER {
            return Err(KeystoreError::invalid(
                "TLS key",
                format!("a PKCS#8 key of 1-{MAX_TLS_KEY_DER} bytes is needed"),
            ));
        }
        let mut inner = self.lock_write()?;
        let t = TlsMaterial {
            pkcs8_der,
            chain_pem: None,
            created: now_unix(),
            chain_installed: None,
            pending_pkcs8_der: None,
            pending_created: None,
        };
        self.commit_tls(&mut inner, t)
    }

    /// Store a new TLS private key (PKCS#8 DER), sealed, as the *pending* key next to the
    /// current one (which, with its chain, stays the one served); a previous pending key is
    /// replaced. Durable when it returns.
    pub fn set_tls_pending_key(&self, pkcs8_der: Zeroizing<Vec<u8>>) -> Result<(), KeystoreError> {
        if pkcs8_der.is_empty() || pkcs8_der.len() > MAX_TLS_KEY_DER {
            return Err(KeystoreError::invalid(
                "TLS key",
                format!("a PKCS#8 key of 1-{MAX_TLS_KEY_DER} bytes is needed"),
            ));
        }
        let mut inner = self.lock_write()?;
        let Some(current) = inner.tls.as_ref() else {
            return Err(KeystoreError::invalid(
                "TLS key",
                "there is no appliance TLS key to rotate",
            ));
        };
        let t = TlsMaterial {
            pending_pkcs8_der: Some(pkcs8_der),
            pending_created: Some(now_unix()),
            ..current.clone()
        };
        self.commit_tls(&mut inner, t)
    }

    /// Make the pending key the current one with `chain_pem` (PEM, leaf first) installed for
    /// it; the previous key is dropped. The caller has checked that the chain belongs to the
    /// pending key. Durable when it returns.
    pub fn promote_tls_pending(&self, chain_pem: &str) -> Result<(), KeystoreError> {
        if chain_pem.is_empty() || chain_pem.len() > MAX_TLS_CHAIN_PEM {
            return Err(KeystoreError::invalid(
                "certificate chain",
                format!("1-{MAX_TLS_CHAIN_PEM} bytes of PEM are needed"),
            ));
        }
        let mut inner = self.lock_write()?;
        let Some((key, created)) = inner
            .tls
            .as_ref()
            .and_then(|t| Some((t.pending_pkcs8_der.clone()?, t.pending_created)))
        else {
            return Err(KeystoreError::invalid(
                "certificate chain",
                "there is no pending TLS key (tls csr --new-key) to install it for",
            ));
        };
        let now = now_unix();
        let t = TlsMaterial {
            pkcs8_der: key,
            chain_pem: Some(chain_pem.to_string()),
            created: created.unwrap_or(now),
            chain_installed: Some(now),
            pending_pkcs8_der: None,
            pending_created: None,
        };
        self.commit_tls(&mut inner, t)
    }

    /// Install the certificate chain (PEM, leaf first) for the current TLS key, replacing the
    /// previous chain. The caller has checked that it belongs to the key; this stores it in the
    /// authenticated log. Durable when it returns.
    pub fn install_tls_chain(&self, chain_pem: &str) -> Result<(), KeystoreError> {
        if chain_pem.is_empty() || chain_pem.len() > MAX_TLS_CHAIN_PEM {
            return Err(KeystoreError::invalid(
                "certificate chain",
                format!("1-{MAX_TLS_CHAIN_PEM} bytes of PEM are needed"),
            ));
        }
        let mut inner = self.lock_write()?;
        let Some(current) = inner.tls.as_ref() else {
            return Err(KeystoreError::invalid(
                "certificate chain",
                "there is no appliance TLS key to install it for",
            ));
        };
        let t = TlsMaterial {
            pkcs8_der: current.pkcs8_der.clone(),
            chain_pem: Some(chain_pem.to_string()),
            created: current.created,
            chain_installed: Some(now_unix()),
            pending_pkcs8_der: current.pending_pkcs8_der.clone(),
            pending_created: current.pending_created,
        };
        self.commit_tls(&mut inner, t)
    }

    /// Every approval request, oldest first (on a shared store after applying what the other
    /// members wrote).
    pub fn approvals(&self) -> Result<Vec<ApprovalRecord>, KeystoreError> {
        let mut inner = self.lock();
        if inner.shared {
            self.refresh_locked(&mut inner)?;
        }
        let mut v: Vec<ApprovalRecord> = inner.approvals.values().cloned().collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Create or change the approval request `id`: `change` gets the request as it stands now
    /// (under the writer lock, on a shared store after applying the other members' writes) and
    /// returns the new record or why not; the new record is durable (and, on a fleet, every
    /// member's) when this returns. Two members changing one request at once: one wins, the
    /// other gets [`KeystoreError::Conflict`] and, tried again, sees the winner's record.
    pub fn update_approval<E: From<KeystoreError>>(
        &self,
        id: &str,
        change: impl FnOnce(Option<&ApprovalRecord>) -> Result<ApprovalRecord, E>,
    ) -> Result<ApprovalRecord, E> {
        let mut inner = self.lock_write()?;
        let new = change(inner.approvals.get(id))?;
        if new.id != id {
            return Err(KeystoreError::invalid("approval", "the id cannot change").into());
        }
        let len = serde_json::to_vec(&new).map_or(usize::MAX, |v| v.len());
        if len > MAX_APPROVAL_JSON {
            return Err(KeystoreError::invalid(
                "approval",
                format!("the request is larger than {MAX_APPROVAL_JSON} bytes"),
            )
            .into());
        }
        let snap = self.view.load_full();
        let same = Snapshot {
            stores: snap.stores.clone(),
        };
        let kept = new.clone();
        let effect: Effect = Box::new(move |_, _, approvals, _| {
            approvals.insert(kept.id.clone(), kept);
        });
        self.commit(&mut inner, Record::Approval(new.clone()), same, effect)?;
        Ok(new)
    }

    /// Wrapped-import keys outstanding at `now` (trusted time), on a shared store after
    /// applying what the other members wrote. Expired ones are dropped from memory first.
    pub fn import_keys_outstanding(&self, now: u64) -> Result<usize, KeystoreError> {
        let mut inner = self.lock();
        if inner.shared {
            self.refresh_locked(&mut inner)?;
        }
        inner.imports.retain(|_, k| k.valid_to > now);
        Ok(inner.imports.len())
    }

    /// Drop the expired wrapped-import keys (`valid_to <= now`, trusted time) from memory;
    /// the next compaction leaves them out of the log. Returns how many were dropped.
    pub fn prune_import_keys(&self, now: u64) -> usize {
        let mut inner = self.lock();
        let before = inner.imports.len();
        inner.imports.retain(|_, k| k.valid_to > now);
        before - inner.imports.len()
    }

    /// Store a wrapped-import token's wrapping key, sealed under the master key, unless `max`
    /// are outstanding at `now` already (then `Ok(false)` and nothing is written). Durable,
    /// and on a fleet every member's, when it returns `Ok(true)`.
    pub fn add_import_key(
        &self,
        k: ImportKeyMaterial,
        max: usize,
        now: u64,
    ) -> Result<bool, KeystoreError> {
        if !is_token_hash(&k.token_sha256) {
            return Err(KeystoreError::invalid(
                "import token hash",
                "64 lowercase hex digits are needed",
            ));
        }
        if k.pkcs8_der.is_empty() || k.pkcs8_der.len() > MAX_IMPORT_KEY_DER {
            return Err(KeystoreError::invalid(
                "import key",
                format!("a PKCS#8 key of 1-{MAX_IMPORT_KEY_DER} bytes is needed"),
            ));
        }
        if k.algorithm.is_empty() || k.algorithm.len() > 64 || k.key_spec.len() > 64 {
            return Err(KeystoreError::invalid(
                "import key",
                "algorithm and key spec names of 1-64 characters are needed",
            ));
        }
        let mut inner = self.lock_write()?;
        inner.imports.retain(|_, x| x.valid_to > now);
        if inner.imports.len() >= max {
            return Ok(false);
        }
        if inner.imports.contains_key(&k.token_sha256) {
            return Err(KeystoreError::invalid(
                "import token hash",
                "that token is outstanding already",
            ));
        }
        let rec = import_record(&inner.sealer, &k)?;
        let snap = self.view.load_full();
        let same = Snapshot {
            stores: snap.stores.clone(),
        };
        let effect: Effect = Box::new(move |_, _, _, imports| {
            imports.insert(k.token_sha256.clone(), k);
        });
        self.commit(&mut inner, rec, same, effect)?;
        Ok(true)
    }

    /// Use the wrapped-import key of the token hashing to `token_sha256`, once: `check` sees
    /// it as it stands (under the writer lock, on a shared store after applying the other
    /// members' writes; `None`: never issued, used already, or compacted away after expiry)
    /// and refuses or not; if not, a "used" record is appended (on a fleet a compare-and-set:
    /// of two members using one token at once, one wins, the other gets
    /// [`KeystoreError::Conflict`] and, tried again, finds the token gone) and the key is
    /// returned, dropped from the store's view. A refused expired key is dropped from memory.
    pub fn use_import_key<E: From<KeystoreError>>(
        &self,
        token_sha256: &str,
        now: u64,
        check: impl FnOnce(Option<&ImportKeyMaterial>) -> Result<(), E>,
    ) -> Result<ImportKeyMaterial, E> {
        let mut inner = self.lock_write()?;
        let found = inner.imports.get(token_sha256).cloned();
        if let Err(e) = check(found.as_ref()) {
            inner.imports.retain(|_, k| k.valid_to > now);
            return Err(e);
        }
        let Some(k) = found else {
            return Err(KeystoreError::invalid("import token", "no such token").into());
        };
        let rec = Record::ImportKeyUsed(ImportKeyUsedRecord {
            token_sha256: token_sha256.to_string(),
            used: now,
        });
        let snap = self.view.load_full();
        let same = Snapshot {
            stores: snap.stores.clone(),
        };
        let gone = token_sha256.to_string();
        let effect: Effect = Box::new(move |_, _, _, imports| {
            imports.remove(&gone);
        });
        self.commit(&mut inner, rec, same, effect)?;
        Ok(k)
    }

    fn commit_tls(&self, inner: &mut Inner, t: TlsMaterial) -> Result<(), KeystoreError> {
        let rec = tls_record(&inner.sealer, &t)?;
        let snap = self.view.load_full();
        // The snapshot is unchanged: republishing the same stores is harmless.
        let same = Snapshot {
            stores: snap.stores.clone(),
        };
        let effect: Effect = Box::new(move |_, tls, _, _| *tls = Some(t));
        self.commit(inner, rec, same, effect)
    }
}

/// Why replaying a record failed.
pub(super) enum ApplyError {
    Tampered(&'static str),
    Other(KeystoreError),
}

impl From<KeystoreError> for ApplyError {
    fn from(e: KeystoreError) -> Self {
        ApplyError::Other(e)
    }
}

/// Replay one verified record into the stores being built, unsealing secrets.
pub(super) fn apply(
    sealer: &Sealer,
    builds: &mut HashMap<String, StoreBuild>,
    side: &mut Sidecar,
    rec: Record,
) -> Result<(), ApplyError> {
    let tls = &mut side.tls;
    match rec {
        Record::Approval(a) => {
            if a.id.is_empty() || a.id.len() > 64 {
                return Err(ApplyError::Tampered(
                    "approval request with an impossible id",
                ));
            }
            side.approvals.insert(a.id.clone(), a);
        }
        Record::ImportKey(r) => {
            if !is_token_hash(&r.token_sha256) || r.algorithm.len() > 64 || r.key_spec.len() > 64 {
                return Err(ApplyError::Tampered(
                    "import key with an impossible token hash or names",
                ));
            }
            if side.imports.contains_key(&r.token_sha256) {
                return Err(ApplyError::Tampered("import token issued twice"));
            }
            let n = r
                .key
                .0
                .len()
                .checked_sub(1 + 12 + 16)
                .filter(|n| (1..=MAX_IMPORT_KEY_DER).contains(n))
                .ok_or(ApplyError::Tampered(
                    "sealed import key has an impossible length",
                ))?;
            let mut buf = Zeroizing::new(vec![0u8; n]);
            sealer
                .open_into(&r.key, &import_key_aad(&r.token_sha256), &mut buf)
                .map_err(ApplyError::Tampered)?;
            side.imports.insert(
                r.token_sha256.clone(),
                ImportKeyMaterial {
                    token_sha256: r.token_sha256,
                    algorithm: r.algorithm,
                    key_spec: r.key_spec,
                    created: r.created,
                    valid_to: r.valid_to,
                    pkcs8_der: buf,
                },
            );
        }
        Record::ImportKeyUsed(u) => {
            // The key goes with its use. (A use whose issue a compaction already dropped, as
            // expired, has nothing left to remove.)
            side.imports.remove(&u.token_sha256);
        }
        Record::Store(r) => {
            if builds.contains_key(&r.name) {
                return Err(ApplyError::Tampered("store created twice"));
            }
            let meta = StoreMeta {
                created: r.created,
                ..StoreMeta::default()
            };
            builds.insert(
                r.name.clone(),
                StoreBuild {
                    record: r,
                    keys: HashMap::new(),
                    creds: Vec::new(),
                    meta,
                    destroyed: HashMap::new(),
                },
            );
        }
        Record::RemoveStore { name } => {
            if builds.remove(&name).is_none() {
                return Err(ApplyError::Tampered(
                    "removal of a store that does not exist",
                ));
            }
        }
        Record::KeyDestroyed(d) => {
            let b = builds.get_mut(&d.store).ok_or(ApplyError::Tampered(
                "destroyed key of a store that does not exist",
            ))?;
            b.keys.remove(&d.id);
            b.meta.keys.remove(&d.id);
            b.destroyed.insert(d.id, d.destroyed);
        }
        Record::Key(r) => {
            let b = builds
                .get_mut(&r.store)
                .ok_or(ApplyError::Tampered("key of a store that does not exist"))?;
            if b.destroyed.contains_key(&r.id) {
                return Err(ApplyError::Tampered("a destroyed key brought back"));
            }
            let kek = sealer
                .open_kek(&r.store, &r.id, r.version, &r.kek)?
                .map_err(ApplyError::Tampered)?;
            let mut older = Vec::with_capacity(r.older.len());
            for o in &r.older {
                if o.version >= r.version || older.iter().any(|x: &OlderKek| x.version == o.version)
                {
                    return Err(ApplyError::Tampered("key versions out of order"));
                }
                older.push(OlderKek {
                    version: o.version,
                    created: o.created,
                    kek: sealer
                        .open_kek(&r.store, &r.id, o.version, &o.kek)?
                        .map_err(ApplyError::Tampered)?,
                });
            }
            b.meta.keys.insert(r.id.clone(), r.created);
            b.keys.insert(
                r.id.clone(),
                Arc::new(LiveKey {
                    id: r.id,
                    version: r.version,
                    usage: r.usage,
                    status: r.status,
                    grants: r.grants,
                    kek,
                    version_created: r.rotated.unwrap_or(r.created),
                    older,
                    rotate_every_secs: r.rotate_every_secs,
                    destroy_at: r.destroy_at,
                    status_before_destroy: r.status_before_destroy,
                }),
            );
        }
        Record::Credential(r) => {
            let b = builds.get_mut(&r.store).ok_or(ApplyError::Tampered(
                "credential of a store that does not exist",
            ))?;
            let n = r
                .secret
                .0
                .len()
                .checked_sub(1 + 12 + 16)
                .ok_or(ApplyError::Tampered("sealed secret too short"))?;
            let mut buf = Zeroizing::new(vec![0u8; n]);
            sealer
                .open_into(&r.secret, &cred_aad(&r.store, &r.access_key_id), &mut buf)
                .map_err(ApplyError::Tampered)?;
            let s = std::str::from_utf8(&buf)
                .map_err(|_| ApplyError::Tampered("credential secret is not UTF-8"))?;
            b.creds.retain(|c| c.access_key_id != r.access_key_id);
            b.creds.push(Arc::new(Credential {
                access_key_id: r.access_key_id.clone(),
                secret_access_key: SecretString::from(s.to_string()),
            }));
            b.meta.creds.insert(r.access_key_id, r.created);
        }
        Record::RemoveCredential {
            store,
            access_key_id,
        } => {
            let b = builds.get_mut(&store).ok_or(ApplyError::Tampered(
                "credential of a store that does not exist",
            ))?;
            b.creds.retain(|c| c.access_key_id != access_key_id);
            b.meta.creds.remove(&access_key_id);
        }
        Record::Checkpoint(_) => {
            return Err(ApplyError::Tampered("a checkpoint out of place"));
        }
        Record::TlsKey(r) => {
            let n = r
                .key
                .0
                .len()
                .checked_sub(1 + 12 + 16)
                .filter(|n| (1..=MAX_TLS_KEY_DER).contains(n))
                .ok_or(ApplyError::Tampered(
                    "sealed TLS key has an impossible length",
                ))?;
            let mut buf = Zeroizing::new(vec![0u8; n]);
            sealer
                .open_into(&r.key, &tls_key_aad(), &mut buf)
                .map_err(ApplyError::Tampered)?;
            let pending = match &r.pending {
                Some(p) => {
                    let n =
                        p.0.len()
                            .checked_sub(1 + 12 + 16)
                            .filter(|n| (1..=MAX_TLS_KEY_DER).contains(n))
                            .ok_or(ApplyError::Tampered(
                                "sealed pending TLS key has an impossible length",
                            ))?;
                    let mut pbuf = Zeroizing::new(vec![0u8; n]);
                    sealer
                        .open_into(p, &tls_pending_key_aad(), &mut pbuf)
                        .map_err(ApplyError::Tampered)?;
                    Some(pbuf)
                }
                None => None,
            };
            *tls = Some(TlsMaterial {
                pkcs8_der: buf,
                chain_pem: r.chain_pem,
                created: r.created,
                chain_installed: r.chain_installed,
                pending_created: r.pending_created.filter(|_| pending.is_some()),
                pending_pkcs8_der: pending,
            });
        }
    }
    Ok(())
}

/// The live state of `snap` as records: per store (by name), the store, its credentials, its
/// keys, each secret re-sealed.
fn live_records<'a>(
    sealer: &'a Sealer,
    meta: &'a HashMap<String, StoreMeta>,
    snap: &'a Snapshot,
    tls: &'a Option<TlsMaterial>,
    approvals: &'a Approvals,
    imports: &'a ImportKeys,
) -> impl Iterator<Item = Result<Record, KeystoreError>> + 'a {
    let tls_rec = tls
        .iter()
        .map(move |t| tls_record(sealer, t))
        .chain(approvals.values().map(|a| Ok(Record::Approval(a.clone()))))
        .chain(imports.values().map(move |k| import_record(sealer, k)));
    static EMPTY: std::sync::OnceLock<StoreMeta> = std::sync::OnceLock::new();
    let empty = EMPTY.get_or_init(StoreMeta::default);
    let mut stores: Vec<&'a Arc<StoreView>> = snap.stores.values().collect();
    stores.sort_by(|a, b| a.name.cmp(&b.name));
    stores
        .into_iter()
        .flat_map(move |sv| {
            let m = meta.get(&sv.name).unwrap_or(empty);
            let store = std::iter::once_with(move || {
                Ok(Record::Store(StoreRecord {
                    name: sv.name.clone(),
                    uri_prefix: sv.uri_prefix.clone(),
                    region: sv.region.clone(),
                    extra_services: sv
                        .services
                        .iter()
                        .filter(|s| *s != KMS_SERVICE)
                        .cloned()
                        .collect(),
                    created: m.created,
                }))
            });
            let creds = sv.credentials.iter().map(move |c| {
                Ok(Record::Credential(CredentialRecord {
                    store: sv.name.clone(),
                    access_key_id: c.access_key_id.clone(),
                    secret: sealer.seal(
                        c.secret_access_key.expose_secret().as_bytes(),
                        &cred_aad(&sv.name, &c.access_key_id),
                    )?,
                    created: m.creds.get(&c.access_key_id).copied().unwrap_or(0),
                }))
            });
            let keys = sv.keys.values().map(move |k| {
                Ok(Record::Key(key_record(
                    sealer,
                    &sv.name,
                    k,
                    m.keys.get(&k.id).copied().unwrap_or(0),
                )?))
            });
            let destroyed = sv.destroyed.iter().map(move |(id, at)| {
                Ok(Record::KeyDestroyed(DestroyedKeyRecord {
                    store: sv.name.clone(),
                    id: id.clone(),
                    destroyed: *at,
                }))
            });
            store.chain(creds).chain(destroyed).chain(keys)
        })
        .chain(tls_rec)
}

/// Undo what a failed write of a file store may have left: rewrite the sealed head of the last
/// acknowledged record, then cut off every record after it. The head goes first: if it cannot
/// be rewritten, the records stay, so the store on disk is consistent whichever head survived
/// (the write is then either cut off at the next open or found complete), and writes are
/// refused with this error until it succeeds.
fn settle_tail(inner: &mut Inner) -> Result<(), KeystoreError> {
    let prev = inner.head.clone();
    let sealed = load::seal_head(&inner.sealer, &prev)?;
    let res = inner
        .backend
        .store_head(&sealed)
        .and_then(|()| inner.backend.truncate_after(prev.seq));
    match res {
        Ok(()) => {
            inner.unsettled_tail = false;
            Ok(())
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                "could not undo a failed key store write; retried before the next write (an \
                 unacknowledged record left is cut off at the next start)"
            );
            Err(e)
        }
    }
}

/// Undo an appended write whose head was not recorded: back to `prev`.
fn rollback(inner: &mut Inner, prev: &StoreHead) -> Result<(), KeystoreError> {
    inner.backend.truncate_after(prev.seq).map_err(|e| {
        tracing::error!(
            error = %e,
            "could not undo an unacknowledged key store write (it is cut off at the next start)"
        );
        e
    })
}

/// Rewrite the backend with the live state of `snap` without changing the head: a checkpoint
/// carrying the head, the live records MACed under it (their count in the checkpoint), and
/// later writes continue the chain from the head. No record of the old log fits the new one.
fn compact(inner: &mut Inner, snap: &Snapshot) -> Result<(), KeystoreError> {
    if inner.pending.is_some() {
        return Err(KeystoreError::AnchorUnknown(
            "compaction waits until the pending write is settled".into(),
        ));
    }
    let Inner {
        backend,
        sealer,
        head,
        meta,
        tls,
        approvals,
        imports,
        ..
    } = inner;
    write_generation(
        backend.as_mut(),
        sealer,
        None,
        None,
        head,
        Live {
            meta,
            tls,
            approvals,
            imports,
            snap,
        },
    )
}

/// The live state a new generation of the log is written from.
struct Live<'a> {
    meta: &'a HashMap<String, StoreMeta>,
    tls: &'a Option<TlsMaterial>,
    approvals: &'a Approvals,
    imports: &'a ImportKeys,
    snap: &'a Snapshot,
}

/// Write the live state of `snap` as a new generation of the log sealed by `sealer`: a
/// checkpoint carrying `head`, then the live records (every secret sealed anew) MACed under it.
/// With `header`, the header is replaced too (a re-seal under another master-key version),
/// otherwise kept (compaction); with `sealed` as well, the sealed head is replaced with them in
/// one compare-and-set ([`KeyStore::reseal`]: a shared store). The backend switches to it
/// atomically.
fn write_generation(
    backend: &mut dyn KeyStore,
    sealer: &Sealer,
    header: Option<&Header>,
    sealed: Option<&SealedHead>,
    head: &StoreHead,
    live: Live<'_>,
) -> Result<(), KeystoreError> {
    let Live {
        meta,
        tls,
        approvals,
        imports,
        snap,
    } = live;
    let chain: ChainMac = head
        .chain_mac
        .as_slice()
        .try_into()
        .map_err(|_| KeystoreError::Seal)?;
    let n = live_count(snap, tls, approvals, imports) as u64;
    let at = head.seq;
    let ckpt_mac = sealer.checkpoint_mac(at, &chain, n);
    let checkpoint = SignedRecord {
        seq: at,
        mac: hex::encode(ckpt_mac),
        batch: None,
        rec: Record::Checkpoint(CheckpointRecord {
            chain_mac: hex::encode(chain),
            live: n,
        }),
    };
    let mut prev = ckpt_mac;
    let index = std::cell::Cell::new(0u64);
    let live = live_records(sealer, meta, snap, tls, approvals, imports).map(|r| {
        let rec = r?;
        let i = index.get() + 1;
        index.set(i);
        if i > n {
            return Err(KeystoreError::Format("live record count changed".into()));
        }
        let mac = sealer.live_mac(at, i, &prev, &rec)?;
        prev = mac;
        Ok(SignedRecord {
            seq: at,
            mac: hex::encode(mac),
            batch: None,
            rec,
        })
    });
    // The count in the checkpoint must match what was written: checked by a final sentinel.
    let mut checked = false;
    let sentinel = std::iter::from_fn(|| {
        if checked || index.get() == n {
            return None;
        }
        checked = true;
        Some(Err(KeystoreError::Format(
            "live record count changed".into(),
        )))
    });
    let resealing = header.is_some();
    let live = live.inspect(|_| {
        if resealing && index.get() == n / 2 + 1 {
            crash_point("reseal-writing");
        }
    });
    let mut guarded = std::iter::once(Ok(checkpoint)).chain(live).chain(sentinel);
    match (header, sealed) {
        (Some(h), Some(sh)) => backend.reseal(h, &mut guarded, sh),
        (Some(h), None) => backend.rewrite(h, &mut guarded),
        (None, _) => backend.compact(&mut guarded),
    }
}

/// Test-only crash point: with `KEYWARD_TEST_CRASH_AT=<name>` the process aborts here (as a
/// `kill -9` would stop it: no destructor, no flush). Compiled only into tests and builds with
/// the `test-hooks` feature, never into the appliance.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn crash_point(name: &str) {
    if std::env::var("KEYWARD_TEST_CRASH_AT").as_deref() == Ok(name) {
        eprintln!("KEYWARD_TEST_CRASH_AT={name}: aborting");
        std::process::abort();
    }
    if let Ok(ms) = std::env::var(format!("KEYWARD_TEST_PAUSE_AT_{name}")) {
        eprintln!("KEYWARD_TEST_PAUSE_AT_{name}: pausing {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
    }
}

#[cfg(not(any(test, feature = "test-hooks")))]
#[inline(always)]
pub(crate) fn crash_point(_: &str) {}

/// A fresh SigV4 credential in the form KMS accepts: a 26-character Base32 access key id
/// (`KW` + 24 random characters of `A-Z2-7`) and a 44-character Base64 secret (32 random bytes).
pub fn generate_credential() -> Result<(String, SecretString), KeystoreError> {
    use base64::Engine;
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut r = [0u8; 24];
    getrandom_fill(&mut r)?;
    let mut id = String::from("KW");
    // `& 31` keeps every index inside the 32-letter alphabet.
    id.extend(
        r.iter()
            .filter_map(|b| B32.get(usize::from(*b & 31)).map(|&c| char::from(c))),
    );
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom_fill(&mut raw[..])?;
    let secret = base64::engine::general_purpose::STANDARD.encode(&raw[..]);
    Ok((id, SecretString::from(secret)))
}

/// Seconds since the epoch as RFC 3339 (UTC), the form every admin answer uses.
pub fn unix_rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
