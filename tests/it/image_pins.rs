//! `keyward-pins` (image/rootfs/usr/libexec/keyward/keyward-pins), run for real with bash:
//! the pins come from a fw_cfg file, PCR 15 is extended once per bank with the bank hash of
//! the user data without its password lines, a second run refuses, and user data that tries
//! to set anything else is extended (PCR 15 shows what arrived) but produces no configuration.
//! A fleet member's user data ([deploy], [storage], [fleet], krs_fallback_urls) becomes the
//! files under the run directory (the password 0600, owned by the service user) and a
//! configuration `keyward config check` accepts; PCR 15 follows the storage URL, the CAs and
//! the KRS addresses but not the password; each malformed field is refused naming it; and the
//! AWS fleet template's rendered user data is accepted.
//!
//! The TPM is the one stand-in: the kernel's sysfs PCR files and `tpm2_pcrextend` are replaced
//! by a directory and a small script that applies TPM2_PCR_Extend to it (the script's own
//! check of the result reads the same files). The real extend is exercised by `make image-test`.

use crate::tools;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

fn run_with(dir: &Path, env: &[(&str, &OsStr)]) -> (i32, String) {
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
        .env("KEYWARD_HOSTNAME_FILE", dir.join("no-hostname"))
        .env("KEYWARD_SERVICE_USER", service_user().0)
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
            &[
                ("KEYWARD_SEV_GUEST", sev.as_os_str()),
                ("KEYWARD_DMI_VENDOR", dmi.as_os_str()),
            ],
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
        // everything else is the image's file, then the pin lines (not the comments)
        let without = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("attesters = "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let mut expected = without(&base);
        expected.push(String::new());
        expected.extend(
            GOOD.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned),
        );
        assert_eq!(without(&config), expected, "{name}");
    }
}

// ---- a fleet member's user data: [deploy], [storage], [fleet], krs_fallback_urls

const BIN: &str = env!("CARGO_BIN_EXE_keyward");
const PASSWORD: &str = "Tr0ub4dor-and-3-horses";

/// The user the password file is given to: `nobody` when the tests run as root (so that the
/// chown shows), else the current user (the only one a non-root process can give a file to).
fn service_user() -> (String, u32) {
    static USER: std::sync::OnceLock<(String, u32)> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        let me = tempfile::tempfile().unwrap().metadata().unwrap().uid();
        if me != 0 {
            return (me.to_string(), me);
        }
        let out = Command::new("id").args(["-u", "nobody"]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("running as root, the tests give the password file to the user nobody");
        ("nobody".to_string(), uid)
    })
    .clone()
}

fn identity(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("image/test/identity")
        .join(name)
}

/// The DER of the one certificate in a committed PEM file.
fn der(name: &str) -> Vec<u8> {
    let pem = std::fs::read(identity(name)).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    certs[0].to_vec()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What CloudFormation renders for a member (image/cloudformation/keyward-fleet.yaml), with
/// the TEST operator CA and, as the database CA bundle, `db_ca` (a committed certificate).
fn fleet_user_data(operator_ca: &str, db_ca: &str) -> String {
    let ca = der(operator_ca);
    let bundle = std::fs::read(identity(db_ca)).unwrap();
    format!(
        "krs_url = \"krs.example.com:7443\"\n\
         krs_tls_spki_sha256 = \"{}\"\n\
         receipt_spki_sha256 = \"{}\"\n\
         admin_ca_sha256 = \"{}\"\n\
         krs_fallback_urls = [\"krs-b.example.com:7443\", \"10.0.9.9:7443\"]\n\
         \n\
         [deploy]\n\
         operator_ca_der_base64 = \"{}\"\n\
         \n\
         [storage]\n\
         backend = \"postgres\"\n\
         url = \"postgresql://keyward@db.abc123.us-east-2.rds.amazonaws.com:5432/keyward\"\n\
         ca_pem_base64 = \"{}\"\n\
         password = \"{PASSWORD}\"\n",
        "1".repeat(64),
        "2".repeat(64),
        hex::encode(Sha256::digest(&ca)),
        b64(&ca),
        b64(&bundle),
    )
}

fn fleet() -> String {
    fleet_user_data("operator-ca.pem", "tls.crt")
}

/// A curl that answers as IMDSv2 does for a token and the availability zone, nothing else.
fn fake_imds(dir: &Path, az: &str) {
    let curl = dir.join("bin/curl");
    std::fs::write(
        &curl,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do last=\"$a\"; done\ncase \"$last\" in\n\
             */latest/api/token) echo TOKEN ;;\n\
             */latest/meta-data/placement/availability-zone) printf '%s' '{az}' ;;\n\
             *) exit 22 ;;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&curl, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_member(dir: &Path) -> (i32, String) {
    let host = dir.join("hostname");
    std::fs::write(&host, "ip-10-0-1-7\n").unwrap();
    run_with(dir, &[("KEYWARD_HOSTNAME_FILE", host.as_os_str())])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn config_check(config: &Path) {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "keyward config check {}:\n{text}\n{}",
        config.display(),
        std::fs::read_to_string(config).unwrap()
    );
}

#[test]
fn a_fleet_members_user_data_becomes_its_configuration() {
    tools::debian_python3();
    let data = fleet();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), data.as_bytes());
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let run = dir.path().join("run");

    // the files, their contents and modes
    let pw = run.join("db-password");
    assert_eq!(std::fs::read_to_string(&pw).unwrap(), PASSWORD);
    assert_eq!(mode(&pw), 0o600, "the password file is 0600");
    assert_eq!(
        std::fs::metadata(&pw).unwrap().uid(),
        service_user().1,
        "the password file belongs to the service user"
    );
    assert_eq!(
        std::fs::read(run.join("db-ca.pem")).unwrap(),
        std::fs::read(identity("tls.crt")).unwrap()
    );
    assert_eq!(mode(&run.join("db-ca.pem")), 0o644);
    let written = std::fs::read(run.join("operator-ca.pem")).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut written.as_slice())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].to_vec(), der("operator-ca.pem"));
    assert_eq!(mode(&run.join("operator-ca.pem")), 0o644);
    assert_eq!(mode(&run.join("keyward.toml")), 0o644);
    assert_eq!(mode(&run.join("pins")), 0o644);

    // the configuration
    let text = std::fs::read_to_string(run.join("keyward.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let storage = &config["storage"];
    assert_eq!(storage["backend"].as_str(), Some("postgres"));
    assert_eq!(
        storage["url"].as_str(),
        Some("postgresql://keyward@db.abc123.us-east-2.rds.amazonaws.com:5432/keyward")
    );
    let at = |f: &str| run.join(f).display().to_string();
    assert_eq!(storage["ca_file"].as_str(), Some(at("db-ca.pem").as_str()));
    assert_eq!(
        storage["password_file"].as_str(),
        Some(at("db-password").as_str())
    );
    assert_eq!(storage["dir"].as_str(), Some("/var/lib/keyward"));
    assert!(storage.get("password").is_none());
    assert_eq!(
        config["admin"]["client_ca_file"].as_str(),
        Some(at("operator-ca.pem").as_str())
    );
    let release = &config["master_key"]["release"];
    assert_eq!(release["krs_url"].as_str(), Some("krs.example.com:7443"));
    assert_eq!(
        release["krs_fallback_urls"].as_array().unwrap(),
        &vec![
            toml::Value::from("krs-b.example.com:7443"),
            toml::Value::from("10.0.9.9:7443")
        ]
    );
    assert_eq!(
        release["admin_ca_sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(der("operator-ca.pem")))
    );
    assert_eq!(
        config["fleet"]["label"].as_str(),
        Some("ip-10-0-1-7"),
        "no [fleet] and no IMDS: the host name"
    );
    assert!(
        log.contains("fleet label ip-10-0-1-7 (the host name"),
        "{log}"
    );
    config_check(&run.join("keyward.toml"));

    // the password is only in its file: not in the measured copy, the configuration or the log
    for entry in std::fs::read_dir(&run).unwrap() {
        let path = entry.unwrap().path();
        if path != pw {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(PASSWORD),
                "the password is in {}",
                path.display()
            );
        }
    }
    assert!(!log.contains(PASSWORD), "{log}");
    let mut names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "db-ca.pem",
            "db-password",
            "keyward.toml",
            "operator-ca.pem",
            "pins"
        ],
        "no temporary copy of the user data is left"
    );

    // the label: the availability zone from IMDSv2 when it answers, the user data's when given
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), data.as_bytes());
    fake_imds(dir.path(), "us-east-2b");
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("run/keyward.toml")).unwrap())
            .unwrap();
    assert_eq!(
        config["fleet"]["label"].as_str(),
        Some("us-east-2b"),
        "{log}"
    );
    config_check(&dir.path().join("run/keyward.toml"));

    let dir = tempfile::tempdir().unwrap();
    setup(
        dir.path(),
        format!("{data}\n[fleet]\nlabel = \"blue/us-east-2a\"\n").as_bytes(),
    );
    fake_imds(dir.path(), "us-east-2b");
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("run/keyward.toml")).unwrap())
            .unwrap();
    assert_eq!(config["fleet"]["label"].as_str(), Some("blue/us-east-2a"));

    // password_base64 carries what a TOML string cannot: the same file, byte for byte
    let odd = "p\"w\\with quotes and ü";
    let dir = tempfile::tempdir().unwrap();
    let data64 = data.replace(
        &format!("password = \"{PASSWORD}\""),
        &format!("password_base64 = \"{}\"", b64(odd.as_bytes())),
    );
    setup(dir.path(), data64.as_bytes());
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let pw = dir.path().join("run/db-password");
    assert_eq!(std::fs::read_to_string(&pw).unwrap(), odd);
    assert_eq!(mode(&pw), 0o600);
    config_check(&dir.path().join("run/keyward.toml"));
}

/// PCR 15 after one run on `data`; the measured copy must be what `keyward measure` computes.
/// A fleet whose database fails over: libpq's multi-host URL, with the read-write rule, is
/// written as given and `keyward config check` accepts the configuration it becomes.
#[test]
fn a_multi_host_storage_url_becomes_the_configuration() {
    tools::debian_python3();
    let single = "postgresql://keyward@db.abc123.us-east-2.rds.amazonaws.com:5432/keyward";
    let multi = "postgresql://keyward@db-a.example.com:5432,db-b.example.com,10.0.9.7:6432/keyward?target_session_attrs=read-write";
    let data = fleet().replace(single, multi);
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), data.as_bytes());
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let toml_path = dir.path().join("run/keyward.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(config["storage"]["url"].as_str(), Some(multi));
    config_check(&toml_path);
}

fn pcr15_of(data: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), data.as_bytes());
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 0, "{log}");
    let measured = keyward_measure::pcr15_input(data.as_bytes());
    assert_eq!(
        std::fs::read(dir.path().join("run/pins")).unwrap(),
        measured,
        "run/pins is the measured input"
    );
    let got = pcr15(dir.path(), "sha256");
    let want = Sha256::digest([[0u8; 32].as_slice(), &Sha256::digest(&measured)].concat());
    assert_eq!(got, hex::encode(want));
    got
}

#[test]
fn pcr15_measures_what_changes_trust_and_not_the_password() {
    tools::debian_python3();
    let data = fleet();
    let base = pcr15_of(&data);
    let measured = keyward_measure::pcr15_input(data.as_bytes());
    assert_eq!(
        String::from_utf8(measured).unwrap(),
        data.replace(&format!("password = \"{PASSWORD}\"\n"), ""),
        "the measured input is the user data without the password line"
    );
    let url = "postgresql://keyward@db.abc123.us-east-2.rds.amazonaws.com:5432/keyward";
    let same = [
        (
            "another password",
            data.replace(PASSWORD, "c0rrect-h0rse-battery-staple"),
        ),
        (
            "the password as password_base64",
            data.replace(
                &format!("password = \"{PASSWORD}\""),
                &format!("password_base64 = \"{}\"", b64(b"another")),
            ),
        ),
    ];
    for (name, changed) in same {
        assert_eq!(pcr15_of(&changed), base, "{name}: PCR 15 must not change");
    }
    let different = [
        (
            "another database host",
            data.replace(url, &url.replace("db.abc123", "db.evil99")),
        ),
        ("another database port", data.replace(":5432/", ":5433/")),
        ("another database", data.replace("/keyward\"", "/other\"")),
        (
            "another database CA",
            fleet_user_data("operator-ca.pem", "admin.pem"),
        ),
        (
            "another operator CA (and its pin)",
            fleet_user_data("admin.pem", "tls.crt"),
        ),
        (
            "other fallback URLs",
            data.replace("10.0.9.9:7443", "10.6.6.6:7443"),
        ),
        (
            "no fallback URLs",
            data.replace(
                "krs_fallback_urls = [\"krs-b.example.com:7443\", \"10.0.9.9:7443\"]\n",
                "",
            ),
        ),
        (
            "another KRS URL",
            data.replace("krs.example.com:7443", "krs.example.org:7443"),
        ),
        (
            "another KRS TLS pin",
            data.replace(&"1".repeat(64), &"4".repeat(64)),
        ),
        (
            "a fleet label",
            format!("{data}[fleet]\nlabel = \"blue\"\n"),
        ),
    ];
    for (name, changed) in different {
        assert_ne!(pcr15_of(&changed), base, "{name}: PCR 15 must change");
    }
}

#[test]
fn each_malformed_field_is_refused_naming_it() {
    tools::debian_python3();
    let data = fleet();
    let url = "url = \"postgresql://keyward@db.abc123.us-east-2.rds.amazonaws.com:5432/keyward\"";
    let pw_line = format!("password = \"{PASSWORD}\"");
    let ca_line = data
        .lines()
        .find(|l| l.starts_with("ca_pem_base64 = "))
        .unwrap()
        .to_string();
    let deploy_line = data
        .lines()
        .find(|l| l.starts_with("operator_ca_der_base64 = "))
        .unwrap()
        .to_string();
    let fallback = "krs_fallback_urls = [\"krs-b.example.com:7443\", \"10.0.9.9:7443\"]";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "fallback not a list",
            data.replace(fallback, "krs_fallback_urls = \"krs-b.example.com:7443\""),
            "krs_fallback_urls",
        ),
        (
            "fallback empty list",
            data.replace(fallback, "krs_fallback_urls = []"),
            "krs_fallback_urls",
        ),
        (
            "fallback without the blank",
            data.replace(", \"10.0.9.9", ",\"10.0.9.9"),
            "krs_fallback_urls",
        ),
        (
            "fallback port out of range",
            data.replace("10.0.9.9:7443", "10.0.9.9:70000"),
            "krs_fallback_urls[1]",
        ),
        (
            "fallback with a scheme",
            data.replace(
                "\"krs-b.example.com:7443\"",
                "\"https://krs-b.example.com:7443\"",
            ),
            "krs_fallback_urls",
        ),
        (
            "krs_url port out of range",
            data.replace("krs.example.com:7443", "krs.example.com:0"),
            "krs_url",
        ),
        (
            "operator CA not base64",
            data.replace(&deploy_line, "operator_ca_der_base64 = \"not base64!\""),
            "deploy.operator_ca_der_base64",
        ),
        (
            "operator CA not DER",
            data.replace(
                &deploy_line,
                &format!("operator_ca_der_base64 = \"{}\"", b64(b"hello")),
            ),
            "deploy.operator_ca_der_base64",
        ),
        (
            "[deploy] without the CA",
            data.replace(&format!("{deploy_line}\n"), ""),
            "deploy.operator_ca_der_base64 is missing",
        ),
        (
            "another backend",
            data.replace("backend = \"postgres\"", "backend = \"file\""),
            "storage.backend",
        ),
        (
            "no backend",
            data.replace("backend = \"postgres\"\n", ""),
            "storage.backend is missing",
        ),
        (
            "a password in the URL",
            data.replace("//keyward@", "//keyward:hunter2@"),
            "storage.url",
        ),
        (
            "URL options",
            data.replace("5432/keyward\"", "5432/keyward?sslmode=disable\""),
            "storage.url",
        ),
        (
            "URL port out of range",
            data.replace(":5432/", ":99999/"),
            "storage.url",
        ),
        (
            "several hosts without target_session_attrs",
            data.replace("5432/keyward\"", "5432,db-b.example.com:5432/keyward\""),
            "storage.url lists several hosts but not ?target_session_attrs=read-write",
        ),
        (
            "nine hosts",
            data.replace(
                "5432/keyward\"",
                &format!(
                    "5432{}/keyward?target_session_attrs=read-write\"",
                    ",h:5432".repeat(8)
                ),
            ),
            "storage.url lists not 1-8 hosts",
        ),
        (
            "an empty host between commas",
            data.replace(
                "5432/keyward\"",
                "5432,,db-b:5432/keyward?target_session_attrs=read-write\"",
            ),
            "storage.url lists not 1-8 hosts",
        ),
        (
            "the second host's port out of range",
            data.replace(
                "5432/keyward\"",
                "5432,db-b:70000/keyward?target_session_attrs=read-write\"",
            ),
            "storage.url host \"db-b:70000\"",
        ),
        (
            "another option beside target_session_attrs",
            data.replace(
                "5432/keyward\"",
                "5432,db-b:5432/keyward?target_session_attrs=any\"",
            ),
            "storage.url",
        ),
        (
            "URL of another scheme",
            data.replace("postgresql://", "mysql://"),
            "storage.url",
        ),
        (
            "URL unquoted",
            data.replace(url, "url = postgresql://keyward@db:5432/keyward"),
            "storage.url",
        ),
        (
            "no URL",
            data.replace(&format!("{url}\n"), ""),
            "storage.url is missing",
        ),
        (
            "URL twice",
            data.replace(url, &format!("{url}\n{url}")),
            "storage.url given twice",
        ),
        (
            "CA bundle not base64",
            data.replace(&ca_line, "ca_pem_base64 = \"@@@@\""),
            "storage.ca_pem_base64",
        ),
        (
            "CA bundle not PEM",
            data.replace(
                &ca_line,
                &format!("ca_pem_base64 = \"{}\"", b64(b"just some text\n")),
            ),
            "storage.ca_pem_base64",
        ),
        (
            "CA bundle cut short",
            data.replace(
                &ca_line,
                &format!(
                    "ca_pem_base64 = \"{}\"",
                    b64(&std::fs::read(identity("tls.crt")).unwrap()[..300])
                ),
            ),
            "storage.ca_pem_base64",
        ),
        (
            "no CA bundle",
            data.replace(&format!("{ca_line}\n"), ""),
            "storage.ca_pem_base64 is missing",
        ),
        (
            "a CA file instead",
            data.replace(&ca_line, "ca_file = \"/etc/keyward/rds-ca.pem\""),
            "storage.ca_file",
        ),
        (
            "a password file instead",
            data.replace(&pw_line, "password_file = \"/etc/pw\""),
            "storage.password_file",
        ),
        (
            "a password with a backslash",
            data.replace(PASSWORD, &format!("{PASSWORD}\\n")),
            "storage.password",
        ),
        (
            "an empty password",
            data.replace(&pw_line, "password = \"\""),
            "storage.password",
        ),
        (
            "no password",
            data.replace(&format!("{pw_line}\n"), ""),
            "storage.password is missing",
        ),
        (
            "both passwords",
            data.replace(
                &pw_line,
                &format!(
                    "{pw_line}\npassword_base64 = \"{}\"",
                    b64(PASSWORD.as_bytes())
                ),
            ),
            "storage.password and storage.password_base64",
        ),
        (
            "password_base64 with a newline",
            data.replace(
                &pw_line,
                &format!(
                    "password_base64 = \"{}\"",
                    b64(format!("{PASSWORD}\nx").as_bytes())
                ),
            ),
            "storage.password_base64",
        ),
        (
            "password_base64 not base64",
            data.replace(&pw_line, &format!("password_base64 = \"{PASSWORD}\"")),
            "storage.password_base64",
        ),
        (
            "a bad label",
            format!("{data}[fleet]\nlabel = \"us east 1a\"\n"),
            "fleet.label",
        ),
        (
            "a long label",
            format!("{data}[fleet]\nlabel = \"{}\"\n", "a".repeat(65)),
            "fleet.label",
        ),
        (
            "[fleet] without a label",
            format!("{data}[fleet]\n"),
            "fleet.label is missing",
        ),
        (
            "an unknown fleet key",
            format!("{data}[fleet]\nlabel = \"a\"\nid = \"b\"\n"),
            "fleet.id",
        ),
        (
            "[storage] twice",
            format!("{data}[storage]\n"),
            "[storage] given twice",
        ),
        (
            "another section",
            format!("{data}[master_key]\nsource = \"file\"\n"),
            "[master_key]",
        ),
        (
            "a pin inside [storage]",
            format!("{data}admin_ca_sha256 = \"{}\"\n", "5".repeat(64)),
            "storage.admin_ca_sha256",
        ),
        (
            "a password at the top",
            format!("password = \"{PASSWORD}\"\n{data}"),
            "password (line 1)",
        ),
        (
            "a tab",
            data.replace("backend = \"postgres\"", "backend\t= \"postgres\""),
            "printable ASCII",
        ),
        ("CRLF lines", data.replace('\n', "\r\n"), "printable ASCII"),
        (
            "no blanks around =",
            data.replace("backend = \"postgres\"", "backend=\"postgres\""),
            "line 11",
        ),
    ];
    for (name, bad, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), bad.as_bytes());
        let (code, log) = run_member(dir.path());
        assert_eq!(code, 4, "{name}: {log}");
        let line = log
            .lines()
            .find(|l| l.contains("refusing the user data"))
            .unwrap_or_else(|| panic!("{name}: no refusal line:\n{log}"));
        assert!(
            line.contains(field),
            "{name}: the refusal must name {field}: {line}"
        );
        assert!(
            !log.contains(PASSWORD),
            "{name}: the password is in the log:\n{log}"
        );
        let left: Vec<String> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["pins"], "{name}: only the measured copy is left");
        let want = Sha256::digest(
            [
                [0u8; 32].as_slice(),
                &Sha256::digest(keyward_measure::pcr15_input(bad.as_bytes())),
            ]
            .concat(),
        );
        assert_eq!(
            pcr15(dir.path(), "sha256"),
            hex::encode(want),
            "{name}: PCR 15 shows what arrived (without the password lines)"
        );
    }
}

/// The operator CA travels in the user data but is trusted only as the admin_ca_sha256 pin
/// names it: any other certificate refuses the boot, naming both hashes.
#[test]
fn an_operator_ca_that_is_not_the_pinned_one_is_refused() {
    tools::debian_python3();
    let data = fleet();
    let pinned = hex::encode(Sha256::digest(der("operator-ca.pem")));
    let other = der("admin.pem");
    let bad = data.replace(&b64(&der("operator-ca.pem")), &b64(&other));
    assert_ne!(bad, data);
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), bad.as_bytes());
    let (code, log) = run_member(dir.path());
    assert_eq!(code, 4, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("refusing the user data"))
        .unwrap();
    assert!(
        line.contains("deploy.operator_ca_der_base64")
            && line.contains(&hex::encode(Sha256::digest(&other)))
            && line.contains(&format!("not the admin_ca_sha256 pin {pinned}")),
        "{line}"
    );
    assert!(!dir.path().join("run/keyward.toml").exists());
    assert!(!dir.path().join("run/operator-ca.pem").exists());
    assert!(!dir.path().join("run/db-password").exists());
}

/// CloudFormation's evaluation of the few intrinsic functions the user data uses (Ref, Fn::If
/// with its condition, Fn::Join, Fn::Not, Fn::Equals, the database's Fn::GetAtt).
fn cfn_eval(
    t: &serde_json::Value,
    v: &serde_json::Value,
    params: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::{json, Value};
    let Value::Object(o) = v else {
        return v.clone();
    };
    let (name, arg) = o.iter().next().expect("a function");
    let args = arg.as_array();
    let at = |i: usize| cfn_eval(t, &args.unwrap()[i], params);
    match name.as_str() {
        "Ref" => params[arg.as_str().unwrap()].clone(),
        "Fn::GetAtt" => match args.unwrap()[1].as_str().unwrap() {
            "Endpoint.Address" => {
                json!("keyward-prod-database-x1y2.abc123.us-east-2.rds.amazonaws.com")
            }
            "Endpoint.Port" => json!("5432"),
            other => panic!("GetAtt {other}"),
        },
        "Fn::Join" => {
            let items = at(1);
            let items: Vec<String> = items
                .as_array()
                .unwrap()
                .iter()
                .map(|i| cfn_eval(t, i, params).as_str().unwrap().to_string())
                .collect();
            json!(items.join(at(0).as_str().unwrap()))
        }
        "Fn::If" => {
            let cond = &t["Conditions"][args.unwrap()[0].as_str().unwrap()];
            if cfn_eval(t, cond, params) == json!(true) {
                at(1)
            } else {
                at(2)
            }
        }
        "Fn::Not" => json!(at(0) != json!(true)),
        "Fn::Equals" => json!(at(0) == at(1)),
        other => panic!("{other} is not evaluated here"),
    }
}

/// The fleet template's user data (image/cloudformation/keyward-fleet.yaml), rendered as
/// CloudFormation renders it, with and without KrsFallbackAddresses, is accepted by the image's
/// keyward-pins and becomes a configuration `keyward config check` accepts: the template and
/// the image agree on the format.
#[test]
fn cfn_fleet_user_data_is_what_keyward_pins_accepts() {
    tools::debian_python3();
    let t = crate::cfn::template();
    let sub = &t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        ["Fn::Base64"]["Fn::Sub"];
    let ca = der("operator-ca.pem");
    for fallback in [vec![""], vec!["krs-b.example.com:7443", "10.0.9.9:7443"]] {
        let params = serde_json::json!({
            "KrsAddress": "krs.example.com:7443",
            "KrsTlsSpkiSha256": "1".repeat(64),
            "ReceiptSpkiSha256": "2".repeat(64),
            "AdminCaSha256": hex::encode(Sha256::digest(&ca)),
            "OperatorCaDerBase64": b64(&ca),
            "KrsFallbackAddresses": fallback,
            "DbCaPemBase64": b64(&std::fs::read(identity("tls.crt")).unwrap()),
            "DbPassword": "Ab3".repeat(12),
        });
        let mut text = sub[0].as_str().unwrap().to_string();
        for (name, v) in sub[1].as_object().unwrap() {
            let value = cfn_eval(&t, v, &params);
            text = text.replace(&format!("${{{name}}}"), value.as_str().unwrap());
        }
        for (name, v) in params.as_object().unwrap() {
            if let Some(s) = v.as_str() {
                text = text.replace(&format!("${{{name}}}"), s);
            }
        }
        assert!(!text.contains("${"), "not rendered:\n{text}");
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), text.as_bytes());
        let (code, log) = run_member(dir.path());
        assert_eq!(code, 0, "{log}\n{text}");
        let run = dir.path().join("run");
        config_check(&run.join("keyward.toml"));
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(run.join("keyward.toml")).unwrap()).unwrap();
        let got: Vec<&str> = config["master_key"]["release"]
            .get("krs_fallback_urls")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        let want: Vec<&str> = fallback.iter().copied().filter(|s| !s.is_empty()).collect();
        assert_eq!(got, want);
        assert_eq!(
            std::fs::read_to_string(run.join("db-password")).unwrap(),
            "Ab3".repeat(12)
        );
        assert_eq!(
            config["storage"]["url"].as_str(),
            Some("postgresql://keyward@keyward-prod-database-x1y2.abc123.us-east-2.rds.amazonaws.com:5432/keyward")
        );
    }
}
