//! Key schedules that live outside this crate's locked memory but still must not outlive their
//! use: ring's AES-256-GCM schedule and a keyed HMAC-SHA256 state, each wiped where it lies when
//! dropped. Here because wiping them takes `unsafe`, and this is the crate that holds all of it.

#[cfg(not(feature = "fips"))]
use std::mem::MaybeUninit;

use hmac::Hmac;
use sha2::Sha256;

use crate::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

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

#[cfg(not(feature = "fips"))]
/// An AES-256-GCM key schedule (ring's, the fastest on this path: VAES/AVX2 where the CPU has
/// them) that is wiped when dropped. ring does not zeroize its expanded keys, so the schedule
/// lives in a `MaybeUninit` whose bytes are overwritten on drop; a `LessSafeKey` is plain data
/// (no heap, no drop glue: checked below), so nothing is leaked by never dropping it.
pub struct GcmKey(MaybeUninit<LessSafeKey>);

#[cfg(not(feature = "fips"))]
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

#[cfg(not(feature = "fips"))]
impl GcmKey {
    pub fn new(key: &Key32) -> Result<Self, crate::aead::Unspecified> {
        let k = UnboundKey::new(&AES_256_GCM, key.expose())?;
        Ok(GcmKey(MaybeUninit::new(LessSafeKey::new(k))))
    }

    pub fn get(&self) -> &LessSafeKey {
        // SAFETY: initialised in `new` and only de-initialised (wiped) in `drop`.
        unsafe { self.0.assume_init_ref() }
    }
}

#[cfg(not(feature = "fips"))]
impl Drop for GcmKey {
    fn drop(&mut self) {
        // SAFETY: `MaybeUninit<LessSafeKey>` may hold any bytes; it is not read again.
        unsafe { zeroize::zeroize_flat_type(&mut self.0) };
    }
}

/// The FIPS build's AES-256-GCM key (AWS-LC's FIPS module through aws-lc-rs). The schedule
/// lives in the module's own heap allocation (an `EVP_AEAD_CTX`), which AWS-LC cleanses when it
/// frees it (`OPENSSL_free` overwrites every allocation before releasing it), so there is nothing
/// here to wipe by hand; what differs from the default build is that the schedule is not in
/// this crate's locked arena (docs/fips.md).
#[cfg(feature = "fips")]
pub struct GcmKey(LessSafeKey);

#[cfg(feature = "fips")]
impl GcmKey {
    pub fn new(key: &Key32) -> Result<Self, crate::aead::Unspecified> {
        let k = UnboundKey::new(&AES_256_GCM, key.expose())?;
        Ok(GcmKey(LessSafeKey::new(k)))
    }

    pub fn get(&self) -> &LessSafeKey {
        &self.0
    }
}

impl GcmKey {
    #[inline]
    /// Encrypt `in_out` in place with a 12-byte IV (unique per key) and `aad`; the 16-byte tag.
    pub fn seal(
        &self,
        iv: [u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; 16], crate::aead::Unspecified> {
        let tag = self.get().seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            in_out,
        )?;
        let mut t = [0u8; 16];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    #[inline]
    /// Decrypt `in_out` in place; `Err` when the tag does not verify (then `in_out` holds no
    /// plaintext the caller may use; callers zero it).
    pub fn open(
        &self,
        iv: [u8; 12],
        aad: &[u8],
        tag: &[u8; 16],
        in_out: &mut [u8],
    ) -> Result<(), crate::aead::Unspecified> {
        // ring and aws-lc-rs differ here only in how the tag is passed.
        #[cfg(not(feature = "fips"))]
        let r = self.get().open_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            crate::aead::Tag::from(*tag),
            in_out,
            0..,
        );
        #[cfg(feature = "fips")]
        let r = self.get().open_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            tag,
            in_out,
        );
        r.map(|_| ())
    }
}
