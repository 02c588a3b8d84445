//! Black-box XKS conformance: the real `keyward demo` binary driven over HTTPS by botocore's
//! SigV4 signer (tests/python/xks_conformance.py) and by curl, every case checked against
//! docs/xks-proxy-api.md. Each driver case prints PASS or FAIL; every FAIL fails
//! this test with the request and answer that deviated.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use crate::xks_common;
use xks_common::botocore_python;

struct Demo {
    child: Child,
    line: String,
    json: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let stderr = std::fs::File::create(dir.path().join("demo.err")).unwrap();
    let mut child = Command::new(keyward_integration_tests::keyward_bin_str())
        .args(["demo", "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        let err = std::fs::read_to_string(dir.path().join("demo.err")).unwrap_or_default();
        panic!("demo did not print its JSON line ({e}): {line:?}\n{err}")
    });
    Demo {
        child,
        line,
        json,
        _dir: dir,
    }
}

#[test]
fn xks_contract_black_box() {
    let py = botocore_python();
    let demo = start_demo();
    let info = demo._dir.path().join("demo.json");
    std::fs::write(&info, &demo.line).unwrap();
    let script = keyward_integration_tests::repo().join("tests/python/xks_conformance.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&info)
        .arg(keyward_integration_tests::keyward_bin_str())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passes = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        stdout.lines().any(|l| l.starts_with("DONE")),
        "driver did not finish:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(passes >= 80, "only {passes} cases ran:\n{stdout}");
    assert!(
        fails.is_empty(),
        "{} XKS contract deviation(s):\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// HTTP/1.1 keep-alive with curl (two signed requests, one connection), TLS 1.2 and 1.3 with
/// openssl s_client, and the demo's JSON `uri_prefix`/`url` shape.
#[test]
fn curl_keepalive_and_openssl_tls_versions() {
    let demo = start_demo();
    let j = &demo.json;
    let s = |k: &str| j[k].as_str().unwrap().to_string();
    let (url, prefix, ca) = (s("url"), s("uri_prefix"), s("ca_cert"));
    let health = format!("{url}{prefix}/kms/xks/v1/health");
    let body = r#"{"requestMetadata":{"kmsRequestId":"k","kmsOperation":"KmsHealthCheck"}}"#;
    let out = xks_common::tools::curl()
        .args(["-sS", "-v", "--http1.1", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:kms-xks-proxy", s("region")))
        .arg("--user")
        .arg(format!("{}:{}", s("access_key_id"), s("secret_access_key")))
        .arg("--cacert")
        .arg(&ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}\n",
            "-d",
            body,
        ])
        .arg(&health)
        .arg("--next")
        .args(["-sS", "--http1.1", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:kms-xks-proxy", s("region")))
        .arg("--user")
        .arg(format!("{}:{}", s("access_key_id"), s("secret_access_key")))
        .arg("--cacert")
        .arg(&ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}\n",
            "-d",
            body,
        ])
        .arg(&health)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        so.lines().filter(|l| *l == "200").count(),
        2,
        "two 200s expected:\n{so}\n{se}"
    );
    assert!(
        se.contains("Re-using existing connection") || se.contains("Reusing existing"),
        "second request did not reuse the connection:\n{se}"
    );

    let hostport = url.trim_start_matches("https://").to_string();
    for (flag, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = Command::new("openssl")
            .args([
                "s_client", "-connect", &hostport, flag, "-CAfile", &ca, "-brief",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains(&format!("Protocol version: {want}")),
            "{flag}: {all}"
        );
    }
}
