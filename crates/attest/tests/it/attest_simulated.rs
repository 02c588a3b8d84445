//! The simulated SNP attester: its reports verify through the same SNP verifier as real ones,
//! but only under a policy that names the test root; the built-in policy refuses them, a
//! wrong REPORT_DATA or measurement is refused, and it binds the live runtime value.

use std::time::{Instant, SystemTime};

use keyward_attest::live::{runtime_binding, runtime_binding_value};
use keyward_attest::Attester;
use keyward_attest::{SimulatedSnpAttester, DEMO_MEASUREMENT};
use keyward_verify::testsign::test_root_policy_toml;
use keyward_verify::{verify_bundle, EvidenceBundle, Expectations, Policy, Status};

fn failed(v: &keyward_verify::Verdict) -> Vec<String> {
    v.checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn simulated_reports_verify_only_under_the_test_root() {
    let t0 = Instant::now();
    let att = SimulatedSnpAttester::new(DEMO_MEASUREMENT).unwrap();
    eprintln!("simulated attester start: {:?}", t0.elapsed());
    assert_eq!(att.name(), "simulated-snp");

    let nonce = [7u8; 32];
    let spki = [9u8; 32];
    let binding = runtime_binding(&nonce, &spki);
    let mut bundle = EvidenceBundle {
        version: 1,
        ..Default::default()
    };
    att.attest(&binding, &mut bundle).unwrap();
    let snp = bundle.snp.as_ref().unwrap();
    assert_eq!(snp.report.len(), 1184);
    assert_eq!(
        &snp.report[0x50..0x90],
        &runtime_binding_value(&nonce, &spki)[..]
    );

    let toml = format!(
        "format = 1\n[snp]\nbuiltin_amd_roots = false\nmeasurements = [\"{}\"]\n{}",
        hex::encode(DEMO_MEASUREMENT),
        test_root_policy_toml()
    );
    let policy = Policy::from_bytes(toml.as_bytes()).unwrap();
    let expect = Expectations {
        report_data: Some(runtime_binding_value(&nonce, &spki)),
        ..Default::default()
    };
    let v = verify_bundle(&bundle, &policy, &expect, SystemTime::now());
    assert!(v.ok(), "{:#?}", v.checks);

    // Wrong binding (another XKS key).
    let other = Expectations {
        report_data: Some(runtime_binding_value(&nonce, &[0u8; 32])),
        ..Default::default()
    };
    let v = verify_bundle(&bundle, &policy, &other, SystemTime::now());
    assert!(!v.ok());
    assert!(
        failed(&v).iter().any(|n| n.contains("report_data")),
        "{:?}",
        failed(&v)
    );

    // The built-in policy (AMD roots only) refuses the test root.
    let v = verify_bundle(
        &bundle,
        &Policy::builtin_default(),
        &expect,
        SystemTime::now(),
    );
    assert!(!v.ok(), "test root accepted by the built-in policy");

    // Another measurement is refused.
    let toml2 = toml.replace(&hex::encode(DEMO_MEASUREMENT), &hex::encode([1u8; 48]));
    let v = verify_bundle(
        &bundle,
        &Policy::from_bytes(toml2.as_bytes()).unwrap(),
        &expect,
        SystemTime::now(),
    );
    assert!(!v.ok());
}
