//! The appliance: the boot pipeline `attest → release → unseal → serve` in one process, with
//! sd_notify and phase logging. Owner: platform helper (release source: release helper).
//!
//! CONTRACT: [`MasterKeySource`] is the seam between where the master key comes from (a file
//! now, attested release later) and everything after it.
//!
//! [`boot`] runs the phases up to bound listeners and returns a [`Running`] appliance;
//! [`Running::serve_until`] serves until a shutdown signal, then stops accepting, drains and
//! flushes the audit log. `keyward serve` and `keyward demo` both go through here.

pub mod cli;
pub mod masterkey;
pub mod notify;
pub mod tls;

use std::net::SocketAddr;

use crate::secret::Key32;

pub use masterkey::FileMasterKey;

/// Errors while obtaining the master key.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("master key file: {0}")]
    File(String),
    #[error("key release: {0}")]
    Release(String),
}

/// Where the master key comes from. The XKS request path never sees this.
pub trait MasterKeySource: Send + Sync {
    /// Human-readable name for logs (`file`, `release`).
    fn name(&self) -> &'static str;
    /// Obtain the 32-byte master key.
    fn obtain(&self) -> Result<Key32, MasterKeyError>;
    /// Obtain the master key and how the key store's freshness is checked with it: the floor
    /// and anchor at the KRS that released it, or none (a key file: development only).
    fn obtain_fresh(&self) -> Result<(Key32, crate::keystore::Freshness), MasterKeyError> {
        Ok((self.obtain()?, crate::keystore::Freshness::Unanchored))
    }
    /// Whether this source attests and releases (phases `attest` and `release` run) or simply
    /// reads a key (they are skipped, and the log says so).
    fn attested(&self) -> bool {
        false
    }
}

/// Errors during boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("memory: {0}")]
    Memory(#[from] crate::secret::SecretError),
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("key store: {0}")]
    Keystore(#[from] crate::keystore::KeystoreError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("XKS listener: {0}")]
    Xks(String),
    #[error("{0}")]
    Admin(#[from] crate::admin::server::ServerError),
    #[error("pins: {0}")]
    Pins(String),
    #[error("appliance TLS identity: {0}")]
    Tls(#[from] tls::TlsIdError),
}

/// Addresses the appliance serves on, once bound.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub xks: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Log a boot phase on the log (and so on stderr) as `phase=NAME`.
pub fn phase(name: &'static str, what: &str) {
    tracing::info!(phase = %name, "{what}");
}

pub use run::{boot, Running};

mod run;
