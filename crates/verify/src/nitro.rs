//! NitroTPM attestation document verifier: COSE_Sign1 / ES384 signature, the certificate chain
//! to the pinned AWS Nitro root, certificate dates, the document's age, the caller's
//! nonce / public key / user data, and `nitrotpm_pcrs` 4, 7, 12 against a [`NitroPolicy`].
//!
//! PCR 12 must hold the "no override" value, 48 zero bytes: the SHA-384 PCR 12 of a boot in
//! which nothing extended it (systemd-stub measures a command-line override, credentials and
//! sysexts there; an Attestable AMI has none). That is the value AWS's `nitro-tpm-pcr-compute`
//! emits for PCR 12 (a fresh, never-extended SHA-384 PCR). The check is in code, not policy.
//!
//! What it proves, and what not: the document is signed by the Nitro hypervisor's PKI, so on an
//! SEV-SNP instance NitroTPM (and so the image measurement) is vouched for by AWS Nitro, outside
//! the SNP boundary.

use ciborium::Value;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use x509_cert::Certificate;

use super::verdict::Verdict;
use keyward_evidence::NitroEvidence;

/// SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 certificate (`CN=aws.nitro-enclaves`,
/// valid 2019-10-28 to 2049-10-28), as AWS publishes it; NitroTPM documents chain to it.
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// PCR 12 when nothing overrode the UKI's command line (never extended, SHA-384 bank).
pub const PCR12_NO_OVERRIDE: [u8; 48] = [0u8; 48];

/// Largest document accepted (real ones are about 4-5 KiB).
const MAX_DOCUMENT: usize = 64 * 1024;
/// Clock skew tolerated for a timestamp in the future.
const FUTURE_SKEW_MS: u64 = 60_000;

/// The `nitro` section of a policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NitroPolicy {
    /// Pinned root fingerprints (SHA-256 of the DER, hex). Default: AWS Nitro Root-G1 only.
    #[serde(default = "default_roots")]
    pub root_sha256: Vec<String>,
    /// Maximum document age, humantime (`5m`, `90s`). Default 5 minutes.
    #[serde(default = "default_max_age")]
    pub max_age: String,
    /// Allowed SHA-384 values per NitroTPM PCR (4 = UKI, 7 = Secure Boot policy).
    #[serde(default)]
    pub pcrs: Vec<NitroPcr>,
}

impl Default for NitroPolicy {
    fn default() -> Self {
        Self {
            root_sha256: default_roots(),
            max_age: default_max_age(),
            pcrs: Vec::new(),
        }
    }
}

fn default_roots() -> Vec<String> {
    vec![AWS_NITRO_ROOT_G1_SHA256.into()]
}
fn default_max_age() -> String {
    "5m".into()
}

/// The allowed values of one NitroTPM PCR.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NitroPcr {
    pub pcr: u8,
    /// Hex SHA-384 values.
    pub values: Vec<String>,
}

/// What the caller expects the document to carry. `None` skips that binding check.
#[derive(Debug, Clone, Copy, Default)]
pub struct NitroExpect<'a> {
    pub nonce: Option<&'a [u8]>,
    pub public_key: Option<&'a [u8]>,
    pub user_data: Option<&'a [u8]>,
}

/// The fields of a parsed attestation document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NitroDocument {
    pub module_id: String,
    pub digest: String,
    pub timestamp_ms: u64,
    pub pcrs: Vec<(u64, Vec<u8>)>,
    pub certificate: Vec<u8>,
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

/// A parsed COSE_Sign1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseSign1 {
    pub protected: Vec<u8>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a document could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NitroParseError {
    #[error("document larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    #[error("not CBOR: {0}")]
    Cbor(String),
    #[error("{0}")]
    Malformed(&'static str),
}

fn cbor(bytes: &[u8]) -> Result<Value, NitroParseError> {
    ciborium::from_reader(bytes).map_err(|e| NitroParseError::Cbor(e.to_string()))
}

/// Parse the COSE_Sign1 envelope (tag 18 optional).
pub fn parse_cose(bytes: &[u8]) -> Result<CoseSign1, NitroParseError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(NitroParseError::TooLarge);
    }
    let v = match cbor(bytes)? {
        Value::Tag(18, inner) => *inner,
        v => v,
    };
    let Value::Array(items) = v else {
        return Err(NitroParseError::Malformed("COSE_Sign1 is not an array"));
    };
    let [Value::Bytes(protected), _unprotected, Value::Bytes(payload), Value::Bytes(signature)] =
        <[Value; 4]>::try_from(items)
            .map_err(|_| NitroParseError::Malformed("COSE_Sign1 does not have 4 elements"))?
    else {
        return Err(NitroParseError::Malformed(
            "COSE_Sign1 elements have the wrong types",
        ));
    };
    Ok(CoseSign1 {
        protected,
        payload,
        signature,
    })
}

/// The bytes ES384 signs: `Sig_structure = ["Signature1", protected, h'', payload]`.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let v = Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(&v, &mut out);
    out
}

fn protected_alg_is_es384(protected: &[u8]) -> bool {
    let Ok(Value::Map(m)) = cbor(protected) else {
        return false;
    };
    m.iter()
        .any(|(k, v)| k.as_integer() == Some(1.into()) && v.as_integer() == Some((-35).into()))
}

fn opt_bytes(v: &Value) -> Result<Option<Vec<u8>>, NitroParseError> {
    match v {
        Value::Null => Ok(None),
        Value::Bytes(b) => Ok(Some(b.clone())),
        _ => Err(NitroParseError::Malformed("optional field is not bytes")),
    }
}

/// Parse the attestation document payload (a CBOR map).
pub fn parse_document(payload: &[u8]) -> Result<NitroDocument, NitroParseError> {
    let Value::Map(m) = cbor(payload)? else {
        return Err(NitroParseError::Malformed("payload is not a map"));
    };
    let mut d = NitroDocument::default();
    let (mut have_cert, mut have_ts) = (false, false);
    for (k, v) in &m {
        let Some(k) = k.as_text() else { continue };
        match k {
            "module_id" => d.module_id = v.as_text().unwrap_or_default().to_string(),
            "digest" => d.digest = v.as_text().unwrap_or_default().to_string(),
            "timestamp" => {
                let i = v
                    .as_integer()
                    .ok_or(NitroParseError::Malformed("timestamp is not an integer"))?;
                d.timestamp_ms = u64::try_from(i)
                    .map_err(|_| NitroParseError::Malformed("timestamp out of range"))?;
                have_ts = true;
            }
            "nitrotpm_pcrs" => {
                let pm = v
                    .as_map()
                    .ok_or(NitroParseError::Malformed("nitrotpm_pcrs is not a map"))?;
                for (pk, pv) in pm {
                    let idx = pk
                        .as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or(NitroParseError::Malformed("PCR index is not an integer"))?;
                    let val = pv
                        .as_bytes()
                        .ok_or(NitroParseError::Malformed("PCR value is not bytes"))?;
                    d.pcrs.push((idx, val.clone()));
                }
            }
            "certificate" => {
                d.certificate = v
                    .as_bytes()
                    .ok_or(NitroParseError::Malformed("certificate is not bytes"))?
                    .clone();
                have_cert = true;
            }
            "cabundle" => {
                let a = v
                    .as_array()
                    .ok_or(NitroParseError::Malformed("cabundle is not an array"))?;
                for c in a {
                    d.cabundle.push(
                        c.as_bytes()
                            .ok_or(NitroParseError::Malformed("cabundle entry is not bytes"))?
                            .clone(),
                    );
                }
            }
            "public_key" => d.public_key = opt_bytes(v)?,
            "user_data" => d.user_data = opt_bytes(v)?,
            "nonce" => d.nonce = opt_bytes(v)?,
            _ => {}
        }
    }
    if !have_cert || !have_ts || d.cabundle.is_empty() {
        return Err(NitroParseError::Malformed(
            "document lacks certificate, cabundle or timestamp",
        ));
    }
    Ok(d)
}

/// Verify `child`'s signature with `issuer`'s key (ECDSA P-384 / SHA-384, as the Nitro PKI
/// uses throughout). Anything else is refused.
fn verify_cert_sig(child: &Certificate, issuer: &Certificate) -> Result<(), String> {
    use p384::ecdsa::signature::Verifier;
    const ECDSA_SHA384: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    if child.signature_algorithm.oid != ECDSA_SHA384 {
        return Err(format!(
            "signature algorithm {} is not ecdsa-with-SHA384",
            child.signature_algorithm.oid
        ));
    }
    let key_bytes = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .ok_or("issuer key has unused bits")?;
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
        .map_err(|_| "issuer key is not a P-384 point".to_string())?;
    let sig_bytes = child
        .signature
        .as_bytes()
        .ok_or("signature has unused bits")?;
    let sig = p384::ecdsa::DerSignature::from_bytes(sig_bytes)
        .map_err(|_| "signature is not DER ECDSA".to_string())?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("re-encoding TBS: {e}"))?;
    vk.verify(&tbs, &sig)
        .map_err(|_| "certificate signature does not verify".to_string())
}

fn cert_dates_ok(c: &Certificate, now_unix: u64) -> bool {
    let v = &c.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs();
    let na = v.not_after.to_unix_duration().as_secs();
    nb <= now_unix && now_unix <= na
}

fn bind_check(
    verdict: &mut Verdict,
    name: &str,
    what: &str,
    expected: Option<&[u8]>,
    got: Option<&Vec<u8>>,
) {
    match (expected, got) {
        (None, _) => verdict.skip(name, format!("no expected {what} given")),
        (Some(e), Some(g)) if bool::from(g.as_slice().ct_eq(e)) => {
            verdict.pass(name, format!("{what} equals the expected value"))
        }
        (Some(_), Some(_)) => verdict.fail(name, format!("{what} differs from the expected value")),
        (Some(_), None) => verdict.fail(name, format!("document carries no {what}")),
    }
}

/// The `verify_bundle` entry point: reads the policy's `[nitro]` section (absent = the defaults:
/// AWS Nitro Root-G1 pinned, 5-minute age, no PCR 4/7 set) and the expected binding.
pub fn verify(
    ev: &NitroEvidence,
    policy: &super::Policy,
    expect: &super::Expectations,
    at_secs: u64,
    verdict: &mut Verdict,
) {
    let p = match policy.section::<NitroPolicy>("nitro") {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            verdict.fail("nitro.policy", format!("policy [nitro] section: {e}"));
            return;
        }
    };
    let e = NitroExpect {
        nonce: expect.nonce.as_deref(),
        public_key: expect.public_key.as_deref(),
        user_data: expect.user_data.as_deref(),
    };
    verify_nitro(ev, &p, e, at_secs, verdict)
}

/// Verify a NitroTPM attestation document at `now_unix` (seconds). Appends `nitro.*` checks.
pub fn verify_nitro(
    ev: &NitroEvidence,
    policy: &NitroPolicy,
    expect: NitroExpect<'_>,
    now_unix: u64,
    verdict: &mut Verdict,
) {
    // 1. Envelope and payload.
    let cose = match parse_cose(&ev.document) {
        Ok(c) => c,
        Err(e) => {
            verdict.fail("nitro.document", format!("COSE_Sign1: {e}"));
            return;
        }
    };
    let doc = match parse_document(&cose.payload) {
        Ok(d) => d,
        Err(e) => {
            verdict.fail("nitro.document", format!("payload: {e}"));
            return;
        }
    };
    verdict.pass(
        "nitro.document",
        format!("module {}, {} PCRs", doc.module_id, doc.pcrs.len()),
    );

    // 2. Certificates: parse, chain root -> ... -> leaf, pinned root, dates.
    let leaf = match Certificate::from_der(&doc.certificate) {
        Ok(c) => c,
        Err(e) => {
            verdict.fail("nitro.chain", format!("leaf certificate: {e}"));
            return;
        }
    };
    let mut chain = Vec::new();
    for (i, der) in doc.cabundle.iter().enumerate() {
        match Certificate::from_der(der) {
            Ok(c) => chain.push(c),
            Err(e) => {
                verdict.fail("nitro.chain", format!("cabundle[{i}]: {e}"));
                return;
            }
        }
    }
    let Some(root_der) = doc.cabundle.first() else {
        verdict.fail("nitro.chain", "the cabundle is empty: no root certificate");
        return;
    };
    let root_fp = hex::encode(Sha256::digest(root_der));
    if policy
        .root_sha256
        .iter()
        .any(|p| p.trim().eq_ignore_ascii_case(&root_fp))
    {
        verdict.pass("nitro.root", format!("root {root_fp} is pinned"));
    } else {
        verdict.fail(
            "nitro.root",
            format!("root {root_fp} is not pinned by the policy"),
        );
    }
    chain.push(leaf.clone());
    let mut chain_err = None;
    // The root signs itself; every later certificate is signed by the one before it.
    if let Some(root) = chain.first() {
        if let Err(e) = verify_cert_sig(root, root) {
            chain_err = Some(format!("root: {e}"));
        }
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (i, [prev, cert]) = (i + 1, pair) else {
            continue;
        };
        if chain_err.is_some() {
            break;
        }
        if cert.tbs_certificate.issuer != prev.tbs_certificate.subject {
            chain_err = Some(format!(
                "certificate {i}: issuer is not the previous subject"
            ));
        } else if let Err(e) = verify_cert_sig(cert, prev) {
            chain_err = Some(format!("certificate {i}: {e}"));
        }
    }
    match chain_err {
        None => verdict.pass(
            "nitro.chain",
            format!("{} certificates chain to the root", chain.len()),
        ),
        Some(e) => verdict.fail("nitro.chain", e),
    }
    let expired: Vec<usize> = chain
        .iter()
        .enumerate()
        .filter(|(_, c)| !cert_dates_ok(c, now_unix))
        .map(|(i, _)| i)
        .collect();
    if expired.is_empty() {
        verdict.pass("nitro.cert_dates", "every certificate is valid now");
    } else {
        verdict.fail(
            "nitro.cert_dates",
            format!("certificates {expired:?} (0 = root) are outside their validity"),
        );
    }

    // 3. COSE signature with the leaf key.
    if !protected_alg_is_es384(&cose.protected) {
        verdict.fail("nitro.signature", "protected header alg is not ES384 (-35)");
    } else {
        use p384::ecdsa::signature::Verifier;
        let res = (|| {
            let key = leaf
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .as_bytes()
                .ok_or("leaf key has unused bits")?;
            let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(key)
                .map_err(|_| "leaf key is not a P-384 point")?;
            let sig = p384::ecdsa::Signature::from_slice(&cose.signature)
                .map_err(|_| "signature is not 96 bytes r||s")?;
            vk.verify(&sig_structure(&cose.protected, &cose.payload), &sig)
                .map_err(|_| "COSE signature does not verify")
        })();
        match res {
            Ok(()) => verdict.pass("nitro.signature", "ES384 signature by the leaf certificate"),
            Err(e) => verdict.fail("nitro.signature", e),
        }
    }

    // 4. Timestamp age.
    match humantime::parse_duration(&policy.max_age) {
        Ok(max) => {
            let now_ms = now_unix.saturating_mul(1000);
            let age_ms = now_ms.saturating_sub(doc.timestamp_ms);
            let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
            if doc.timestamp_ms > now_ms.saturating_add(FUTURE_SKEW_MS) {
                verdict.fail("nitro.timestamp", "timestamp is in the future");
            } else if age_ms > max_ms {
                verdict.fail(
                    "nitro.timestamp",
                    format!(
                        "document is {}s old, policy allows {}",
                        age_ms / 1000,
                        policy.max_age
                    ),
                );
            } else {
                verdict.pass(
                    "nitro.timestamp",
                    format!("document is {}s old", age_ms / 1000),
                );
            }
        }
        Err(e) => verdict.fail("nitro.timestamp", format!("policy max_age: {e}")),
    }

    // 5. Binding.
    bind_check(
        verdict,
        "nitro.nonce",
        "nonce",
        expect.nonce,
        doc.nonce.as_ref(),
    );
    bind_check(
        verdict,
        "nitro.public_key",
        "public key",
        expect.public_key,
        doc.public_key.as_ref(),
    );
    bind_check(
        verdict,
        "nitro.user_data",
        "user data",
        expect.user_data,
        doc.user_data.as_ref(),
    );

    // 6. PCRs.
    let pcr = |i: u64| doc.pcrs.iter().find(|(k, _)| *k == i).map(|(_, v)| v);
    if !doc.digest.eq_ignore_ascii_case("SHA384") {
        verdict.fail(
            "nitro.pcrs",
            format!("digest {:?} is not SHA384", doc.digest),
        );
        return;
    }
    match pcr(12) {
        Some(v) if v.as_slice() == PCR12_NO_OVERRIDE => {
            verdict.pass("nitro.pcr12_no_override", "PCR 12 is the no-override value")
        }
        Some(v) => verdict.fail(
            "nitro.pcr12_no_override",
            format!(
                "PCR 12 = {} (command line or other override measured)",
                hex::encode(v)
            ),
        ),
        None => verdict.fail("nitro.pcr12_no_override", "document carries no PCR 12"),
    }
    if !policy.pcrs.iter().any(|p| p.pcr == 4 || p.pcr == 7) {
        verdict
            .warnings
            .push("NitroTPM: no PCR 4 or 7 value required by policy (image not pinned)".into());
    }
    if policy.pcrs.is_empty() {
        verdict.skip("nitro.pcrs", "policy names no NitroTPM PCR values");
        return;
    }
    let mut bad = Vec::new();
    for p in &policy.pcrs {
        let allowed: Vec<Vec<u8>> = p
            .values
            .iter()
            .filter_map(|h| hex::decode(h.trim()).ok())
            .collect();
        match pcr(u64::from(p.pcr)) {
            Some(v) if allowed.iter().any(|a| a == v) => {}
            Some(v) => bad.push(format!("{}={}", p.pcr, hex::encode(v))),
            None => bad.push(format!("{} (absent)", p.pcr)),
        }
    }
    if bad.is_empty() {
        let idx: Vec<u8> = policy.pcrs.iter().map(|p| p.pcr).collect();
        verdict.pass(
            "nitro.pcrs",
            format!("PCRs {idx:?} are in the allowed sets"),
        );
    } else {
        verdict.fail(
            "nitro.pcrs",
            format!("PCRs outside the allowed sets: {bad:?}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_policy_parses_into_nitro_policy() {
        let path = format!(
            "{}/../../attestation/policies/aws-ec2-snp-nitrotpm.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let p = crate::Policy::from_bytes(&std::fs::read(path).unwrap()).unwrap();
        let n: NitroPolicy = p.section("nitro").unwrap().unwrap();
        assert_eq!(n.root_sha256, vec![AWS_NITRO_ROOT_G1_SHA256.to_string()]);
        assert!(n.pcrs.iter().any(|x| x.pcr == 4));
    }

    #[test]
    fn junk_never_panics() {
        for n in 0..200usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 131 + 7) as u8).collect();
            let mut v = Verdict::default();
            verify_nitro(
                &NitroEvidence { document: junk },
                &NitroPolicy::default(),
                NitroExpect::default(),
                0,
                &mut v,
            );
            assert!(!v.ok());
        }
    }
}
