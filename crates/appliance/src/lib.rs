//! The appliance: the boot pipeline `attest → release → unseal → serve` in one process, with
//! sd_notify and phase logging.
//!
//! [`MasterKeySource`] (from `keyward-keystore`) is the seam between where the master key comes
//! from (a key file, or the attested release of [`release`]) and everything after it.
//!
//! [`boot`] runs the phases up to bound listeners and returns a [`Running`] appliance;
//! [`Running::serve_until`] serves until a shutdown signal, then stops accepting, drains and
//! flushes the audit log. `keyward serve` and `keyward demo` both go through here.

pub mod cli;
pub mod masterkey;
pub mod notify;
pub mod release;
pub mod tls;

use std::net::SocketAddr;

pub use masterkey::FileMasterKey;

pub use keyward_keystore::{MasterKeyError, MasterKeySource};

/// Errors during boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("memory: {0}")]
    Memory(#[from] keyward_secret::SecretError),
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("key store: {0}")]
    Keystore(#[from] keyward_keystore::KeystoreError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("XKS listener: {0}")]
    Xks(String),
    #[error("{0}")]
    Admin(#[from] keyward_admin::server::ServerError),
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
