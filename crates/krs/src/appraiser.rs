//! The KRS's default appraiser: the shared verifier library (`keyward-verify`, the same one the
//! auditor's `keyward verify` runs) judging evidence under the signed policy, with the AMD CRLs.

use std::sync::Arc;
use std::time::SystemTime;

use keyward_evidence::{Binding, EvidenceBundle};
use keyward_verify::Verdict;

use crate::crl::CrlStore;
use crate::policy::VerifiedPolicy;
use crate::service::Appraiser;

/// The shared verifier library as the KRS's appraiser. The signed policy's text is a verifier
/// policy (`keyward_verify::Policy`); it is parsed once per policy digest.
/// With a [`CrlStore`], the AMD CRLs go to the verifier with every appraisal (re-read when a
/// file changes; an unreadable file fails the appraisal closed).
pub(crate) struct VerifierAppraiser {
    parsed: std::sync::Mutex<Option<([u8; 48], Arc<keyward_verify::Policy>)>>,
    crls: Option<Arc<CrlStore>>,
}

impl VerifierAppraiser {
    /// Without CRLs (a policy with `snp.crl.required` then denies every SNP release).
    pub(crate) fn new() -> Self {
        Self {
            parsed: std::sync::Mutex::new(None),
            crls: None,
        }
    }

    /// With the KRS's CRL files.
    pub(crate) fn with_crls(crls: Arc<CrlStore>) -> Self {
        Self {
            parsed: std::sync::Mutex::new(None),
            crls: Some(crls),
        }
    }

    fn policy(&self, p: &VerifiedPolicy) -> Result<Arc<keyward_verify::Policy>, String> {
        let mut g = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, pol)) = g.as_ref() {
            if *d == p.digest {
                return Ok(pol.clone());
            }
        }
        let pol = keyward_verify::Policy::from_bytes(&p.policy)
            .map_err(|e| keyward_keystore::error_chain(&e))?;
        // Also refused at KRS start; checked here so that no path appraises under it.
        pol.check_measured()
            .map_err(|e| keyward_keystore::error_chain(&e))?;
        let pol = Arc::new(pol);
        *g = Some((p.digest, pol.clone()));
        Ok(pol)
    }
}

impl Default for VerifierAppraiser {
    fn default() -> Self {
        Self::new()
    }
}

impl Appraiser for VerifierAppraiser {
    fn appraise(
        &self,
        bundle: &EvidenceBundle,
        p: &VerifiedPolicy,
        binding: &Binding,
        at: SystemTime,
    ) -> Verdict {
        let policy = match self.policy(p) {
            Ok(pol) => pol,
            Err(e) => {
                let mut v = Verdict {
                    policy_digest: hex::encode(p.digest),
                    ..Verdict::default()
                };
                v.fail("policy.parse", e);
                return v;
            }
        };
        let crls = match self.crls.as_ref().map(|c| c.current()) {
            None => Vec::new(),
            Some(Ok(list)) => list.iter().map(|c| c.der.clone()).collect(),
            Some(Err(e)) => {
                let mut v = Verdict {
                    policy_digest: hex::encode(p.digest),
                    ..Verdict::default()
                };
                v.fail("snp.crl", format!("the KRS's CRL files are unusable: {e}"));
                return v;
            }
        };
        let expect = keyward_verify::Expectations {
            report_data: Some(binding.report_data),
            qualifying_data: Some(binding.user_data.clone()),
            nonce: binding.nonce.clone(),
            public_key: binding.public_key.clone(),
            user_data: Some(binding.user_data.clone()),
            crls,
        };
        keyward_verify::verify_bundle(bundle, &policy, &expect, at)
    }
}

/// The embedded KRS's appraiser: the shared verifier library, as `keyward krs serve` uses.
#[cfg(feature = "embedded")]
pub(crate) fn default_appraiser() -> Box<dyn Appraiser> {
    Box::new(VerifierAppraiser::new())
}

/// Check that signed policy text is a valid verifier policy that measures what it requires
/// (or says `allow_unmeasured`, see [`keyward_verify::Policy::check_measured`]).
pub(crate) fn check_policy_text(text: &[u8]) -> anyhow::Result<keyward_verify::Policy> {
    let p = keyward_verify::Policy::from_bytes(text)?;
    p.check_measured()?;
    Ok(p)
}
