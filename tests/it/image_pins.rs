//! `keyward-pins` (image/rootfs/usr/libexec/keyward/keyward-pins), run for real with bash:
//! the pins come from a fw_cfg file, PCR 15 is extended once per bank with the bank hash of
//! the pins, a second run refuses, and pins that are not exactly the four pin lines are
//! extended (PCR 15 shows what arrived) but produce no configuration.
//!
//! The TPM is the one stand-in: the kernel's sysfs PCR files and `tpm2_pcrextend` are replaced
//! by a directory and a small script that applies TPM2_PCR_Extend to it (the script's own
//! check of the result reads the same files). The real extend is exercised by `make image-test`.

use crate::tools;

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256, Sha384};

const FAKE_EXTEND: &str = r#"#!/usr/bin/python3
import hashlib, os, sys
sysfs = os.environ["KEYWARD_TPM_SYSFS"]
pcr, spec = sys.argv[1].split(":", 1)
for item in spec.split(","):
    bank, digest = item.split("=")
    path = f"{sysfs}/pcr-{bank}/{pcr}"
    old = bytes.fromhex(open(path).read().strip())
    new = hashlib.new(bank, old + bytes.fromhex(digest)).hexdigest().upper()
    open(path, "w").write(new + "\n")
"#;

fn setup(dir: &Path, pins: &[u8]) {
    for (bank, len) in [("sha256", 32), ("sha384", 48)] {
        std::fs::create_dir_all(dir.join(format!("sysfs/pcr-{bank}"))).unwrap();
        std::fs::write(
            dir.join(format!("sysfs/pcr-{bank}/15")),
            "00".repeat(len) + "\n",
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let fake = dir.join("bin/tpm2_pcrextend");
    std::fs::write(&fake, FAKE_EXTEND).unwrap();
    // modprobe and curl must not touch the host: both fail (no IMDS in a test)
    for tool in ["modprobe", "curl"] {
        std::fs::write(dir.join("bin").join(tool), "#!/bin/sh\nexit 1\n").unwrap();
    }
    for f in ["tpm2_pcrextend", "modprobe", "curl"] {
        Command::new("chmod")
            .arg("+x")
            .arg(dir.join("bin").join(f))
            .status()
            .unwrap();
    }
    std::fs::write(dir.join("fw_cfg"), pins).unwrap();
}

fn run(dir: &Path) -> (i32, String) {
    run_with(dir, &[])
}

fn run_with(dir: &Path, env: &[(&str, &Path)]) -> (i32, String) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rootfs/usr/libexec/keyward/keyward-pins");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rootfs/etc/keyward/keyward.toml");
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(script)
        .env("PATH", path)
        .env("KEYWARD_TPM_SYSFS", dir.join("sysfs"))
        .env("KEYWARD_PINS_DIR", dir.join("run"))
        .env("KEYWARD_PINS_FW_CFG", dir.join("fw_cfg"))
        .env("KEYWARD_PINS_IMDS", "http://127.0.0.1:9")
        .env("KEYWARD_BASE_CONFIG", base)
        .env("KEYWARD_SEV_GUEST", dir.join("no-sev-guest"))
        .env("KEYWARD_DMI_VENDOR", dir.join("no-dmi-vendor"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn pcr15(dir: &Path, bank: &str) -> String {
    std::fs::read_to_string(dir.join(format!("sysfs/pcr-{bank}/15")))
        .unwrap()
        .trim()
        .to_lowercase()
}

const GOOD: &str = "krs_url = \"10.0.2.100:9443\"\n\
krs_tls_spki_sha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\n\
receipt_spki_sha256 = \"2222222222222222222222222222222222222222222222222222222222222222\"\n\
# the admin CA\n\
admin_ca_sha256 = \"3333333333333333333333333333333333333333333333333333333333333333\"\n";

#[test]
fn pins_are_extended_once_and_become_the_configuration() {
    // The fake TPM is a /usr/bin/python3 script: a missing one fails with the package name.
    tools::debian_python3();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), GOOD.as_bytes());
    let (code, log) = run(dir.path());
    assert_eq!(code, 0, "{log}");
    let want256 = Sha256::digest([[0u8; 32].as_slice(), &Sha256::digest(GOOD)].concat());
    let want384 = Sha384::digest([[0u8; 48].as_slice(), &Sha384::digest(GOOD)].concat());
    assert_eq!(pcr15(dir.path(), "sha256"), hex::encode(want256));
    assert_eq!(pcr15(dir.path(), "sha384"), hex::encode(want384));
    assert_eq!(
        std::fs::read(dir.path().join("run/pins")).unwrap(),
        GOOD.as_bytes()
    );
    let config = std::fs::read_to_string(dir.path().join("run/keyward.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    let release = &parsed["master_key"]["release"];
    assert_eq!(release["krs_url"].as_str(), Some("10.0.2.100:9443"));
    assert_eq!(
        release["admin_ca_sha256"].as_str(),
        Some("3".repeat(64).as_str())
    );
    assert_eq!(parsed["master_key"]["source"].as_str(), Some("release"));
    assert!(log.contains("pins from qemu-fw_cfg"), "{log}");

    // a second run in the same boot refuses: PCR 15 is no longer zero
    let (code, log) = run(dir.path());
    assert_eq!(code, 2, "{log}");
    assert_eq!(pcr15(dir.path(), "sha256"), hex::encode(want256));
}

#[test]
fn pins_that_try_to_set_anything_else_are_refused_after_the_extend() {
    // The fake TPM is a /usr/bin/python3 script: a missing one fails with the package name.
    tools::debian_python3();
    for (name, pins) in [
        (
            "extra key",
            format!("{GOOD}attesters = [\"simulated-snp\"]\n"),
        ),
        ("new table", format!("{GOOD}[memory]\n")),
        (
            "duplicate",
            format!("{GOOD}krs_url = \"evil.example:443\"\n"),
        ),
        (
            "missing",
            GOOD.replace("admin_ca_sha256", "# admin_ca_sha256"),
        ),
        ("short hash", GOOD.replace(&"1".repeat(64), "1111")),
        (
            "quote injection",
            GOOD.replace("10.0.2.100:9443", "a:1\"\nsource = \"file"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), pins.as_bytes());
        let (code, log) = run(dir.path());
        assert_eq!(code, 4, "{name}: {log}");
        assert!(
            !dir.path().join("run/keyward.toml").exists(),
            "{name}: a configuration was written"
        );
        let want =
            Sha256::digest([[0u8; 32].as_slice(), &Sha256::digest(pins.as_bytes())].concat());
        assert_eq!(
            pcr15(dir.path(), "sha256"),
            hex::encode(want),
            "{name}: PCR 15 shows what arrived"
        );
    }
    // no pins at all: nothing is extended
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), b"");
    std::fs::remove_file(dir.path().join("fw_cfg")).unwrap();
    let (code, log) = run(dir.path());
    assert_eq!(code, 1, "{log}");
    assert_eq!(pcr15(dir.path(), "sha256"), "00".repeat(32));
}

/// The platform decides the attesters line: `snp` when /dev/sev-guest exists, `nitrotpm` when
/// the TPM is EC2's (DMI vendor "Amazon EC2"), `tpm` for any other TPM; and it is the only
/// thing in the configuration the script changes.
#[test]
fn the_attesters_follow_the_platform() {
    // The fake TPM is a /usr/bin/python3 script: a missing one fails with the package name.
    tools::debian_python3();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rootfs/etc/keyward/keyward.toml"),
    )
    .unwrap();
    for (name, sev_guest, vendor, want) in [
        (
            "EC2 with SEV-SNP",
            true,
            "Amazon EC2",
            vec!["snp", "nitrotpm"],
        ),
        ("EC2 without SEV-SNP", false, "Amazon EC2", vec!["nitrotpm"]),
        ("qemu with a swtpm", false, "QEMU", vec!["tpm"]),
        ("SEV-SNP elsewhere", true, "QEMU", vec!["snp", "tpm"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), GOOD.as_bytes());
        let sev = dir.path().join("sev-guest");
        if sev_guest {
            std::fs::write(&sev, b"").unwrap();
        }
        let dmi = dir.path().join("sys_vendor");
        std::fs::write(&dmi, format!("{vendor}\n")).unwrap();
        let (code, log) = run_with(
            dir.path(),
            &[("KEYWARD_SEV_GUEST", &sev), ("KEYWARD_DMI_VENDOR", &dmi)],
        );
        assert_eq!(code, 0, "{name}: {log}");
        let config = std::fs::read_to_string(dir.path().join("run/keyward.toml")).unwrap();
        let parsed: toml::Table = toml::from_str(&config).unwrap();
        let got: Vec<&str> = parsed["master_key"]["release"]["attesters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{name}");
        // everything else is the image's file, then the pins
        let without = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("attesters = "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let mut expected = without(&base);
        expected.push(String::new());
        expected.extend(GOOD.lines().map(str::to_owned));
        assert_eq!(without(&config), expected, "{name}");
    }
}
