//! Signed, versioned verifier policies (docs/key-release.md section 8.3 step 5).
//!
//! The customer's policy admin signs the verifier policy text with an offline P-384 key; the
//! KRS holds only the public key. A signed policy file is JSON:
//! `{"format": "keyward-signed-policy/1", "policy_id", "version", "policy": base64,
//! "signature": base64 r||s}`. The signature is ECDSA P-384 over
//! `SHA-384("KRP/1 policy" || cbor{policy_id, version, policy})`. The policy digest that goes
//! into T is `SHA-384(cbor{policy_id, version, policy, signature})`.
//! Versions only move forward: the KRS persists the highest version it accepted (and the
//! content digest of the policy accepted under it) and refuses anything older, and anything
//! else under the same version: a policy can only be replaced by one with a higher version.
//! The content digest is `SHA-384("KRP/1 policy" || cbor{policy_id, version, policy})`, the
//! value that is signed, so re-signing the same text is the same policy.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD, Engine};
use p384::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use keyward_krp::cbor::to_canonical;

/// The file format tag.
pub(crate) const FORMAT: &str = "keyward-signed-policy/1";

/// Errors loading or checking a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("policy file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The version file does not start with a number (or is not readable).
    #[error("policy version file {}", path.display())]
    VersionFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file is not signed-policy JSON at all (a bare policy, say).
    #[error(
        "not a signed policy (not signed-policy JSON); sign it with `keyward krs policy sign`"
    )]
    NotJson(#[source] serde_json::Error),
    /// The JSON's `format` is not [`FORMAT`] (it holds that tag).
    #[error("not a signed policy (format {0:?}); sign it with `keyward krs policy sign`")]
    Format(String),
    #[error("policy signature does not verify with the configured policy-admin key")]
    BadSignature,
    #[error("policy-admin key")]
    PrivateKey(#[source] p384::elliptic_curve::Error),
    #[error("policy-admin key")]
    PublicKey(#[source] p384::pkcs8::spki::Error),
    #[error("policy-admin key")]
    Sign(#[source] p384::ecdsa::Error),
    #[error("policy version {got} is older than version {highest} already accepted")]
    Rollback { got: u64, highest: u64 },
    #[error(
        "policy version {version} was already accepted with other content (digest {accepted}, \
         this one {got}); a changed policy needs a higher version"
    )]
    SameVersion {
        version: u64,
        accepted: String,
        got: String,
    },
    #[error("policy encoding")]
    Cbor(#[from] keyward_krp::cbor::CborError),
    #[error("policy encoding")]
    Base64(#[source] base64::DecodeError),
}

/// The JSON file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicyFile {
    pub format: String,
    pub policy_id: String,
    pub version: u64,
    /// Base64 of the verifier policy bytes.
    pub policy: String,
    /// Base64 of the 96-byte signature.
    pub signature: String,
}

#[derive(Serialize)]
struct SignedBody<'a> {
    policy_id: &'a str,
    version: u64,
    #[serde(with = "serde_bytes")]
    policy: &'a [u8],
}

#[derive(Serialize)]
struct DigestBody<'a> {
    policy_id: &'a str,
    version: u64,
    #[serde(with = "serde_bytes")]
    policy: &'a [u8],
    #[serde(with = "serde_bytes")]
    signature: &'a [u8],
}

/// A policy whose signature has been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    pub policy_id: String,
    pub version: u64,
    /// The verifier policy text as signed.
    pub policy: Vec<u8>,
    /// SHA-384 over the signed policy (goes into T).
    pub digest: [u8; 48],
}

impl VerifiedPolicy {
    /// `id@vN`, the `policy_id` carried in the challenge.
    pub fn label(&self) -> String {
        format!("{}@v{}", self.policy_id, self.version)
    }
}

fn signed_digest(policy_id: &str, version: u64, policy: &[u8]) -> Result<[u8; 48], PolicyError> {
    let body = to_canonical(&SignedBody {
        policy_id,
        version,
        policy,
    })?;
    let mut h = Sha384::new();
    h.update(b"KRP/1 policy");
    h.update(body);
    Ok(h.finalize().into())
}

/// Sign `policy` as version `version` with the admin key (PKCS#8 PEM).
pub fn sign(
    admin_key_pem: &str,
    policy_id: &str,
    version: u64,
    policy: &[u8],
) -> Result<SignedPolicyFile, PolicyError> {
    use p384::pkcs8::DecodePrivateKey;
    let sk = SigningKey::from_pkcs8_pem(admin_key_pem)
        .or_else(|_| p384::SecretKey::from_sec1_pem(admin_key_pem).map(SigningKey::from))
        .map_err(PolicyError::PrivateKey)?;
    let d = signed_digest(policy_id, version, policy)?;
    let sig: Signature = sk.sign_prehash(&d).map_err(PolicyError::Sign)?;
    Ok(SignedPolicyFile {
        format: FORMAT.into(),
        policy_id: policy_id.into(),
        version,
        policy: STANDARD.encode(policy),
        signature: STANDARD.encode(sig.to_bytes()),
    })
}

/// Parse a PEM SPKI P-384 public key.
pub(crate) fn admin_public_key(pem: &str) -> Result<VerifyingKey, PolicyError> {
    use p384::pkcs8::DecodePublicKey;
    VerifyingKey::from_public_key_pem(pem).map_err(PolicyError::PublicKey)
}

/// Parse and verify a signed policy file's bytes.
pub(crate) fn verify(
    file_bytes: &[u8],
    admin: &VerifyingKey,
) -> Result<VerifiedPolicy, PolicyError> {
    let f: SignedPolicyFile = serde_json::from_slice(file_bytes).map_err(PolicyError::NotJson)?;
    if f.format != FORMAT {
        return Err(PolicyError::Format(f.format));
    }
    let policy = STANDARD
        .decode(f.policy.as_bytes())
        .map_err(PolicyError::Base64)?;
    let sig_bytes = STANDARD
        .decode(f.signature.as_bytes())
        .map_err(|_| PolicyError::BadSignature)?;
    if sig_bytes.len() != 96 {
        return Err(PolicyError::BadSignature);
    }
    let sig = Signature::from_slice(&sig_bytes).map_err(|_| PolicyError::BadSignature)?;
    let d = signed_digest(&f.policy_id, f.version, &policy)?;
    admin
        .verify_prehash(&d, &sig)
        .map_err(|_| PolicyError::BadSignature)?;
    let digest_body = to_canonical(&DigestBody {
        policy_id: &f.policy_id,
        version: f.version,
        policy: &policy,
        signature: &sig_bytes,
    })?;
    Ok(VerifiedPolicy {
        policy_id: f.policy_id,
        version: f.version,
        policy,
        digest: Sha384::digest(digest_body).into(),
    })
}

/// Load and verify a signed policy from a file.
pub(crate) fn load(path: &Path, admin: &VerifyingKey) -> Result<VerifiedPolicy, PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    verify(&bytes, admin)
}

/// The content digest recorded with the version (hex).
pub(crate) fn content_digest(p: &VerifiedPolicy) -> Result<String, PolicyError> {
    signed_digest(&p.policy_id, p.version, &p.policy).map(hex::encode)
}

/// The high-water mark in `version_file`: `VERSION [CONTENT-DIGEST]` (older files hold the
/// version alone). `(0, None)` when the file does not exist.
pub(crate) fn read_version_file(version_file: &Path) -> Result<(u64, Option<String>), PolicyError> {
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| PolicyError::VersionFile {
        path: version_file.to_path_buf(),
        source: e,
    };
    match std::fs::read_to_string(version_file) {
        Ok(s) => {
            let mut it = s.split_whitespace();
            let v = it
                .next()
                .unwrap_or("")
                .parse::<u64>()
                .map_err(|e| bad(e.into()))?;
            Ok((v, it.next().map(str::to_string)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, None)),
        Err(e) => Err(bad(e.into())),
    }
}

/// Check `p` against the high-water mark without changing it. `Ok(true)` when accepting `p`
/// would write the file (newer version, or the digest not yet recorded).
pub(crate) fn check_version(version_file: &Path, p: &VerifiedPolicy) -> Result<bool, PolicyError> {
    let (highest, recorded) = read_version_file(version_file)?;
    if p.version < highest {
        return Err(PolicyError::Rollback {
            got: p.version,
            highest,
        });
    }
    if p.version > highest {
        return Ok(true);
    }
    let got = content_digest(p)?;
    match recorded {
        Some(accepted) if !accepted.eq_ignore_ascii_case(&got) => Err(PolicyError::SameVersion {
            version: p.version,
            accepted,
            got,
        }),
        Some(_) => Ok(false),
        // A file written before digests were recorded: this policy becomes the one.
        None => Ok(true),
    }
}

/// Enforce the version rule against the persisted high-water mark in `version_file`
/// (older: refused; same version, other content: refused), recording `p` (atomically,
/// fsynced) when it is newer.
pub(crate) fn enforce_version(version_file: &Path, p: &VerifiedPolicy) -> Result<(), PolicyError> {
    let io = |source: std::io::Error| PolicyError::Io {
        path: version_file.to_path_buf(),
        source,
    };
    if check_version(version_file, p)? {
        let tmp = version_file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{} {}", p.version, content_digest(p)?).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, version_file).map_err(io)?;
        if let Some(dir) = version_file.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    fn keys() -> (String, VerifyingKey, String) {
        let sk = SigningKey::random(&mut rand_core::OsRng);
        let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let vk = *sk.verifying_key();
        let pubpem = vk.to_public_key_pem(LineEnding::LF).unwrap();
        (pem, vk, pubpem)
    }

    #[test]
    fn sign_verify_tamper_rollback() {
        let (pem, vk, pubpem) = keys();
        assert!(admin_public_key(&pubpem).is_ok());
        let f = sign(&pem, "prod", 3, b"measurement = 'ab'").unwrap();
        let bytes = serde_json::to_vec(&f).unwrap();
        let p = verify(&bytes, &vk).unwrap();
        assert_eq!(p.version, 3);
        assert_eq!(p.policy, b"measurement = 'ab'");

        // Tampered version or text fails.
        let mut t = f.clone();
        t.version = 4;
        assert!(matches!(
            verify(&serde_json::to_vec(&t).unwrap(), &vk),
            Err(PolicyError::BadSignature)
        ));
        // Unsigned text fails.
        assert!(matches!(
            verify(b"measurement = 'ab'", &vk),
            Err(PolicyError::NotJson(_))
        ));
        // Another admin key fails.
        let (_, other, _) = keys();
        assert!(verify(&bytes, &other).is_err());

        let dir = tempfile::tempdir().unwrap();
        let vf = dir.path().join("policy.version");
        enforce_version(&vf, &p).unwrap();
        let old = verify(
            &serde_json::to_vec(&sign(&pem, "prod", 2, b"x").unwrap()).unwrap(),
            &vk,
        )
        .unwrap();
        assert!(matches!(
            enforce_version(&vf, &old),
            Err(PolicyError::Rollback { got: 2, highest: 3 })
        ));
        enforce_version(&vf, &p).unwrap();
        // Re-signing the same text under the same version is the same policy.
        let again = verify(
            &serde_json::to_vec(&sign(&pem, "prod", 3, b"measurement = 'ab'").unwrap()).unwrap(),
            &vk,
        )
        .unwrap();
        enforce_version(&vf, &again).unwrap();
        // Other text, or another id, under version 3: refused, and the file is unchanged.
        let before = std::fs::read_to_string(&vf).unwrap();
        for (id, text) in [
            ("prod", &b"measurement = 'cd'"[..]),
            ("other", b"measurement = 'ab'"),
        ] {
            let swapped = verify(
                &serde_json::to_vec(&sign(&pem, id, 3, text).unwrap()).unwrap(),
                &vk,
            )
            .unwrap();
            assert!(matches!(
                enforce_version(&vf, &swapped),
                Err(PolicyError::SameVersion { version: 3, .. })
            ));
        }
        assert_eq!(std::fs::read_to_string(&vf).unwrap(), before);
        // A version file from before digests were recorded: the first policy seen is recorded.
        std::fs::write(&vf, "3\n").unwrap();
        enforce_version(&vf, &p).unwrap();
        assert_eq!(
            read_version_file(&vf).unwrap(),
            (3, Some(content_digest(&p).unwrap()))
        );
        // Version 4 with any text moves forward.
        let v4 = verify(
            &serde_json::to_vec(&sign(&pem, "prod", 4, b"x").unwrap()).unwrap(),
            &vk,
        )
        .unwrap();
        enforce_version(&vf, &v4).unwrap();
        assert_eq!(read_version_file(&vf).unwrap().0, 4);
    }
}
