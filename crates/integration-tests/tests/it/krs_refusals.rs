//! Refusals of the real `keyward krs serve` (SoftHSMv2 token of its own), each asserting the
//! specific reason from the KRS's own release log, the opaque code and signed deny receipt the
//! caller gets, and that no key material was sent. Refusals before a session was consumed
//! (replayed, unknown or expired session, wrong pins, garbage) are unsigned and leave the
//! release log alone (issue 12 §3). Also: policy rollback/unsigned refusal at
//! start, and `krs log verify` catching a tampered, reordered or truncated log.

use crate::common;

use std::time::Duration;

use keyward_agent::{check_challenge, denied, parse_pins, AgentError, Client};
use keyward_evidence::EvidenceBundle;
use keyward_krp::cbor::to_canonical;
use keyward_krp::messages::{Challenge, Evidence, Hello, Request, Response};
use keyward_krp::EphemeralKey;
use keyward_krp::{verify_receipt, DenyCode};

fn connect(f: &common::KrsFixture, addr: &str) -> Client {
    let pins = parse_pins(&f.agent_config(addr)).unwrap();
    Client::connect(addr, pins.tls, Duration::from_secs(5)).unwrap()
}

fn hello(f: &common::KrsFixture, addr: &str) -> Hello {
    let pins = parse_pins(&f.agent_config(addr)).unwrap();
    Hello {
        v: 1,
        platform: "snp".into(),
        product_release: "test-image".into(),
        algs: vec![],
        pins: pins.pins,
        key_versions: None,
    }
}

fn challenge(c: &mut Client, h: &Hello) -> Challenge {
    match c.call(&Request::Hello(h.clone())).unwrap() {
        Response::Challenge(ch) => ch,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn evidence(ch: &Challenge, epk: Vec<u8>) -> Evidence {
    Evidence {
        v: 1,
        session_id: ch.session_id.clone(),
        epk,
        policy_digest: ch.policy_digest.clone(),
        evidence: to_canonical(&EvidenceBundle {
            version: 1,
            ..Default::default()
        })
        .unwrap(),
        boot_key: vec![],
    }
}

/// Assert a deny with `code`: opaque number, a receipt signed by the pinned key naming the
/// same code, nothing else; and the last log entry names `reason`.
fn assert_deny(f: &common::KrsFixture, resp: Response, ch: &Challenge, code: DenyCode) {
    let d = match resp {
        Response::Deny(d) => d,
        Response::Release(_) => panic!("key material was released"),
        other => panic!("expected deny, got {other:?}"),
    };
    assert_eq!(d.code, code.number());
    let r = verify_receipt(&ch.receipt_spki, &d.receipt, &d.signature).unwrap();
    assert_eq!(r.decision, "deny");
    assert_eq!(r.code, Some(code.number()));
    assert!(r.hsm_epk.is_empty() && r.wrapped_digest.is_empty());
    let err = denied(&d, Some(&ch.receipt_spki));
    assert!(
        matches!(
            err,
            AgentError::Denied {
                receipt_verified: true,
                ..
            }
        ),
        "{err}"
    );
    let log = f.log_entries();
    let last = log.last().unwrap();
    assert_eq!(last["decision"], "deny");
    assert_eq!(last["reason"], code.name(), "log entry: {last}");
    assert_eq!(last["code"], code.number());
    assert_eq!(last["index"], r.log_index);
}

/// Assert an unsigned deny with `code` (no receipt, no signature) that left the log as it was.
fn assert_unsigned_deny(f: &common::KrsFixture, resp: Response, code: DenyCode, log_len: usize) {
    let d = match resp {
        Response::Deny(d) => d,
        Response::Release(_) => panic!("key material was released"),
        other => panic!("expected deny, got {other:?}"),
    };
    assert_eq!(d.code, code.number(), "expected {}", code.name());
    assert!(d.receipt.is_empty() && d.signature.is_empty());
    assert!(matches!(
        denied(&d, None),
        AgentError::Denied {
            receipt_verified: false,
            ..
        }
    ));
    assert_eq!(f.log_entries().len(), log_len, "the release log grew");
}

#[test]
fn krs_refusals_and_log_verify() {
    let Some(f) = common::KrsFixture::new("krs-refusals", "session_ttl_secs = 1") else {
        return;
    };
    let krs = f.serve();
    let addr = krs.addr.clone();
    let h = hello(&f, &addr);
    let mut c = connect(&f, &addr);

    // Evidence not satisfying the policy (no SNP report at all): refused by the verifier.
    let ch = challenge(&mut c, &h);
    check_challenge(&ch, &parse_pins(&f.agent_config(&addr)).unwrap().receipt).unwrap();
    let ev = evidence(&ch, EphemeralKey::generate().public_sec1());
    let r = c.call(&Request::Evidence(ev.clone())).unwrap();
    assert_deny(&f, r, &ch, DenyCode::EvidenceRejected);
    let last = f.log_entries().pop().unwrap();
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("bundle.required_evidence"),
        "{last}"
    );

    // Replayed session: the same Evidence again.
    let n = f.log_entries().len();
    let r = c.call(&Request::Evidence(ev)).unwrap();
    assert_unsigned_deny(&f, r, DenyCode::SessionReplayed, n);

    // Unknown session.
    let mut ev = evidence(&ch, EphemeralKey::generate().public_sec1());
    ev.session_id = vec![0xee; 16];
    let r = c.call(&Request::Evidence(ev)).unwrap();
    assert_unsigned_deny(&f, r, DenyCode::SessionUnknown, n);

    // Expired nonce (session_ttl_secs = 1).
    let ch = challenge(&mut c, &h);
    std::thread::sleep(Duration::from_millis(2100));
    let r = c
        .call(&Request::Evidence(evidence(
            &ch,
            EphemeralKey::generate().public_sec1(),
        )))
        .unwrap();
    assert_unsigned_deny(&f, r, DenyCode::SessionExpired, n);

    // Policy digest mismatch: the agent put another policy digest into T.
    let ch = challenge(&mut c, &h);
    let mut ev = evidence(&ch, EphemeralKey::generate().public_sec1());
    ev.policy_digest[0] ^= 1;
    let r = c.call(&Request::Evidence(ev)).unwrap();
    assert_deny(&f, r, &ch, DenyCode::PolicyDigestMismatch);

    // Not a P-384 ephemeral key.
    let ch = challenge(&mut c, &h);
    let r = c
        .call(&Request::Evidence(evidence(&ch, vec![4u8; 97])))
        .unwrap();
    assert_deny(&f, r, &ch, DenyCode::BadEphemeralKey);

    // Evidence over limits.log_evidence_max: the deny is signed and logged, the raw evidence
    // is not copied into the log (its digest is).
    let ch = challenge(&mut c, &h);
    let mut ev = evidence(&ch, EphemeralKey::generate().public_sec1());
    ev.evidence = vec![0xa5; 200_000];
    let r = c.call(&Request::Evidence(ev)).unwrap();
    assert_deny(&f, r, &ch, DenyCode::EvidenceMalformed);
    let last = f.log_entries().pop().unwrap();
    assert!(last.get("evidence").is_none(), "raw evidence was logged");
    assert!(
        last["detail"].as_str().unwrap().contains("not kept"),
        "{last}"
    );
    assert!(
        last.to_string().len() < 8192,
        "{} bytes",
        last.to_string().len()
    );

    // Hello with a receipt-key pin that is not this KRS's: denied before any session.
    let mut bad = h.clone();
    bad.pins.receipt_spki_sha256 = vec![0x11; 32];
    let n = f.log_entries().len();
    let r = c.call(&Request::Hello(bad)).unwrap();
    assert_unsigned_deny(&f, r, DenyCode::PinMismatch, n);

    // Garbage frame contents: a counted deny, not a crash.
    let r = c.call_raw(&[0xff, 0x00, 0x42]).unwrap();
    assert_unsigned_deny(&f, r, DenyCode::Malformed, n);

    // The KRS's TLS key is not the pinned one: the handshake fails, nothing is sent.
    let before = f.log_entries().len();
    let err = Client::connect(&addr, [0x22; 32], Duration::from_secs(5))
        .err()
        .expect("a wrong TLS pin must fail");
    assert!(matches!(err, AgentError::Tls(_)), "{err}");
    assert_eq!(f.log_entries().len(), before);

    // A fake KRS answering with another receipt key is refused by the agent at the challenge.
    let mut fake = challenge(&mut c, &h);
    let other = p384::SecretKey::random(&mut rand_core::OsRng);
    use p384::pkcs8::EncodePublicKey;
    fake.receipt_spki = other
        .public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    let pins = parse_pins(&f.agent_config(&addr)).unwrap();
    assert!(matches!(
        check_challenge(&fake, &pins.receipt),
        Err(AgentError::ReceiptKeyNotPinned)
    ));

    // The whole log verifies offline; then tampered, reordered and truncated copies do not.
    drop(krs);
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(f.log_path()).unwrap();
    let head = std::fs::read(f.dir.join("krs-state/release.log.head")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3);
    let check = |name: &str, body: String| {
        let p = f.dir.join(name);
        std::fs::write(&p, body).unwrap();
        let mut hp = p.as_os_str().to_owned();
        hp.push(".head");
        std::fs::write(hp, &head).unwrap();
        let (ok, out) = f.log_verify(&p);
        assert!(!ok, "{name} must not verify: {out}");
        out
    };
    let tampered = text.replacen("policy_digest_mismatch", "bad_ephemeral_key", 1);
    assert_ne!(tampered, text);
    let out = check("tampered.log", tampered);
    assert!(out.contains("hash"), "{out}");
    let mut re = lines.clone();
    re.swap(1, 2);
    check("reordered.log", re.join("\n") + "\n");
    let out = check("truncated.log", lines[..lines.len() - 1].join("\n") + "\n");
    assert!(out.contains("truncated"), "{out}");
    // An intact copy with its head verifies (the checks above are not vacuous).
    let p = f.dir.join("copy.log");
    std::fs::write(&p, &text).unwrap();
    std::fs::write(f.dir.join("copy.log.head"), &head).unwrap();
    assert!(f.log_verify(&p).0);
}

#[test]
fn krs_refuses_older_or_unsigned_policy() {
    let Some(f) = common::KrsFixture::new("krs-policy", "") else {
        return;
    };
    // Version 3 accepted, persisted.
    f.sign_policy(3, "", &f.policy_file);
    let krs = f.serve();
    drop(krs);
    assert_eq!(
        std::fs::read_to_string(f.state.join("policy.version"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap(),
        "3"
    );
    // Version 2 afterwards: `policy check` and `serve` both refuse.
    f.sign_policy(2, "", &f.policy_file);
    let out = f
        .cmd()
        .args(["krs", "policy", "check", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("older"));
    let err = f.serve_refused();
    assert!(err.contains("older than version 3"), "{err}");

    // An unsigned policy (the verifier TOML itself) is refused.
    std::fs::write(&f.policy_file, common::policy_text(4, "")).unwrap();
    let err = f.serve_refused();
    assert!(err.contains("not a signed policy"), "{err}");

    // A policy signed by another admin key is refused.
    let other = f.dir.join("other.pem");
    common::run_ok(
        f.cmd()
            .args(["krs", "policy", "keygen", "--out"])
            .arg(&other)
            .arg("--public")
            .arg(f.dir.join("other.pub.pem")),
    );
    let text = f.dir.join("p5.toml");
    std::fs::write(&text, common::policy_text(5, "")).unwrap();
    let _ = std::fs::remove_file(&f.policy_file);
    common::run_ok(
        f.cmd()
            .args(["krs", "policy", "sign", "--key"])
            .arg(&other)
            .arg("--in")
            .arg(&text)
            .arg("--out")
            .arg(&f.policy_file),
    );
    assert!(f.serve_refused().contains("signature"));

    // `policy show` prints id, version and verification status.
    f.sign_policy(6, "", &f.policy_file);
    let out = common::run_ok(
        f.cmd()
            .args(["krs", "policy", "show"])
            .arg(&f.policy_file)
            .arg("--admin-key")
            .arg(&f.admin_pub),
    );
    assert!(
        out.contains("version:   6") && out.contains("signature: valid"),
        "{out}"
    );
}
