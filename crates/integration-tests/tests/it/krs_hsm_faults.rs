//! Fault injection at the HSM seam: a [`KeyBackend`] wrapper around the KRS's software stand-in
//! ([`SoftKeys`]) that fails the release wrap or the receipt signature on demand, with the
//! errors a PKCS#11 token gives when its session dies (`CKR_SESSION_CLOSED`) or it refuses new
//! ones (`CKR_SESSION_COUNT`, CloudHSM's "maximum number of sessions"). The real embedded KRS
//! `Service` serves it over TLS and the real agent asks it for a release (simulated SNP
//! evidence): the agent gets a typed error, not a key; the release log stays verifiable; and
//! the next request after the HSM recovers is released.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use keyward_hsm::{Capabilities, HsmError, HsmWrap, KeyBackend};
use keyward_krs::SoftKeys;
use zeroize::Zeroizing;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fail {
    /// Every wrap or export of the master key: the session died.
    Wrap,
    /// Every receipt signature: no session can be opened.
    Sign,
}

struct Flaky {
    soft: SoftKeys,
    fail: Arc<Mutex<Option<Fail>>>,
}

impl Flaky {
    fn check(&self, at: Fail) -> Result<(), HsmError> {
        if *self.fail.lock().unwrap() == Some(at) {
            return Err(match at {
                Fail::Wrap => HsmError::Call {
                    op: "C_DeriveKey",
                    source: Error::Pkcs11(RvError::SessionClosed, Function::DeriveKey),
                },
                Fail::Sign => HsmError::Call {
                    op: "C_OpenSession",
                    source: Error::Pkcs11(RvError::SessionCount, Function::OpenSession),
                },
            });
        }
        Ok(())
    }
}

impl KeyBackend for Flaky {
    fn capabilities(&self) -> Capabilities {
        self.soft.capabilities()
    }
    fn master_key_id(&self) -> &str {
        self.soft.master_key_id()
    }
    fn receipt_public_key(&self) -> Result<Vec<u8>, HsmError> {
        self.soft.receipt_public_key()
    }
    fn sign_digest(&self, digest: &[u8; 48]) -> Result<Vec<u8>, HsmError> {
        self.check(Fail::Sign)?;
        self.soft.sign_digest(digest)
    }
    fn release_wrap(&self, epk: &[u8], t: &[u8]) -> Result<HsmWrap, HsmError> {
        self.check(Fail::Wrap)?;
        self.soft.release_wrap(epk, t)
    }
    fn export_master_for_fallback(&self) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        self.check(Fail::Wrap)?;
        self.soft.export_master_for_fallback()
    }
    fn master_key_versions(&self) -> Result<Vec<u32>, HsmError> {
        self.soft.master_key_versions()
    }
    fn release_wrap_version(&self, v: u32, epk: &[u8], t: &[u8]) -> Result<HsmWrap, HsmError> {
        self.check(Fail::Wrap)?;
        self.soft.release_wrap_version(v, epk, t)
    }
    fn export_master_version(&self, v: u32) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        self.check(Fail::Wrap)?;
        self.soft.export_master_version(v)
    }
}

#[test]
fn hsm_session_faults_deny_cleanly_and_the_next_release_works() {
    let tmp = tempfile::tempdir().unwrap();
    let fail = Arc::new(Mutex::new(None));
    let soft = SoftKeys::open_or_create(tmp.path()).unwrap();
    let receipt_spki = keyward_krp::spki_from_sec1(&soft.receipt_public_key().unwrap()).unwrap();
    let krs = keyward_krs::embedded::start_with_backend(
        tmp.path(),
        &[keyward_attest::DEMO_MEASUREMENT],
        Box::new(Flaky {
            soft,
            fail: Arc::clone(&fail),
        }),
        "software",
        &[],
    )
    .unwrap();
    let release = keyward_config::ReleaseConfig {
        agent: krs.agent.clone(),
        tpm_tcti: None,
        retry_initial_ms: 100,
        retry_max_secs: 1,
        policy_deny_retry_secs: 1,
        max_attempts: 1,
    };
    let agent = keyward_agent::Agent {
        cfg: krs.agent.clone(),
        attesters: keyward_appliance::build_attesters(&release).unwrap(),
        product_release: "test-image".into(),
    };
    let timeout = Duration::from_secs(krs.agent.timeout_secs);

    // A good release first: the setup works.
    let first = agent
        .release()
        .unwrap_or_else(|e| panic!("baseline release: {e:?}"));

    for f in [Fail::Wrap, Fail::Sign] {
        *fail.lock().unwrap() = Some(f);
        let t0 = Instant::now();
        let err = match agent.release() {
            Ok(_) => panic!("{f:?}: released a key while the HSM failed"),
            Err(e) => e,
        };
        assert!(t0.elapsed() < timeout, "{f:?}: took {:?}", t0.elapsed());
        let shown = format!("{err}: {err:?}");
        eprintln!("{f:?}: {shown}");
        match (f, &err) {
            // The wrap failed after the session: a deny the KRS signs (the receipt key works).
            (
                Fail::Wrap,
                keyward_agent::AgentError::Denied {
                    receipt_verified, ..
                },
            ) => {
                assert!(*receipt_verified, "{shown}")
            }
            // No signature at all: an unsigned deny or a protocol error, never a key.
            (
                Fail::Sign,
                keyward_agent::AgentError::Denied {
                    receipt_verified, ..
                },
            ) => {
                assert!(!*receipt_verified, "{shown}")
            }
            (Fail::Sign, keyward_agent::AgentError::Protocol(_)) => {}
            _ => panic!("{f:?}: unexpected error {shown}"),
        }
        if f == Fail::Wrap {
            // The KRS's own log names what the HSM said (the agent only gets the code): the
            // call and cryptoki's text for CKR_SESSION_CLOSED.
            let log = std::fs::read_to_string(&krs.log).unwrap();
            assert!(log.contains("PKCS#11 C_DeriveKey"), "{log}");
            assert!(log.contains("The session was closed"), "{log}");
        }
        // The release log still verifies under the receipt key.
        keyward_krs::verify_release_log(&krs.log, &receipt_spki)
            .unwrap_or_else(|e| panic!("{f:?}: release log no longer verifies: {e}"));
    }

    // The HSM recovers: the next request is released, the same master key.
    *fail.lock().unwrap() = None;
    let again = agent
        .release()
        .unwrap_or_else(|e| panic!("after recovery: {e:?}"));
    assert_eq!(again.key.expose(), first.key.expose());
    let sum = keyward_krs::verify_release_log(&krs.log, &receipt_spki).unwrap();
    assert_eq!(sum.releases, 2, "{sum:?}");
    assert!(sum.denies >= 1, "{sum:?}");
}
