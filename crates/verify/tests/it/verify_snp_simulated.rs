//! The verifier against reports from the test signer (testsign): every policy branch, the
//! Turin FMC layout, CRLs (revoked ASK, revoked VEK, stale, wrong signer), and a fuzz test
//! that feeds random and mutated bytes to the parser and the verifier.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_verify::snp::Tcb;
use keyward_verify::testsign::{
    test_root_policy_toml, CrlSpec, ReportBuilder, SimulatedPlatform, TestCa, VekSpec,
};
use keyward_verify::{verify_snp_report, Expectations, Policy, Status, Verdict};
use keyward_verify::{Product, SignerKind};

const MEAS: [u8; 48] = [0x11; 48];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000) // 2026-05-28
}

fn tcb(fmc: Option<u8>, bl: u8, tee: u8, snp: u8, ucode: u8) -> Tcb {
    Tcb {
        fmc,
        bootloader: bl,
        tee,
        snp,
        microcode: ucode,
        raw: [0; 8],
    }
}

/// A policy that trusts the test root, with extra `[snp]` lines.
fn policy(snp_lines: &str) -> Policy {
    let text = format!(
        "format = 1\n[snp]\n{snp_lines}\n{}",
        test_root_policy_toml()
    );
    Policy::from_bytes(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn status(v: &Verdict, name: &str) -> Status {
    v.check(name)
        .unwrap_or_else(|| panic!("no check {name}\n{}", v.to_table()))
        .status
}

fn failed(v: &Verdict) -> Vec<String> {
    v.checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.clone())
        .collect()
}

fn verify(report: &[u8], certs: &[Vec<u8>], p: &Policy) -> Verdict {
    verify_snp_report(report, certs, p, &Expectations::default(), now())
}

fn milan() -> SimulatedPlatform {
    SimulatedPlatform::with(
        Product::Milan,
        SignerKind::Vcek,
        tcb(None, 4, 0, 22, 213),
        [7; 64],
        MEAS,
    )
    .unwrap()
}

#[test]
fn simulated_report_verifies_only_when_the_policy_names_the_test_root() {
    let p = milan();
    let rep = p.report(&[9; 64]);
    let v = verify(&rep, &p.certs, &policy(""));
    assert!(v.ok(), "{}", v.to_table());
    assert!(v
        .check("snp.chain.ark")
        .unwrap()
        .detail
        .contains("keyward TEST ARK"));
    // Default policy: the given test ARK is not pinned.
    let v = verify(&rep, &p.certs, &Policy::builtin_default());
    assert!(!v.ok());
    assert_eq!(status(&v, "snp.chain.ark"), Status::Failed);
    assert!(unique_names(&v), "{}", v.to_table());
    // Only the VEK given: AMD's built-in ASK does not name it.
    let v = verify(&rep, &p.certs[..1], &Policy::builtin_default());
    assert_eq!(status(&v, "snp.chain.intermediate"), Status::Failed);
    // Policy trusts the test root by PEM: the VEK and intermediate suffice.
    let v = verify(&rep, &p.certs[..2], &policy(""));
    assert!(v.ok(), "{}", v.to_table());
}

#[test]
fn tcb_minimums_below_equal_above() {
    let p = milan();
    let rep = p.report(&[0; 64]);
    for (min, ok) in [
        ("bootloader = 4, snp = 22, microcode = 213", true),
        ("bootloader = 3, microcode = 200", true),
        ("microcode = 214", false),
        ("snp = 23", false),
        ("tee = 1", false),
    ] {
        let v = verify(
            &rep,
            &p.certs,
            &policy(&format!("min_reported_tcb = {{ {min} }}")),
        );
        assert_eq!(
            status(&v, "snp.reported_tcb") == Status::Passed,
            ok,
            "{min}\n{}",
            v.to_table()
        );
        assert_eq!(v.ok(), ok);
    }
    // Committed and launch TCB minimums apply to their own fields.
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &p.tcb);
    b.chip_id(&p.chip_id)
        .committed_tcb(&tcb(None, 4, 0, 21, 213))
        .launch_tcb(&tcb(None, 4, 0, 20, 213));
    let rep = p.sign(&b);
    let v = verify(
        &rep,
        &p.certs,
        &policy("min_committed_tcb = { snp = 22 }\nmin_launch_tcb = { snp = 20 }"),
    );
    assert_eq!(
        failed(&v),
        vec!["snp.committed_tcb".to_string()],
        "{}",
        v.to_table()
    );
    let v = verify(&rep, &p.certs, &policy("min_launch_tcb = { snp = 21 }"));
    assert_eq!(failed(&v), vec!["snp.launch_tcb".to_string()]);
}

#[test]
fn measurement_allowed_or_not() {
    let p = milan();
    let rep = p.report(&[0; 64]);
    let good = hex::encode(MEAS);
    let other = hex::encode([0x22u8; 48]);
    let v = verify(
        &rep,
        &p.certs,
        &policy(&format!("measurements = [\"{other}\", \"{good}\"]")),
    );
    assert_eq!(status(&v, "snp.measurement"), Status::Passed);
    let v = verify(
        &rep,
        &p.certs,
        &policy(&format!("measurements = [\"{other}\"]")),
    );
    assert_eq!(failed(&v), vec!["snp.measurement".to_string()]);
}

#[test]
fn vek_extensions_must_equal_reported_tcb() {
    let ca = TestCa::load().unwrap();
    let key = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let mut spec = VekSpec::new(Product::Milan, SignerKind::Vcek, tcb(None, 4, 0, 22, 212));
    spec.hw_id = Some(vec![7; 64]);
    let vek = ca.vek(&spec, &key).unwrap();
    let certs = vec![
        vek,
        ca.intermediate(Product::Milan, SignerKind::Vcek).unwrap(),
    ];
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &tcb(None, 4, 0, 22, 213));
    b.chip_id(&[7; 64]);
    let v = verify(&b.sign(&key), &certs, &policy(""));
    assert_eq!(
        failed(&v),
        vec!["snp.vek_tcb".to_string()],
        "{}",
        v.to_table()
    );
    assert!(v
        .check("snp.vek_tcb")
        .unwrap()
        .detail
        .contains("ucode: VEK 212, REPORTED_TCB 213"));
    // A VEK without hwID, or with another chip's.
    spec.tcb = tcb(None, 4, 0, 22, 213);
    spec.hw_id = None;
    let vek = ca.vek(&spec, &key).unwrap();
    let v = verify(&b.sign(&key), &[vek, certs[1].clone()], &policy(""));
    assert_eq!(failed(&v), vec!["snp.hwid".to_string()]);
    spec.hw_id = Some(vec![8; 64]);
    let vek = ca.vek(&spec, &key).unwrap();
    let v = verify(&b.sign(&key), &[vek, certs[1].clone()], &policy(""));
    assert_eq!(failed(&v), vec!["snp.hwid".to_string()]);
}

#[test]
fn turin_fmc_layout() {
    let t = tcb(Some(3), 5, 1, 24, 77);
    let p = SimulatedPlatform::with(Product::Turin, SignerKind::Vcek, t, [5; 64], MEAS).unwrap();
    let rep = p.report(&[0; 64]);
    // FMC first, microcode last: bytes 3,5,1,24,0,0,0,77.
    assert_eq!(&rep[0x180..0x188], &[3, 5, 1, 24, 0, 0, 0, 77]);
    let v = verify(
        &rep,
        &p.certs,
        &policy("min_reported_tcb = { fmc = 3, snp = 24 }"),
    );
    assert!(v.ok(), "{}", v.to_table());
    assert!(v
        .check("snp.vek_tcb")
        .unwrap()
        .detail
        .contains("fmc 3 / bl 5 / tee 1 / snp 24 / ucode 77"));
    assert!(v.check("snp.hwid").unwrap().detail.contains("8 bytes"));
    let v = verify(&rep, &p.certs, &policy("min_reported_tcb = { fmc = 4 }"));
    assert_eq!(failed(&v), vec!["snp.reported_tcb".to_string()]);
    // A Milan-layout reading of the same bytes would not match the VEK: flip FMC.
    let mut b = ReportBuilder::new(
        Product::Turin,
        SignerKind::Vcek,
        &tcb(Some(2), 5, 1, 24, 77),
    );
    b.chip_id(&[5; 64]);
    let v = verify(&p.sign(&b), &p.certs, &policy(""));
    assert_eq!(failed(&v), vec!["snp.vek_tcb".to_string()]);
    assert!(v
        .check("snp.vek_tcb")
        .unwrap()
        .detail
        .contains("fmc: VEK 3, REPORTED_TCB 2"));
}

#[test]
fn genoa_and_vlek_and_versions() {
    let p = SimulatedPlatform::with(
        Product::Genoa,
        SignerKind::Vlek,
        tcb(None, 9, 0, 21, 72),
        [0; 64],
        MEAS,
    )
    .unwrap();
    let rep = p.report(&[0; 64]);
    let v = verify(&rep, &p.certs, &policy(""));
    assert_eq!(failed(&v), vec!["snp.csp_id".to_string()]);
    let v = verify(
        &rep,
        &p.certs,
        &policy("allowed_csp_ids = [\"CN=keyward-simulated.test\"]"),
    );
    assert!(v.ok(), "{}", v.to_table());
    let v = verify(
        &rep,
        &p.certs,
        &policy("allowed_csp_ids = [\"CN=keyward-simulated.test\"]\nsigners = [\"vcek\"]"),
    );
    assert_eq!(failed(&v), vec!["snp.signer".to_string()]);
    let v = verify(
        &rep,
        &p.certs,
        &policy("allowed_csp_ids = [\"CN=keyward-simulated.test\"]\nproducts = [\"milan\"]"),
    );
    assert_eq!(failed(&v), vec!["snp.product".to_string()]);
    // Versions 2 and 5 parse; 5 only when the policy lists it.
    let m = milan();
    for ver in [2u32, 4, 5] {
        let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
        b.chip_id(&m.chip_id).version(ver);
        let v = verify(&m.sign(&b), &m.certs, &policy(""));
        assert!(v.ok(), "v{ver}\n{}", v.to_table());
        let v = verify(&m.sign(&b), &m.certs, &policy("report_versions = [3]"));
        assert_eq!(failed(&v), vec!["snp.version".to_string()]);
    }
    // CPUID naming another product than the VEK's issuer.
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
    b.chip_id(&m.chip_id).cpuid(0x19, 0x11, 1);
    let v = verify(&m.sign(&b), &m.certs, &policy(""));
    assert_eq!(failed(&v), vec!["snp.product".to_string()]);
    // KEY_INFO saying VLEK for a VCEK-signed report.
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
    b.chip_id(&m.chip_id).signer_bits(1);
    let v = verify(&m.sign(&b), &m.certs, &policy(""));
    assert!(
        failed(&v).contains(&"snp.product".to_string()),
        "{}",
        v.to_table()
    );
}

#[test]
fn non_negotiable_checks_whatever_the_policy() {
    let m = milan();
    type Mutate = Box<dyn Fn(&mut ReportBuilder)>;
    let cases: [(&str, Mutate, &str); 6] = [
        (
            "debug",
            Box::new(|b| {
                b.policy(0x30000 | 1 << 19);
            }),
            "snp.debug",
        ),
        (
            "migrate",
            Box::new(|b| {
                b.policy(0x30000 | 1 << 18);
            }),
            "snp.migrate_ma",
        ),
        (
            "bit17",
            Box::new(|b| {
                b.policy(0x10000);
            }),
            "snp.policy_bits",
        ),
        (
            "unknown",
            Box::new(|b| {
                b.policy(0x30000 | 1 << 40);
            }),
            "snp.policy_bits",
        ),
        (
            "no signer",
            Box::new(|b| {
                b.signer_bits(7);
            }),
            "snp.signer",
        ),
        (
            "sig algo",
            Box::new(|b| {
                b.set_byte(0x34, 2);
            }),
            "snp.sig_algo",
        ),
    ];
    // The most permissive policy the format allows.
    let lax = policy("allowed_vmpls = [0, 1, 2, 3]\nallowed_csp_ids = [\"x\"]");
    for (what, f, check) in cases {
        let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
        b.chip_id(&m.chip_id);
        f(&mut b);
        let v = verify(&m.sign(&b), &m.certs, &lax);
        assert!(!v.ok(), "{what} accepted");
        assert_eq!(
            status(&v, check),
            Status::Failed,
            "{what}\n{}",
            v.to_table()
        );
    }
    // MASK_CHIP_KEY: not signed.
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
    b.chip_id(&m.chip_id).set_byte(0x48, 2);
    let v = verify(&m.sign(&b), &m.certs, &lax);
    assert_eq!(status(&v, "snp.signer"), Status::Failed);
}

#[test]
fn vmpl_guest_policy_platform_svn_host_data() {
    let m = milan();
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
    b.chip_id(&m.chip_id)
        .vmpl(2)
        .guest_svn(5)
        .platform_info(0b11)
        .host_data(&[3; 32]);
    let rep = m.sign(&b);
    let v = verify(&rep, &m.certs, &policy(""));
    assert_eq!(failed(&v), vec!["snp.vmpl".to_string()]);
    let mut p = policy("");
    p.allow_vmpl(2);
    let v = verify(&rep, &m.certs, &p);
    assert!(v.ok(), "{}", v.to_table());
    assert!(v
        .check("snp.vmpl")
        .unwrap()
        .detail
        .contains("VMPL 2, allowed by the policy"));
    let base = "allowed_vmpls = [2]\n";
    for (rules, check) in [
        ("min_guest_svn = 6", "snp.guest_svn"),
        ("[snp.platform]\ntsme_enabled = false", "snp.platform_info"),
        (
            "[snp.platform]\nciphertext_hiding_enabled = true",
            "snp.platform_info",
        ),
        (
            "[snp.guest_policy]\nsingle_socket = true",
            "snp.guest_policy",
        ),
        ("[snp.guest_policy]\nsmt = false", "snp.guest_policy"),
        ("[snp.guest_policy]\nmin_abi_major = 1", "snp.guest_policy"),
        (
            &format!("host_data = [\"{}\"]", hex::encode([4u8; 32])),
            "snp.host_data",
        ),
    ] {
        let v = verify(&rep, &m.certs, &policy(&format!("{base}{rules}")));
        assert_eq!(
            failed(&v),
            vec![check.to_string()],
            "{rules}\n{}",
            v.to_table()
        );
    }
    for rules in [
        "min_guest_svn = 5",
        "[snp.platform]\ntsme_enabled = true\nsmt_enabled = true",
        "[snp.guest_policy]\nsmt = true\nsingle_socket = false",
        &format!("host_data = [\"{}\"]", hex::encode([3u8; 32])),
    ] {
        let v = verify(&rep, &m.certs, &policy(&format!("{base}{rules}")));
        assert!(v.ok(), "{rules}\n{}", v.to_table());
    }
}

#[test]
fn expired_intermediate_refused() {
    let ca = TestCa::load().unwrap();
    let m = milan();
    let old = ca
        .intermediate_with(
            Product::Milan,
            SignerKind::Vcek,
            &[9],
            UNIX_EPOCH + Duration::from_secs(1_500_000_000),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
    let v = verify(&m.report(&[0; 64]), &[m.certs[0].clone(), old], &policy(""));
    assert_eq!(failed(&v), vec!["snp.chain.intermediate".to_string()]);
    assert!(v
        .check("snp.chain.intermediate")
        .unwrap()
        .detail
        .contains("expired"));
}

fn crl(ca: &TestCa, revoked: Vec<Vec<u8>>, next_update: SystemTime) -> Vec<u8> {
    ca.crl(
        &CrlSpec {
            revoked,
            this_update: now() - Duration::from_secs(86_400),
            next_update,
        },
        None,
    )
    .unwrap()
}

fn verify_crl(
    rep: &[u8],
    certs: &[Vec<u8>],
    p: &Policy,
    crls: Vec<Vec<u8>>,
    at: SystemTime,
) -> Verdict {
    let e = Expectations {
        crls,
        ..Default::default()
    };
    verify_snp_report(rep, certs, p, &e, at)
}

#[test]
fn crls_revoke_ask_and_vek_and_go_stale() {
    let ca = TestCa::load().unwrap();
    let key = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let t = tcb(None, 4, 0, 22, 213);
    let mut spec = VekSpec::new(Product::Milan, SignerKind::Vcek, t);
    spec.hw_id = Some(vec![7; 64]);
    spec.serial = vec![0x42, 0x01];
    let certs = vec![
        ca.vek(&spec, &key).unwrap(),
        ca.intermediate(Product::Milan, SignerKind::Vcek).unwrap(),
    ];
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &t);
    b.chip_id(&[7; 64]);
    let rep = b.sign(&key);
    let p = policy("");
    let week = now() + Duration::from_secs(7 * 86_400);

    // A fresh CRL listing something else: passes.
    let v = verify_crl(
        &rep,
        &certs,
        &p,
        vec![crl(&ca, vec![vec![0x77]], week)],
        now(),
    );
    assert_eq!(status(&v, "snp.crl"), Status::Passed, "{}", v.to_table());
    assert!(v.ok());
    // Revoked ASK (serial 01 00 01).
    let v = verify_crl(
        &rep,
        &certs,
        &p,
        vec![crl(&ca, vec![vec![1, 0, 1]], week)],
        now(),
    );
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    assert!(v
        .check("snp.crl")
        .unwrap()
        .detail
        .contains("revokes CN=SEV-Milan"));
    // Revoked VEK.
    let v = verify_crl(
        &rep,
        &certs,
        &p,
        vec![crl(&ca, vec![vec![0x42, 0x01]], week)],
        now(),
    );
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    assert!(v
        .check("snp.crl")
        .unwrap()
        .detail
        .contains("revokes CN=SEV-VCEK"));
    // Stale: nextUpdate passed; acceptable again within the policy's grace.
    let stale = crl(&ca, vec![], now() - Duration::from_secs(3600));
    let v = verify_crl(&rep, &certs, &p, vec![stale.clone()], now());
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    assert!(v.check("snp.crl").unwrap().detail.contains("stale"));
    let v = verify_crl(
        &rep,
        &certs,
        &policy("[snp.crl]\ngrace_seconds = 7200"),
        vec![stale],
        now(),
    );
    assert!(v.ok(), "{}", v.to_table());
    // Wrong signer: names the ARK, signed by the ASK key.
    let forged = ca
        .crl(
            &CrlSpec {
                revoked: vec![],
                this_update: now(),
                next_update: week,
            },
            Some(ca.ask_key()),
        )
        .unwrap();
    let v = verify_crl(&rep, &certs, &p, vec![forged], now());
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    assert!(v
        .check("snp.crl")
        .unwrap()
        .detail
        .contains("not signed by that ARK"));
    // Required but absent; a CRL from another root (AMD's) does not count.
    let req = policy("[snp.crl]\nrequired = true");
    let v = verify_crl(&rep, &certs, &req, vec![], now());
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    // Garbage CRL bytes fail rather than being ignored.
    let v = verify_crl(&rep, &certs, &p, vec![vec![0x30, 0x03, 1, 2, 3]], now());
    assert_eq!(failed(&v), vec!["snp.crl".to_string()]);
    // Not required and absent: skipped with a warning.
    let v = verify_crl(&rep, &certs, &p, vec![], now());
    assert_eq!(status(&v, "snp.crl"), Status::Skipped);
}

/// Each check appears once per verdict.
fn unique_names(v: &Verdict) -> bool {
    let mut names: Vec<&str> = v.checks.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    names.len() == n
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn fixture() -> &'static (Vec<u8>, Vec<Vec<u8>>, Policy) {
        static F: OnceLock<(Vec<u8>, Vec<Vec<u8>>, Policy)> = OnceLock::new();
        F.get_or_init(|| {
            let m = milan();
            (m.report(&[1; 64]), m.certs.clone(), policy(""))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(report in proptest::collection::vec(any::<u8>(), 0..1300),
                                    cert in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (_, _, p) = fixture();
            let v = verify_snp_report(&report, std::slice::from_ref(&cert), p, &Expectations { crls: vec![cert.clone()], ..Default::default() }, now());
            prop_assert!(!v.ok());
            prop_assert!(unique_names(&v));
        }

        #[test]
        fn random_policies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                       text in "[a-z_=\\[\\]\"0-9 \n{},.]{0,200}") {
            let _ = Policy::from_bytes(&bytes);
            let _ = Policy::from_bytes(format!("format = 1\n{text}").as_bytes());
            let _ = keyward_verify::refvalues::ReferenceValues::from_json(&bytes);
        }

        #[test]
        fn mutated_reports_and_certs_never_panic_and_fail(idx in 0usize..1184, val in any::<u8>(),
                                                          which in 0usize..3, cidx in 0usize..2000, cval in any::<u8>()) {
            let (rep, certs, p) = fixture();
            let mut r = rep.clone();
            let mut c = certs.clone();
            if r[idx] != val {
                r[idx] = val;
            }
            let before = c[which].clone();
            let i = cidx % c[which].len();
            c[which][i] = cval;
            let v = verify_snp_report(&r, &c, p, &Expectations::default(), now());
            // Any change inside the signed region, or to a certificate, must not verify.
            if (idx < 0x2A0 && rep[idx] != val) || (c[which] != before && which < 2) {
                prop_assert!(!v.ok(), "mutation accepted: report[{idx:#x}]={val:#x} cert{which}[{i}]={cval:#x}");
            }
            prop_assert!(unique_names(&v), "{}", v.to_table());
        }
    }
}

#[test]
fn bundle_report_data_field_is_informational() {
    use keyward_evidence::{EvidenceBundle, SnpEvidence};
    let m = milan();
    let bundle = |field: [u8; 64]| EvidenceBundle {
        version: 1,
        report_data: Some(field.to_vec()),
        snp: Some(SnpEvidence {
            report: m.report(&[1; 64]),
            certs: m.certs.clone(),
        }),
        tpm: None,
        nitro: None,
        audit_key: None,
    };
    let e = Expectations::default();
    let v = keyward_verify::verify_bundle(&bundle([1; 64]), &policy(""), &e, now());
    assert!(v.ok() && !v.warnings.iter().any(|w| w.contains("informational")));
    let v = keyward_verify::verify_bundle(&bundle([2; 64]), &policy(""), &e, now());
    assert!(v.ok(), "{}", v.to_table());
    assert!(v.warnings.iter().any(|w| w.contains("informational")));
    // A bundle from a newer format is refused.
    let mut b = bundle([1; 64]);
    b.version = 2;
    let v = keyward_verify::verify_bundle(&b, &policy(""), &e, now());
    assert_eq!(failed(&v), vec!["bundle.version".to_string()]);
}

#[test]
fn id_block_keys() {
    let m = milan();
    let mut b = ReportBuilder::new(Product::Milan, SignerKind::Vcek, &m.tcb);
    b.chip_id(&m.chip_id).id_key_digest(&[0x1D; 48]);
    let no_author = m.sign(&b);
    b.author_key_digest(&[0xA7; 48]);
    let with_author = m.sign(&b);
    let id = hex::encode([0x1Du8; 48]);
    let au = hex::encode([0xA7u8; 48]);
    let other = hex::encode([0u8; 48]);
    let v = verify(
        &with_author,
        &m.certs,
        &policy(&format!(
            "id_key_digests = [\"{id}\"]\nauthor_key_digests = [\"{au}\"]"
        )),
    );
    assert!(v.ok(), "{}", v.to_table());
    assert_eq!(status(&v, "snp.id_key"), Status::Passed);
    let v = verify(
        &with_author,
        &m.certs,
        &policy(&format!("id_key_digests = [\"{other}\"]")),
    );
    assert_eq!(failed(&v), vec!["snp.id_key".to_string()]);
    let v = verify(
        &with_author,
        &m.certs,
        &policy(&format!("author_key_digests = [\"{other}\"]")),
    );
    assert_eq!(failed(&v), vec!["snp.author_key".to_string()]);
    let v = verify(
        &no_author,
        &m.certs,
        &policy(&format!("author_key_digests = [\"{au}\"]")),
    );
    assert_eq!(failed(&v), vec!["snp.author_key".to_string()]);
    assert!(v
        .check("snp.author_key")
        .unwrap()
        .detail
        .contains("AUTHOR_KEY_EN is 0"));
}
