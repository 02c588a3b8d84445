//! `keyward bench` end to end against a small in-process XKS stand-in that checks every
//! request's SigV4 signature by re-signing it (so what the generator sends is exactly what it
//! signed), over plain HTTP and over TLS with a CA file.
//!
//! The stand-in answers with XKS-shaped JSON; it is not keyward's server (that is measured by
//! `make bench` against `keyward demo`): these tests check the generator itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyward_bench::RawSettings;
use tokio::net::TcpListener;

const AK: &str = "AKIAKEYWARDBENCHTEST23";
const SK: &str = "Q3w9vJm2Xb7Lr5Tn8Pk4Hs6Yd1Fg0Zc2Ve5Ua7Ni3Ox";
const REGION: &str = "eu-west-1";

#[derive(Default)]
struct Counters {
    served: AtomicU64,
    bad_signature: AtomicU64,
}

fn xks_error(status: u16, name: &str) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"errorName\":\"{name}\",\"errorMessage\":\"stand-in\"}}"
        ))))
        .unwrap()
}

/// Re-signs the request with aws-sigv4 at its own x-amz-date and compares.
fn signature_ok(parts: &http::request::Parts, body: &[u8]) -> bool {
    let get = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let auth = get("authorization");
    let date = get("x-amz-date");
    let Ok(t) = time::PrimitiveDateTime::parse(
        date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    ) else {
        return false;
    };
    let when: SystemTime = t.assume_utc().into();
    if !auth.contains(&format!(
        "Credential={AK}/{}/{REGION}/kms-xks-proxy/aws4_request",
        &date[..8]
    )) || !auth.contains("SignedHeaders=content-type;host;x-amz-date,")
    {
        return false;
    }
    let identity: Identity = Credentials::new(AK, SK, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("kms-xks-proxy")
        .time(when)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("host", get("host")), ("content-type", get("content-type"))];
    let req = SignableRequest::new(
        "POST",
        parts.uri.path(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (_, sig) = sign(req, &params).unwrap().into_parts();
    auth.ends_with(&format!("Signature={sig}"))
}

async fn handle(
    req: hyper::Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    counters.served.fetch_add(1, Ordering::Relaxed);
    if parts.method != http::Method::POST {
        return Ok(xks_error(405, "UnsupportedOperationException"));
    }
    if !signature_ok(&parts, &body) {
        counters.bad_signature.fetch_add(1, Ordering::Relaxed);
        return Ok(xks_error(401, "AuthenticationFailedException"));
    }
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/pfx/kms/xks/v1/") else {
        return Ok(xks_error(404, "InvalidUriPathException"));
    };
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return Ok(xks_error(400, "ValidationException")),
    };
    if rest.starts_with("keys/deny/") {
        return Ok(xks_error(403, "AccessDeniedException"));
    }
    let answer = if rest == "health" {
        serde_json::json!({"xksProxyFleetSize": 1})
    } else if rest.ends_with("/encrypt") {
        let pt = json["plaintext"].as_str().unwrap_or("");
        serde_json::json!({
            "ciphertext": pt,
            "initializationVector": "AAAAAAAAAAAAAAAA",
            "authenticationTag": "AAAAAAAAAAAAAAAAAAAAAA==",
            "ciphertextMetadata": "AQ==",
        })
    } else if rest.ends_with("/decrypt") {
        if json["ciphertextMetadata"] != "AQ=="
            || json["initializationVector"] != "AAAAAAAAAAAAAAAA"
        {
            return Ok(xks_error(400, "InvalidCiphertextException"));
        }
        serde_json::json!({ "plaintext": json["ciphertext"] })
    } else if rest.ends_with("/metadata") {
        serde_json::json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
    } else {
        return Ok(xks_error(404, "InvalidUriPathException"));
    };
    Ok(hyper::Response::new(Full::new(Bytes::from(
        answer.to_string(),
    ))))
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_file: tempfile::NamedTempFile,
}

fn tls_setup() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_file,
    }
}

/// Starts the stand-in on its own runtime thread; returns its address.
fn start_server(counters: Arc<Counters>, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counters = counters.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| handle(r, counters.clone()));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
    });
    addr
}

fn settings(addr: SocketAddr, tls: bool) -> RawSettings {
    RawSettings {
        url: Some(format!("{}://{addr}", if tls { "https" } else { "http" })),
        uri_prefix: Some("/pfx".into()),
        region: Some(REGION.into()),
        access_key_id: Some(AK.into()),
        secret_access_key: Some(SK.into()),
        key_ids: vec!["k1".into(), "k2".into()],
        quiet: true,
        threads: Some(1),
        ..RawSettings::default()
    }
}

fn run(raw: RawSettings) -> keyward_bench::Report {
    let s = raw.validate().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(keyward_bench::execute(&s)).unwrap()
}

#[test]
fn closed_loop_mix_for_one_second_has_no_errors() {
    let counters = Arc::new(Counters::default());
    let addr = start_server(counters.clone(), None);
    let report = run(RawSettings {
        mix: Some("encrypt=70,decrypt=25,health=3,metadata=2".into()),
        connections: Some(4),
        duration: Some(Duration::from_secs(1)),
        ..settings(addr, false)
    });
    assert_eq!(counters.bad_signature.load(Ordering::Relaxed), 0);
    assert!(report.clean(), "{}", report.human());
    assert!(report.requests > 100, "{}", report.human());
    for op in ["encrypt", "decrypt", "health", "metadata"] {
        assert!(
            report.by_op.get(op).copied().unwrap_or(0) > 0,
            "no {op}: {:?}",
            report.by_op
        );
    }
    // Every recorded request reached the server (plus the priming encrypts).
    assert!(counters.served.load(Ordering::Relaxed) >= report.requests);
    assert!(report.latency_us.p50_us > 0.0 && report.latency_us.p50_us <= report.latency_us.max_us);
    assert!(
        (0.9..1.5).contains(&report.duration_s),
        "{}",
        report.duration_s
    );
}

#[test]
fn open_loop_keeps_the_rate_and_counts_errors_by_name() {
    let counters = Arc::new(Counters::default());
    let addr = start_server(counters.clone(), None);
    let report = run(RawSettings {
        rate: Some(400.0),
        connections: Some(4),
        duration: Some(Duration::from_secs(1)),
        ..settings(addr, false)
    });
    assert!(report.clean(), "{}", report.human());
    // 400 slots in the one-second window, each sent once.
    assert!((380..=401).contains(&report.requests), "{}", report.human());
    assert_eq!(report.mode, "open");

    // A key the stand-in refuses: every request fails with the XKS error name and status.
    let report = run(RawSettings {
        key_ids: vec!["deny".into()],
        op: Some("metadata".into()),
        requests: Some(50),
        connections: Some(2),
        ..settings(addr, false)
    });
    assert_eq!(report.requests, 50);
    assert_eq!(
        report.errors.get("403 AccessDeniedException"),
        Some(&50),
        "{:?}",
        report.errors
    );
    assert!(!report.clean());

    // A wrong secret: the stand-in's re-signing check refuses every request.
    let report = run(RawSettings {
        secret_access_key: Some(SK.replace('Q', "R")),
        op: Some("health".into()),
        requests: Some(20),
        connections: Some(1),
        ..settings(addr, false)
    });
    assert_eq!(
        report.errors.get("401 AuthenticationFailedException"),
        Some(&20),
        "{:?}",
        report.errors
    );
}

#[test]
fn cli_over_tls_with_a_ca_file_prints_json_and_exits_zero() {
    let counters = Arc::new(Counters::default());
    let tls = tls_setup();
    let addr = start_server(counters.clone(), Some(tls.acceptor.clone()));
    let demo = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        demo.path(),
        serde_json::json!({
            "url": format!("https://{addr}"), "uri_prefix": "/pfx", "region": REGION,
            "access_key_id": AK, "secret_access_key": SK,
            "ca_cert": tls.ca_file.path(), "key_ids": ["k1"], "pid": std::process::id(),
        })
        .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(keyward_integration_tests::keyward_bin_str())
        .args(["bench", "--demo"])
        .arg(demo.path())
        .args([
            "--requests",
            "300",
            "-c",
            "8",
            "--json",
            "--quiet",
            "--mix",
            "encrypt=1,decrypt=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["requests"], 300);
    assert_eq!(v["errors_total"], 0);
    assert_eq!(v["target"], format!("https://{addr}/pfx"));
    // The demo's pid (this test process, which serves the stand-in) is read for server CPU.
    assert!(
        v["server_cpu"]["us_per_request"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(counters.bad_signature.load(Ordering::Relaxed), 0);

    // Without the CA file the server's certificate is not trusted: the run fails up front.
    let out = std::process::Command::new(keyward_integration_tests::keyward_bin_str())
        .args([
            "bench",
            "--url",
            &format!("https://{addr}"),
            "--uri-prefix",
            "/pfx",
        ])
        .args([
            "--access-key-id",
            AK,
            "--key-id",
            "k1",
            "--requests",
            "5",
            "--quiet",
        ])
        .env("KEYWARD_BENCH_SECRET_ACCESS_KEY", SK)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting to"), "{stderr}");
}

#[test]
fn sigint_stops_an_open_loop_run_and_reports_what_it_measured() {
    let counters = Arc::new(Counters::default());
    let addr = start_server(counters.clone(), None);
    let mut child = std::process::Command::new(keyward_integration_tests::keyward_bin_str())
        .args([
            "bench",
            "--url",
            &format!("http://{addr}"),
            "--uri-prefix",
            "/pfx",
            "--region",
            REGION,
            "--access-key-id",
            AK,
            "--key-id",
            "k1",
            "--rate",
            "200",
            "--duration",
            "1h",
            "--warmup",
            "0s",
            "--json",
            "--quiet",
        ])
        .env("KEYWARD_BENCH_SECRET_ACCESS_KEY", SK)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("keyward bench did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 0, or 1 when a slot already scheduled was left unsent by the stop; not a panic (101).
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "status {:?}, stdout {stdout}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report after SIGINT ({e}): {stdout}"));
    assert!(v["requests"].as_u64().unwrap() >= 200, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
}
