//! The host moves the VM's wall clock (issue 16, item 2): `keyward serve` runs under libfaketime
//! (Debian's `faketime`, `LD_PRELOAD`), whose offset is read from a file at every clock call, so
//! the test jumps the wall clock back and forward while the appliance runs; the monotonic clock
//! is left alone (`FAKETIME_DONT_FAKE_MONOTONIC`), as a host that sets the guest's time of day
//! would. The master key is released by the real KRS on SoftHSMv2, whose signed time is the
//! appliance's trusted time (crates/agent/src/time.rs).
//!
//! - A boot with the clock a day behind the KRS is refused (a rewound clock).
//! - A running appliance whose clock jumps a day ahead keeps trusted time: a `schedule-destroy
//!   --days 7` is dated 7 days from the KRS's time, not 8; KMS's requests, signed with the real
//!   time, are refused as outside SigV4's skew window while the clock is off, and served again
//!   once it is back; the metrics show the skew.
//! - A jump back while running: the same refusal of requests, and recovery.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::boot_kill::released_setup;
use crate::serve_common::{self, Proc, ServeSetup};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn libfaketime() -> &'static str {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing (apt-get install faketime)"
    );
    LIBFAKETIME
}

/// `keyward serve` with its wall clock offset by what `offset_file` holds (`+0`, `+1d`, `-1d`).
fn serve_faked(setup: &ServeSetup, offset_file: &Path) -> Proc {
    let mut cmd = Command::new(keyward_integration_tests::keyward_bin_str());
    cmd.args(["serve", "--config", setup.config.to_str().unwrap()])
        .current_dir(setup.dir.path())
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", offset_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    Proc::spawn_command(cmd)
}

fn set_offset(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).unwrap();
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn wall_clock_jumps_neither_revive_nor_hasten_anything() {
    let (_f, _krs, setup) = released_setup("clock-jumps");
    let offset: PathBuf = setup.dir.path().join("faketime.offset");

    // 1. A clock a day behind the KRS's signed time: the boot is refused.
    set_offset(&offset, "-1d");
    let mut p = serve_faked(&setup, &offset);
    let code = p.wait_exit(Duration::from_secs(60));
    let err = p.stderr_text();
    assert_ne!(code, Some(0), "serve booted with a rewound clock:\n{err}");
    assert!(
        err.contains("refusing to run with a rewound clock"),
        "no rewound-clock refusal in:\n{err}"
    );

    // 2. The right time: it boots and serves.
    set_offset(&offset, "+0");
    let mut p = serve_faked(&setup, &offset);
    let xks_line = p.wait_stderr("XKS API on ", Duration::from_secs(60));
    let admin_line = p.wait_stderr("admin API on ", Duration::from_secs(10));
    let xks_addr = serve_common::addr_after(&xks_line, "XKS API on ");
    let admin_addr = serve_common::addr_after(&admin_line, "admin API on ");
    setup.write_profile(&setup.profile, &admin_addr, "admin.pem", "admin-key.pem");
    let xks = setup.xks_at(&xks_addr);
    serve_common::create_open_key(&setup.profile, "k1");
    serve_common::create_open_key(&setup.profile, "doomed");
    let (code, enc) = xks.encrypt("k1", "Y2xvY2s=");
    assert_eq!(code, 200, "{enc}");

    // 3. The wall clock jumps a day ahead while it runs.
    set_offset(&offset, "+1d");
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = xks.encrypt("k1", "Y2xvY2s=");
    assert_eq!(
        code, 401,
        "a request signed a day before the VM's clock: {body}"
    );
    // Scheduled destruction is dated on trusted time: 7 days from now, not 8.
    let out = serve_common::admin_ok(
        &setup.profile,
        &["keys", "schedule-destroy", "doomed", "--days", "7"],
    );
    let list = serve_common::admin_ok(&setup.profile, &["keys", "list"]);
    let at = destroy_at(&list, "doomed")
        .unwrap_or_else(|| panic!("no destroy date for doomed: {out}\n{list}"));
    let want = now_unix() + 7 * 86_400;
    assert!(
        (at - want).abs() < 600,
        "destroy date {at} is not 7 days from trusted time ({want}); the host's jump moved it"
    );

    // 4. Back to the right time: served again.
    set_offset(&offset, "+0");
    std::thread::sleep(Duration::from_millis(300));
    let (code, dec) = xks.decrypt("k1", &enc);
    assert_eq!(code, 200, "{dec}");

    // 5. A jump back an hour while running: refused, then served once it is put right.
    set_offset(&offset, "-1h");
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = xks.decrypt("k1", &enc);
    assert_eq!(
        code, 401,
        "a request signed an hour after the VM's clock: {body}"
    );
    set_offset(&offset, "+0");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(xks.decrypt("k1", &enc).0, 200);

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
}

/// The destruction date of key `id` in `keys list` (the line after its row: "destroyed at
/// RFC3339 unless cancelled"), in Unix seconds.
fn destroy_at(list: &str, id: &str) -> Option<i64> {
    let mut lines = list.lines();
    while let Some(l) = lines.next() {
        if l.split_whitespace().next() == Some(id) {
            let next = lines.next()?;
            let at = next
                .split("destroyed at ")
                .nth(1)?
                .split(" unless")
                .next()?;
            return time::OffsetDateTime::parse(
                at.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|t| t.unix_timestamp());
        }
    }
    None
}
