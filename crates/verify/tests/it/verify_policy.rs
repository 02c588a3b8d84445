//! Policies: every example in attestation/policies/ parses (its tpm and nitro sections into
//! those verifiers' own types), the built-in default is the shipped default.toml, and the
//! example reference-value file matches its documented shape.

use std::path::PathBuf;

use keyward_verify::{Policy, DEFAULT_POLICY_TOML};

fn root() -> PathBuf {
    crate::repo()
}

#[test]
fn example_policies_parse_with_their_sections() {
    let dir = root().join("attestation/policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        let bytes = std::fs::read(&path).unwrap();
        let p = Policy::from_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!p.name.is_empty(), "{}", path.display());
        let tpm: Option<keyward_verify::tpm::TpmPolicy> = p
            .section("tpm")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let nitro: Option<keyward_verify::nitro::NitroPolicy> = p
            .section("nitro")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_str().unwrap();
        match name {
            "aws-ec2-snp-nitrotpm.toml" => {
                assert!(nitro.is_some() && tpm.is_none());
                assert!(!p.snp.allowed_csp_ids.is_empty());
            }
            "tpm-only.toml" => assert!(tpm.is_some() && nitro.is_none()),
            _ => assert!(tpm.is_none() && nitro.is_none(), "{name}"),
        }
    }
    assert_eq!(
        n, 4,
        "default, aws-ec2-snp-nitrotpm, bare-metal-snp, tpm-only"
    );
}

#[test]
fn builtin_default_is_the_shipped_file() {
    let shipped = std::fs::read(root().join("attestation/policies/default.toml")).unwrap();
    assert_eq!(shipped, DEFAULT_POLICY_TOML.as_bytes());
    let from_file = Policy::from_bytes(&shipped).unwrap();
    assert_eq!(from_file.digest(), Policy::builtin_default().digest());
}

#[test]
fn reference_values_example_parses_and_feeds_a_policy() {
    use keyward_verify::refvalues::ReferenceValues;
    let bytes = std::fs::read(root().join("attestation/reference-values.example.json")).unwrap();
    let rv = ReferenceValues::from_json(&bytes).unwrap();
    assert_eq!(rv.measurements("aws-ec2").len(), 2);
    assert!(rv.measurements("qemu").is_empty());
    let text = format!(
        "format = 1\nname = \"from refvalues\"\n{}",
        rv.policy_fragment("aws-ec2")
    );
    let p = Policy::from_bytes(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(p.snp.measurements, rv.measurements("aws-ec2"));
    let n: keyward_verify::nitro::NitroPolicy = p.section("nitro").unwrap().unwrap();
    assert_eq!(n.pcrs.len(), 2);
    // Strict: a short digest, an unknown field, another format are refused.
    let s = String::from_utf8(bytes).unwrap();
    for bad in [
        s.replacen("555555", "55", 1),
        s.replacen(
            "\"tool\": \"systemd-measure 252\"",
            "\"tool\": \"x\", \"extra\": 1",
            1,
        ),
        s.replacen(
            "keyward-reference-values/1",
            "keyward-reference-values/2",
            1,
        ),
    ] {
        assert!(ReferenceValues::from_json(bad.as_bytes()).is_err());
    }
}
