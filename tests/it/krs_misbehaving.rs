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

use keyward_agent::client::{Agent, AgentError};

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
        let Ok((tcp, _)) = l.accept() else { return };
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
    addr
}

#[test]
fn a_misbehaving_krs_gives_typed_errors_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key, pin) =
        keyward_krp::tls::generate_cert(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(tmp.path().join("c.pem"), cert).unwrap();
    std::fs::write(tmp.path().join("k.pem"), key.as_bytes()).unwrap();
    let tls = keyward_krp::tls::server_config(
        keyward_krp::tls::load_certs(&tmp.path().join("c.pem")).unwrap(),
        keyward_krp::tls::load_key(&tmp.path().join("k.pem")).unwrap(),
    )
    .unwrap();
    let timeout = Duration::from_secs(2);
    let agent_for = |addr: String| {
        let cfg = keyward_config::release::AgentConfig {
            krs_url: addr,
            krs_fallback_urls: vec![],
            krs_tls_spki_sha256: hex::encode(pin),
            receipt_spki_sha256: hex::encode([7u8; 32]),
            admin_ca_sha256: String::new(),
            attesters: vec!["simulated-snp".into()],
            platform: None,
            timeout_secs: timeout.as_secs(),
        };
        let release = keyward_config::release::ReleaseConfig {
            agent: cfg.clone(),
            tpm_tcti: None,
            retry_initial_ms: 100,
            retry_max_secs: 1,
            policy_deny_retry_secs: 1,
            max_attempts: 1,
        };
        Agent {
            cfg,
            attesters: keyward_appliance::release::build_attesters(&release).unwrap(),
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
