//! TPM quotes from a real swtpm (started here, temp state dir, free ports), verified by the
//! pure-Rust verifier: a good quote over extended PCRs with a synthetic event log that replays
//! to them, then a wrong nonce, a wrong PCR, a tampered PCR value and another AK, all refused.

use crate::tools;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_attest::{provision_ak, TpmAttester, TpmConfig};
use keyward_attest::{Attester, Binding};
use keyward_evidence::EvidenceBundle;
use keyward_verify::tpm::{build_event_log, verify_tpm, AllowedPcr, Bank, TpmPolicy, UserspacePcr};
use keyward_verify::{Status, Verdict};
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues};

struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Swtpm {
    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

/// Two adjacent free loopback ports (server, control).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

fn start_swtpm() -> Swtpm {
    // A missing swtpm fails the test with the package name (never a silent pass).
    let swtpm = tools::need("swtpm", "swtpm");
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let port = free_port_pair();
        let child = Command::new(&swtpm)
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={}", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.path().display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Swtpm {
            child,
            port,
            _dir: tempfile::tempdir().unwrap(),
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                s._dir = dir;
                return s;
            }
            if let Ok(Some(_)) = s.child.try_wait() {
                break; // port race: try another pair
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("swtpm did not start");
}

fn extend(tcti: &str, pcr: u8, bank: Bank, digest: &[u8]) {
    let mut ctx = keyward_attest::open_context(tcti).unwrap();
    let handle = pcr_handle(pcr);
    let mut vals = DigestValues::new();
    let alg = match bank {
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
    };
    vals.set(alg, Digest::try_from(digest.to_vec()).unwrap());
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.pcr_extend(handle, vals))
        .unwrap();
}

fn pcr_handle(pcr: u8) -> PcrHandle {
    match pcr {
        0 => PcrHandle::Pcr0,
        4 => PcrHandle::Pcr4,
        7 => PcrHandle::Pcr7,
        11 => PcrHandle::Pcr11,
        12 => PcrHandle::Pcr12,
        15 => PcrHandle::Pcr15,
        16 => PcrHandle::Pcr16,
        _ => panic!("add PCR {pcr} to the test's table"),
    }
}

fn checks_failed(v: &Verdict) -> Vec<String> {
    v.checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.clone())
        .collect()
}

const PHASES: [&str; 3] = ["enter-initrd", "leave-initrd", "ready"];

#[test]
fn swtpm_quotes_verify_and_forgeries_are_refused() {
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let bank = Bank::Sha256;

    // Provision the registered AK (and a second one the policy does not know).
    let ak = provision_ak(&tcti, 0x8101_0002).unwrap();
    let other = provision_ak(&tcti, 0x8101_0003).unwrap();
    assert_ne!(ak.name_hex, other.name_hex);

    // Firmware/stub events (PCR 4 and 12) go into both the log and the TPM.
    let events: Vec<(u32, u32, Vec<u8>)> = vec![
        (
            4,
            0x8000_0007,
            b"Calling EFI Application from Boot Option".to_vec(),
        ),
        (4, 0x0000_0004, vec![0, 0, 0, 0]),
        (
            4,
            0x8000_0003,
            b"the UKI's authenticode digest stands in here".to_vec(),
        ),
        (12, 0x0000_000d, b"console=ttyS0".to_vec()),
    ];
    for (pcr, _, data) in &events {
        extend(&tcti, *pcr as u8, bank, &bank.hash(data));
    }
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("binary_bios_measurements");
    std::fs::write(&log_path, build_event_log(bank, &events)).unwrap();

    // User-space extends (not in the firmware log): pcrphase words into 11, pins into 15.
    for w in PHASES {
        extend(&tcti, 11, bank, &bank.hash(w.as_bytes()));
    }
    let pins_digest = bank.hash(b"pins cbor");
    extend(&tcti, 15, bank, &pins_digest);

    let pcrs = vec![0, 4, 11, 12, 15];
    let attester = TpmAttester::new(TpmConfig {
        tcti: tcti.clone(),
        ak_handle: ak.handle,
        bank,
        pcrs: pcrs.clone(),
        event_log: Some(log_path.clone()),
    });
    assert_eq!(attester.name(), "tpm");
    let nonce: Vec<u8> = (0..64u8).collect();
    let binding = Binding {
        report_data: [0u8; 64],
        user_data: nonce.clone(),
        nonce: None,
        public_key: None,
    };
    let mut bundle = EvidenceBundle::default();
    attester.attest(&binding, &mut bundle).unwrap();
    let ev = bundle.tpm.clone().unwrap();

    // Expected PCR 4 value, computed independently of the log parser.
    let mut pcr4 = vec![0u8; 32];
    for (_, _, d) in events.iter().filter(|e| e.0 == 4) {
        pcr4 = bank.extend(&pcr4, &bank.hash(d));
    }
    let policy = TpmPolicy {
        registered_aks: vec![ak.name_hex.clone()],
        bank: "sha256".into(),
        pcrs: pcrs.clone(),
        replay: None,
        userspace: vec![
            UserspacePcr {
                pcr: 11,
                words: PHASES.iter().map(|s| s.to_string()).collect(),
                digests: vec![],
            },
            UserspacePcr {
                pcr: 15,
                words: vec![],
                digests: vec![hex::encode(&pins_digest)],
            },
        ],
        allowed: vec![AllowedPcr {
            pcr: 4,
            values: vec![hex::encode(&pcr4)],
        }],
    };

    // 1. The genuine quote verifies; the verdict names what was replayed and compared.
    let mut v = Verdict::default();
    verify_tpm(&ev, &policy, Some(&nonce), &mut v);
    assert!(v.ok(), "{:#?}", v.checks);
    let replay = v.checks.iter().find(|c| c.name == "tpm.replay").unwrap();
    assert_eq!(replay.status, Status::Passed);
    assert!(replay.detail.contains("[0, 4, 12]"), "{}", replay.detail);
    let user = v.checks.iter().find(|c| c.name == "tpm.userspace").unwrap();
    assert!(user.detail.contains("[11, 15]"), "{}", user.detail);

    // 1b. The same through the library entry point and a TOML policy file.
    let toml = format!(
        r#"format = 1
required_evidence = ["tpm"]
[tpm]
registered_aks = ["{ak}"]
bank = "sha256"
pcrs = [0, 4, 11, 12, 15]
[[tpm.userspace]]
pcr = 11
words = ["enter-initrd", "leave-initrd", "ready"]
[[tpm.userspace]]
pcr = 15
digests = ["{pins}"]
[[tpm.allowed]]
pcr = 4
values = ["{pcr4}"]
"#,
        ak = ak.name_hex,
        pins = hex::encode(&pins_digest),
        pcr4 = hex::encode(&pcr4)
    );
    let pol = keyward_verify::Policy::from_bytes(toml.as_bytes()).unwrap();
    let expect = keyward_verify::Expectations {
        qualifying_data: Some(nonce.clone()),
        ..Default::default()
    };
    let v = keyward_verify::verify_bundle(&bundle, &pol, &expect, std::time::SystemTime::now());
    assert!(v.ok(), "{:#?}", v.checks);
    assert!(v
        .checks
        .iter()
        .any(|c| c.name == "tpm.replay" && c.status == Status::Passed));
    // A policy without a [tpm] section registers no AK: refused.
    let pol =
        keyward_verify::Policy::from_bytes(b"format = 1\nrequired_evidence = [\"tpm\"]\n").unwrap();
    let v = keyward_verify::verify_bundle(&bundle, &pol, &expect, std::time::SystemTime::now());
    assert_eq!(checks_failed(&v), vec!["tpm.policy"]);

    // 2. Wrong nonce.
    let mut v = Verdict::default();
    let mut wrong = nonce.clone();
    wrong[0] ^= 1;
    verify_tpm(&ev, &policy, Some(&wrong), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.extra_data"]);

    // 3. Wrong PCR: the policy allows another PCR 4 value.
    let mut p = policy.clone();
    p.allowed[0].values = vec![hex::encode([0x11u8; 32])];
    let mut v = Verdict::default();
    verify_tpm(&ev, &p, Some(&nonce), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.pcr_allowed"]);

    // 3b. Wrong user-space expectation (a phase word missing).
    let mut p = policy.clone();
    p.userspace[0].words.pop();
    let mut v = Verdict::default();
    verify_tpm(&ev, &p, Some(&nonce), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.userspace"]);

    // 4. A PCR value changed in the evidence: the quote's digest no longer matches.
    let mut forged = ev.clone();
    forged.pcrs[1].value[0] ^= 1;
    let mut v = Verdict::default();
    verify_tpm(&forged, &policy, Some(&nonce), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.pcr_digest"]);

    // 5. A tampered attest body: the signature fails.
    let mut forged = ev.clone();
    let n = forged.attest.len();
    forged.attest[n - 1] ^= 1;
    let mut v = Verdict::default();
    verify_tpm(&forged, &policy, Some(&nonce), &mut v);
    assert!(checks_failed(&v).contains(&"tpm.signature".to_string()));

    // 6. Another AK: a genuine quote by an unregistered key is refused...
    let other_att = TpmAttester::new(TpmConfig {
        tcti: tcti.clone(),
        ak_handle: other.handle,
        bank,
        pcrs: pcrs.clone(),
        event_log: Some(log_path.clone()),
    });
    let mut b2 = EvidenceBundle::default();
    other_att.attest(&binding, &mut b2).unwrap();
    let mut v = Verdict::default();
    verify_tpm(b2.tpm.as_ref().unwrap(), &policy, Some(&nonce), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.ak_trusted"]);
    // ...and claiming the registered AK for it breaks the signature.
    let mut swapped = b2.tpm.clone().unwrap();
    swapped.ak_public = ev.ak_public.clone();
    let mut v = Verdict::default();
    verify_tpm(&swapped, &policy, Some(&nonce), &mut v);
    assert_eq!(checks_failed(&v), vec!["tpm.signature"]);

    // 7. An extend the log does not record: PCR 4 no longer replays.
    extend(&tcti, 4, bank, &bank.hash(b"unlogged"));
    let mut b3 = EvidenceBundle::default();
    attester.attest(&binding, &mut b3).unwrap();
    let mut v = Verdict::default();
    verify_tpm(b3.tpm.as_ref().unwrap(), &policy, Some(&nonce), &mut v);
    let failed = checks_failed(&v);
    assert!(failed.contains(&"tpm.replay".to_string()), "{failed:?}");
    assert!(
        failed.contains(&"tpm.pcr_allowed".to_string()),
        "{failed:?}"
    );
}

#[test]
fn swtpm_sha384_bank_quote_verifies() {
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let ak = provision_ak(&tcti, 0x8101_0002).unwrap();
    let bank = Bank::Sha384;
    let events = vec![(12u32, 13u32, b"cmdline".to_vec())];
    extend(&tcti, 12, bank, &bank.hash(&events[0].2));
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    std::fs::write(&log_path, build_event_log(bank, &events)).unwrap();
    let att = TpmAttester::new(TpmConfig {
        tcti,
        ak_handle: ak.handle,
        bank,
        pcrs: vec![4, 12],
        event_log: Some(log_path),
    });
    let q = [7u8; 48];
    let binding = Binding {
        report_data: [0; 64],
        user_data: q.to_vec(),
        nonce: None,
        public_key: None,
    };
    let mut b = EvidenceBundle::default();
    att.attest(&binding, &mut b).unwrap();
    let policy = TpmPolicy {
        registered_aks: vec![ak.name_hex],
        bank: "sha384".into(),
        pcrs: vec![4, 12],
        ..Default::default()
    };
    let mut v = Verdict::default();
    verify_tpm(b.tpm.as_ref().unwrap(), &policy, Some(&q), &mut v);
    assert!(v.ok(), "{:#?}", v.checks);
    // The policy asking for the sha256 bank refuses this quote.
    let p = TpmPolicy {
        bank: "sha256".into(),
        ..policy
    };
    let mut v = Verdict::default();
    verify_tpm(b.tpm.as_ref().unwrap(), &p, Some(&q), &mut v);
    assert!(checks_failed(&v).contains(&"tpm.pcr_selection".to_string()));
}

#[test]
fn swtpm_nitrotpm_message_buffer_and_vendor_command_framing() {
    use keyward_attest::nitrotpm::{
        encode_request, exchange, read_and_undefine, write_request, NitroTpmAttester,
        NitroTpmConfig, RawTransport,
    };
    use keyward_attest::AttestError;
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let req = encode_request(Some(&[0xaa; 64]), Some(&[1; 32]), Some(b"spki"));

    // The message-buffer protocol on a real TPM: define, write, read back, undefine.
    let mut ctx = keyward_attest::open_context(&tcti).unwrap();
    let mb = write_request(&mut ctx, &req, 2048).unwrap();
    let back = read_and_undefine(&mut ctx, &mb).unwrap();
    assert_eq!(back.len(), 2048);
    assert_eq!(&back[..req.len()], req.as_slice());
    let left = tss_esapi::abstraction::nv::list(&mut ctx).unwrap();
    assert!(left.is_empty(), "NV index left behind: {left:?}");
    drop(ctx);

    // The vendor command reaches swtpm's dispatcher as a well-formed command and is refused
    // as an unknown command code (0x143), which the attester reports as "not a NitroTPM";
    // the buffer is undefined on that path too.
    let cfg = NitroTpmConfig {
        tcti: tcti.clone(),
        raw: RawTransport::Tcp(format!("127.0.0.1:{}", tpm.port)),
        buffer_size: 2048,
    };
    match exchange(&cfg, &req) {
        Err(AttestError::Unavailable(m)) => assert!(m.contains("not a NitroTPM"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let mut ctx = keyward_attest::open_context(&tcti).unwrap();
    assert!(tss_esapi::abstraction::nv::list(&mut ctx)
        .unwrap()
        .is_empty());
    drop(ctx);
    let att = NitroTpmAttester::new(cfg);
    let mut b = EvidenceBundle::default();
    let binding = Binding {
        report_data: [0; 64],
        user_data: vec![1; 48],
        nonce: Some(vec![2; 32]),
        public_key: None,
    };
    assert!(att.attest(&binding, &mut b).is_err());
    assert!(b.nitro.is_none());
}

/// The live answer binds the audit checkpoint key it names: the quote verifies against the
/// `keyward/2 runtime` value of that key, and a bundle whose `audit_key` was swapped on the
/// way (the host's own key) fails the binding check.
#[test]
fn live_attestation_binds_the_audit_key() {
    use keyward_attest::live::{
        fetch_evidence, runtime_binding_value, runtime_binding_value_with_audit, serve_with,
        LiveConfig,
    };
    use std::sync::Arc;
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let ak = provision_ak(&tcti, 0x8101_0003).unwrap();
    let attesters: Vec<Box<dyn Attester>> = vec![Box::new(TpmAttester::new(TpmConfig {
        tcti,
        ak_handle: ak.handle,
        bank: Bank::Sha256,
        pcrs: vec![16],
        event_log: None,
    }))];
    let spki = [0x42u8; 32];
    let audit_key = p256::SecretKey::random(&mut rand_core::OsRng)
        .public_key()
        .to_sec1_bytes()
        .to_vec();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/attestation", l.local_addr().unwrap());
        let mut cfg = LiveConfig::new(Arc::new(attesters), spki);
        cfg.audit_key = Some(audit_key.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(l, cfg, async {
            let _ = rx.await;
        }));
        let nonce = [0x77u8; 32];
        let bundle = fetch_evidence(&url, &nonce).await.unwrap();
        assert_eq!(bundle.audit_key.as_deref(), Some(&audit_key[..]));
        let bound = runtime_binding_value_with_audit(&nonce, &spki, Some(&audit_key));
        assert_ne!(bound, runtime_binding_value(&nonce, &spki));
        assert_eq!(bundle.report_data.as_deref(), Some(&bound[..]));
        let policy = TpmPolicy {
            registered_aks: vec![ak.name_hex.clone()],
            bank: "sha256".into(),
            pcrs: vec![16],
            replay: Some(vec![]),
            ..Default::default()
        };
        let judge = |expected: [u8; 64]| {
            let mut v = Verdict::default();
            verify_tpm(
                bundle.tpm.as_ref().unwrap(),
                &policy,
                Some(&expected),
                &mut v,
            );
            v
        };
        let v = judge(bound);
        assert!(v.ok(), "{:#?}", v.checks);
        // The host swaps in its own key: what the verifier then expects is not what the
        // hardware signed.
        let host_key = p256::SecretKey::random(&mut rand_core::OsRng)
            .public_key()
            .to_sec1_bytes()
            .to_vec();
        let v = judge(runtime_binding_value_with_audit(
            &nonce,
            &spki,
            Some(&host_key),
        ));
        assert_eq!(checks_failed(&v), vec!["tpm.extra_data"]);
        // Nor can it strip the key and pass as a `keyward/1` answer.
        let v = judge(runtime_binding_value(&nonce, &spki));
        assert_eq!(checks_failed(&v), vec!["tpm.extra_data"]);
        let _ = tx.send(());
        server.await.unwrap();
    });
}

#[test]
fn live_attestation_over_http_with_a_swtpm_quote() {
    use keyward_attest::live::{
        fetch_evidence, fetch_spki_sha256, runtime_binding_value, serve_with, spki_sha256_of_cert,
        LiveConfig, TokenBucket,
    };
    use std::sync::Arc;
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let ak = provision_ak(&tcti, 0x8101_0002).unwrap();
    let attesters: Vec<Box<dyn Attester>> = vec![Box::new(TpmAttester::new(TpmConfig {
        tcti,
        ak_handle: ak.handle,
        bank: Bank::Sha256,
        pcrs: vec![16],
        event_log: None,
    }))];

    // A stand-in XKS TLS endpoint with its own certificate.
    let xks = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let xks_der = xks.cert.der().to_vec();
    let spki = spki_sha256_of_cert(&xks_der).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        // XKS stand-in: a TLS server that only handshakes.
        let tls_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![xks_der.clone().into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(xks.key_pair.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
        let xks_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xks_port = xks_l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = xks_l.accept().await {
                let a = acceptor.clone();
                tokio::spawn(async move {
                    let _ = a.accept(tcp).await;
                });
            }
        });

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/attestation", l.local_addr().unwrap());
        let mut cfg = LiveConfig::new(Arc::new(attesters), spki);
        cfg.bucket = Arc::new(TokenBucket::new(2, 0.01));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(l, cfg, async {
            let _ = rx.await;
        }));

        // The auditor's side: read the XKS SPKI separately, fetch evidence, check the binding.
        let seen = fetch_spki_sha256(&format!("https://localhost:{xks_port}"))
            .await
            .unwrap();
        assert_eq!(seen, spki);
        let nonce = [0x5au8; 32];
        let bundle = fetch_evidence(&url, &nonce).await.unwrap();
        let expected = runtime_binding_value(&nonce, &seen);
        assert_eq!(bundle.report_data.as_deref(), Some(&expected[..]));
        let policy = TpmPolicy {
            registered_aks: vec![ak.name_hex.clone()],
            bank: "sha256".into(),
            pcrs: vec![16],
            replay: Some(vec![]),
            ..Default::default()
        };
        let mut v = Verdict::default();
        verify_tpm(
            bundle.tpm.as_ref().unwrap(),
            &policy,
            Some(&expected),
            &mut v,
        );
        assert!(v.ok(), "{:#?}", v.checks);

        // Wrong binding: evidence bound to another XKS key (or another nonce) is refused.
        let other_spki = [0u8; 32];
        let mut v = Verdict::default();
        verify_tpm(
            bundle.tpm.as_ref().unwrap(),
            &policy,
            Some(&runtime_binding_value(&nonce, &other_spki)),
            &mut v,
        );
        assert_eq!(checks_failed(&v), vec!["tpm.extra_data"]);

        // Bad requests and the rate limit (bucket of 2, almost no refill).
        // (The audit-key binding is checked by `live_attestation_binds_the_audit_key`.)
        let err = fetch_evidence(&url.replace("/attestation", "/other"), &nonce)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("404"), "{err}");
        let _second = fetch_evidence(&url, &[1u8; 32]).await.unwrap();
        let err = fetch_evidence(&url, &[2u8; 32])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("429"), "{err}");

        let _ = tx.send(());
        server.await.unwrap();
    });
}

/// Regenerates `tests/data/tpm/` (a real swtpm quote bundle + its policy) for the CLI test:
/// `cargo test -p keyward-integration-tests --test it tpm_quote -- --ignored generate_tpm_fixture`.
#[test]
#[ignore]
fn generate_tpm_fixture() {
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let bank = Bank::Sha256;
    let ak = provision_ak(&tcti, 0x8101_0002).unwrap();
    let events: Vec<(u32, u32, Vec<u8>)> = vec![
        (0, 0x8000_0008, b"firmware volume (fixture)".to_vec()),
        (0, 4, vec![0, 0, 0, 0]),
        (
            4,
            0x8000_0007,
            b"Calling EFI Application from Boot Option".to_vec(),
        ),
        (4, 4, vec![0, 0, 0, 0]),
        (
            4,
            0x8000_0003,
            b"UKI authenticode digest (fixture)".to_vec(),
        ),
        (7, 0x8000_0001, b"SecureBoot=0 (fixture)".to_vec()),
        (7, 4, vec![0, 0, 0, 0]),
    ];
    for (pcr, _, d) in &events {
        extend(&tcti, *pcr as u8, bank, &bank.hash(d));
    }
    for w in PHASES {
        extend(&tcti, 11, bank, &bank.hash(w.as_bytes()));
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::write(&log, build_event_log(bank, &events)).unwrap();
    let att = TpmAttester::new(TpmConfig {
        tcti,
        ak_handle: ak.handle,
        bank,
        pcrs: vec![0, 4, 7, 11],
        event_log: Some(log),
    });
    let binding = Binding {
        report_data: [0; 64],
        user_data: vec![0x42; 32],
        nonce: None,
        public_key: None,
    };
    let mut b = EvidenceBundle {
        version: 1,
        ..Default::default()
    };
    att.attest(&binding, &mut b).unwrap();
    let ev = b.tpm.as_ref().unwrap();
    let pcr = |i: u8| hex::encode(&ev.pcrs.iter().find(|p| p.index == i).unwrap().value);
    let policy = format!(
        "# Policy for the swtpm fixture bundle (tests/data/tpm/bundle.json).\n\
         format = 1\nname = \"swtpm fixture\"\nrequired_evidence = [\"tpm\"]\n\n[tpm]\n\
         registered_aks = [\"{}\"]\nbank = \"sha256\"\npcrs = [0, 4, 7, 11]\n\
         userspace = [\n  {{ pcr = 11, words = [\"enter-initrd\", \"leave-initrd\", \"ready\"] }},\n]\n\
         allowed = [\n  {{ pcr = 4, values = [\"{}\"] }},\n  {{ pcr = 7, values = [\"{}\"] }},\n]\n",
        ak.name_hex,
        pcr(4),
        pcr(7)
    );
    let out = format!(
        "{}/tests/data/tpm",
        keyward_integration_tests::repo().display()
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        format!("{out}/bundle.json"),
        serde_json::to_string_pretty(&b).unwrap(),
    )
    .unwrap();
    std::fs::write(format!("{out}/policy.toml"), policy).unwrap();
}

#[test]
fn keyward_attest_and_verify_as_processes() {
    use std::process::Command;
    let tpm = start_swtpm();
    let tcti = tpm.tcti();
    let bin = keyward_integration_tests::keyward_bin_str();
    let out = Command::new(bin)
        .args(["attest", "provision-ak", "--tcti", &tcti])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = info["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("000b") && name.len() == 68, "{name}");

    let user_data = "ab".repeat(32);
    let out = Command::new(bin)
        .args(["attest", "evidence", "--attester", "tpm", "--tcti", &tcti])
        .args([
            "--pcrs",
            "16",
            "--event-log",
            "none",
            "--user-data",
            &user_data,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, &out.stdout).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "format = 1\nrequired_evidence = [\"tpm\"]\nallow_unmeasured = \"I understand this accepts evidence no one measured\"\n[tpm]\nregistered_aks = [\"{name}\"]\npcrs = [16]\nreplay = []\n"
        ),
    )
    .unwrap();
    let st = Command::new(bin)
        .args(["verify", "--evidence"])
        .arg(&bundle)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // Another AK name in the policy: exit 1.
    std::fs::write(
        &policy,
        format!(
            "format = 1\nrequired_evidence = [\"tpm\"]\nallow_unmeasured = \"I understand this accepts evidence no one measured\"\n[tpm]\nregistered_aks = [\"000b{}\"]\npcrs = [16]\nreplay = []\n",
            "00".repeat(32)
        ),
    )
    .unwrap();
    let st = Command::new(bin)
        .args(["verify", "--evidence"])
        .arg(&bundle)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
}
