//! TPM 2.0 wire structures shared by the producers (`attest`) and the judge (`verify`): PCR
//! banks, TPM Names, the algorithm identifiers, and a bounds-checked big-endian reader.
//!
//! Parsed by hand on purpose (see `keyward_verify::tpm`): pure Rust, no TSS C library ever sees
//! untrusted bytes; every read is bounds-checked and returns an error, nothing panics.

use sha2::{Digest as _, Sha256, Sha384};

/// `TPM_GENERATED_VALUE`: the magic at the start of every TPMS_ATTEST the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// TPMA_OBJECT bits an attestation key must have.
pub const TPMA_FIXED_TPM: u32 = 1 << 1;
pub const TPMA_RESTRICTED: u32 = 1 << 16;
pub const TPMA_SIGN: u32 = 1 << 18;

/// Event types of the TCG PC Client Platform Firmware Profile that matter for replay.
pub const EV_NO_ACTION: u32 = 0x0000_0003;

/// Why a TPM structure could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmParseError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unsupported {what} 0x{value:04x}")]
    Unsupported { what: &'static str, value: u32 },
    #[error("{0}")]
    Malformed(&'static str),
}

/// A bounds-checked big-endian / little-endian reader over TPM wire bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], TpmParseError> {
        let (a, b) = self
            .buf
            .split_at_checked(n)
            .ok_or(TpmParseError::Truncated(self.what))?;
        self.buf = b;
        Ok(a)
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], TpmParseError> {
        self.take(N)?
            .try_into()
            .map_err(|_| TpmParseError::Truncated(self.what))
    }
    pub fn u8(&mut self) -> Result<u8, TpmParseError> {
        let [b] = self.array()?;
        Ok(b)
    }
    pub fn u16(&mut self) -> Result<u16, TpmParseError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, TpmParseError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, TpmParseError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn u16le(&mut self) -> Result<u16, TpmParseError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32le(&mut self) -> Result<u32, TpmParseError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A TPM2B: u16 size then that many bytes.
    pub fn tpm2b(&mut self) -> Result<&'a [u8], TpmParseError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A PCR bank's hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bank {
    Sha256,
    Sha384,
}

impl Bank {
    /// From a policy/evidence name (`sha256`, `sha384`).
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Some(Bank::Sha256),
            "sha384" | "sha-384" => Some(Bank::Sha384),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
        }
    }
    pub fn alg_id(self) -> u16 {
        match self {
            Bank::Sha256 => TPM_ALG_SHA256,
            Bank::Sha384 => TPM_ALG_SHA384,
        }
    }
    pub fn from_alg(alg: u16) -> Option<Self> {
        match alg {
            TPM_ALG_SHA256 => Some(Bank::Sha256),
            TPM_ALG_SHA384 => Some(Bank::Sha384),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
        }
    }
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
        }
    }
    /// `PCR_new = H(PCR_old ‖ digest)`.
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(pcr.len() + digest.len());
        buf.extend_from_slice(pcr);
        buf.extend_from_slice(digest);
        self.hash(&buf)
    }
}

/// The TPM Name of an object: `nameAlg (u16 BE) ‖ H_nameAlg(TPMT_PUBLIC)`.
pub fn tpm_name(public_bytes: &[u8]) -> Result<Vec<u8>, TpmParseError> {
    let mut r = Reader::new(public_bytes, "TPMT_PUBLIC");
    r.u16()?;
    let name_alg = r.u16()?;
    let bank = Bank::from_alg(name_alg).ok_or(TpmParseError::Unsupported {
        what: "name algorithm",
        value: name_alg.into(),
    })?;
    let mut name = name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(&bank.hash(public_bytes));
    Ok(name)
}
