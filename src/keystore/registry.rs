//! The registry: opens a [`KeyStore`] with the master key, unseals every KEK into locked memory,
//! publishes the result as a [`Snapshot`] in a [`SharedView`], and applies admin changes. Each
//! change is durable before the call returns and live at once (a new snapshot is swapped in).

use std::path::Path;
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde::Serialize;
use zeroize::Zeroizing;

use super::model::KeyStore;
use super::view::{Grant, GrantOps, KeyStatus, KeyUsage, SharedView, Snapshot};
use super::KeystoreError;
use crate::secret::Key32;

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

struct Inner {
    _backend: Box<dyn KeyStore>,
}

impl Registry {
    /// Open (or initialise, if empty) `backend` with `master`, verify and unseal every record
    /// into locked memory, and publish the snapshot. A wrong master key gives
    /// [`KeystoreError::WrongMasterKey`]; any altered record gives [`KeystoreError::Tampered`]
    /// (nothing partial is ever published).
    pub fn open(backend: Box<dyn KeyStore>, master: Key32) -> Result<Registry, KeystoreError> {
        let _ = (backend, master);
        todo!()
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

    /// Create a key store with no keys and no credentials.
    pub fn create_store(&self, spec: NewStore) -> Result<StoreInfo, KeystoreError> {
        let _ = (spec, &self.inner);
        todo!()
    }

    /// Every key store, sorted by name.
    pub fn list_stores(&self) -> Vec<StoreInfo> {
        todo!()
    }

    /// Remove a key store with its credentials. If it still holds keys, refuses with
    /// [`KeystoreError::StoreNotEmpty`] unless `force` (the keys are then destroyed).
    pub fn remove_store(&self, name: &str, force: bool) -> Result<(), KeystoreError> {
        let _ = (name, force);
        todo!()
    }

    /// Create a key with a fresh random KEK, version 1, enabled, and **no grants**.
    /// `store` may be `None` when exactly one store exists.
    pub fn create_key(
        &self,
        store: Option<&str>,
        id: &str,
        usage: KeyUsage,
    ) -> Result<KeyInfo, KeystoreError> {
        let _ = (store, id, usage);
        todo!()
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
        let _ = (store, id, usage, bytes);
        todo!()
    }

    /// The keys of a store, sorted by id. Never key bytes.
    pub fn list_keys(&self, store: Option<&str>) -> Result<Vec<KeyInfo>, KeystoreError> {
        let _ = store;
        todo!()
    }

    /// One key's description.
    pub fn key_info(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        let _ = (store, id);
        todo!()
    }

    /// Enable a key.
    pub fn enable_key(&self, store: Option<&str>, id: &str) -> Result<KeyInfo, KeystoreError> {
        self.set_status(store, id, KeyStatus::Enabled)
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
        let _ = (store, id, status);
        todo!()
    }

    /// Add a grant. A grant with the same principal and narrowing gets the new ops added.
    pub fn grant(
        &self,
        store: Option<&str>,
        id: &str,
        grant: Grant,
    ) -> Result<KeyInfo, KeystoreError> {
        let _ = (store, id, grant);
        todo!()
    }

    /// Remove or narrow grants (see [`Revoke`]); [`KeystoreError::NoMatchingGrant`] if none
    /// matched.
    pub fn revoke(
        &self,
        store: Option<&str>,
        id: &str,
        revoke: &Revoke,
    ) -> Result<KeyInfo, KeystoreError> {
        let _ = (store, id, revoke);
        todo!()
    }

    /// Add a SigV4 credential to a store (live at once). The access key id must be unique
    /// across all stores.
    pub fn add_credential(
        &self,
        store: Option<&str>,
        access_key_id: &str,
        secret: SecretString,
    ) -> Result<(), KeystoreError> {
        let _ = (store, access_key_id, secret);
        todo!()
    }

    /// Remove a credential (requests signed with it fail at once).
    pub fn remove_credential(
        &self,
        store: Option<&str>,
        access_key_id: &str,
    ) -> Result<(), KeystoreError> {
        let _ = (store, access_key_id);
        todo!()
    }

    /// A store's credentials: ids and ages only.
    pub fn list_credentials(
        &self,
        store: Option<&str>,
    ) -> Result<Vec<CredentialInfo>, KeystoreError> {
        let _ = store;
        todo!()
    }
}

/// A fresh SigV4 credential in the form KMS accepts: a 26-character Base32 access key id and a
/// 44-character Base64 secret (32 random bytes).
pub fn generate_credential() -> Result<(String, SecretString), KeystoreError> {
    todo!()
}

fn unix_rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
