//! Store heads over KRP/1: the per-boot key that authenticates head updates, and the
//! domain-separated digests it signs.
//!
//! The agent makes a fresh P-384 key per boot and sends its public half in Evidence, so it is
//! part of T and the attested evidence binds it to this boot of the measured image. On release
//! the KRS registers it for the deployment whose pins the Hello matched. From then on only a
//! message signed by a registered key can move (or read) that deployment's head: the host,
//! which cannot read the appliance's memory, cannot forge, rewind or flood heads.

use p384::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384};

use crate::cbor::{to_canonical, CborError};
use crate::messages::{HeadQuery, HeadUpdate, StoreHead};

/// Length of a store id and of a chain MAC in a [`StoreHead`].
pub(crate) const STORE_ID_LEN: usize = 16;
pub(crate) const CHAIN_MAC_LEN: usize = 32;

#[derive(Serialize)]
struct UpdateBody<'a> {
    v: u32,
    #[serde(with = "serde_bytes")]
    boot_key_id: &'a [u8],
    prev: Option<&'a StoreHead>,
    next: &'a StoreHead,
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
}

#[derive(Serialize)]
struct QueryBody<'a> {
    v: u32,
    #[serde(with = "serde_bytes")]
    boot_key_id: &'a [u8],
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
}

fn digest(domain: &[u8], body: &impl Serialize) -> Result<[u8; 48], CborError> {
    let mut h = Sha384::new();
    h.update(domain);
    h.update(to_canonical(body)?);
    Ok(h.finalize().into())
}

/// What the boot key signs for a [`HeadUpdate`]: `SHA-384("KRP/1 head update" || cbor{v,
/// boot_key_id, prev, next, nonce})`.
pub fn update_digest(u: &HeadUpdate) -> Result<[u8; 48], CborError> {
    digest(
        b"KRP/1 head update",
        &UpdateBody {
            v: u.v,
            boot_key_id: &u.boot_key_id,
            prev: u.prev.as_ref(),
            next: &u.next,
            nonce: &u.nonce,
        },
    )
}

/// What the boot key signs for a [`HeadQuery`]: `SHA-384("KRP/1 head query" || cbor{v,
/// boot_key_id, nonce})`.
pub fn query_digest(q: &HeadQuery) -> Result<[u8; 48], CborError> {
    digest(
        b"KRP/1 head query",
        &QueryBody {
            v: q.v,
            boot_key_id: &q.boot_key_id,
            nonce: &q.nonce,
        },
    )
}

/// The id of a boot key: SHA-256 of its SEC1 encoding.
pub fn boot_key_id(sec1: &[u8]) -> [u8; 32] {
    Sha256::digest(sec1).into()
}

/// Whether `h` has the sizes a store head must have.
pub fn well_formed(h: &StoreHead) -> bool {
    h.store_id.len() == STORE_ID_LEN && h.chain_mac.len() == CHAIN_MAC_LEN
}

/// Verify a boot-key signature (`r || s`, 96 bytes) over `digest` with the SEC1 key `sec1`.
pub fn verify(sec1: &[u8], digest: &[u8; 48], sig: &[u8]) -> bool {
    let Ok(vk) = VerifyingKey::from_sec1_bytes(sec1) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    vk.verify_prehash(digest, &sig).is_ok()
}

/// The appliance's per-boot signing key. It lives for the process, on the heap (boxed once,
/// never moved), and `SigningKey` wipes its scalar on drop; it is never written anywhere.
pub struct BootKey {
    sk: Box<SigningKey>,
    public: Vec<u8>,
    id: [u8; 32],
}

impl std::fmt::Debug for BootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootKey({})", hex::encode(&self.id[..8]))
    }
}

impl BootKey {
    /// A fresh key from the OS generator.
    pub fn generate() -> Self {
        let sk = Box::new(SigningKey::random(&mut rand_core::OsRng));
        let public = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let id = boot_key_id(&public);
        Self { sk, public, id }
    }

    /// SEC1 uncompressed public key (what Evidence carries).
    pub fn public_sec1(&self) -> &[u8] {
        &self.public
    }

    /// SHA-256 of the public key.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Sign a 48-byte digest (`r || s`).
    pub fn sign(&self, digest: &[u8; 48]) -> Result<Vec<u8>, String> {
        let sig: Signature = self.sk.sign_prehash(digest).map_err(|e| e.to_string())?;
        Ok(sig.to_bytes().to_vec())
    }

    /// A signed [`HeadUpdate`] with a fresh nonce.
    pub fn head_update(
        &self,
        prev: Option<&StoreHead>,
        next: &StoreHead,
    ) -> Result<HeadUpdate, String> {
        let mut u = HeadUpdate {
            v: crate::messages::VERSION,
            boot_key_id: self.id.to_vec(),
            prev: prev.cloned(),
            next: next.clone(),
            nonce: fresh_nonce().to_vec(),
            signature: vec![],
        };
        u.signature = self.sign(&update_digest(&u).map_err(|e| e.to_string())?)?;
        Ok(u)
    }

    /// A signed [`HeadQuery`] with a fresh nonce.
    pub fn head_query(&self) -> Result<HeadQuery, String> {
        let mut q = HeadQuery {
            v: crate::messages::VERSION,
            boot_key_id: self.id.to_vec(),
            nonce: fresh_nonce().to_vec(),
            signature: vec![],
        };
        q.signature = self.sign(&query_digest(&q).map_err(|e| e.to_string())?)?;
        Ok(q)
    }
}

fn fresh_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> StoreHead {
        StoreHead {
            store_id: vec![1; 16],
            seq,
            chain_mac: vec![2; 32],
            mk_version: 1,
        }
    }

    #[test]
    fn signatures_cover_every_field_and_are_domain_separated() {
        let k = BootKey::generate();
        let u = k.head_update(Some(&head(1)), &head(2)).unwrap();
        assert!(verify(
            k.public_sec1(),
            &update_digest(&u).unwrap(),
            &u.signature
        ));
        let mut moved = u.clone();
        moved.next.seq = 3;
        assert!(!verify(
            k.public_sec1(),
            &update_digest(&moved).unwrap(),
            &u.signature
        ));
        let mut no_prev = u.clone();
        no_prev.prev = None;
        assert!(!verify(
            k.public_sec1(),
            &update_digest(&no_prev).unwrap(),
            &u.signature
        ));
        let q = k.head_query().unwrap();
        assert!(verify(
            k.public_sec1(),
            &query_digest(&q).unwrap(),
            &q.signature
        ));
        assert_ne!(update_digest(&u).unwrap(), query_digest(&q).unwrap());
        let other = BootKey::generate();
        assert!(!verify(
            other.public_sec1(),
            &update_digest(&u).unwrap(),
            &u.signature
        ));
        assert_eq!(k.id(), boot_key_id(k.public_sec1()));
    }
}
