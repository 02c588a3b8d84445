//! Evidence producers, all behind one [`Attester`] trait: the SEV-SNP guest device, TPM 2.0
//! quotes, the NitroTPM attestation document, and a simulated SNP signer for tests and the demo.
//!
//! The [`Binding`] every producer maps to its own field lives in `keyward_evidence`.

pub use keyward_evidence::{Binding, EvidenceBundle};

/// Errors from evidence producers.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("attestation device unavailable: {0}")]
    Unavailable(String),
    #[error("attestation failed: {0}")]
    Failed(String),
}

/// Something that can produce evidence bound to a caller-chosen value.
pub trait Attester: Send + Sync {
    /// Short name: `snp`, `tpm`, `nitrotpm`, `simulated-snp`.
    fn name(&self) -> &'static str;
    /// Add this attester's evidence for `binding` to `bundle`.
    fn attest(&self, binding: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError>;
}

pub mod cli;
pub mod live;
pub mod nitrotpm;
#[cfg(feature = "simulated")]
pub mod simulated;
pub mod snp;
pub mod tpm;
