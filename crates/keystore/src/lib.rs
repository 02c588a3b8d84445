//! The key store: sealed KEK records on disk (AES-256-GCM under the master key), their
//! in-memory view for the request path, and atomic persistence.
//!
//! * [`Registry`]: open a store with the master key, unseal into a [`view::Snapshot`] published
//!   in a [`view::SharedView`], and apply admin changes (durable before they return, live at
//!   once).
//! * [`KeyStore`]: the persistence seam; [`FileKeyStore`] is the file implementation (a
//!   PostgreSQL one, shared by a fleet, lives in `keyward-store-pg`).
//! * [`backup`]: a store exported as one MACed file ([`Registry::export`]), and its restore
//!   into an empty backend.
//! * [`fleet`]: members' heartbeats, for GetHealthStatus and `keyward admin fleet`.
//! * [`validate`]: the input rules (key ids, credentials, URI prefixes) with clear messages.
//! * [`view`] is the CONTRACT read by `xks` on every request.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod backup;
mod error;
pub mod file;
pub mod fleet;
pub mod head;
mod load;
pub mod model;
mod registry;
mod seal;
mod source;
pub mod validate;
pub mod view;

pub use error::KeystoreError;
pub use file::FileKeyStore;
pub use head::{AnchorError, Freshness, HeadAnchor, StoreHead};
pub use model::KeyStore;
pub use registry::{
    generate_credential, unix_rfc3339, CredentialInfo, ImportKeyMaterial, KeyInfo, KeyVersionInfo,
    MkStatus, NewStore, Registry, Revoke, StoreInfo, TlsMaterial, DEFAULT_DESTROY_DAYS,
    KMS_SERVICE, MAX_DESTROY_DAYS, MAX_TLS_CHAIN_PEM, MIN_DESTROY_DAYS, MIN_ROTATION_SECS,
};
pub use source::{MasterKeyError, MasterKeySource, MasterKeys};

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
