//! NitroTPM attestation documents: synthetic COSE_Sign1/ES384 documents signed under a test
//! root (P-384, generated here with rcgen) cover the signature, chain, pinned root, certificate
//! dates, timestamp age, nonce / public key / user data binding and the PCR 4/7/12 rules.

use ciborium::Value;
use keyward_evidence::NitroEvidence;
use keyward_verify::nitro::{sig_structure, verify_nitro, NitroExpect, NitroPcr, NitroPolicy};
use keyward_verify::{Status, Verdict};
use p384::ecdsa::signature::Signer;
use p384::pkcs8::DecodePrivateKey;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P384_SHA384};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// 2026-01-01T00:00:00Z
const NOW: u64 = 1_767_225_600;

struct Pki {
    root: Vec<u8>,
    inter: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: p384::ecdsa::SigningKey,
}

fn params(cn: &str, ca: bool, nb: i64, na: i64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::NoCa
    };
    let now = OffsetDateTime::from_unix_timestamp(NOW as i64).unwrap();
    p.not_before = now + Duration::seconds(nb);
    p.not_after = now + Duration::seconds(na);
    p
}

/// Root -> intermediate -> leaf; `leaf_window` = leaf validity relative to NOW (seconds).
fn pki(root_cn: &str, leaf_window: (i64, i64)) -> Pki {
    let rk = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let root = params(root_cn, true, -86_400 * 365, 86_400 * 3650)
        .self_signed(&rk)
        .unwrap();
    let ik = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let inter = params("test-nitro-zonal", true, -86_400, 86_400 * 30)
        .signed_by(&ik, &root, &rk)
        .unwrap();
    let lk = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let leaf = params("i-test.nitro", false, leaf_window.0, leaf_window.1)
        .signed_by(&lk, &inter, &ik)
        .unwrap();
    Pki {
        root: root.der().to_vec(),
        inter: inter.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key: p384::ecdsa::SigningKey::from_pkcs8_der(&lk.serialize_der()).unwrap(),
    }
}

struct Fields {
    timestamp_ms: u64,
    pcrs: Vec<(u64, Vec<u8>)>,
    nonce: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
}

fn good_fields() -> Fields {
    Fields {
        timestamp_ms: (NOW - 10) * 1000,
        pcrs: vec![
            (4, vec![0x44; 48]),
            (7, vec![0x77; 48]),
            (12, vec![0u8; 48]),
        ],
        nonce: Some(vec![1; 32]),
        public_key: Some(b"spki der bytes".to_vec()),
        user_data: Some(vec![0xaa; 48]),
    }
}

fn opt(v: &Option<Vec<u8>>) -> Value {
    v.as_ref()
        .map(|b| Value::Bytes(b.clone()))
        .unwrap_or(Value::Null)
}

fn document(pki: &Pki, f: &Fields) -> Vec<u8> {
    let payload = Value::Map(vec![
        (
            Value::Text("module_id".into()),
            Value::Text("i-0123-tpm".into()),
        ),
        (Value::Text("digest".into()), Value::Text("SHA384".into())),
        (
            Value::Text("timestamp".into()),
            Value::Integer(f.timestamp_ms.into()),
        ),
        (
            Value::Text("nitrotpm_pcrs".into()),
            Value::Map(
                f.pcrs
                    .iter()
                    .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                    .collect(),
            ),
        ),
        (
            Value::Text("certificate".into()),
            Value::Bytes(pki.leaf.clone()),
        ),
        (
            Value::Text("cabundle".into()),
            Value::Array(vec![
                Value::Bytes(pki.root.clone()),
                Value::Bytes(pki.inter.clone()),
            ]),
        ),
        (Value::Text("public_key".into()), opt(&f.public_key)),
        (Value::Text("user_data".into()), opt(&f.user_data)),
        (Value::Text("nonce".into()), opt(&f.nonce)),
    ]);
    let mut payload_bytes = Vec::new();
    ciborium::into_writer(&payload, &mut payload_bytes).unwrap();
    let mut protected = Vec::new();
    ciborium::into_writer(
        &Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Integer((-35).into()),
        )]),
        &mut protected,
    )
    .unwrap();
    let sig: p384::ecdsa::Signature = pki
        .leaf_key
        .sign(&sig_structure(&protected, &payload_bytes));
    let cose = Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(vec![]),
        Value::Bytes(payload_bytes),
        Value::Bytes(sig.to_bytes().to_vec()),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&cose, &mut out).unwrap();
    out
}

fn policy(pki: &Pki) -> NitroPolicy {
    NitroPolicy {
        root_sha256: vec![hex::encode(Sha256::digest(&pki.root))],
        max_age: "5m".into(),
        pcrs: vec![
            NitroPcr {
                pcr: 4,
                values: vec![hex::encode([0x44u8; 48])],
            },
            NitroPcr {
                pcr: 7,
                values: vec![hex::encode([0x77u8; 48])],
            },
        ],
    }
}

fn run(doc: Vec<u8>, p: &NitroPolicy, f: &Fields, now: u64) -> Vec<String> {
    let expect = NitroExpect {
        nonce: Some(&[1; 32]),
        public_key: Some(b"spki der bytes"),
        user_data: Some(&[0xaa; 48]),
    };
    let _ = f;
    let mut v = Verdict::default();
    verify_nitro(&NitroEvidence { document: doc }, p, expect, now, &mut v);
    v.checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn good_document_verifies_with_every_check_listed() {
    let pki = pki("test-nitro-root", (-3600, 3600));
    let f = good_fields();
    let mut v = Verdict::default();
    verify_nitro(
        &NitroEvidence {
            document: document(&pki, &f),
        },
        &policy(&pki),
        NitroExpect {
            nonce: Some(&[1; 32]),
            public_key: Some(b"spki der bytes"),
            user_data: Some(&[0xaa; 48]),
        },
        NOW,
        &mut v,
    );
    assert!(v.ok(), "{:#?}", v.checks);
    let names: Vec<&str> = v.checks.iter().map(|c| c.name.as_str()).collect();
    for n in [
        "nitro.document",
        "nitro.root",
        "nitro.chain",
        "nitro.cert_dates",
        "nitro.signature",
        "nitro.timestamp",
        "nitro.nonce",
        "nitro.public_key",
        "nitro.user_data",
        "nitro.pcr12_no_override",
        "nitro.pcrs",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(v.checks.iter().all(|c| c.status == Status::Passed));
}

#[test]
fn signature_chain_and_root_failures() {
    let pki_a = pki("test-nitro-root", (-3600, 3600));
    let f = good_fields();
    let p = policy(&pki_a);

    // Flipped payload byte: the COSE signature fails.
    let mut doc = document(&pki_a, &f);
    let n = doc.len();
    // The signature is the last 96 bytes; flip a byte just before it, inside the payload.
    doc[n - 120] ^= 1;
    let failed = run(doc, &p, &f, NOW);
    assert!(failed.contains(&"nitro.signature".into()), "{failed:?}");

    // Same document under a policy that pins another root.
    let pki_b = pki("other-root", (-3600, 3600));
    assert_eq!(
        run(document(&pki_a, &f), &policy(&pki_b), &f, NOW),
        vec!["nitro.root"]
    );
    // The default policy pins AWS's real root, so a test root is refused there too.
    let dp = NitroPolicy {
        pcrs: p.pcrs.clone(),
        ..Default::default()
    };
    assert_eq!(run(document(&pki_a, &f), &dp, &f, NOW), vec!["nitro.root"]);

    // A leaf from another PKI presented under this root: the chain breaks.
    let mut mixed = pki("test-nitro-root", (-3600, 3600));
    mixed.root = pki_a.root.clone();
    mixed.inter = pki_a.inter.clone();
    let failed = run(document(&mixed, &f), &p, &f, NOW);
    assert_eq!(failed, vec!["nitro.chain"]);
}

#[test]
fn dates_and_timestamp_age() {
    let f = good_fields();
    // Leaf expired an hour ago.
    let old = pki("test-nitro-root", (-7200, -3600));
    let failed = run(document(&old, &f), &policy(&old), &f, NOW);
    assert_eq!(failed, vec!["nitro.cert_dates"]);
    // Leaf not yet valid.
    let future = pki("test-nitro-root", (3600, 7200));
    let failed = run(document(&future, &f), &policy(&future), &f, NOW);
    assert_eq!(failed, vec!["nitro.cert_dates"]);

    let pki = pki("test-nitro-root", (-86_400, 86_400));
    // Ten minutes old with max_age 5m.
    let stale = Fields {
        timestamp_ms: (NOW - 600) * 1000,
        ..good_fields()
    };
    assert_eq!(
        run(document(&pki, &stale), &policy(&pki), &stale, NOW),
        vec!["nitro.timestamp"]
    );
    // The same document passes under a 15-minute policy.
    let mut p = policy(&pki);
    p.max_age = "15m".into();
    assert!(run(document(&pki, &stale), &p, &stale, NOW).is_empty());
    // From the future.
    let ahead = Fields {
        timestamp_ms: (NOW + 3600) * 1000,
        ..good_fields()
    };
    assert_eq!(
        run(document(&pki, &ahead), &policy(&pki), &ahead, NOW),
        vec!["nitro.timestamp"]
    );
}

#[test]
fn binding_and_pcrs() {
    let pki = pki("test-nitro-root", (-3600, 3600));
    let p = policy(&pki);
    let cases: Vec<(Fields, Vec<&str>)> = vec![
        (
            Fields {
                nonce: Some(vec![2; 32]),
                ..good_fields()
            },
            vec!["nitro.nonce"],
        ),
        (
            Fields {
                public_key: None,
                ..good_fields()
            },
            vec!["nitro.public_key"],
        ),
        (
            Fields {
                user_data: Some(vec![0xab; 48]),
                ..good_fields()
            },
            vec!["nitro.user_data"],
        ),
        (
            Fields {
                pcrs: vec![
                    (4, vec![0x44; 48]),
                    (7, vec![0x77; 48]),
                    (12, vec![1u8; 48]),
                ],
                ..good_fields()
            },
            vec!["nitro.pcr12_no_override"],
        ),
        (
            Fields {
                pcrs: vec![
                    (4, vec![0x45; 48]),
                    (7, vec![0x77; 48]),
                    (12, vec![0u8; 48]),
                ],
                ..good_fields()
            },
            vec!["nitro.pcrs"],
        ),
        (
            Fields {
                pcrs: vec![(4, vec![0x44; 48]), (7, vec![0x77; 48])],
                ..good_fields()
            },
            vec!["nitro.pcr12_no_override"],
        ),
    ];
    for (f, want) in cases {
        assert_eq!(run(document(&pki, &f), &p, &f, NOW), want);
    }
}

#[test]
fn through_verify_bundle_with_a_toml_policy() {
    use keyward_verify::{verify_bundle, EvidenceBundle, Expectations, Policy};
    let pki = pki("test-nitro-root", (-3600, 3600));
    let f = good_fields();
    let bundle = EvidenceBundle {
        version: 1,
        nitro: Some(NitroEvidence {
            document: document(&pki, &f),
        }),
        ..Default::default()
    };
    let toml = format!(
        "format = 1\nrequired_evidence = [\"nitro\"]\n[nitro]\nroot_sha256 = [\"{}\"]\nmax_age = \"5m\"\n[[nitro.pcrs]]\npcr = 4\nvalues = [\"{}\"]\n",
        hex::encode(Sha256::digest(&pki.root)),
        hex::encode([0x44u8; 48])
    );
    let policy = Policy::from_bytes(toml.as_bytes()).unwrap();
    let expect = Expectations {
        nonce: Some(vec![1; 32]),
        public_key: Some(b"spki der bytes".to_vec()),
        user_data: Some(vec![0xaa; 48]),
        ..Default::default()
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW);
    let v = verify_bundle(&bundle, &policy, &expect, at);
    assert!(v.ok(), "{:#?}", v.checks);
    // Under the built-in policy (AWS root pinned) the test root is refused.
    let v = verify_bundle(&bundle, &Policy::builtin_default(), &expect, at);
    assert!(v
        .checks
        .iter()
        .any(|c| c.name == "nitro.root" && c.status == Status::Failed));
}

/// Regenerates `tests/data/nitro/` (a synthetic NitroTPM document under a test root, its
/// bundle and policy) for the CLI test: `cargo test --test nitro_doc -- --ignored generate`.
#[test]
#[ignore]
fn generate_nitro_fixture() {
    let pki = pki("keyward TEST nitro root - NOT AWS", (-86_400, 86_400));
    let f = good_fields();
    let bundle = keyward_verify::EvidenceBundle {
        version: 1,
        nitro: Some(NitroEvidence {
            document: document(&pki, &f),
        }),
        ..Default::default()
    };
    let policy = format!(
        "# Policy for tests/data/nitro/bundle.json: trusts the TEST Nitro root only.\n\
         format = 1\nname = \"nitro fixture\"\nrequired_evidence = [\"nitro\"]\n\n[nitro]\n\
         root_sha256 = [\"{}\"]\nmax_age = \"5m\"\npcrs = [\n  {{ pcr = 4, values = [\"{}\"] }},\n  {{ pcr = 7, values = [\"{}\"] }},\n]\n",
        hex::encode(Sha256::digest(&pki.root)),
        hex::encode([0x44u8; 48]),
        hex::encode([0x77u8; 48])
    );
    let out = format!("{}/tests/data/nitro", crate::repo().display());
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        format!("{out}/bundle.json"),
        serde_json::to_string_pretty(&bundle).unwrap(),
    )
    .unwrap();
    std::fs::write(format!("{out}/policy.toml"), policy).unwrap();
}
