//! Wrapped key import, as AWS KMS's own `GetParametersForImport` / `ImportKeyMaterial` do it:
//! `keys import-params` makes an RSA wrapping key pair in the appliance and hands out its public
//! key with an import token; the operator wraps the 32 key bytes to that public key on a machine
//! of their choosing (openssl); `keys import --wrapped` sends the wrapped bytes with the token and
//! the appliance unwraps them. The key material is never in clear on the wire or on the machine
//! that runs the admin CLI.
//!
//! Wrapping algorithms (KMS's names and layouts):
//! - `RSAES_OAEP_SHA_256`: RSA-OAEP with SHA-256 and MGF1-SHA-256, no label, of the key bytes.
//! - `RSA_AES_KEY_WRAP_SHA_256`: RSA-OAEP-SHA-256 of an ephemeral AES-256 key, followed by
//!   AES key wrap with padding (RFC 5649) of the key bytes under it: `rsa(aes) ‖ kwp(key)`.
//!
//! The crypto is the `rsa` crate (OAEP, decryption blinded) and the `aes-kw` crate (KWP); none
//! of it is written here. Each wrapping private key is a record of the key store
//! ([`keyward_keystore::ImportKeyMaterial`]): its PKCS#8 DER sealed under the master key like
//! every secret there, with the SHA-256 of its token (never the token), the algorithm, the key
//! spec and the expiry (trusted time; 24 hours, as KMS, or less). So on a fleet a token issued
//! by one member works on every member, and it survives a restart. A token is consumed by the
//! first import that names it, whether the unwrap succeeds or not (a "used" record appended
//! with a compare-and-set: of two members racing on one token exactly one gets the key), so a
//! wrapping key decrypts at most one ciphertext: it cannot be used as a padding oracle. Used
//! and expired keys leave every member's memory, and the file store's log at its next
//! compaction (a shared database keeps its whole history, sealed).

use std::time::Duration;

use keyward_keystore::{ImportKeyMaterial, KeystoreError, Registry};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How the key material is wrapped (KMS `WrappingAlgorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WrappingAlgorithm {
    /// RSA-OAEP, SHA-256 and MGF1-SHA-256, of the 32 key bytes.
    #[serde(rename = "RSAES_OAEP_SHA_256")]
    #[default]
    RsaesOaepSha256,
    /// RSA-OAEP-SHA-256 of an ephemeral AES-256 key ‖ AES-KWP (RFC 5649) of the key bytes.
    #[serde(rename = "RSA_AES_KEY_WRAP_SHA_256")]
    RsaAesKeyWrapSha256,
}

impl WrappingAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "RSAES_OAEP_SHA_256" => Ok(WrappingAlgorithm::RsaesOaepSha256),
            "RSA_AES_KEY_WRAP_SHA_256" => Ok(WrappingAlgorithm::RsaAesKeyWrapSha256),
            other => Err(format!(
                "wrapping_algorithm: unknown `{other}`: use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256"
            )),
        }
    }
}

impl std::fmt::Display for WrappingAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wrapping key's size (KMS `WrappingKeySpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WrappingKeySpec {
    #[serde(rename = "RSA_3072")]
    #[default]
    Rsa3072,
    #[serde(rename = "RSA_4096")]
    Rsa4096,
}

impl WrappingKeySpec {
    pub fn bits(self) -> usize {
        match self {
            WrappingKeySpec::Rsa3072 => 3072,
            WrappingKeySpec::Rsa4096 => 4096,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WrappingKeySpec::Rsa3072 => "RSA_3072",
            WrappingKeySpec::Rsa4096 => "RSA_4096",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "RSA_3072" => Ok(WrappingKeySpec::Rsa3072),
            "RSA_4096" => Ok(WrappingKeySpec::Rsa4096),
            other => Err(format!(
                "wrapping_key_spec: unknown `{other}`: use RSA_3072 or RSA_4096"
            )),
        }
    }
}

/// How long import parameters stay valid (KMS: 24 hours), and the longest an operator may ask.
pub(crate) const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Outstanding tokens kept at once by a store (a fleet shares them; each is an RSA private key).
pub(crate) const MAX_OUTSTANDING: usize = 32;
/// The longest `encrypted_key_material` accepted (RSA-4096 plus a KWP of 32 bytes is 552).
pub(crate) const MAX_WRAPPED: usize = 1024;
/// Imported key material is exactly this long.
pub(crate) const KEY_LEN: usize = 32;

/// The answer to `keys import-params` (KMS `GetParametersForImport`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImportParams {
    /// Hand this back with the wrapped key material; it names the wrapping key.
    pub import_token: String,
    pub wrapping_algorithm: WrappingAlgorithm,
    pub wrapping_key_spec: WrappingKeySpec,
    /// The wrapping public key, DER SubjectPublicKeyInfo, standard Base64.
    pub public_key_der_b64: String,
    /// The same, PEM (`openssl pkeyutl -pubin -inkey`).
    pub public_key_pem: String,
    /// Unix seconds after which the token is refused.
    pub valid_to: u64,
    /// The same, RFC 3339.
    pub parameters_valid_to: String,
}

/// Why an import with a token was refused. Each message names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("import_token: no such token (never issued, already used, or expired and dropped): get new parameters with `keys import-params`")]
    UnknownToken,
    /// The token's time is up (the field is when, RFC 3339; no cause).
    #[error("import_token: expired at {0}: get new parameters with `keys import-params`")]
    Expired(String),
    #[error("wrapping_algorithm: the token was issued for {issued}, not {asked}")]
    WrongAlgorithm {
        issued: WrappingAlgorithm,
        asked: WrappingAlgorithm,
    },
    /// The wrapped key is refused for a reason the message gives (its size, a failed unwrap:
    /// the RSA error is left out on purpose, it would be an oracle); no cause.
    #[error("encrypted_key_material: {0}")]
    Material(String),
    /// The asked validity is out of range (the message says how); no cause.
    #[error("valid_for_secs: {0}")]
    Validity(String),
    #[error("import-params: {MAX_OUTSTANDING} tokens are outstanding in this key store; use or let some expire first")]
    TooMany,
    /// RSA key generation failed.
    #[error("import-params: generating the wrapping key failed")]
    KeyGen(#[source] rsa::Error),
    /// The new wrapping key could not be encoded as PKCS#8.
    #[error("import-params: encoding the wrapping key failed")]
    KeyEncode(#[source] rsa::pkcs8::Error),
    /// Its public key could not be encoded as a SubjectPublicKeyInfo.
    #[error("import-params: encoding the wrapping public key failed")]
    PublicKeyEncode(#[source] rsa::pkcs8::spki::Error),
    /// No random token id.
    #[error("import-params: drawing the import token failed")]
    TokenId(#[source] keyward_secret::SecretError),
    /// The stored token names an algorithm this build does not know (the message says which).
    #[error("import_token: the stored wrapping key does not decode: {0}")]
    StoredKey(String),
    /// The stored wrapping key is not PKCS#8 DER.
    #[error("import_token: the stored wrapping key does not decode")]
    StoredKeyDer(#[source] rsa::pkcs8::Error),
    #[error(transparent)]
    Store(#[from] KeystoreError),
}

/// How many times a use of a token that lost a race in a shared store is tried again (the
/// retry sees the winner's write: another use of the same token, then the token is gone).
const RACE_RETRIES: usize = 4;

/// Wrapped import over the key store: issues tokens and uses them, once.
#[derive(Default)]
pub(crate) struct Importer;

fn rfc3339(secs: u64) -> String {
    keyward_keystore::unix_rfc3339(secs)
}

/// SHA-256 (hex) of a token: what the key store keeps instead of the token.
pub(crate) fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

/// Whether the stored key `k` may be used for `algorithm` at `now`.
fn usable(
    k: Option<&ImportKeyMaterial>,
    algorithm: WrappingAlgorithm,
    now: u64,
) -> Result<(), ImportError> {
    let k = k.ok_or(ImportError::UnknownToken)?;
    if k.valid_to <= now {
        return Err(ImportError::Expired(rfc3339(k.valid_to)));
    }
    let issued = WrappingAlgorithm::parse(&k.algorithm).map_err(ImportError::StoredKey)?;
    if issued != algorithm {
        return Err(ImportError::WrongAlgorithm {
            issued,
            asked: algorithm,
        });
    }
    Ok(())
}

impl Importer {
    /// Make a wrapping key pair and a token for it, valid for `valid_for` (default and at most
    /// 24 hours) from `now` (trusted time), and store the private key sealed in `registry`.
    pub(crate) fn issue(
        &self,
        registry: &Registry,
        now: u64,
        algorithm: WrappingAlgorithm,
        spec: WrappingKeySpec,
        valid_for: Option<Duration>,
    ) -> Result<ImportParams, ImportError> {
        let valid_for = valid_for.unwrap_or(MAX_VALIDITY);
        if valid_for.is_zero() || valid_for > MAX_VALIDITY {
            return Err(ImportError::Validity(format!(
                "{} s is outside 1 s to 24 h",
                valid_for.as_secs()
            )));
        }
        if registry.import_keys_outstanding(now)? >= MAX_OUTSTANDING {
            return Err(ImportError::TooMany);
        }
        // Key generation takes a second or more: outside the store's writer lock.
        let key =
            RsaPrivateKey::new(&mut rand_core::OsRng, spec.bits()).map_err(ImportError::KeyGen)?;
        let pkcs8 = key.to_pkcs8_der().map_err(ImportError::KeyEncode)?;
        let public = key.to_public_key();
        let der = public
            .to_public_key_der()
            .map_err(ImportError::PublicKeyEncode)?;
        let pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(ImportError::PublicKeyEncode)?;
        let mut id = [0u8; 16];
        keyward_secret::getrandom_fill(&mut id).map_err(ImportError::TokenId)?;
        let import_token = hex::encode(id);
        let valid_to = now + valid_for.as_secs();
        let stored = ImportKeyMaterial {
            token_sha256: token_sha256(&import_token),
            algorithm: algorithm.as_str().to_string(),
            key_spec: spec.as_str().to_string(),
            created: now,
            valid_to,
            pkcs8_der: zeroize::Zeroizing::new(pkcs8.as_bytes().to_vec()),
        };
        drop(pkcs8);
        let mut tries = 1;
        loop {
            match registry.add_import_key(stored.clone(), MAX_OUTSTANDING, now) {
                Ok(true) => break,
                Ok(false) => return Err(ImportError::TooMany),
                Err(KeystoreError::Conflict { .. }) if tries < RACE_RETRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
        use base64::Engine;
        Ok(ImportParams {
            import_token,
            wrapping_algorithm: algorithm,
            wrapping_key_spec: spec,
            public_key_der_b64: base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
            public_key_pem: pem,
            valid_to,
            parameters_valid_to: rfc3339(valid_to),
        })
    }

    /// Use `token` (it is gone afterwards, on every member, whatever the outcome of the
    /// unwrap; a wrong algorithm or an expired token is refused without using it) to unwrap
    /// `wrapped`: the 32 key bytes.
    pub(crate) fn unwrap(
        &self,
        registry: &Registry,
        now: u64,
        token: &str,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, ImportError> {
        let sha = token_sha256(token);
        let mut tries = 1;
        let stored = loop {
            match registry.use_import_key(&sha, now, |k| usable(k, algorithm, now)) {
                Err(ImportError::Store(KeystoreError::Conflict { .. })) if tries < RACE_RETRIES => {
                    tries += 1;
                }
                r => break r?,
            }
        };
        let key =
            RsaPrivateKey::from_pkcs8_der(&stored.pkcs8_der).map_err(ImportError::StoredKeyDer)?;
        drop(stored);
        unwrap_with(&key, algorithm, wrapped)
    }

    /// Tokens outstanding at `now`.
    #[cfg(test)]
    pub(crate) fn outstanding(&self, registry: &Registry, now: u64) -> Result<usize, ImportError> {
        Ok(registry.import_keys_outstanding(now)?)
    }
}

/// Unwrap `wrapped` with `key` as `algorithm` lays it out; the result must be 32 bytes.
fn unwrap_with(
    key: &RsaPrivateKey,
    algorithm: WrappingAlgorithm,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, ImportError> {
    use rsa::traits::PublicKeyParts;
    let m = key.size();
    let bad = |why: String| ImportError::Material(why);
    if wrapped.len() > MAX_WRAPPED {
        return Err(bad(format!(
            "{} bytes is longer than any wrapped key",
            wrapped.len()
        )));
    }
    let oaep =
        |ct: &[u8]| -> Result<Zeroizing<Vec<u8>>, ImportError> {
            key.decrypt_blinded(&mut rand_core::OsRng, Oaep::new::<sha2::Sha256>(), ct)
            .map(Zeroizing::new)
            .map_err(|_| {
                bad("RSA-OAEP-SHA-256 decryption failed: not wrapped to this token's public key \
                     with OAEP, SHA-256 and MGF1-SHA-256"
                    .into())
            })
        };
    let material = match algorithm {
        WrappingAlgorithm::RsaesOaepSha256 => {
            if wrapped.len() != m {
                return Err(bad(format!(
                    "{} bytes; RSAES_OAEP_SHA_256 with this {}-bit key is exactly {m}",
                    wrapped.len(),
                    m * 8
                )));
            }
            oaep(wrapped)?
        }
        WrappingAlgorithm::RsaAesKeyWrapSha256 => {
            if wrapped.len() < m + 16 {
                return Err(bad(format!(
                    "{} bytes; RSA_AES_KEY_WRAP_SHA_256 is the {m}-byte RSA-OAEP block followed by \
                     the AES-KWP of the key ({} bytes for a 32-byte key)",
                    wrapped.len(),
                    m + 40
                )));
            }
            let (head, kwp) = wrapped.split_at(m);
            let aes = oaep(head)?;
            let aes: [u8; 32] = aes[..].try_into().map_err(|_| {
                bad(format!(
                    "the RSA-OAEP block holds {} bytes; the ephemeral AES key is 32",
                    aes.len()
                ))
            })?;
            let aes = Zeroizing::new(aes);
            let kek = aes_kw::KekAes256::from(*aes);
            let mut out = Zeroizing::new(vec![0u8; kwp.len().saturating_sub(8)]);
            let n = kek
                .unwrap_with_padding(kwp, &mut out)
                .map_err(|e| match e {
                    aes_kw::Error::IntegrityCheckFailed => bad(
                        "AES-KWP (RFC 5649) unwrap failed: the integrity check did not pass \
                         (wrong ephemeral key or altered bytes)"
                            .into(),
                    ),
                    _ => bad(format!(
                        "the AES-KWP part is {} bytes: not a whole number of 8-byte blocks",
                        kwp.len()
                    )),
                })?
                .len();
            out.truncate(n);
            out
        }
    };
    if material.len() != KEY_LEN {
        return Err(bad(format!(
            "the unwrapped key is {} bytes; an imported key is exactly {KEY_LEN}",
            material.len()
        )));
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    k.copy_from_slice(&material);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPublicKey;

    /// Trusted time in these tests.
    const NOW: u64 = 1_000_000;

    fn registry(dir: &std::path::Path) -> Registry {
        Registry::open_dir(dir, keyward_secret::Key32::from_bytes(&[0x44; 32]).unwrap()).unwrap()
    }

    fn public_of(p: &ImportParams) -> RsaPublicKey {
        use base64::Engine;
        use rsa::pkcs8::DecodePublicKey;
        let der = base64::engine::general_purpose::STANDARD
            .decode(&p.public_key_der_b64)
            .unwrap();
        let k = RsaPublicKey::from_public_key_der(&der).unwrap();
        assert_eq!(
            k,
            RsaPublicKey::from_public_key_pem(&p.public_key_pem).unwrap()
        );
        k
    }

    fn oaep_wrap(k: &RsaPublicKey, data: &[u8]) -> Vec<u8> {
        k.encrypt(&mut rand_core::OsRng, Oaep::new::<sha2::Sha256>(), data)
            .unwrap()
    }

    #[test]
    fn oaep_and_kwp_round_trip_and_tokens_are_single_use() {
        let imp = Importer;
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let key = [7u8; 32];

        let p = imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaesOaepSha256,
                WrappingKeySpec::Rsa3072,
                None,
            )
            .unwrap();
        assert!(p.valid_to >= NOW + MAX_VALIDITY.as_secs() - 5);
        let pk = public_of(&p);
        let w = oaep_wrap(&pk, &key);
        // The other algorithm is refused and does not use the token up.
        assert!(matches!(
            imp.unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaAesKeyWrapSha256,
                &w
            ),
            Err(ImportError::WrongAlgorithm { .. })
        ));
        let got = imp
            .unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaesOaepSha256,
                &w,
            )
            .unwrap();
        assert_eq!(*got, key);
        assert!(matches!(
            imp.unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaesOaepSha256,
                &w
            ),
            Err(ImportError::UnknownToken)
        ));
        // The key was in the store, sealed, and is gone from it after its use.
        assert_eq!(imp.outstanding(&r, NOW).unwrap(), 0);

        let p = imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaAesKeyWrapSha256,
                WrappingKeySpec::Rsa3072,
                None,
            )
            .unwrap();
        let pk = public_of(&p);
        let aes = [9u8; 32];
        let mut w = oaep_wrap(&pk, &aes);
        let mut kwp = [0u8; 40];
        aes_kw::KekAes256::from(aes)
            .wrap_with_padding(&key, &mut kwp)
            .unwrap();
        w.extend_from_slice(&kwp);
        assert_eq!(w.len(), 384 + 40);
        let got = imp
            .unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaAesKeyWrapSha256,
                &w,
            )
            .unwrap();
        assert_eq!(*got, key);
    }

    #[test]
    fn garbage_wrong_length_and_expired_are_refused_and_use_the_token() {
        let imp = Importer;
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let p = imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaesOaepSha256,
                WrappingKeySpec::Rsa3072,
                None,
            )
            .unwrap();
        let pk = public_of(&p);
        // 31 bytes wrapped correctly: the length is checked after the unwrap.
        let w = oaep_wrap(&pk, &[1u8; 31]);
        let e = imp
            .unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaesOaepSha256,
                &w,
            )
            .unwrap_err();
        assert!(e.to_string().contains("31 bytes"), "{e}");
        assert_eq!(
            imp.outstanding(&r, NOW).unwrap(),
            0,
            "a failed unwrap uses the token"
        );

        let p = imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaesOaepSha256,
                WrappingKeySpec::Rsa3072,
                None,
            )
            .unwrap();
        let e = imp
            .unwrap(
                &r,
                NOW,
                &p.import_token,
                WrappingAlgorithm::RsaesOaepSha256,
                &[0u8; 384],
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("encrypted_key_material: RSA-OAEP"),
            "{e}"
        );
        let e = imp
            .unwrap(
                &r,
                NOW,
                "nope",
                WrappingAlgorithm::RsaesOaepSha256,
                &[0u8; 384],
            )
            .unwrap_err();
        assert!(matches!(e, ImportError::UnknownToken), "{e}");

        let p = imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaesOaepSha256,
                WrappingKeySpec::Rsa3072,
                Some(Duration::from_secs(1)),
            )
            .unwrap();
        let w = oaep_wrap(&public_of(&p), &[1u8; 32]);
        // Trusted time moves past the expiry (the host's clock plays no part).
        let e = imp
            .unwrap(
                &r,
                NOW + 1,
                &p.import_token,
                WrappingAlgorithm::RsaesOaepSha256,
                &w,
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("import_token: expired at"), "{e}");
        assert!(imp
            .issue(
                &r,
                NOW,
                WrappingAlgorithm::RsaesOaepSha256,
                WrappingKeySpec::Rsa3072,
                Some(MAX_VALIDITY + Duration::from_secs(1))
            )
            .is_err());
    }
}
