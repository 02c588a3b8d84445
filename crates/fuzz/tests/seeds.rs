//! Writes the generated part of the seed corpus under `fuzz/corpus/` (`make fuzz-seeds`; the
//! output is committed): KRP/1 frames of every message kind, XKS requests of every operation
//! (re-signed by the target), and a key store sealed under [`keyward_fuzz::FUZZ_MASTER_KEY`].
//! The file seeds (real SNP reports, certificates, TPM and Nitro evidence, policies, configs,
//! PEM chains) are copied from tests/data by scripts/fuzz.sh.

use std::path::{Path, PathBuf};

use keyward_fuzz::SEP;
use keyward_krp::messages::*;
use keyward_krp::wire::write_msg;

fn corpus(target: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn frames(msgs: &[&dyn erased::Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.write(&mut out);
    }
    out
}

mod erased {
    pub(crate) trait Msg {
        fn write(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize> Msg for T {
        fn write(&self, out: &mut Vec<u8>) {
            super::write_msg(out, self).unwrap();
        }
    }
}

#[test]
#[ignore = "writes fuzz/corpus (make fuzz-seeds)"]
fn write_seeds() {
    // KRP/1, both directions.
    let d = corpus("krp_messages");
    let pins = Pins {
        krs_url: "krs.example:7443".into(),
        krs_tls_spki_sha256: vec![1; 32],
        receipt_spki_sha256: vec![2; 32],
        admin_ca_sha256: vec![3; 32],
    };
    let hello = Request::Hello(Hello {
        v: 1,
        platform: "aws-snp-nitrotpm".into(),
        product_release: "keyward-1".into(),
        algs: vec!["p384-ecdh-aes256kwp".into(), "hpke-p384".into()],
        pins,
        key_versions: Some(vec![1, 2]),
    });
    let evidence = Request::Evidence(Evidence {
        v: 1,
        session_id: vec![9; 16],
        epk: vec![4; 97],
        policy_digest: vec![5; 48],
        evidence: vec![0xa0],
        boot_key: vec![4; 65],
    });
    let head = StoreHeadSeed::head();
    let update = Request::HeadUpdate(HeadUpdate {
        v: 1,
        boot_key_id: vec![6; 32],
        prev: None,
        next: head,
        nonce: vec![7; 32],
        signature: vec![8; 64],
    });
    let query = Request::HeadQuery(HeadQuery {
        v: 1,
        boot_key_id: vec![6; 32],
        nonce: vec![7; 32],
        signature: vec![8; 64],
    });
    put(&d, "agent-session", &frames(&[&hello, &evidence]));
    put(&d, "agent-heads", &frames(&[&update, &query]));
    let challenge = Response::Challenge(Challenge {
        v: 1,
        session_id: vec![9; 16],
        nonce: vec![1; 32],
        krs_id: vec![2; 32],
        policy_id: "default".into(),
        policy_digest: vec![5; 48],
        expires: 1_900_000_000,
        receipt_spki: vec![0x30, 0x76],
    });
    let deny = Response::Deny(Deny {
        v: 1,
        code: 110,
        receipt: vec![0xa1, 0x61, 0x76, 0x01],
        signature: vec![1; 96],
    });
    put(&d, "krs-answers", &frames(&[&challenge, &deny]));

    // XKS: one request per operation; the target re-signs each with the fixture secret.
    let d = corpus("xks_request");
    let base = "/keyward/kms/xks/v1";
    let ops = [
        ("encrypt", format!("{base}/keys/key-1/encrypt"), r#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/a"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"cHJvamVjdD1uaW1idXMs","ciphertextDataIntegrityValueAlgorithm":"SHA_256"}"#.to_string()),
        ("decrypt", format!("{base}/keys/key-1/decrypt"), r#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsOperation":"Decrypt","kmsRequestId":"5112f4d6-db54-4af4-ae30-c55a22a8dfae"},"ciphertext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ciphertextMetadata":"AQAAAAE=","encryptionAlgorithm":"AES_GCM","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}"#.to_string()),
        ("metadata", format!("{base}/keys/key-1/metadata"), r#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsOperation":"DescribeKey","kmsRequestId":"6112f4d6-db54-4af4-ae30-c55a22a8dfae"}}"#.to_string()),
        ("health", format!("{base}/health"), r#"{"requestMetadata":{"kmsRequestId":"7112f4d6-db54-4af4-ae30-c55a22a8dfae","kmsOperation":"KmsHealthCheck"}}"#.to_string()),
    ];
    for (name, path, body) in ops {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: xks.example.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nauthorization: AWS4-HMAC-SHA256 Credential=AKIAKEYWARDFUZZTESTAA/20250101/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000\r\nx-amz-date: 20250101T000000Z\r\n\r\n{body}",
            body.len()
        );
        put(&d, name, raw.as_bytes());
    }

    // A key store sealed under the fuzz master key: a store, a credential, two keys (one
    // rotated), a grant, a disabled key.
    let d = corpus("keystore_log");
    keyward_fuzz_seed_store(&d);
}

struct StoreHeadSeed;
impl StoreHeadSeed {
    fn head() -> keyward_keystore::StoreHead {
        keyward_keystore::StoreHead {
            store_id: vec![1; 16],
            seq: 3,
            chain_mac: vec![2; 32],
            mk_version: 2,
        }
    }
}

fn keyward_fuzz_seed_store(out: &Path) {
    use keyward_keystore::KeyUsage;
    use keyward_keystore::{NewStore, Registry};
    let _ = keyward_secret::init(keyward_secret::MemoryPolicy {
        allow_unlocked: true,
    });
    let dir = tempfile::tempdir().unwrap();
    let mk = keyward_secret::Key32::from_bytes(&keyward_fuzz::FUZZ_MASTER_KEY).unwrap();
    {
        let reg = Registry::open_dir(dir.path(), mk).unwrap();
        reg.create_store(NewStore {
            name: "main".into(),
            uri_prefix: "/keyward".into(),
            region: "us-east-1".into(),
            extra_services: vec![],
        })
        .unwrap();
        reg.create_key(None, "key-1", KeyUsage::EncryptDecrypt)
            .unwrap();
        reg.create_key(None, "key-2", KeyUsage::EncryptDecrypt)
            .unwrap();
        let backup = reg.export().unwrap();
        put(&corpus("backup_file"), "two-keys", &backup.bytes);
    }
    let log = std::fs::read(dir.path().join("keystore.jsonl")).unwrap();
    let head = std::fs::read(dir.path().join("keystore.head")).unwrap_or_default();
    let mut both = log.clone();
    both.extend_from_slice(SEP);
    both.extend_from_slice(&head);
    put(out, "store-with-head", &both);
    put(out, "store-log-only", &log);
}
