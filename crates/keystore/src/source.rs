//! Where the master key comes from: the seam between the boot stages that obtain it (a key file,
//! or the attested release from the KRS) and the key store that it unseals. The XKS request path
//! never sees this.

use keyward_secret::Key32;

use crate::Freshness;

/// Errors while obtaining the master key: what failed, with the cause as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key file cannot be read or written.
    #[error("master key file {}", path.display())]
    FileIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is there but unusable (its mode, its length).
    #[error("master key file {}: {why}", path.display())]
    FileRefused {
        path: std::path::PathBuf,
        why: String,
    },
    /// Locked memory for the key could not be had.
    #[error("master key memory")]
    Memory(#[from] keyward_secret::SecretError),
    /// The attested key release failed (the boot agent's error, or a configuration it needs).
    #[error("key release")]
    Release(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the master key comes from. The XKS request path never sees this.
pub trait MasterKeySource: Send + Sync {
    /// Human-readable name for logs (`file`, `release`).
    fn name(&self) -> &'static str;
    /// Obtain the 32-byte master key.
    fn obtain(&self) -> Result<Key32, MasterKeyError>;
    /// Obtain the master key and how the key store's freshness is checked with it: the floor
    /// and anchor at the KRS that released it, or none (a key file: development only).
    fn obtain_fresh(&self) -> Result<(Key32, Freshness), MasterKeyError> {
        Ok((self.obtain()?, Freshness::Unanchored))
    }
    /// Whether this source attests and releases (phases `attest` and `release` run) or simply
    /// reads a key (they are skipped, and the log says so).
    fn attested(&self) -> bool {
        false
    }
}
