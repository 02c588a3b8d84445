//! Cross-check against an independent implementation: the `sev` 8 crate (crypto_nossl) must
//! agree with our verifier on the real vectors' chains and signatures, and must accept the
//! chains and reports our test signer produces (so the test signer is not only "right" by our
//! own verifier's standards).

use keyward_verify::snp::split_cert_input;
use keyward_verify::snp::Tcb;
use keyward_verify::testsign::{ReportBuilder, SimulatedPlatform, TestCa};
use keyward_verify::{Product, SignerKind};
use sev::certs::snp::{ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

fn data(p: &str) -> Vec<u8> {
    std::fs::read(crate::repo().join("tests/data/snp").join(p)).unwrap()
}

fn pem_certs(p: &str) -> Vec<Certificate> {
    split_cert_input(&data(p))
        .unwrap()
        .iter()
        .map(|d| Certificate::from_der(d).unwrap())
        .collect()
}

#[test]
fn sev_crate_agrees_on_real_vectors() {
    // (report, vek, chain file with [ASK|ASVK, ARK] indices)
    let cases = [
        (
            "virtee-sev/report_milan.bin",
            "virtee-sev/vcek_milan.der",
            "amd-roots/milan_ask_ark_asvk.pem",
            0,
        ),
        (
            "go-sev-guest/attestation_milan_v2_debug.bin",
            "go-sev-guest/vcek_milan.der",
            "amd-roots/milan_ask_ark_asvk.pem",
            0,
        ),
        (
            "trustee/milan_vcek_report_v2.bin",
            "trustee/milan_vcek.der",
            "amd-roots/milan_ask_ark_asvk.pem",
            0,
        ),
        (
            "trustee/aws_milan_vlek_report_v3_vmpl1.bin",
            "trustee/aws_milan_vlek.der",
            "amd-roots/milan_ask_ark_asvk.pem",
            2,
        ),
        (
            "trustee/genoa_vcek_report_v3.bin",
            "trustee/genoa_vcek.der",
            "amd-roots/genoa_ask_ark_asvk.pem",
            0,
        ),
    ];
    for (report, vek, chain, int_idx) in cases {
        let certs = pem_certs(chain);
        let chain = Chain {
            ca: ca::Chain {
                ark: certs[1].clone(),
                ask: certs[int_idx].clone(),
            },
            vek: Certificate::from_der(&data(vek)).unwrap(),
        };
        (&chain)
            .verify()
            .unwrap_or_else(|e| panic!("{report}: sev rejects the chain: {e}"));
        let raw = data(report);
        // sev refuses v2 reports with a masked CHIP_ID; none of these is.
        let parsed = AttestationReport::from_bytes(&raw).unwrap();
        (&chain, &parsed)
            .verify()
            .unwrap_or_else(|e| panic!("{report}: {e}"));
        // A flipped signed byte: both refuse.
        let mut m = raw.clone();
        m[0x90] ^= 1;
        let parsed = AttestationReport::from_bytes(&m).unwrap();
        assert!((&chain, &parsed).verify().is_err(), "{report}");
    }
    // The bad-signature VCEKs: sev refuses their chain too.
    let milan = pem_certs("amd-roots/milan_ask_ark_asvk.pem");
    for bad in [
        "trustee/vcek_badsig_legacy_hwid.der",
        "trustee/vcek_badsig_der_hwid.der",
    ] {
        let chain = Chain {
            ca: ca::Chain {
                ark: milan[1].clone(),
                ask: milan[0].clone(),
            },
            vek: Certificate::from_der(&data(bad)).unwrap(),
        };
        assert!((&chain).verify().is_err(), "{bad}");
    }
}

#[test]
fn sev_crate_accepts_the_test_signers_output() {
    let t = Tcb {
        fmc: None,
        bootloader: 4,
        tee: 0,
        snp: 22,
        microcode: 213,
        raw: [0; 8],
    };
    for signer in [SignerKind::Vcek, SignerKind::Vlek] {
        let p = SimulatedPlatform::with(Product::Milan, signer, t, [3; 64], [1; 48]).unwrap();
        let rep = p.report(&[2; 64]);
        let chain = Chain {
            ca: ca::Chain {
                ark: Certificate::from_der(&p.certs[2]).unwrap(),
                ask: Certificate::from_der(&p.certs[1]).unwrap(),
            },
            vek: Certificate::from_der(&p.certs[0]).unwrap(),
        };
        (&chain).verify().unwrap();
        let parsed = AttestationReport::from_bytes(&rep).unwrap();
        (&chain, &parsed).verify().unwrap();
        assert_eq!(parsed.report_data.as_slice(), &[2u8; 64][..]);
        assert_eq!(parsed.vmpl, 0);
        assert!(!parsed.policy.debug_allowed());
        // And a report signed by another key does not verify under that VEK.
        let other = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let mut b = ReportBuilder::new(Product::Milan, signer, &t);
        b.chip_id(&[3; 64]);
        let forged = AttestationReport::from_bytes(&b.sign(&other)).unwrap();
        assert!((&chain, &forged).verify().is_err());
    }
    // The CA loads and its ARK is self-signed per sev too.
    let ca = TestCa::load().unwrap();
    let ark = Certificate::from_der(ca.ark_der()).unwrap();
    (&ark, &ark).verify().unwrap();
}
