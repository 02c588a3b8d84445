//! The hash-chained, append-only release log (key-release.md section 8.5).
//!
//! One JSON object per line. Each entry carries the previous entry's hash and its own
//! `hash = SHA-384("KRP/1 log" || cbor(entry without hash))`; the first entry's `prev_hash` is
//! 48 zero bytes. Each entry holds the signed receipt of its decision. After every append the
//! file is fsynced, and a signed head (`FILE.head`: entry count and last hash, signed with the
//! receipt key) is replaced atomically, so truncation is detectable too. The KRS answers the
//! agent only after both are on disk.
//!
//! [`verify_file`] is what `keyward krs log verify` runs offline.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use super::cbor::to_canonical;
use super::receipt::{verify_receipt, Receipt};

/// Errors writing or verifying the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("release log {0}: {1}")]
    Io(String, String),
    #[error("release log entry {index}: {what}")]
    Broken { index: u64, what: String },
    #[error("release log head: {0}")]
    Head(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// One decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub index: u64,
    /// Unix seconds.
    pub time: u64,
    /// `release` or `deny`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    /// Deny reason name (see `DenyCode::name`) and detail; only here, never sent to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub key_id: String,
    /// Hex SHA-384 of the raw evidence bytes (empty when none was received).
    pub evidence_digest: String,
    /// Hex SHA-384 of the signed policy in force.
    pub policy_digest: String,
    /// Hex session id (empty before a session existed).
    pub session_id: String,
    /// Base64 of the raw evidence (CBOR EvidenceBundle), for offline replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Base64 receipt bytes and signature.
    pub receipt: String,
    pub signature: String,
    /// Hex.
    pub prev_hash: String,
    /// Hex; computed over every other field.
    #[serde(default)]
    pub hash: String,
}

impl Entry {
    fn compute_hash(&self) -> Result<[u8; 48], LogError> {
        let mut e = self.clone();
        e.hash = String::new();
        let body = to_canonical(&e).map_err(|err| LogError::Broken {
            index: self.index,
            what: err.to_string(),
        })?;
        let mut h = Sha384::new();
        h.update(b"KRP/1 log");
        h.update(body);
        Ok(h.finalize().into())
    }
}

/// The signed head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub count: u64,
    /// Hex hash of the last entry (48 zero bytes when empty).
    pub head_hash: String,
    /// Base64 ECDSA P-384 r||s over [`head_digest`].
    pub signature: String,
}

/// The digest the receipt key signs for a head.
pub fn head_digest(count: u64, head_hash: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"KRP/1 log head");
    h.update(count.to_be_bytes());
    h.update(head_hash);
    h.finalize().into()
}

fn head_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// Signs a SHA-384 digest with the receipt key (the HSM), giving `r || s`.
pub type DigestSigner<'a> = &'a dyn Fn(&[u8; 48]) -> Result<Vec<u8>, String>;

/// An open log, positioned for appending.
pub struct ReleaseLog {
    path: PathBuf,
    file: File,
    count: u64,
    last_hash: [u8; 48],
}

impl ReleaseLog {
    /// Open (or create) the log and check its chain (hashes only; receipts are checked by
    /// `verify_file`). A broken chain refuses to open: the KRS does not append to a log it
    /// cannot vouch for.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let io = |e: std::io::Error| LogError::Io(path.display().to_string(), e.to_string());
        let (count, last_hash) = match File::open(path) {
            Ok(f) => {
                let entries = read_entries(BufReader::new(f))?;
                check_chain(&entries)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, [0u8; 48]),
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            count,
            last_hash,
        })
    }

    /// The index the next entry gets.
    pub fn next_index(&self) -> u64 {
        self.count
    }

    /// Append an entry (its `index`, `prev_hash` and `hash` are filled in here), fsync, then
    /// replace the signed head. `sign` signs a SHA-384 digest with the receipt key.
    pub fn append(&mut self, mut entry: Entry, sign: DigestSigner<'_>) -> Result<(), LogError> {
        let io = |e: std::io::Error| LogError::Io(self.path.display().to_string(), e.to_string());
        entry.index = self.count;
        entry.prev_hash = hex::encode(self.last_hash);
        entry.hash = String::new();
        let h = entry.compute_hash()?;
        entry.hash = hex::encode(h);
        let mut line = serde_json::to_vec(&entry).map_err(|e| LogError::Broken {
            index: entry.index,
            what: e.to_string(),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.count += 1;
        self.last_hash = h;

        let sig = sign(&head_digest(self.count, &h)).map_err(LogError::Sign)?;
        let head = Head {
            count: self.count,
            head_hash: hex::encode(h),
            signature: STANDARD.encode(sig),
        };
        let hp = head_path(&self.path);
        let tmp = hp.with_extension("head.tmp");
        let io2 = |e: std::io::Error| LogError::Io(hp.display().to_string(), e.to_string());
        let mut f = File::create(&tmp).map_err(io2)?;
        serde_json::to_writer(&mut f, &head).map_err(|e| LogError::Head(e.to_string()))?;
        f.sync_all().map_err(io2)?;
        std::fs::rename(&tmp, &hp).map_err(io2)?;
        if let Some(dir) = hp.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

fn read_entries(r: impl BufRead) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| LogError::Io("read".into(), e.to_string()))?;
        let e: Entry = serde_json::from_str(&line).map_err(|e| LogError::Broken {
            index: i as u64,
            what: format!("not a log entry: {e}"),
        })?;
        out.push(e);
    }
    Ok(out)
}

fn check_chain(entries: &[Entry]) -> Result<(u64, [u8; 48]), LogError> {
    let mut prev = [0u8; 48];
    for (i, e) in entries.iter().enumerate() {
        let i = i as u64;
        let broken = |what: &str| LogError::Broken {
            index: i,
            what: what.into(),
        };
        if e.index != i {
            return Err(broken(&format!("index {} out of order", e.index)));
        }
        if e.prev_hash != hex::encode(prev) {
            return Err(broken("prev_hash does not match the previous entry"));
        }
        let h = e.compute_hash()?;
        if e.hash != hex::encode(h) {
            return Err(broken("hash does not match the entry's content"));
        }
        prev = h;
    }
    Ok((entries.len() as u64, prev))
}

/// Summary of a verified log.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub entries: u64,
    pub releases: u64,
    pub denies: u64,
    pub head_hash: String,
}

/// Verify a log file offline: chain, every receipt's signature and contents, and the signed
/// head (which catches truncation). `receipt_spki_der` is the receipt public key printed by
/// `keyward krs init`.
pub fn verify_file(path: &Path, receipt_spki_der: &[u8]) -> Result<Summary, LogError> {
    let f =
        File::open(path).map_err(|e| LogError::Io(path.display().to_string(), e.to_string()))?;
    let entries = read_entries(BufReader::new(f))?;
    let (count, last) = check_chain(&entries)?;
    let mut releases = 0;
    for e in &entries {
        let broken = |what: String| LogError::Broken {
            index: e.index,
            what,
        };
        let rb = STANDARD
            .decode(e.receipt.as_bytes())
            .map_err(|_| broken("receipt is not base64".into()))?;
        let sb = STANDARD
            .decode(e.signature.as_bytes())
            .map_err(|_| broken("signature is not base64".into()))?;
        let r: Receipt =
            verify_receipt(receipt_spki_der, &rb, &sb).map_err(|err| broken(err.to_string()))?;
        if r.log_index != e.index {
            return Err(broken("receipt names another log index".into()));
        }
        if r.decision != e.decision || r.code != e.code {
            return Err(broken("receipt decision differs from the entry".into()));
        }
        if hex::encode(&r.policy_digest) != e.policy_digest
            || hex::encode(&r.evidence_digest) != e.evidence_digest
        {
            return Err(broken("receipt digests differ from the entry".into()));
        }
        if r.key_id != e.key_id || r.time != e.time {
            return Err(broken(
                "receipt key id or time differs from the entry".into(),
            ));
        }
        if r.decision == "release" {
            releases += 1;
        }
    }
    let hp = head_path(path);
    let hb = std::fs::read(&hp).map_err(|e| LogError::Head(format!("{}: {e}", hp.display())))?;
    let head: Head = serde_json::from_slice(&hb).map_err(|e| LogError::Head(e.to_string()))?;
    let sig = STANDARD
        .decode(head.signature.as_bytes())
        .map_err(|_| LogError::Head("signature is not base64".into()))?;
    verify_digest_sig(
        receipt_spki_der,
        &head_digest(head.count, &hex_or_empty(&head.head_hash)),
        &sig,
    )
    .map_err(|_| LogError::Head("signature does not verify".into()))?;
    if head.count != count || head.head_hash != hex::encode(last) {
        return Err(LogError::Head(format!(
            "signed head names {} entries ending {}, the file has {} ending {} (truncated or rewritten)",
            head.count,
            short(&head.head_hash),
            count,
            short(&hex::encode(last))
        )));
    }
    Ok(Summary {
        entries: count,
        releases,
        denies: count - releases,
        head_hash: hex::encode(last),
    })
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

fn hex_or_empty(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

fn verify_digest_sig(spki_der: &[u8], digest: &[u8; 48], sig: &[u8]) -> Result<(), ()> {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::pkcs8::DecodePublicKey;
    let vk = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|_| ())?;
    let sig = p384::ecdsa::Signature::from_slice(sig).map_err(|_| ())?;
    vk.verify_prehash(digest, &sig).map_err(|_| ())
}
