//! The transcript hash T (docs/key-release.md section 8.2 step 3.2) and the values derived from it
//! that each kind of evidence must carry.
//!
//! `T = SHA-384("KRP/1 transcript" || cbor{v, platform, product_release, pins_digest, session_id,
//! nonce, krs_id, policy_id, policy_digest, epk[, boot_key]})`, cbor deterministic (`boot_key`, the
//! agent's per-boot signing key, only when it sent one).

use serde::Serialize;
use sha2::{Digest, Sha384, Sha512};

use crate::cbor::{to_canonical, CborError};
use crate::messages::{Challenge, Hello, Pins};
use keyward_evidence::Binding;

/// SHA-384 of the deterministic CBOR of the pins.
pub fn pins_digest(pins: &Pins) -> Result<[u8; 48], CborError> {
    Ok(Sha384::digest(to_canonical(pins)?).into())
}

#[derive(Serialize)]
struct TranscriptBody<'a> {
    v: u32,
    platform: &'a str,
    product_release: &'a str,
    #[serde(with = "serde_bytes")]
    pins_digest: &'a [u8],
    #[serde(with = "serde_bytes")]
    session_id: &'a [u8],
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
    #[serde(with = "serde_bytes")]
    krs_id: &'a [u8],
    policy_id: &'a str,
    #[serde(with = "serde_bytes")]
    policy_digest: &'a [u8],
    #[serde(with = "serde_bytes")]
    epk: &'a [u8],
    /// The per-boot signing key (absent from the CBOR when empty, so T without one is T as
    /// before).
    #[serde(with = "serde_bytes", skip_serializing_if = "is_empty")]
    boot_key: &'a [u8],
}

fn is_empty(b: &&[u8]) -> bool {
    b.is_empty()
}

/// Compute T from the Hello, the Challenge and the agent's ephemeral public key.
pub fn transcript(hello: &Hello, ch: &Challenge, epk: &[u8]) -> Result<[u8; 48], CborError> {
    transcript_with(hello, ch, epk, &[])
}

/// T with the agent's per-boot signing key (SEC1) in it, so the evidence binds that key.
pub fn transcript_with(
    hello: &Hello,
    ch: &Challenge,
    epk: &[u8],
    boot_key: &[u8],
) -> Result<[u8; 48], CborError> {
    let pd = pins_digest(&hello.pins)?;
    let body = TranscriptBody {
        v: hello.v,
        platform: &hello.platform,
        product_release: &hello.product_release,
        pins_digest: &pd,
        session_id: &ch.session_id,
        nonce: &ch.nonce,
        krs_id: &ch.krs_id,
        policy_id: &ch.policy_id,
        policy_digest: &ch.policy_digest,
        epk,
        boot_key,
    };
    let mut h = Sha384::new();
    h.update(b"KRP/1 transcript");
    h.update(to_canonical(&body)?);
    Ok(h.finalize().into())
}

/// SNP REPORT_DATA for T: `SHA-512("KRP/1 snp" || T)`.
pub fn snp_report_data(t: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"KRP/1 snp");
    h.update(t);
    h.finalize().into()
}

/// What every attester binds to: SNP REPORT_DATA, TPM qualifying data / NitroTPM user_data = T,
/// NitroTPM nonce = the challenge nonce, NitroTPM public_key = DER SPKI of epk.
pub fn binding(t: &[u8], nonce: &[u8], epk_spki_der: &[u8]) -> Binding {
    Binding {
        report_data: snp_report_data(t),
        user_data: t.to_vec(),
        nonce: Some(nonce.to_vec()),
        public_key: Some(epk_spki_der.to_vec()),
    }
}

/// DER SubjectPublicKeyInfo of a P-384 SEC1 point, or None if it is not a valid point.
pub fn p384_spki_der(sec1: &[u8]) -> Option<Vec<u8>> {
    use p384::pkcs8::EncodePublicKey;
    let pk = p384::PublicKey::from_sec1_bytes(sec1).ok()?;
    pk.to_public_key_der().ok().map(|d| d.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Hello, Challenge) {
        let pins = Pins {
            krs_url: "krs.example:7443".into(),
            krs_tls_spki_sha256: vec![1; 32],
            receipt_spki_sha256: vec![2; 32],
            admin_ca_sha256: vec![3; 32],
        };
        let hello = Hello {
            v: 1,
            platform: "snp".into(),
            product_release: "img-1".into(),
            algs: vec![],
            pins,
            key_versions: None,
        };
        let ch = Challenge {
            v: 1,
            session_id: vec![4; 16],
            nonce: vec![5; 32],
            krs_id: vec![6; 32],
            policy_id: "p@v1".into(),
            policy_digest: vec![7; 48],
            expires: 0,
            receipt_spki: vec![],
        };
        (hello, ch)
    }

    #[test]
    fn every_field_changes_t() {
        let (h, c) = sample();
        let t0 = transcript(&h, &c, &[9; 97]).unwrap();
        assert_eq!(t0, transcript(&h, &c, &[9; 97]).unwrap());
        assert_ne!(t0, transcript(&h, &c, &[8; 97]).unwrap());
        let mut c2 = c.clone();
        c2.nonce[0] ^= 1;
        assert_ne!(t0, transcript(&h, &c2, &[9; 97]).unwrap());
        let mut c3 = c.clone();
        c3.policy_digest[0] ^= 1;
        assert_ne!(t0, transcript(&h, &c3, &[9; 97]).unwrap());
        let mut h2 = h.clone();
        h2.pins.receipt_spki_sha256[0] ^= 1;
        assert_ne!(t0, transcript(&h2, &c, &[9; 97]).unwrap());
        // expires and receipt_spki are not part of T.
        let mut c4 = c.clone();
        c4.expires = 99;
        assert_eq!(t0, transcript(&h, &c4, &[9; 97]).unwrap());
        // The boot key is in T when given; without one T is unchanged.
        assert_eq!(t0, transcript_with(&h, &c, &[9; 97], &[]).unwrap());
        let tb = transcript_with(&h, &c, &[9; 97], &[4; 97]).unwrap();
        assert_ne!(t0, tb);
        assert_ne!(tb, transcript_with(&h, &c, &[9; 97], &[5; 97]).unwrap());
    }
}
