//! Unauthenticated floods against a running `keyward demo` (its own process, so its RSS is the
//! server's alone), each replaying an attack from issue 12 §3:
//!
//! * (a) 200 unsigned XKS connections declaring big bodies (2 MiB, 900 KiB, and just under the
//!   pre-authentication cap) and sending most of them, then trickling the rest;
//! * (b) connections held open on the live-attestation listener, up to its cap and far past it;
//! * (c) many HTTP/2 streams, each holding a large body open.
//!
//! While each runs, a normal signed request (`curl --aws-sigv4`, a signer we did not write) must
//! be answered 200 within 250 ms (the median of 5 fresh connections; a loaded 2-core machine
//! gets four tries), and during (a) the server's VmRSS must stay within +100 MB.
//!
//! The demo runs with RLIMIT_NOFILE 1024 (soft and hard): the limit under which held attestation
//! connections used to exhaust the descriptors until the XKS API stopped answering.

use keyward_integration_tests::serve_common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use serve_common::{Proc, Ready, Xks, BIN};
use tokio::io::AsyncWriteExt;

const LATENCY_BOUND: f64 = 0.250;

/// `keyward demo` with RLIMIT_NOFILE 1024 soft and hard.
fn start_demo_nofile_1024(state: &Path) -> (Proc, Ready) {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .current_dir(state.parent().unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut p = Proc::spawn_command(cmd);
    let line = p.stdout_line(Duration::from_secs(120));
    let ready: Ready = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("bad ready line {line}: {e}\n{}", p.stderr_text()));
    (p, ready)
}

fn vm_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One signed Encrypt on a fresh connection: (status, seconds curl reports for it).
fn timed_encrypt(x: &Xks, key: &str) -> (u16, f64) {
    let body = json!({
        "requestMetadata": {
            "awsPrincipalArn": "arn:aws:iam::111122223333:user/test",
            "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/test",
            "kmsOperation": "Encrypt", "kmsRequestId": "flood-probe",
        },
        "plaintext": "SGVsbG8=", "encryptionAlgorithm": "AES_GCM",
    });
    let out = serve_common::tools::curl()
        .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:{}", x.region, x.service))
        .arg("--user")
        .arg(format!("{}:{}", x.access_key_id, x.secret))
        .arg("--cacert")
        .arg(&x.ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "%{http_code} %{time_total}",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!(
            "{}{}/kms/xks/v1/keys/{key}/encrypt",
            x.url, x.uri_prefix
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs = it.next().and_then(|c| c.parse().ok()).unwrap_or(f64::MAX);
    (code, secs)
}

/// The median latency of 5 signed requests, all of which must be answered 200; up to four
/// rounds (the machine is shared), the best median is returned with every sample seen.
fn probe(x: &Xks, key: &str, what: &str) -> f64 {
    let mut best = f64::MAX;
    for round in 0..4 {
        let mut samples: Vec<f64> = Vec::new();
        for _ in 0..5 {
            let (code, secs) = timed_encrypt(x, key);
            assert_eq!(
                code, 200,
                "{what}: a signed request was not answered 200 ({secs} s)"
            );
            samples.push(secs);
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = samples[2];
        eprintln!("{what}: round {round}: median {median:.4} s of {samples:?}");
        best = best.min(median);
        if best < LATENCY_BOUND {
            break;
        }
    }
    best
}

fn tls_client(ca: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

fn host_port(url: &str) -> (String, std::net::SocketAddr) {
    let hp = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let hp = hp.split('/').next().unwrap();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hp)
        .unwrap()
        .next()
        .unwrap();
    let host = hp.rsplit_once(':').unwrap().0.to_string();
    (host, addr)
}

async fn tls_connect(
    cfg: &Arc<rustls::ClientConfig>,
    host: &str,
    addr: std::net::SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .ok()
}

/// Shared by the flooders of (a): the stop flag and what they saw.
#[derive(Default)]
struct FloodState {
    stop: AtomicBool,
    /// Connections the server ended (refused, dropped).
    refused: AtomicUsize,
    /// Connections that sent their bulk and hold the rest of their body.
    trickling: AtomicUsize,
}

/// One flooder of (a): connect, declare `len` bytes of body, send all but the last KiB at
/// once, then trickle a byte every 200 ms; reconnect (after a pause) whenever the server
/// hangs up, until `stop`.
async fn unsigned_flooder(
    cfg: Arc<rustls::ClientConfig>,
    host: String,
    addr: std::net::SocketAddr,
    path: String,
    len: usize,
    st: Arc<FloodState>,
) {
    let (stop, refused, trickling) = (&st.stop, &st.refused, &st.trickling);
    let chunk = vec![b'a'; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Some(mut tls) = tls_connect(&cfg, &host, addr).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        let mut ok = tls.write_all(head.as_bytes()).await.is_ok();
        let mut sent = 0;
        while ok && sent + chunk.len() < len.saturating_sub(1024) && !stop.load(Ordering::Relaxed) {
            ok = tls.write_all(&chunk).await.is_ok();
            sent += chunk.len();
        }
        if ok {
            trickling.fetch_add(1, Ordering::Relaxed);
        }
        while ok && !stop.load(Ordering::Relaxed) {
            ok = tls.write_all(b"a").await.is_ok() && tls.flush().await.is_ok();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !ok {
            refused.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A request body that sends `first` and then never ends.
struct Stall(Option<Bytes>);

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

#[test]
fn floods_leave_signed_requests_fast_and_memory_bounded() {
    keyward_secret::raise_nofile();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let (demo, ready) = start_demo_nofile_1024(&state_dir);
    let x = Xks::from(&ready);
    let key = ready.key_ids[0].clone();
    let pid = ready.pid;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (host, addr) = host_port(&ready.url);
    let path = format!("{}/kms/xks/v1/keys/{key}/encrypt", ready.uri_prefix);

    let quiet = probe(&x, &key, "no flood");
    let rss0 = vm_rss_kb(pid);
    eprintln!("no flood: VmRSS {rss0} kB");

    // (a) 200 unsigned connections with big declared bodies.
    let st = Arc::new(FloodState::default());
    let cfg = tls_client(&ready.ca_cert, b"http/1.1");
    let cap = keyward_xks::Limits::default().max_body;
    for i in 0..200 {
        let len = [2 * 1024 * 1024, 900 * 1024, cap - 64][i % 3];
        rt.spawn(unsigned_flooder(
            cfg.clone(),
            host.clone(),
            addr,
            path.clone(),
            len,
            st.clone(),
        ));
    }
    let t0 = Instant::now();
    let mut rss_max = rss0;
    // Every flooder has sent its bulk and holds its connection (or 6 s have passed).
    while t0.elapsed() < Duration::from_secs(6) && st.trickling.load(Ordering::Relaxed) < 200 {
        rss_max = rss_max.max(vm_rss_kb(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "flood (a): {} connections holding their bodies open after {:?}",
        st.trickling.load(Ordering::Relaxed),
        t0.elapsed()
    );
    let a = probe(&x, &key, "flood (a)");
    while t0.elapsed() < Duration::from_secs(9) {
        rss_max = rss_max.max(vm_rss_kb(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    st.stop.store(true, Ordering::Relaxed);
    let growth_mb = (rss_max.saturating_sub(rss0)) as f64 / 1024.0;
    eprintln!(
        "flood (a): VmRSS max {rss_max} kB, growth {growth_mb:.1} MB; {} flooder connections ended by the server",
        st.refused.load(Ordering::Relaxed)
    );
    assert!(
        growth_mb < 100.0,
        "flood (a) grew the server's RSS by {growth_mb:.1} MB"
    );
    assert!(a < LATENCY_BOUND, "flood (a): median {a} s");
    std::thread::sleep(Duration::from_millis(500));

    // (b) connections held on the attestation listener, far past its cap (the demo has 1024
    // descriptors: 1100 held connections used to take them all).
    let (_, att_addr) = host_port(&ready.attestation_url);
    let held: Vec<std::net::TcpStream> = (0..1100)
        .filter_map(|_| {
            let s = std::net::TcpStream::connect(att_addr).ok()?;
            use std::io::Write;
            let mut w = &s;
            let _ = w.write_all(b"POST /attestation HTTP/1.1\r\nHost: x\r\n");
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Past the cap the listener answers a fixed 429 and closes.
    let mut answered_429 = 0;
    let mut still_open = 0;
    for s in &held {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut buf = [0u8; 64];
        match (&*s).read(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 429") => answered_429 += 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => still_open += 1,
        }
    }
    eprintln!(
        "flood (b): {} connections opened, {answered_429} answered 429, {still_open} still held by the server",
        held.len()
    );
    let b = probe(&x, &key, "flood (b)");
    assert!(b < LATENCY_BOUND, "flood (b): median {b} s");
    let att_cap = keyward_secret::FdBudget::from_limit(1024).attestation;
    assert!(
        still_open <= att_cap,
        "the attestation listener held {still_open} connections, its cap is {att_cap}"
    );
    assert!(
        answered_429 > 0,
        "no connection past the cap was answered 429"
    );
    drop(held);

    // (c) many HTTP/2 streams, each declaring a large body and stalling after 128 KiB.
    let h2cfg = tls_client(&ready.ca_cert, b"h2");
    let streams = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for _ in 0..4 {
        let (h2cfg, host, path, streams) =
            (h2cfg.clone(), host.clone(), path.clone(), streams.clone());
        conns.push(rt.spawn(async move {
            let Some(tls) = tls_connect(&h2cfg, &host, addr).await else {
                return;
            };
            let Ok((sender, conn)) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            else {
                return;
            };
            tokio::spawn(conn);
            let mut tasks = Vec::new();
            for _ in 0..256 {
                let mut s = sender.clone();
                let req = http::Request::post(format!("https://{host}{path}"))
                    .header("content-type", "application/json")
                    .header("content-length", (cap - 64).to_string())
                    .body(Stall(Some(Bytes::from(vec![b'a'; 128 * 1024]))))
                    .unwrap();
                let streams = streams.clone();
                tasks.push(tokio::spawn(async move {
                    streams.fetch_add(1, Ordering::Relaxed);
                    let _ = s.send_request(req).await;
                }));
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tasks);
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_c = vm_rss_kb(pid);
    let c = probe(&x, &key, "flood (c)");
    eprintln!(
        "flood (c): {} streams opened, VmRSS {rss_c} kB (+{:.1} MB)",
        streams.load(Ordering::Relaxed),
        rss_c.saturating_sub(rss0) as f64 / 1024.0
    );
    assert!(c < LATENCY_BOUND, "flood (c): median {c} s");
    for t in conns {
        t.abort();
    }
    eprintln!("latency medians: quiet {quiet:.4} s, (a) {a:.4} s, (b) {b:.4} s, (c) {c:.4} s");
    drop(rt);
    drop(demo);
}
