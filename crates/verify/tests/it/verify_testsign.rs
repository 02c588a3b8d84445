//! The test signer's fixtures: the committed generator (ignored; run once) and checks that
//! the committed test root loads, matches its pin, and is trusted only when a policy names it.

use keyward_verify::testsign::{TestCa, TEST_ARK_SHA256};

/// Generates attestation/test-roots/ (three RSA-4096 keys and the self-signed test ARK).
/// Run once: `cargo test --test verify_testsign -- --ignored generate_test_roots`.
#[test]
#[ignore]
fn generate_test_roots() {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let dir = crate::repo().join("attestation/test-roots");
    let mut rng = rand::rngs::OsRng;
    let gen = || rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 4096).unwrap();
    let _ = &mut rng;
    let (ark, ask, asvk) = (gen(), gen(), gen());
    let pem = |k: &rsa::RsaPrivateKey| k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    std::fs::write(dir.join("test_ark.key.pem"), pem(&ark)).unwrap();
    std::fs::write(dir.join("test_ask.key.pem"), pem(&ask)).unwrap();
    std::fs::write(dir.join("test_asvk.key.pem"), pem(&asvk)).unwrap();
    let ca = TestCa::from_keys(ark, ask, asvk).unwrap();
    let der = ca.ark_der().to_vec();
    let cert_pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &der).unwrap();
    std::fs::write(dir.join("test_ark.pem"), cert_pem).unwrap();
    use sha2::Digest;
    std::fs::write(
        dir.join("test_ark.sha256"),
        format!("{}\n", hex::encode(sha2::Sha256::digest(&der))),
    )
    .unwrap();
}

#[test]
fn committed_test_root_loads_and_matches_its_pin() {
    let ca = TestCa::load().expect("committed test root");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(ca.ark_der())),
        TEST_ARK_SHA256.trim()
    );
    let ark = keyward_verify::snp::Cert::from_der(ca.ark_der()).unwrap();
    assert!(ark.is_self_issued());
    assert!(ark.subject_cn().contains("TEST"));
    // Not one of AMD's pins.
    assert!(keyward_verify::snp::is_amd_ark(TEST_ARK_SHA256.trim()).is_none());
}
