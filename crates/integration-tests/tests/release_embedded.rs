//! The embedded KRS of `keyward demo`: SoftHSMv2 under the state directory (when installed)
//! and the software stand-in; a second start on the same state directory releases the same
//! master key; the release log verifies.

use keyward_agent::Agent;
use keyward_attest::SimulatedSnpAttester;
use keyward_krs::embedded::{start, Backend};

const MEAS: [u8; 48] = [0x42; 48];

fn release(k: &keyward_krs::embedded::EmbeddedKrs, meas: [u8; 48]) -> Result<[u8; 32], String> {
    let a = Agent {
        cfg: k.agent.clone(),
        attesters: vec![Box::new(SimulatedSnpAttester::new(meas).unwrap())],
        product_release: "demo".into(),
    };
    a.release()
        .map(|r| *r.key.expose())
        .map_err(|e| e.to_string())
}

#[test]
fn embedded_krs_releases_the_same_key_after_restart() {
    for want in [Backend::Auto, Backend::Software] {
        let dir = tempfile::tempdir().unwrap();
        let k1 = start(dir.path(), &[MEAS], want).unwrap();
        if want == Backend::Software {
            assert_eq!(k1.backend, "software");
        }
        let key1 = release(&k1, MEAS).unwrap();
        // A measurement the policy does not list is refused.
        let e = release(&k1, [0x43; 48]).unwrap_err();
        assert!(e.contains("denied"), "{e}");
        // "Restart": a second KRS on the same state directory.
        let k2 = start(dir.path(), &[MEAS], want).unwrap();
        assert_ne!(k1.addr, k2.addr);
        assert_eq!(k1.agent.receipt_spki_sha256, k2.agent.receipt_spki_sha256);
        assert_eq!(k1.agent.krs_tls_spki_sha256, k2.agent.krs_tls_spki_sha256);
        let key2 = release(&k2, MEAS).unwrap();
        assert_eq!(key1, key2, "{want:?}");
        eprintln!("backend {}: same key after restart", k2.backend);
    }
}
