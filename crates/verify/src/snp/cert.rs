//! X.509 certificates and CRLs of the AMD SEV-SNP key hierarchy (ARK, ASK/ASVK, VCEK/VLEK):
//! parsing (DER or PEM, chains in one file), RSA-PSS-SHA384 (salt 48) signature checks over
//! the *received* TBS bytes, validity dates, and AMD's VEK extensions.
//!
//! Built on `x509-cert` for the types; the signed bytes are taken from the input as received
//! (never re-encoded) by decoding the outer SEQUENCE into raw `AnyRef`s.

use der::asn1::{AnyRef, BitStringRef, Ia5StringRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Sequence};
use rsa::pkcs1::RsaPssParams;
use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::crl::TbsCertList;
use x509_cert::{Certificate, TbsCertificate};

/// id-RSASSA-PSS
pub(crate) const OID_RSA_PSS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// AMD's VEK extension OIDs (1.3.6.1.4.1.3704.1.x).
pub mod amd_oid {
    use der::asn1::ObjectIdentifier;
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    pub const CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");
}

/// Why a certificate or CRL is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// What is wrong with the encoding, in words (PEM framing, unused bits).
    #[error("not a DER or PEM certificate: {0}")]
    Parse(String),
    /// A PEM block does not decode (kept typed; without its `std` feature the PEM decoder's
    /// error is not a `std::error::Error`, so it cannot be the source).
    #[error("not a DER or PEM certificate: PEM: {0}")]
    Pem(der::pem::Error),
    /// The DER does not decode (or re-encode) as a certificate or CRL.
    #[error("not a DER or PEM certificate: {0}")]
    Der(#[source] der::Error),
    #[error("unsupported public key: {0}")]
    Key(String),
    #[error("unsupported public key: {0}")]
    KeyDer(#[source] der::Error),
    #[error("signature algorithm is not RSA-PSS with SHA-384, MGF1-SHA-384, salt 48: {0}")]
    Algorithm(String),
    #[error("signature algorithm is not RSA-PSS with SHA-384, MGF1-SHA-384, salt 48: {0}")]
    AlgorithmDer(#[source] der::Error),
    #[error("signature does not verify")]
    Signature,
    #[error("extension {0}: {1}")]
    Extension(String, String),
    /// An extension's value is not the DER it should be (the OID, and the decoder's error).
    #[error("extension {0}: {1}")]
    ExtensionDer(String, #[source] der::Error),
}

/// The outer SEQUENCE of a certificate or CRL, with the signed part kept as raw bytes.
#[derive(Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

struct SignedParts {
    tbs_raw: Vec<u8>,
    signature: Vec<u8>,
}

fn split_signed(der: &[u8]) -> Result<SignedParts, CertError> {
    let s = Signed::from_der(der).map_err(CertError::Der)?;
    // AnyRef keeps the value bytes as received and DER lengths are minimal (der enforces it on
    // decode), so tag + length + value re-assembles the exact received TBS encoding.
    let tbs_raw = s.tbs.to_der().map_err(CertError::Der)?;
    let signature = s
        .signature
        .as_bytes()
        .ok_or_else(|| CertError::Parse("signature BIT STRING has unused bits".into()))?
        .to_vec();
    // `s.algorithm` is read from the typed parse (`Certificate`/`CertificateList`) instead.
    let _ = s.algorithm;
    Ok(SignedParts { tbs_raw, signature })
}

/// Check that `alg` is RSASSA-PSS with SHA-384, MGF1(SHA-384), salt 48, trailer 1.
fn check_pss_alg(alg: &spki::AlgorithmIdentifierOwned) -> Result<(), CertError> {
    if alg.oid != OID_RSA_PSS {
        return Err(CertError::Algorithm(format!("algorithm {}", alg.oid)));
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| CertError::Algorithm("no PSS parameters".into()))?;
    let der = params.to_der().map_err(CertError::AlgorithmDer)?;
    let p = RsaPssParams::from_der(&der).map_err(CertError::AlgorithmDer)?;
    let mgf_hash = p.mask_gen.parameters.as_ref().map(|a| a.oid);
    if p.hash.oid != OID_SHA384
        || p.mask_gen.oid != OID_MGF1
        || mgf_hash != Some(OID_SHA384)
        || p.salt_len != 48
        || p.trailer_field != rsa::pkcs1::TrailerField::BC
    {
        return Err(CertError::Algorithm(format!(
            "hash {}, mgf {} ({:?}), salt {}",
            p.hash.oid, p.mask_gen.oid, mgf_hash, p.salt_len
        )));
    }
    Ok(())
}

/// RSA-PSS-SHA384 (salt 48) verification of `msg` under `key`.
fn verify_pss(key: &RsaPublicKey, msg: &[u8], sig: &[u8]) -> Result<(), CertError> {
    use rsa::signature::Verifier;
    let vk = rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key.clone(), 48);
    let sig = rsa::pss::Signature::try_from(sig).map_err(|_| CertError::Signature)?;
    vk.verify(msg, &sig).map_err(|_| CertError::Signature)
}

/// A subject public key this verifier uses.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// One parsed certificate plus its exact bytes.
#[derive(Debug, Clone)]
pub struct Cert {
    der: Vec<u8>,
    tbs_raw: Vec<u8>,
    signature: Vec<u8>,
    cert: Certificate,
}

impl Cert {
    /// Parse one DER certificate. Serial numbers of 0 (real VCEKs and VLEKs) are accepted.
    pub fn from_der(der: &[u8]) -> Result<Cert, CertError> {
        let parts = split_signed(der)?;
        let cert = Certificate::from_der(der).map_err(CertError::Der)?;
        Ok(Cert {
            der: der.to_vec(),
            tbs_raw: parts.tbs_raw,
            signature: parts.signature,
            cert,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }
    pub fn tbs(&self) -> &TbsCertificate {
        &self.cert.tbs_certificate
    }
    /// SHA-256 of the DER (the fingerprint roots are pinned by).
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }
    pub fn subject_cn(&self) -> String {
        cn(&self.tbs().subject).unwrap_or_default()
    }
    pub fn issuer_cn(&self) -> String {
        cn(&self.tbs().issuer).unwrap_or_default()
    }
    /// Issuer name equals subject name (a root, or a would-be root).
    pub fn is_self_issued(&self) -> bool {
        self.tbs().issuer == self.tbs().subject
    }
    /// This certificate's issuer is `other`'s subject.
    pub fn issued_by_name(&self, other: &Cert) -> bool {
        self.tbs().issuer == other.tbs().subject
    }
    /// Serial number bytes (DER INTEGER contents; `[0]` for serial 0).
    pub fn serial(&self) -> &[u8] {
        self.tbs().serial_number.as_bytes()
    }
    /// Human-readable serial (hex).
    pub fn serial_hex(&self) -> String {
        hex::encode(self.serial())
    }

    /// The subject public key, when it is RSA or EC P-384.
    pub fn public_key(&self) -> Result<PublicKey, CertError> {
        let spki = self
            .tbs()
            .subject_public_key_info
            .to_der()
            .map_err(CertError::KeyDer)?;
        if let Ok(k) = RsaPublicKey::from_public_key_der(&spki) {
            return Ok(PublicKey::Rsa(k));
        }
        p384::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map(PublicKey::P384)
            .map_err(|_| {
                CertError::Key(format!(
                    "{} (only RSA and EC P-384 are used by AMD)",
                    self.tbs().subject_public_key_info.algorithm.oid
                ))
            })
    }

    /// Check that `issuer_key` signed this certificate with RSA-PSS-SHA384 (salt 48).
    pub fn verify_signed_by(&self, issuer_key: &RsaPublicKey) -> Result<(), CertError> {
        check_pss_alg(&self.cert.signature_algorithm)?;
        if self.cert.signature_algorithm != self.tbs().signature {
            return Err(CertError::Algorithm(
                "outer and inner signature algorithms differ".into(),
            ));
        }
        verify_pss(issuer_key, &self.tbs_raw, &self.signature)
    }

    /// notBefore and notAfter as Unix seconds.
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.tbs().validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }
    /// `Ok` when `at` (Unix seconds) is inside the validity period.
    pub fn valid_at(&self, at: u64) -> Result<(), String> {
        let (nb, na) = self.validity();
        if at < nb {
            Err(format!("not valid before {}", fmt_time(nb)))
        } else if at > na {
            Err(format!("expired {}", fmt_time(na)))
        } else {
            Ok(())
        }
    }
    /// "notBefore .. notAfter" for verdict details.
    pub fn validity_text(&self) -> String {
        let (nb, na) = self.validity();
        format!("{} .. {}", fmt_time(nb), fmt_time(na))
    }

    /// The raw value (contents of extnValue) of an extension, if present exactly once.
    pub fn extension(&self, oid: &ObjectIdentifier) -> Result<Option<&[u8]>, CertError> {
        let mut found = None;
        for e in self.tbs().extensions.iter().flatten() {
            if &e.extn_id == oid {
                if found.is_some() {
                    return Err(CertError::Extension(oid.to_string(), "repeated".into()));
                }
                found = Some(e.extn_value.as_bytes());
            }
        }
        Ok(found)
    }

    /// An SPL extension (DER INTEGER 0..=255).
    pub fn spl(&self, oid: &ObjectIdentifier) -> Result<Option<u8>, CertError> {
        match self.extension(oid)? {
            None => Ok(None),
            Some(v) => u8::from_der(v)
                .map(Some)
                .map_err(|e| CertError::ExtensionDer(oid.to_string(), e)),
        }
    }

    /// An IA5String extension (product name, CSP id).
    pub fn ia5(&self, oid: &ObjectIdentifier) -> Result<Option<String>, CertError> {
        match self.extension(oid)? {
            None => Ok(None),
            Some(v) => Ia5StringRef::from_der(v)
                .map(|s| Some(s.to_string()))
                .map_err(|e| CertError::ExtensionDer(oid.to_string(), e)),
        }
    }

    /// The hwID extension: raw bytes (KDS's old encoding) or a DER OCTET STRING (new one).
    pub fn hw_id(&self) -> Result<Option<Vec<u8>>, CertError> {
        let Some(v) = self.extension(&amd_oid::HW_ID)? else {
            return Ok(None);
        };
        if v.len() == 64 || v.len() == 8 {
            return Ok(Some(v.to_vec()));
        }
        OctetStringRef::from_der(v)
            .map(|o| Some(o.as_bytes().to_vec()))
            .map_err(|e| CertError::Extension(amd_oid::HW_ID.to_string(), e.to_string()))
    }
}

/// A parsed CRL plus its exact signed bytes.
#[derive(Debug, Clone)]
pub struct Crl {
    tbs_raw: Vec<u8>,
    signature: Vec<u8>,
    list: x509_cert::crl::CertificateList,
}

impl Crl {
    pub fn from_der(der: &[u8]) -> Result<Crl, CertError> {
        let parts = split_signed(der)?;
        let list = x509_cert::crl::CertificateList::from_der(der).map_err(CertError::Der)?;
        Ok(Crl {
            tbs_raw: parts.tbs_raw,
            signature: parts.signature,
            list,
        })
    }
    pub fn tbs(&self) -> &TbsCertList {
        &self.list.tbs_cert_list
    }
    pub fn issuer_cn(&self) -> String {
        cn(&self.tbs().issuer).unwrap_or_default()
    }
    /// Issued under `ark`'s name.
    pub fn issued_by_name(&self, ark: &Cert) -> bool {
        self.tbs().issuer == ark.tbs().subject
    }
    /// RSA-PSS-SHA384 signature by `key`.
    pub fn verify_signed_by(&self, key: &RsaPublicKey) -> Result<(), CertError> {
        check_pss_alg(&self.list.signature_algorithm)?;
        if self.list.signature_algorithm != self.tbs().signature {
            return Err(CertError::Algorithm(
                "outer and inner signature algorithms differ".into(),
            ));
        }
        verify_pss(key, &self.tbs_raw, &self.signature)
    }
    pub fn this_update(&self) -> u64 {
        self.tbs().this_update.to_unix_duration().as_secs()
    }
    pub fn next_update(&self) -> Option<u64> {
        self.tbs()
            .next_update
            .map(|t| t.to_unix_duration().as_secs())
    }
    /// Whether `serial` (DER INTEGER contents) is listed.
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.tbs()
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| r.serial_number.as_bytes() == serial)
    }
}

fn cn(name: &x509_cert::name::Name) -> Option<String> {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_CN {
                // CN may be UTF8String, PrintableString or IA5String; all decode via `AnyRef`.
                let any = AnyRef::from(&atv.value);
                if let Ok(s) = any.decode_as::<der::asn1::Utf8StringRef<'_>>() {
                    return Some(s.to_string());
                }
                if let Ok(s) = any.decode_as::<der::asn1::PrintableStringRef<'_>>() {
                    return Some(s.to_string());
                }
                if let Ok(s) = any.decode_as::<Ia5StringRef<'_>>() {
                    return Some(s.to_string());
                }
            }
        }
    }
    None
}

/// Unix seconds as RFC 3339 (UTC).
pub fn fmt_time(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| secs.to_string())
}

/// Split certificate input into DER certificates: one DER certificate, or PEM text holding
/// any number of `CERTIFICATE` blocks (other PEM blocks are ignored).
pub fn split_cert_input(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    split_pem_or_der(bytes, "CERTIFICATE")
}

/// Split CRL input: one DER CRL or PEM `X509 CRL` blocks.
pub fn split_crl_input(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    split_pem_or_der(bytes, "X509 CRL")
}

fn split_pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(vec![bytes.to_vec()]);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(vec![bytes.to_vec()]);
    }
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(&begin) {
        let after = &rest[b..];
        let Some(e) = after.find(&end) else {
            return Err(CertError::Parse(format!("unterminated PEM {label} block")));
        };
        let block = &after[..e + end.len()];
        let (_, der) = der::pem::decode_vec(block.as_bytes()).map_err(CertError::Pem)?;
        out.push(der);
        rest = &after[e + end.len()..];
    }
    if out.is_empty() {
        return Err(CertError::Parse(format!("no PEM {label} block")));
    }
    Ok(out)
}
