//! TPM 2.0 quote verifier: judges a [`TpmEvidence`] (TPMS_ATTEST, TPMT_SIGNATURE, the AK's
//! TPMT_PUBLIC, the PCR values and the measured-boot event log) against a [`TpmPolicy`] and the
//! qualifying data the caller expects, appending one [`Check`](super::verdict::Check) per step.
//!
//! Trust path built here: **registered AK**. The attestation key is provisioned as a persistent
//! key before first boot and its TPM *Name* (`nameAlg ‖ H(TPMT_PUBLIC)`, what `tpm2_readpublic`
//! prints) is listed in the policy. Credential activation against an EK certificate is not
//! built (it needs one more KRP/1 round trip).
//!
//! The TPM wire structures (TPMS_ATTEST, TPMT_PUBLIC, TPMT_SIGNATURE) and the TCG PC Client
//! crypto-agile event log are parsed by hand on purpose: the verifier stays pure Rust, readable
//! by an auditor on its own, and never calls into the TSS C libraries with untrusted bytes.
//! Every parser is bounds-checked and returns an error on malformed input; nothing panics.

use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha384};
use subtle::ConstantTimeEq;

use super::verdict::Verdict;
pub use keyward_evidence::tpm::{
    tpm_name, Bank, TpmParseError, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE,
};
use keyward_evidence::tpm::{
    Reader, EV_NO_ACTION, TPMA_FIXED_TPM, TPMA_RESTRICTED, TPMA_SIGN, TPM_ALG_ECC, TPM_ALG_ECDSA,
    TPM_ALG_NULL, TPM_ALG_RSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA, TPM_ECC_NIST_P256,
    TPM_ECC_NIST_P384,
};
use keyward_evidence::TpmEvidence;

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// The `tpm` section of a policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TpmPolicy {
    /// TPM Names (hex, e.g. `000b…` for a SHA-256 name) of the registered attestation keys.
    /// A quote signed by any other key is refused.
    pub registered_aks: Vec<String>,
    /// PCR bank the quote must cover: `sha256` (default) or `sha384`.
    #[serde(default = "default_bank")]
    pub bank: String,
    /// PCR indices the quote must cover (all of them, in that bank).
    pub pcrs: Vec<u8>,
    /// PCRs that must replay from the event log. When absent: every quoted PCR among 0–9 and 12
    /// (what firmware and the systemd stub extend) that is not named in `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Vec<u8>>,
    /// PCRs extended from user space, compared with values computed from their expected
    /// extends (systemd 252 logs these only in the journal, never in the firmware log).
    #[serde(default)]
    pub userspace: Vec<UserspacePcr>,
    /// Allowed values per PCR: the quoted value must be one of them.
    #[serde(default)]
    pub allowed: Vec<AllowedPcr>,
}

fn default_bank() -> String {
    "sha256".into()
}

/// Expected user-space extends of one PCR. The expected value is: the replay of the event
/// log's events for that PCR (if any), then one extend with `H(word)` per entry of `words`
/// (what `systemd-pcrphase` does for PCR 11), then one extend per entry of `digests`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserspacePcr {
    pub pcr: u8,
    /// UTF-8 strings whose bank hash is extended, in order (e.g. `enter-initrd`).
    #[serde(default)]
    pub words: Vec<String>,
    /// Raw digests (hex, bank size) extended in order (e.g. the pins digest into PCR 15).
    #[serde(default)]
    pub digests: Vec<String>,
}

/// The allowed values of one PCR.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowedPcr {
    pub pcr: u8,
    /// Hex values.
    pub values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// A tiny big-endian / little-endian reader
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// TPM structures
// ---------------------------------------------------------------------------------------------

/// The parts of a TPMS_ATTEST (of type quote) the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub reset_count: u32,
    pub restart_count: u32,
    /// (bank algorithm id, selected PCR indices in ascending order), in quote order.
    pub selection: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
}

/// Parse a marshalled TPMS_ATTEST. The magic and type are returned, not judged, so that the
/// caller can report them as their own checks; a non-quote body is not parsed.
pub fn parse_attest(bytes: &[u8]) -> Result<QuoteAttest, TpmParseError> {
    let mut r = Reader::new(bytes, "TPMS_ATTEST");
    let magic = r.u32()?;
    let attest_type = r.u16()?;
    let qualified_signer = r.tpm2b()?.to_vec();
    let extra_data = r.tpm2b()?.to_vec();
    // TPMS_CLOCK_INFO: clock, resetCount, restartCount, safe.
    let _clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware_version = r.u64()?;
    let mut selection = Vec::new();
    let mut pcr_digest = Vec::new();
    if attest_type == TPM_ST_ATTEST_QUOTE {
        // TPMS_QUOTE_INFO: TPML_PCR_SELECTION, TPM2B_DIGEST.
        let count = r.u32()?;
        if count > 16 {
            return Err(TpmParseError::Malformed("too many PCR selections"));
        }
        for _ in 0..count {
            let alg = r.u16()?;
            let size = r.u8()? as usize;
            let bits = r.take(size)?;
            let mut pcrs = Vec::new();
            for (byte_i, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        // byte_i < 256 and bit < 8; index fits u8 only when < 256.
                        let idx = byte_i * 8 + bit;
                        let idx = u8::try_from(idx)
                            .map_err(|_| TpmParseError::Malformed("PCR index out of range"))?;
                        pcrs.push(idx);
                    }
                }
            }
            selection.push((alg, pcrs));
        }
        pcr_digest = r.tpm2b()?.to_vec();
        if !r.is_empty() {
            return Err(TpmParseError::Malformed(
                "trailing bytes after TPMS_QUOTE_INFO",
            ));
        }
    }
    Ok(QuoteAttest {
        magic,
        attest_type,
        qualified_signer,
        extra_data,
        reset_count,
        restart_count,
        selection,
        pcr_digest,
    })
}

/// An AK's public key, from its TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AkKey {
    /// Uncompressed SEC1 point on P-256 or P-384.
    Ecc {
        curve: u16,
        sec1: Vec<u8>,
    },
    Rsa {
        modulus: Vec<u8>,
        exponent: u32,
    },
}

/// The parts of an AK's TPMT_PUBLIC the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    pub name_alg: u16,
    pub attributes: u32,
    pub key: AkKey,
}

/// Parse a marshalled TPMT_PUBLIC (ECC or RSA signing key).
pub fn parse_public(bytes: &[u8]) -> Result<AkPublic, TpmParseError> {
    let mut r = Reader::new(bytes, "TPMT_PUBLIC");
    let kind = r.u16()?;
    let name_alg = r.u16()?;
    let attributes = r.u32()?;
    let _auth_policy = r.tpm2b()?;
    // Symmetric definition (TPMT_SYM_DEF_OBJECT): NULL for a signing key, else keyBits + mode.
    let sym = r.u16()?;
    if sym != TPM_ALG_NULL {
        r.u16()?;
        r.u16()?;
    }
    // Signing scheme: alg, then hash unless NULL.
    let scheme = r.u16()?;
    if scheme != TPM_ALG_NULL {
        r.u16()?;
    }
    let key = match kind {
        TPM_ALG_ECC => {
            let curve = r.u16()?;
            let kdf = r.u16()?;
            if kdf != TPM_ALG_NULL {
                r.u16()?;
            }
            let x = r.tpm2b()?;
            let y = r.tpm2b()?;
            let size = match curve {
                TPM_ECC_NIST_P256 => 32,
                TPM_ECC_NIST_P384 => 48,
                other => {
                    return Err(TpmParseError::Unsupported {
                        what: "ECC curve",
                        value: other.into(),
                    })
                }
            };
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&left_pad(x, size)?);
            sec1.extend_from_slice(&left_pad(y, size)?);
            AkKey::Ecc { curve, sec1 }
        }
        TPM_ALG_RSA => {
            let _bits = r.u16()?;
            let exponent = match r.u32()? {
                0 => 65537,
                e => e,
            };
            let modulus = r.tpm2b()?.to_vec();
            AkKey::Rsa { modulus, exponent }
        }
        other => {
            return Err(TpmParseError::Unsupported {
                what: "key type",
                value: other.into(),
            })
        }
    };
    if !r.is_empty() {
        return Err(TpmParseError::Malformed("trailing bytes after TPMT_PUBLIC"));
    }
    Ok(AkPublic {
        name_alg,
        attributes,
        key,
    })
}

fn left_pad(v: &[u8], size: usize) -> Result<Vec<u8>, TpmParseError> {
    // Strip leading zeros beyond `size`, then left-pad.
    let v = if v.len() > size {
        let (extra, rest) = v.split_at(v.len() - size);
        if extra.iter().any(|b| *b != 0) {
            return Err(TpmParseError::Malformed("coordinate too long"));
        }
        rest
    } else {
        v
    };
    let mut out = vec![0u8; size - v.len()];
    out.extend_from_slice(v);
    Ok(out)
}

/// A TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSignature {
    Ecdsa { hash: u16, r: Vec<u8>, s: Vec<u8> },
    RsaSsa { hash: u16, sig: Vec<u8> },
    RsaPss { hash: u16, sig: Vec<u8> },
}

/// Parse a marshalled TPMT_SIGNATURE.
pub fn parse_signature(bytes: &[u8]) -> Result<TpmSignature, TpmParseError> {
    let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
    let alg = r.u16()?;
    let hash = r.u16()?;
    let sig = match alg {
        TPM_ALG_ECDSA => {
            let rr = r.tpm2b()?.to_vec();
            let ss = r.tpm2b()?.to_vec();
            TpmSignature::Ecdsa { hash, r: rr, s: ss }
        }
        TPM_ALG_RSASSA => TpmSignature::RsaSsa {
            hash,
            sig: r.tpm2b()?.to_vec(),
        },
        TPM_ALG_RSAPSS => TpmSignature::RsaPss {
            hash,
            sig: r.tpm2b()?.to_vec(),
        },
        other => {
            return Err(TpmParseError::Unsupported {
                what: "signature algorithm",
                value: other.into(),
            })
        }
    };
    if !r.is_empty() {
        return Err(TpmParseError::Malformed(
            "trailing bytes after TPMT_SIGNATURE",
        ));
    }
    Ok(sig)
}

impl TpmSignature {
    fn hash_alg(&self) -> u16 {
        match self {
            TpmSignature::Ecdsa { hash, .. }
            | TpmSignature::RsaSsa { hash, .. }
            | TpmSignature::RsaPss { hash, .. } => *hash,
        }
    }
}

/// Verify `sig` over `message` with the AK `key`. Returns a reason on failure.
pub fn verify_signature(key: &AkKey, sig: &TpmSignature, message: &[u8]) -> Result<(), String> {
    let bank = Bank::from_alg(sig.hash_alg())
        .ok_or_else(|| format!("unsupported signature hash 0x{:04x}", sig.hash_alg()))?;
    let digest = bank.hash(message);
    match (key, sig) {
        (AkKey::Ecc { curve, sec1 }, TpmSignature::Ecdsa { r, s, .. }) => match *curve {
            TPM_ECC_NIST_P256 => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                    .map_err(|_| "AK is not a valid P-256 point".to_string())?;
                let (r, s) = (
                    left_pad(r, 32).map_err(|e| e.to_string())?,
                    left_pad(s, 32).map_err(|e| e.to_string())?,
                );
                let sig = p256::ecdsa::Signature::from_scalars(
                    *p256::FieldBytes::from_slice(&r),
                    *p256::FieldBytes::from_slice(&s),
                )
                .map_err(|_| "ECDSA r/s out of range".to_string())?;
                vk.verify_prehash(&digest, &sig)
                    .map_err(|_| "ECDSA P-256 signature does not verify".to_string())
            }
            TPM_ECC_NIST_P384 => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                    .map_err(|_| "AK is not a valid P-384 point".to_string())?;
                let (r, s) = (
                    left_pad(r, 48).map_err(|e| e.to_string())?,
                    left_pad(s, 48).map_err(|e| e.to_string())?,
                );
                let sig = p384::ecdsa::Signature::from_scalars(
                    *p384::FieldBytes::from_slice(&r),
                    *p384::FieldBytes::from_slice(&s),
                )
                .map_err(|_| "ECDSA r/s out of range".to_string())?;
                vk.verify_prehash(&digest, &sig)
                    .map_err(|_| "ECDSA P-384 signature does not verify".to_string())
            }
            other => Err(format!("unsupported curve 0x{other:04x}")),
        },
        (AkKey::Rsa { modulus, exponent }, TpmSignature::RsaSsa { sig: s, .. })
        | (AkKey::Rsa { modulus, exponent }, TpmSignature::RsaPss { sig: s, .. }) => {
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| "AK is not a valid RSA key".to_string())?;
            let pss = matches!(sig, TpmSignature::RsaPss { .. });
            let res = match (bank, pss) {
                (Bank::Sha256, false) => key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, s),
                (Bank::Sha384, false) => key.verify(rsa::Pkcs1v15Sign::new::<Sha384>(), &digest, s),
                // TPM 2.0 RSAPSS uses a salt as long as the digest.
                (Bank::Sha256, true) => key.verify(rsa::Pss::new::<Sha256>(), &digest, s),
                (Bank::Sha384, true) => key.verify(rsa::Pss::new::<Sha384>(), &digest, s),
            };
            res.map_err(|_| "RSA signature does not verify".to_string())
        }
        _ => Err("signature algorithm does not match the AK type".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Event log (TCG PC Client Platform Firmware Profile, crypto-agile format)
// ---------------------------------------------------------------------------------------------

/// One event of a crypto-agile log, with its digest in the bank asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub pcr: u32,
    pub event_type: u32,
    pub digest: Vec<u8>,
    pub data: Vec<u8>,
}

/// A parsed event log, restricted to one bank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventLog {
    pub events: Vec<LogEvent>,
    /// Locality from a `StartupLocality` EV_NO_ACTION event (PCR 0's initial value), if any.
    pub startup_locality: Option<u8>,
}

/// Parse a crypto-agile TCG event log (the first event is the SHA-1-format `Spec ID Event03`
/// header naming the digest sizes) and keep each event's digest for `bank`.
pub fn parse_event_log(bytes: &[u8], bank: Bank) -> Result<EventLog, TpmParseError> {
    let mut r = Reader::new(bytes, "event log");
    // TCG_PCClientPCREvent header: pcrIndex, eventType, SHA-1 digest, eventSize, event.
    let _pcr = r.u32le()?;
    let ty = r.u32le()?;
    r.take(20)?;
    let size = r.u32le()? as usize;
    let spec = r.take(size)?;
    // TCG_EfiSpecIDEvent: signature[16], platformClass u32, versions 3×u8, uintnSize u8,
    // numberOfAlgorithms u32, then {algorithmId u16, digestSize u16}.
    let algorithms = match spec.split_at_checked(24) {
        Some((head, rest)) if ty == EV_NO_ACTION && head.starts_with(b"Spec ID Event03\0") => rest,
        _ => {
            return Err(TpmParseError::Malformed(
                "not a crypto-agile log (no Spec ID Event03 header)",
            ))
        }
    };
    let mut s = Reader::new(algorithms, "Spec ID event");
    let n = s.u32le()?;
    if n == 0 || n > 16 {
        return Err(TpmParseError::Malformed(
            "bad algorithm count in Spec ID event",
        ));
    }
    let mut sizes = Vec::new();
    for _ in 0..n {
        let alg = s.u16le()?;
        let sz = s.u16le()? as usize;
        sizes.push((alg, sz));
    }
    if !sizes.iter().any(|(a, _)| *a == bank.alg_id()) {
        return Err(TpmParseError::Malformed(
            "the log has no digests for this bank",
        ));
    }
    let mut log = EventLog::default();
    while !r.is_empty() {
        let pcr = r.u32le()?;
        let event_type = r.u32le()?;
        let count = r.u32le()?;
        if count > 16 {
            return Err(TpmParseError::Malformed("too many digests in one event"));
        }
        let mut digest = None;
        for _ in 0..count {
            let alg = r.u16le()?;
            let sz = sizes
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, s)| *s)
                .ok_or(TpmParseError::Unsupported {
                    what: "event digest algorithm",
                    value: alg.into(),
                })?;
            let d = r.take(sz)?;
            if alg == bank.alg_id() {
                digest = Some(d.to_vec());
            }
        }
        let size = r.u32le()? as usize;
        let data = r.take(size)?.to_vec();
        if event_type == EV_NO_ACTION {
            if pcr == 0 {
                if let Some(&locality) = data
                    .strip_prefix(b"StartupLocality\0")
                    .and_then(|d| d.first())
                {
                    log.startup_locality = Some(locality);
                }
            }
            continue;
        }
        let digest = digest.ok_or(TpmParseError::Malformed("event lacks the bank's digest"))?;
        if digest.len() != bank.size() {
            return Err(TpmParseError::Malformed("event digest has the wrong size"));
        }
        log.events.push(LogEvent {
            pcr,
            event_type,
            digest,
            data,
        });
    }
    Ok(log)
}

impl EventLog {
    /// Replay the log's events for `pcr` from the PCR's reset value.
    pub fn replay(&self, pcr: u8, bank: Bank) -> Vec<u8> {
        let mut value = vec![0u8; bank.size()];
        if pcr == 0 {
            if let (Some(loc), Some(last)) = (self.startup_locality, value.last_mut()) {
                *last = loc;
            }
        }
        for e in self.events.iter().filter(|e| e.pcr == u32::from(pcr)) {
            value = bank.extend(&value, &e.digest);
        }
        value
    }
}

/// Build a crypto-agile event log (header plus events) with digests in `bank` only. Used by
/// tests and by tools that synthesise reference logs; the format is the one firmware writes.
pub fn build_event_log(bank: Bank, events: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass
    spec.extend_from_slice(&[0, 2, 0, 2]); // versions 2.0 rev 0, uintnSize 2 (64-bit)
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&bank.alg_id().to_le_bytes());
    spec.extend_from_slice(&(bank.size() as u16).to_le_bytes());
    spec.push(0); // vendorInfoSize
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for (pcr, ty, data) in events {
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&bank.alg_id().to_le_bytes());
        out.extend_from_slice(&bank.hash(data));
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------------------------

fn find_pcr(ev: &TpmEvidence, bank: Bank, idx: u8) -> Option<&[u8]> {
    ev.pcrs
        .iter()
        .find(|p| Bank::from_name(&p.bank) == Some(bank) && p.index == idx)
        .map(|p| p.value.as_slice())
}

fn decode_hex_list(v: &[String]) -> Result<Vec<Vec<u8>>, String> {
    v.iter()
        .map(|s| hex::decode(s.trim()).map_err(|_| format!("bad hex value in policy: {s}")))
        .collect()
}

/// The `verify_bundle` entry point: reads the policy's `[tpm]` section and the expected
/// qualifying data, then runs [`verify_tpm`]. A policy without a `[tpm]` section registers no
/// AK, so TPM evidence under it fails (fail-closed).
pub fn verify(
    ev: &TpmEvidence,
    policy: &super::Policy,
    expect: &super::Expectations,
    _at_secs: u64,
    verdict: &mut Verdict,
) {
    match policy.section::<TpmPolicy>("tpm") {
        Ok(Some(p)) => verify_tpm(ev, &p, expect.qualifying_data.as_deref(), verdict),
        Ok(None) => verdict.fail(
            "tpm.policy",
            "TPM evidence present but the policy has no [tpm] section (no registered AK)",
        ),
        Err(e) => verdict.fail("tpm.policy", format!("policy [tpm] section: {e}")),
    }
}

/// Verify a TPM quote. Every step appends a `tpm.*` check to `verdict`; a step whose input is
/// missing because an earlier step failed is recorded as skipped. `expected_extra_data` is the
/// qualifying data the caller bound the quote to (KRP/1's T, or the live-attestation value).
pub fn verify_tpm(
    ev: &TpmEvidence,
    policy: &TpmPolicy,
    expected_extra_data: Option<&[u8]>,
    verdict: &mut Verdict,
) {
    // 1. AK trust: its Name is registered.
    let ak = match parse_public(&ev.ak_public) {
        Ok(ak) => ak,
        Err(e) => {
            verdict.fail("tpm.ak_public", format!("AK public area: {e}"));
            return;
        }
    };
    let name = match tpm_name(&ev.ak_public) {
        Ok(n) => n,
        Err(e) => {
            verdict.fail("tpm.ak_public", format!("AK name: {e}"));
            return;
        }
    };
    let name_hex = hex::encode(&name);
    if policy
        .registered_aks
        .iter()
        .any(|r| r.trim().eq_ignore_ascii_case(&name_hex))
    {
        verdict.pass(
            "tpm.ak_trusted",
            format!("AK name {name_hex} is registered in the policy"),
        );
    } else {
        verdict.fail(
            "tpm.ak_trusted",
            format!("AK name {name_hex} is not registered in the policy"),
        );
    }
    let need = TPMA_FIXED_TPM | TPMA_RESTRICTED | TPMA_SIGN;
    if ak.attributes & need == need {
        verdict.pass(
            "tpm.ak_attributes",
            "AK is a fixedTPM restricted signing key",
        );
    } else {
        verdict.fail(
            "tpm.ak_attributes",
            format!(
                "AK attributes 0x{:08x} lack fixedTPM|restricted|sign",
                ak.attributes
            ),
        );
    }

    // 2. Signature over the raw TPMS_ATTEST bytes.
    match parse_signature(&ev.signature) {
        Ok(sig) => match verify_signature(&ak.key, &sig, &ev.attest) {
            Ok(()) => verdict.pass("tpm.signature", "quote signature verifies with the AK"),
            Err(e) => verdict.fail("tpm.signature", e),
        },
        Err(e) => verdict.fail("tpm.signature", format!("TPMT_SIGNATURE: {e}")),
    }
    let sig_bank = parse_signature(&ev.signature)
        .ok()
        .and_then(|s| Bank::from_alg(s.hash_alg()));

    // 3. TPMS_ATTEST structure.
    let attest = match parse_attest(&ev.attest) {
        Ok(a) => a,
        Err(e) => {
            verdict.fail("tpm.attest", format!("TPMS_ATTEST: {e}"));
            return;
        }
    };
    if attest.magic == TPM_GENERATED_VALUE {
        verdict.pass("tpm.attest_magic", "TPM_GENERATED_VALUE (0xff544347)");
    } else {
        verdict.fail(
            "tpm.attest_magic",
            format!("magic 0x{:08x}, not 0xff544347", attest.magic),
        );
    }
    if attest.attest_type == TPM_ST_ATTEST_QUOTE {
        verdict.pass("tpm.attest_type", "TPM_ST_ATTEST_QUOTE (0x8018)");
    } else {
        verdict.fail(
            "tpm.attest_type",
            format!("type 0x{:04x}, not a quote (0x8018)", attest.attest_type),
        );
        return;
    }
    let Some(expected_extra_data) = expected_extra_data else {
        verdict.skip("tpm.extra_data", "no expected qualifying data given");
        verdict
            .warnings
            .push("TPM: quote freshness not checked (no expected qualifying data)".into());
        return verify_pcrs(ev, policy, &attest, sig_bank, verdict);
    };
    if bool::from(attest.extra_data.ct_eq(expected_extra_data)) {
        verdict.pass(
            "tpm.extra_data",
            "qualifying data equals the expected binding",
        );
    } else {
        verdict.fail(
            "tpm.extra_data",
            "qualifying data differs from the expected binding (stale or foreign quote)",
        );
    }
    verify_pcrs(ev, policy, &attest, sig_bank, verdict)
}

/// Steps 4-7: selection, PCR digest, replay, user-space comparison, allowed sets.
fn verify_pcrs(
    ev: &TpmEvidence,
    policy: &TpmPolicy,
    attest: &QuoteAttest,
    sig_bank: Option<Bank>,
    verdict: &mut Verdict,
) {
    // 4. The selection covers the policy's PCRs in its bank.
    let Some(bank) = Bank::from_name(&policy.bank) else {
        verdict.fail(
            "tpm.pcr_selection",
            format!("policy bank {:?} is not sha256 or sha384", policy.bank),
        );
        return;
    };
    let quoted: Vec<u8> = attest
        .selection
        .iter()
        .filter(|(a, _)| *a == bank.alg_id())
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    let missing: Vec<u8> = policy
        .pcrs
        .iter()
        .copied()
        .filter(|p| !quoted.contains(p))
        .collect();
    if missing.is_empty() {
        verdict.pass(
            "tpm.pcr_selection",
            format!("quote covers {} PCRs {:?}", bank.name(), policy.pcrs),
        );
    } else {
        verdict.fail(
            "tpm.pcr_selection",
            format!("quote lacks {} PCRs {missing:?}", bank.name()),
        );
    }

    // 5. PCR digest = H_sig(concatenation of the quoted PCR values, in selection order).
    let Some(sig_bank) = sig_bank else {
        verdict.skip("tpm.pcr_digest", "no usable signature hash algorithm");
        return;
    };
    let mut concat = Vec::new();
    let mut absent = Vec::new();
    for (alg, pcrs) in &attest.selection {
        let Some(b) = Bank::from_alg(*alg) else {
            absent.push(format!("bank 0x{alg:04x}"));
            continue;
        };
        for p in pcrs {
            match find_pcr(ev, b, *p) {
                Some(v) if v.len() == b.size() => concat.extend_from_slice(v),
                _ => absent.push(format!("{}:{p}", b.name())),
            }
        }
    }
    if !absent.is_empty() {
        verdict.fail(
            "tpm.pcr_digest",
            format!("quoted PCR values missing from the evidence: {absent:?}"),
        );
        return;
    }
    if bool::from(sig_bank.hash(&concat).ct_eq(&attest.pcr_digest)) {
        verdict.pass(
            "tpm.pcr_digest",
            "pcrDigest equals the hash of the PCR values supplied",
        );
    } else {
        verdict.fail(
            "tpm.pcr_digest",
            "pcrDigest does not match the PCR values supplied",
        );
        return;
    }

    // 6. Replay firmware/stub PCRs from the event log; compare user-space PCRs.
    let user_pcrs: Vec<u8> = policy.userspace.iter().map(|u| u.pcr).collect();
    let replay_set: Vec<u8> = match &policy.replay {
        Some(r) => r.clone(),
        None => quoted
            .iter()
            .copied()
            .filter(|p| (*p <= 9 || *p == 12) && !user_pcrs.contains(p))
            .collect(),
    };
    let log = match &ev.event_log {
        Some(bytes) => match parse_event_log(bytes, bank) {
            Ok(l) => {
                verdict.pass(
                    "tpm.event_log",
                    format!(
                        "{} measured events in the {} bank",
                        l.events.len(),
                        bank.name()
                    ),
                );
                Some(l)
            }
            Err(e) => {
                verdict.fail("tpm.event_log", format!("event log: {e}"));
                None
            }
        },
        None if replay_set.is_empty() => {
            verdict.skip("tpm.event_log", "no event log and nothing to replay");
            None
        }
        None => {
            verdict.fail(
                "tpm.event_log",
                format!("no event log, but PCRs {replay_set:?} must be replayed"),
            );
            None
        }
    };
    if let Some(log) = &log {
        let mut bad = Vec::new();
        for p in &replay_set {
            let Some(v) = find_pcr(ev, bank, *p).filter(|_| quoted.contains(p)) else {
                bad.push(format!("{p} (not quoted)"));
                continue;
            };
            if log.replay(*p, bank) != v {
                bad.push(format!("{p}"));
            }
        }
        if replay_set.is_empty() {
            verdict.skip("tpm.replay", "no PCR to replay");
        } else if bad.is_empty() {
            verdict.pass(
                "tpm.replay",
                format!("replayed from the event log: PCRs {replay_set:?}"),
            );
        } else {
            verdict.fail(
                "tpm.replay",
                format!("event log does not replay to the quoted value of PCRs {bad:?}"),
            );
        }
    } else if !replay_set.is_empty() {
        verdict.skip("tpm.replay", "no usable event log");
    }

    if policy.userspace.is_empty() {
        verdict.skip("tpm.userspace", "policy names no user-space PCR");
    } else {
        let mut bad = Vec::new();
        for u in &policy.userspace {
            let mut value = match &log {
                Some(l) => l.replay(u.pcr, bank),
                None => vec![0u8; bank.size()],
            };
            for w in &u.words {
                value = bank.extend(&value, &bank.hash(w.as_bytes()));
            }
            let digests = match decode_hex_list(&u.digests) {
                Ok(d) => d,
                Err(e) => {
                    bad.push(format!("{}: {e}", u.pcr));
                    continue;
                }
            };
            for d in digests {
                value = bank.extend(&value, &d);
            }
            match find_pcr(ev, bank, u.pcr).filter(|_| quoted.contains(&u.pcr)) {
                Some(v) if v == value.as_slice() => {}
                Some(_) => bad.push(format!("{} (value differs)", u.pcr)),
                None => bad.push(format!("{} (not quoted)", u.pcr)),
            }
        }
        if bad.is_empty() {
            verdict.pass(
                "tpm.userspace",
                format!("compared with expected user-space extends: PCRs {user_pcrs:?}"),
            );
        } else {
            verdict.fail(
                "tpm.userspace",
                format!("user-space PCRs differ from the expected extends: {bad:?}"),
            );
        }
    }

    // 7. Allowed value sets.
    if policy.allowed.is_empty() {
        verdict.skip("tpm.pcr_allowed", "policy names no allowed PCR values");
        verdict
            .warnings
            .push("TPM: no PCR value set required by policy".into());
    } else {
        let mut bad = Vec::new();
        for a in &policy.allowed {
            let allowed = match decode_hex_list(&a.values) {
                Ok(v) => v,
                Err(e) => {
                    bad.push(format!("{}: {e}", a.pcr));
                    continue;
                }
            };
            match find_pcr(ev, bank, a.pcr).filter(|_| quoted.contains(&a.pcr)) {
                Some(v) if allowed.iter().any(|x| x.as_slice() == v) => {}
                Some(v) => bad.push(format!("{}={}", a.pcr, hex::encode(v))),
                None => bad.push(format!("{} (not quoted)", a.pcr)),
            }
        }
        if bad.is_empty() {
            let idx: Vec<u8> = policy.allowed.iter().map(|a| a.pcr).collect();
            verdict.pass(
                "tpm.pcr_allowed",
                format!("PCRs {idx:?} are in the policy's allowed sets"),
            );
        } else {
            verdict.fail(
                "tpm.pcr_allowed",
                format!("PCR values outside the allowed sets: {bad:?}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_log_roundtrip_and_replay() {
        let events = vec![
            (4u32, 0x8000_0007u32, b"Calling EFI Application".to_vec()),
            (4, 4, vec![0, 0, 0, 0]),
            (12, 13, b"cmdline".to_vec()),
        ];
        let log = build_event_log(Bank::Sha256, &events);
        let parsed = parse_event_log(&log, Bank::Sha256).unwrap();
        assert_eq!(parsed.events.len(), 3);
        let mut v = vec![0u8; 32];
        v = Bank::Sha256.extend(&v, &Bank::Sha256.hash(&events[0].2));
        v = Bank::Sha256.extend(&v, &Bank::Sha256.hash(&events[1].2));
        assert_eq!(parsed.replay(4, Bank::Sha256), v);
        assert_eq!(parsed.replay(5, Bank::Sha256), vec![0u8; 32]);
        // The SHA-384 bank is absent from this log.
        assert!(parse_event_log(&log, Bank::Sha384).is_err());
    }

    #[test]
    fn example_policies_parse_into_tpm_policy() {
        let path = format!(
            "{}/../../attestation/policies/tpm-only.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        let p = crate::Policy::from_bytes(&bytes).unwrap();
        let t: TpmPolicy = p.section("tpm").unwrap().unwrap();
        assert_eq!(t.bank, "sha256");
        assert!(!t.registered_aks.is_empty());
        assert_eq!(t.userspace[0].pcr, 11);
    }

    #[test]
    fn startup_locality_sets_pcr0_initial_value() {
        let mut loc = b"StartupLocality\0".to_vec();
        loc.push(3);
        let log = build_event_log(
            Bank::Sha256,
            &[(0, EV_NO_ACTION, loc), (0, 1, b"crtm".to_vec())],
        );
        let parsed = parse_event_log(&log, Bank::Sha256).unwrap();
        assert_eq!(parsed.startup_locality, Some(3));
        assert_eq!(parsed.events.len(), 1, "EV_NO_ACTION is not extended");
        let mut init = vec![0u8; 32];
        init[31] = 3;
        let want = Bank::Sha256.extend(&init, &Bank::Sha256.hash(b"crtm"));
        assert_eq!(parsed.replay(0, Bank::Sha256), want);
    }

    #[test]
    fn malformed_inputs_never_panic() {
        let log = build_event_log(Bank::Sha256, &[(0, 1, vec![1, 2, 3])]);
        for cut in 0..log.len() {
            let _ = parse_event_log(&log[..cut], Bank::Sha256);
        }
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_attest(&junk);
            let _ = parse_public(&junk);
            let _ = parse_signature(&junk);
            let _ = tpm_name(&junk);
        }
    }
}
