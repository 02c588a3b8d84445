//! The `release` master-key source: the boot agent wrapped in a retry loop, for
//! `[master_key] source = "release"` in `keyward serve` and for `keyward demo` (built from the
//! configuration by `keyward_appliance::release_source`).

use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;

use crate::client::{Agent, AgentError};
use keyward_keystore::{MasterKeyError, MasterKeySource};
use keyward_secret::Key32;

/// An error and its causes on one line, each cause once (kept here for the callers that
/// name it through the agent; it lives in keyward-keystore, which the admin API shares).
pub use keyward_keystore::error_chain;

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

/// Attempts of a release while running (transport failures only; a deny is final).
const RUNNING_ATTEMPTS: u32 = 3;

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
    pub fn obtain_with_retry(&self) -> Result<crate::client::Released, AgentError> {
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
                        let e_text = error_chain(&e);
                        (self.status)(&format!(
                            "phase=release attempt {n} {what}: {e_text}; giving up"
                        ));
                        return Err(e);
                    }
                    (self.status)(&format!(
                        "phase=release attempt {n} {what}: {}; retrying in {:.1}s",
                        error_chain(&e),
                        d.as_secs_f64()
                    ));
                    std::thread::sleep(d);
                }
            }
        }
    }
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
            .map_err(|e| MasterKeyError::Release(Box::new(e)))
    }

    /// Every released version (current and the store's), with the floor and anchor as
    /// [`MasterKeySource::obtain_fresh`] gives them.
    fn obtain_keys(
        &self,
    ) -> Result<(keyward_keystore::MasterKeys, keyward_keystore::Freshness), MasterKeyError> {
        let r = self
            .obtain_with_retry()
            .map_err(|e| MasterKeyError::Release(Box::new(e)))?;
        let freshness = self.freshness(&r)?;
        let crate::client::Released {
            key, also, receipt, ..
        } = r;
        let mut keys = keyward_keystore::MasterKeys::new(receipt.key_version, key);
        for (v, k) in also {
            keys.insert(v, k);
        }
        Ok((keys, freshness))
    }

    /// A fresh release while running (`mk reseal`, or a fleet member that finds the store
    /// re-sealed under a version it lacks): the current version and `wanted`, with fresh
    /// evidence from the same attesters, judged by the KRS as at boot. No new boot key (this
    /// boot's stays registered and anchors the heads). A few quick tries for transport
    /// failures only; a deny is returned at once (the caller keeps serving and refusing
    /// writes, and says so).
    fn obtain_more(&self, wanted: &[u32]) -> Result<keyward_keystore::MasterKeys, MasterKeyError> {
        let mut n: u32 = 0;
        let r = loop {
            n += 1;
            match self.agent.release_with(wanted, false) {
                Ok(r) => break r,
                Err(e) if e.is_policy_deny() || matches!(e, AgentError::Denied { .. }) => {
                    (self.status)(&format!(
                        "phase=release running: a fresh release for master-key versions {wanted:?} \
                         was denied: {}",
                        error_chain(&e)
                    ));
                    return Err(MasterKeyError::Release(Box::new(e)));
                }
                Err(e) if n >= RUNNING_ATTEMPTS => {
                    return Err(MasterKeyError::Release(Box::new(e)));
                }
                Err(e) => {
                    let d = self.retry.delay(n - 1, &e).min(Duration::from_secs(2));
                    tracing::warn!(
                        error = %error_chain(&e),
                        "a fresh master-key release failed; retrying in {:.1}s",
                        d.as_secs_f64()
                    );
                    std::thread::sleep(d);
                }
            }
        };
        (self.status)(&format!(
            "phase=release running: released master-key version {} (and {:?}; receipt log index {})",
            r.receipt.key_version,
            r.also.iter().map(|a| a.0).collect::<Vec<_>>(),
            r.receipt.log_index
        ));
        let crate::client::Released {
            key, also, receipt, ..
        } = r;
        let mut keys = keyward_keystore::MasterKeys::new(receipt.key_version, key);
        for (v, k) in also {
            keys.insert(v, k);
        }
        Ok(keys)
    }

    /// The released key, with the head the KRS holds for this deployment (from the signed
    /// receipt) as the floor and the KRS, through this boot's registered key, as the anchor.
    fn obtain_fresh(&self) -> Result<(Key32, keyward_keystore::Freshness), MasterKeyError> {
        let r = self
            .obtain_with_retry()
            .map_err(|e| MasterKeyError::Release(Box::new(e)))?;
        let freshness = self.freshness(&r)?;
        Ok((r.key, freshness))
    }
}

impl ReleaseSource {
    /// The floor (the head in the receipt) and the anchor (the KRS through this boot's key).
    fn freshness(
        &self,
        r: &crate::client::Released,
    ) -> Result<keyward_keystore::Freshness, MasterKeyError> {
        let Some(boot_key) = r.boot_key.clone() else {
            tracing::warn!(
                "the KRS registered no boot key (it keeps no store heads): the key store has no \
                 freshness anchor, an older copy of it cannot be told from the newest"
            );
            return Ok(keyward_keystore::Freshness::Unanchored);
        };
        let pins = crate::client::parse_pins(&self.agent.cfg)
            .map_err(|e| MasterKeyError::Release(Box::new(e)))?;
        let anchor = crate::anchor::KrsAnchor::new(
            &crate::client::krs_addresses(&self.agent.cfg),
            pins.tls,
            r.receipt_spki.clone(),
            boot_key,
            Duration::from_secs(self.agent.cfg.timeout_secs.max(1)),
        );
        Ok(keyward_keystore::Freshness::Anchored {
            floor: r.receipt.head.clone(),
            anchor: Arc::new(anchor),
        })
    }
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
        let transport = AgentError::Connect {
            krs: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        for n in 0..40 {
            let d = r.delay(n, &transport);
            let full = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
                .min(Duration::from_secs(2));
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
        }
        assert!(r.delay(30, &transport) <= Duration::from_secs(2));
        let deny = AgentError::Denied {
            code: keyward_krp::DenyCode::Measurement.number(),
            receipt_verified: true,
        };
        assert!(deny.is_policy_deny());
        assert_eq!(r.delay(0, &deny), Duration::from_secs(300));
        let replay = AgentError::Denied {
            code: keyward_krp::DenyCode::SessionExpired.number(),
            receipt_verified: true,
        };
        assert!(!replay.is_policy_deny());
    }

    /// The jitter is there: two boots retrying on the same schedule do not wake in step (the
    /// integration test `krs_misbehaving::the_retry_loop_survives_…` checks each delay's window
    /// as printed and waited; this checks that the delays within a window differ).
    #[test]
    fn delays_in_one_window_are_spread_not_fixed() {
        let r = Retry {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            policy_deny_delay: Duration::from_secs(300),
            max_attempts: None,
        };
        let transport = AgentError::NoAddress("x".into());
        let d: Vec<u128> = (0..200)
            .map(|_| r.delay(5, &transport).as_millis())
            .collect();
        let distinct: std::collections::BTreeSet<_> = d.iter().collect();
        // 200 draws from the 16,001 values of [16 s, 32 s] in ms: fewer than 150 distinct ones
        // means the draw is not uniform (or not random at all).
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
        let (lo, hi) = (d.iter().min().unwrap(), d.iter().max().unwrap());
        assert!(*lo >= 16_000 && *hi <= 32_000, "{lo}..{hi}");
        assert!(hi - lo > 8_000, "spread {lo}..{hi}");
    }
}
