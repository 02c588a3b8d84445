//! Release-log rollback (issue 12 §6) against the real `keyward krs serve` on its own SoftHSMv2
//! token and a boot agent with simulated SNP evidence: a verifier saves the log's signed head,
//! the KRS appends more, then an older copy of the log (with its own, consistent head) is put
//! back. `krs log verify` alone cannot tell; `--against` the newer head fails naming the
//! rollback, the KRS refuses to start on it (its counter is ahead), and a log forked from the
//! older copy fails too. The current log passes against every head it extends.

use crate::common;

use std::path::Path;

use keyward_agent::Agent;
use keyward_attest::SimulatedSnpAttester;
use keyward_verify::testsign::test_root_policy_toml;

const MEAS: [u8; 48] = [0x11; 48];

fn honest() -> SimulatedSnpAttester {
    common::honest_snp(MEAS)
}

fn releases(f: &common::KrsFixture, n: usize) {
    let krs = f.serve();
    for _ in 0..n {
        Agent {
            cfg: f.agent_config(&krs.addr),
            attesters: vec![Box::new(honest())],
            product_release: "keyward-test".into(),
        }
        .release()
        .unwrap();
    }
}

/// `krs log verify [--against A]`: success, stdout + stderr.
fn verify(f: &common::KrsFixture, against: Option<&str>) -> (bool, String) {
    let mut c = f.cmd();
    c.args(["krs", "log", "verify"])
        .arg(f.log_path())
        .arg("--receipt-key")
        .arg(f.state.join("receipt.pub.pem"));
    if let Some(a) = against {
        c.args(["--against", a]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn an_older_or_forked_release_log_is_caught() {
    let Some(f) = common::KrsFixture::new("krs-log-rollback", "") else {
        return;
    };
    let text = common::policy_text_full(
        2,
        &[hex::encode(MEAS)],
        &format!(
            "{}\n[snp.min_reported_tcb]\nsnp = 20\n",
            test_root_policy_toml()
        ),
    );
    f.sign_policy_text(2, &text, &f.policy_file);
    let log = f.log_path();
    let head = f.state.join("release.log.head");

    releases(&f, 2);
    let (older_log, older_head) = (f.dir.join("older.log"), f.dir.join("older.head"));
    copy(&log, &older_log);
    copy(&head, &older_head);
    releases(&f, 2);
    let newer_head = f.dir.join("newer.head");
    copy(&head, &newer_head);

    // The current log extends both saved heads, and the head carries the counter.
    let (ok, out) = verify(&f, None);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["entries"], 4);
    assert_eq!(v["counter"], 4);
    let noted = format!("{}:{}", v["entries"], v["head_hash"].as_str().unwrap());
    for h in [&older_head, &newer_head] {
        let (ok, out) = verify(&f, Some(h.to_str().unwrap()));
        assert!(ok, "{out}");
    }
    assert!(verify(&f, Some(&noted)).0);

    // The older copy put back: consistent on its own, caught against the newer head.
    copy(&older_log, &log);
    copy(&older_head, &head);
    let (ok, out) = verify(&f, None);
    assert!(ok, "the older copy is self-consistent: {out}");
    let (ok, out) = verify(&f, Some(newer_head.to_str().unwrap()));
    assert!(!ok, "an older log passed --against the newer head: {out}");
    assert!(
        out.contains("rolled back") && out.contains("older"),
        "{out}"
    );
    let (ok, out) = verify(&f, Some(&noted));
    assert!(!ok && out.contains("rolled back"), "{out}");

    // The KRS itself refuses to serve from it: its counter is ahead of that head.
    let err = f.serve_refused();
    assert!(
        err.contains("rolled back") && err.contains("counted to 4"),
        "{err}"
    );

    // The operator forces it (removes the counter) and the KRS goes on from the older copy:
    // a fork, caught against the newer head even once it has more entries.
    std::fs::remove_file(f.state.join("release.log.counter")).unwrap();
    releases(&f, 3);
    let (ok, out) = verify(&f, None);
    assert!(ok, "{out}");
    let (ok, out) = verify(&f, Some(newer_head.to_str().unwrap()));
    assert!(!ok && out.contains("forked"), "{out}");
    assert!(verify(&f, Some(older_head.to_str().unwrap())).0);

    // A head signed by another key is not taken as a reference.
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newer_head).unwrap()).unwrap();
    forged["count"] = serde_json::json!(1);
    let forged_path = f.dir.join("forged.head");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let (ok, out) = verify(&f, Some(forged_path.to_str().unwrap()));
    assert!(!ok && out.contains("signature"), "{out}");
}
