//! The evidence bundle: everything an appliance produces for one attestation, in one
//! serialisable structure that the KRS receives and an auditor can save and re-verify offline.
//!
//! CONTRACT between `attest` (producers) and `verify` (judges). Extend by adding optional
//! fields only; the JSON form (`keyward verify --evidence FILE`) uses Base64 for bytes.

use serde::{Deserialize, Serialize};

/// One attestation's evidence. Every part is optional; the policy decides which it requires.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EvidenceBundle {
    /// Format version of this bundle (1).
    pub version: u32,
    /// The 64 bytes every hardware report must carry (SNP REPORT_DATA), as the producer set it.
    /// Informational: the verifier recomputes what it expects from the context it is given.
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub report_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpEvidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmEvidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nitro: Option<NitroEvidence>,
    /// The public key (SEC1) that signs this process's audit-log checkpoints, when the
    /// producer bound it into the evidence (the live attestation's `keyward/2 runtime`
    /// binding). Informational until the verifier recomputes the binding with it.
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub audit_key: Option<Vec<u8>>,
}

/// A raw SEV-SNP attestation report and the certificates that came with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpEvidence {
    /// The raw 1184-byte report.
    #[serde(with = "b64")]
    pub report: Vec<u8>,
    /// DER certificates from the extended report's certificate table (VCEK or VLEK, and
    /// possibly ASK/ASVK/ARK), in any order.
    #[serde(default, with = "b64vec")]
    pub certs: Vec<Vec<u8>>,
}

/// A TPM 2.0 quote with what is needed to check it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmEvidence {
    /// Marshalled TPMS_ATTEST.
    #[serde(with = "b64")]
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// The attestation key's public area (marshalled TPMT_PUBLIC).
    #[serde(with = "b64")]
    pub ak_public: Vec<u8>,
    /// Quoted PCR values: (bank, index, value).
    #[serde(default)]
    pub pcrs: Vec<PcrValue>,
    /// The firmware's measured-boot event log (TCG PC Client format), if read.
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub event_log: Option<Vec<u8>>,
}

/// One PCR value as read at quote time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PcrValue {
    /// `sha256` or `sha384`.
    pub bank: String,
    pub index: u8,
    #[serde(with = "hexbytes")]
    pub value: Vec<u8>,
}

/// A NitroTPM attestation document (COSE_Sign1, CBOR).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NitroEvidence {
    #[serde(with = "b64")]
    pub document: Vec<u8>,
}

pub mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

pub mod b64opt {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&STANDARD.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

pub mod b64vec {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| STANDARD.encode(b)))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                STANDARD
                    .decode(s.as_bytes())
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

pub mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
