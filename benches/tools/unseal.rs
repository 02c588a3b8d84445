//! `make bench`'s unseal and memory measurement: `bench_unseal create DIR N` writes a compacted
//! store of N keys; `bench_unseal open DIR` (a fresh process) times `Registry::open_dir` and
//! prints one JSON line with the time and the process's resident and locked memory.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use keyward_keystore::KeyUsage;
use keyward_keystore::{NewStore, Registry};
use keyward_secret::{Key32, MemoryPolicy};

const MK: [u8; 32] = [0x5a; 32];

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str);
    let dir = Path::new(
        args.get(1)
            .context("usage: bench_unseal create|open DIR [N]")?,
    );
    keyward_secret::init(MemoryPolicy {
        allow_unlocked: true,
    })?;
    match mode {
        Some("create") => {
            let n: usize = args.get(2).context("N")?.parse()?;
            let t = Instant::now();
            let reg = Registry::open_dir(dir, Key32::from_bytes(&MK)?)?;
            reg.create_store(NewStore {
                name: "bench".into(),
                uri_prefix: "/bench".into(),
                region: "us-east-1".into(),
                extra_services: vec![],
            })?;
            let ids: Vec<String> = (0..n).map(|i| format!("bench-key-{i:06}")).collect();
            for chunk in ids.chunks(10_000) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                reg.create_keys(None, &refs, KeyUsage::EncryptDecrypt)?;
            }
            reg.compact()?;
            eprintln!("bench_unseal: created {n} keys in {:?}", t.elapsed());
        }
        Some("open") => {
            let rss_before = status_kib("VmRSS:");
            let t = Instant::now();
            let reg = Registry::open_dir(dir, Key32::from_bytes(&MK)?)?;
            let unseal = t.elapsed();
            let keys = reg
                .snapshot()
                .stores
                .get("bench")
                .map_or(0, |s| s.keys.len());
            println!(
                "{}",
                serde_json::json!({
                    "keys": keys,
                    "unseal_ms": (unseal.as_secs_f64() * 1e4).round() / 10.0,
                    "rss_kib": status_kib("VmRSS:"),
                    "rss_before_open_kib": rss_before,
                    "peak_rss_kib": status_kib("VmHWM:"),
                    "locked_kib": status_kib("VmLck:"),
                })
            );
        }
        _ => bail!("usage: bench_unseal create|open DIR [N]"),
    }
    Ok(())
}
