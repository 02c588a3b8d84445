//! Key-store unseal: `Registry::open_dir` of a compacted store holding 10,000 and 100,000
//! keys (read the records, open each AES-256-GCM seal under the master key, build the view).
//! The stores are created once per run in a temp dir (one batched write per 10,000 keys).
//! Resident memory is measured by `make bench` in a fresh process (`bench_unseal`).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use keyward_keystore::KeyUsage;
use keyward_keystore::{NewStore, Registry};
use keyward_secret::{Key32, MemoryPolicy};

const MK: [u8; 32] = [0x5a; 32];

fn make_store(dir: &Path, n: usize) {
    let reg = Registry::open_dir(dir, Key32::from_bytes(&MK).unwrap()).unwrap();
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
    reg.compact().unwrap();
}

fn unseal(c: &mut Criterion) {
    keyward_secret::init(MemoryPolicy {
        allow_unlocked: true,
    })
    .unwrap();
    let mut g = c.benchmark_group("unseal");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(3));
    for n in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        make_store(dir.path(), n);
        g.bench_function(format!("{}k_keys", n / 1000), |b| {
            b.iter(|| {
                let reg = Registry::open_dir(dir.path(), Key32::from_bytes(&MK).unwrap()).unwrap();
                black_box(reg.snapshot().stores["bench"].keys.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, unseal);
criterion_main!(benches);
