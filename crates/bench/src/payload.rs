//! Pre-built XKS request bodies: built, serialised and hashed once before the run, so the hot
//! loop only signs (the SigV4 body hash is computed here, not per request).

use base64::Engine as _;
use bytes::Bytes;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::settings::{Op, Settings};

/// How many distinct bodies (each with its own `kmsRequestId` and random plaintext) are kept
/// per operation and key; requests cycle through them.
pub(crate) const POOL: usize = 16;

/// One ready-to-sign request: path, body and the body's SHA-256 in lower-case hex.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub op: Op,
    pub path: String,
    pub body: Bytes,
    pub body_sha256_hex: String,
}

impl Prepared {
    fn new(op: Op, path: String, body: Vec<u8>) -> Prepared {
        let body_sha256_hex = hex::encode(Sha256::digest(&body));
        Prepared {
            op,
            path,
            body: Bytes::from(body),
            body_sha256_hex,
        }
    }
}

/// What an encrypt returned, enough to build the matching decrypt.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptOutput {
    pub ciphertext: String,
    pub initialization_vector: String,
    pub authentication_tag: String,
    #[serde(default)]
    pub ciphertext_metadata: Option<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn request_id(n: usize) -> String {
    let r = random_bytes(8);
    format!(
        "b3c1e0a4-7d2f-4a6b-9c1d-{}{:04x}",
        hex::encode(&r[..4]),
        n & 0xffff
    )
}

/// Builds bodies for one run. The AAD is shared by a key's encrypt and decrypt bodies.
pub struct Builder<'a> {
    s: &'a Settings,
    aad: Vec<u8>,
}

impl<'a> Builder<'a> {
    pub fn new(s: &'a Settings) -> Builder<'a> {
        Builder {
            s,
            aad: random_bytes(s.aad_size),
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("{}/kms/xks/v1/{tail}", self.s.target.uri_prefix)
    }

    fn key_arn(&self, key_id: &str) -> String {
        // KMS sends the ARN of its own key (not the external id); any well-formed ARN will do.
        let h = hex::encode(&Sha256::digest(key_id.as_bytes())[..16]);
        format!(
            "arn:aws:kms:{}:111122223333:key/{}-{}-{}-{}-{}",
            self.s.region,
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn metadata(&self, operation: &str, key_id: &str, n: usize) -> serde_json::Value {
        json!({
            "awsPrincipalArn": self.s.principal,
            "kmsKeyArn": self.key_arn(key_id),
            "kmsOperation": operation,
            "kmsRequestId": request_id(n),
        })
    }

    pub fn encrypt(&self, key_id: &str, n: usize) -> Prepared {
        let mut body = json!({
            "requestMetadata": self.metadata("Encrypt", key_id, n),
            "plaintext": b64(&random_bytes(self.s.plaintext_size)),
            "encryptionAlgorithm": "AES_GCM",
        });
        if !self.aad.is_empty() {
            body["additionalAuthenticatedData"] = json!(b64(&self.aad));
        }
        if self.s.cdiv {
            body["ciphertextDataIntegrityValueAlgorithm"] = json!("SHA_256");
        }
        Prepared::new(
            Op::Encrypt,
            self.path(&format!("keys/{key_id}/encrypt")),
            body.to_string().into_bytes(),
        )
    }

    pub fn decrypt(&self, key_id: &str, n: usize, out: &EncryptOutput) -> Prepared {
        let mut body = json!({
            "requestMetadata": self.metadata("Decrypt", key_id, n),
            "ciphertext": out.ciphertext,
            "encryptionAlgorithm": "AES_GCM",
            "initializationVector": out.initialization_vector,
            "authenticationTag": out.authentication_tag,
        });
        if let Some(m) = &out.ciphertext_metadata {
            body["ciphertextMetadata"] = json!(m);
        }
        if !self.aad.is_empty() {
            body["additionalAuthenticatedData"] = json!(b64(&self.aad));
        }
        Prepared::new(
            Op::Decrypt,
            self.path(&format!("keys/{key_id}/decrypt")),
            body.to_string().into_bytes(),
        )
    }

    pub fn key_metadata(&self, key_id: &str, n: usize) -> Prepared {
        let body = json!({ "requestMetadata": self.metadata("CreateKey", key_id, n) });
        Prepared::new(
            Op::Metadata,
            self.path(&format!("keys/{key_id}/metadata")),
            body.to_string().into_bytes(),
        )
    }

    pub fn health(&self, n: usize) -> Prepared {
        let body = json!({
            "requestMetadata": { "kmsRequestId": request_id(n), "kmsOperation": "KmsHealthCheck" }
        });
        Prepared::new(
            Op::Health,
            self.path("health"),
            body.to_string().into_bytes(),
        )
    }
}

/// The bodies of a run, per operation, cycled through by request number.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pools {
    pub encrypt: Vec<Prepared>,
    pub decrypt: Vec<Prepared>,
    pub metadata: Vec<Prepared>,
    pub health: Vec<Prepared>,
}

impl Pools {
    pub(crate) fn get(&self, op: Op, n: u64) -> Option<&Prepared> {
        let pool = match op {
            Op::Encrypt => &self.encrypt,
            Op::Decrypt => &self.decrypt,
            Op::Metadata => &self.metadata,
            Op::Health => &self.health,
        };
        if pool.is_empty() {
            None
        } else {
            pool.get((n % pool.len() as u64) as usize)
        }
    }
}
