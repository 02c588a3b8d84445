//! [`LockedBox`]: one value in its own anonymous mapping that is `mlock`ed, `MADV_DONTDUMP`
//! and `MADV_WIPEONFORK`, and zeroized (every byte of the mapping) when the box is dropped.
//!
//! For secret state that is not a 32-byte key and lives long, such as the SigV4 verifier's
//! per-thread cache of keyed HMAC states: the value never moves (no `Vec` growth can leave a
//! copy behind), and its pages are never swapped or dumped. A mapping is whole pages, so this
//! is for a few values per process, not one per key (keys go to [`super::Key32`]).

use std::ptr::NonNull;

use zeroize::Zeroize;

use super::SecretError;

/// A `T` in locked, non-dumpable memory of its own, zeroized on drop.
pub struct LockedBox<T> {
    ptr: NonNull<T>,
    len: usize,
    locked: bool,
}

// SAFETY: the box owns its mapping and the `T` in it exclusively, like `Box<T>`.
unsafe impl<T: Send> Send for LockedBox<T> {}
// SAFETY: shared access only hands out `&T`, like `Box<T>`.
unsafe impl<T: Sync> Sync for LockedBox<T> {}

impl<T> LockedBox<T> {
    /// Map pages for a `T`, advise and lock them, and move `value` in. `value` should hold no
    /// secret yet (the move copies it from the caller's frame); fill it in place afterwards.
    pub fn new(value: T) -> Result<Self, SecretError> {
        assert!(
            std::mem::align_of::<T>() <= 4096,
            "LockedBox needs at most page alignment"
        );
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SecretError::Map(std::io::Error::last_os_error()));
        }
        let Some(ptr) = NonNull::new(p.cast::<T>()) else {
            return Err(SecretError::Arena("mmap returned null"));
        };
        // SAFETY: `p` is a mapping of `len` bytes we own. Advice failures are not fatal (see
        // the arena); a failed `mlock` leaves the box usable, unlocked, and is reported by
        // `is_locked`.
        let locked = unsafe {
            libc::madvise(p, len, libc::MADV_DONTDUMP);
            libc::madvise(p, len, libc::MADV_WIPEONFORK);
            libc::mlock(p, len) == 0
        };
        // SAFETY: the mapping is page-aligned (so aligned for T), large enough and ours.
        unsafe { ptr.as_ptr().write(value) };
        Ok(LockedBox { ptr, len, locked })
    }

    /// Whether the pages are locked in memory.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<T> std::ops::Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the value lives in our mapping until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> std::ops::DerefMut for LockedBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        // SAFETY: the value was written in `new` and is dropped exactly once here; then the
        // whole mapping (ours) is zeroized, unlocked and unmapped.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            let base = self.ptr.as_ptr().cast::<u8>();
            std::slice::from_raw_parts_mut(base, self.len).zeroize();
            if self.locked {
                libc::munlock(base.cast(), self.len);
            }
            libc::munmap(base.cast(), self.len);
        }
    }
}

impl<T> std::fmt::Debug for LockedBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedBox(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_value_in_place_and_redacts_debug() {
        let mut b = LockedBox::new([0u8; 5000]).unwrap();
        let at = b.as_ptr();
        b[4999] = 7;
        assert_eq!(b[4999], 7);
        assert_eq!(b.as_ptr(), at, "the value never moves");
        assert_eq!(format!("{b:?}"), "LockedBox(<redacted>)");
    }

    #[test]
    fn drops_the_value() {
        let rc = std::rc::Rc::new(());
        let b = LockedBox::new(rc.clone()).unwrap();
        assert_eq!(std::rc::Rc::strong_count(&rc), 2);
        drop(b);
        assert_eq!(std::rc::Rc::strong_count(&rc), 1);
    }
}
