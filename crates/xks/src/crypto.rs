//! Step 8 of a request: AES-256-GCM with the frozen AAD and `ciphertextMetadata` layout, and the
//! ciphertext data integrity value (contract sections 4.2, 5 and 6).
//!
//! Frozen format, version 1:
//! * `ciphertextMetadata` = `0x01 || u32_be(key version)` (5 bytes; the limit is 20).
//! * GCM AAD = `u16_be(len aad) || aad || u8(len ctm) || ctm`, always, even with no request AAD.
//! * IV: 12 random bytes; tag: 16 bytes, returned separately; ciphertext length = plaintext length.
//!
//! A later format bumps the first byte of `ciphertextMetadata`; decrypt picks the layout by it.

use rand::RngCore;
use sha2::{Digest, Sha256};

use keyward_secret::{GcmKey, Key32};

/// The `ciphertextMetadata` format byte of the layout above.
pub(crate) const CTM_V1: u8 = 0x01;
/// Length of our version-1 `ciphertextMetadata`.
pub(crate) const CTM_V1_LEN: usize = 5;
/// The largest AAD the length prefix can describe.
pub(crate) const MAX_AAD: usize = u16::MAX as usize;

/// Crypto failures, mapped by the handler onto XKS errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CryptoError {
    /// The tag did not verify (wrong key, IV, AAD, metadata, ciphertext or tag).
    #[error("ciphertext does not authenticate")]
    Auth,
    /// `ciphertextMetadata` is not one we wrote.
    #[error("ciphertextMetadata is not in a format this proxy wrote")]
    Metadata,
    /// AAD too long for the length prefix.
    #[error("AAD longer than 65535 bytes")]
    AadTooLong,
}

/// Our `ciphertextMetadata` for a key version.
pub(crate) fn ctm_v1(key_version: u32) -> [u8; CTM_V1_LEN] {
    let v = key_version.to_be_bytes();
    [CTM_V1, v[0], v[1], v[2], v[3]]
}

/// The key version a `ciphertextMetadata` names, if it is ours.
pub(crate) fn parse_ctm(ctm: &[u8]) -> Result<u32, CryptoError> {
    match ctm {
        [CTM_V1, a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(CryptoError::Metadata),
    }
}

/// `u16_be(len aad) || aad || u8(len ctm) || ctm`, into `out` (cleared first).
pub(crate) fn gcm_aad(aad: &[u8], ctm: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let la = u16::try_from(aad.len()).map_err(|_| CryptoError::AadTooLong)?;
    let lc = u8::try_from(ctm.len()).map_err(|_| CryptoError::Metadata)?;
    out.clear();
    out.reserve(3 + aad.len() + ctm.len());
    out.extend_from_slice(&la.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(lc);
    out.extend_from_slice(ctm);
    Ok(())
}

/// SHA-256(aad || ctm || iv || ciphertext || tag), no length prefixes (spec Appendix C).
pub(crate) fn cdiv(aad: &[u8], ctm: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(aad);
    h.update(ctm);
    h.update(iv);
    h.update(ciphertext);
    h.update(tag);
    h.finalize().into()
}

/// Encrypt `buf` in place under `key`; returns (iv, tag). `scratch` holds the GCM AAD.
pub(crate) fn encrypt(
    key: &Key32,
    aad: &[u8],
    ctm: &[u8],
    buf: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<([u8; 12], [u8; 16]), CryptoError> {
    gcm_aad(aad, ctm, scratch)?;
    let mut iv = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut iv);
    let key = GcmKey::new(key).map_err(|_| CryptoError::Auth)?;
    let tag = key
        .seal(iv, &scratch[..], buf)
        .map_err(|_| CryptoError::Auth)?;
    Ok((iv, tag))
}

/// Decrypt `buf` in place; on failure `buf` is zeroed.
pub(crate) fn decrypt(
    key: &Key32,
    aad: &[u8],
    ctm: &[u8],
    iv: &[u8; 12],
    tag: &[u8; 16],
    buf: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    gcm_aad(aad, ctm, scratch)?;
    let key = GcmKey::new(key).map_err(|_| CryptoError::Auth)?;
    let res = key.open(*iv, &scratch[..], tag, buf);
    match res {
        Ok(_) => Ok(()),
        Err(_) => {
            buf.iter_mut().for_each(|b| *b = 0);
            Err(CryptoError::Auth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn cdiv_matches_the_spec_example() {
        let aad = b64("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n");
        let ctm = b64("a2V5X3ZlcnNpb249MQ==");
        let (iv, ct, tag) = (
            b64("HMrlRw85cAJUd5Ax"),
            b64("ghxkK1txeDNn3q8Y"),
            b64("vBxN2ncH1oEkR8WVXpmyYQ=="),
        );
        assert_eq!(aad.len() + ctm.len() + iv.len() + ct.len() + tag.len(), 86);
        let v = cdiv(&aad, &ctm, &iv, &ct, &tag);
        assert_eq!(
            v.to_vec(),
            b64("qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=")
        );
        // Any changed byte changes it.
        assert_ne!(cdiv(&aad, &ctm, &iv, &ct, &tag[..15]), v);
    }

    #[test]
    fn aad_layout_matches_the_spec_example() {
        let aad = b"project=nile,department=marketing";
        let ctm = b"key_version=1";
        let mut out = Vec::new();
        gcm_aad(aad, ctm, &mut out).unwrap();
        let mut want = vec![0x00, 0x21];
        want.extend_from_slice(aad);
        want.push(0x0d);
        want.extend_from_slice(ctm);
        assert_eq!(out, want);
        gcm_aad(b"", b"", &mut out).unwrap();
        assert_eq!(out, [0, 0, 0]);
        assert_eq!(
            gcm_aad(&vec![0; 65536], b"", &mut out),
            Err(CryptoError::AadTooLong)
        );
        assert!(gcm_aad(&vec![0; 65535], b"", &mut out).is_ok());
    }

    #[test]
    fn round_trip_and_binding() {
        let key = Key32::random().unwrap();
        let ctm = ctm_v1(7);
        assert_eq!(parse_ctm(&ctm), Ok(7));
        assert!(parse_ctm(b"key_version=1").is_err());
        let mut s = Vec::new();
        let pt = vec![0x5a; 4300];
        let mut buf = pt.clone();
        let (iv, tag) = encrypt(&key, b"aad", &ctm, &mut buf, &mut s).unwrap();
        assert_eq!(buf.len(), pt.len());
        assert_ne!(buf, pt);
        let ct = buf.clone();
        decrypt(&key, b"aad", &ctm, &iv, &tag, &mut buf, &mut s).unwrap();
        assert_eq!(buf, pt);
        // Metadata moved into the AAD must not authenticate (the length prefixes stop it).
        let mut moved = ctm.to_vec();
        moved.splice(0..0, b"aad".iter().copied());
        let mut b = ct.clone();
        assert_eq!(
            decrypt(&key, &moved, b"", &iv, &tag, &mut b, &mut s),
            Err(CryptoError::Auth)
        );
        let mut b = ct.clone();
        assert!(decrypt(&key, b"aad", &ctm_v1(8), &iv, &tag, &mut b, &mut s).is_err());
        let mut b = ct.clone();
        assert!(decrypt(&key, b"aae", &ctm, &iv, &tag, &mut b, &mut s).is_err());
        assert!(b.iter().all(|&x| x == 0));
        let other = Key32::random().unwrap();
        let mut b = ct.clone();
        assert!(decrypt(&other, b"aad", &ctm, &iv, &tag, &mut b, &mut s).is_err());
    }

    /// ring (the request path) and RustCrypto's `aes-gcm` (an independent implementation)
    /// agree on random keys, IVs, AADs and lengths, both ways; a flipped tag bit is refused.
    #[test]
    fn ring_agrees_with_rustcrypto_aes_gcm() {
        use aes_gcm::aead::AeadInPlace;
        use aes_gcm::{Aes256Gcm, KeyInit};
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let mut s = Vec::new();
        for round in 0..300 {
            let key = Key32::random().unwrap();
            let len = match round % 3 {
                0 => rng.gen_range(0..64),
                1 => rng.gen_range(0..600),
                _ => rng.gen_range(0..4400),
            };
            let pt: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let aad: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
            let ctm = ctm_v1(rng.gen());
            let mut buf = pt.clone();
            let (iv, tag) = encrypt(&key, &aad, &ctm, &mut buf, &mut s).unwrap();
            let rc = Aes256Gcm::new(key.expose().into());
            let mut full = Vec::new();
            gcm_aad(&aad, &ctm, &mut full).unwrap();
            let mut theirs = pt.clone();
            let t2 = rc
                .encrypt_in_place_detached((&iv).into(), &full, &mut theirs)
                .unwrap();
            assert_eq!(theirs, buf, "ciphertext differs (len {len})");
            assert_eq!(t2.as_slice(), &tag[..], "tag differs (len {len})");
            let mut back = buf.clone();
            decrypt(&key, &aad, &ctm, &iv, &tag, &mut back, &mut s).unwrap();
            assert_eq!(back, pt);
            let mut bad = tag;
            bad[rng.gen_range(0..16)] ^= 1 << rng.gen_range(0..8);
            let mut b = buf.clone();
            assert_eq!(
                decrypt(&key, &aad, &ctm, &iv, &bad, &mut b, &mut s),
                Err(CryptoError::Auth)
            );
            assert!(b.iter().all(|&x| x == 0));
        }
    }
}
