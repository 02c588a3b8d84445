//! The `release` master-key source: the boot agent wrapped in a retry loop, for
//! `[master_key] source = "release"` in `keyward serve` and for `keyward demo`.
//! Also the KRS's default appraiser (the shared verifier library).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand_core::RngCore;

use super::agent::{Agent, AgentError};
use super::crl::CrlStore;
use super::krs::Appraiser;
use super::policy::VerifiedPolicy;
use crate::appliance::{MasterKeyError, MasterKeySource};
use crate::attest::Binding;
use crate::secret::Key32;
use crate::verify::evidence::EvidenceBundle;
use crate::verify::verdict::Verdict;

/// The image identifier sent in Hello (`product_release`).
pub fn product_release() -> String {
    format!("keyward-{}", env!("CARGO_PKG_VERSION"))
}

/// Retry schedule for release attempts.
#[derive(Debug, Clone)]
pub struct Retry {
    /// First delay.
    pub base: Duration,
    /// Largest delay between transport failures.
    pub cap: Duration,
    /// Delay after a policy deny (no tight loop: the answer will not change by itself).
    pub policy_deny_delay: Duration,
    /// Give up after this many attempts (None: keep trying).
    pub max_attempts: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            policy_deny_delay: Duration::from_secs(300),
            max_attempts: None,
        }
    }
}

impl Retry {
    /// Capped exponential backoff with jitter (uniform in [d/2, d]) before attempt `n + 1`.
    pub fn delay(&self, n: u32, err: &AgentError) -> Duration {
        if err.is_policy_deny() {
            return self.policy_deny_delay;
        }
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ms = exp.as_millis() as u64;
        let half = ms / 2;
        let jitter = if half > 0 {
            rand_core::OsRng.next_u64() % (half + 1)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }
}

/// Called with a one-line status per attempt (the caller forwards it to sd_notify `STATUS=`).
pub type StatusFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Master key from attested release.
pub struct ReleaseSource {
    pub agent: Agent,
    pub retry: Retry,
    pub status: StatusFn,
}

impl ReleaseSource {
    /// Try until released, or until `max_attempts` runs out.
    pub fn obtain_with_retry(&self) -> Result<super::agent::Released, AgentError> {
        let mut n: u32 = 0;
        loop {
            n += 1;
            (self.status)(&format!(
                "phase=release attempt {n}: contacting {}",
                self.agent.cfg.krs_url
            ));
            match self.agent.release() {
                Ok(r) => {
                    (self.status)(&format!(
                        "phase=release attempt {n}: released (receipt log index {}, {:?})",
                        r.receipt.log_index, r.mode
                    ));
                    return Ok(r);
                }
                Err(e) => {
                    let last = self.retry.max_attempts.is_some_and(|m| n >= m);
                    let d = self.retry.delay(n - 1, &e);
                    let what = if e.is_policy_deny() {
                        "policy deny"
                    } else {
                        "failed"
                    };
                    if last {
                        (self.status)(&format!("phase=release attempt {n} {what}: {e}; giving up"));
                        return Err(e);
                    }
                    (self.status)(&format!(
                        "phase=release attempt {n} {what}: {e}; retrying in {:.1}s",
                        d.as_secs_f64()
                    ));
                    std::thread::sleep(d);
                }
            }
        }
    }
}

impl ReleaseSource {
    /// Build from `[master_key.release]`: attesters by name, retry schedule, and a status hook
    /// that logs `phase=release` lines and sends sd_notify `STATUS=` for each attempt.
    pub fn from_config(
        cfg: &crate::config::release::ReleaseConfig,
        product_release: &str,
    ) -> Result<Self, MasterKeyError> {
        let attesters = build_attesters(cfg)?;
        let notifier = crate::appliance::notify::Notifier::from_env();
        let status: StatusFn = Arc::new(move |s: &str| {
            crate::appliance::phase("release", s.trim_start_matches("phase=release "));
            notifier.status(s);
        });
        Ok(Self {
            agent: Agent {
                cfg: cfg.agent.clone(),
                attesters,
                product_release: product_release.to_string(),
            },
            retry: Retry {
                base: Duration::from_millis(cfg.retry_initial_ms),
                cap: Duration::from_secs(cfg.retry_max_secs),
                policy_deny_delay: Duration::from_secs(cfg.policy_deny_retry_secs),
                max_attempts: (cfg.max_attempts > 0).then_some(cfg.max_attempts),
            },
            status,
        })
    }
}

/// The attesters named in the configuration, in order.
pub fn build_attesters(
    cfg: &crate::config::release::ReleaseConfig,
) -> Result<Vec<Box<dyn crate::attest::Attester>>, MasterKeyError> {
    use crate::attest::{nitrotpm, tpm};
    let mut out: Vec<Box<dyn crate::attest::Attester>> = Vec::new();
    for name in &cfg.agent.attesters {
        match name.as_str() {
            "tpm" => {
                let mut c = tpm::TpmConfig::appliance(
                    crate::verify::tpm::Bank::Sha256,
                    vec![0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 15],
                );
                if let Some(t) = &cfg.tpm_tcti {
                    c.tcti = t.clone();
                }
                out.push(Box::new(tpm::TpmAttester::new(c)));
            }
            "snp" => out.push(Box::new(crate::attest::snp::SnpAttester::default())),
            // Named explicitly only (config check warns): proves nothing, for tests and demo.
            "simulated-snp" => out.push(Box::new(
                crate::attest::simulated::SimulatedSnpAttester::new(
                    crate::attest::simulated::DEMO_MEASUREMENT,
                )
                .map_err(|e| MasterKeyError::Release(e.to_string()))?,
            )),
            "nitrotpm" => {
                let mut c = nitrotpm::NitroTpmConfig::default();
                if let Some(t) = &cfg.tpm_tcti {
                    c.tcti = t.clone();
                }
                out.push(Box::new(nitrotpm::NitroTpmAttester::new(c)));
            }
            other => {
                return Err(MasterKeyError::Release(format!(
                    "attester `{other}` is not available in this build"
                )))
            }
        }
    }
    Ok(out)
}

impl MasterKeySource for ReleaseSource {
    fn name(&self) -> &'static str {
        "release"
    }
    fn attested(&self) -> bool {
        true
    }
    fn obtain(&self) -> Result<Key32, MasterKeyError> {
        self.obtain_with_retry()
            .map(|r| r.key)
            .map_err(|e| MasterKeyError::Release(e.to_string()))
    }

    /// The released key, with the head the KRS holds for this deployment (from the signed
    /// receipt) as the floor and the KRS, through this boot's registered key, as the anchor.
    fn obtain_fresh(&self) -> Result<(Key32, crate::keystore::Freshness), MasterKeyError> {
        let r = self
            .obtain_with_retry()
            .map_err(|e| MasterKeyError::Release(e.to_string()))?;
        let Some(boot_key) = r.boot_key.clone() else {
            tracing::warn!(
                "the KRS registered no boot key (it keeps no store heads): the key store has no \
                 freshness anchor, an older copy of it cannot be told from the newest"
            );
            return Ok((r.key, crate::keystore::Freshness::Unanchored));
        };
        let pins = super::agent::parse_pins(&self.agent.cfg)
            .map_err(|e| MasterKeyError::Release(e.to_string()))?;
        let anchor = super::anchor::KrsAnchor::new(
            &self.agent.cfg.krs_url,
            pins.tls,
            r.receipt_spki.clone(),
            boot_key,
            Duration::from_secs(self.agent.cfg.timeout_secs.max(1)),
        );
        Ok((
            r.key,
            crate::keystore::Freshness::Anchored {
                floor: r.receipt.head.clone(),
                anchor: Arc::new(anchor),
            },
        ))
    }
}

/// The shared verifier library as the KRS's appraiser. The signed policy's text is a verifier
/// policy (`crate::verify::Policy`); it is parsed once per policy digest.
/// With a [`CrlStore`], the AMD CRLs go to the verifier with every appraisal (re-read when a
/// file changes; an unreadable file fails the appraisal closed).
pub struct VerifierAppraiser {
    parsed: std::sync::Mutex<Option<([u8; 48], Arc<crate::verify::Policy>)>>,
    crls: Option<Arc<CrlStore>>,
}

impl VerifierAppraiser {
    /// Without CRLs (a policy with `snp.crl.required` then denies every SNP release).
    pub fn new() -> Self {
        Self {
            parsed: std::sync::Mutex::new(None),
            crls: None,
        }
    }

    /// With the KRS's CRL files.
    pub fn with_crls(crls: Arc<CrlStore>) -> Self {
        Self {
            parsed: std::sync::Mutex::new(None),
            crls: Some(crls),
        }
    }

    fn policy(&self, p: &VerifiedPolicy) -> Result<Arc<crate::verify::Policy>, String> {
        let mut g = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, pol)) = g.as_ref() {
            if *d == p.digest {
                return Ok(pol.clone());
            }
        }
        let pol = crate::verify::Policy::from_bytes(&p.policy).map_err(|e| e.to_string())?;
        // Also refused at KRS start; checked here so that no path appraises under it.
        pol.check_measured().map_err(|e| e.to_string())?;
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
        let expect = crate::verify::Expectations {
            report_data: Some(binding.report_data),
            qualifying_data: Some(binding.user_data.clone()),
            nonce: binding.nonce.clone(),
            public_key: binding.public_key.clone(),
            user_data: Some(binding.user_data.clone()),
            crls,
        };
        crate::verify::verify_bundle(bundle, &policy, &expect, at)
    }
}

/// The appraiser `keyward krs serve` uses: the shared verifier library.
pub fn default_appraiser() -> Box<dyn Appraiser> {
    Box::new(VerifierAppraiser::new())
}

/// Check that signed policy text is a valid verifier policy that measures what it requires
/// (or says `allow_unmeasured`, see [`crate::verify::Policy::check_measured`]).
pub fn check_policy_text(text: &[u8]) -> anyhow::Result<crate::verify::Policy> {
    let p = crate::verify::Policy::from_bytes(text)?;
    p.check_measured()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_jittered_and_slow_after_policy_deny() {
        let r = Retry {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            policy_deny_delay: Duration::from_secs(300),
            max_attempts: None,
        };
        let transport = AgentError::Connect("x".into(), "refused".into());
        for n in 0..40 {
            let d = r.delay(n, &transport);
            let full = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
                .min(Duration::from_secs(2));
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
        }
        assert!(r.delay(30, &transport) <= Duration::from_secs(2));
        let deny = AgentError::Denied {
            code: crate::release::receipt::DenyCode::Measurement.number(),
            receipt_verified: true,
        };
        assert!(deny.is_policy_deny());
        assert_eq!(r.delay(0, &deny), Duration::from_secs(300));
        let replay = AgentError::Denied {
            code: crate::release::receipt::DenyCode::SessionExpired.number(),
            receipt_verified: true,
        };
        assert!(!replay.is_policy_deny());
    }
}
