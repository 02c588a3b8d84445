//! systemd integration of `keyward serve`: `READY=1` on `$NOTIFY_SOCKET` only once the XKS
//! listener accepts connections, `STATUS=` lines, `WATCHDOG=1` pings when `$WATCHDOG_USEC` is
//! set, `STOPPING=1` on SIGTERM, and the boot phases named on stderr.

use crate::serve_common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serve_common::*;

#[test]
fn ready_status_watchdog_and_stopping_reach_the_notify_socket() {
    let setup = ServeSetup::new();
    let sock_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config", setup.config.to_str().unwrap()])
        .current_dir(setup.dir.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let ready = loop {
        let n = sock.recv(&mut buf).expect("no notification within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        got.push(msg.clone());
        if msg.contains("READY=1") {
            break msg;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    };
    assert!(got.iter().any(|m| m.starts_with("STATUS=")), "{got:?}");
    // READY names the XKS address, and that listener accepts right now.
    let addr = ready
        .split("serving XKS on ")
        .nth(1)
        .expect("STATUS with the address")
        .trim()
        .to_string();
    std::net::TcpStream::connect(&addr).expect("READY=1 before the XKS listener accepts");

    // Watchdog pings at half the interval.
    let mut pings = 0;
    while pings < 2 {
        let n = sock.recv(&mut buf).expect("no watchdog ping");
        if &buf[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }

    // SIGTERM: STOPPING=1, exit 0, phases on stderr.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for phase in [
        "phase=attest",
        "phase=release",
        "phase=unseal",
        "phase=serve",
    ] {
        assert!(stderr.contains(phase), "{phase} missing:\n{stderr}");
    }
    assert!(stderr.contains("skipped"), "{stderr}");
}
