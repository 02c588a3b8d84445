//! Fault injection between the agent and the KRS: a TLS stand-in holding the pinned KRS TLS
//! key (so the agent's TLS pin passes and the fault reaches its frame handling) that, after
//! reading the agent's Hello, answers garbage bytes, a valid frame of the wrong message (the
//! Hello echoed back), half a frame and then a closed connection, or nothing until just under or
//! just over the agent's timeout. The real agent must return a typed error each time, never
//! panic, and never wait past its timeout.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_agent::{Agent, AgentError};

#[derive(Clone, Copy, Debug)]
enum Misbehave {
    Garbage,
    WrongMessage,
    CutMidFrame,
    /// Echo the Hello after this long.
    Slow(Duration),
}

/// Serve one connection of `how` on a thread; returns the address.
fn stand_in(tls: Arc<rustls::ServerConfig>, how: Misbehave) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((tcp, _)) = l.accept() {
            misbehave_on(tls, tcp, how);
        }
    });
    addr
}

#[test]
fn a_misbehaving_krs_gives_typed_errors_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key, pin) =
        keyward_krp::generate_cert(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(tmp.path().join("c.pem"), cert).unwrap();
    std::fs::write(tmp.path().join("k.pem"), key.as_bytes()).unwrap();
    let tls = keyward_krp::server_config(
        keyward_pki::load_certs(&tmp.path().join("c.pem")).unwrap(),
        keyward_pki::load_key(&tmp.path().join("k.pem")).unwrap(),
    )
    .unwrap();
    let timeout = Duration::from_secs(2);
    let agent_for = |addr: String| {
        let cfg = keyward_config::AgentConfig {
            krs_url: addr,
            krs_fallback_urls: vec![],
            krs_tls_spki_sha256: hex::encode(pin),
            receipt_spki_sha256: hex::encode([7u8; 32]),
            admin_ca_sha256: String::new(),
            attesters: vec!["simulated-snp".into()],
            platform: None,
            timeout_secs: timeout.as_secs(),
        };
        let release = keyward_config::ReleaseConfig {
            agent: cfg.clone(),
            tpm_tcti: None,
            retry_initial_ms: 100,
            retry_max_secs: 1,
            policy_deny_retry_secs: 1,
            max_attempts: 1,
        };
        Agent {
            cfg,
            attesters: keyward_appliance::build_attesters(&release).unwrap(),
            product_release: "test-image".into(),
        }
    };
    let cases = [
        Misbehave::Garbage,
        Misbehave::WrongMessage,
        Misbehave::CutMidFrame,
        Misbehave::Slow(timeout - Duration::from_millis(600)),
        Misbehave::Slow(timeout + Duration::from_secs(1)),
    ];
    for how in cases {
        let agent = agent_for(stand_in(Arc::clone(&tls), how));
        let t0 = Instant::now();
        let err = match agent.release() {
            Ok(_) => panic!("{how:?}: released"),
            Err(e) => e,
        };
        let took = t0.elapsed();
        let shown = chain(&err);
        eprintln!("{how:?}: {took:?}: {shown} / {err:?}");
        assert!(
            took < timeout + Duration::from_millis(800),
            "{how:?}: waited {took:?}"
        );
        assert!(
            matches!(
                err,
                AgentError::Wire(_) | AgentError::Cbor(_) | AgentError::Protocol(_)
            ),
            "{how:?}: {err:?}"
        );
        if let Misbehave::Slow(d) = how {
            // A timeout says so (not the OS's "Resource temporarily unavailable").
            let timed_out = shown.contains("connection timed out");
            assert_eq!(timed_out, d > timeout, "{how:?}: {shown}");
            if d < timeout {
                assert!(took >= d, "{how:?}: did not wait for the answer");
            }
        }
    }
}

/// The error's display chain as one line (the agent's errors carry their causes as sources).
fn chain(e: &AgentError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// What the scripted stand-in does with its next connection.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Answer like [`stand_in`] does.
    Misbehave(Misbehave),
    /// Accept it, then close the listener: the next attempt finds nothing listening.
    MisbehaveThenRefuse(Misbehave),
}

/// Answer one accepted connection as `how` (TLS with the pinned key, after the Hello).
fn misbehave_on(tls: Arc<rustls::ServerConfig>, tcp: std::net::TcpStream, how: Misbehave) {
    std::thread::spawn(move || {
        let conn = rustls::ServerConnection::new(tls).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut hello).is_err() {
            return;
        }
        let _ = match how {
            Misbehave::Garbage => s.write_all(&[
                0, 0, 0, 16, 0xff, 0x13, 0x37, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ]),
            Misbehave::WrongMessage => s.write_all(&len).and_then(|()| s.write_all(&hello)),
            Misbehave::CutMidFrame => s.write_all(&[0, 0, 3, 232, 0xa1, 0x61, 0x76]),
            Misbehave::Slow(d) => {
                std::thread::sleep(d);
                s.write_all(&len).and_then(|()| s.write_all(&hello))
            }
        };
        let _ = s.flush();
        s.conn.send_close_notify();
        let _ = s.flush();
    });
}

/// Relay one connection byte for byte to the real KRS at `to` (TLS ends there).
fn forward(tcp: std::net::TcpStream, to: String) {
    std::thread::spawn(move || {
        let Ok(up) = std::net::TcpStream::connect(&to) else {
            return;
        };
        let (Ok(mut up_r), Ok(mut down_w)) = (up.try_clone(), tcp.try_clone()) else {
            return;
        };
        let (mut down_r, mut up_w) = (tcp, up);
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut down_w);
            let _ = down_w.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut down_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
    });
}

/// The agent's retry loop (`ReleaseSource::obtain_with_retry`, as `keyward serve` runs it at
/// boot) against a KRS address that first misbehaves and then recovers: garbage, half a frame
/// then a close, an answer 1 s past the timeout, nothing listening, then a relay to the real
/// `keyward krs serve` (SoftHSMv2). The fifth attempt is released; the status lines name each
/// attempt and its typed error; every delay follows the schedule (capped exponential backoff,
/// uniform in [d/2, d]); the KRS logs exactly one release (the faults never reached it). Then
/// a policy deny: at boot it waits `policy_deny_delay`, not the transport backoff; while
/// running (`obtain_more`) it is final, one attempt.
#[test]
fn the_retry_loop_survives_a_misbehaving_krs_and_releases_once_it_recovers() {
    use crate::common;
    use keyward_agent::{ReleaseSource, Retry, StatusFn};
    use std::sync::Mutex;

    let f = common::KrsFixture::new("krs-recovers", "").expect("SoftHSMv2 token");
    let meas = keyward_attest::DEMO_MEASUREMENT;
    let text = common::policy_text_full(
        2,
        &[hex::encode(meas)],
        &keyward_verify::testsign::test_root_policy_toml(),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    let krs = f.serve();
    // The stand-in holds the real KRS's TLS key, so the agent's pin passes for it too.
    let tls = keyward_krp::server_config(
        keyward_pki::load_certs(&f.state.join("tls.crt")).unwrap(),
        keyward_pki::load_key(&f.state.join("tls.key")).unwrap(),
    )
    .unwrap();

    let timeout = Duration::from_secs(1);
    let script = [
        Step::Misbehave(Misbehave::Garbage),
        Step::Misbehave(Misbehave::CutMidFrame),
        Step::MisbehaveThenRefuse(Misbehave::Slow(timeout + Duration::from_secs(1))),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (reopen_tx, reopen_rx) = std::sync::mpsc::channel::<()>();
    {
        let (tls, addr, krs_addr) = (Arc::clone(&tls), addr.clone(), krs.addr.clone());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            for step in script {
                let Some(l) = listener.as_ref() else { return };
                let Ok((tcp, _)) = l.accept() else { return };
                match step {
                    Step::Misbehave(how) => misbehave_on(Arc::clone(&tls), tcp, how),
                    Step::MisbehaveThenRefuse(how) => {
                        listener = None;
                        misbehave_on(Arc::clone(&tls), tcp, how);
                    }
                }
            }
            drop(listener);
            // Nothing listens until the agent has met the refused connection.
            if reopen_rx.recv().is_err() {
                return;
            }
            let l =
                TcpListener::bind(&addr).unwrap_or_else(|e| panic!("re-listening on {addr}: {e}"));
            for tcp in l.incoming().map_while(Result::ok) {
                forward(tcp, krs_addr.clone());
            }
        });
    }

    let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let reopen_tx = Mutex::new(Some(reopen_tx));
    let status: StatusFn = {
        let lines = Arc::clone(&lines);
        Arc::new(move |s: &str| {
            eprintln!("status: {s}");
            lines.lock().unwrap().push((Instant::now(), s.to_string()));
            if s.starts_with("phase=release attempt 4 failed") {
                if let Some(tx) = reopen_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        })
    };
    let mut cfg = f.agent_config(&addr);
    cfg.timeout_secs = timeout.as_secs();
    let retry = Retry {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(1),
        policy_deny_delay: Duration::from_secs(2),
        max_attempts: Some(8),
    };
    let source = ReleaseSource {
        agent: Agent {
            cfg: cfg.clone(),
            attesters: vec![Box::new(common::honest_snp(meas))],
            product_release: "test-image".into(),
        },
        retry: retry.clone(),
        status: Arc::clone(&status),
    };
    let t0 = Instant::now();
    let released = source
        .obtain_with_retry()
        .unwrap_or_else(|e| panic!("no release after the KRS recovered: {e:?}"));
    eprintln!("released after {:?}", t0.elapsed());

    let got = lines.lock().unwrap().clone();
    let texts: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    // Each attempt: a "contacting" line, then its outcome.
    assert_eq!(got.len(), 10, "{texts:#?}");
    let expect_error = [
        (1, "protocol"),
        (2, "protocol"),
        (3, "connection timed out"),
        (4, "Connection refused"),
    ];
    for (n, needle) in expect_error {
        let contacting = texts[2 * (n - 1)];
        assert_eq!(
            contacting,
            format!("phase=release attempt {n}: contacting {addr}"),
            "{texts:#?}"
        );
        let failed = texts[2 * (n - 1) + 1];
        assert!(
            failed.starts_with(&format!("phase=release attempt {n} failed: "))
                && failed.contains(needle),
            "attempt {n} should name {needle:?}: {failed}"
        );
    }
    assert!(
        texts[1].contains("CBOR") || texts[1].contains("decode"),
        "{}",
        texts[1]
    );
    assert!(
        texts[3].contains("UnexpectedEof") || texts[3].contains("fill whole buffer"),
        "{}",
        texts[3]
    );
    assert!(
        texts[7].contains(&format!("cannot reach the KRS at {addr}")),
        "{}",
        texts[7]
    );
    assert!(
        texts[9].starts_with("phase=release attempt 5: released"),
        "{}",
        texts[9]
    );

    // The delays: printed, and as waited, inside the schedule's window for each attempt.
    for n in 0..4u32 {
        let (failed_at, failed) = &got[2 * n as usize + 1];
        let (next_at, _) = &got[2 * n as usize + 2];
        let printed: f64 = failed
            .rsplit_once("retrying in ")
            .and_then(|(_, d)| d.strip_suffix('s'))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no delay in {failed}"));
        let full = (0.2 * f64::from(1u32 << n)).min(1.0);
        assert!(
            printed >= full / 2.0 - 0.051 && printed <= full + 0.051,
            "attempt {}: delay {printed}s outside [{}, {full}]",
            n + 1,
            full / 2.0
        );
        let waited = next_at.duration_since(*failed_at).as_secs_f64();
        assert!(
            waited >= printed - 0.06 && waited < printed + 1.0,
            "attempt {}: printed {printed}s, waited {waited:.3}s",
            n + 1
        );
    }
    // The slow answer was cut at the timeout, not waited for.
    let slow = got[5].0.duration_since(got[4].0);
    assert!(slow < timeout + Duration::from_millis(800), "{slow:?}");

    // Exactly one release reached the KRS (the faults never did), and its log verifies.
    let entries = f.log_entries();
    let releases = entries
        .iter()
        .filter(|e| e["decision"] == "release")
        .count();
    assert_eq!(releases, 1, "{entries:#?}");
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(
        entries[0]["index"], released.receipt.log_index,
        "{entries:#?}"
    );
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");

    // A policy deny (a measurement the policy does not list), through the relay.
    lines.lock().unwrap().clear();
    let denied = ReleaseSource {
        agent: Agent {
            cfg,
            attesters: vec![Box::new(common::honest_snp([0x5a; 48]))],
            product_release: "test-image".into(),
        },
        retry: Retry {
            max_attempts: Some(2),
            ..retry
        },
        status,
    };
    let err = match denied.obtain_with_retry() {
        Ok(_) => panic!("released to a measurement the policy does not list"),
        Err(e) => e,
    };
    assert!(err.is_policy_deny(), "{err:?}");
    let got = lines.lock().unwrap().clone();
    let texts: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(got.len(), 4, "{texts:#?}");
    assert!(
        texts[1].starts_with("phase=release attempt 1 policy deny: ")
            && texts[1].ends_with("retrying in 2.0s"),
        "{}",
        texts[1]
    );
    assert!(texts[3].ends_with("giving up"), "{}", texts[3]);
    // Not the transport backoff (0.1 to 0.2 s before a second attempt): the deny delay.
    let waited = got[2].0.duration_since(got[1].0);
    assert!(waited >= Duration::from_millis(1950), "{waited:?}");

    // While running, a deny is final: one attempt, at once.
    lines.lock().unwrap().clear();
    let before = f.log_entries().len();
    let t1 = Instant::now();
    use keyward_keystore::MasterKeySource;
    let err = match denied.obtain_more(&[1]) {
        Ok(_) => panic!("a running release was given to a measurement the policy does not list"),
        Err(e) => e,
    };
    assert!(t1.elapsed() < Duration::from_secs(3), "{:?}", t1.elapsed());
    let shown = keyward_agent::error_chain(&err);
    assert!(shown.contains("denied"), "{shown}");
    assert_eq!(f.log_entries().len(), before + 1, "one attempt only");
    let texts = lines.lock().unwrap().clone();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].1.contains("was denied"), "{:?}", texts[0]);

    let entries = f.log_entries();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["decision"] == "release")
            .count(),
        1
    );
    assert_eq!(
        entries.iter().filter(|e| e["decision"] == "deny").count(),
        3
    );
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");
    drop(krs);
}
