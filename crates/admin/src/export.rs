//! `keys export` for backup to an escrow key: every KEK version of one key wrapped to an
//! operator's RSA public key (3072 or 4096 bits) in the layouts `keys import --wrapped` accepts
//! ([`super::import`]): `RSAES_OAEP_SHA_256` (RSA-OAEP, SHA-256, MGF1-SHA-256, no label, of the
//! 32 bytes) or `RSA_AES_KEY_WRAP_SHA_256` (RSA-OAEP-SHA-256 of a fresh AES-256 key ‖ AES-KWP,
//! RFC 5649, of the 32 bytes). The crypto is the `rsa` and `aes-kw` crates; none is written here.

use base64::Engine;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPublicKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::import::WrappingAlgorithm;

/// Why an export was refused before any key was wrapped. Each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The escrow key is refused for a reason the message gives (not Base64, wrong size).
    #[error("wrapping_public_key: {0}")]
    PublicKey(String),
    /// The escrow key is not a DER SubjectPublicKeyInfo of an RSA key.
    #[error("wrapping_public_key: not an RSA SubjectPublicKeyInfo")]
    PublicKeyDer(#[source] rsa::pkcs8::spki::Error),
    /// RSA-OAEP encryption to the escrow key failed.
    #[error("wrapping: RSA-OAEP-SHA-256 failed")]
    Oaep(#[source] rsa::Error),
    /// No random AES key for `RSA_AES_KEY_WRAP_SHA_256`.
    #[error("wrapping: random AES key")]
    Random(#[source] keyward_secret::SecretError),
    /// AES-KWP of the key failed.
    #[error("wrapping: AES-KWP failed")]
    Kwp(#[source] aes_kw::Error),
}

/// One version in the export file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExportedVersion {
    pub version: u32,
    /// Standard Base64 of the wrapped 32 bytes.
    pub wrapped: String,
}

/// The export file (`keys export --out FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExportFile {
    pub key_id: String,
    pub store: String,
    pub wrapping_algorithm: WrappingAlgorithm,
    /// SHA-256 (hex) of the escrow key's DER SubjectPublicKeyInfo.
    pub escrow_spki_sha256: String,
    /// Every version, oldest first.
    pub versions: Vec<ExportedVersion>,
}

/// The escrow key from its DER SPKI (standard Base64), and the SPKI's SHA-256 (hex). Only RSA
/// of 3072 or 4096 bits.
pub(crate) fn escrow_key(der_b64: &str) -> Result<(RsaPublicKey, String), ExportError> {
    use sha2::Digest;
    let der = base64::engine::general_purpose::STANDARD
        .decode(der_b64.trim())
        .map_err(|_| ExportError::PublicKey("not standard Base64".into()))?;
    let key = RsaPublicKey::from_public_key_der(&der).map_err(ExportError::PublicKeyDer)?;
    let bits = key.size() * 8;
    if bits != 3072 && bits != 4096 {
        return Err(ExportError::PublicKey(format!(
            "RSA {bits} bits; an escrow key is RSA 3072 or 4096 bits"
        )));
    }
    Ok((key, hex::encode(sha2::Sha256::digest(&der))))
}

/// `kek` wrapped to `key` as `algorithm` lays it out.
pub(crate) fn wrap(
    key: &RsaPublicKey,
    algorithm: WrappingAlgorithm,
    kek: &[u8; 32],
) -> Result<Vec<u8>, ExportError> {
    let oaep = |data: &[u8]| {
        key.encrypt(&mut rand_core::OsRng, Oaep::new::<sha2::Sha256>(), data)
            .map_err(ExportError::Oaep)
    };
    match algorithm {
        WrappingAlgorithm::RsaesOaepSha256 => oaep(kek),
        WrappingAlgorithm::RsaAesKeyWrapSha256 => {
            let mut aes = Zeroizing::new([0u8; 32]);
            keyward_secret::getrandom_fill(&mut aes[..]).map_err(ExportError::Random)?;
            let mut out = oaep(&aes[..])?;
            let mut kwp = [0u8; 40];
            aes_kw::KekAes256::from(*aes)
                .wrap_with_padding(kek, &mut kwp)
                .map_err(ExportError::Kwp)?;
            out.extend_from_slice(&kwp);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_escrow_key_that_is_not_an_spki_keeps_the_der_error() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([0x30, 0x03, 0x02, 0x01, 0x01]);
        let e = escrow_key(&b64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrapping_public_key: not an RSA SubjectPublicKeyInfo"
        );
        let src = e
            .source()
            .and_then(|s| s.downcast_ref::<rsa::pkcs8::spki::Error>());
        assert!(src.is_some(), "{e:?}");
    }
}
