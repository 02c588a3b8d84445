//! Every committed fuzz input, replayed through its target: the seed corpus
//! (`fuzz/corpus/<target>/`) and the inputs that once crashed a target
//! (`fuzz/regressions/<target>/`, each fixed since). A target that panics on any of them
//! fails here, so `make test` catches a regression without a fuzzer installed.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_committed_input_runs_through_its_target() {
    let mut total = 0;
    for (name, target) in keyward_fuzz::TARGETS {
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let d = root().join(dir).join(name);
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| target(&data));
                assert!(r.is_ok(), "{name} panicked on {}", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no seed input for {name} under fuzz/corpus/{name}");
        total += n;
    }
    eprintln!("{total} committed inputs replayed");
}

/// Every target has its libFuzzer binary (the list here and fuzz/Cargo.toml agree).
#[test]
fn every_target_has_a_libfuzzer_binary() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for (name, _) in keyward_fuzz::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        assert!(root().join(format!("fuzz_targets/{name}.rs")).exists());
    }
}

/// The seeds reach deep: a seed XKS Encrypt fails SigV4 as committed and succeeds once the
/// target re-signs it; the seed key store opens under the fuzz master key. (Without this the
/// fuzzer would spend its time at the first check.)
#[test]
fn the_seeds_get_past_authentication_and_integrity_checks() {
    let enc = std::fs::read(root().join("corpus/xks_request/encrypt")).unwrap();
    let st = keyward_fuzz::xks_statuses(&enc);
    assert_eq!(st.len(), 2, "{st:?}");
    assert!(matches!(st[0], 400 | 401 | 403), "{st:?}");
    assert_eq!(st[1], 200, "{st:?}");
    let store = std::fs::read(root().join("corpus/keystore_log/store-with-head")).unwrap();
    assert!(keyward_fuzz::keystore_opens(&store));
    let mut bad = store.clone();
    let i = bad.len() / 3;
    bad[i] ^= 1;
    assert!(!keyward_fuzz::keystore_opens(&bad));
}
