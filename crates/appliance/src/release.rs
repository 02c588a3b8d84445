//! `[master_key] source = "release"`: the boot agent's [`ReleaseSource`] built from the
//! configuration: the attesters by name, the retry schedule, and a status hook that logs
//! `phase=release` lines and sends sd_notify `STATUS=` for each attempt. The live-attestation
//! listener gets its attesters from here too.

use std::sync::Arc;
use std::time::Duration;

use keyward_agent::Agent;
use keyward_agent::{ReleaseSource, Retry, StatusFn};
use keyward_keystore::MasterKeyError;

/// Build from `[master_key.release]`: attesters by name, retry schedule, and a status hook
/// that logs `phase=release` lines and sends sd_notify `STATUS=` for each attempt.
pub fn release_source(
    cfg: &keyward_config::ReleaseConfig,
    product_release: &str,
) -> Result<ReleaseSource, MasterKeyError> {
    let attesters = build_attesters(cfg)?;
    let notifier = crate::notify::Notifier::from_env();
    let status: StatusFn = Arc::new(move |s: &str| {
        crate::phase("release", s.trim_start_matches("phase=release "));
        notifier.status(s);
    });
    Ok(ReleaseSource {
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

/// The attesters named in the configuration, in order.
pub fn build_attesters(
    cfg: &keyward_config::ReleaseConfig,
) -> Result<Vec<Box<dyn keyward_attest::Attester>>, MasterKeyError> {
    use keyward_attest::{nitrotpm, TpmAttester, TpmConfig};
    let mut out: Vec<Box<dyn keyward_attest::Attester>> = Vec::new();
    for name in &cfg.agent.attesters {
        match name.as_str() {
            "tpm" => {
                let mut c = TpmConfig::appliance(
                    keyward_evidence::Bank::Sha256,
                    vec![0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 15],
                );
                if let Some(t) = &cfg.tpm_tcti {
                    c.tcti = t.clone();
                }
                out.push(Box::new(TpmAttester::new(c)));
            }
            "snp" => out.push(Box::new(keyward_attest::SnpAttester::default())),
            // Named explicitly only (config check warns): proves nothing, for tests and demo.
            #[cfg(feature = "simulated")]
            "simulated-snp" => out.push(Box::new(
                keyward_attest::SimulatedSnpAttester::new(keyward_attest::DEMO_MEASUREMENT)
                    .map_err(|e| MasterKeyError::Release(Box::new(e)))?,
            )),
            "nitrotpm" => {
                let mut c = nitrotpm::NitroTpmConfig::default();
                if let Some(t) = &cfg.tpm_tcti {
                    c.tcti = t.clone();
                }
                out.push(Box::new(nitrotpm::NitroTpmAttester::new(c)));
            }
            other => {
                return Err(MasterKeyError::Release(
                    format!("attester `{other}` is not available in this build").into(),
                ))
            }
        }
    }
    Ok(out)
}
