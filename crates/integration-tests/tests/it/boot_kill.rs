//! SIGKILL at each boot phase (issue 16, item 2): `keyward serve` with its master key released
//! by the real `keyward krs serve` (SoftHSMv2, simulated SNP evidence), killed with SIGKILL the
//! moment its log names each phase (attest, release, unseal, serve) and once more just after its
//! listeners are up, then started again. Every restart must boot cleanly and serve the keys and
//! ciphertexts from before, the KRS's release log must still verify and hold a release for every
//! boot that got its key, and no master-key file may appear on disk.

use std::time::{Duration, Instant};

use crate::common;
use crate::krs_mk_rotation::{release_section, serve_krs_pinned};
use crate::serve_common::{self, Proc, ServeSetup};
use keyward_verify::testsign::test_root_policy_toml;

/// Start serve, wait for `needle` on its log, SIGKILL it at once: the line it died after.
fn kill_at(setup: &ServeSetup, needle: &str) -> String {
    let mut p = Proc::spawn(
        &["serve", "--config", setup.config.to_str().unwrap()],
        setup.dir.path(),
    );
    let line = p.wait_stderr(needle, Duration::from_secs(60));
    p.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    line
}

/// A `keyward serve` set-up whose master key the real `keyward krs serve` (SoftHSMv2) releases
/// to simulated SNP evidence: the fixture, the running KRS and the serve set-up (not started).
pub(crate) fn released_setup(label: &str) -> (common::KrsFixture, common::Running, ServeSetup) {
    let f = common::KrsFixture::new(label, "").expect("SoftHSMv2 token");
    let meas = keyward_attest::DEMO_MEASUREMENT;
    let text = common::policy_text_full(2, &[hex::encode(meas)], &test_root_policy_toml());
    f.sign_policy_text(2, &text, &f.policy_file);
    let setup = ServeSetup::new();
    let ca_pin = f.trust_admin_ca("appliance", &setup.ca);
    let krs = serve_krs_pinned(&f);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let cfg = base.replace(
        "[master_key]\nsource = \"file\"\nfile = \"master.key\"\n",
        &release_section(&f, &krs.addr, &ca_pin),
    );
    assert!(cfg.contains("source = \"release\""));
    std::fs::write(&setup.config, cfg).unwrap();
    // No master-key file is needed or kept when the KRS releases it.
    let _ = std::fs::remove_file(setup.dir.path().join("master.key"));

    (f, krs, setup)
}

#[test]
fn sigkill_at_each_boot_phase_then_a_clean_boot() {
    let (f, krs, setup) = released_setup("boot-kill");
    // A first clean boot: a key and a ciphertext to find again.
    let (mut p, xks) = setup.start();
    serve_common::create_open_key(&setup.profile, "k1");
    let (code, enc) = xks.encrypt("k1", "Ym9vdC1raWxs");
    assert_eq!(code, 200, "{enc}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    for needle in [
        "phase=attest",
        "phase=release",
        "phase=unseal",
        "XKS API on ",
        "admin API on ",
    ] {
        let line = kill_at(&setup, needle);
        // The next boot is clean, and serves what was there before.
        let (mut p, xks) = setup.start();
        let (code, dec) = xks.decrypt("k1", &enc);
        assert_eq!(code, 200, "after SIGKILL at {needle:?} ({line}): {dec}");
        assert_eq!(dec["plaintext"], "Ym9vdC1raWxs");
        let keys = serve_common::admin_ok(&setup.profile, &["keys", "list"]);
        assert!(keys.contains("k1"), "after SIGKILL at {needle:?}: {keys}");
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    }

    // The KRS's release log verifies, and every boot that got a key is in it.
    let releases = f
        .log_entries()
        .iter()
        .filter(|e| e["decision"] == "release")
        .count();
    // The first boot and the five restarts got their key (6), and so did the boots killed at
    // unseal and after listen (2); the ones killed at attest and mid-release may or may not have.
    assert!(releases >= 8, "releases logged: {releases}");
    let (ok, out) = f.log_verify(&f.log_path());
    assert!(ok, "krs log verify after the kills: {out}");

    // No master-key file appeared under the appliance's directory (the released key lives in
    // locked memory only).
    for entry in walk(setup.dir.path()) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        assert_ne!(
            name,
            "master.key",
            "a master-key file appeared: {}",
            entry.display()
        );
    }
    drop(krs);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `keyward serve` started while its KRS is down (issue 16): it keeps retrying on its schedule,
/// each attempt named on stderr and in sd_notify `STATUS=` with its error (the refused
/// connection); the KRS is started about 5 s later on the configured port, and the same
/// process, never restarted, gets its key, unseals, sends `READY=1` and serves an XKS Encrypt.
#[test]
fn serve_started_before_its_krs_keeps_retrying_then_boots_and_serves() {
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};

    let (f, krs, setup) = released_setup("krs-late");
    let krs_addr = krs.addr.clone();
    // Nothing listens on the KRS port the appliance is configured with.
    drop(krs);

    let sock_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (notes, stop) = (Arc::clone(&notes), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    notes
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).to_string());
                }
            }
        })
    };

    let mut cmd = std::process::Command::new(serve_common::BIN);
    cmd.args(["serve", "--config", setup.config.to_str().unwrap()])
        .current_dir(setup.dir.path())
        .env("NOTIFY_SOCKET", &sock_path);
    let t0 = Instant::now();
    let mut p = Proc::spawn_command(cmd);
    let refused = format!("cannot reach the KRS at {krs_addr}");
    p.wait_stderr("attempt 3 failed: ", Duration::from_secs(60));
    let left = Duration::from_secs(5).saturating_sub(t0.elapsed());
    std::thread::sleep(left);
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "serve gave up while its KRS was down:\n{}",
        p.stderr_text()
    );
    let failed_before: Vec<String> = p
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l.contains("phase=release") && l.contains("attempt ") && l.contains(" failed: ")
        })
        .cloned()
        .collect();
    assert!(failed_before.len() >= 3, "{failed_before:#?}");
    for (i, l) in failed_before.iter().enumerate() {
        assert!(
            l.contains(&format!("attempt {} failed: ", i + 1))
                && l.contains(&refused)
                && l.contains("Connection refused")
                && l.contains("retrying in"),
            "{l}"
        );
    }
    assert!(
        !p.stderr_text().contains("XKS API on "),
        "served without a key:\n{}",
        p.stderr_text()
    );

    // The KRS comes up on the configured port.
    let krs = f.serve();
    assert_eq!(krs.addr, krs_addr);
    let xks_line = p.wait_stderr("XKS API on ", Duration::from_secs(60));
    let admin_line = p.wait_stderr("admin API on ", Duration::from_secs(10));
    let up_after = t0.elapsed();
    let released = p.wait_stderr(": released (receipt log index", Duration::from_secs(1));
    let n_released: usize = released
        .split("attempt ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt number in {released}"));
    assert!(n_released > failed_before.len(), "{released}");
    eprintln!(
        "released at attempt {n_released}, serving {up_after:?} after the start ({} attempts \
         refused while the KRS was down)",
        failed_before.len()
    );
    // One process, one boot: the attempts were counted once from 1, nothing restarted serve.
    let text = p.stderr_text();
    assert_eq!(text.matches("attempt 1: contacting").count(), 1, "{text}");

    let xks_addr = serve_common::addr_after(&xks_line, "XKS API on ");
    let admin_addr = serve_common::addr_after(&admin_line, "admin API on ");
    setup.write_profile(&setup.profile, &admin_addr, "admin.pem", "admin-key.pem");
    let xks = setup.xks_at(&xks_addr);
    serve_common::create_open_key(&setup.profile, "late");
    let (code, enc) = xks.encrypt("late", "bGF0ZS1rcnM=");
    assert_eq!(code, 200, "{enc}");
    let (code, dec) = xks.decrypt("late", &enc);
    assert_eq!(code, 200, "{dec}");
    assert_eq!(dec["plaintext"], "bGF0ZS1rcnM=");

    // sd_notify saw the same attempts: STATUS= naming each refused one, then READY=1.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !notes.lock().unwrap().iter().any(|m| m.contains("READY=1")) {
        assert!(
            Instant::now() < deadline,
            "no READY=1: {:#?}",
            notes.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = notes.lock().unwrap().clone();
    for n in 1..=failed_before.len() {
        assert!(
            got.iter().any(|m| m.starts_with("STATUS=")
                && m.contains(&format!("phase=release attempt {n} failed: "))
                && m.contains(&refused)),
            "no STATUS= for attempt {n}: {got:#?}"
        );
    }
    assert!(
        got.iter()
            .any(|m| m.contains(&format!("phase=release attempt {n_released}: released"))),
        "{got:#?}"
    );
    let ready_at = got.iter().position(|m| m.contains("READY=1")).unwrap();
    let released_at = got
        .iter()
        .position(|m| m.contains(": released (receipt"))
        .unwrap();
    assert!(released_at < ready_at, "{got:#?}");

    // The KRS released exactly once: to this boot.
    let releases = f
        .log_entries()
        .iter()
        .filter(|e| e["decision"] == "release")
        .count();
    assert_eq!(releases, 1);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    drop(krs);
}
