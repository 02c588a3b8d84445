//! KRP/1 messages (docs/key-release.md section 8.2), carried as deterministic CBOR in length-prefixed
//! frames over TLS 1.3. Every message carries `v: 1`; an unknown version is refused.
//!
//! Byte strings are CBOR byte strings (`serde_bytes`), so the encoding is compact and exact.

use serde::{Deserialize, Serialize};

pub use keyward_keystore::StoreHead;

/// The only protocol version this build speaks.
pub const VERSION: u32 = 1;

/// What the appliance was told to trust (from its configuration / EC2 user data).
/// Its SHA-384 (`pins_digest`) goes into T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub krs_url: String,
    #[serde(with = "serde_bytes")]
    pub krs_tls_spki_sha256: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub receipt_spki_sha256: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub admin_ca_sha256: Vec<u8>,
}

/// Agent -> KRS, first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub v: u32,
    /// `aws-snp-nitrotpm`, `snp`, `tpm`, or `simulated-snp`.
    pub platform: String,
    pub product_release: String,
    pub algs: Vec<String>,
    pub pins: Pins,
    /// Master-key rotation: the versions wanted besides the current one (e.g. a backup's).
    /// Present (even empty) from agents that handle several versions: they get the current
    /// version, the one the deployment's store head names, and these (each while not retired).
    /// Absent (agents from before rotation): version 1 only, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_versions: Option<Vec<u32>>,
}

/// KRS -> Agent, answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub session_id: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// SHA-256 of the receipt key's SPKI (DER).
    #[serde(with = "serde_bytes")]
    pub krs_id: Vec<u8>,
    pub policy_id: String,
    /// SHA-384 of the signed policy in force.
    #[serde(with = "serde_bytes")]
    pub policy_digest: Vec<u8>,
    /// Unix seconds.
    pub expires: u64,
    /// The receipt key's SPKI (DER); the agent checks its SHA-256 against its pin.
    #[serde(with = "serde_bytes")]
    pub receipt_spki: Vec<u8>,
}

/// Agent -> KRS: evidence bound to T. T itself is not sent; the KRS recomputes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub session_id: Vec<u8>,
    /// The agent's ephemeral P-384 public key, SEC1 uncompressed.
    #[serde(with = "serde_bytes")]
    pub epk: Vec<u8>,
    /// The policy digest the agent put into T (the KRS refuses a mismatch by name).
    #[serde(with = "serde_bytes")]
    pub policy_digest: Vec<u8>,
    /// CBOR of [`keyward_evidence::EvidenceBundle`], kept as bytes so its digest is exact.
    #[serde(with = "serde_bytes")]
    pub evidence: Vec<u8>,
    /// The appliance's per-boot P-384 signing key, SEC1 uncompressed (empty: none; older
    /// agents). It is part of T, so the attested evidence binds it; on release the KRS
    /// registers it for the deployment, and only it may advance that deployment's store head.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub boot_key: Vec<u8>,
}

/// Agent -> KRS (any time after a release): record `next` as the deployment's store head if
/// the head the KRS holds is `prev` (compare-and-set). Signed by the per-boot key over
/// [`crate::headproto::update_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadUpdate {
    pub v: u32,
    /// SHA-256 of the boot key (SEC1).
    #[serde(with = "serde_bytes")]
    pub boot_key_id: Vec<u8>,
    pub prev: Option<StoreHead>,
    pub next: StoreHead,
    /// 32 fresh bytes; the signed answer names them.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// ECDSA P-384 `r || s` by the boot key.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Agent -> KRS: which head do you hold for my deployment? Signed by the boot key over
/// [`crate::headproto::query_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadQuery {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub boot_key_id: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// KRS -> Agent: the head recorded (decision `head`) or held (decision `head-query`), as a
/// receipt signed with the receipt key in the HSM that names the request's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadAck {
    pub v: u32,
    /// Deterministic CBOR of [`crate::receipt::Receipt`].
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// How the master key was wrapped for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WrapMode {
    /// In the HSM: ECDH(CKD_NULL) -> AES_CBC_ENCRYPT_DATA(SHA-256("KRP/1 wrap"||T)) -> AES-KW.
    HsmEcdhAesKw,
    /// Fallback: the MK was in KRS memory for one call, sealed with HPKE (RFC 9180).
    HpkeFallback,
}

/// One more master-key version in a [`Release`], wrapped as the primary one is (its own HSM
/// ephemeral key, the same agent key and transcript).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub key_version: u32,
    #[serde(with = "serde_bytes")]
    pub hsm_epk: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub wrapped_mk: Vec<u8>,
}

/// KRS -> Agent: the wrapped master key and its signed receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub session_id: Vec<u8>,
    pub mode: WrapMode,
    /// HSM ephemeral public key (SEC1) for `hsm-ecdh-aes-kw`; HPKE encapsulated key otherwise.
    #[serde(with = "serde_bytes")]
    pub hsm_epk: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub wrapped_mk: Vec<u8>,
    /// Deterministic CBOR of [`crate::receipt::Receipt`].
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    /// ECDSA P-384 `r || s` over SHA-384(receipt).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// Older master-key versions released too (the receipt's `also` names each). Absent when
    /// only the primary (`wrapped_mk`, the receipt's `key_version`) is released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<WrappedKey>,
}

/// KRS -> Agent: an opaque refusal. The reason is only in the KRS's own log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    pub v: u32,
    pub code: u32,
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Everything an agent may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Hello(Hello),
    Evidence(Evidence),
    HeadUpdate(HeadUpdate),
    HeadQuery(HeadQuery),
}

/// Everything a KRS may answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Challenge(Challenge),
    Release(Release),
    Deny(Deny),
    Head(HeadAck),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{from_slice, to_canonical};
    use proptest::prelude::*;

    fn sample() -> Request {
        Request::Evidence(Evidence {
            v: VERSION,
            session_id: vec![1; 16],
            epk: vec![4; 97],
            policy_digest: vec![2; 48],
            evidence: vec![3; 40],
            boot_key: vec![],
        })
    }

    #[test]
    fn round_trip_is_exact() {
        let b = to_canonical(&sample()).unwrap();
        let back: Request = from_slice(&b).unwrap();
        assert_eq!(back, sample());
        assert_eq!(to_canonical(&back).unwrap(), b);
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        // map(1) {"hello": bytes of declared length 2^62}
        let mut b = vec![0xa1, 0x65];
        b.extend_from_slice(b"hello");
        b.push(0x5b);
        b.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert!(from_slice::<Request>(&b).is_err());
        let mut b = vec![0xa1, 0x68];
        b.extend_from_slice(b"evidence");
        b.push(0x9b); // array of 2^62 items
        b.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert!(from_slice::<Request>(&b).is_err());
    }

    proptest! {
        #[test]
        fn random_and_mutated_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                                 flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
            let _ = from_slice::<Request>(&bytes);
            let _ = from_slice::<Response>(&bytes);
            let mut b = to_canonical(&sample()).unwrap();
            for (i, x) in flips {
                let n = b.len();
                b[i % n] ^= x;
            }
            let _ = from_slice::<Request>(&b);
        }
    }
}
