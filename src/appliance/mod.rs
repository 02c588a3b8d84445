//! The appliance: the boot pipeline `attest → release → unseal → serve` in one process, with
//! sd_notify and phase logging. Owner: platform helper (release source: release helper).
//!
//! CONTRACT: [`MasterKeySource`] is the seam between where the master key comes from (a file
//! now, attested release later) and everything after it.

use crate::secret::Key32;

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
}
pub mod cli;
pub mod notify;
