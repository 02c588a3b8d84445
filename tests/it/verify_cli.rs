//! `keyward verify` run as a process on saved files: every exit code (0 verified, 1 refused,
//! 2 usage or unreadable input), table and JSON output, bundles, PEM chains, CRL files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_evidence::{EvidenceBundle, SnpEvidence};
use keyward_verify::testsign::{test_root_policy_toml, CrlSpec, SimulatedPlatform, TestCa};

fn data(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/snp")
        .join(p)
        .display()
        .to_string()
}

fn keyward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const JUNE: &str = "2025-06-01T00:00:00Z";

#[test]
fn good_report_exits_0_with_table_and_json() {
    let r = data("virtee-sev/report_milan.bin");
    let c = data("virtee-sev/vcek_milan.der");
    let o = keyward(&["--report", &r, "--cert", &c, "--at", JUNE]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("PASS    snp.signature"), "{out}");
    assert!(out.contains("VERIFIED"));
    assert!(out.contains("warning: launch measurement not checked"));
    let o = keyward(&["--report", &r, "--cert", &c, "--at", JUNE, "--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified_at"], "2025-06-01T00:00:00Z");
    assert_eq!(v["policy_digest"].as_str().unwrap().len(), 96);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "snp.chain.ark" && c["status"] == "passed"));
    // Certificates in any order, PEM chain first.
    let o = keyward(&[
        "--report",
        &r,
        "--cert",
        &data("virtee-sev/cert_chain_milan.pem"),
        "--cert",
        &c,
        "--at",
        JUNE,
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn refused_reports_exit_1() {
    let o = keyward(&[
        "--report",
        &data("go-sev-guest/attestation_milan_v2_debug.bin"),
        "--cert",
        &data("go-sev-guest/vcek_milan.der"),
        "--at",
        JUNE,
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL    snp.debug"));
    // AWS VLEK report: default policy refuses (VMPL 1, CSP id); widened, accepted in validity.
    let r = data("trustee/aws_milan_vlek_report_v3_vmpl1.bin");
    let c = data("trustee/aws_milan_vlek.der");
    let o = keyward(&["--report", &r, "--cert", &c, "--at", JUNE]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let wide = [
        "--report",
        &r,
        "--cert",
        &c,
        "--allow-vmpl",
        "1",
        "--allow-csp",
        "CN=cc-us-east-2.amazonaws.com",
    ];
    let mut a = wide.to_vec();
    a.extend(["--at", JUNE]);
    let o = keyward(&a);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("policy widened on the command line"));
    let mut a = wide.to_vec();
    a.extend(["--at", "2026-01-01T00:00:00Z"]);
    let o = keyward(&a);
    assert_eq!(code(&o), 1, "{}", show(&o));
    // Garbage as a report: a verdict (exit 1), not a crash.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, [0xA5u8; 1000]).unwrap();
    let o = keyward(&["--report", junk.to_str().unwrap(), "--cert", &c]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    // Wrong expected REPORT_DATA.
    let o = keyward(&[
        "--report",
        &data("virtee-sev/report_milan.bin"),
        "--cert",
        &data("virtee-sev/vcek_milan.der"),
        "--at",
        JUNE,
        "--report-data",
        &"00".repeat(64),
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
}

#[test]
fn usage_and_unreadable_input_exit_2() {
    let r = data("virtee-sev/report_milan.bin");
    let c = data("virtee-sev/vcek_milan.der");
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("p.toml");
    std::fs::write(&bad_policy, "format = 1\n[snp]\nno_such_field = 1\n").unwrap();
    let not_cert = dir.path().join("x.pem");
    std::fs::write(
        &not_cert,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_json = dir.path().join("b.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--report", "/nonexistent/report.bin", "--cert", &c],
        vec!["--report", &r, "--cert", "/nonexistent/vcek.der"],
        vec!["--report", &r, "--cert", &c, "--at", "yesterday"],
        vec![
            "--report",
            &r,
            "--cert",
            &c,
            "--policy",
            bad_policy.to_str().unwrap(),
        ],
        vec!["--report", &r, "--cert", not_cert.to_str().unwrap()],
        vec!["--evidence", bad_json.to_str().unwrap()],
        vec!["--report", &r, "--no-such-flag"],
        vec!["--report", &r, "--cert", &c, "--report-data", "abcd"],
        vec!["--url", "https://127.0.0.1:1"],
        vec!["--report", &r, "--cert", &c, "--nonce", "zz"],
        vec![
            "--report",
            &r,
            "--cert",
            &c,
            "--public-key",
            "/nonexistent/key.der",
        ],
    ];
    for a in cases {
        let o = keyward(&a);
        assert_eq!(code(&o), 2, "{a:?}\n{}", show(&o));
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn bundle_with_policy_and_crl_files() {
    let dir = tempfile::tempdir().unwrap();
    let meas = [0x5Au8; 48];
    let plat = SimulatedPlatform::new(meas).unwrap();
    let rd = [0x33u8; 64];
    let bundle = EvidenceBundle {
        version: 1,
        report_data: Some(rd.to_vec()),
        snp: Some(SnpEvidence {
            report: plat.report(&rd),
            certs: plat.certs.clone(),
        }),
        tpm: None,
        nitro: None,
        audit_key: None,
    };
    let b = write(
        dir.path(),
        "bundle.json",
        serde_json::to_string_pretty(&bundle).unwrap().as_bytes(),
    );
    let policy = format!(
        "format = 1\npolicy_version = 3\nname = \"test\"\n[snp]\nmeasurements = [\"{}\"]\nmin_reported_tcb = {{ bootloader = 4, snp = 22, microcode = 213 }}\n[snp.crl]\nrequired = true\n{}",
        hex::encode(meas),
        test_root_policy_toml()
    );
    let p = write(dir.path(), "policy.toml", policy.as_bytes());
    // CRL required, none given: 1.
    let o = keyward(&["--evidence", &b, "--policy", &p]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    // A fresh CRL (PEM) revoking nothing: 0, and the digest printed is the policy file's.
    let ca = TestCa::load().unwrap();
    let now = std::time::SystemTime::now();
    let crl = ca
        .crl(
            &CrlSpec {
                revoked: vec![vec![9]],
                this_update: now - std::time::Duration::from_secs(60),
                next_update: now + std::time::Duration::from_secs(86_400),
            },
            None,
        )
        .unwrap();
    let pem = der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &crl).unwrap();
    let c = write(dir.path(), "crl.pem", pem.as_bytes());
    let o = keyward(&[
        "--evidence",
        &b,
        "--policy",
        &p,
        "--crl",
        &c,
        "--report-data",
        &hex::encode(rd),
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha384::digest(policy.as_bytes()));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&digest));
    // Under the default policy the simulated root is not trusted: 1.
    let o = keyward(&["--evidence", &b]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    // A bundle requiring NitroTPM evidence it does not carry: 1.
    let p2 = write(
        dir.path(),
        "p2.toml",
        policy
            .replace(
                "name = \"test\"",
                "required_evidence = [\"snp\", \"nitro\"]",
            )
            .as_bytes(),
    );
    // Without NitroTPM reference values the policy itself is refused (usage error, 2).
    let o = keyward(&["--evidence", &b, "--policy", &p2, "--crl", &c]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("policy field nitro:"));
    let p2 = write(
        dir.path(),
        "p2.toml",
        format!(
            "{}\n[nitro]\npcrs = [{{ pcr = 4, values = [\"{}\"] }}]\n",
            std::fs::read_to_string(&p2).unwrap(),
            "44".repeat(48)
        )
        .as_bytes(),
    );
    let o = keyward(&["--evidence", &b, "--policy", &p2, "--crl", &c]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL    bundle.required_evidence"));
}

#[test]
fn help_explains_exit_codes() {
    let o = keyward(&["--help"]);
    assert_eq!(code(&o), 0);
    let h = String::from_utf8_lossy(&o.stdout);
    for w in [
        "--evidence",
        "--report",
        "--allow-vmpl",
        "--allow-csp",
        "--at",
        "Exit codes",
        "AUDITORS.md",
    ] {
        assert!(h.contains(w), "help lacks {w}:\n{h}");
    }
}
