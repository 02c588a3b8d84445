//! The KRS judges the deployment pins (issue 12 §1), against the real `keyward krs serve` on a
//! SoftHSMv2 token with simulated SNP evidence of the allowed measurement.
//!
//! The attack: the host boots the genuine image with the victim's KRS pins (URL, TLS and
//! receipt key) but its own operator CA (and the CA's hash in the pins, so the appliance's own
//! file check passes). The evidence is genuine; only the pins differ. The KRS must deny at
//! Hello with `PinMismatch` (110), before any session, and release nothing; the victim's own
//! pins still release. Also: `krs serve` refuses a config without `[[deployment]]`, and
//! `krs pins --admin-ca` prints/appends the block the operator needs.

use crate::common;

use keyward_admin::Ca;
use keyward_agent::{parse_pins, Agent, AgentError};
use keyward_attest::SimulatedSnpAttester;
use keyward_krp::DenyCode;
use keyward_verify::testsign::test_root_policy_toml;

const MEAS: [u8; 48] = [0x11; 48];

fn honest() -> SimulatedSnpAttester {
    common::honest_snp(MEAS)
}

fn agent(cfg: keyward_config::AgentConfig) -> Agent {
    Agent {
        cfg,
        attesters: vec![Box::new(honest())],
        product_release: "keyward-test".into(),
    }
}

fn write_ca(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.pem"));
    std::fs::write(&p, Ca::new(name).unwrap().cert_pem()).unwrap();
    p
}

#[test]
fn host_operator_ca_with_the_victims_krs_pins_is_denied_before_any_session() {
    let Some(f) = common::KrsFixture::new("krs-deployments", "") else {
        return;
    };
    let text = common::policy_text_full(2, &[hex::encode(MEAS)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);

    // The victim's deployment, added the way docs/krs.md says (`krs pins --admin-ca --append`).
    let victim_ca = write_ca(&f.dir, "victim operator CA");
    let out = common::run_ok(
        f.cmd()
            .args(["krs", "pins", "--config"])
            .arg(&f.config)
            .arg("--admin-ca")
            .arg(&victim_ca)
            .args(["--name", "victim", "--url", "krs.victim.example:7443"]),
    );
    let victim_pin = common::ca_pin(&victim_ca);
    assert!(
        out.starts_with("[[deployment]]\nname = \"victim\"\npins_sha384 = \""),
        "{out}"
    );
    assert!(
        out.contains(&format!("admin_ca_sha256 = \"{victim_pin}\"")),
        "{out}"
    );
    // The printed pins_sha384 is the digest of exactly those pins (what goes into T).
    let mut cfg = f.agent_config("krs.victim.example:7443");
    cfg.admin_ca_sha256 = victim_pin.clone();
    let want = keyward_krs::pins_sha384(&parse_pins(&cfg).unwrap().pins).unwrap();
    assert!(out.contains(&hex::encode(want)), "{out}");
    common::run_ok(
        f.cmd()
            .args(["krs", "pins", "--config"])
            .arg(&f.config)
            .arg("--admin-ca")
            .arg(&victim_ca)
            .args(["--name", "victim", "--append"]),
    );

    let krs = f.serve();
    let log_before = f.log_entries().len();

    // The attack: genuine evidence, the victim's KRS pins, the host's own operator CA.
    let host_ca = write_ca(&f.dir, "host operator CA");
    let host_pin = common::ca_pin(&host_ca);
    let mut attack = f.agent_config(&krs.addr);
    attack.admin_ca_sha256 = host_pin.clone();
    match agent(attack).release() {
        Err(AgentError::Denied { code, .. }) => assert_eq!(code, DenyCode::PinMismatch.number()),
        Err(e) => panic!("expected a PinMismatch deny, got {e}"),
        Ok(_) => panic!("the KRS released the master key to the host's operator CA"),
    }
    let stderr = krs.stderr();
    assert!(
        stderr.contains("pins match no [[deployment]]") && stderr.contains(&host_pin),
        "the KRS log must name the pins presented: {stderr}"
    );
    assert!(
        !stderr.contains("challenge issued"),
        "a session was created for pins of no deployment: {stderr}"
    );
    let entries = f.log_entries();
    assert!(
        entries[log_before..]
            .iter()
            .all(|e| e["decision"] != "release"),
        "{entries:?}"
    );

    // No operator CA at all does not match either.
    let mut none = f.agent_config(&krs.addr);
    none.admin_ca_sha256 = String::new();
    assert!(matches!(
        agent(none).release(),
        Err(AgentError::Denied { code: 110, .. })
    ));

    // The victim's own pins release (genuine evidence, configured deployment).
    let mut good = f.agent_config(&krs.addr);
    good.admin_ca_sha256 = victim_pin;
    let r = agent(good).release().unwrap();
    assert_eq!(r.receipt.decision, "release");
    assert!(!r.receipt.boot_key_id.is_empty());
    assert!(krs.stderr().contains("\"victim\""), "{}", krs.stderr());
    drop(krs);
    assert!(f.log_verify(&f.log_path()).0);
}

#[test]
fn krs_serve_refuses_a_config_without_deployments() {
    let Some(f) = common::KrsFixture::new("krs-no-deployment", "") else {
        return;
    };
    let cfg = std::fs::read_to_string(&f.config).unwrap();
    let cut = cfg.find("\n[[deployment]]").unwrap();
    std::fs::write(&f.config, &cfg[..cut]).unwrap();
    let err = f.serve_refused();
    assert!(err.contains("no [[deployment]]"), "{err}");
    // A deployment without any digest, or with a short one, is refused by name.
    std::fs::write(
        &f.config,
        format!(
            "{}\n[[deployment]]\nname = \"x\"\nadmin_ca_sha256 = \"abcd\"\n",
            &cfg[..cut]
        ),
    )
    .unwrap();
    let err = f.serve_refused();
    assert!(err.contains("admin_ca_sha256 must be 32 bytes"), "{err}");
}
