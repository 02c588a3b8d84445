//! The hash-chained, append-only release log (docs/key-release.md section 8.5).
//!
//! One JSON object per line. Each entry carries the previous entry's hash and its own
//! `hash = SHA-384("KRP/1 log" || cbor(entry without hash))`; the first entry's `prev_hash` is
//! 48 zero bytes. Each entry holds the signed receipt of its decision. After every append the
//! file is fsynced, and a signed head (`FILE.head`: entry count and last hash, signed with the
//! receipt key) is replaced atomically, so truncation is detectable too. The KRS answers the
//! agent only after both are on disk.
//!
//! Rollback (issue 12 §6): the head also carries a monotonic counter the KRS keeps in
//! `FILE.counter` (written, fsynced, before each new head; it never goes back), and is signed
//! over it. On open the KRS refuses a log whose head counter is below the one it keeps (an
//! older copy of the log and head restored). A verifier that saved a head earlier (or noted its
//! entry count and hash) checks the log against it with [`verify_against`]: an older log, or
//! one forked from that head, fails. Heads written before the counter existed still verify.
//!
//! [`verify_file`] is what `keyward krs log verify` runs offline.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use keyward_krp::cbor::to_canonical;
use keyward_krp::{verify_receipt, Receipt};

/// Errors writing or verifying the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("release log {0}")]
    Io(String, #[source] std::io::Error),
    /// A saved head given to `krs log verify --against` is a file that is not head JSON.
    #[error("release log head: saved head {arg}")]
    SavedHeadJson {
        arg: String,
        #[source]
        source: serde_json::Error,
    },
    /// The log's saved head file cannot be read or parsed.
    #[error("release log head: {}", path.display())]
    HeadFile {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An entry fails a check the message names (no cause).
    #[error("release log entry {index}: {what}")]
    Broken { index: u64, what: String },
    /// An entry could not be encoded (canonical JSON or its line).
    #[error("release log entry {index}: encoding")]
    EntryEncode {
        index: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An entry's receipt does not verify under the receipt key.
    #[error("release log entry {index}: receipt")]
    BrokenReceipt {
        index: u64,
        #[source]
        source: keyward_krp::ReceiptError,
    },
    /// The head fails a check the message names (no cause).
    #[error("release log head: {0}")]
    Head(String),
    #[error("release log head")]
    HeadJson(#[source] serde_json::Error),
    #[error("signing: encoding the receipt")]
    EncodeReceipt(#[source] keyward_krp::cbor::CborError),
    /// The HSM (or the demo's soft keys) did not sign.
    #[error("signing")]
    Sign(#[source] keyward_hsm::HsmError),
    /// The log is shorter or older than its head or counter says (the message says how).
    #[error("release log rolled back: {0}")]
    Rollback(String),
}

/// Append an operator action (not a release decision: `heads set`, `mk rotate`, `mk retire`)
/// to the release log: the receipt `receipt` (already built, with `log_index` =
/// [`ReleaseLog::next_index`]) is signed in the HSM through `sign`, and the entry carries it,
/// `detail` and the policy digest in force. Returns the entry's index.
pub(crate) fn append_operator_action(
    log: &mut ReleaseLog,
    receipt: &keyward_krp::Receipt,
    detail: String,
    policy_digest: &[u8],
    sign: DigestSigner<'_>,
) -> Result<u64, LogError> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let rb = receipt.encode().map_err(LogError::EncodeReceipt)?;
    let sig = sign(&keyward_krp::receipt_digest(&rb)).map_err(LogError::Sign)?;
    let entry = Entry {
        index: receipt.log_index,
        time: receipt.time,
        decision: receipt.decision.clone(),
        code: None,
        reason: None,
        detail: Some(detail),
        key_id: receipt.key_id.clone(),
        evidence_digest: String::new(),
        policy_digest: hex::encode(policy_digest),
        session_id: String::new(),
        evidence: None,
        receipt: STANDARD.encode(&rb),
        signature: STANDARD.encode(&sig),
        prev_hash: String::new(),
        hash: String::new(),
    };
    let index = entry.index;
    log.append(entry, sign)?;
    Ok(index)
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
        let body = to_canonical(&e).map_err(|err| LogError::EntryEncode {
            index: self.index,
            source: err.into(),
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
pub(crate) struct Head {
    pub count: u64,
    /// Hex hash of the last entry (48 zero bytes when empty).
    pub head_hash: String,
    /// The KRS's monotonic head counter (absent in heads written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<u64>,
    /// Base64 ECDSA P-384 r||s over [`head_digest`] (no counter) or [`head_digest_counted`].
    pub signature: String,
}

impl Head {
    /// The digest this head's signature covers.
    pub(crate) fn digest(&self) -> [u8; 48] {
        let hash = hex_or_empty(&self.head_hash);
        match self.counter {
            Some(c) => head_digest_counted(self.count, &hash, c),
            None => head_digest(self.count, &hash),
        }
    }

    /// The counter, or for an older head its entry count (one head per entry).
    fn counter_or_count(&self) -> u64 {
        self.counter.unwrap_or(self.count)
    }
}

/// The digest the receipt key signs for a head with a counter.
pub(crate) fn head_digest_counted(count: u64, head_hash: &[u8], counter: u64) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"KRP/1 log head v2");
    h.update(count.to_be_bytes());
    h.update(counter.to_be_bytes());
    h.update(head_hash);
    h.finalize().into()
}

/// The digest the receipt key signs for a head.
pub(crate) fn head_digest(count: u64, head_hash: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"KRP/1 log head");
    h.update(count.to_be_bytes());
    h.update(head_hash);
    h.finalize().into()
}

fn head_path(path: &Path) -> PathBuf {
    suffixed(path, ".head")
}

/// Where the KRS keeps the log's head counter: `FILE.counter`.
pub(crate) fn counter_path(path: &Path) -> PathBuf {
    suffixed(path, ".counter")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Write `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync the dir).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let io = |e: std::io::Error| LogError::Io(path.display().to_string(), e);
    let tmp = suffixed(path, ".tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn read_head(path: &Path) -> Result<Option<Head>, LogError> {
    let hp = head_path(path);
    match std::fs::read(&hp) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| LogError::HeadFile {
                path: hp.clone(),
                source: e.into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::HeadFile {
            path: hp,
            source: e.into(),
        }),
    }
}

fn read_counter(path: &Path) -> Result<Option<u64>, LogError> {
    let cp = counter_path(path);
    match std::fs::read_to_string(&cp) {
        Ok(t) => t
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| LogError::Head(format!("{}: not a counter", cp.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::Io(cp.display().to_string(), e)),
    }
}

/// Signs a SHA-384 digest with the receipt key (the HSM), giving `r || s`.
pub(crate) type DigestSigner<'a> = &'a dyn Fn(&[u8; 48]) -> Result<Vec<u8>, keyward_hsm::HsmError>;

/// An open log, positioned for appending.
pub struct ReleaseLog {
    path: PathBuf,
    file: File,
    count: u64,
    last_hash: [u8; 48],
    /// The head counter (the highest of the kept counter and the head's).
    counter: u64,
    /// The last entry has no head yet (a crash between the two writes).
    head_stale: bool,
}

impl ReleaseLog {
    /// Open (or create) the log and check its chain (hashes only; receipts are checked by
    /// `verify_file`). A broken chain refuses to open: the KRS does not append to a log it
    /// cannot vouch for.
    ///
    /// The head must name the file's last entry (or the one before, when a crash came between
    /// the entry and its head: [`repair_head`](Self::repair_head) then writes it), and its
    /// counter must not be below the one kept in `FILE.counter`: otherwise the log or its
    /// head were truncated or rolled back, and the KRS refuses to start.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let io = |e: std::io::Error| LogError::Io(path.display().to_string(), e);
        let entries = match File::open(path) {
            Ok(f) => read_entries(BufReader::new(f))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let (count, last_hash) = check_chain(&entries)?;
        let head = read_head(path)?;
        let kept = read_counter(path)?;
        let head_count = head.as_ref().map(|h| h.count).unwrap_or(0);
        let head_stale = count == head_count + 1;
        if head_count > count {
            return Err(LogError::Rollback(format!(
                "the signed head names {head_count} entries, {} has {count} (truncated)",
                path.display()
            )));
        }
        if count > head_count + 1 {
            return Err(LogError::Head(format!(
                "{} has {count} entries, its head names {head_count}",
                path.display()
            )));
        }
        if let Some(h) = &head {
            let named = match h.count {
                0 => hex::encode([0u8; 48]),
                n => entries
                    .get((n - 1) as usize)
                    .map(|e| e.hash.clone())
                    .unwrap_or_default(),
            };
            if h.head_hash != named {
                return Err(LogError::Head(format!(
                    "the signed head does not name entry {} of {} (rewritten)",
                    h.count.saturating_sub(1),
                    path.display()
                )));
            }
        }
        let head_counter = head.as_ref().map(Head::counter_or_count).unwrap_or(0);
        if let Some(k) = kept {
            // A crash between the counter and the head leaves the counter one ahead.
            let crashed = head_stale && head_counter + 1 == k;
            if head_counter < k && !crashed {
                return Err(LogError::Rollback(format!(
                    "the head of {} has counter {head_counter}, the KRS has counted to {k}: an \
                     older copy of the log was restored (put the newest back; remove {} only \
                     if you mean to accept the older log)",
                    path.display(),
                    counter_path(path).display()
                )));
            }
        }
        let counter = head_counter.max(kept.unwrap_or(0));
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
            counter,
            head_stale,
        })
    }

    /// Whether the last entry still needs its head (see [`repair_head`](Self::repair_head)).
    pub fn head_stale(&self) -> bool {
        self.head_stale
    }

    /// Write the head for the last entry when a crash left it without one.
    pub fn repair_head(&mut self, sign: DigestSigner<'_>) -> Result<(), LogError> {
        if self.head_stale {
            tracing::warn!(
                "release log {}: the last entry had no signed head (crash?); writing it",
                self.path.display()
            );
            self.write_head(sign)?;
        }
        Ok(())
    }

    /// Advance the counter (kept first), then sign and replace the head.
    fn write_head(&mut self, sign: DigestSigner<'_>) -> Result<(), LogError> {
        let counter = self.counter + 1;
        replace_file(&counter_path(&self.path), format!("{counter}\n").as_bytes())?;
        self.counter = counter;
        let sig = sign(&head_digest_counted(self.count, &self.last_hash, counter))
            .map_err(LogError::Sign)?;
        let head = Head {
            count: self.count,
            head_hash: hex::encode(self.last_hash),
            counter: Some(counter),
            signature: STANDARD.encode(sig),
        };
        let body = serde_json::to_vec(&head).map_err(LogError::HeadJson)?;
        replace_file(&head_path(&self.path), &body)?;
        self.head_stale = false;
        Ok(())
    }

    /// The index the next entry gets.
    pub fn next_index(&self) -> u64 {
        self.count
    }

    /// Append an entry (its `index`, `prev_hash` and `hash` are filled in here), fsync, then
    /// replace the signed head. `sign` signs a SHA-384 digest with the receipt key.
    pub fn append(&mut self, mut entry: Entry, sign: DigestSigner<'_>) -> Result<(), LogError> {
        let io = |e: std::io::Error| LogError::Io(self.path.display().to_string(), e);
        entry.index = self.count;
        entry.prev_hash = hex::encode(self.last_hash);
        entry.hash = String::new();
        let h = entry.compute_hash()?;
        entry.hash = hex::encode(h);
        let mut line = serde_json::to_vec(&entry).map_err(|e| LogError::EntryEncode {
            index: entry.index,
            source: e.into(),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.count += 1;
        self.last_hash = h;
        self.head_stale = true;
        self.write_head(sign)
    }
}

fn read_entries(r: impl BufRead) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| LogError::Io("read".into(), e))?;
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
    /// The signed head's counter (absent in heads written before it existed).
    pub counter: Option<u64>,
}

/// Verify a log file offline: chain, every receipt's signature and contents, and the signed
/// head (which catches truncation). `receipt_spki_der` is the receipt public key printed by
/// `keyward krs init`.
pub fn verify_file(path: &Path, receipt_spki_der: &[u8]) -> Result<Summary, LogError> {
    verify_entries(path, receipt_spki_der).map(|(s, _)| s)
}

fn verify_entries(path: &Path, receipt_spki_der: &[u8]) -> Result<(Summary, Vec<Entry>), LogError> {
    let f = File::open(path).map_err(|e| LogError::Io(path.display().to_string(), e))?;
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
        let r: Receipt = verify_receipt(receipt_spki_der, &rb, &sb).map_err(|source| {
            LogError::BrokenReceipt {
                index: e.index,
                source,
            }
        })?;
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
    let hb = std::fs::read(&hp).map_err(|e| LogError::HeadFile {
        path: hp.clone(),
        source: e.into(),
    })?;
    let head: Head = serde_json::from_slice(&hb).map_err(LogError::HeadJson)?;
    let sig = STANDARD
        .decode(head.signature.as_bytes())
        .map_err(|_| LogError::Head("signature is not base64".into()))?;
    verify_digest_sig(receipt_spki_der, &head.digest(), &sig)
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
    let summary = Summary {
        entries: count,
        releases,
        denies: count - releases,
        head_hash: hex::encode(last),
        counter: head.counter,
    };
    Ok((summary, entries))
}

/// A head a verifier noted earlier: a saved `FILE.head` (its signature checked), or
/// `COUNT:HASH` (the `entries` and `head_hash` a verify printed), optionally `COUNT:HASH:COUNTER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedHead {
    pub count: u64,
    pub head_hash: String,
    pub counter: Option<u64>,
}

impl SavedHead {
    /// Parse `arg`: a head file if one exists at that path, else `COUNT:HASH[:COUNTER]`.
    pub(crate) fn load(arg: &str, receipt_spki_der: &[u8]) -> Result<Self, LogError> {
        let p = Path::new(arg);
        if p.is_file() {
            let b = std::fs::read(p).map_err(|e| LogError::Io(arg.into(), e))?;
            let h: Head = serde_json::from_slice(&b).map_err(|source| LogError::SavedHeadJson {
                arg: arg.to_string(),
                source,
            })?;
            let sig = STANDARD
                .decode(h.signature.as_bytes())
                .map_err(|_| LogError::Head(format!("saved head {arg}: signature")))?;
            verify_digest_sig(receipt_spki_der, &h.digest(), &sig).map_err(|_| {
                LogError::Head(format!(
                    "saved head {arg}: signature does not verify with this receipt key"
                ))
            })?;
            return Ok(Self {
                count: h.count,
                head_hash: h.head_hash,
                counter: h.counter,
            });
        }
        let bad = || {
            LogError::Head(format!(
                "--against {arg}: neither a head file nor COUNT:HASH[:COUNTER]"
            ))
        };
        let mut it = arg.split(':');
        let count = it.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let head_hash = it.next().filter(|h| h.len() == 96).ok_or_else(bad)?;
        hex::decode(head_hash).map_err(|_| bad())?;
        let counter = match it.next() {
            Some(c) => Some(c.parse().map_err(|_| bad())?),
            None => None,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            count,
            head_hash: head_hash.to_ascii_lowercase(),
            counter,
        })
    }
}

/// [`verify_file`], then check that the log extends `saved`: it holds at least as many
/// entries, the entry `saved` ended with is still there unchanged, and its head counter is not
/// below `saved`'s. An older log (restored from a copy) or one forked from `saved` fails.
pub(crate) fn verify_against(
    path: &Path,
    receipt_spki_der: &[u8],
    saved: &SavedHead,
) -> Result<Summary, LogError> {
    let (summary, entries) = verify_entries(path, receipt_spki_der)?;
    if saved.count > summary.entries {
        return Err(LogError::Rollback(format!(
            "the log has {} entries, the saved head names {} (an older or truncated copy)",
            summary.entries, saved.count
        )));
    }
    if let (Some(want), Some(have)) = (saved.counter, summary.counter) {
        if have < want {
            return Err(LogError::Rollback(format!(
                "the log's head counter is {have}, the saved head's is {want} (an older copy)"
            )));
        }
    }
    let named = match saved.count {
        0 => hex::encode([0u8; 48]),
        n => entries
            .get((n - 1) as usize)
            .map(|e| e.hash.clone())
            .unwrap_or_default(),
    };
    if named != saved.head_hash {
        return Err(LogError::Rollback(format!(
            "entry {} is {}, the saved head names {}: the log was forked from or rewritten \
             after that head",
            saved.count.saturating_sub(1),
            short(&named),
            short(&saved.head_hash)
        )));
    }
    Ok(summary)
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

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_krp::{receipt_digest, Receipt};
    use p384::ecdsa::signature::hazmat::PrehashSigner;
    use p384::pkcs8::EncodePublicKey;

    struct Key {
        sk: p384::ecdsa::SigningKey,
        spki: Vec<u8>,
    }

    fn key() -> Key {
        let sk = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let spki = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        Key { sk, spki }
    }

    impl Key {
        fn sign(&self, d: &[u8; 48]) -> Result<Vec<u8>, keyward_hsm::HsmError> {
            let s: p384::ecdsa::Signature = self
                .sk
                .sign_prehash(d)
                .map_err(|_| keyward_hsm::HsmError::Malformed("test signer"))?;
            Ok(s.to_bytes().to_vec())
        }
    }

    /// A deny entry whose receipt, signed by `k`, names `index`.
    fn entry(k: &Key, index: u64) -> Entry {
        let mut sid = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sid);
        let r = Receipt {
            v: 1,
            decision: "deny".into(),
            code: Some(151),
            session_id: sid.to_vec(),
            t: vec![],
            mode: None,
            hsm_epk: vec![],
            wrapped_digest: vec![],
            evidence_digest: vec![],
            policy_digest: vec![2; 48],
            key_id: "k".into(),
            key_version: 1,
            time: 7,
            log_index: index,
            head: None,
            boot_key_id: vec![],
            nonce: vec![],
            also: vec![],
        };
        let bytes = r.encode().unwrap();
        let sig = k.sign(&receipt_digest(&bytes)).unwrap();
        Entry {
            index,
            time: 7,
            decision: "deny".into(),
            code: Some(151),
            reason: None,
            detail: None,
            key_id: "k".into(),
            evidence_digest: String::new(),
            policy_digest: hex::encode([2u8; 48]),
            session_id: hex::encode(sid),
            evidence: None,
            receipt: STANDARD.encode(&bytes),
            signature: STANDARD.encode(sig),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn append(log: &mut ReleaseLog, k: &Key, n: usize) {
        for _ in 0..n {
            let e = entry(k, log.next_index());
            log.append(e, &|d| k.sign(d)).unwrap();
        }
    }

    #[test]
    fn a_signer_that_fails_is_the_source_of_the_log_error() {
        use std::error::Error as _;
        let k = key();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("release.log");
        let mut log = ReleaseLog::open(&p).unwrap();
        let e = entry(&k, log.next_index());
        let failing = |_: &[u8; 48]| -> Result<Vec<u8>, keyward_hsm::HsmError> {
            Err(keyward_hsm::HsmError::SoftKeyFile {
                path: "soft-receipt.key".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            })
        };
        let err = log.append(e, &failing).unwrap_err();
        assert!(matches!(err, LogError::Sign(_)), "{err:?}");
        assert_eq!(err.to_string(), "signing");
        // The chain goes down to the I/O error, each level once.
        let hsm = err
            .source()
            .and_then(|s| s.downcast_ref::<keyward_hsm::HsmError>());
        assert!(
            matches!(hsm, Some(keyward_hsm::HsmError::SoftKeyFile { .. })),
            "{hsm:?}"
        );
        let io = hsm
            .and_then(|h| h.source())
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::PermissionDenied)
        );
        assert_eq!(
            keyward_keystore::error_chain(&err),
            "signing: soft key file soft-receipt.key: permission denied"
        );
    }

    #[test]
    fn open_refuses_a_restored_older_log_and_repairs_a_crashed_head() {
        let k = key();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("release.log");
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 2);
        drop(log);
        let old_log = std::fs::read(&p).unwrap();
        let old_head = std::fs::read(head_path(&p)).unwrap();
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 2);
        drop(log);
        assert_eq!(read_counter(&p).unwrap(), Some(4));
        std::fs::write(&p, &old_log).unwrap();
        std::fs::write(head_path(&p), &old_head).unwrap();
        let err = ReleaseLog::open(&p)
            .err()
            .expect("an older log must be refused");
        assert!(
            matches!(err, LogError::Rollback(_)) && err.to_string().contains("counted to 4"),
            "{err}"
        );
        // The operator accepts the older log by removing the counter; the counter goes on
        // from the head's.
        std::fs::remove_file(counter_path(&p)).unwrap();
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 1);
        drop(log);
        assert_eq!(read_counter(&p).unwrap(), Some(3));
        // A crash between an entry and its head: the KRS writes the head at start.
        let head_before = std::fs::read(head_path(&p)).unwrap();
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 1);
        drop(log);
        std::fs::write(head_path(&p), &head_before).unwrap();
        assert!(verify_file(&p, &k.spki).is_err());
        let mut log = ReleaseLog::open(&p).unwrap();
        assert!(log.head_stale());
        log.repair_head(&|d| k.sign(d)).unwrap();
        assert!(!log.head_stale());
        assert_eq!(verify_file(&p, &k.spki).unwrap().entries, 4);
        // A truncated log (head kept) is refused at open.
        let text = std::fs::read_to_string(&p).unwrap();
        let cut: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(&p, cut.join("\n") + "\n").unwrap();
        let err = ReleaseLog::open(&p)
            .err()
            .expect("a truncated log must be refused");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn verify_against_catches_older_and_forked_logs() {
        let k = key();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("release.log");
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 3);
        drop(log);
        let older = (
            std::fs::read(&p).unwrap(),
            std::fs::read(head_path(&p)).unwrap(),
        );
        let h3 = d.path().join("h3.head");
        std::fs::copy(head_path(&p), &h3).unwrap();
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 2);
        drop(log);
        let h5 = d.path().join("h5.head");
        std::fs::copy(head_path(&p), &h5).unwrap();
        let h5_saved = SavedHead::load(h5.to_str().unwrap(), &k.spki).unwrap();
        assert_eq!((h5_saved.count, h5_saved.counter), (5, Some(5)));

        // The current log extends both heads.
        for h in [&h3, &h5] {
            let saved = SavedHead::load(h.to_str().unwrap(), &k.spki).unwrap();
            assert_eq!(verify_against(&p, &k.spki, &saved).unwrap().entries, 5);
        }
        let by_hash = SavedHead::load(&format!("5:{}", h5_saved.head_hash), &k.spki).unwrap();
        assert!(verify_against(&p, &k.spki, &by_hash).is_ok());

        // The older copy restored: it verifies on its own, not against the newer head.
        std::fs::write(&p, &older.0).unwrap();
        std::fs::write(head_path(&p), &older.1).unwrap();
        assert_eq!(verify_file(&p, &k.spki).unwrap().entries, 3);
        let err = verify_against(&p, &k.spki, &h5_saved).unwrap_err();
        assert!(
            matches!(err, LogError::Rollback(_)) && err.to_string().contains("older"),
            "{err}"
        );
        let err = verify_against(&p, &k.spki, &by_hash).unwrap_err();
        assert!(err.to_string().contains("older"), "{err}");

        // Forked from the newer head: grown past it from the older copy.
        std::fs::remove_file(counter_path(&p)).unwrap();
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 3);
        drop(log);
        let err = verify_against(&p, &k.spki, &by_hash).unwrap_err();
        assert!(err.to_string().contains("forked"), "{err}");

        // A saved head signed by another key, or a malformed note, is refused.
        assert!(SavedHead::load(h5.to_str().unwrap(), &key().spki).is_err());
        assert!(SavedHead::load("3:abcd", &k.spki).is_err());
    }

    #[test]
    fn a_head_from_before_the_counter_still_verifies_and_is_carried_on() {
        let k = key();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("release.log");
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 2);
        drop(log);
        // What an older KRS wrote: no counter file, a head signed without a counter.
        let mut h: Head = serde_json::from_slice(&std::fs::read(head_path(&p)).unwrap()).unwrap();
        h.counter = None;
        h.signature = STANDARD.encode(k.sign(&h.digest()).unwrap());
        std::fs::write(head_path(&p), serde_json::to_vec(&h).unwrap()).unwrap();
        std::fs::remove_file(counter_path(&p)).unwrap();
        let s = verify_file(&p, &k.spki).unwrap();
        assert_eq!((s.entries, s.counter), (2, None));
        let mut log = ReleaseLog::open(&p).unwrap();
        append(&mut log, &k, 1);
        drop(log);
        let s = verify_file(&p, &k.spki).unwrap();
        assert_eq!((s.entries, s.counter), (3, Some(3)));
    }
}
