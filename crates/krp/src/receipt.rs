//! Signed receipts for every decision (release and deny), and the opaque deny codes.
//!
//! The receipt is deterministic CBOR; the KRS signs SHA-384 of those bytes with the P-384
//! receipt key in the HSM (`CKM_ECDSA`, 96-byte `r || s`). Agents and `krs log verify` check
//! the signature over the exact bytes they received.

use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

use crate::cbor::{from_slice, to_canonical, CborError};
use crate::messages::WrapMode;

/// Why the KRS refused. The number is all the caller sees; the name and detail go to the
/// KRS's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    Malformed,
    UnsupportedVersion,
    /// The KRS refuses more work from this source for now (too many open sessions); retry.
    Busy,
    PinMismatch,
    SessionUnknown,
    SessionReplayed,
    SessionExpired,
    PolicyDigestMismatch,
    BadEphemeralKey,
    EvidenceMalformed,
    EvidenceRejected,
    EvidenceBinding,
    GuestPolicy,
    Measurement,
    TcbTooLow,
    EvidenceChain,
    /// A head update or query signed by no registered boot key.
    HeadKeyUnknown,
    /// A head update or query whose boot-key signature does not verify.
    HeadSignature,
    /// A head update that does not extend the head held (or names another store).
    HeadRefused,
    /// A master-key version asked for is retired (destroyed in the HSM), or version 1 is, for
    /// an agent from before rotation.
    KeyRetired,
    Internal,
}

impl DenyCode {
    /// The code for a failed verifier check, by the check's stable name.
    pub fn for_check(name: &str) -> DenyCode {
        let n = name;
        if n.ends_with("report_data")
            || n.ends_with("qualifying_data")
            || n.ends_with(".nonce")
            || n.ends_with("public_key")
            || n.ends_with("user_data")
            || n.ends_with("extra_data")
        {
            DenyCode::EvidenceBinding
        } else if n.ends_with(".debug")
            || n.ends_with("migrate_ma")
            || n.ends_with("policy_bits")
            || n.ends_with("guest_policy")
            || n.ends_with(".vmpl")
        {
            DenyCode::GuestPolicy
        } else if n.ends_with("measurement") || n.ends_with("host_data") || n.contains("pcr") {
            DenyCode::Measurement
        } else if n.ends_with("_tcb") || n.ends_with("guest_svn") {
            DenyCode::TcbTooLow
        } else if n.contains("chain")
            || n.ends_with("signature")
            || n.ends_with("signer")
            || n.ends_with(".crl")
            || n.ends_with("hwid")
            || n.ends_with("csp_id")
        {
            DenyCode::EvidenceChain
        } else {
            DenyCode::EvidenceRejected
        }
    }

    /// The opaque number sent to the caller.
    pub fn number(self) -> u32 {
        match self {
            DenyCode::Malformed => 100,
            DenyCode::UnsupportedVersion => 101,
            DenyCode::Busy => 102,
            DenyCode::PinMismatch => 110,
            DenyCode::SessionUnknown => 120,
            DenyCode::SessionReplayed => 121,
            DenyCode::SessionExpired => 122,
            DenyCode::PolicyDigestMismatch => 130,
            DenyCode::BadEphemeralKey => 140,
            DenyCode::EvidenceMalformed => 150,
            DenyCode::EvidenceRejected => 151,
            DenyCode::EvidenceBinding => 152,
            DenyCode::GuestPolicy => 153,
            DenyCode::Measurement => 154,
            DenyCode::TcbTooLow => 155,
            DenyCode::EvidenceChain => 156,
            DenyCode::HeadKeyUnknown => 160,
            DenyCode::HeadSignature => 161,
            DenyCode::HeadRefused => 162,
            DenyCode::KeyRetired => 170,
            DenyCode::Internal => 199,
        }
    }

    /// Stable name, for the KRS's own log.
    pub fn name(self) -> &'static str {
        match self {
            DenyCode::Malformed => "malformed",
            DenyCode::UnsupportedVersion => "unsupported_version",
            DenyCode::Busy => "busy",
            DenyCode::PinMismatch => "pin_mismatch",
            DenyCode::SessionUnknown => "session_unknown",
            DenyCode::SessionReplayed => "session_replayed",
            DenyCode::SessionExpired => "session_expired",
            DenyCode::PolicyDigestMismatch => "policy_digest_mismatch",
            DenyCode::BadEphemeralKey => "bad_ephemeral_key",
            DenyCode::EvidenceMalformed => "evidence_malformed",
            DenyCode::EvidenceRejected => "evidence_rejected",
            DenyCode::EvidenceBinding => "evidence_binding",
            DenyCode::GuestPolicy => "guest_policy",
            DenyCode::Measurement => "measurement",
            DenyCode::TcbTooLow => "tcb_too_low",
            DenyCode::EvidenceChain => "evidence_chain",
            DenyCode::HeadKeyUnknown => "head_key_unknown",
            DenyCode::HeadSignature => "head_signature",
            DenyCode::HeadRefused => "head_refused",
            DenyCode::KeyRetired => "key_retired",
            DenyCode::Internal => "internal",
        }
    }
}

/// What a receipt says. `decision` is `release` or `deny`; for a deny, `code` is set and the
/// wrap fields are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub v: u32,
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(with = "serde_bytes")]
    pub session_id: Vec<u8>,
    /// T, when the KRS got far enough to compute it.
    #[serde(with = "serde_bytes")]
    pub t: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WrapMode>,
    #[serde(with = "serde_bytes")]
    pub hsm_epk: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub wrapped_digest: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub evidence_digest: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub policy_digest: Vec<u8>,
    pub key_id: String,
    pub key_version: u32,
    /// Unix seconds.
    pub time: u64,
    pub log_index: u64,
    /// Release: the store head the KRS holds for the deployment (the appliance refuses an
    /// older store). `head`: the head recorded; `head-query`: the head held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<keyward_keystore::StoreHead>,
    /// The boot key registered (release) or that signed the request (`head`, `head-query`).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub boot_key_id: Vec<u8>,
    /// `head`, `head-query`: the request's nonce.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub nonce: Vec<u8>,
    /// Release: the other master-key versions released with the primary one (`key_version`),
    /// each by version, HSM ephemeral key and digest of its wrapped blob. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<ReleasedKey>,
}

/// A further master-key version a release carried (see [`Receipt::also`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedKey {
    pub key_version: u32,
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub hsm_epk: Vec<u8>,
    /// SHA-384 of the wrapped blob.
    #[serde(with = "serde_bytes")]
    pub wrapped_digest: Vec<u8>,
}

/// Errors checking a receipt.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt key is not the pinned one")]
    KeyNotPinned,
    #[error("receipt key is not a P-384 public key")]
    BadKey,
    #[error("receipt signature is not a valid 96-byte P-384 signature over the receipt")]
    BadSignature,
    #[error("receipt: {0}")]
    Cbor(#[from] CborError),
}

impl Receipt {
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        to_canonical(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        from_slice(bytes)
    }
}

/// The digest the HSM signs: SHA-384 of the receipt bytes.
pub fn receipt_digest(receipt_bytes: &[u8]) -> [u8; 48] {
    Sha384::digest(receipt_bytes).into()
}

/// SHA-256 of a DER SPKI: the pin form used for the receipt key and the TLS key.
pub fn spki_pin(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// Verify `signature` (96 bytes `r || s`) over `receipt_bytes` with the P-384 key in
/// `spki_der`. Returns the decoded receipt.
pub fn verify_receipt(
    spki_der: &[u8],
    receipt_bytes: &[u8],
    signature: &[u8],
) -> Result<Receipt, ReceiptError> {
    use p384::pkcs8::DecodePublicKey;
    let vk = VerifyingKey::from_public_key_der(spki_der).map_err(|_| ReceiptError::BadKey)?;
    if signature.len() != 96 {
        return Err(ReceiptError::BadSignature);
    }
    let sig = Signature::from_slice(signature).map_err(|_| ReceiptError::BadSignature)?;
    vk.verify_prehash(&receipt_digest(receipt_bytes), &sig)
        .map_err(|_| ReceiptError::BadSignature)?;
    Ok(Receipt::decode(receipt_bytes)?)
}

/// DER SPKI from a SEC1 P-384 point (the form the HSM gives).
pub fn spki_from_sec1(sec1: &[u8]) -> Result<Vec<u8>, ReceiptError> {
    crate::transcript::p384_spki_der(sec1).ok_or(ReceiptError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::{signature::hazmat::PrehashSigner, SigningKey};
    use p384::pkcs8::EncodePublicKey;

    #[test]
    fn sign_verify_and_tamper() {
        let sk = SigningKey::random(&mut rand_core::OsRng);
        let spki = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let r = Receipt {
            v: 1,
            decision: "deny".into(),
            code: Some(DenyCode::SessionReplayed.number()),
            session_id: vec![1; 16],
            t: vec![],
            mode: None,
            hsm_epk: vec![],
            wrapped_digest: vec![],
            evidence_digest: vec![],
            policy_digest: vec![2; 48],
            key_id: "mk".into(),
            key_version: 1,
            time: 5,
            log_index: 0,
            head: None,
            boot_key_id: vec![],
            nonce: vec![],
            also: vec![],
        };
        let bytes = r.encode().unwrap();
        let sig: Signature = sk.sign_prehash(&receipt_digest(&bytes)).unwrap();
        let sig = sig.to_bytes().to_vec();
        assert_eq!(verify_receipt(&spki, &bytes, &sig).unwrap(), r);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(verify_receipt(&spki, &bad, &sig).is_err());
        assert!(verify_receipt(&spki, &bytes, &sig[..95]).is_err());
    }
}
