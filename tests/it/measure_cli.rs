//! `keyward measure` end to end: a hand-built UKI (PE32+ with .osrel, .cmdline, .initrd and a
//! .linux that is itself a PE image) goes in; the PCR 4/7/11/12/15 values that come out must
//! equal the values computed here, independently, from the measurement rules written out step
//! by step (edk2 for PCR 4 and 7, systemd-stub 252 + systemd-pcrphase for PCR 11).

use std::process::Command;

use sha2::{Digest, Sha256, Sha384};

/// A PE32+ image with the given sections (name, data). File alignment 0x200; VirtualSize =
/// the data length, SizeOfRawData rounded up (as objcopy does).
fn pe(sections: &[(&str, Vec<u8>)], trailer: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x400];
    f[0..2].copy_from_slice(b"MZ");
    f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    f[0x80..0x84].copy_from_slice(b"PE\0\0");
    let coff = 0x84;
    f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    f[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
    let opt = coff + 20;
    f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    f[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
    f[opt + 64..opt + 68].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
    let table = opt + 240;
    let mut ptr = 0x400usize;
    let mut body = Vec::new();
    for (i, (name, data)) in sections.iter().enumerate() {
        let at = table + i * 40;
        let mut n = [0u8; 8];
        n[..name.len()].copy_from_slice(name.as_bytes());
        let raw = data.len().div_ceil(0x200) * 0x200;
        f[at..at + 8].copy_from_slice(&n);
        f[at + 8..at + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        f[at + 12..at + 16].copy_from_slice(&((i as u32 + 1) * 0x10_0000).to_le_bytes());
        f[at + 16..at + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        f[at + 20..at + 24].copy_from_slice(&(ptr as u32).to_le_bytes());
        let mut d = data.clone();
        d.resize(raw, 0);
        body.extend_from_slice(&d);
        ptr += raw;
    }
    f.extend_from_slice(&body);
    f.extend_from_slice(trailer);
    f
}

/// Authenticode written out for this layout: headers minus checksum (opt+64..68) and the
/// certificate directory entry (opt+144..152), then everything after the headers.
fn authenticode<D: Digest>(f: &[u8]) -> Vec<u8> {
    let opt = 0x84 + 20;
    let mut h = D::new();
    h.update(&f[..opt + 64]);
    h.update(&f[opt + 68..opt + 144]);
    h.update(&f[opt + 152..]);
    h.finalize().to_vec()
}

fn extend<D: Digest>(pcr: &[u8], data_digest: &[u8]) -> Vec<u8> {
    D::digest([pcr, data_digest].concat()).to_vec()
}

fn chain<D: Digest>(digests: &[Vec<u8>]) -> String {
    let zero = vec![0u8; <D as Digest>::output_size()];
    hex::encode(digests.iter().fold(zero, |acc, d| extend::<D>(&acc, d)))
}

fn expected<D: Digest>(
    uki: &[u8],
    kernel: &[u8],
    sections: &[(&str, Vec<u8>)],
    pins: &[u8],
) -> [(u32, String); 5] {
    let pcr4 = chain::<D>(&[
        D::digest(b"Calling EFI Application from Boot Option").to_vec(),
        D::digest([0u8; 4]).to_vec(),
        authenticode::<D>(uki),
        authenticode::<D>(kernel),
    ]);
    // PCR 7, OVMF with no keys: SecureBoot = 0 (one byte), PK/KEK/db/dbx absent (no data)
    let global = hex::decode("61dfe48bca93d211aa0d00e098032b8c").unwrap();
    let secdb = hex::decode("cbb219d73a3d9645a3bcdad00e67656f").unwrap();
    let mut p7 = Vec::new();
    for (name, guid) in [
        ("SecureBoot", &global),
        ("PK", &global),
        ("KEK", &global),
        ("db", &secdb),
        ("dbx", &secdb),
    ] {
        let mut v = guid.clone();
        let data: &[u8] = if name == "SecureBoot" { &[0] } else { &[] };
        v.extend_from_slice(&(name.len() as u64).to_le_bytes());
        v.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for c in name.encode_utf16() {
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(data);
        p7.push(D::digest(&v).to_vec());
    }
    p7.push(D::digest([0u8; 4]).to_vec());
    // PCR 11: systemd-stub 252's order, then the pcrphase words
    let mut p11 = Vec::new();
    for want in [".linux", ".osrel", ".cmdline", ".initrd"] {
        let (_, data) = sections.iter().find(|(n, _)| *n == want).unwrap();
        p11.push(D::digest([want.as_bytes(), b"\0"].concat()).to_vec());
        p11.push(D::digest(data).to_vec());
    }
    for w in ["enter-initrd", "leave-initrd", "sysinit", "ready"] {
        p11.push(D::digest(w.as_bytes()).to_vec());
    }
    [
        (4, pcr4),
        (7, chain::<D>(&p7)),
        (11, chain::<D>(&p11)),
        (12, hex::encode(vec![0u8; <D as Digest>::output_size()])),
        (15, chain::<D>(&[D::digest(pins).to_vec()])),
    ]
}

#[test]
fn measure_matches_the_rules_written_out() {
    let kernel = pe(
        &[
            (".text", vec![0x90; 3000]),
            (".data", b"kernel data".to_vec()),
        ],
        b"kernel trailer",
    );
    // the stub's own sections come first, like systemd-stub's .text/.sdmagic; order in the file
    // differs from the measurement order on purpose
    let sections = vec![
        (".text", vec![0xcc; 700]),
        (
            ".sdmagic",
            b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####".to_vec(),
        ),
        (".osrel", b"ID=debian\nIMAGE_ID=keyward\n".to_vec()),
        (
            ".cmdline",
            b"roothash=00ff root=/dev/mapper/root ro".to_vec(),
        ),
        (".initrd", vec![7u8; 1500]),
        (".linux", kernel.clone()),
    ];
    let uki = pe(&sections, b"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("uki.efi"), &uki).unwrap();
    std::fs::write(dir.path().join("pins"), b"krs_url = \"10.0.2.100:9443\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("measure")
        .arg("--uki")
        .arg(dir.path().join("uki.efi"))
        .arg("--pins")
        .arg(dir.path().join("pins"))
        .env_remove("AWS_OVMF")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pins = b"krs_url = \"10.0.2.100:9443\"\n";
    for (pcr, want) in expected::<Sha256>(&uki, &kernel, &sections, pins) {
        assert_eq!(
            doc["pcrs"]["sha256"][pcr.to_string()],
            want,
            "sha256 PCR {pcr}"
        );
    }
    for (pcr, want) in expected::<Sha384>(&uki, &kernel, &sections, pins) {
        assert_eq!(
            doc["pcrs"]["sha384"][pcr.to_string()],
            want,
            "sha384 PCR {pcr}"
        );
    }
    assert_eq!(doc["image"]["roothash"], "00ff");
    assert_eq!(doc["image"]["stub"], "systemd-stub 252.39-1~deb12u2");
    assert!(doc["snp"].is_null());
    assert!(doc["snp_note"].as_str().unwrap().contains("no AWS_OVMF"));

    // one changed byte of the kernel changes PCR 4 and PCR 11, not PCR 7 or 12
    let mut k2 = kernel.clone();
    k2[0x450] ^= 1;
    let mut s2 = sections.clone();
    s2[5].1 = k2;
    std::fs::write(dir.path().join("uki2.efi"), pe(&s2, b"")).unwrap();
    let out2 = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["measure", "--pcr7", "none", "--uki"])
        .arg(dir.path().join("uki2.efi"))
        .output()
        .unwrap();
    let doc2: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_ne!(doc2["pcrs"]["sha256"]["4"], doc["pcrs"]["sha256"]["4"]);
    assert_ne!(doc2["pcrs"]["sha256"]["11"], doc["pcrs"]["sha256"]["11"]);
    assert_eq!(doc2["pcrs"]["sha256"]["12"], doc["pcrs"]["sha256"]["12"]);
    assert!(
        doc2["pcrs"]["sha256"].get("7").is_none(),
        "--pcr7 none leaves PCR 7 out"
    );

    // the published file passes the strict reference-value parser, and the [tpm] policy section
    // parses as the verifier's TpmPolicy with the same values
    let st = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["measure", "--ak-name", "000b1234", "--uki"])
        .arg(dir.path().join("uki.efi"))
        .arg("--pins")
        .arg(dir.path().join("pins"))
        .arg("--out")
        .arg(dir.path().join("rv.json"))
        .arg("--tpm-policy")
        .arg(dir.path().join("tpm.toml"))
        .arg("--nitro-policy")
        .arg(dir.path().join("nitro.toml"))
        .status()
        .unwrap();
    assert!(st.success());
    // The NitroTPM section names PCR 15 (the pins) with its SHA-384 value, as the verifier's
    // NitroPolicy reads it.
    #[derive(serde::Deserialize)]
    struct NitroSection {
        nitro: keyward_verify::nitro::NitroPolicy,
    }
    let nitro: NitroSection =
        toml::from_str(&std::fs::read_to_string(dir.path().join("nitro.toml")).unwrap()).unwrap();
    let p15 = nitro.nitro.pcrs.iter().find(|p| p.pcr == 15).unwrap();
    assert_eq!(p15.values, [doc["pcrs"]["sha384"]["15"].as_str().unwrap()]);
    let p4 = nitro.nitro.pcrs.iter().find(|p| p.pcr == 4).unwrap();
    assert_eq!(p4.values, [doc["pcrs"]["sha384"]["4"].as_str().unwrap()]);
    let rv = keyward_verify::refvalues::ReferenceValues::from_json(
        &std::fs::read(dir.path().join("rv.json")).unwrap(),
    )
    .unwrap();
    let tpm = rv.tpm.unwrap();
    assert_eq!(tpm.bank, "sha256");
    let p4 = tpm.pcrs.iter().find(|p| p.pcr == 4).unwrap();
    assert_eq!(p4.values, [doc["pcrs"]["sha256"]["4"].as_str().unwrap()]);
    assert!(
        tpm.pcrs.iter().all(|p| p.pcr != 15),
        "PCR 15 is per customer, not per release"
    );
    assert_eq!(
        rv.nitrotpm.unwrap().pcr4,
        [doc["pcrs"]["sha384"]["4"].as_str().unwrap()]
    );
    #[derive(serde::Deserialize)]
    struct Section {
        tpm: keyward_verify::tpm::TpmPolicy,
    }
    let sec: Section =
        toml::from_str(&std::fs::read_to_string(dir.path().join("tpm.toml")).unwrap()).unwrap();
    assert_eq!(sec.tpm.registered_aks, ["000b1234"]);
    assert_eq!(sec.tpm.pcrs, [4, 7, 11, 12, 15]);
    let allowed15 = sec.tpm.allowed.iter().find(|a| a.pcr == 15).unwrap();
    assert_eq!(
        allowed15.values,
        [doc["pcrs"]["sha256"]["15"].as_str().unwrap()]
    );
    let us15 = sec.tpm.userspace.iter().find(|u| u.pcr == 15).unwrap();
    assert_eq!(us15.digests, [hex::encode(Sha256::digest(pins))]);

    // not a PE: an error, exit code 2, no panic
    std::fs::write(dir.path().join("junk"), b"MZ\0\0junk").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["measure", "--uki"])
        .arg(dir.path().join("junk"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
