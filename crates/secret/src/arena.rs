//! The locked arena behind [`super::Key32`]: 32-byte slots in anonymous `mmap`ed chunks that are
//! `mlock`ed, `MADV_DONTDUMP` (left out of core dumps) and `MADV_WIPEONFORK` (a forked child
//! sees zeros), zeroized when a slot is freed and when a chunk is unmapped. Free slots are reused.
//!
//! Hand-written rather than a crate: `memsec`/`region` lock single allocations, and one `mlock`ed
//! page per key would need 400 MiB of locked memory for 100k keys; here 100k keys take
//! 3.2 MiB in 13 chunks.

use std::ptr::NonNull;

use zeroize::Zeroize;

use super::{MemoryPolicy, SecretError};

/// Bytes per slot: one AES-256 key.
pub(crate) const SLOT_BYTES: usize = 32;
/// Bytes per chunk. 256 KiB = 8192 keys; 100k keys need 13 chunks (3.25 MiB locked), well
/// under the usual 8 MiB `RLIMIT_MEMLOCK`.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;
/// Slots per chunk.
pub(crate) const SLOTS_PER_CHUNK: usize = CHUNK_BYTES / SLOT_BYTES;

/// One mapped, (normally) locked region of [`CHUNK_BYTES`].
struct Chunk {
    base: NonNull<u8>,
    locked: bool,
}

// SAFETY: the chunk owns its mapping exclusively; access to slot bytes is coordinated by the
// arena's free list (a slot is handed to exactly one `Key32`).
unsafe impl Send for Chunk {}

impl Chunk {
    /// Map, advise and try to lock a new chunk. Returns the chunk and the `mlock` error, if any.
    fn map() -> Result<(Chunk, Option<std::io::Error>), SecretError> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SecretError::Map(std::io::Error::last_os_error()));
        }
        let Some(base) = NonNull::new(p.cast::<u8>()) else {
            return Err(SecretError::Arena("mmap returned null"));
        };
        // SAFETY: `p` is a mapping of CHUNK_BYTES we own. Advice failures are not fatal for
        // WIPEONFORK (kernels before 4.14); DONTDUMP is also covered by PR_SET_DUMPABLE=0 and
        // RLIMIT_CORE=0 from `harden_process`.
        unsafe {
            libc::madvise(p, CHUNK_BYTES, libc::MADV_DONTDUMP);
            libc::madvise(p, CHUNK_BYTES, libc::MADV_WIPEONFORK);
        }
        // SAFETY: as above.
        let rc = unsafe { libc::mlock(p, CHUNK_BYTES) };
        let (locked, err) = if rc == 0 {
            (true, None)
        } else {
            (false, Some(std::io::Error::last_os_error()))
        };
        Ok((Chunk { base, locked }, err))
    }

    fn slot(&self, i: usize) -> NonNull<[u8; SLOT_BYTES]> {
        debug_assert!(i < SLOTS_PER_CHUNK);
        // SAFETY: i < SLOTS_PER_CHUNK, so the offset stays inside the mapping.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(i * SLOT_BYTES).cast()) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; no `Key32` outlives the arena that owns this chunk
        // (only test arenas are ever dropped, after their slots are freed).
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr(), CHUNK_BYTES).zeroize();
            if self.locked {
                libc::munlock(self.base.as_ptr().cast(), CHUNK_BYTES);
            }
            libc::munmap(self.base.as_ptr().cast(), CHUNK_BYTES);
        }
    }
}

/// Counters for health reporting and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Mapped chunks.
    pub chunks: usize,
    /// Chunks that could not be locked (only possible with `allow_unlocked`).
    pub unlocked_chunks: usize,
    /// Keys currently held.
    pub live_keys: usize,
    /// Keys that fit without mapping another chunk.
    pub capacity_keys: usize,
    /// Bytes of arena memory that are `mlock`ed.
    pub locked_bytes: usize,
}

/// The slot allocator. One global instance serves every `Key32`.
pub(crate) struct Arena {
    chunks: Vec<Chunk>,
    free: Vec<u32>,
    live: usize,
    policy: MemoryPolicy,
    warned: bool,
}

impl Arena {
    /// An empty arena with the strict policy (refuse unlocked memory).
    pub(crate) const fn new() -> Self {
        Arena {
            chunks: Vec::new(),
            free: Vec::new(),
            live: 0,
            policy: MemoryPolicy {
                allow_unlocked: false,
            },
            warned: false,
        }
    }

    pub(crate) fn set_policy(&mut self, policy: MemoryPolicy) {
        self.policy = policy;
    }

    /// Map one more chunk, honouring the policy when it cannot be locked.
    fn grow(&mut self) -> Result<(), SecretError> {
        let (chunk, lock_err) = Chunk::map()?;
        if let Some(e) = lock_err {
            if !self.policy.allow_unlocked {
                // `chunk` is dropped (zeroized, unmapped) here.
                return Err(SecretError::Lock(crate::MlockError {
                    bytes: CHUNK_BYTES,
                    source: e,
                }));
            }
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    error = %e,
                    "key memory is NOT locked (allow_unlocked is set): keys may be swapped to \
                     disk; never run like this in production"
                );
            }
        }
        let first = u32::try_from(self.chunks.len() * SLOTS_PER_CHUNK)
            .map_err(|_| SecretError::Arena("arena index overflow"))?;
        self.chunks.push(chunk);
        // Reverse so that low indices are handed out first.
        let n = SLOTS_PER_CHUNK as u32;
        self.free.extend((first..first + n).rev());
        Ok(())
    }

    /// Make sure at least one chunk exists (used at start-up to test locking).
    pub(crate) fn ensure_chunk(&mut self) -> Result<(), SecretError> {
        if self.chunks.is_empty() {
            self.grow()?;
        }
        Ok(())
    }

    /// Hand out a zeroed slot.
    pub(crate) fn alloc(&mut self) -> Result<(NonNull<[u8; SLOT_BYTES]>, u32), SecretError> {
        if self.free.is_empty() {
            self.grow()?;
        }
        let idx = self
            .free
            .pop()
            .ok_or(SecretError::Arena("arena has no free slot"))?;
        self.live += 1;
        Ok((self.ptr(idx), idx))
    }

    /// The address of slot `idx`.
    pub(crate) fn ptr(&self, idx: u32) -> NonNull<[u8; SLOT_BYTES]> {
        let i = idx as usize;
        self.chunks[i / SLOTS_PER_CHUNK].slot(i % SLOTS_PER_CHUNK)
    }

    /// Return slot `idx` (the caller has zeroized it).
    pub(crate) fn release(&mut self, idx: u32) {
        self.live = self.live.saturating_sub(1);
        self.free.push(idx);
    }

    pub(crate) fn stats(&self) -> ArenaStats {
        let unlocked = self.chunks.iter().filter(|c| !c.locked).count();
        ArenaStats {
            chunks: self.chunks.len(),
            unlocked_chunks: unlocked,
            live_keys: self.live,
            capacity_keys: self.chunks.len() * SLOTS_PER_CHUNK,
            locked_bytes: (self.chunks.len() - unlocked) * CHUNK_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_grow_by_chunks() {
        let mut a = Arena::new();
        a.set_policy(MemoryPolicy {
            allow_unlocked: true,
        });
        let (p0, i0) = a.alloc().unwrap();
        let (_p1, i1) = a.alloc().unwrap();
        assert_ne!(i0, i1);
        assert_eq!(a.stats().chunks, 1);
        // SAFETY: slot i0 is ours.
        unsafe { (*p0.as_ptr()).zeroize() };
        a.release(i0);
        let (_p, again) = a.alloc().unwrap();
        assert_eq!(again, i0, "a freed slot is handed out again");
        for _ in 0..SLOTS_PER_CHUNK {
            a.alloc().unwrap();
        }
        let s = a.stats();
        assert_eq!(s.chunks, 2);
        assert_eq!(s.live_keys, SLOTS_PER_CHUNK + 2);
        assert_eq!(s.capacity_keys, 2 * SLOTS_PER_CHUNK);
    }

    #[test]
    fn fresh_slots_are_zero() {
        let mut a = Arena::new();
        a.set_policy(MemoryPolicy {
            allow_unlocked: true,
        });
        let (p, _) = a.alloc().unwrap();
        // SAFETY: slot is ours and mapped.
        assert_eq!(unsafe { *p.as_ptr() }, [0u8; 32]);
    }
}
