//! The key store: sealed KEK records on disk (AES-256-GCM under the master key), their
//! in-memory view for the request path, and atomic persistence.
//!
//! * [`Registry`]: open a store with the master key, unseal into a [`Snapshot`] published
//!   in a [`SharedView`], and apply admin changes (durable before they return, live at
//!   once).
//! * [`KeyStore`]: the persistence seam; [`FileKeyStore`] is the file implementation (a
//!   PostgreSQL one, shared by a fleet, lives in `keyward-store-pg`).
//! * [`backup`]: a store exported as one MACed file ([`Registry::export`]), and its restore
//!   into an empty backend.
//! * [`FleetBoard`]: members' heartbeats, for GetHealthStatus and `keyward admin fleet`.
//! * [`validate`]: the input rules (key ids, credentials, URI prefixes) with clear messages.
//! * [`StoreView`] and the rest of the view are the CONTRACT read by `xks` on every request.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

// Namespaces callers use as such: the backup file format (`backup::parse`, `backup::rewrap`),
// and the field validators (`validate::access_key_id`) whose names say little alone.
pub mod backup;
pub mod validate;

mod error;
mod file;
mod fleet;
mod head;
mod load;
mod model;
mod registry;
mod seal;
mod source;
mod view;

pub use error::KeystoreError;

// Opening a store and changing it: the registry, what it reports, what it is given.
pub use registry::{
    generate_credential, unix_rfc3339, CredentialInfo, ImportKeyMaterial, KeyInfo, KeyVersionInfo,
    MkStatus, NewStore, Registry, Revoke, StoreInfo, TlsMaterial, DEFAULT_DESTROY_DAYS,
    KMS_SERVICE, MAX_DESTROY_DAYS, MAX_TLS_CHAIN_PEM, MIN_DESTROY_DAYS, MIN_ROTATION_SECS,
};
pub use source::{MasterKeyError, MasterKeySource, MasterKeys};

// The view the request path reads (the CONTRACT with keyward-xks).
pub use view::{
    Credential, Grant, GrantOps, KeyStatus, KeyUsage, LiveKey, OlderKek, SharedView, Snapshot,
    StoreView,
};

// The persistence seam and the sealed records a backend stores (keyward-store-pg's side).
pub use file::FileKeyStore;
pub use model::{
    ApprovalRecord, ApprovalState, ApproverRecord, Header, KeyStore, Record, Sealed, SealedHead,
    SignedRecord,
};

// Freshness of the store against the KRS-held head, and the fleet's heartbeats.
pub use fleet::{FleetBoard, Member};
pub use head::{AnchorError, Freshness, HeadAnchor, StoreHead};

/// Seconds since the Unix epoch by the wall clock (0 for a clock before 1970): the time a record
/// was made (key creation, rotation, a session's expiry), for the key store and the KRS alike.
/// Not for decisions a host could move the clock to sway: those run on the agent's trusted time.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error and its causes on one line, each cause once (`cannot reach the KRS at h:p:
/// Connection refused (os error 111)`): the status lines and logs name what failed and why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cur = err.source();
    }
    line
}
