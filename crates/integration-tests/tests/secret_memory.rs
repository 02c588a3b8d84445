//! Secret memory on the real kernel: keys live in `mlock`ed, `MADV_DONTDUMP` pages (checked in
//! /proc/self/smaps and VmLck), slots are reused, `Debug` is redacted, process hardening takes
//! effect, and the strict policy refuses to run when memory cannot be locked (checked in a child
//! process with RLIMIT_MEMLOCK 0 and, as root, CAP_IPC_LOCK dropped).

use keyward_integration_tests::tools;

use std::process::Command;

use keyward_secret::{self as secret, Key32, MemoryPolicy, SecretError};

const STRICT: MemoryPolicy = MemoryPolicy {
    allow_unlocked: false,
};

/// The VmFlags of the mapping that contains `addr`, from /proc/self/smaps.
fn vmflags_of(addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

/// The arena's counters are process-wide: tests that create or drop keys take this lock, so
/// the accounting test sees only its own keys (a key dropped by a neighbour meanwhile made it
/// count one short).
static ARENA: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn key32_debug_is_redacted_everywhere() {
    let _arena = ARENA.lock().unwrap_or_else(|p| p.into_inner());
    let k = Key32::from_bytes(&[0xAB; 32]).unwrap();
    for s in [
        format!("{k:?}"),
        format!("{k:#?}"),
        format!("{:?}", Some(&k)),
    ] {
        assert!(s.contains("redacted"), "{s}");
        assert!(
            !s.to_lowercase().contains("ab, ") && !s.contains("171"),
            "{s}"
        );
    }
    let live = keyward_keystore::LiveKey {
        id: "k".into(),
        version: 1,
        usage: keyward_keystore::KeyUsage::EncryptDecrypt,
        status: keyward_keystore::KeyStatus::Enabled,
        grants: vec![],
        kek: k,
        version_created: 0,
        older: Vec::new(),
        rotate_every_secs: None,
        destroy_at: None,
        status_before_destroy: None,
    };
    let s = format!("{live:?}");
    assert!(s.contains("Key32(<redacted>)") && !s.contains("171"), "{s}");
}

/// All arena accounting in one test so parallel tests in this binary do not disturb counts.
#[test]
fn keys_are_locked_dontdump_and_vmlck_grows() {
    let _arena = ARENA.lock().unwrap_or_else(|p| p.into_inner());
    match secret::init(STRICT) {
        Ok(r) => assert!(r.locked),
        Err(SecretError::Lock(e)) => {
            eprintln!("SKIPPED: mlock is not permitted here ({e}); VmLck cannot grow");
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let before = secret::locked_bytes().expect("VmLck in /proc/self/status");
    let stats0 = secret::arena_stats();

    // 20k keys need at least two more 256 KiB chunks.
    let keys: Vec<Key32> = (0..20_000).map(|_| Key32::random().unwrap()).collect();
    let after = secret::locked_bytes().unwrap();
    let stats1 = secret::arena_stats();
    assert!(
        after >= before + 2 * 256 * 1024,
        "VmLck {before} -> {after}: key memory is not locked"
    );
    assert!(stats1.live_keys >= stats0.live_keys + 20_000);
    assert_eq!(stats1.unlocked_chunks, 0);
    assert!(stats1.capacity_keys >= 20_000);

    // The pages holding keys are locked ("lo"), left out of core dumps ("dd") and wiped in
    // forked children ("wf", where the kernel supports it).
    let flags = vmflags_of(keys[0].expose().as_ptr() as usize).expect("mapping in smaps");
    assert!(flags.split(' ').any(|f| f == "lo"), "not locked: {flags}");
    assert!(
        flags.split(' ').any(|f| f == "dd"),
        "not MADV_DONTDUMP: {flags}"
    );

    // Dropping keys frees slots that are then reused: no new chunks for the same number again.
    let chunks = stats1.chunks;
    drop(keys);
    let keys: Vec<Key32> = (0..20_000).map(|_| Key32::random().unwrap()).collect();
    assert_eq!(secret::arena_stats().chunks, chunks, "slots not reused");
    drop(keys);
}

#[test]
fn hardening_makes_the_process_non_dumpable_without_core_files() {
    secret::harden_process().unwrap();
    assert!(!secret::is_dumpable());
    let mut lim = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
    assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
}

/// Helper process for `strict_policy_refuses_unlockable_memory`: reports what `init` did.
#[test]
#[ignore = "helper process for strict_policy_refuses_unlockable_memory"]
fn memlock_child() {
    if std::env::var("KEYWARD_MEMLOCK_CHILD").is_err() {
        eprintln!("memlock_child: helper; nothing to do without KEYWARD_MEMLOCK_CHILD");
        return;
    }
    match secret::init(STRICT) {
        Err(SecretError::Lock(msg)) => println!("STRICT_REFUSED {msg}"),
        Ok(_) => println!("STRICT_ACCEPTED"),
        Err(e) => println!("STRICT_OTHER {e}"),
    }
    match Key32::random() {
        Err(SecretError::Lock(_)) => println!("STRICT_KEY_REFUSED"),
        _ => println!("STRICT_KEY_ACCEPTED"),
    }
    match secret::init(MemoryPolicy {
        allow_unlocked: true,
    }) {
        Ok(r) if !r.locked => println!("ALLOWED_UNLOCKED"),
        Ok(_) => println!("ALLOWED_BUT_LOCKED"),
        Err(e) => println!("ALLOWED_ERR {e}"),
    }
    let k = Key32::from_bytes(&[1; 32]).unwrap();
    assert_eq!(k.expose(), &[1; 32]);
    println!("KEY_OK");
}

#[test]
fn strict_policy_refuses_unlockable_memory() {
    let _arena = ARENA.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--ignored",
        "--exact",
        "memlock_child",
        "--nocapture",
        "--test-threads=1",
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // Root's CAP_IPC_LOCK ignores RLIMIT_MEMLOCK: drop it from the bounding set.
        let mut c = Command::new(tools::need("setpriv", "util-linux"));
        c.args(["--bounding-set", "-ipc_lock", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).env("KEYWARD_MEMLOCK_CHILD", "1");
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STRICT_REFUSED"), "{stdout}");
    assert!(
        stdout.contains("RLIMIT_MEMLOCK"),
        "message says what to do: {stdout}"
    );
    assert!(stdout.contains("STRICT_KEY_REFUSED"), "{stdout}");
    assert!(stdout.contains("ALLOWED_UNLOCKED"), "{stdout}");
    assert!(stdout.contains("KEY_OK"), "{stdout}");
}
