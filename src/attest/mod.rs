//! Evidence producers, all behind one [`Attester`] trait: the SEV-SNP guest device, TPM 2.0
//! quotes, the NitroTPM attestation document, and a simulated SNP signer for tests and the demo.
//!
//! Owner: attester helper. CONTRACT: [`Attester`] and [`Binding`].

use crate::verify::evidence::EvidenceBundle;

/// What the caller binds the evidence to. Each attester maps it to its own field:
/// SNP REPORT_DATA (64 bytes), NitroTPM `nonce`/`public_key`/`user_data`, TPM qualifying data.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The 64 bytes for SNP REPORT_DATA.
    pub report_data: [u8; 64],
    /// Digest for TPM qualifying data and NitroTPM `user_data` (e.g. the KRP/1 transcript T).
    pub user_data: Vec<u8>,
    /// NitroTPM `nonce` (the KRS's challenge nonce), if any.
    pub nonce: Option<Vec<u8>>,
    /// NitroTPM `public_key` (DER SPKI of the agent's ephemeral key), if any.
    pub public_key: Option<Vec<u8>>,
}

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
pub mod simulated;
pub mod snp;
pub mod tpm;
