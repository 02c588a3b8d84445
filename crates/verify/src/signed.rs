//! Detached minisign signatures on the release's published files (the reference values, the
//! SBOM): `make sign` writes `FILE.minisig` next to each with the `minisign` tool, and
//! `keyward verify --signature-key` checks it here, with the `minisign-verify` crate (Ed25519,
//! the prehashed `ED` form and the signed trusted comment), before the file is used at all.
//!
//! Pure: the caller reads the file, the signature and the key; this module judges bytes.

use minisign_verify::{PublicKey, Signature};

/// Why a signed file is refused. Each message names what was wrong in one line.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the public key is not a minisign public key: {0}")]
    Key(#[source] minisign_verify::Error),
    #[error("the signature is not a minisign signature: {0}")]
    Syntax(#[source] minisign_verify::Error),
    #[error("the signature does not verify with this key (file changed, or signed with another key): {0}")]
    Bad(#[source] minisign_verify::Error),
}

/// A minisign public key, from the text of a `minisign.pub` file (an `untrusted comment:` line
/// and the base64 key) or the bare base64 key line.
pub fn parse_public_key(text: &str) -> Result<PublicKey, SignatureError> {
    let text = text.trim();
    let parsed = if text.lines().count() > 1 {
        PublicKey::decode(text)
    } else {
        PublicKey::from_base64(text)
    };
    parsed.map_err(SignatureError::Key)
}

/// Check `signature` (the text of a `.minisig` file) over `data` with `key`. Only the
/// prehashed signatures minisign has written by default since 0.8 are accepted (the legacy
/// non-prehashed form is refused: there is no reason for a release to use it). Returns the
/// trusted comment, which the signature also covers.
pub fn verify_detached(
    key: &PublicKey,
    data: &[u8],
    signature: &str,
) -> Result<String, SignatureError> {
    let sig = Signature::decode(signature).map_err(SignatureError::Syntax)?;
    key.verify(data, &sig, false).map_err(SignatureError::Bad)?;
    Ok(sig.trusted_comment().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Good and bad signatures made by the real minisign tool are checked by the integration
    // test `verify_signed` (tests/it/verify_signed.rs); here only the malformed inputs.
    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert!(matches!(
            parse_public_key("not a key"),
            Err(SignatureError::Key(_))
        ));
        assert!(matches!(
            parse_public_key("untrusted comment: x\nAAAA"),
            Err(SignatureError::Key(_))
        ));
    }
}
