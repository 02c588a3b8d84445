//! Simulated SEV-SNP attester for tests and `keyward demo`: well-formed 1184-byte reports
//! signed by a per-process P-384 VCEK under the committed **test** ASK/ARK
//! (`verify::testsign`, `attestation/test-roots/`), REPORT_DATA from the [`Binding`], with a
//! chosen measurement and TCB.
//!
//! It is a different trust root from AMD's: a verifier accepts these reports only under a
//! policy that names the test ARK's fingerprint explicitly (`testsign::test_root_policy_toml`);
//! the built-in policy refuses them. Starting it generates one P-384 key (milliseconds) and
//! never an RSA key: the RSA-4096 test keys are committed fixtures.

use super::{AttestError, Attester, Binding};
use keyward_evidence::{EvidenceBundle, SnpEvidence};
use keyward_verify::testsign::SimulatedPlatform;

/// The measurement the demo reports (a recognisable test value, not a real launch digest).
pub const DEMO_MEASUREMENT: [u8; 48] = [0x5e; 48];

/// The simulated SNP attester.
pub struct SimulatedSnpAttester {
    platform: SimulatedPlatform,
}

impl std::fmt::Debug for SimulatedSnpAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedSnpAttester")
            .field("product", &self.platform.product)
            .field("measurement", &hex::encode(self.platform.measurement))
            .finish()
    }
}

impl SimulatedSnpAttester {
    /// A Milan VCEK platform with the given launch measurement.
    pub fn new(measurement: [u8; 48]) -> Result<Self, AttestError> {
        let platform = SimulatedPlatform::new(measurement)
            .map_err(|e| AttestError::unavailable("simulated SNP", e))?;
        Ok(Self { platform })
    }
    /// Any platform built with `SimulatedPlatform::with` (product, signer, TCB, chip id).
    pub fn from_platform(platform: SimulatedPlatform) -> Self {
        Self { platform }
    }
    /// The platform (its certificates, TCB, measurement).
    pub fn platform(&self) -> &SimulatedPlatform {
        &self.platform
    }
}

impl Attester for SimulatedSnpAttester {
    fn name(&self) -> &'static str {
        "simulated-snp"
    }
    fn attest(&self, binding: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError> {
        bundle.report_data = Some(binding.report_data.to_vec());
        bundle.snp = Some(SnpEvidence {
            report: self.platform.report(&binding.report_data),
            certs: self.platform.certs.clone(),
        });
        Ok(())
    }
}
