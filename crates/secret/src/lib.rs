//! Secrets in memory: locked (`mlock`), excluded from core dumps (`MADV_DONTDUMP`), zeroized on
//! drop, never printed. Also process hardening (non-dumpable, no core files).
//!
//! CONTRACT (shared by keystore, xks, release): [`Key32`] is the only type that holds raw key
//! bytes outside `zeroize` wrappers. Its bytes live in a process-wide locked arena (see
//! `arena.rs`): 32-byte slots in `mmap`ed, `mlock`ed, `MADV_DONTDUMP` chunks of 256 KiB that
//! grow on demand and whose slots are zeroized and reused when a key is dropped.
//!
//! Start-up order for a binary that holds keys:
//! 1. [`harden_process`] (non-dumpable, `RLIMIT_CORE` 0);
//! 2. [`init`] with the configured [`MemoryPolicy`]: refuses to go on when memory cannot be
//!    locked, unless `allow_unlocked` (development only; a warning is logged).
//!
//! Without [`init`], the arena uses the strict policy: a key that cannot be locked is an error.

mod arena;
mod fdlimit;
mod locked;
mod wipe;

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use zeroize::{Zeroize, Zeroizing};

// Key memory: the locked arena's counters, locked boxes, wiped key schedules.
pub use arena::ArenaStats;
pub use locked::LockedBox;
pub use wipe::{GcmKey, HmacSha256, WipedMac};

// The file-descriptor budget shared by the listeners.
pub use fdlimit::{raise_nofile, FdBudget};

/// The AEAD every AES-256-GCM user of keyward takes ([`GcmKey`], the XKS request path, the key
/// store's sealing): ring in the default build, AWS-LC's FIPS 140-3 module (aws-lc-rs, whose
/// `aead` module has ring's API) in the `fips` build.
pub mod aead {
    #[cfg(feature = "fips")]
    pub use aws_lc_rs::aead::*;
    #[cfg(feature = "fips")]
    pub use aws_lc_rs::error::Unspecified;
    #[cfg(not(feature = "fips"))]
    pub use ring::aead::*;
    #[cfg(not(feature = "fips"))]
    pub use ring::error::Unspecified;
}

/// Whether this build's AES-256-GCM and TLS run in a FIPS 140-3 module in FIPS mode: the
/// `fips` build asks AWS-LC (`FIPS_mode`, after its power-on self tests), the default build
/// says no.
pub fn fips_mode() -> bool {
    #[cfg(feature = "fips")]
    {
        aws_lc_rs::try_fips_mode().is_ok()
    }
    #[cfg(not(feature = "fips"))]
    {
        false
    }
}

/// Errors from secret memory handling.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `mlock` failed and the policy does not allow unlocked key memory.
    #[error("cannot lock memory: {0}")]
    Lock(#[source] MlockError),
    /// The OS RNG failed.
    #[error("random number generator failed")]
    Rng,
    /// `mmap` failed (out of memory or address space).
    #[error("cannot map memory for keys: {0}")]
    Map(#[source] std::io::Error),
    /// The arena's own bookkeeping ran out (what ran out is said).
    #[error("cannot map memory for keys: {0}")]
    Arena(&'static str),
    /// A process-hardening call (`prctl`, `setrlimit`) failed; `call` names it.
    #[error("process hardening failed: {call}: {source}")]
    Harden {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `mlock` of a chunk of key memory failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "mlock of {bytes} bytes failed ({source}); raise RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK=) \
     or allow unlocked memory for development"
)]
pub struct MlockError {
    /// How much was to be locked.
    pub bytes: usize,
    /// What `mlock` said.
    #[source]
    pub source: std::io::Error,
}

/// What to do when key memory cannot be locked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryPolicy {
    /// Keep keys in unlocked memory when `mlock` fails (`RLIMIT_MEMLOCK` too low), with a
    /// warning. For development only; the default (`false`) refuses to start.
    #[serde(default)]
    pub allow_unlocked: bool,
}

/// What [`init`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Whether key memory is locked (false only with `allow_unlocked`).
    pub locked: bool,
    /// The arena's counters after initialisation.
    pub arena: ArenaStats,
}

static ARENA: Mutex<arena::Arena> = Mutex::new(arena::Arena::new());

/// The arena, even if a panic poisoned the lock (the free list stays consistent: every update
/// is a single push or pop).
fn arena() -> MutexGuard<'static, arena::Arena> {
    ARENA.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make the process non-dumpable (`PR_SET_DUMPABLE` 0: no core dumps, no ptrace by same-uid
/// processes, `/proc/self/mem` closed to others) and set `RLIMIT_CORE` to 0.
pub fn harden_process() -> Result<(), SecretError> {
    // SAFETY: plain syscalls with constant arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(SecretError::Harden {
            call: "prctl(PR_SET_DUMPABLE, 0)",
            source: std::io::Error::last_os_error(),
        });
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        return Err(SecretError::Harden {
            call: "setrlimit(RLIMIT_CORE, 0)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether the process is currently non-dumpable.
pub fn is_dumpable() -> bool {
    // SAFETY: query only.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

/// Set the memory policy and map the first arena chunk, to find out now (at start-up) whether
/// key memory can be locked. Fails with [`SecretError::Lock`] when it cannot and the policy does
/// not allow it.
pub fn init(policy: MemoryPolicy) -> Result<MemoryReport, SecretError> {
    let mut a = arena();
    a.set_policy(policy);
    a.ensure_chunk()?;
    let stats = a.stats();
    Ok(MemoryReport {
        locked: stats.unlocked_chunks == 0,
        arena: stats,
    })
}

/// The arena's counters (keys held, chunks, locked bytes), for health output and tests.
pub fn arena_stats() -> ArenaStats {
    arena().stats()
}

/// The process's locked memory (`VmLck` in `/proc/self/status`), in bytes; `None` where that
/// file or line does not exist.
pub fn locked_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vmlck(&status)
}

fn parse_vmlck(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmLck:"))?;
    let mut parts = line["VmLck:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// A 32-byte AES-256 key in protected memory. `Debug` never shows the bytes.
///
/// The bytes live in a slot of the locked arena; dropping the key zeroizes the slot and returns
/// it for reuse. Not `Clone`: use [`Key32::try_clone`], which takes another locked slot.
pub struct Key32 {
    ptr: NonNull<[u8; 32]>,
    slot: u32,
}

// SAFETY: a Key32 exclusively owns its slot; `expose` hands out shared references only.
unsafe impl Send for Key32 {}
// SAFETY: as above; there is no interior mutability.
unsafe impl Sync for Key32 {}

impl Key32 {
    /// Copy key bytes into a locked slot. The caller's copy stays the caller's to zeroize (keep
    /// it in a `Zeroizing` wrapper).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SecretError> {
        let (ptr, slot) = arena().alloc()?;
        // SAFETY: the slot is ours alone and valid for 32 bytes.
        unsafe { ptr.as_ptr().write(*bytes) };
        Ok(Key32 { ptr, slot })
    }

    /// A fresh random key from the OS RNG.
    pub fn random() -> Result<Self, SecretError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom_fill(&mut k[..])?;
        Self::from_bytes(&k)
    }

    /// A second copy of this key in its own locked slot.
    pub fn try_clone(&self) -> Result<Self, SecretError> {
        Self::from_bytes(self.expose())
    }

    /// The raw bytes, for the cipher that uses them. Do not copy them out.
    pub fn expose(&self) -> &[u8; 32] {
        // SAFETY: the slot stays mapped and owned by us until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for Key32 {
    fn drop(&mut self) {
        // SAFETY: we own the slot; zeroize uses volatile writes.
        unsafe { (*self.ptr.as_ptr()).zeroize() };
        arena().release(self.slot);
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

/// Fill `buf` from the OS RNG.
pub fn getrandom_fill(buf: &mut [u8]) -> Result<(), SecretError> {
    use rand_core::{OsRng, RngCore};
    OsRng.try_fill_bytes(buf).map_err(|_| SecretError::Rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_round_trips_and_debug_is_redacted() {
        let k = Key32::from_bytes(&[7u8; 32]).unwrap();
        assert_eq!(k.expose(), &[7u8; 32]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "Key32(<redacted>)");
        assert!(!dbg.contains('7'));
    }

    #[test]
    fn random_keys_differ_and_clone_copies() {
        let a = Key32::random().unwrap();
        let b = Key32::random().unwrap();
        assert_ne!(a.expose(), b.expose());
        let c = a.try_clone().unwrap();
        assert_eq!(a.expose(), c.expose());
        assert_ne!(a.expose().as_ptr(), c.expose().as_ptr());
    }

    #[test]
    fn dropped_slot_is_zeroized() {
        let k = Key32::from_bytes(&[0xA5; 32]).unwrap();
        let p = k.expose().as_ptr();
        drop(k);
        // SAFETY: the chunk stays mapped for the life of the process (the global arena is
        // never dropped); we only read 32 bytes of it. Another test may have reused the slot,
        // in which case it holds that test's key, never our pattern.
        let after = unsafe { std::ptr::read_volatile(p.cast::<[u8; 32]>()) };
        assert_ne!(after, [0xA5; 32]);
    }

    #[test]
    fn vmlck_parses() {
        let s = "Name:\tx\nVmLck:\t     256 kB\nVmPin:\t0 kB\n";
        assert_eq!(parse_vmlck(s), Some(256 * 1024));
        assert_eq!(parse_vmlck("VmLck: x kB"), None);
        assert_eq!(parse_vmlck("Name: y"), None);
    }
}

#[cfg(test)]
mod fips_tests {
    /// The build says what it is: the FIPS build's module is in FIPS mode (its self tests
    /// passed), the default build never claims it.
    #[test]
    fn fips_mode_matches_the_build() {
        assert_eq!(super::fips_mode(), cfg!(feature = "fips"));
    }
}
