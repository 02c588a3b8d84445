//! The audit log's disk failing under it: a sink that writes to the real log file until told
//! to fail, then hands the bytes to `/dev/full` (the kernel's own ENOSPC), or fails with EIO,
//! or writes half a buffer before failing. The production writer thread, buffering and chain
//! run unchanged (`AuditLog::start_on`); afterwards `verify` must accept the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_audit::verify;
use keyward_audit::{AuditLog, Field, XksRecord, MAX_PENDING};

const OK: u8 = 0;
/// Writes go to /dev/full: ENOSPC from the kernel.
const FULL: u8 = 1;
/// EIO, as a failing block device gives.
const EIO: u8 = 2;
/// Half of the next write reaches the file, then FULL.
const SHORT_THEN_FULL: u8 = 3;

struct Disk {
    log: File,
    full: File,
    mode: Arc<AtomicU8>,
}

impl Write for Disk {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self.mode.load(Ordering::SeqCst) {
            OK => self.log.write(b),
            FULL => self.full.write(b),
            EIO => Err(io::Error::from_raw_os_error(5)),
            _ => {
                self.mode.store(FULL, Ordering::SeqCst);
                self.log.write(&b[..b.len() / 2])
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.log.flush()
    }
}

fn start(path: &Path) -> (AuditLog, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(OK));
    let disk = Disk {
        log: OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
        full: OpenOptions::new().write(true).open("/dev/full").unwrap(),
        mode: mode.clone(),
    };
    (AuditLog::start_on(Box::new(disk), None).unwrap(), mode)
}

fn send(log: &AuditLog, from: usize, n: usize) {
    for i in from..from + n {
        let mut r = XksRecord::new();
        r.set_operation("Encrypt");
        r.set(Field::KmsRequestId, &format!("req-{i:06}"));
        r.finish(200, None, Duration::from_micros(10));
        log.xks(r);
    }
}

fn wait_recovered(log: &AuditLog) {
    let t = Instant::now();
    while log.failing() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the writer did not retry"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The request ids in the file, in order, and the `audit.gap` lines.
fn read(path: &Path) -> (Vec<String>, Vec<serde_json::Value>) {
    let mut ids = Vec::new();
    let mut gaps = Vec::new();
    for l in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(id) = v.get("kmsRequestId").and_then(|x| x.as_str()) {
            ids.push(id.to_string());
        }
        if v.get("action").and_then(|x| x.as_str()) == Some("audit.gap") {
            gaps.push(v);
        }
    }
    (ids, gaps)
}

fn outage_keeps_every_line(fault: u8, errno: i32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, mode) = start(&path);
    send(&log, 0, 100);
    log.flush().unwrap();
    assert!(!log.failing());

    mode.store(fault, Ordering::SeqCst);
    send(&log, 100, 300);
    let e = log.flush().unwrap_err();
    assert!(
        e.to_string()
            .contains(&io::Error::from_raw_os_error(errno).to_string()),
        "{e}"
    );
    assert!(log.failing(), "a failed write must show");
    assert!(log.write_errors() >= 1);
    // The writer keeps trying every FLUSH_EVERY while the disk is failing.
    std::thread::sleep(Duration::from_millis(300));
    let errors = log.write_errors();
    assert!(errors >= 3, "retried {errors} times in 300 ms");
    assert!(log.failing());

    mode.store(OK, Ordering::SeqCst);
    wait_recovered(&log);
    send(&log, 400, 50);
    log.shutdown().unwrap();
    assert_eq!(log.lost(), 0);

    let (ids, gaps) = read(&path);
    let want: Vec<String> = (0..450).map(|i| format!("req-{i:06}")).collect();
    assert_eq!(ids, want, "every line, once, in order");
    assert!(gaps.is_empty(), "nothing was dropped: {gaps:?}");
    let report = verify(&[path], &[log.public_key().to_string()]).unwrap();
    assert_eq!(report.segments, 1);
    assert!(report.checkpoints >= 1);
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn enospc_from_dev_full_keeps_every_line_and_the_chain_verifies() {
    outage_keeps_every_line(FULL, 28);
}

#[test]
fn eio_keeps_every_line_and_the_chain_verifies() {
    outage_keeps_every_line(EIO, 5);
}

#[test]
fn a_short_write_then_enospc_completes_the_cut_line_at_recovery() {
    outage_keeps_every_line(SHORT_THEN_FULL, 28);
}

#[test]
fn past_the_pending_limit_lines_are_counted_and_the_gap_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, mode) = start(&path);
    send(&log, 0, 10);
    log.flush().unwrap();
    mode.store(FULL, Ordering::SeqCst);
    // About 200 bytes a line: well past MAX_PENDING.
    let n = MAX_PENDING / 100;
    send(&log, 10, n);
    assert!(log.flush().is_err());
    let lost = log.lost();
    assert!(lost > 0, "more than MAX_PENDING bytes cannot all be kept");
    mode.store(OK, Ordering::SeqCst);
    wait_recovered(&log);
    log.shutdown().unwrap();

    let (ids, gaps) = read(&path);
    assert_eq!(
        ids.len() as u64 + lost,
        10 + n as u64,
        "written + lost = sent"
    );
    // What was kept is the oldest part, in order.
    let want: Vec<String> = (0..ids.len()).map(|i| format!("req-{i:06}")).collect();
    assert_eq!(ids, want);
    assert_eq!(gaps.len(), 1, "one gap line names the outage");
    let detail = gaps[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{lost} line(s) not written"))
            && detail.contains("os error 28"),
        "{detail}"
    );
    verify(&[path], &[log.public_key().to_string()]).unwrap();
}
