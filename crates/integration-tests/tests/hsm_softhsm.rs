//! The HSM layer against a real SoftHSMv2 token: key creation, the master key is not readable,
//! the in-HSM release wrap unwraps on the agent side to the same master key the fallback path
//! sees, and the receipt signature verifies outside the token. A missing SoftHSMv2 (or any tool
//! the tests run) fails with its package name.

use keyward_integration_tests::common;

use keyward_hsm::{Hsm, HsmConfig, PinSource};
use keyward_krp::transcript::p384_spki_der;
use keyward_krp::EphemeralKey;

fn open(t: &common::Token) -> Hsm {
    // The module reads SOFTHSM2_CONF from this process's environment; every test in this file
    // uses the same variable name, so they run in one test function.
    std::env::set_var("SOFTHSM2_CONF", &t.conf);
    std::env::set_var("TEST_HSM_PIN", &t.pin);
    Hsm::open(&HsmConfig {
        module: t.module.clone(),
        token_label: t.label.clone(),
        pin: PinSource {
            pin_file: None,
            pin_env: Some("TEST_HSM_PIN".into()),
        },
        master_key_label: "keyward-master".into(),
        receipt_key_label: "keyward-receipt".into(),
    })
    .unwrap()
}

#[test]
fn softhsm_master_key_wrap_and_receipts() {
    let tok = common::softhsm_token("hsm-test");
    let hsm = open(&tok);
    hsm.init_keys().unwrap();
    // A second init refuses to overwrite.
    assert!(hsm.init_keys().is_err());

    let caps = hsm.capabilities();
    assert!(
        caps.in_hsm_wrap(),
        "SoftHSM should offer ECDH/ENCRYPT_DATA/KEY_WRAP: {caps:?}"
    );
    assert!(caps.ecdsa);

    // CKA_VALUE of the master key is not readable.
    assert!(hsm.master_is_sensitive().unwrap());
    let read = hsm.try_read_master_value();
    assert!(read.is_err(), "reading CKA_VALUE must fail");
    let msg = read.unwrap_err().to_string();
    assert!(msg.contains("CKA_VALUE"), "{msg}");

    // In-HSM wrap to an agent key, bound to T.
    let agent = EphemeralKey::generate();
    let t = [0x5au8; 48];
    let w = hsm.release_wrap(&agent.public_sec1(), &t).unwrap();
    assert_eq!(w.hsm_epk.len(), 97);
    assert_eq!(w.wrapped.len(), 40);
    let mk = agent.unwrap_hsm(&w.hsm_epk, &t, &w.wrapped).unwrap();
    // Another T or another agent key cannot unwrap it.
    assert!(agent
        .unwrap_hsm(&w.hsm_epk, &[0u8; 48], &w.wrapped)
        .is_err());
    assert!(EphemeralKey::generate()
        .unwrap_hsm(&w.hsm_epk, &t, &w.wrapped)
        .is_err());
    // A second release gives a different blob (fresh HSM ephemeral key) of the same key.
    let w2 = hsm.release_wrap(&agent.public_sec1(), &t).unwrap();
    assert_ne!(w2.wrapped, w.wrapped);
    assert_eq!(
        *agent.unwrap_hsm(&w2.hsm_epk, &t, &w2.wrapped).unwrap(),
        *mk
    );

    // The fallback export sees the same master key.
    let exported = hsm.export_master_for_fallback().unwrap();
    assert_eq!(*exported, *mk);

    // Receipt signatures verify with the public key read from the token.
    let spki = p384_spki_der(&hsm.receipt_public_key().unwrap()).unwrap();
    let body = b"receipt bytes";
    let d = keyward_krp::receipt_digest(body);
    let sig = hsm.sign_digest(&d).unwrap();
    assert_eq!(sig.len(), 96);
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::pkcs8::DecodePublicKey;
    let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    vk.verify_prehash(&d, &p384::ecdsa::Signature::from_slice(&sig).unwrap())
        .unwrap();
}

/// A tool the tests need and cannot find fails the test with the package that provides it
/// (crates/integration-tests/src/tools.rs), never a silent pass.
#[test]
fn a_missing_tool_fails_naming_its_package() {
    assert!(common::tools::find("keyward-no-such-tool").is_none());
    let e = std::panic::catch_unwind(|| common::tools::need("keyward-no-such-tool", "pkg-x"))
        .expect_err("need() must fail for a missing tool");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.starts_with("keyward-no-such-tool not found: apt-get install pkg-x"),
        "{msg}"
    );
}
