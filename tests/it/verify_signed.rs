//! `keyward verify --reference-values F --signature-key minisign.pub`: files signed at run time
//! with the real minisign tool (a throwaway key pair made in the test, never a release key).
//! A good signature pins the policy's SNP measurements to the file's; a flipped byte in the
//! file or in `F.minisig`, a missing `F.minisig` or another key is refused (exit 2) with one
//! line naming the file, before the file is used.

use std::path::Path;
use std::process::{Command, Output};

use crate::tools;

const JUNE: &str = "2025-06-01T00:00:00Z";

fn data(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("verify")
        .args([
            "--report",
            &data("tests/data/snp/virtee-sev/report_milan.bin"),
        ])
        .args(["--cert", &data("tests/data/snp/virtee-sev/vcek_milan.der")])
        .args(["--at", JUNE])
        .args(args)
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh minisign key pair without a password (-W) in `dir`: (public, secret) paths.
fn keypair(dir: &Path, name: &str) -> (String, String) {
    let pk = dir.join(format!("{name}.pub")).display().to_string();
    let sk = dir.join(format!("{name}.key")).display().to_string();
    let o = Command::new(tools::need("minisign", "minisign"))
        .args(["-G", "-W", "-p", &pk, "-s", &sk])
        .output()
        .unwrap();
    assert!(o.status.success(), "minisign -G: {}", show(&o));
    (pk, sk)
}

/// `minisign -S`: writes `file.minisig`.
fn sign(sk: &str, file: &str) {
    let o = Command::new(tools::need("minisign", "minisign"))
        .args(["-S", "-s", sk, "-m", file, "-t", "keyward test release"])
        .output()
        .unwrap();
    assert!(o.status.success(), "minisign -S: {}", show(&o));
}

/// The example reference values with the first aws-ec2 launch measurement set to `hex`.
fn reference_values(dir: &Path, name: &str, measurement: &str) -> String {
    let ex = std::fs::read(data("attestation/reference-values.example.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&ex).unwrap();
    v["snp"]["launch"][0]["measurement"] = measurement.into();
    let p = dir.join(name).display().to_string();
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p
}

/// The launch measurement of the report (offset 0x90, 48 bytes).
fn report_measurement() -> String {
    let r = std::fs::read(data("tests/data/snp/virtee-sev/report_milan.bin")).unwrap();
    hex::encode(&r[0x90..0x90 + 48])
}

fn flip(path: &str, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn refused_naming(o: &Output, file: &str, what: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", show(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?}: {}", show(o)));
    assert!(line.contains(file), "the error names {file}: {line}");
    assert!(o.stdout.is_empty(), "no verdict printed: {}", show(o));
}

#[test]
fn signed_reference_values_pin_the_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let (pk, sk) = keypair(dir.path(), "release");
    let good = reference_values(dir.path(), "rv.json", &report_measurement());
    sign(&sk, &good);

    let o = verify(&["--reference-values", &good, "--signature-key", &pk]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is signed by") && err.contains("keyward test release"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("PASS    snp.measurement"), "{out}");
    assert!(out.contains("pinned to reference values"), "{out}");

    // Signed values of another release: the pin is real, the measurement check fails.
    let other = reference_values(dir.path(), "other.json", &"ab".repeat(48));
    sign(&sk, &other);
    let o = verify(&["--reference-values", &other, "--signature-key", &pk]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL    snp.measurement"));
}

#[test]
fn tampered_file_or_signature_or_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pk, sk) = keypair(dir.path(), "release");
    let (other_pk, _) = keypair(dir.path(), "other");
    let rv = reference_values(dir.path(), "rv.json", &report_measurement());
    sign(&sk, &rv);
    let sig = format!("{rv}.minisig");
    let pristine_rv = std::fs::read(&rv).unwrap();
    let pristine_sig = std::fs::read(&sig).unwrap();

    // Another key.
    let o = verify(&["--reference-values", &rv, "--signature-key", &other_pk]);
    refused_naming(&o, &rv, "does not verify");

    // One flipped byte in the file (inside a measurement: still valid JSON).
    let text = String::from_utf8(pristine_rv.clone()).unwrap();
    let at = text.find("666666").unwrap();
    flip(&rv, at);
    let o = verify(&["--reference-values", &rv, "--signature-key", &pk]);
    refused_naming(&o, &rv, "does not verify");
    std::fs::write(&rv, &pristine_rv).unwrap();

    // One flipped byte in the signature line (the second line of the .minisig).
    let s = String::from_utf8(pristine_sig.clone()).unwrap();
    let line2 = s.find('\n').unwrap() + 1;
    let mut b = pristine_sig.clone();
    // Change one base64 character to another valid one inside the Ed25519 signature.
    let i = line2 + 40;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&sig, &b).unwrap();
    let o = verify(&["--reference-values", &rv, "--signature-key", &pk]);
    refused_naming(&o, &rv, "signature");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&sig));

    // A changed trusted comment is covered by the signature too.
    let mut t = s.clone();
    t = t.replace("keyward test release", "keyward test releasf");
    std::fs::write(&sig, t).unwrap();
    let o = verify(&["--reference-values", &rv, "--signature-key", &pk]);
    refused_naming(&o, &rv, "does not verify");

    // No signature at all.
    std::fs::remove_file(&sig).unwrap();
    let o = verify(&["--reference-values", &rv, "--signature-key", &pk]);
    refused_naming(&o, &rv, "no signature");

    // Back to the pristine pair: accepted (so each refusal above was the change alone).
    std::fs::write(&sig, &pristine_sig).unwrap();
    let o = verify(&["--reference-values", &rv, "--signature-key", &pk]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}
