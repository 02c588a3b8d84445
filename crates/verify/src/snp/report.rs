//! The SEV-SNP ATTESTATION_REPORT, parsed by hand from the raw 1184 bytes at the offsets of
//! AMD's SNP ABI specification (rev. 1.55+ Table 23; versions 2 to 5).
//!
//! Hand-written on purpose: the `sev` crate's parser refuses a version-2 report whose CHIP_ID is
//! masked to zero and its verifier re-encodes the parsed struct before hashing. Here the fields
//! are read-only views of the exact bytes that the signature covers, and nothing is re-encoded.

use crate::policy::Product;

/// Length of every report version this parser knows.
pub(crate) const REPORT_LEN: usize = 1184;
/// End (exclusive) of the signed region.
pub(crate) const SIGNED_LEN: usize = 0x2A0;

/// Why the bytes are not a report this verifier can judge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("report is {0} bytes, expected {REPORT_LEN}")]
    Length(usize),
    #[error("report version {0} is not one this verifier parses (2-5)")]
    Version(u32),
}

/// Which key signed the report (KEY_INFO.SIGNING_KEY, bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
    /// 7: the report is not signed.
    None,
    /// Values the ABI reserves.
    Reserved(u8),
}

/// A TCB version as the four (Turin: five) security patch levels it packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcb {
    /// Turin only.
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// The raw 8 bytes.
    pub raw: [u8; 8],
}

impl Tcb {
    /// Decode per product: Milan and Genoa put bootloader, tee at bytes 0, 1 and snp,
    /// microcode at 6, 7; Turin puts fmc, bootloader, tee, snp at 0..4 and microcode at 7.
    pub fn decode(raw: [u8; 8], product: Product) -> Tcb {
        match product {
            Product::Milan | Product::Genoa => Tcb {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
                raw,
            },
            Product::Turin => Tcb {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
                raw,
            },
        }
    }

    /// Encode per product (the inverse of [`Tcb::decode`]; reserved bytes zero).
    pub fn encode(&self, product: Product) -> [u8; 8] {
        match product {
            Product::Milan | Product::Genoa => [
                self.bootloader,
                self.tee,
                0,
                0,
                0,
                0,
                self.snp,
                self.microcode,
            ],
            Product::Turin => [
                self.fmc.unwrap_or(0),
                self.bootloader,
                self.tee,
                self.snp,
                0,
                0,
                0,
                self.microcode,
            ],
        }
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc {fmc} / ")?;
        }
        write!(
            f,
            "bl {} / tee {} / snp {} / ucode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Guest policy bits (POLICY, offset 0x08).
pub(crate) mod policy_bits {
    pub(crate) const SMT: u64 = 1 << 16;
    pub(crate) const RESERVED_MUST_BE_ONE: u64 = 1 << 17;
    pub(crate) const MIGRATE_MA: u64 = 1 << 18;
    pub(crate) const DEBUG: u64 = 1 << 19;
    pub(crate) const SINGLE_SOCKET: u64 = 1 << 20;
    pub(crate) const CXL_ALLOW: u64 = 1 << 21;
    pub(crate) const MEM_AES_256_XTS: u64 = 1 << 22;
    pub(crate) const RAPL_DIS: u64 = 1 << 23;
    pub(crate) const CIPHERTEXT_HIDING: u64 = 1 << 24;
    pub(crate) const PAGE_SWAP_DISABLE: u64 = 1 << 25;
    /// Every bit at or above 26 is undefined in the ABI versions this verifier knows.
    pub(crate) const UNKNOWN_MASK: u64 = !((1 << 26) - 1);
}

/// PLATFORM_INFO bits (offset 0x40).
pub(crate) mod platform_bits {
    pub(crate) const SMT_EN: u64 = 1 << 0;
    pub(crate) const TSME_EN: u64 = 1 << 1;
    pub(crate) const ECC_EN: u64 = 1 << 2;
    pub(crate) const RAPL_DIS: u64 = 1 << 3;
    pub(crate) const CIPHERTEXT_HIDING_EN: u64 = 1 << 4;
    pub(crate) const ALIAS_CHECK_COMPLETE: u64 = 1 << 5;
}

/// A parsed report: a borrowed view of the raw bytes with typed accessors.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    raw: &'a [u8; REPORT_LEN],
}

/// `N` bytes at `off` (zeros past the end: every caller reads a fixed offset inside the
/// 1184-byte report, so that never happens, and nothing here can panic).
fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    b.get(off..)
        .and_then(|t| t.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes_at(b, off))
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes_at(b, off))
}

impl<'a> Report<'a> {
    /// Check the length and version; every other field is read on demand at fixed offsets.
    pub fn parse(bytes: &'a [u8]) -> Result<Report<'a>, ReportError> {
        let raw: &'a [u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| ReportError::Length(bytes.len()))?;
        let r = Report { raw };
        if !(2..=5).contains(&r.version()) {
            return Err(ReportError::Version(r.version()));
        }
        Ok(r)
    }

    pub fn raw(&self) -> &'a [u8; REPORT_LEN] {
        self.raw
    }
    /// The bytes the signature covers (0x000..0x2A0), exactly as received.
    pub fn signed_bytes(&self) -> &'a [u8] {
        let (signed, _) = self.raw.split_at(SIGNED_LEN);
        signed
    }
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        bytes_at(self.raw, off)
    }

    pub fn version(&self) -> u32 {
        le32(self.raw, 0x00)
    }
    pub fn guest_svn(&self) -> u32 {
        le32(self.raw, 0x04)
    }
    pub fn policy(&self) -> u64 {
        le64(self.raw, 0x08)
    }
    pub fn family_id(&self) -> [u8; 16] {
        self.arr(0x10)
    }
    pub fn image_id(&self) -> [u8; 16] {
        self.arr(0x20)
    }
    pub fn vmpl(&self) -> u32 {
        le32(self.raw, 0x30)
    }
    pub fn sig_algo(&self) -> u32 {
        le32(self.raw, 0x34)
    }
    pub fn current_tcb_raw(&self) -> [u8; 8] {
        self.arr(0x38)
    }
    pub fn platform_info(&self) -> u64 {
        le64(self.raw, 0x40)
    }
    pub fn key_info(&self) -> u32 {
        le32(self.raw, 0x48)
    }
    /// KEY_INFO bit 0.
    pub fn author_key_en(&self) -> bool {
        self.key_info() & 1 != 0
    }
    /// KEY_INFO bit 1: the chip key was masked, so the report is not signed.
    pub fn mask_chip_key(&self) -> bool {
        self.key_info() & 2 != 0
    }
    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info() >> 2) & 7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            // The mask keeps 3 bits, so the value fits in u8.
            n => SigningKey::Reserved(n as u8),
        }
    }
    pub fn report_data(&self) -> [u8; 64] {
        self.arr(0x50)
    }
    pub fn measurement(&self) -> [u8; 48] {
        self.arr(0x90)
    }
    pub fn host_data(&self) -> [u8; 32] {
        self.arr(0xC0)
    }
    pub fn id_key_digest(&self) -> [u8; 48] {
        self.arr(0xE0)
    }
    pub fn author_key_digest(&self) -> [u8; 48] {
        self.arr(0x110)
    }
    pub fn report_id(&self) -> [u8; 32] {
        self.arr(0x140)
    }
    pub fn reported_tcb_raw(&self) -> [u8; 8] {
        self.arr(0x180)
    }
    /// CPUID family, model, stepping (version 3 and later; `None` on version 2).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| (self.raw[0x188], self.raw[0x189], self.raw[0x18A]))
    }
    pub fn chip_id(&self) -> [u8; 64] {
        self.arr(0x1A0)
    }
    pub fn committed_tcb_raw(&self) -> [u8; 8] {
        self.arr(0x1E0)
    }
    /// CURRENT firmware (major, minor, build).
    pub fn current_version(&self) -> (u8, u8, u8) {
        (self.raw[0x1EA], self.raw[0x1E9], self.raw[0x1E8])
    }
    /// COMMITTED firmware (major, minor, build).
    pub fn committed_version(&self) -> (u8, u8, u8) {
        (self.raw[0x1EE], self.raw[0x1ED], self.raw[0x1EC])
    }
    pub fn launch_tcb_raw(&self) -> [u8; 8] {
        self.arr(0x1F0)
    }
    /// LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (version 5 and later).
    pub fn mit_vectors(&self) -> Option<(u64, u64)> {
        (self.version() >= 5).then(|| (le64(self.raw, 0x1F8), le64(self.raw, 0x200)))
    }
    /// Signature R and S, 72 bytes little-endian each.
    pub fn signature_r(&self) -> [u8; 72] {
        self.arr(0x2A0)
    }
    pub fn signature_s(&self) -> [u8; 72] {
        self.arr(0x2E8)
    }

    /// The product the CPUID fields name (v3+): family 19h models 00-0Fh Milan, 10-1Fh and
    /// A0-AFh Genoa; family 1Ah Turin. `None` on v2 or for an unknown CPU.
    pub fn cpuid_product(&self) -> Option<Product> {
        let (fam, model, _) = self.cpuid()?;
        match (fam, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, _) => Some(Product::Turin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_layouts_round_trip() {
        let t = Tcb::decode([3, 0, 0, 0, 0, 0, 8, 115], Product::Milan);
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (3, 0, 8, 115));
        assert_eq!(t.encode(Product::Milan), [3, 0, 0, 0, 0, 0, 8, 115]);
        let t = Tcb::decode([1, 2, 3, 4, 0, 0, 0, 9], Product::Turin);
        assert_eq!(t.fmc, Some(1));
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (2, 3, 4, 9));
        assert_eq!(t.encode(Product::Turin), [1, 2, 3, 4, 0, 0, 0, 9]);
    }

    #[test]
    fn length_and_version() {
        assert_eq!(
            Report::parse(&[0u8; 100]).unwrap_err(),
            ReportError::Length(100)
        );
        let mut b = [0u8; REPORT_LEN];
        b[0] = 6;
        assert_eq!(Report::parse(&b).unwrap_err(), ReportError::Version(6));
        b[0] = 3;
        b[0x188] = 0x19;
        b[0x189] = 0xA1;
        assert_eq!(
            Report::parse(&b).unwrap().cpuid_product(),
            Some(Product::Genoa)
        );
    }
}
