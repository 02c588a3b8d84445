//! The read-only, in-memory view of key stores and keys that the XKS request path consults.
//!
//! CONTRACT between `keystore` (the writer: boot unseal and admin changes) and `xks` (the
//! reader). The writer builds a new [`Snapshot`] and swaps it in ([`SharedView`]); readers load
//! it once per request, lock-free. Nothing here knows where the master key came from.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use keyward_secret::Key32;

/// The live view, swapped atomically on every change.
pub type SharedView = Arc<ArcSwap<Snapshot>>;

/// Every logical key store (one per URI prefix) with its credentials and keys.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Key stores by name.
    pub stores: HashMap<String, Arc<StoreView>>,
}

impl Snapshot {
    /// The store whose `uri_prefix` is exactly `prefix` (may be empty).
    pub fn store_by_prefix(&self, prefix: &str) -> Option<&Arc<StoreView>> {
        self.stores.values().find(|s| s.uri_prefix == prefix)
    }
}

/// One logical key store: a URI path prefix with its own SigV4 credentials and keys.
#[derive(Debug)]
pub struct StoreView {
    /// Store name (the `--store` argument of the admin commands).
    pub name: String,
    /// Path before `/kms/xks/v1`, e.g. `/keyward`; empty for none.
    pub uri_prefix: String,
    /// Region expected in the SigV4 credential scope.
    pub region: String,
    /// Service names accepted in the scope. Always contains `kms-xks-proxy`.
    pub services: Vec<String>,
    /// Live SigV4 credentials (at least two may be live at once, for rotation).
    pub credentials: Vec<Arc<Credential>>,
    /// Keys by external key id.
    pub keys: HashMap<String, Arc<LiveKey>>,
    /// Destroyed keys by id: when (Unix seconds). Their KEKs are gone; requests for them are
    /// answered `KeyNotFoundException`, and the id is never reused.
    pub destroyed: HashMap<String, u64>,
}

/// A SigV4 credential as AWS KMS holds it.
pub struct Credential {
    /// 20–30 characters of `A-Z2-7`.
    pub access_key_id: String,
    /// 43–64 characters; the raw string is the HMAC key material after `AWS4`.
    pub secret_access_key: secrecy::SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// What a key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsage {
    /// Encrypt and decrypt.
    EncryptDecrypt,
    /// Encrypt only (decrypt and CDIV requests give `InvalidKeyUsageException`).
    EncryptOnly,
    /// Decrypt only.
    DecryptOnly,
    /// Neither (metadata only).
    None,
}

impl KeyUsage {
    /// Whether encrypt is allowed.
    pub fn can_encrypt(self) -> bool {
        matches!(self, KeyUsage::EncryptDecrypt | KeyUsage::EncryptOnly)
    }
    /// Whether decrypt is allowed.
    pub fn can_decrypt(self) -> bool {
        matches!(self, KeyUsage::EncryptDecrypt | KeyUsage::DecryptOnly)
    }
}

/// Whether the external key may be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable.
    Enabled,
    /// Metadata says `DISABLED`; encrypt and decrypt give `InvalidStateException`.
    Disabled,
}

/// Operations a grant can open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantOps {
    /// Encrypt.
    pub encrypt: bool,
    /// Decrypt.
    pub decrypt: bool,
    /// GetKeyMetadata.
    pub metadata: bool,
}

/// A per-key grant to a principal pattern, optionally narrowed by via-service and source VPC/VPCE.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// Exact ARN, `*`, or a glob such as `arn:aws:iam::111122223333:role/app-*`.
    pub principal: String,
    /// The operations this grant opens.
    pub ops: GrantOps,
    /// Only when `kmsViaService` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_service: Option<String>,
    /// Only when `awsSourceVpc` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vpc: Option<String>,
    /// Only when `awsSourceVpce` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vpce: Option<String>,
}

impl Grant {
    /// Encrypt, decrypt and metadata for every principal, with no conditions: what the demo,
    /// the benchmarks and the fixtures grant their one key.
    pub fn open_to_all() -> Grant {
        Grant {
            principal: "*".into(),
            ops: GrantOps {
                encrypt: true,
                decrypt: true,
                metadata: true,
            },
            via_service: None,
            source_vpc: None,
            source_vpce: None,
        }
    }
}

/// One unsealed external key, ready for the request path.
#[derive(Debug)]
pub struct LiveKey {
    /// External key id.
    pub id: String,
    /// Key version, carried in `ciphertextMetadata`.
    pub version: u32,
    /// Allowed operations.
    pub usage: KeyUsage,
    /// Enabled or disabled.
    pub status: KeyStatus,
    /// Who may use it (empty: nobody).
    pub grants: Vec<Grant>,
    /// The KEK itself, in locked memory.
    pub kek: Key32,
    /// When this version became current (Unix seconds; for the rotation schedule and `keys
    /// list`).
    pub version_created: u64,
    /// Earlier versions, newest first: they still decrypt what they encrypted, forever (a
    /// ciphertext's `ciphertextMetadata` names its version); only the current one encrypts.
    pub older: Vec<OlderKek>,
    /// Rotate automatically this long after the current version was made (`None`: only by
    /// hand).
    pub rotate_every_secs: Option<u64>,
    /// Scheduled for destruction at this time (Unix seconds); the key is disabled meanwhile.
    pub destroy_at: Option<u64>,
    /// The status `cancel-destroy` restores.
    pub status_before_destroy: Option<KeyStatus>,
}

/// An earlier version of a key's KEK.
#[derive(Debug)]
pub struct OlderKek {
    pub version: u32,
    /// When it became current, Unix seconds.
    pub created: u64,
    pub kek: Key32,
}

impl LiveKey {
    /// The KEK of `version`: the current one or an earlier one still kept.
    pub fn kek_of(&self, version: u32) -> Option<&Key32> {
        if version == self.version {
            return Some(&self.kek);
        }
        self.older
            .iter()
            .find(|o| o.version == version)
            .map(|o| &o.kek)
    }
}
