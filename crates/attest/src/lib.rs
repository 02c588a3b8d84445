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
    /// The device (or the simulated platform) could not be opened; `what` names it.
    #[error("attestation device unavailable: {what}: {source}")]
    DeviceUnavailable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step of producing evidence failed; `what` names it.
    #[error("attestation failed: {what}: {source}")]
    Step {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AttestError {
    /// `what` (a device, a path) could not be opened, because of `source`.
    pub(crate) fn unavailable(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        AttestError::DeviceUnavailable {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The step `what` failed, because of `source`.
    pub(crate) fn failed(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        AttestError::Step {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Something that can produce evidence bound to a caller-chosen value.
pub trait Attester: Send + Sync {
    /// Short name: `snp`, `tpm`, `nitrotpm`, `simulated-snp`.
    fn name(&self) -> &'static str;
    /// Add this attester's evidence for `binding` to `bundle`.
    fn attest(&self, binding: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError>;
}

// Namespaces callers use as such: `keyward attest`'s arguments and run (`cli::Args`); the live
// attestation endpoint and its client (`live::spawn`, `live::fetch_evidence`); the NitroTPM
// attester and the NSM request transport over the TPM's vendor command (`nitrotpm::exchange`),
// which tests drive step by step.
pub mod cli;
pub mod live;
pub mod nitrotpm;

#[cfg(feature = "simulated")]
mod simulated;
mod snp;
mod tpm;

// The SEV-SNP guest device, and the certificate table its extended report carries.
pub use snp::{
    build_cert_table, evidence_from_parts, parse_cert_table, tsm_report, SnpAttester, GUID_ARK,
    GUID_ASK, GUID_CRL, GUID_VLEK,
};
// TPM 2.0 quotes under a provisioned attestation key.
pub use tpm::{open_context, provision_ak, TpmAttester, TpmConfig};
// The simulated SNP signer of tests and the demo.
#[cfg(feature = "simulated")]
pub use simulated::{SimulatedSnpAttester, DEMO_MEASUREMENT};

#[cfg(test)]
mod tests {
    use super::AttestError;
    use std::error::Error;

    #[test]
    fn a_failed_step_names_the_step_and_keeps_its_cause() {
        let e = AttestError::failed(
            "PCR 11",
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the TPM did not answer"),
        );
        assert_eq!(
            e.to_string(),
            "attestation failed: PCR 11: the TPM did not answer"
        );
        let source = e.source().expect("the cause is the source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io::Error itself, not its text");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);

        let e = AttestError::unavailable("/dev/sev-guest", std::io::Error::from_raw_os_error(2));
        assert!(
            e.to_string()
                .starts_with("attestation device unavailable: /dev/sev-guest: "),
            "{e}"
        );
        assert!(e.source().is_some());
    }
}
