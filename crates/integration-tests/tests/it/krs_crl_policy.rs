//! Issue 12 section 4, replayed against the real `keyward krs serve` (SoftHSMv2 token of its
//! own), the real verifier and the test AMD signer (simulated SNP under the test ARK):
//! revocation is checked with the CRL files the KRS is configured with (a valid CRL releases,
//! a CRL revoking the VCEK or a stale one denies, a broken file denies, a changed file is
//! picked up without a restart); `krs crl fetch` takes CRLs from a KDS (a local HTTP server
//! here) only when the pinned ARK signed them and they are fresh and not older than the copy
//! in place; policies that would accept unmeasured evidence are refused by `krs policy sign`,
//! `krs policy check`, `krs serve` and `keyward verify`, naming the field, unless they opt
//! out; a policy replaced under the same version is refused; `krs policy check` warns when
//! nothing judges the deployment pins.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyward_agent::{Agent, AgentError};
use keyward_attest::{SimulatedSnpAttester, DEMO_MEASUREMENT};
use keyward_krp::DenyCode;
use keyward_verify::testsign::{test_root_policy_toml, CrlSpec, TestCa};

const CONSENT: &str = "I understand this accepts evidence no one measured";

/// A CRL by the test ARK: thisUpdate `this_ago` seconds ago, nextUpdate `next_in` seconds
/// from now (negative: in the past), listing `revoked` serials.
fn crl(revoked: Vec<Vec<u8>>, this_ago: u64, next_in: i64, signer_is_ask: bool) -> Vec<u8> {
    let ca = TestCa::load().unwrap();
    let now = SystemTime::now();
    let next_update = if next_in >= 0 {
        now + Duration::from_secs(next_in as u64)
    } else {
        now - Duration::from_secs((-next_in) as u64)
    };
    let spec = CrlSpec {
        revoked,
        this_update: now - Duration::from_secs(this_ago),
        next_update,
    };
    ca.crl(&spec, signer_is_ask.then(|| ca.ask_key())).unwrap()
}

fn pem(der: &[u8]) -> String {
    der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, der).unwrap()
}

/// Replace `path` the way an operator or `krs crl fetch` does (rename over it).
fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The default policy with the demo measurement, the test root and the shipped policies'
/// CRL rules (`required = true`, a day of grace).
fn crl_policy(version: u64) -> String {
    let t = common::policy_text_full(
        version,
        &[hex::encode(DEMO_MEASUREMENT)],
        &test_root_policy_toml(),
    );
    let t = t
        .replace("required = false", "required = true")
        .replace("grace_seconds = 0", "grace_seconds = 86400");
    assert!(t.contains("required = true") && t.contains("grace_seconds = 86400"));
    t
}

fn agent(f: &common::KrsFixture, addr: &str) -> Agent {
    Agent {
        cfg: f.agent_config(addr),
        attesters: vec![Box::new(
            SimulatedSnpAttester::new(DEMO_MEASUREMENT).unwrap(),
        )],
        product_release: "keyward-test".into(),
    }
}

fn expect_crl_deny(f: &common::KrsFixture, addr: &str, what: &str) {
    match agent(f, addr).release() {
        Err(AgentError::Denied {
            code,
            receipt_verified,
        }) => {
            assert_eq!(code, DenyCode::EvidenceChain.number());
            assert!(receipt_verified);
        }
        Err(e) => panic!("expected a deny, got {e}"),
        Ok(_) => panic!("released although {what}"),
    }
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["decision"], "deny");
    let detail = last["detail"].as_str().unwrap();
    assert!(detail.starts_with("snp.crl"), "{last}");
    assert!(detail.contains(what), "expected {what:?}: {last}");
}

#[test]
fn krs_checks_revocation_with_its_crl_files() {
    let dir = tempfile::tempdir().unwrap();
    let crl_file = dir.path().join("amd-crl.pem");
    let Some(f) = common::KrsFixture::new(
        "krs-crl",
        &format!("crl_files = [\"{}\"]", crl_file.display()),
    ) else {
        return;
    };
    // A CRL file that does not exist: the KRS does not start.
    f.sign_policy_text(2, &crl_policy(2), &f.policy_file);
    assert!(f.serve_refused().contains("amd-crl.pem"));

    // A valid CRL (revoking something else): the crl.required policy releases.
    install(
        &crl_file,
        pem(&crl(vec![vec![9]], 3600, 86_400, false)).as_bytes(),
    );
    let krs = f.serve();
    let addr = krs.addr.clone();
    let r = agent(&f, &addr).release().unwrap();
    assert_eq!(r.receipt.decision, "release");
    assert!(
        krs.stderr().contains("CRL ") && krs.stderr().contains("ARK-keyward-TEST"),
        "the CRL's age is reported at start: {}",
        krs.stderr()
    );

    // The VCEK's serial (0) revoked: picked up without a restart, denied.
    install(&crl_file, &crl(vec![vec![0]], 60, 86_400, false));
    expect_crl_deny(&f, &addr, "revokes CN=SEV-VCEK");

    // Past nextUpdate, inside the policy's grace: still accepted.
    install(&crl_file, &crl(vec![], 7 * 86_400, -3600, false));
    agent(&f, &addr).release().unwrap();

    // Past nextUpdate plus the grace: stale, denied.
    install(&crl_file, &crl(vec![], 7 * 86_400, -2 * 86_400, false));
    expect_crl_deny(&f, &addr, "stale");

    // A CRL naming the test ARK but signed by another key: denied.
    install(&crl_file, &crl(vec![], 60, 86_400, true));
    expect_crl_deny(&f, &addr, "not signed by that ARK");

    // A file that no longer parses: every appraisal fails closed.
    install(
        &crl_file,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    expect_crl_deny(&f, &addr, "unusable");

    // Fixed again: releases.
    install(&crl_file, &crl(vec![], 60, 86_400, false));
    agent(&f, &addr).release().unwrap();
    drop(krs);

    // `krs crl status`: the age of each CRL, exit 0 while fresh.
    let out = common::run_ok(
        f.cmd()
            .args(["krs", "crl", "status", "--config"])
            .arg(&f.config),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["stale"], false, "{v}");
    assert!(v["age_secs"].as_i64().unwrap() >= 60);
    assert!(v["signed_by"].as_str().unwrap().contains("TEST"), "{v}");
    install(&crl_file, &crl(vec![], 7 * 86_400, -3600, false));
    let out = f
        .cmd()
        .args(["krs", "crl", "status", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"stale\":true"));
}

#[test]
fn crl_required_policy_without_crl_files_denies_and_warns() {
    let Some(f) = common::KrsFixture::new("krs-no-crl", "") else {
        return;
    };
    f.sign_policy_text(2, &crl_policy(2), &f.policy_file);
    let out = f
        .cmd()
        .args(["krs", "policy", "check", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no crl_files"), "{err}");
    let krs = f.serve();
    expect_crl_deny(&f, &krs.addr, "policy requires a CRL");
}

/// A tiny HTTP/1.1 server on 127.0.0.1: path -> body (404 otherwise), one request per
/// connection.
fn kds(routes: Arc<Mutex<HashMap<String, Vec<u8>>>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let body = routes.lock().unwrap().get(&path).cloned();
            let (status, body) = match body {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn crl_fetch_takes_only_fresh_crls_signed_by_the_pinned_ark() {
    let dir = tempfile::tempdir().unwrap();
    let crl_file = dir.path().join("amd-crl.pem");
    let Some(f) = common::KrsFixture::new(
        "krs-crl-fetch",
        &format!("crl_files = [\"{}\"]", crl_file.display()),
    ) else {
        return;
    };
    // Milan VCEKs only: one URL.
    let text = crl_policy(2).replace(
        "products = [\"milan\", \"genoa\", \"turin\"]",
        "products = [\"milan\"]",
    );
    let text = text.replace("signers = [\"vcek\", \"vlek\"]", "signers = [\"vcek\"]");
    assert!(text.contains("products = [\"milan\"]") && text.contains("signers = [\"vcek\"]"));
    f.sign_policy_text(2, &text, &f.policy_file);

    let routes = Arc::new(Mutex::new(HashMap::new()));
    let base = kds(routes.clone());
    let path = "/vcek/v1/Milan/crl".to_string();
    let fetch = || {
        f.cmd()
            .args(["krs", "crl", "fetch", "--config"])
            .arg(&f.config)
            .args(["--kds-url", &base])
            .output()
            .unwrap()
    };
    let refused = |want: &str| {
        let before = std::fs::read(&crl_file).ok();
        let out = fetch();
        assert!(!out.status.success(), "fetch accepted a CRL that is {want}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "expected {want:?}: {err}");
        assert_eq!(std::fs::read(&crl_file).ok(), before, "the file changed");
    };

    // Nothing served: refused, no file.
    refused("404");
    // A CRL signed by the wrong key.
    routes
        .lock()
        .unwrap()
        .insert(path.clone(), crl(vec![], 60, 86_400, true));
    refused("not signed");
    // A stale CRL.
    routes
        .lock()
        .unwrap()
        .insert(path.clone(), crl(vec![], 7 * 86_400, -60, false));
    refused("nextUpdate");

    // A good one (DER, as AMD serves it): installed, tagged with its URL.
    routes
        .lock()
        .unwrap()
        .insert(path.clone(), crl(vec![vec![9]], 3600, 86_400, false));
    let out = fetch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["fetched"], format!("{base}{path}"));
    assert_eq!(v["revoked"], 1);
    let installed = std::fs::read_to_string(&crl_file).unwrap();
    assert!(installed.contains(&format!("# source: {base}{path}")));
    assert!(installed.contains("-----BEGIN X509 CRL-----"));

    // An older (but validly signed, fresh) CRL replayed: refused.
    routes
        .lock()
        .unwrap()
        .insert(path.clone(), crl(vec![], 86_400, 86_400, false));
    refused("older than the installed copy");

    // The installed file is what the KRS serves with: it releases.
    let krs = f.serve();
    agent(&f, &krs.addr).release().unwrap();
    drop(krs);

    // A newer one replaces it.
    routes
        .lock()
        .unwrap()
        .insert(path.clone(), crl(vec![vec![0]], 10, 86_400, false));
    let out = fetch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krs = f.serve();
    expect_crl_deny(&f, &krs.addr, "revokes CN=SEV-VCEK");
}

/// Sign `text` with the fixture's admin key through the library (bypassing the CLI's checks),
/// as an older keyward or another tool could have.
fn sign_raw(f: &common::KrsFixture, version: u64, text: &str) {
    let pem = std::fs::read_to_string(&f.admin_key).unwrap();
    let s = keyward_krs::sign_policy(&pem, "test", version, text.as_bytes()).unwrap();
    std::fs::write(&f.policy_file, serde_json::to_vec(&s).unwrap()).unwrap();
}

fn fails_naming(out: std::process::Output, field: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("policy field {field}:")) && err.contains("allow_unmeasured"),
        "expected a refusal naming {field}: {err}"
    );
}

#[test]
fn unmeasured_policies_are_refused_everywhere_unless_opted_out() {
    let Some(f) = common::KrsFixture::new("krs-unmeasured", "") else {
        return;
    };
    let base = common::policy_text(3, "").replace(common::ALLOW_UNMEASURED, "");
    assert!(!base.contains("allow_unmeasured"));
    let m = format!("\"{}\"", hex::encode(DEMO_MEASUREMENT));
    let cases = [
        (base.clone(), "snp.measurements"),
        (
            base.replace("required_evidence = [\"snp\"]", "required_evidence = []"),
            "required_evidence",
        ),
        (
            base.replace(
                "required_evidence = [\"snp\"]",
                "required_evidence = [\"nitro\"]",
            ),
            "nitro",
        ),
        (
            base.replace(
                "required_evidence = [\"snp\"]",
                "required_evidence = [\"snp\", \"nitro\"]",
            )
            .replace("measurements = []", &format!("measurements = [{m}]"))
                + "[nitro]\nmax_age = \"5m\"\n",
            "nitro.pcrs",
        ),
        (
            base.replace(
                "required_evidence = [\"snp\"]",
                "required_evidence = [\"tpm\"]",
            ) + "[tpm]\nregistered_aks = []\npcrs = [4, 7]\n",
            "tpm.allowed",
        ),
    ];
    for (text, field) in &cases {
        let p = f.dir.join("unmeasured.toml");
        std::fs::write(&p, text).unwrap();
        // `krs policy sign` refuses.
        let _ = std::fs::remove_file(&f.policy_file);
        fails_naming(
            f.cmd()
                .args(["krs", "policy", "sign", "--key"])
                .arg(&f.admin_key)
                .arg("--in")
                .arg(&p)
                .arg("--out")
                .arg(&f.policy_file)
                .output()
                .unwrap(),
            field,
        );
        assert!(!f.policy_file.exists());
        // Signed anyway, by other means: `krs policy check` and `krs serve` refuse.
        sign_raw(&f, 3, text);
        fails_naming(
            f.cmd()
                .args(["krs", "policy", "check", "--config"])
                .arg(&f.config)
                .output()
                .unwrap(),
            field,
        );
        fails_naming(
            f.cmd()
                .args(["krs", "serve", "--config"])
                .arg(&f.config)
                .output()
                .unwrap(),
            field,
        );
        // `keyward verify --policy` refuses (usage error, exit 2).
        let out = f
            .cmd()
            .args(["verify", "--report"])
            .arg(
                keyward_integration_tests::repo()
                    .join("tests/data/snp/virtee-sev/report_milan.bin"),
            )
            .arg("--cert")
            .arg(keyward_integration_tests::repo().join("tests/data/snp/virtee-sev/vcek_milan.der"))
            .arg("--policy")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        fails_naming(out, field);
    }
    // The opt-out: sign, check and serve accept it, check says what it gives up.
    let opted = base.replace(
        "required_evidence = [\"snp\"]",
        &format!("required_evidence = [\"snp\"]\nallow_unmeasured = \"{CONSENT}\""),
    );
    f.sign_policy_text(4, &opted, &f.policy_file);
    let out = f
        .cmd()
        .args(["krs", "policy", "check", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_unmeasured is set"));
    drop(f.serve());
    // A near-miss of the consent is not the consent.
    let p = f.dir.join("nearly.toml");
    std::fs::write(&p, opted.replace(CONSENT, "yes")).unwrap();
    let out = f
        .cmd()
        .args(["krs", "policy", "sign", "--key"])
        .arg(&f.admin_key)
        .arg("--in")
        .arg(&p)
        .arg("--out")
        .arg(f.dir.join("nearly.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy field allow_unmeasured"));
}

#[test]
fn same_version_with_other_content_is_refused() {
    let Some(f) = common::KrsFixture::new("krs-same-version", "") else {
        return;
    };
    let m = |b: u8| vec![hex::encode([b; 48])];
    let a = common::policy_text_full(5, &m(0x11), &test_root_policy_toml());
    let b = common::policy_text_full(5, &m(0x22), &test_root_policy_toml());
    f.sign_policy_text(5, &a, &f.policy_file);
    drop(f.serve());
    // Another policy under version 5: check and serve refuse.
    f.sign_policy_text(5, &b, &f.policy_file);
    for cmd in ["check", "serve"] {
        let mut c = f.cmd();
        if cmd == "check" {
            c.args(["krs", "policy", "check", "--config"]);
        } else {
            c.args(["krs", "serve", "--config"]);
        }
        let out = c.arg(&f.config).output().unwrap();
        assert!(!out.status.success(), "{cmd} accepted a swapped version 5");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("version 5 was already accepted with other content"),
            "{cmd}: {err}"
        );
    }
    // The same policy again (re-signed): accepted; version 6 with B: accepted.
    f.sign_policy_text(5, &a, &f.policy_file);
    drop(f.serve());
    let b6 = common::policy_text_full(6, &m(0x22), &test_root_policy_toml());
    f.sign_policy_text(6, &b6, &f.policy_file);
    drop(f.serve());
}

#[test]
fn policy_check_warns_when_nothing_judges_the_pins() {
    let Some(f) = common::KrsFixture::new("krs-pins-warn", "") else {
        return;
    };
    let check = |config: &Path| {
        let out = f
            .cmd()
            .args(["krs", "policy", "check", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    const WARN: &str = "nothing judges the deployment pins";
    // SNP only, no [[deployment]]: warned.
    let snp = common::policy_text_full(2, &[hex::encode(DEMO_MEASUREMENT)], "");
    f.sign_policy_text(2, &snp, &f.policy_file);
    // The fixture's config serves a `test` deployment: take it away here.
    let full = std::fs::read_to_string(&f.config).unwrap();
    let cfg = full.split("\n[[deployment]]").next().unwrap().to_string();
    let no_dep = f.dir.join("krs-no-dep.toml");
    std::fs::write(&no_dep, &cfg).unwrap();
    assert!(check(&no_dep).contains(WARN));
    // The same policy, a KRS config with a [[deployment]]: no warning.
    let with_dep = f.dir.join("krs-dep.toml");
    let (head, hsm) = cfg.split_at(cfg.find("[hsm]").unwrap());
    std::fs::write(
        &with_dep,
        format!(
            "{head}[[deployment]]\nname = \"prod\"\nadmin_ca_sha256 = \"{}\"\n{hsm}",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    assert!(!check(&with_dep).contains(WARN));
    // A TPM policy with PCR 15 (where the pins are extended): no warning either.
    let tpm = snp.replace(
        "required_evidence = [\"snp\"]",
        "required_evidence = [\"snp\", \"tpm\"]",
    ) + &format!(
        "[tpm]\nregistered_aks = [\"000b{}\"]\npcrs = [4, 15]\n[[tpm.allowed]]\npcr = 15\nvalues = [\"{}\"]\n",
        "00".repeat(32),
        "00".repeat(32)
    );
    f.sign_policy_text(3, &tpm, &f.policy_file);
    assert!(!check(&no_dep).contains(WARN));
    // PCR 4 only: warned again.
    f.sign_policy_text(4, &tpm.replace("pcr = 15", "pcr = 4"), &f.policy_file);
    assert!(check(&no_dep).contains(WARN));
}

/// A simulated bare-metal guest that satisfies the shipped bare-metal policy: launched with
/// SMT disallowed (POLICY 0x20000) on a host with SMT off and TSME on, TCB 9/0/23/213.
struct BareMetalGuest {
    platform: keyward_verify::testsign::SimulatedPlatform,
}

impl keyward_attest::Attester for BareMetalGuest {
    fn name(&self) -> &'static str {
        "simulated-snp"
    }
    fn attest(
        &self,
        b: &keyward_attest::Binding,
        bundle: &mut keyward_evidence::EvidenceBundle,
    ) -> Result<(), keyward_attest::AttestError> {
        let p = &self.platform;
        let mut rb = keyward_verify::testsign::ReportBuilder::new(p.product, p.signer, &p.tcb);
        rb.report_data(&b.report_data)
            .measurement(&p.measurement)
            .chip_id(&p.chip_id)
            .policy(0x20000)
            .platform_info(0b10);
        bundle.snp = Some(keyward_evidence::SnpEvidence {
            report: p.sign(&rb),
            certs: p.certs.clone(),
        });
        Ok(())
    }
}

#[test]
fn shipped_bare_metal_policy_releases_once_its_crl_is_configured() {
    use keyward_verify::{Product, SignerKind};
    let dir = tempfile::tempdir().unwrap();
    let crl_file = dir.path().join("amd-crl.pem");
    let Some(f) = common::KrsFixture::new(
        "krs-crl-shipped",
        &format!("crl_files = [\"{}\"]", crl_file.display()),
    ) else {
        return;
    };
    // The shipped file, its placeholder measurement filled in, plus the test root (the
    // simulated guest chains to it, not to AMD).
    let shipped = include_str!("../../../../attestation/policies/bare-metal-snp.toml");
    let text =
        shipped.replace(&"0".repeat(96), &hex::encode(DEMO_MEASUREMENT)) + &test_root_policy_toml();
    assert!(text.contains("[snp.crl]\nrequired = true"));
    f.sign_policy_text(1, &text, &f.policy_file);
    install(&crl_file, &crl(vec![vec![9]], 3600, 86_400, false));
    let krs = f.serve();
    let tcb = keyward_verify::snp::Tcb {
        fmc: None,
        bootloader: 9,
        tee: 0,
        snp: 23,
        microcode: 213,
        raw: [0; 8],
    };
    let guest = || {
        let mut chip = [0u8; 64];
        chip[0] = 3;
        let platform = keyward_verify::testsign::SimulatedPlatform::with(
            Product::Milan,
            SignerKind::Vcek,
            tcb,
            chip,
            DEMO_MEASUREMENT,
        )
        .unwrap();
        Agent {
            cfg: f.agent_config(&krs.addr),
            attesters: vec![Box::new(BareMetalGuest { platform })],
            product_release: "keyward-test".into(),
        }
    };
    let r = guest().release().unwrap();
    assert_eq!(r.receipt.decision, "release");
    install(&crl_file, &crl(vec![vec![0]], 60, 86_400, false));
    match guest().release() {
        Err(AgentError::Denied { code, .. }) => assert_eq!(code, DenyCode::EvidenceChain.number()),
        Err(e) => panic!("expected a deny, got {e}"),
        Ok(_) => panic!("released to a revoked VCEK"),
    }
    let last = f.log_entries().pop().unwrap();
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("revokes CN=SEV-VCEK"),
        "{last}"
    );
}
