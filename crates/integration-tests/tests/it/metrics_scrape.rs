//! `GET /metrics` on the demo's admin listener: a few XKS requests (signed by curl), then a
//! scrape with the admin profile's client certificate, parsed by the Prometheus project's own
//! OpenMetrics parser (python `prometheus_client`, in a venv from PyPI), and the counts checked.

use crate::serve_common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A venv with prometheus_client under target/ (built once).
fn parser_python() -> PathBuf {
    let mut root = keyward_integration_tests::repo().to_path_buf();
    root.push("target/metrics-pyvenv");
    let py = root.join("bin/python3");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&py) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(root.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .arg("prometheus_client")
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok && has(&py),
            "prometheus_client could not be installed into {} (python3-venv and PyPI needed)",
            root.display()
        );
    }
    py
}

const PARSE: &str = r#"
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Every sample of the scrape, as the parser read it.
fn parse(py: &Path, text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut c = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (0 if none).
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

fn profile_field(profile: &Path, field: &str) -> String {
    let text = std::fs::read_to_string(profile).unwrap();
    let t: toml::Value = toml::from_str(&text).unwrap();
    t[field].as_str().unwrap().to_string()
}

/// `curl` the metrics URL, with or without the admin client certificate.
fn scrape(url: &str, profile: &Path, with_cert: bool) -> (bool, String) {
    let mut c = crate::tools::curl();
    c.args(["-sS", "--fail", "--max-time", "20", "--cacert"])
        .arg(profile_field(profile, "ca_cert"));
    if with_cert {
        c.arg("--cert")
            .arg(profile_field(profile, "client_cert"))
            .arg("--key")
            .arg(profile_field(profile, "client_key"));
    }
    let out = c.arg(url).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn metrics_count_the_requests_made() {
    let py = parser_python();
    let tmp = tempfile::tempdir().unwrap();
    let (_p, ready, line) = start_demo(&tmp.path().join("state"));
    let v: Value = serde_json::from_str(&line).unwrap();
    let url = v["metrics_url"]
        .as_str()
        .expect("metrics_url in the ready line");
    assert!(
        url.starts_with("https://") && url.ends_with("/metrics"),
        "{url}"
    );

    let xks = Xks::from(&ready);
    let key = &ready.key_ids[0];
    for _ in 0..3 {
        assert_eq!(xks.encrypt(key, "SGVsbG8=").0, 200);
    }
    let (code, enc) = xks.encrypt(key, "SGVsbG8=");
    assert_eq!(code, 200, "{enc}");
    assert_eq!(xks.decrypt(key, &enc).0, 200);
    // A wrong secret: refused at SigV4.
    let mut bad = Xks::from(&ready);
    bad.secret = "wrong-secret-wrong-secret-wrong-secret-0000".into();
    let (code, body) = bad.encrypt(key, "SGVsbG8=");
    assert_eq!(code, 401, "{body}");
    let reason = body["errorName"].as_str().unwrap_or_default().to_string();

    // Without the client certificate: no TLS session, no metrics.
    assert!(!scrape(url, &ready.admin_profile, false).0);

    // The audit writer counts the records off the request path: wait for it to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (ok, text) = scrape(url, &ready.admin_profile, true);
        assert!(ok, "scrape failed: {text}");
        let samples = parse(&py, &text);
        let enc_ok = value(
            &samples,
            "keyward_xks_requests_total",
            &[("operation", "Encrypt"), ("status", "200")],
        );
        if enc_ok >= 4.0 || Instant::now() > deadline {
            break samples;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ok = [("status", "200"), ("error_name", "")];
    assert_eq!(
        value(
            &samples,
            "keyward_xks_requests_total",
            &[&[("operation", "Encrypt")][..], &ok].concat()
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "keyward_xks_requests_total",
            &[("operation", "Decrypt"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "keyward_xks_requests_total",
            &[("status", "401"), ("error_name", reason.as_str())]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "keyward_xks_auth_failures_total",
            &[("reason", reason.as_str())]
        ),
        1.0
    );
    // The histogram: every Encrypt (the refused one too) observed once, each under 1 s.
    assert_eq!(
        value(
            &samples,
            "keyward_xks_request_duration_seconds_count",
            &[("operation", "Encrypt")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "keyward_xks_request_duration_seconds_bucket",
            &[("operation", "Encrypt"), ("le", "1.0")]
        ),
        5.0
    );
    // Keys by state: the demo's keys are enabled.
    assert_eq!(
        value(&samples, "keyward_keys", &[("state", "enabled")]),
        ready.key_ids.len() as f64
    );
    assert!(value(&samples, "keyward_audit_lines_total", &[]) >= 6.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&samples, "process_open_fds", &[]) > 0.0);
    let days = value(&samples, "keyward_tls_certificate_expiry_days", &[]);
    assert!(days > 0.0, "certificate expiry days: {days}");
}

/// The KRS's `metrics_listen`: one release, one deny before a session (pins of no
/// deployment) and one signed deny (evidence of a measurement the policy does not allow),
/// then a plain-HTTP scrape on loopback parsed by the OpenMetrics parser.
#[test]
fn krs_metrics_count_releases_and_denials_by_code() {
    use keyward_agent::{Agent, AgentError};
    use keyward_verify::testsign::test_root_policy_toml;
    let py = parser_python();
    let Some(f) = crate::common::KrsFixture::new("krs-metrics", "metrics_listen = \"127.0.0.1:0\"")
    else {
        return;
    };
    const MEAS: [u8; 48] = [0x11; 48];
    let text = crate::common::policy_text_full(2, &[hex::encode(MEAS)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let krs = f.serve();
    let metrics = krs
        .metrics
        .clone()
        .expect("the KRS names its metrics address");
    let agent = |meas: [u8; 48], ca: Option<&str>| {
        let mut cfg = f.agent_config(&krs.addr);
        if let Some(ca) = ca {
            cfg.admin_ca_sha256 = ca.into();
        }
        Agent {
            cfg,
            attesters: vec![Box::new(crate::common::honest_snp(meas))],
            product_release: "keyward-test".into(),
        }
    };
    agent(MEAS, None)
        .release()
        .expect("the honest agent is released to");
    match agent(MEAS, Some("")).release() {
        Err(AgentError::Denied { code: 110, .. }) => {}
        other => panic!("expected PinMismatch, got {:?}", other.map(|_| ())),
    }
    match agent([0x22; 48], None).release() {
        Err(AgentError::Denied { .. }) => {}
        other => panic!("expected a deny, got {:?}", other.map(|_| ())),
    }

    let out = crate::tools::curl()
        .args(["-sS", "--fail", "--max-time", "20"])
        .arg(format!("http://{metrics}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = parse(&py, &String::from_utf8_lossy(&out.stdout));
    assert_eq!(value(&samples, "keyward_krs_releases_total", &[]), 1.0);
    assert_eq!(
        value(
            &samples,
            "keyward_krs_denials_total",
            &[("code", "pin_mismatch"), ("signed", "false")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "keyward_krs_denials_total", &[("signed", "true")]),
        1.0,
        "{samples:?}"
    );
    // The signed deny is the one in the release log, under the same code name.
    let denied: Vec<_> = f
        .log_entries()
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    let reason = denied[0]["reason"].as_str().unwrap().to_string();
    assert_eq!(
        value(
            &samples,
            "keyward_krs_denials_total",
            &[("code", &reason), ("signed", "true")]
        ),
        1.0
    );
    assert!(value(&samples, "keyward_krs_hsm_signatures_total", &[]) >= 2.0);
    // Only GET /metrics.
    let out = crate::tools::curl()
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .arg(format!("http://{metrics}/other"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}
