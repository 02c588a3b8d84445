//! `keyward verify --url` as a process against a live-attestation listener (in this test
//! process, simulated SNP attester) and a separate TLS endpoint standing in for XKS: the
//! binding to the XKS certificate's key verifies; a listener bound to another key (what a
//! relay in front of a different TLS endpoint would give) is refused with exit code 1.

use std::sync::Arc;

use keyward_attest::live::{serve, spki_sha256_of_cert};
use keyward_attest::Attester;
use keyward_attest::{SimulatedSnpAttester, DEMO_MEASUREMENT};
use keyward_verify::testsign::test_root_policy_toml;

async fn tls_endpoint(cert_der: Vec<u8>, key_der: Vec<u8>) -> u16 {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert_der.into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(tcp).await;
            });
        }
    });
    port
}

async fn live_listener(spki: [u8; 32]) -> String {
    let attesters: Vec<Box<dyn Attester>> = vec![Box::new(
        SimulatedSnpAttester::new(DEMO_MEASUREMENT).unwrap(),
    )];
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(serve(l, Arc::new(attesters), spki, std::future::pending()));
    url
}

fn run_verify(url: &str, xks: &str, policy: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "verify",
            "--url",
            url,
            "--xks-url",
            xks,
            "--json",
            "--policy",
        ])
        .arg(policy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn status(json: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("{name} missing in {v:#}"))
}

#[test]
fn verify_url_checks_the_binding_to_the_xks_key() {
    let xks = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let xks_der = xks.cert.der().to_vec();
    let spki = spki_sha256_of_cert(&xks_der).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "format = 1\n[snp]\nbuiltin_amd_roots = false\nmeasurements = [\"{}\"]\n{}",
            hex::encode(DEMO_MEASUREMENT),
            test_root_policy_toml()
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (xks_port, good_url, bad_url) = rt.block_on(async {
        let port = tls_endpoint(xks_der.clone(), xks.key_pair.serialize_der()).await;
        let good = live_listener(spki).await;
        let bad = live_listener([0x11; 32]).await;
        (port, good, bad)
    });
    let xks_url = format!("https://localhost:{xks_port}");

    // Runs on blocking threads so the runtime keeps serving while the CLI talks to it.
    let (code, out, err) = rt.block_on(async {
        let (u, x, p) = (good_url.clone(), xks_url.clone(), policy.clone());
        tokio::task::spawn_blocking(move || run_verify(&u, &x, &p))
            .await
            .unwrap()
    });
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status(&out, "snp.report_data"), "passed");
    assert!(
        err.contains(&hex::encode(spki)),
        "the SPKI hash it read is printed: {err}"
    );

    let (code, out, err) = rt.block_on(async {
        let (u, x, p) = (bad_url.clone(), xks_url.clone(), policy.clone());
        tokio::task::spawn_blocking(move || run_verify(&u, &x, &p))
            .await
            .unwrap()
    });
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(status(&out, "snp.report_data"), "failed");
    assert_eq!(status(&out, "snp.signature"), "passed");

    // Nothing listening: a usage/input error (2), not a verdict.
    let (code, _, _) = run_verify("http://127.0.0.1:1", &xks_url, &policy);
    assert_eq!(code, 2);
}
