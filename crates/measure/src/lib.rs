//! Reference values of the appliance image: what an honest boot of a given UKI must show in
//! the TPM (PCR 4, 7, 11, 12 and 15; SHA-256 and SHA-384 banks), computed the way OVMF/edk2
//! and Debian's systemd-stub 252 measure, plus the SEV-SNP launch measurements of AWS's
//! firmware (`snp`). `keyward measure` (see `cli`) writes them for `make measure`; auditors
//! recompute them from the published UKI with the same command.
//!
//! What is measured, in boot order:
//! * PCR 4 (firmware): EV_EFI_ACTION "Calling EFI Application from Boot Option", EV_SEPARATOR,
//!   the UKI's Authenticode digest, then the embedded kernel's Authenticode digest, because
//!   systemd-stub before 258 starts the kernel with LoadImage, which the firmware measures too
//!   (the same rule as AWS's `nitro-tpm-pcr-compute`).
//! * PCR 7 (firmware): the Secure Boot variables (SecureBoot, PK, KEK, db, dbx) as
//!   EV_EFI_VARIABLE_DRIVER_CONFIG, then EV_SEPARATOR. Depends on the variable store.
//! * PCR 11 (systemd-stub 252): for each of .linux .osrel .cmdline .initrd .splash .dtb
//!   .pcrpkey present, the section name with its NUL, then its `VirtualSize` bytes; then the
//!   `systemd-pcrphase` words (enter-initrd, leave-initrd, sysinit, ready).
//! * PCR 12: nothing (the command line is inside the UKI, no credentials, no overrides), so
//!   all zeros: the "no override" value.
//! * PCR 15: keyward-pins' single extend with the digest of the user data without its password
//!   lines ([`pcr15_input`]).

// `keyward measure`: its arguments and its run, as the binary names them (`cli::Args`).
pub mod cli;
mod pe;
mod snp;

use sha2::{Digest, Sha256, Sha384};

use pe::{Pe, PeError};

/// Errors while computing reference values.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("UKI: {0}")]
    Uki(PeError),
    #[error("embedded kernel (.linux): {0}")]
    Kernel(PeError),
    #[error("the UKI has no {0} section")]
    MissingSection(&'static str),
}

/// The PCR banks keyward reports reference values for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bank {
    Sha256,
    Sha384,
}

impl Bank {
    pub const ALL: [Bank; 2] = [Bank::Sha256, Bank::Sha384];

    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    fn authenticode(self, pe: &Pe<'_>) -> Result<Vec<u8>, PeError> {
        match self {
            Bank::Sha256 => pe.authenticode::<Sha256>(),
            Bank::Sha384 => pe.authenticode::<Sha384>(),
        }
    }

    /// PCR value after a reset: all zeros.
    pub fn zero(self) -> Vec<u8> {
        vec![0; self.digest_len()]
    }

    pub fn digest_len(self) -> usize {
        match self {
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
        }
    }

    /// TPM2_PCR_Extend: new = H(old || digest).
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(pcr.len() + digest.len());
        buf.extend_from_slice(pcr);
        buf.extend_from_slice(digest);
        self.hash(&buf)
    }
}

/// One measurement event, as an event log would show it, with its digest in every bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u32,
    pub kind: &'static str,
    pub what: String,
    pub sha256: Vec<u8>,
    pub sha384: Vec<u8>,
}

impl Event {
    fn of_data(pcr: u32, kind: &'static str, what: impl Into<String>, data: &[u8]) -> Self {
        Event {
            pcr,
            kind,
            what: what.into(),
            sha256: Bank::Sha256.hash(data),
            sha384: Bank::Sha384.hash(data),
        }
    }

    pub fn digest(&self, bank: Bank) -> &[u8] {
        match bank {
            Bank::Sha256 => &self.sha256,
            Bank::Sha384 => &self.sha384,
        }
    }
}

/// Replay events of one PCR from zero.
pub fn replay(events: &[Event], pcr: u32, bank: Bank) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.pcr == pcr)
        .fold(bank.zero(), |acc, e| bank.extend(&acc, e.digest(bank)))
}

/// The sections systemd-stub 252 measures into PCR 11, in its order (`.pcrsig` is skipped).
pub const STUB_252_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// The `systemd-pcrphase` words of systemd 252 up to and including `ready`, which
/// `systemd-pcrphase.service` extends before keyward.service starts (keyward is ordered after it).
pub const PHASES_UNTIL_READY: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// EV_SEPARATOR's data on a successful boot: four zero bytes.
const SEPARATOR: [u8; 4] = [0; 4];

/// PCR 4 as edk2 measures it when it boots the UKI from a boot option.
pub fn pcr4_events(uki: &[u8]) -> Result<Vec<Event>, MeasureError> {
    let pe = Pe::parse(uki).map_err(MeasureError::Uki)?;
    let linux = pe
        .section_data(".linux")
        .map_err(MeasureError::Uki)?
        .ok_or(MeasureError::MissingSection(".linux"))?;
    let kernel = Pe::parse(&linux).map_err(MeasureError::Kernel)?;
    let mut events = vec![
        Event::of_data(
            4,
            "EV_EFI_ACTION",
            "Calling EFI Application from Boot Option",
            b"Calling EFI Application from Boot Option",
        ),
        Event::of_data(4, "EV_SEPARATOR", "separator", &SEPARATOR),
    ];
    for (what, image, err) in [
        (
            "UKI (Authenticode)",
            &pe,
            MeasureError::Uki as fn(PeError) -> MeasureError,
        ),
        (
            "kernel from .linux (Authenticode)",
            &kernel,
            MeasureError::Kernel,
        ),
    ] {
        events.push(Event {
            pcr: 4,
            kind: "EV_EFI_BOOT_SERVICES_APPLICATION",
            what: what.into(),
            sha256: Bank::Sha256.authenticode(image).map_err(err)?,
            sha384: Bank::Sha384.authenticode(image).map_err(err)?,
        });
    }
    Ok(events)
}

/// PCR 11 as systemd-stub 252 measures the UKI's sections, then the pcrphase words.
pub fn pcr11_events(uki: &[u8], phases: &[&str]) -> Result<Vec<Event>, MeasureError> {
    let pe = Pe::parse(uki).map_err(MeasureError::Uki)?;
    let mut events = Vec::new();
    for name in STUB_252_SECTIONS {
        let Some(data) = pe.section_data(name).map_err(MeasureError::Uki)? else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        events.push(Event::of_data(
            11,
            "EV_IPL",
            format!("section name {name}"),
            &cname,
        ));
        events.push(Event::of_data(
            11,
            "EV_IPL",
            format!("section {name} ({} bytes)", data.len()),
            &data,
        ));
    }
    for word in phases {
        events.push(Event::of_data(
            11,
            "systemd-pcrphase",
            format!("phase {word}"),
            word.as_bytes(),
        ));
    }
    Ok(events)
}

/// A UEFI variable as PCR 7 measures it (UEFI_VARIABLE_DATA).
#[derive(Debug, Clone)]
pub struct UefiVariable {
    pub name: &'static str,
    /// The vendor GUID in its in-memory (mixed-endian) byte order.
    pub guid: [u8; 16],
    /// `None` when the variable does not exist (measured with no data).
    pub data: Option<Vec<u8>>,
}

/// EFI_GLOBAL_VARIABLE 8BE4DF61-93CA-11D2-AA0D-00E098032B8C, in memory order.
pub const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// EFI_IMAGE_SECURITY_DATABASE_GUID D719B2CB-3D3A-4596-A3BC-DAD00E67656F, in memory order.
pub const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];

/// OVMF without Secure Boot keys (Debian's OVMF_CODE_4M.fd with a fresh OVMF_VARS_4M.fd):
/// `SecureBoot` exists and is 0 (one byte), PK, KEK, db and dbx do not exist. Checked against
/// the PCR 7 that OVMF + swtpm produced in `make image-test`.
pub fn ovmf_empty_secure_boot_vars() -> Vec<UefiVariable> {
    let mut vars: Vec<UefiVariable> = [
        ("SecureBoot", EFI_GLOBAL_VARIABLE),
        ("PK", EFI_GLOBAL_VARIABLE),
        ("KEK", EFI_GLOBAL_VARIABLE),
        ("db", EFI_IMAGE_SECURITY_DATABASE),
        ("dbx", EFI_IMAGE_SECURITY_DATABASE),
    ]
    .into_iter()
    .map(|(name, guid)| UefiVariable {
        name,
        guid,
        data: None,
    })
    .collect();
    vars[0].data = Some(vec![0]);
    vars
}

/// PCR 7: each Secure Boot variable as EV_EFI_VARIABLE_DRIVER_CONFIG, then the separator.
pub fn pcr7_events(vars: &[UefiVariable]) -> Vec<Event> {
    let mut events: Vec<Event> = vars
        .iter()
        .map(|v| {
            let name: Vec<u16> = v.name.encode_utf16().collect();
            let data = v.data.as_deref().unwrap_or(&[]);
            let mut buf = Vec::with_capacity(32 + 2 * name.len() + data.len());
            buf.extend_from_slice(&v.guid);
            buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
            buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
            for c in &name {
                buf.extend_from_slice(&c.to_le_bytes());
            }
            buf.extend_from_slice(data);
            Event::of_data(7, "EV_EFI_VARIABLE_DRIVER_CONFIG", v.name, &buf)
        })
        .collect();
    events.push(Event::of_data(7, "EV_SEPARATOR", "separator", &SEPARATOR));
    events
}

/// The bytes keyward-pins extends into PCR 15 for this user data: the user data with every
/// password line dropped (a line that starts, after optional blanks, with `password` or
/// `password_base64`, then optional blanks and `=`; the sed expression
/// `/^[[:space:]]*password(_base64)?[[:space:]]*=/d` in the C locale), nothing else changed,
/// not even a missing final newline. The database password is availability-only, and a
/// measured one would put a secret-derived value into every quote and into the KRS policy.
pub fn pcr15_input(user_data: &[u8]) -> Vec<u8> {
    fn blanks(s: &[u8]) -> &[u8] {
        let n = s
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
            .count();
        &s[n..]
    }
    let is_password = |line: &[u8]| {
        let Some(rest) = blanks(line).strip_prefix(b"password") else {
            return false;
        };
        let rest = rest.strip_prefix(b"_base64").unwrap_or(rest);
        blanks(rest).first() == Some(&b'=')
    };
    user_data
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !is_password(line))
        .flatten()
        .copied()
        .collect()
}

/// PCR 15: keyward-pins' one extend with the digest of the pins file's bytes (for user data,
/// the bytes of [`pcr15_input`]).
pub fn pcr15_events(pins: &[u8]) -> Vec<Event> {
    vec![Event::of_data(
        15,
        "keyward-pins",
        format!("pins ({} bytes)", pins.len()),
        pins,
    )]
}

/// The systemd-stub version string from the UKI's `.sdmagic` section, if any.
pub fn stub_version(uki: &[u8]) -> Option<String> {
    let pe = Pe::parse(uki).ok()?;
    let magic = pe.section_data(".sdmagic").ok()??;
    let text = String::from_utf8_lossy(&magic);
    let text = text.trim_end_matches('\0').trim();
    Some(
        text.trim_start_matches("#### LoaderInfo: ")
            .trim_end_matches(" ####")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_and_replay_follow_tpm2_pcr_extend() {
        let d = Bank::Sha256.hash(b"abc");
        let expected = Sha256::digest([vec![0u8; 32], d.clone()].concat()).to_vec();
        assert_eq!(Bank::Sha256.extend(&Bank::Sha256.zero(), &d), expected);
        let ev = pcr15_events(b"abc");
        assert_eq!(replay(&ev, 15, Bank::Sha256), expected);
        assert_eq!(replay(&ev, 4, Bank::Sha256), vec![0u8; 32]);
        assert_eq!(replay(&ev, 15, Bank::Sha384).len(), 48);
    }

    #[test]
    fn pcr15_input_drops_exactly_the_password_lines() {
        let pins = b"krs_url = \"a:1\"\n# password = \"in a comment\"\n";
        assert_eq!(
            pcr15_input(pins),
            pins.to_vec(),
            "nothing to drop: unchanged"
        );
        assert_eq!(
            pcr15_input(b"a = 1"),
            b"a = 1".to_vec(),
            "no final newline added"
        );
        let data = b"a = 1\n[storage]\npassword = \"x\"\n  password_base64= \"eA==\"\n\
            password_file = \"f\"\npasswords = 2\nurl = \"u\"\n\tpassword\t=\"y\"";
        assert_eq!(
            pcr15_input(data),
            b"a = 1\n[storage]\npassword_file = \"f\"\npasswords = 2\nurl = \"u\"\n".to_vec()
        );
    }

    #[test]
    fn pcr7_variable_data_layout() {
        let ev = pcr7_events(&[UefiVariable {
            name: "PK",
            guid: EFI_GLOBAL_VARIABLE,
            data: Some(vec![7]),
        }]);
        let mut want = EFI_GLOBAL_VARIABLE.to_vec();
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&[b'P', 0, b'K', 0, 7]);
        assert_eq!(ev[0].sha256, Sha256::digest(&want).to_vec());
        assert_eq!(ev[1].kind, "EV_SEPARATOR");
        assert_eq!(ev[1].sha256, Sha256::digest([0u8; 4]).to_vec());
        assert_eq!(ovmf_empty_secure_boot_vars().len(), 5);
    }

    #[test]
    fn not_a_uki_is_an_error() {
        assert!(matches!(
            pcr4_events(b"MZ nothing"),
            Err(MeasureError::Uki(_))
        ));
        assert!(pcr11_events(&[], &PHASES_UNTIL_READY).is_err());
    }
}
