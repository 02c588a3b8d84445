//! KRP/1 with SNP and TPM evidence together, bound to the same T: the real `keyward krs serve`
//! (SoftHSMv2) whose signed policy requires both; simulated SNP plus a quote from a real swtpm
//! (started here, temp state, free ports) with qualifying data T. Released; and refused with
//! the TPM check named when the quote comes from an AK the policy does not register.

use crate::common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_agent::{Agent, AgentError};
use keyward_attest::{provision_ak, TpmAttester, TpmConfig};
use keyward_attest::{SimulatedSnpAttester, DEMO_MEASUREMENT};
use keyward_evidence::Bank;

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
    let swtpm = common::tools::need("swtpm", "swtpm");
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let mut child = Command::new(&swtpm)
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
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Swtpm {
                    child,
                    port,
                    _dir: dir,
                };
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("swtpm did not start");
}

#[test]
fn snp_and_tpm_evidence_bound_to_t_release_and_unknown_ak_is_refused() {
    let tpm = start_swtpm();
    let Some(f) = common::KrsFixture::new("release-tpm", "") else {
        return;
    };
    let tcti = format!("swtpm:host=127.0.0.1,port={}", tpm.port);
    let ak = provision_ak(&tcti, 0x8101_0002).unwrap();
    let other = provision_ak(&tcti, 0x8101_0003).unwrap();

    // Policy: SNP (test root, demo measurement) AND a TPM quote by the registered AK over
    // PCR 15, which nothing has extended (all zeros).
    let text = common::policy_text_full(
        2,
        &[hex::encode(DEMO_MEASUREMENT)],
        &format!(
            "{}\n[tpm]\nregistered_aks = [\"{}\"]\nbank = \"sha256\"\npcrs = [15]\n[[tpm.allowed]]\npcr = 15\nvalues = [\"{}\"]\n",
            keyward_verify::testsign::test_root_policy_toml(),
            ak.name_hex,
            hex::encode([0u8; 32])
        ),
    )
    .replace(
        "required_evidence = [\"snp\"]",
        "required_evidence = [\"snp\", \"tpm\"]",
    );
    assert!(text.contains("\"snp\", \"tpm\""));
    f.sign_policy_text(2, &text, &f.policy_file);
    let krs = f.serve();

    let agent = |handle: u32| Agent {
        cfg: f.agent_config(&krs.addr),
        attesters: vec![
            Box::new(SimulatedSnpAttester::new(DEMO_MEASUREMENT).unwrap()),
            Box::new(TpmAttester::new(TpmConfig {
                tcti: tcti.clone(),
                ak_handle: handle,
                bank: Bank::Sha256,
                pcrs: vec![15],
                event_log: None,
            })),
        ],
        product_release: "keyward-test".into(),
    };

    let r = agent(ak.handle).release().unwrap_or_else(|e| {
        panic!(
            "{e}\nlast log entry: {:?}",
            f.log_entries().pop().map(|e| e["detail"].clone())
        )
    });
    assert_eq!(r.receipt.decision, "release");
    let ev = f.log_entries().pop().unwrap();
    assert_eq!(ev["decision"], "release");
    assert!(
        ev["evidence"].is_string(),
        "raw evidence kept for offline replay"
    );

    // The same SNP evidence with a quote by an unregistered AK: refused, TPM check named.
    match agent(other.handle).release() {
        Err(AgentError::Denied { .. }) => {}
        other => panic!("expected a deny, got {:?}", other.map(|r| r.receipt)),
    }
    let last = f.log_entries().pop().unwrap();
    assert_eq!(last["decision"], "deny");
    assert!(
        last["detail"].as_str().unwrap().starts_with("tpm."),
        "{last}"
    );
    drop(krs);
    assert!(f.log_verify(&f.log_path()).0);
}
