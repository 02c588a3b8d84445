//! Key schedules that live outside this crate's locked memory but still must not outlive their
//! use: ring's AES-256-GCM schedule and a keyed HMAC-SHA256 state, each wiped where it lies when
//! dropped. Here because wiping them takes `unsafe`, and this is the crate that holds all of it.

use std::mem::MaybeUninit;

use hmac::Hmac;
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use sha2::Sha256;

use crate::Key32;

/// HMAC-SHA256 (the SigV4 signing-key state).
pub type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC-SHA256 state, wiped where it lies when dropped (or overwritten).
pub struct WipedMac(pub HmacSha256);

impl Drop for WipedMac {
    fn drop(&mut self) {
        // SAFETY: `Hmac<Sha256>` is plain data: SHA-256 core states (`[u32; 8]` and a block
        // counter) and a block buffer (`[u8; 64]` and a `u8` position), no pointers and no
        // `Drop` of its own; all-zero is a valid value of every field, and the value is not
        // used after this.
        unsafe { zeroize::zeroize_flat_type(&mut self.0 as *mut HmacSha256) }
    }
}

/// An AES-256-GCM key schedule (ring's, the fastest on this path: VAES/AVX2 where the CPU has
/// them) that is wiped when dropped. ring does not zeroize its expanded keys, so the schedule
/// lives in a `MaybeUninit` whose bytes are overwritten on drop; a `LessSafeKey` is plain data
/// (no heap, no drop glue: checked below), so nothing is leaked by never dropping it.
pub struct GcmKey(MaybeUninit<LessSafeKey>);

const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl GcmKey {
    pub fn new(key: &Key32) -> Result<Self, ring::error::Unspecified> {
        let k = UnboundKey::new(&AES_256_GCM, key.expose())?;
        Ok(GcmKey(MaybeUninit::new(LessSafeKey::new(k))))
    }

    pub fn get(&self) -> &LessSafeKey {
        // SAFETY: initialised in `new` and only de-initialised (wiped) in `drop`.
        unsafe { self.0.assume_init_ref() }
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        // SAFETY: `MaybeUninit<LessSafeKey>` may hold any bytes; it is not read again.
        unsafe { zeroize::zeroize_flat_type(&mut self.0) };
    }
}
