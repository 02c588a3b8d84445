//! A minimal, bounds-checked PE/COFF reader and the Authenticode image digest that UEFI
//! firmware (edk2's `DxeTpm2MeasureBootLib`) extends into PCR 4 for every image it loads.
//!
//! Hand-written rather than pulling in `object` + `authenticode`: it is ~150 lines, it only
//! needs the headers, the section table and the data directories, and auditors can read the
//! whole digest rule in one place. Every offset comes from the file, so every read is checked.

use sha2::Digest;

/// Errors while reading a PE image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    Format(&'static str),
    #[error("PE image truncated: {what} at {offset}+{len} is past the end ({size} bytes)")]
    Truncated {
        what: &'static str,
        offset: usize,
        len: usize,
        size: usize,
    },
}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    /// The name, without trailing NULs (`.linux`, `.osrel`, ...).
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
}

/// A parsed PE image borrowing the file's bytes.
#[derive(Debug)]
pub(crate) struct Pe<'a> {
    data: &'a [u8],
    checksum_offset: usize,
    /// Offset of the certificate-table data directory entry, if the image has one.
    cert_dir_offset: Option<usize>,
    cert_table_size: usize,
    size_of_headers: usize,
    sections: Vec<Section>,
}

fn slice<'a>(
    data: &'a [u8],
    what: &'static str,
    offset: usize,
    len: usize,
) -> Result<&'a [u8], PeError> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or(PeError::Truncated {
            what,
            offset,
            len,
            size: data.len(),
        })
}

fn u16_at(data: &[u8], what: &'static str, offset: usize) -> Result<u16, PeError> {
    let b = slice(data, what, offset, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], what: &'static str, offset: usize) -> Result<u32, PeError> {
    let b = slice(data, what, offset, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Pe<'a> {
    /// Parse the DOS stub, COFF header, optional header (PE32 or PE32+) and section table.
    pub(crate) fn parse(data: &'a [u8]) -> Result<Self, PeError> {
        if slice(data, "DOS header", 0, 2)? != b"MZ" {
            return Err(PeError::Format("no MZ signature"));
        }
        let pe_off = u32_at(data, "e_lfanew", 0x3c)? as usize;
        if slice(data, "PE signature", pe_off, 4)? != b"PE\0\0" {
            return Err(PeError::Format("no PE signature"));
        }
        let coff = pe_off + 4;
        let n_sections = u16_at(data, "NumberOfSections", coff + 2)? as usize;
        let opt_size = u16_at(data, "SizeOfOptionalHeader", coff + 16)? as usize;
        let opt = coff + 20;
        let (dirs, n_dirs_off) = match u16_at(data, "optional header magic", opt)? {
            0x10b => (opt + 96, opt + 92),
            0x20b => (opt + 112, opt + 108),
            _ => return Err(PeError::Format("unknown optional header magic")),
        };
        let size_of_headers = u32_at(data, "SizeOfHeaders", opt + 60)? as usize;
        let n_dirs = u32_at(data, "NumberOfRvaAndSizes", n_dirs_off)? as usize;
        let (cert_dir_offset, cert_table_size) = if n_dirs > 4 {
            let at = dirs + 4 * 8;
            (
                Some(at),
                u32_at(data, "certificate table size", at + 4)? as usize,
            )
        } else {
            (None, 0)
        };
        let table = opt + opt_size;
        let mut sections = Vec::with_capacity(n_sections.min(96));
        for i in 0..n_sections {
            let at = table + i * 40;
            let raw_name = slice(data, "section name", at, 8)?;
            let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            sections.push(Section {
                name: String::from_utf8_lossy(&raw_name[..name_len]).into_owned(),
                virtual_size: u32_at(data, "VirtualSize", at + 8)?,
                virtual_address: u32_at(data, "VirtualAddress", at + 12)?,
                size_of_raw_data: u32_at(data, "SizeOfRawData", at + 16)?,
                pointer_to_raw_data: u32_at(data, "PointerToRawData", at + 20)?,
            });
        }
        Ok(Pe {
            data,
            checksum_offset: opt + 64,
            cert_dir_offset,
            cert_table_size,
            size_of_headers,
            sections,
        })
    }

    /// The section table, in file order.
    #[cfg(test)]
    pub(crate) fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// A section's contents as the image has them in memory: `VirtualSize` bytes, the raw data
    /// zero-padded when `SizeOfRawData` is shorter. systemd-stub measures (PCR 11) and loads
    /// (`.linux`) exactly these bytes.
    pub(crate) fn section_data(&self, name: &str) -> Result<Option<Vec<u8>>, PeError> {
        let Some(s) = self.sections.iter().find(|s| s.name == name) else {
            return Ok(None);
        };
        let vsize = s.virtual_size as usize;
        let raw_len = vsize.min(s.size_of_raw_data as usize);
        let mut out = slice(
            self.data,
            "section data",
            s.pointer_to_raw_data as usize,
            raw_len,
        )?
        .to_vec();
        out.resize(vsize, 0);
        Ok(Some(out))
    }

    /// The Authenticode digest of the image (PE/COFF spec, "Calculating the PE Image Hash"),
    /// as edk2 computes it before extending EV_EFI_BOOT_SERVICES_APPLICATION into PCR 4:
    /// the headers without the checksum and the certificate-table entry, then every section's
    /// raw data in file order, then any data after the last section except the certificate table.
    pub(crate) fn authenticode<D: Digest>(&self) -> Result<Vec<u8>, PeError> {
        let d = self.data;
        let mut h = D::new();
        let cks = self.checksum_offset;
        h.update(slice(d, "headers", 0, cks)?);
        let after_cks = cks + 4;
        match self.cert_dir_offset {
            Some(cert) => {
                h.update(slice(
                    d,
                    "headers",
                    after_cks,
                    cert.saturating_sub(after_cks),
                )?);
                let after_cert = cert + 8;
                h.update(slice(
                    d,
                    "headers",
                    after_cert,
                    self.size_of_headers.saturating_sub(after_cert),
                )?);
            }
            None => h.update(slice(
                d,
                "headers",
                after_cks,
                self.size_of_headers.saturating_sub(after_cks),
            )?),
        }
        let mut sorted: Vec<&Section> = self
            .sections
            .iter()
            .filter(|s| s.size_of_raw_data > 0)
            .collect();
        sorted.sort_by_key(|s| s.pointer_to_raw_data);
        let mut hashed = self.size_of_headers;
        for s in sorted {
            h.update(slice(
                d,
                "section raw data",
                s.pointer_to_raw_data as usize,
                s.size_of_raw_data as usize,
            )?);
            hashed += s.size_of_raw_data as usize;
        }
        let end = d.len().saturating_sub(self.cert_table_size);
        if end > hashed {
            h.update(slice(d, "trailing data", hashed, end - hashed)?);
        }
        Ok(h.finalize().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Sha256;

    /// A PE32+ image with two sections and trailing data, built by hand so the test owns every
    /// byte: the headers' checksum and certificate entry must not count, trailing data must.
    fn tiny_pe(checksum: u32, trailing: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        f[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        f[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        f[opt + 64..opt + 68].copy_from_slice(&checksum.to_le_bytes());
        f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + 240;
        for (i, (name, ptr)) in [(b".text\0\0\0", 0x200u32), (b".data\0\0\0", 0x400u32)]
            .iter()
            .enumerate()
        {
            let at = table + i * 40;
            f[at..at + 8].copy_from_slice(*name);
            f[at + 8..at + 12].copy_from_slice(&0x180u32.to_le_bytes());
            f[at + 12..at + 16].copy_from_slice(&(0x1000 * (i as u32 + 1)).to_le_bytes());
            f[at + 16..at + 20].copy_from_slice(&0x200u32.to_le_bytes());
            f[at + 20..at + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        f.resize(0x600, 0);
        for (i, b) in f[0x200..0x600].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f.extend_from_slice(trailing);
        f
    }

    /// The digest written out by the rule: independent of `authenticode()`'s code path.
    fn by_the_rule(f: &[u8]) -> Vec<u8> {
        let opt = 0x44 + 20;
        let cert = opt + 112 + 32;
        let mut h = Sha256::new();
        h.update(&f[..opt + 64]);
        h.update(&f[opt + 68..cert]);
        h.update(&f[cert + 8..0x200]);
        h.update(&f[0x200..0x600]);
        h.update(&f[0x600..]);
        h.finalize().to_vec()
    }

    #[test]
    fn authenticode_skips_checksum_and_cert_entry_and_hashes_trailing_data() {
        let a = tiny_pe(0, b"trailer");
        let pe = Pe::parse(&a).unwrap();
        assert_eq!(pe.authenticode::<Sha256>().unwrap(), by_the_rule(&a));
        // the checksum does not count
        let b = tiny_pe(0xdead_beef, b"trailer");
        assert_eq!(
            Pe::parse(&b).unwrap().authenticode::<Sha256>().unwrap(),
            by_the_rule(&a)
        );
        // a section byte and a trailing byte do
        let mut c = a.clone();
        c[0x300] ^= 1;
        assert_ne!(
            Pe::parse(&c).unwrap().authenticode::<Sha256>().unwrap(),
            by_the_rule(&a)
        );
        let d = tiny_pe(0, b"trailes");
        assert_ne!(
            Pe::parse(&d).unwrap().authenticode::<Sha256>().unwrap(),
            by_the_rule(&a)
        );
    }

    #[test]
    fn section_data_is_virtual_size_long() {
        let a = tiny_pe(0, b"");
        let pe = Pe::parse(&a).unwrap();
        let names: Vec<_> = pe.sections().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".data"]);
        let data = pe.section_data(".data").unwrap().unwrap();
        assert_eq!(data.len(), 0x180);
        assert_eq!(&data[..], &a[0x400..0x580]);
        assert_eq!(pe.section_data(".nope").unwrap(), None);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(Pe::parse(b"").is_err());
        assert!(Pe::parse(b"MZ").is_err());
        let a = tiny_pe(0, b"");
        for cut in [0x3e, 0x42, 0x50, 0x100, 0x150, 0x180] {
            assert!(Pe::parse(&a[..cut]).is_err(), "cut at {cut}");
        }
        // a section pointing past the end parses, but its data and the digest are errors
        let mut b = a.clone();
        let at = 0x44 + 20 + 240 + 40 + 20;
        b[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let pe = Pe::parse(&b).unwrap();
        assert!(pe.section_data(".data").is_err());
        assert!(pe.authenticode::<Sha256>().is_err());
        // random bytes never panic
        let mut x: u32 = 12345;
        for _ in 0..200 {
            let mut junk = a.clone();
            for _ in 0..8 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (x as usize >> 8) % junk.len();
                junk[i] = (x >> 16) as u8;
            }
            if let Ok(pe) = Pe::parse(&junk) {
                let _ = pe.authenticode::<Sha256>();
                let _ = pe.section_data(".text");
            }
        }
    }
}
