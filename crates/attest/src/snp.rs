//! SEV-SNP attester: an extended attestation report with REPORT_DATA = [`Binding::report_data`]
//! at VMPL 0, plus the certificate table the host supplies (the VLEK on EC2), turned into
//! [`SnpEvidence`] (raw 1184-byte report + DER certificates).
//!
//! Two kernel interfaces, tried in this order:
//! * **configfs-tsm** (Linux 6.7+): `mkdir /sys/kernel/config/tsm/report/<name>`, write
//!   `privlevel` and `inblob`, read `outblob` (the report) and `auxblob` (the certificate
//!   table), check `generation` did not move in between, `rmdir`.
//! * **`/dev/sev-guest`** through the `sev` crate (`Firmware::open`, `get_ext_report`).
//!
//! The certificate table is the GHCB format: `{guid[16], offset u32 LE, length u32 LE}` entries
//! ending with an all-zero entry, offsets from the table's start. It is parsed here by hand
//! ([`parse_cert_table`]) because the `sev` crate's byte-level parser is `unsafe` and panics on
//! malformed input; the host writes that table, so it is untrusted. No SNP hardware exists on
//! the build machines: the device paths are compiled and the conversion is tested on recorded
//! bytes.

use std::path::{Path, PathBuf};

use super::{AttestError, Attester, Binding};
use keyward_evidence::{EvidenceBundle, SnpEvidence};

/// Length of an SNP attestation report.
pub(crate) const REPORT_LEN: usize = 1184;
/// Where configfs-tsm lives.
pub(crate) const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// GHCB certificate-table GUIDs (AMD SEV-SNP firmware ABI / GHCB spec).
pub const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
pub const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
pub(crate) const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
pub const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
pub const GUID_CRL: &str = "92f81bc3-5811-4d3d-97ff-d19f88dc67ea";

/// Which kernel interface to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnpInterface {
    /// configfs-tsm if present, else /dev/sev-guest.
    Auto,
    /// configfs-tsm under this directory.
    ConfigfsTsm(PathBuf),
    /// /dev/sev-guest.
    SevGuest,
}

/// The SNP attester.
#[derive(Debug, Clone)]
pub struct SnpAttester {
    pub interface: SnpInterface,
    /// VMPL to request (0 unless running under an SVSM).
    pub vmpl: u32,
}

impl Default for SnpAttester {
    fn default() -> Self {
        Self {
            interface: SnpInterface::Auto,
            vmpl: 0,
        }
    }
}

/// One certificate-table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// Lower-case hyphenated GUID.
    pub guid: String,
    pub data: Vec<u8>,
}

fn guid_string(b: &[u8; 16]) -> String {
    // The GUID is stored in the mixed-endian EFI_GUID layout.
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// Encode a GUID string into the table's 16-byte layout (used by tests and fixtures).
pub(crate) fn guid_bytes(s: &str) -> Option<[u8; 16]> {
    let h = hex::decode(s.replace('-', "")).ok()?;
    let h: [u8; 16] = h.try_into().ok()?;
    Some([
        h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6], h[8], h[9], h[10], h[11], h[12], h[13],
        h[14], h[15],
    ])
}

/// Parse a GHCB certificate table. Entries pointing outside the buffer are an error.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertEntry>, AttestError> {
    let bad = |m: &str| AttestError::Failed(format!("certificate table: {m}"));
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let e = table
            .get(pos..pos + 24)
            .ok_or_else(|| bad("no terminating entry"))?;
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[..16]);
        let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        if g == [0u8; 16] && off == 0 && len == 0 {
            break;
        }
        let data = off
            .checked_add(len)
            .and_then(|end| table.get(off..end))
            .ok_or_else(|| bad("entry points outside the table"))?;
        out.push(CertEntry {
            guid: guid_string(&g),
            data: data.to_vec(),
        });
        pos += 24;
        if out.len() > 64 {
            return Err(bad("too many entries"));
        }
    }
    Ok(out)
}

/// Build a GHCB certificate table (tests, fixtures, the simulated attester).
pub fn build_cert_table(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let header = 24 * (entries.len() + 1);
    let mut table = Vec::new();
    let mut blobs = Vec::new();
    for (guid, data) in entries {
        let g = guid_bytes(guid).unwrap_or([0xff; 16]);
        table.extend_from_slice(&g);
        table.extend_from_slice(&((header + blobs.len()) as u32).to_le_bytes());
        table.extend_from_slice(&(data.len() as u32).to_le_bytes());
        blobs.extend_from_slice(data);
    }
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(&blobs);
    table
}

/// Certificates in DER: PEM input is converted; anything unparseable is kept as is (the
/// verifier ignores certificates it cannot use).
fn to_der(data: &[u8]) -> Vec<u8> {
    if data.starts_with(b"-----BEGIN") {
        if let Ok((_, der)) = der::pem::decode_vec(data) {
            return der;
        }
    }
    // Tables are often padded with zeros after the DER: trim to the DER length if it parses.
    match der_len(data) {
        Some(total) if total <= data.len() => data[..total].to_vec(),
        _ => data.to_vec(),
    }
}

/// Total length (header + body) of the DER element at the start of `data`.
fn der_len(data: &[u8]) -> Option<usize> {
    use der::{Decode, Encode};
    let mut r = der::SliceReader::new(data).ok()?;
    let h = der::Header::decode(&mut r).ok()?;
    let total = (h.encoded_len().ok()? + h.length).ok()?;
    usize::try_from(total).ok()
}

/// Turn a raw report and the certificate entries into [`SnpEvidence`]: keeps VCEK, VLEK, ASK
/// and ARK entries (in DER), drops CRLs and unknown GUIDs.
pub fn evidence_from_parts(
    report: &[u8],
    entries: &[CertEntry],
) -> Result<SnpEvidence, AttestError> {
    if report.len() < REPORT_LEN {
        return Err(AttestError::Failed(format!(
            "report is {} bytes, not {REPORT_LEN}",
            report.len()
        )));
    }
    let certs = entries
        .iter()
        .filter(|e| [GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK].contains(&e.guid.as_str()))
        .filter(|e| !e.data.is_empty())
        .map(|e| to_der(&e.data))
        .collect();
    Ok(SnpEvidence {
        report: report[..REPORT_LEN].to_vec(),
        certs,
    })
}

/// configfs-tsm: one report through `root` (normally [`TSM_REPORT_DIR`]).
pub fn tsm_report(
    root: &Path,
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<SnpEvidence, AttestError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        AttestError::failed(format!("configfs-tsm {what} {}", p.display()), e)
    };
    let mut name = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut name);
    let dir = root.join(format!("keyward-{}", hex::encode(name)));
    std::fs::create_dir(&dir).map_err(|e| io("mkdir", &dir, e))?;
    let result = (|| {
        if let Ok(p) = std::fs::read_to_string(dir.join("provider")) {
            if p.trim() != "sev_guest" {
                return Err(AttestError::Unavailable(format!(
                    "configfs-tsm provider is {:?}, not sev_guest",
                    p.trim()
                )));
            }
        }
        let gen_path = dir.join("generation");
        let gen0 = std::fs::read_to_string(&gen_path).unwrap_or_default();
        let privlevel = dir.join("privlevel");
        if privlevel.exists() {
            std::fs::write(&privlevel, vmpl.to_string()).map_err(|e| io("write", &privlevel, e))?;
        }
        let inblob = dir.join("inblob");
        std::fs::write(&inblob, report_data).map_err(|e| io("write", &inblob, e))?;
        let outblob = dir.join("outblob");
        let report = std::fs::read(&outblob).map_err(|e| io("read", &outblob, e))?;
        let aux = std::fs::read(dir.join("auxblob")).unwrap_or_default();
        let gen1 = std::fs::read_to_string(&gen_path).unwrap_or_default();
        // generation moves by one for our inblob write; more means another writer interfered.
        if let (Ok(a), Ok(b)) = (gen0.trim().parse::<u64>(), gen1.trim().parse::<u64>()) {
            if b != a + 1 {
                return Err(AttestError::Failed(
                    "configfs-tsm entry changed by another writer".into(),
                ));
            }
        }
        let entries = if aux.is_empty() {
            Vec::new()
        } else {
            parse_cert_table(&aux)?
        };
        evidence_from_parts(&report, &entries)
    })();
    let _ = std::fs::remove_dir(&dir);
    result
}

/// /dev/sev-guest through the `sev` crate.
pub(crate) fn sev_guest_report(
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<SnpEvidence, AttestError> {
    use sev::firmware::guest::Firmware;
    let mut fw = Firmware::open().map_err(|e| AttestError::unavailable("/dev/sev-guest", e))?;
    let (report, certs) = fw
        .get_ext_report(None, Some(*report_data), Some(vmpl))
        .map_err(|e| AttestError::failed("SNP_GET_EXT_REPORT", e))?;
    let entries: Vec<CertEntry> = certs
        .unwrap_or_default()
        .iter()
        .map(|c| CertEntry {
            guid: c.guid_string(),
            data: c.data().to_vec(),
        })
        .collect();
    evidence_from_parts(&report, &entries)
}

impl Attester for SnpAttester {
    fn name(&self) -> &'static str {
        "snp"
    }
    fn attest(&self, binding: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError> {
        let ev = match &self.interface {
            SnpInterface::ConfigfsTsm(root) => tsm_report(root, &binding.report_data, self.vmpl)?,
            SnpInterface::SevGuest => sev_guest_report(&binding.report_data, self.vmpl)?,
            SnpInterface::Auto => {
                let root = Path::new(TSM_REPORT_DIR);
                if root.is_dir() {
                    tsm_report(root, &binding.report_data, self.vmpl)?
                } else {
                    sev_guest_report(&binding.report_data, self.vmpl)?
                }
            }
        };
        bundle.report_data = Some(binding.report_data.to_vec());
        bundle.snp = Some(ev);
        Ok(())
    }
}
