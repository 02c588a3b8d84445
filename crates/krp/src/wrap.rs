//! Both ends of the key wrap, in software: the agent's side of the in-HSM wrap (ECDH, the
//! T-binding derive step, RFC 3394 unwrap) and the HPKE fallback (RFC 9180 base mode,
//! DHKEM(P-384, HKDF-SHA384) / HKDF-SHA384 / AES-256-GCM), sealing on the KRS and opening on
//! the agent.

use aes::cipher::{BlockEncrypt, KeyInit};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha384;
use hpke::kem::DhP384HkdfSha384;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use sha2::{Digest, Sha256};

/// The 32 bytes the second derive step encrypts: `SHA-256("KRP/1 wrap" || T)`.
pub fn wrap_binding(transcript: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"KRP/1 wrap");
    h.update(transcript);
    h.finalize().into()
}

/// Errors unwrapping. Deliberately vague: no detail helps an attacker here.
#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    #[error("the KRS's ephemeral key is not a valid P-384 point")]
    BadPeerKey,
    #[error("unwrap failed (wrong key or tampered blob)")]
    Unwrap,
    #[error("HPKE: {0}")]
    Hpke(#[source] hpke::HpkeError),
}

/// The agent's ephemeral P-384 key. Zeroized on drop (p384::SecretKey zeroizes itself).
pub struct EphemeralKey {
    sk: p384::SecretKey,
}

impl EphemeralKey {
    /// A fresh key from the OS RNG.
    pub fn generate() -> Self {
        Self {
            sk: p384::SecretKey::random(&mut rand_core::OsRng),
        }
    }

    /// SEC1 uncompressed public key (97 bytes).
    pub fn public_sec1(&self) -> Vec<u8> {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        self.sk
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// ECDH x-coordinate with a SEC1 peer key (48 bytes).
    fn shared_x(&self, peer_sec1: &[u8]) -> Result<Zeroizing<[u8; 48]>, UnwrapError> {
        let peer =
            p384::PublicKey::from_sec1_bytes(peer_sec1).map_err(|_| UnwrapError::BadPeerKey)?;
        let shared = p384::ecdh::diffie_hellman(self.sk.to_nonzero_scalar(), peer.as_affine());
        let mut out = Zeroizing::new([0u8; 48]);
        out.copy_from_slice(shared.raw_secret_bytes());
        Ok(out)
    }

    /// Undo the in-HSM wrap: `K_ecdh` = last 32 bytes of the x-coordinate (CKD_NULL),
    /// `K_wrap = AES-256-CBC(K_ecdh, IV 0, SHA-256("KRP/1 wrap" || T))`, then RFC 3394 unwrap.
    pub fn unwrap_hsm(
        &self,
        hsm_epk: &[u8],
        transcript: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
        let x = self.shared_x(hsm_epk)?;
        let mut k_ecdh = Zeroizing::new([0u8; 32]);
        k_ecdh.copy_from_slice(x.last_chunk::<32>().ok_or(UnwrapError::Unwrap)?);
        let k_wrap = derive_wrap_key(&k_ecdh, transcript);
        if wrapped.len() != 40 {
            return Err(UnwrapError::Unwrap);
        }
        let kek = aes_kw::KekAes256::from(*k_wrap);
        let mut mk = Zeroizing::new([0u8; 32]);
        kek.unwrap(wrapped, &mut mk[..])
            .map_err(|_| UnwrapError::Unwrap)?;
        Ok(mk)
    }

    /// Open the HPKE fallback.
    pub fn open_hpke(
        &self,
        encapped: &[u8],
        ciphertext: &[u8],
        transcript: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
        let sk_bytes = Zeroizing::new(self.sk.to_bytes());
        let sk = <DhP384HkdfSha384 as KemTrait>::PrivateKey::from_bytes(&sk_bytes)
            .map_err(UnwrapError::Hpke)?;
        let enc = <DhP384HkdfSha384 as KemTrait>::EncappedKey::from_bytes(encapped)
            .map_err(|_| UnwrapError::BadPeerKey)?;
        let pt = Zeroizing::new(
            hpke::single_shot_open::<AesGcm256, HkdfSha384, DhP384HkdfSha384>(
                &OpModeR::Base,
                &sk,
                &enc,
                &hpke_info(transcript),
                ciphertext,
                aad,
            )
            .map_err(|_| UnwrapError::Unwrap)?,
        );
        let mut mk = Zeroizing::new([0u8; 32]);
        if pt.len() != 32 {
            return Err(UnwrapError::Unwrap);
        }
        mk.copy_from_slice(&pt);
        Ok(mk)
    }
}

/// `AES-256-CBC(k_ecdh, IV = 0, SHA-256("KRP/1 wrap" || T))`, the same computation as the
/// HSM's `CKM_AES_CBC_ENCRYPT_DATA` step. Hand-written with the `aes` block cipher because it is
/// two blocks and needs no padding or mode crate.
pub fn derive_wrap_key(k_ecdh: &[u8; 32], transcript: &[u8]) -> Zeroizing<[u8; 32]> {
    let bind = wrap_binding(transcript);
    let cipher = aes::Aes256::new(k_ecdh.into());
    let (lo, hi) = bind.split_at(16);
    let mut b1 = aes::Block::clone_from_slice(lo);
    cipher.encrypt_block(&mut b1);
    let mut b2 = aes::Block::clone_from_slice(hi);
    for (x, y) in b2.iter_mut().zip(b1.iter()) {
        *x ^= *y;
    }
    cipher.encrypt_block(&mut b2);
    let mut out = Zeroizing::new([0u8; 32]);
    let (o1, o2) = out.split_at_mut(16);
    o1.copy_from_slice(&b1);
    o2.copy_from_slice(&b2);
    out
}

/// HPKE `info`: `"KRP/1 release" || T`.
pub(crate) fn hpke_info(transcript: &[u8]) -> Vec<u8> {
    let mut v = b"KRP/1 release".to_vec();
    v.extend_from_slice(transcript);
    v
}

/// HPKE `aad`: `key_id || key_version (u32 BE) || policy_digest`.
pub fn hpke_aad(key_id: &str, key_version: u32, policy_digest: &[u8]) -> Vec<u8> {
    let mut v = key_id.as_bytes().to_vec();
    v.extend_from_slice(&key_version.to_be_bytes());
    v.extend_from_slice(policy_digest);
    v
}

/// KRS side of the fallback: seal `mk` to the agent's `epk`. Returns (encapsulated key,
/// ciphertext).
pub fn seal_hpke(
    epk_sec1: &[u8],
    mk: &[u8; 32],
    transcript: &[u8],
    aad: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), UnwrapError> {
    let pk = <DhP384HkdfSha384 as KemTrait>::PublicKey::from_bytes(epk_sec1)
        .map_err(|_| UnwrapError::BadPeerKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha384, DhP384HkdfSha384, _>(
        &OpModeS::Base,
        &pk,
        &hpke_info(transcript),
        mk,
        aad,
        &mut rand_core::OsRng,
    )
    .map_err(UnwrapError::Hpke)?;
    Ok((enc.to_bytes().to_vec(), ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpke_round_trip_and_binding() {
        let k = EphemeralKey::generate();
        let mk = [7u8; 32];
        let t = [1u8; 48];
        let aad = hpke_aad("mk", 1, &[2; 48]);
        let (enc, ct) = seal_hpke(&k.public_sec1(), &mk, &t, &aad).unwrap();
        assert_eq!(*k.open_hpke(&enc, &ct, &t, &aad).unwrap(), mk);
        assert!(k.open_hpke(&enc, &ct, &[0u8; 48], &aad).is_err());
        let other = EphemeralKey::generate();
        assert!(other.open_hpke(&enc, &ct, &t, &aad).is_err());
    }

    #[test]
    fn software_wrap_matches_unwrap() {
        // Simulate the HSM side in software: ECDH with an "HSM" key, same derivation, AES-KW.
        let agent = EphemeralKey::generate();
        let hsm = EphemeralKey::generate();
        let t = [3u8; 48];
        let x = hsm.shared_x(&agent.public_sec1()).unwrap();
        let mut k = [0u8; 32];
        k.copy_from_slice(&x[16..]);
        let kw = derive_wrap_key(&k, &t);
        let mut wrapped = [0u8; 40];
        aes_kw::KekAes256::from(*kw)
            .wrap(&[9u8; 32], &mut wrapped)
            .unwrap();
        assert_eq!(
            *agent.unwrap_hsm(&hsm.public_sec1(), &t, &wrapped).unwrap(),
            [9u8; 32]
        );
        assert!(agent
            .unwrap_hsm(&hsm.public_sec1(), &[4u8; 48], &wrapped)
            .is_err());
    }
}
