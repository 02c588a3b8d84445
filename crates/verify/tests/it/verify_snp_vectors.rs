//! Every real SEV-SNP vector in tests/data/snp (copied from shared/testdata/snp) gives exactly
//! the outcome expected.json records, and mutations of them are refused with the right check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_verify::snp::split_cert_input;
use keyward_verify::{verify_snp_report, Expectations, Policy, Status, Verdict};

fn data(p: &str) -> Vec<u8> {
    let path = crate::repo().join("tests/data/snp").join(p);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64)
}

fn june() -> SystemTime {
    at("2025-06-01T00:00:00Z")
}

fn certs(files: &[&str]) -> Vec<Vec<u8>> {
    files
        .iter()
        .flat_map(|f| split_cert_input(&data(f)).unwrap())
        .collect()
}

fn run(report: &str, cert_files: &[&str], policy: &Policy, when: SystemTime) -> Verdict {
    verify_snp_report(
        &data(report),
        &certs(cert_files),
        policy,
        &Expectations::default(),
        when,
    )
}

fn status(v: &Verdict, name: &str) -> Status {
    v.check(name)
        .unwrap_or_else(|| panic!("no check {name} in\n{}", v.to_table()))
        .status
}

fn failed(v: &Verdict) -> Vec<String> {
    v.checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn virtee_milan_v2_verifies() {
    let v = run(
        "virtee-sev/report_milan.bin",
        &["virtee-sev/vcek_milan.der"],
        &Policy::builtin_default(),
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    for c in [
        "snp.signature",
        "snp.chain.ark",
        "snp.chain.intermediate",
        "snp.chain.vek",
        "snp.vek_tcb",
        "snp.hwid",
        "snp.debug",
    ] {
        assert_eq!(status(&v, c), Status::Passed, "{c}\n{}", v.to_table());
    }
}

/// expected.json: every case's recorded fields and check outcomes.
#[test]
fn expected_json_cases() {
    let exp: serde_json::Value = serde_json::from_slice(&data("expected.json")).unwrap();
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let report = case["report"].as_str().unwrap();
        let mut files: Vec<&str> = vec![case["endorsement_cert"].as_str().unwrap()];
        for f in case["trust_anchor_files"].as_array().unwrap() {
            files.push(f.as_str().unwrap());
        }
        let vmpl = case["vmpl"].as_u64().unwrap() as u32;
        let mut policy = Policy::builtin_default();
        if vmpl != 0 {
            policy.allow_vmpl(vmpl);
        }
        if case["signing_key"] == "VLEK" {
            policy.allow_csp("CN=cc-us-east-2.amazonaws.com");
        }
        let v = run(report, &files, &policy, june());
        let e = &case["expected"];
        let want = |b: &serde_json::Value| match b.as_bool() {
            Some(true) => Status::Passed,
            Some(false) => Status::Failed,
            None => Status::Skipped,
        };
        assert_eq!(
            status(&v, "snp.signature"),
            want(&e["report_signature_valid"]),
            "{report}"
        );
        assert_eq!(status(&v, "snp.chain.vek"), Status::Passed, "{report}");
        assert_eq!(
            status(&v, "snp.chain.intermediate"),
            want(&e["intermediate_signed_by_ark"]),
            "{report}"
        );
        assert_eq!(
            status(&v, "snp.chain.ark"),
            want(&e["ark_self_signed"]),
            "{report}"
        );
        assert_eq!(
            status(&v, "snp.vek_tcb"),
            want(&e["vek_tcb_extensions_match_reported_tcb"]),
            "{report}"
        );
        assert_eq!(
            status(&v, "snp.hwid"),
            want(&e["vek_hwid_matches_chip_id"]),
            "{report}"
        );
        let signed_by = e["vek_signed_by"].as_str().unwrap();
        assert!(
            v.check("snp.chain.vek")
                .unwrap()
                .detail
                .contains(&format!("signed by CN={signed_by}")),
            "{report}"
        );
        let rt = &case["reported_tcb"];
        let detail = &v.check("snp.vek_tcb").unwrap().detail;
        assert!(
            detail.contains(&format!(
                "bl {} / tee {} / snp {} / ucode {}",
                rt["bl"], rt["tee"], rt["snp"], rt["ucode"]
            )),
            "{report}: {detail}"
        );
        let debug = case["policy_debug_allowed"].as_bool().unwrap();
        assert_eq!(
            status(&v, "snp.debug"),
            if debug {
                Status::Failed
            } else {
                Status::Passed
            },
            "{report}"
        );
        // Every other check passes: the only failure a real vector may show is DEBUG.
        let expected_fail: Vec<String> = if debug {
            vec!["snp.debug".into()]
        } else {
            vec![]
        };
        assert_eq!(failed(&v), expected_fail, "{report}\n{}", v.to_table());
        // Parsed fields recorded in expected.json.
        let raw = data(report);
        let r = keyward_verify::snp::Report::parse(&raw).unwrap();
        assert_eq!(r.version() as u64, case["report_version"].as_u64().unwrap());
        assert_eq!(
            format!("{:#x}", r.policy()),
            case["policy_hex"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(r.measurement()),
            case["measurement"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(r.report_data()),
            case["report_data"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(r.host_data()),
            case["host_data"].as_str().unwrap()
        );
        assert_eq!(
            r.chip_id().iter().all(|b| *b == 0),
            case["chip_id_all_zero"].as_bool().unwrap()
        );
        let (ma, mi, b) = r.current_version();
        assert_eq!(
            format!("{ma}.{mi}.{b}"),
            case["firmware_current"].as_str().unwrap()
        );
    }
}

#[test]
fn debug_report_refused_for_debug() {
    let v = run(
        "go-sev-guest/attestation_milan_v2_debug.bin",
        &["go-sev-guest/vcek_milan.der"],
        &Policy::builtin_default(),
        june(),
    );
    assert_eq!(
        failed(&v),
        vec!["snp.debug".to_string()],
        "{}",
        v.to_table()
    );
    assert_eq!(v.exit_code(), 1);
}

const AWS_REPORT: &str = "trustee/aws_milan_vlek_report_v3_vmpl1.bin";
const AWS_VLEK: &str = "trustee/aws_milan_vlek.der";
const AWS_CSP: &str = "CN=cc-us-east-2.amazonaws.com";

#[test]
fn aws_vlek_refused_by_default_for_vmpl_and_csp() {
    // Only the VLEK: the built-in ASVK completes the chain.
    let v = run(AWS_REPORT, &[AWS_VLEK], &Policy::builtin_default(), june());
    assert_eq!(
        failed(&v),
        vec!["snp.csp_id".to_string(), "snp.vmpl".to_string()],
        "{}",
        v.to_table()
    );
    assert!(v
        .check("snp.vmpl")
        .unwrap()
        .detail
        .contains("VMPL 1 not allowed"));
}

#[test]
fn aws_vlek_accepted_with_vmpl1_and_its_csp_inside_validity() {
    let mut p = Policy::builtin_default();
    p.allow_vmpl(1);
    p.allow_csp(AWS_CSP);
    let v = run(AWS_REPORT, &[AWS_VLEK], &p, june());
    assert!(v.ok(), "{}", v.to_table());
    assert!(v
        .check("snp.vmpl")
        .unwrap()
        .detail
        .contains("allowed by the policy"));
    assert!(v.warnings.iter().any(|w| w.contains("widened")));
    // With the full AMD chain file given (ASK, ARK, ASVK): the ASVK is among the given.
    let v = run(
        AWS_REPORT,
        &[AWS_VLEK, "amd-roots/milan_ask_ark_asvk.pem"],
        &p,
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    // A different CSP id is refused.
    let mut q = Policy::builtin_default();
    q.allow_vmpl(1);
    q.allow_csp("CN=cc-eu-west-1.amazonaws.com");
    let v = run(AWS_REPORT, &[AWS_VLEK], &q, june());
    assert_eq!(failed(&v), vec!["snp.csp_id".to_string()]);
}

#[test]
fn aws_vlek_refused_after_its_validity() {
    let mut p = Policy::builtin_default();
    p.allow_vmpl(1);
    p.allow_csp(AWS_CSP);
    let v = run(AWS_REPORT, &[AWS_VLEK], &p, at("2025-12-11T00:00:00Z"));
    assert_eq!(
        failed(&v),
        vec!["snp.chain.vek".to_string()],
        "{}",
        v.to_table()
    );
    assert!(v
        .check("snp.chain.vek")
        .unwrap()
        .detail
        .contains("expired 2025-12-10T22:14:21Z"));
    // And before it.
    let v = run(AWS_REPORT, &[AWS_VLEK], &p, at("2024-12-01T00:00:00Z"));
    assert_eq!(failed(&v), vec!["snp.chain.vek".to_string()]);
}

#[test]
fn bad_signature_vceks_refused() {
    for bad in [
        "trustee/vcek_badsig_legacy_hwid.der",
        "trustee/vcek_badsig_der_hwid.der",
    ] {
        let v = run(
            "trustee/milan_vcek_report_v2.bin",
            &[bad],
            &Policy::builtin_default(),
            june(),
        );
        assert!(!v.ok());
        assert_eq!(
            status(&v, "snp.chain.vek"),
            Status::Failed,
            "{bad}\n{}",
            v.to_table()
        );
        assert!(v
            .check("snp.chain.vek")
            .unwrap()
            .detail
            .contains("not signed by"));
        // Both hwID encodings parse (the extension reader handles raw and DER-wrapped).
        let c = keyward_verify::snp::Cert::from_der(&data(bad)).unwrap();
        assert_eq!(c.hw_id().unwrap().unwrap().len(), 64, "{bad}");
        // With the full AMD chain as given intermediates, refused the same way.
        let v = run(
            "trustee/milan_vcek_report_v2.bin",
            &[bad, "amd-roots/milan_ask.pem", "amd-roots/milan_ark.pem"],
            &Policy::builtin_default(),
            june(),
        );
        assert_eq!(status(&v, "snp.chain.vek"), Status::Failed);
    }
}

#[test]
fn mutation_any_flipped_signed_byte_is_refused() {
    let raw = data("virtee-sev/report_milan.bin");
    let vcek = certs(&["virtee-sev/vcek_milan.der"]);
    let p = Policy::builtin_default();
    // Every 11th byte of the signed region plus both ends (a full sweep takes too long in debug).
    let mut offsets: Vec<usize> = (0..0x2A0).step_by(11).collect();
    offsets.extend([0x29F, 0x180]);
    for off in offsets {
        let mut m = raw.clone();
        m[off] ^= 0x01;
        let v = verify_snp_report(&m, &vcek, &p, &Expectations::default(), june());
        assert!(!v.ok(), "flipped byte {off:#x} accepted");
        assert_eq!(
            status(&v, "snp.signature"),
            Status::Failed,
            "offset {off:#x}"
        );
    }
    // A flip in the unused high bytes of R is refused, not ignored.
    let mut m = raw.clone();
    m[0x2A0 + 60] = 1;
    let v = verify_snp_report(&m, &vcek, &p, &Expectations::default(), june());
    assert!(v
        .check("snp.signature")
        .unwrap()
        .detail
        .contains("non-zero bytes above"));
}

#[test]
fn mutation_flipped_reported_tcb_breaks_tcb_match() {
    let mut raw = data("virtee-sev/report_milan.bin");
    raw[0x180] ^= 0x01;
    let vcek = certs(&["virtee-sev/vcek_milan.der"]);
    let v = verify_snp_report(
        &raw,
        &vcek,
        &Policy::builtin_default(),
        &Expectations::default(),
        june(),
    );
    assert_eq!(
        failed(&v),
        vec!["snp.vek_tcb".to_string(), "snp.signature".to_string()]
    );
    assert!(v
        .check("snp.vek_tcb")
        .unwrap()
        .detail
        .contains("bl: VEK 3, REPORTED_TCB 2"));
}

#[test]
fn mutation_ask_in_place_of_asvk() {
    let mut p = Policy::builtin_default();
    p.allow_vmpl(1);
    p.allow_csp(AWS_CSP);
    let v = run(
        AWS_REPORT,
        &[
            AWS_VLEK,
            "amd-roots/milan_ask.pem",
            "amd-roots/milan_ark.pem",
        ],
        &p,
        june(),
    );
    assert_eq!(
        status(&v, "snp.chain.intermediate"),
        Status::Failed,
        "{}",
        v.to_table()
    );
    assert!(v
        .check("snp.chain.intermediate")
        .unwrap()
        .detail
        .contains("none of the given intermediates"));
}

#[test]
fn mutation_wrong_ark() {
    // Milan VCEK and ASK with the Genoa ARK: the given root did not issue the ASK.
    let v = run(
        "virtee-sev/report_milan.bin",
        &[
            "virtee-sev/vcek_milan.der",
            "amd-roots/milan_ask.pem",
            "amd-roots/genoa_ark.pem",
        ],
        &Policy::builtin_default(),
        june(),
    );
    assert_eq!(
        status(&v, "snp.chain.intermediate"),
        Status::Failed,
        "{}",
        v.to_table()
    );
    assert!(!v.ok());
    // AMD's roots switched off and no other root pinned: refused.
    let p = Policy::from_bytes(b"format = 1\n[snp]\nbuiltin_amd_roots = false\n[[snp.roots]]\nname = \"other\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n").unwrap();
    let v = run(
        "virtee-sev/report_milan.bin",
        &[
            "virtee-sev/vcek_milan.der",
            "amd-roots/milan_ask.pem",
            "amd-roots/milan_ark.pem",
        ],
        &p,
        june(),
    );
    assert_eq!(
        status(&v, "snp.chain.ark"),
        Status::Failed,
        "{}",
        v.to_table()
    );
    assert!(v
        .check("snp.chain.ark")
        .unwrap()
        .detail
        .contains("not pinned"));
}

#[test]
fn mutation_swapped_vcek() {
    // The trustee report with another chip's (valid) VCEK.
    let v = run(
        "trustee/milan_vcek_report_v2.bin",
        &["go-sev-guest/vcek_milan.der"],
        &Policy::builtin_default(),
        june(),
    );
    assert_eq!(
        status(&v, "snp.signature"),
        Status::Failed,
        "{}",
        v.to_table()
    );
    assert_eq!(status(&v, "snp.hwid"), Status::Failed);
    assert_eq!(status(&v, "snp.chain.vek"), Status::Passed);
}

#[test]
fn chain_rules_given_certs() {
    let p = Policy::builtin_default();
    let r = "virtee-sev/report_milan.bin";
    // KDS cert_chain file (ASK then ARK) in any order with the VCEK.
    let v = run(
        r,
        &[
            "virtee-sev/cert_chain_milan.pem",
            "virtee-sev/vcek_milan.der",
        ],
        &p,
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    // An ARK alone does not count as an intermediate: the built-in ASK is used.
    let v = run(
        r,
        &["virtee-sev/vcek_milan.der", "amd-roots/milan_ark.pem"],
        &p,
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    // Unrelated given certificates (another VCEK, the Turin VCEK) are ignored.
    let v = run(
        r,
        &[
            "virtee-sev/vcek_milan.der",
            "virtee-sev/vcek_turin.der",
            "trustee/genoa_vcek.der",
        ],
        &p,
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    // Given intermediates none of which issued the VEK: refused even though the built-in would do.
    let v = run(
        r,
        &["virtee-sev/vcek_milan.der", "amd-roots/genoa_ask.pem"],
        &p,
        june(),
    );
    assert_eq!(status(&v, "snp.chain.intermediate"), Status::Failed);
    // No VEK at all.
    let v = run(r, &["amd-roots/milan_ask.pem"], &p, june());
    assert_eq!(status(&v, "snp.chain.vek"), Status::Failed);
    // Genoa v3 with its ASK and ARK as given, and the product from CPUID agrees.
    let v = run(
        "trustee/genoa_vcek_report_v3.bin",
        &["trustee/genoa_vcek.der", "amd-roots/genoa_ask_ark_asvk.pem"],
        &p,
        june(),
    );
    assert!(v.ok(), "{}", v.to_table());
    assert!(v.check("snp.product").unwrap().detail.contains("Genoa"));
}

#[test]
fn turin_vcek_and_chain_parse_and_verify() {
    use keyward_verify::snp::{amd_oid, Cert};
    let vcek = Cert::from_der(&data("virtee-sev/vcek_turin.der")).unwrap();
    assert_eq!(vcek.hw_id().unwrap().unwrap().len(), 8);
    assert!(vcek.spl(&amd_oid::FMC_SPL).unwrap().is_some());
    let chain = certs(&["virtee-sev/cert_chain_turin.pem"]);
    let ask = Cert::from_der(&chain[0]).unwrap();
    let ark = Cert::from_der(&chain[1]).unwrap();
    let key = |c: &Cert| match c.public_key().unwrap() {
        keyward_verify::snp::PublicKey::Rsa(k) => k,
        _ => panic!("not RSA"),
    };
    vcek.verify_signed_by(&key(&ask)).unwrap();
    ask.verify_signed_by(&key(&ark)).unwrap();
    ark.verify_signed_by(&key(&ark)).unwrap();
    assert!(vcek.verify_signed_by(&key(&ark)).is_err());
}

#[test]
fn expected_report_data_is_compared() {
    let raw = data("virtee-sev/report_milan.bin");
    let vcek = certs(&["virtee-sev/vcek_milan.der"]);
    let p = Policy::builtin_default();
    let mut e = Expectations::default();
    let mut rd = [0u8; 64];
    rd.copy_from_slice(&raw[0x50..0x90]);
    e.report_data = Some(rd);
    let v = verify_snp_report(&raw, &vcek, &p, &e, june());
    assert_eq!(status(&v, "snp.report_data"), Status::Passed);
    rd[63] ^= 1;
    e.report_data = Some(rd);
    let v = verify_snp_report(&raw, &vcek, &p, &e, june());
    assert_eq!(failed(&v), vec!["snp.report_data".to_string()]);
    // Default: skipped with a warning.
    let v = verify_snp_report(&raw, &vcek, &p, &Expectations::default(), june());
    assert_eq!(status(&v, "snp.report_data"), Status::Skipped);
    assert!(v
        .warnings
        .iter()
        .any(|w| w.contains("REPORT_DATA not checked")));
}

#[test]
fn default_policy_warnings() {
    let v = run(
        "virtee-sev/report_milan.bin",
        &["virtee-sev/vcek_milan.der"],
        &Policy::builtin_default(),
        june(),
    );
    for w in [
        "measurement not checked",
        "TCB not checked",
        "REPORT_DATA not checked",
        "revocation not checked",
    ] {
        assert!(
            v.warnings.iter().any(|x| x.contains(w)),
            "missing warning {w:?}: {:?}",
            v.warnings
        );
    }
}
