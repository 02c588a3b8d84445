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
    let mut root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
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
