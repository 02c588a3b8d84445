//! Quick measurement (not a criterion benchmark, never a timed assertion): unseal N keys
//! (default 100,000; `KEYWARD_BENCH_KEYS`) and report the time and the resident memory of a
//! fresh process holding them, plus the cost of one admin change at that size.
//!
//! Run it in release mode:
//! `cargo test --release -p keyward-integration-tests --test keystore_bench -- --ignored --nocapture`
//! It prints one JSON line prefixed with `KEYSTORE_BENCH ` for scripts (the bench helper).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use keyward_keystore::KeyUsage;
use keyward_keystore::{NewStore, Registry};
use keyward_secret::{self as secret, Key32, MemoryPolicy};

const MK: [u8; 32] = [0x77; 32];
const DIR_ENV: &str = "KEYWARD_BENCH_CHILD_DIR";

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn key_count() -> usize {
    std::env::var("KEYWARD_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// CPU time (user + system) of this process so far, in milliseconds. Reported next to wall
/// time because on a loaded machine wall time mostly measures the other processes.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Child: open the store (the measured unseal), report time and memory, then time one change.
#[test]
#[ignore = "helper process for unseal_many_keys"]
fn unseal_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        eprintln!("unseal_child: helper; nothing to do without {DIR_ENV}");
        return;
    };
    let rss_start = status_kib("VmRSS:");
    secret::init(MemoryPolicy {
        allow_unlocked: true,
    })
    .unwrap();
    let (t, c) = (Instant::now(), cpu_ms());
    let reg = Registry::open_dir(Path::new(&dir), Key32::from_bytes(&MK).unwrap()).unwrap();
    let (unseal, unseal_cpu) = (t.elapsed(), cpu_ms() - c);
    let keys = reg.snapshot().stores["bench"].keys.len();
    let rss = status_kib("VmRSS:");
    let hwm = status_kib("VmHWM:");
    let lck = status_kib("VmLck:");
    let (t, c) = (Instant::now(), cpu_ms());
    reg.create_key(None, "one-more", KeyUsage::EncryptDecrypt)
        .unwrap();
    let (create_one, create_cpu) = (t.elapsed(), cpu_ms() - c);
    let (t, c) = (Instant::now(), cpu_ms());
    reg.disable_key(None, "one-more").unwrap();
    let (disable_one, disable_cpu) = (t.elapsed(), cpu_ms() - c);
    let file_bytes = std::fs::metadata(Path::new(&dir).join("keystore.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    let v = serde_json::json!({
        "keys": keys,
        "unseal_ms": unseal.as_secs_f64() * 1e3,
        "unseal_cpu_ms": unseal_cpu,
        "rss_kib": rss,
        "rss_before_open_kib": rss_start,
        "peak_rss_kib": hwm,
        "locked_kib": lck,
        "create_key_ms": create_one.as_secs_f64() * 1e3,
        "create_key_cpu_ms": create_cpu,
        "disable_key_ms": disable_one.as_secs_f64() * 1e3,
        "disable_key_cpu_ms": disable_cpu,
        "file_bytes": file_bytes,
        "loadavg_1m": loadavg(),
    });
    println!("KEYSTORE_BENCH {v}");
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn unseal_many_keys() {
    let n = key_count();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    {
        let reg = Registry::open_dir(dir.path(), Key32::from_bytes(&MK).unwrap()).unwrap();
        reg.create_store(NewStore {
            name: "bench".into(),
            uri_prefix: "/bench".into(),
            region: "us-east-1".into(),
            extra_services: vec![],
        })
        .unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("bench-key-{i:06}")).collect();
        for chunk in ids.chunks(10_000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            reg.create_keys(None, &refs, KeyUsage::EncryptDecrypt)
                .unwrap();
        }
        // Measure the compacted form, as a long-running store would mostly be.
        reg.compact().unwrap();
    }
    eprintln!("created {n} keys in {:?}", t.elapsed());
    // Run the unseal in a fresh process so its RSS is that of a process holding the keys.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "unseal_child", "--nocapture"])
        .env(DIR_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("KEYSTORE_BENCH "))
        .expect("child printed its figures");
    println!("{line}");
    let v: serde_json::Value = serde_json::from_str(&line["KEYSTORE_BENCH ".len()..]).unwrap();
    assert_eq!(v["keys"].as_u64(), Some(n as u64));
}
