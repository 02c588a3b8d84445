//! `keyward verify --url` against a running `keyward demo` (simulated SNP attester on its
//! attestation listener, bound to the demo's XKS certificate): verifies end to end; the same
//! evidence checked against another TLS endpoint's key (a relay scenario) is refused.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

struct Demo(Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn verify(url: &str, xks: &str, policy: &str) -> (i32, serde_json::Value, String) {
    let out = Command::new(keyward_integration_tests::keyward_bin_str())
        .args([
            "verify",
            "--json",
            "--url",
            url,
            "--xks-url",
            xks,
            "--policy",
            policy,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn status(v: &serde_json::Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("{name} missing in {v:#}"))
}

#[test]
fn verify_url_against_a_running_demo() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(keyward_integration_tests::keyward_bin_str())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let demo = Demo(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    let att = ready["attestation_url"].as_str().unwrap().to_string();
    let xks = ready["url"].as_str().unwrap().to_string();
    // The human lines on stderr name the attestation URL and the verify command.
    let mut err_lines = Vec::new();
    let mut rd = BufReader::new(stderr);
    while !err_lines
        .iter()
        .any(|l: &String| l.contains("keyward verify --url"))
    {
        let mut l = String::new();
        if rd.read_line(&mut l).unwrap() == 0 {
            break;
        }
        err_lines.push(l);
    }
    let all = err_lines.concat();
    assert!(all.contains(&format!("{att}/attestation")), "{all}");
    assert!(all.contains("keyward verify --url"), "{all}");
    // Keep draining stderr so the demo never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while rd.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let policy = state.path().join("attestation-policy.toml");
    let policy = policy.to_str().unwrap();

    // 1. The demo's evidence is bound to its own XKS certificate.
    let (code, v, err) = verify(&att, &xks, policy);
    assert_eq!(code, 0, "{v:#}\n{err}");
    assert_eq!(status(&v, "snp.report_data"), "passed");
    assert_eq!(status(&v, "snp.signature"), "passed");

    // 2. Wrong binding: another TLS endpoint (another key) named as the XKS endpoint.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = rt.block_on(async {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![other.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(other.key_pair.serialize_der().into()),
        )
        .unwrap();
        let acc = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let a = acc.clone();
                tokio::spawn(async move {
                    let _ = a.accept(tcp).await;
                });
            }
        });
        port
    });
    let (code, v, err) = verify(&att, &format!("https://127.0.0.1:{port}"), policy);
    assert_eq!(code, 1, "{v:#}\n{err}");
    assert_eq!(status(&v, "snp.report_data"), "failed");

    // 3. The built-in policy (AMD roots) refuses the simulated root.
    let out = Command::new(keyward_integration_tests::keyward_bin_str())
        .args(["verify", "--url", &att, "--xks-url", &xks])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    drop(demo);
}
