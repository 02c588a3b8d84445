//! KRP/1 end to end over loopback: the real `keyward krs serve` on its own SoftHSMv2 token,
//! the library's boot agent with simulated SNP evidence (the test signer's platform, trusted by
//! the signed policy through the test root), the in-HSM wrap and the HPKE fallback giving the
//! same master key, refusals by the verifier (each with its reason in the KRS log and its code
//! in a signed deny receipt, and no key material sent), a fake KRS's receipts rejected before
//! unwrapping, and the released key held in locked memory.

use crate::common;

use std::time::Duration;

use keyward_agent::{accept_release, parse_pins, Agent, AgentError, Client};
use keyward_attest::SimulatedSnpAttester;
use keyward_attest::{AttestError, Attester, Binding};
use keyward_evidence::{EvidenceBundle, SnpEvidence};
use keyward_krp::cbor::to_canonical;
use keyward_krp::messages::{Evidence, Hello, Request, Response, WrapMode};
use keyward_krp::transcript;
use keyward_krp::EphemeralKey;
use keyward_krp::{receipt_digest, DenyCode, Receipt};
use keyward_verify::snp::Tcb;
use keyward_verify::testsign::{test_root_policy_toml, ReportBuilder, SimulatedPlatform};
use keyward_verify::{Product, SignerKind};

const MEAS: [u8; 48] = [0x11; 48];

/// Simulated SNP evidence with the DEBUG policy bit set (otherwise honest).
struct DebugReport {
    platform: SimulatedPlatform,
}

impl Attester for DebugReport {
    fn name(&self) -> &'static str {
        "simulated-snp"
    }
    fn attest(&self, b: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError> {
        let p = &self.platform;
        let mut rb = ReportBuilder::new(p.product, p.signer, &p.tcb);
        rb.report_data(&b.report_data)
            .measurement(&p.measurement)
            .chip_id(&p.chip_id)
            .policy(0x30000 | (1 << 19));
        bundle.snp = Some(SnpEvidence {
            report: p.sign(&rb),
            certs: p.certs.clone(),
        });
        Ok(())
    }
}

fn tcb(snp: u8) -> Tcb {
    Tcb {
        fmc: None,
        bootloader: 4,
        tee: 0,
        snp,
        microcode: 213,
        raw: [0; 8],
    }
}

fn platform(meas: [u8; 48], snp_tcb: u8) -> SimulatedPlatform {
    let mut chip = [0u8; 64];
    chip[0] = 7;
    SimulatedPlatform::with(Product::Milan, SignerKind::Vcek, tcb(snp_tcb), chip, meas).unwrap()
}

fn agent(f: &common::KrsFixture, addr: &str, sim: impl Attester + 'static) -> Agent {
    Agent {
        cfg: f.agent_config(addr),
        attesters: vec![Box::new(sim)],
        product_release: "keyward-test".into(),
    }
}

/// The attest helper's simulated SNP attester on a platform with the allowed measurement.
fn honest() -> SimulatedSnpAttester {
    SimulatedSnpAttester::from_platform(platform(MEAS, 22))
}

fn fixture(label: &str) -> Option<common::KrsFixture> {
    let f = common::KrsFixture::new(label, "")?;
    let text = common::policy_text_full(
        2,
        &[hex::encode(MEAS)],
        &format!(
            "{}\n[snp.min_reported_tcb]\nsnp = 20\n",
            test_root_policy_toml()
        ),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    Some(f)
}

fn expect_deny(
    f: &common::KrsFixture,
    r: Result<keyward_agent::Released, AgentError>,
    code: DenyCode,
    check: &str,
) {
    match r {
        Err(AgentError::Denied {
            code: c,
            receipt_verified,
        }) => {
            assert_eq!(c, code.number(), "expected {}", code.name());
            assert!(
                receipt_verified,
                "the deny receipt must verify with the pinned key"
            );
        }
        Err(e) => panic!("expected a deny, got {e}"),
        Ok(_) => panic!("key material was released"),
    }
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["decision"], "deny");
    assert_eq!(last["reason"], code.name(), "{last}");
    assert!(
        last["detail"].as_str().unwrap().starts_with(check),
        "expected check {check}: {last}"
    );
}

#[test]
fn release_end_to_end_with_refusals() {
    let Some(f) = fixture("release-e2e") else {
        return;
    };
    let krs = f.serve();
    let addr = krs.addr.clone();

    // The released key lives in locked memory.
    let report = keyward_secret::init(keyward_secret::MemoryPolicy::default())
        .expect("key memory must be lockable here (RLIMIT_MEMLOCK)");
    assert!(report.locked);

    // A verified release, in the HSM.
    let r1 = agent(&f, &addr, honest()).release().unwrap();
    assert_eq!(r1.mode, WrapMode::HsmEcdhAesKw);
    assert_eq!(r1.receipt.decision, "release");
    let vmlck = keyward_secret::locked_bytes().unwrap();
    assert!(vmlck > 0, "VmLck is {vmlck}");
    // Another platform instance (another VEK) with the same measurement gets the same key.
    let r2 = agent(&f, &addr, honest()).release().unwrap();
    assert_eq!(r1.key.expose(), r2.key.expose());
    assert_ne!(r1.receipt.t, r2.receipt.t);
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["decision"], "release");
    assert_eq!(last["index"], r2.receipt.log_index);

    // Refusals by the verifier, each with its own reason and code.
    let wrong = SimulatedSnpAttester::from_platform(platform([0x22; 48], 22));
    expect_deny(
        &f,
        agent(&f, &addr, wrong).release(),
        DenyCode::Measurement,
        "snp.measurement",
    );
    let debug = DebugReport {
        platform: platform(MEAS, 22),
    };
    expect_deny(
        &f,
        agent(&f, &addr, debug).release(),
        DenyCode::GuestPolicy,
        "snp.debug",
    );
    let old_tcb = SimulatedSnpAttester::from_platform(platform(MEAS, 18));
    expect_deny(
        &f,
        agent(&f, &addr, old_tcb).release(),
        DenyCode::TcbTooLow,
        "snp.reported_tcb",
    );

    // Evidence bound to another ephemeral key: genuine evidence for epk A, sent with epk B.
    let pins = parse_pins(&f.agent_config(&addr)).unwrap();
    let mut c = Client::connect(&addr, pins.tls, Duration::from_secs(5)).unwrap();
    let hello = Hello {
        v: 1,
        platform: "simulated-snp".into(),
        product_release: "keyward-test".into(),
        algs: vec![],
        pins: pins.pins.clone(),
        key_versions: None,
    };
    let Response::Challenge(ch) = c.call(&Request::Hello(hello.clone())).unwrap() else {
        panic!("no challenge")
    };
    let a = EphemeralKey::generate();
    let b = EphemeralKey::generate();
    let t_a = transcript::transcript(&hello, &ch, &a.public_sec1()).unwrap();
    let binding = transcript::binding(
        &t_a,
        &ch.nonce,
        &transcript::p384_spki_der(&a.public_sec1()).unwrap(),
    );
    let mut bundle = EvidenceBundle {
        version: 1,
        ..Default::default()
    };
    honest().attest(&binding, &mut bundle).unwrap();
    let ev = Evidence {
        v: 1,
        session_id: ch.session_id.clone(),
        epk: b.public_sec1(),
        policy_digest: ch.policy_digest.clone(),
        evidence: to_canonical(&bundle).unwrap(),
        boot_key: vec![],
    };
    let resp = c.call(&Request::Evidence(ev)).unwrap();
    let Response::Deny(d) = resp else {
        panic!("key material was released for evidence bound to another key")
    };
    assert_eq!(d.code, DenyCode::EvidenceBinding.number());
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["reason"], "evidence_binding");
    assert!(last["detail"]
        .as_str()
        .unwrap()
        .starts_with("snp.report_data"));

    // A fake KRS: take a genuine Release and change what it names; the agent refuses each
    // before unwrapping.
    let Response::Challenge(ch) = c.call(&Request::Hello(hello.clone())).unwrap() else {
        panic!("no challenge")
    };
    let esk = EphemeralKey::generate();
    let t = transcript::transcript(&hello, &ch, &esk.public_sec1()).unwrap();
    let binding = transcript::binding(
        &t,
        &ch.nonce,
        &transcript::p384_spki_der(&esk.public_sec1()).unwrap(),
    );
    let mut bundle = EvidenceBundle {
        version: 1,
        ..Default::default()
    };
    honest().attest(&binding, &mut bundle).unwrap();
    let ev = Evidence {
        v: 1,
        session_id: ch.session_id.clone(),
        epk: esk.public_sec1(),
        policy_digest: ch.policy_digest.clone(),
        evidence: to_canonical(&bundle).unwrap(),
        boot_key: vec![],
    };
    let Response::Release(rel) = c.call(&Request::Evidence(ev.clone())).unwrap() else {
        panic!("honest evidence was not released")
    };
    // Genuine: accepted, and the same master key.
    let ok = accept_release(&esk, &ch, &ev, &t, &rel).unwrap();
    assert_eq!(ok.key.expose(), r1.key.expose());
    // Receipt signed by another key (the fake KRS's own).
    let fake_key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let mut forged = rel.clone();
    let sig: p384::ecdsa::Signature = p384::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(
        &fake_key,
        &receipt_digest(&forged.receipt),
    )
    .unwrap();
    forged.signature = sig.to_bytes().to_vec();
    assert!(matches!(
        accept_release(&esk, &ch, &ev, &t, &forged),
        Err(AgentError::BadReceipt(_))
    ));
    // Another wrapped blob (an attacker-known master key) under the genuine receipt.
    let mut swapped = rel.clone();
    swapped.wrapped_mk[0] ^= 1;
    let e = accept_release(&esk, &ch, &ev, &t, &swapped).unwrap_err();
    assert!(e.to_string().contains("wrapped blob"), "{e}");
    // Another HSM ephemeral key.
    let mut swapped = rel.clone();
    swapped.hsm_epk = EphemeralKey::generate().public_sec1();
    let e = accept_release(&esk, &ch, &ev, &t, &swapped).unwrap_err();
    assert!(e.to_string().contains("HSM ephemeral key"), "{e}");
    // The receipt is the KRS's own, for this T.
    let r = Receipt::decode(&rel.receipt).unwrap();
    assert_eq!(r.t, t.to_vec());

    // The whole log verifies offline.
    drop(c);
    drop(krs);
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");
    assert!(out.contains("\"releases\":3"), "{out}");

    // Restart with the HPKE fallback forced: the same master key, and the fallback is said in
    // the receipt and in the KRS's log.
    let cfg = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        cfg.replacen("[hsm]", "wrap = \"hpke\"\n[hsm]", 1),
    )
    .unwrap();
    let krs = f.serve();
    let r3 = agent(&f, &krs.addr, honest()).release().unwrap();
    assert_eq!(r3.mode, WrapMode::HpkeFallback);
    assert_eq!(r3.receipt.mode, Some(WrapMode::HpkeFallback));
    assert_eq!(r3.key.expose(), r1.key.expose());
    std::thread::sleep(Duration::from_millis(100));
    assert!(krs.stderr().contains("hpke-fallback"), "{}", krs.stderr());
    drop(krs);
    assert!(f.log_verify(&f.log_path()).0);
}
