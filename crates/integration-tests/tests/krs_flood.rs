//! Issue 12 §3, the KRS half, replayed against the real `keyward krs serve` (its own SoftHSMv2
//! token) with a legitimate boot agent (simulated SNP evidence) that must still release while
//! each flood runs:
//! (a) undecodable frames and Evidence without a session (1 MiB of evidence each): the release
//!     log does not grow and the HSM signs nothing for them (the `krs status` counters);
//! (b) thousands of Hellos from 20 loopback sources: the session table stays within its cap;
//! (c) 64 connections trickling one byte a second from one source: cut by the handshake
//!     deadline and capped per source; a lone trickler is cut although it never goes quiet;
//! (d) Hello + garbage Evidence cycles on live sessions: bounded by the source's evidence
//!     budget (signed denies up to the burst, then unsigned `busy`).
//! Floods come from 127.0.0.2 and up (Linux routes all of 127/8 to loopback); the agent from
//! 127.0.0.1. Also: `krs serve` runs non-dumpable, without core files, with key memory locked.

use keyward_integration_tests::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_agent::{parse_pins, Agent};
use keyward_attest::SimulatedSnpAttester;
use keyward_krp::cbor::to_canonical;
use keyward_krp::messages::{Evidence, Hello, Request, Response};
use keyward_krp::wire;
use keyward_krp::DenyCode;
use keyward_krs::Status;
use keyward_verify::testsign::test_root_policy_toml;

const MEAS: [u8; 48] = [0x11; 48];

const LIMITS: &str = "[limits]
handshake_secs = 2
idle_secs = 3
frame_secs = 2
status_secs = 1
max_sessions = 64
max_sessions_per_source = 4
max_connections_per_source = 16
";

fn honest() -> SimulatedSnpAttester {
    common::honest_snp(MEAS)
}

fn fixture(label: &str) -> Option<common::KrsFixture> {
    let f = common::KrsFixture::new(label, LIMITS)?;
    let text = common::policy_text_full(
        2,
        &[hex::encode(MEAS)],
        &format!(
            "{}\n[snp.min_reported_tcb]\nsnp = 20\n",
            test_root_policy_toml()
        ),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    Some(f)
}

/// One release by the legitimate agent (from 127.0.0.1); how long it took.
fn legit_release(f: &common::KrsFixture, addr: &str) -> Duration {
    let agent = Agent {
        cfg: f.agent_config(addr),
        attesters: vec![Box::new(honest())],
        product_release: "keyward-test".into(),
    };
    let t0 = Instant::now();
    let r = agent.release();
    let took = t0.elapsed();
    let r = r.unwrap_or_else(|e| panic!("the legitimate agent did not release: {e}"));
    assert_eq!(r.receipt.decision, "release");
    took
}

/// The newest `krs status` line after the next one is due.
fn status(krs: &common::Running) -> Status {
    std::thread::sleep(Duration::from_millis(1300));
    all_status(krs)
        .pop()
        .unwrap_or_else(|| panic!("no krs status line:\n{}", krs.stderr()))
}

fn all_status(krs: &common::Running) -> Vec<Status> {
    krs.stderr()
        .lines()
        .filter_map(|l| l.split_once("krs status ").map(|(_, j)| j.to_string()))
        .filter_map(|j| serde_json::from_str(j.trim()).ok())
        .collect()
}

/// A TCP connection to `dst` from the loopback address `src`.
fn tcp_from(src: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A pinned TLS connection to the KRS from `src`.
fn tls_from(f: &FloodFixture, src: &str, dst: SocketAddr) -> std::io::Result<Tls> {
    let pin = parse_pins(&f.agent_config(&dst.to_string())).unwrap().tls;
    let cfg = keyward_krp::pinned_client_config(pin).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp_from(src, dst)?);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The first flight of a real TLS client (its ClientHello), to be trickled.
fn client_hello(f: &FloodFixture, dst: SocketAddr) -> Vec<u8> {
    let pin = parse_pins(&f.agent_config(&dst.to_string())).unwrap().tls;
    let cfg = keyward_krp::pinned_client_config(pin).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100);
    out
}

fn raw_call(s: &mut Tls, frame: &[u8]) -> std::io::Result<Response> {
    s.write_all(&(frame.len() as u32).to_be_bytes())?;
    s.write_all(frame)?;
    s.flush()?;
    wire::read_msg(s)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .ok_or_else(|| std::io::Error::other("closed"))
}

fn deny_code(r: &Response) -> Option<u32> {
    match r {
        Response::Deny(d) => {
            assert!(
                d.receipt.is_empty() && d.signature.is_empty(),
                "a flood deny was signed"
            );
            Some(d.code)
        }
        _ => None,
    }
}

/// Run `n` flood threads until `stop`; each calls `body` in a loop (reconnecting on error).
fn flood(
    n: usize,
    stop: &Arc<AtomicBool>,
    body: impl Fn(usize) -> std::io::Result<()> + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    let body = Arc::new(body);
    (0..n)
        .map(|i| {
            let stop = stop.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if body(i).is_err() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect()
}

/// Wait (at most a minute) until the flood threads have counted `n`.
fn wait_for(c: &AtomicU64, n: u64, what: &str) {
    let t0 = Instant::now();
    while c.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the flood stalled at {} {what} (a flood thread failed?)",
            c.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn join(stop: &Arc<AtomicBool>, hs: Vec<std::thread::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn legit_agent_releases_while_the_krs_is_flooded() {
    let Some(f) = fixture("krs-flood") else {
        return;
    };
    let krs = f.serve();
    let addr = krs.addr.clone();
    let dst: SocketAddr = addr.parse().unwrap();

    // `krs serve` is hardened as the appliance is.
    let pid = krs.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() == 2,
        "{core}"
    );
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vmlck: u64 = st
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(vmlck > 0, "the KRS holds no locked memory");

    let quiet = legit_release(&f, &addr);
    let base = status(&krs);
    let log_len = f.log_entries().len();
    let log_bytes = std::fs::metadata(f.log_path()).unwrap().len();
    eprintln!("no flood: release in {quiet:?}");

    // (a) Undecodable frames and Evidence for sessions that do not exist, 1 MiB of evidence.
    let pins = parse_pins(&f.agent_config(&addr)).unwrap();
    let big = to_canonical(&Request::Evidence(Evidence {
        v: 1,
        session_id: vec![0xee; 16],
        epk: vec![4; 97],
        policy_digest: vec![0; 48],
        evidence: vec![0xa5; 1_000_000],
        boot_key: vec![],
    }))
    .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ff, sent2, big2) = (Arc::new(f_clone(&f)), sent.clone(), Arc::new(big));
    let hs = flood(4, &stop, move |i| {
        let mut s = tls_from(&ff, "127.0.0.2", dst)?;
        for k in 0..30u32 {
            let frame: &[u8] = if k % 2 == 0 {
                &[0xff, 0x00, 0x42]
            } else {
                &big2
            };
            let r = raw_call(&mut s, frame)?;
            // Sessionless Evidence: unknown session, or busy once the source's evidence
            // budget is spent; both unsigned.
            let want: &[DenyCode] = if k % 2 == 0 {
                &[DenyCode::Malformed]
            } else {
                &[DenyCode::SessionUnknown, DenyCode::Busy]
            };
            let got = deny_code(&r);
            assert!(
                want.iter().any(|c| Some(c.number()) == got),
                "thread {i}: {got:?}"
            );
            sent2.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let under_a = legit_release(&f, &addr);
    wait_for(&sent, 40, "garbage frames");
    join(&stop, hs);
    let after_a = status(&krs);
    let n = sent.load(Ordering::Relaxed);
    eprintln!("(a) {n} garbage/sessionless frames: release in {under_a:?}");
    assert!(n >= 40);
    // Exactly one entry more (the legitimate release), and two HSM signatures (its receipt
    // and the head): nothing for the flood.
    assert_eq!(
        f.log_entries().len(),
        log_len + 1,
        "the flood reached the log"
    );
    let grew = std::fs::metadata(f.log_path()).unwrap().len() - log_bytes;
    assert!(grew < 64 * 1024, "the log grew by {grew} bytes");
    assert_eq!(after_a.hsm_signs, base.hsm_signs + 2, "{after_a:?}");
    assert_eq!(after_a.releases, base.releases + 1);
    let d = |s: &Status, k: &str| s.unsigned_denies.get(k).copied().unwrap_or(0);
    assert!(d(&after_a, "malformed") >= n / 2, "{after_a:?}");
    assert!(
        d(&after_a, "session_unknown") + d(&after_a, "busy") >= n / 2 - 1,
        "{after_a:?}"
    );
    let _ = pins;

    // (b) Thousands of Hellos from 20 sources, each holding its sessions open: 20 x 4 open
    // sessions would be 80, over the cap of 64, so both the eviction and the per-source quota
    // are at work.
    let hellos = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ff, h2) = (Arc::new(f_clone(&f)), hellos.clone());
    let hs = flood(20, &stop, move |i| {
        let src = format!("127.0.0.{}", 10 + i);
        let mut s = tls_from(&ff, &src, dst)?;
        let hello = Hello {
            v: 1,
            platform: "snp".into(),
            product_release: "flood".into(),
            algs: vec![],
            pins: parse_pins(&ff.agent_config(&dst.to_string())).unwrap().pins,
            key_versions: None,
        };
        for _ in 0..60 {
            wire::write_msg(&mut s, &Request::Hello(hello.clone()))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let r: Response = wire::read_msg(&mut s)
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .ok_or_else(|| std::io::Error::other("closed"))?;
            match r {
                Response::Challenge(_) => {}
                r => assert_eq!(deny_code(&r), Some(DenyCode::Busy.number())),
            }
            h2.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    wait_for(&hellos, 1000, "Hellos");
    let under_b = legit_release(&f, &addr);
    wait_for(&hellos, 3000, "Hellos");
    let mid_b = status(&krs);
    join(&stop, hs);
    let after_b = status(&krs);
    let n = hellos.load(Ordering::Relaxed);
    eprintln!("(b) {n} Hellos from 20 sources: release in {under_b:?}; {mid_b:?}");
    for s in all_status(&krs) {
        assert!(s.sessions <= 64, "session table over its cap: {s:?}");
    }
    assert_eq!(mid_b.max_sessions, 64);
    assert!(d(&after_b, "busy") > 0, "{after_b:?}");
    assert_eq!(
        after_b.hsm_signs,
        after_a.hsm_signs + 2,
        "Hellos cost HSM work"
    );

    // (c) 64 connections from one source, each trickling one byte a second, reconnecting
    // whenever the KRS closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let ch = Arc::new(client_hello(&f_clone(&f), dst));
    let ch2 = ch.clone();
    let hs = flood(64, &stop, move |_| {
        let mut s = tcp_from("127.0.0.3", dst)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        for b in ch2.iter() {
            if stop2.load(Ordering::Relaxed) {
                return Ok(());
            }
            s.write_all(&[*b])?;
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => return Err(std::io::Error::other("closed by the KRS")),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    // A lone trickler elsewhere, never quiet for more than half a second: cut by the
    // handshake deadline (2 s), not kept alive by its bytes.
    let mut lone = tcp_from("127.0.0.4", dst).unwrap();
    lone.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let t0 = Instant::now();
    let mut cut = None;
    for b in ch.iter().take(40) {
        if lone.write_all(&[*b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match lone.read(&mut buf) {
            Ok(0) => {
                cut = Some(t0.elapsed());
                break;
            }
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                cut = Some(t0.elapsed());
                break;
            }
            _ => {}
        }
    }
    let cut = cut.expect("a trickling connection was never cut");
    assert!(cut < Duration::from_secs(4), "cut after {cut:?}");
    let under_c = legit_release(&f, &addr);
    let mid_c = status(&krs);
    join(&stop, hs);
    eprintln!(
        "(c) 64 tricklers: lone trickler cut after {cut:?}; release in {under_c:?}; {mid_c:?}"
    );
    assert!(mid_c.connections_refused_per_source > 0, "{mid_c:?}");
    assert!(mid_c.deadline_cuts > 0, "{mid_c:?}");
    for t in [under_a, under_b, under_c] {
        assert!(t < Duration::from_secs(5), "release took {t:?}");
    }
    // Warning lines stayed within their rate; the rest were counted.
    assert!(mid_c.warnings_suppressed > 0, "{mid_c:?}");
    let warn_lines = krs.stderr().lines().filter(|l| l.contains("WARN")).count();
    assert!(warn_lines < 400, "{warn_lines} warning lines");

    // (d) Hello then garbage Evidence on each live session, from one source: each would cost
    // two HSM signatures and fsyncs; the source's evidence budget (60 a minute, bursts of 15)
    // bounds them, the rest (Evidence, then Hellos once 4 sessions are left open) are busy,
    // unsigned.
    let before_d = status(&krs);
    let log_len = f.log_entries().len();
    let ff = f_clone(&f);
    let (mut signed, mut busy) = (0, 0);
    let mut s = tls_from(&ff, "127.0.0.5", dst).unwrap();
    let hello = Hello {
        v: 1,
        platform: "snp".into(),
        product_release: "flood".into(),
        algs: vec![],
        pins: parse_pins(&ff.agent_config(&addr)).unwrap().pins,
        key_versions: None,
    };
    let t0 = Instant::now();
    for _ in 0..40 {
        wire::write_msg(&mut s, &Request::Hello(hello.clone())).unwrap();
        // Sessions left open by refused Evidence count against the source's quota (4):
        // then the Hello itself is busy.
        let ch = match wire::read_msg(&mut s).unwrap() {
            Some(Response::Challenge(ch)) => ch,
            Some(r) => {
                assert_eq!(deny_code(&r), Some(DenyCode::Busy.number()));
                busy += 1;
                continue;
            }
            None => panic!("closed"),
        };
        let ev = Evidence {
            v: 1,
            session_id: ch.session_id.clone(),
            epk: vec![4; 97],
            policy_digest: ch.policy_digest.clone(),
            evidence: vec![0xa5; 1000],
            boot_key: vec![],
        };
        wire::write_msg(&mut s, &Request::Evidence(ev)).unwrap();
        match wire::read_msg(&mut s).unwrap() {
            Some(Response::Deny(d)) if d.receipt.is_empty() => {
                assert_eq!(d.code, DenyCode::Busy.number());
                busy += 1;
            }
            Some(Response::Deny(_)) => signed += 1,
            other => panic!("{other:?}"),
        }
    }
    let took = t0.elapsed();
    drop(s);
    let under_d = legit_release(&f, &addr);
    let after_d = status(&krs);
    eprintln!(
        "(d) 40 Hello+Evidence cycles in {took:?}: {signed} signed, {busy} busy; release in {under_d:?}"
    );
    // The burst, plus one a second of refill while the cycles ran.
    let most = 15 + took.as_secs() as usize + 1;
    assert!(
        (15..=most).contains(&signed),
        "{signed} signed denies in {took:?}"
    );
    assert!(busy > 0);
    assert_eq!(signed + busy, 40);
    assert_eq!(f.log_entries().len(), log_len + signed + 1);
    assert_eq!(
        after_d.hsm_signs,
        before_d.hsm_signs + 2 * (signed as u64 + 1),
        "{after_d:?}"
    );
    assert!(under_d < Duration::from_secs(5));

    drop(krs);
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");
}

/// What the flood threads need of the fixture (it is not `Sync`: it owns a temp dir).
struct FloodFixture {
    tls_pin: String,
    receipt_pin: String,
}

impl FloodFixture {
    fn agent_config(&self, addr: &str) -> keyward_config::AgentConfig {
        keyward_config::AgentConfig {
            krs_url: addr.to_string(),
            krs_fallback_urls: Vec::new(),
            krs_tls_spki_sha256: self.tls_pin.clone(),
            receipt_spki_sha256: self.receipt_pin.clone(),
            // The fixture KRS's `test` deployment, so the flood's Hellos get sessions.
            admin_ca_sha256: common::TEST_ADMIN_CA_PIN.into(),
            attesters: vec![],
            platform: Some("snp".into()),
            timeout_secs: 10,
        }
    }
}

fn f_clone(f: &common::KrsFixture) -> FloodFixture {
    FloodFixture {
        tls_pin: f.tls_pin.clone(),
        receipt_pin: f.receipt_pin.clone(),
    }
}
