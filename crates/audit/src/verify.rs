//! `keyward audit verify`: check audit log files offline, in order (oldest first, across
//! rotations and restarts), and name the first line that was removed, changed or reordered.
//!
//! For each line: it must be JSON; its `seq` must be the next number (a gap is lines removed;
//! a number seen out of place is a reordering); its `prev` must be the SHA-256 of the line
//! before it as written (otherwise that line was changed). A `chain` line starts a writer's
//! segment with its key; each `checkpoint` must be signed by that key over the count and head.
//! With `--key`, every segment's key must be one of those given (their public halves come from
//! the appliance's start-up log, which is kept off the data disk).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// What a clean log looked like.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lines read.
    pub lines: u64,
    /// Writer segments (`chain` lines: one per start).
    pub segments: u64,
    /// Signed checkpoints verified.
    pub checkpoints: u64,
    /// The segments' keys (SEC1 hex), in order.
    pub keys: Vec<String>,
    /// Lines after the last checkpoint (a truncation there would not show).
    pub unsigned_tail: u64,
    /// The `seq` of the first line: above 0 when older files were not given.
    pub first_seq: u64,
}

/// Where a log does not verify. `file` and `line` (1-based) name the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{file}: {why}")]
    Read { file: String, why: String },
    #[error("{file}:{line}: not a JSON audit line ({why})")]
    NotJson {
        file: String,
        line: u64,
        why: String,
    },
    #[error("{file}:{line}: {count} line(s) removed before this line (seq {found}, expected {expected})")]
    Removed {
        file: String,
        line: u64,
        count: u64,
        found: u64,
        expected: u64,
    },
    #[error(
        "{file}:{line}: lines reordered: seq {found} here, {expected} expected (it is at {other})"
    )]
    Reordered {
        file: String,
        line: u64,
        found: u64,
        expected: u64,
        other: String,
    },
    #[error("{file}:{line}: this line was changed (the next line's hash of it does not match)")]
    Changed { file: String, line: u64 },
    #[error("{file}:{line}: checkpoint {why}")]
    Checkpoint {
        file: String,
        line: u64,
        why: String,
    },
    #[error("{file}:{line}: the segment's key {key} is not one of the keys given with --key")]
    UnknownKey {
        file: String,
        line: u64,
        key: String,
    },
    #[error("{file}:{line}: a line before the first chain line of the log")]
    NoChain { file: String, line: u64 },
}

struct Line {
    file: String,
    no: u64,
    raw: Vec<u8>,
}

/// Verify `files` (in order). `keys`: SEC1 hex public keys every segment must use (empty:
/// any key; the report lists them).
pub fn verify(files: &[PathBuf], keys: &[String]) -> Result<Report, VerifyError> {
    let mut lines = Vec::new();
    for f in files {
        read_lines(f, &mut lines)?;
    }
    let pinned: HashSet<String> = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
    let mut report = Report::default();
    let mut expected: Option<u64> = None;
    let mut prev_hash: Option<[u8; 32]> = None;
    let mut key: Option<(VerifyingKey, Vec<u8>)> = None;
    let mut count_in_segment = 0u64;
    let seqs: Vec<Option<u64>> = lines.iter().map(|l| seq_of(&l.raw)).collect();
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_slice(&l.raw).map_err(|e| VerifyError::NotJson {
                file: l.file.clone(),
                line: l.no,
                why: e.to_string(),
            })?;
        let seq = v
            .get("seq")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| VerifyError::NotJson {
                file: l.file.clone(),
                line: l.no,
                why: "no seq".into(),
            })?;
        let prev = v
            .get("prev")
            .and_then(|p| p.as_str())
            .and_then(|p| hex::decode(p).ok())
            .and_then(|p| <[u8; 32]>::try_from(p).ok())
            .ok_or_else(|| VerifyError::NotJson {
                file: l.file.clone(),
                line: l.no,
                why: "no prev hash".into(),
            })?;
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match expected {
            None => report.first_seq = seq,
            Some(want) if seq != want => {
                // Reordered if the expected number is somewhere else; removed otherwise.
                if let Some(j) = seqs.iter().position(|s| *s == Some(want)) {
                    let other = lines
                        .get(j)
                        .map_or(String::new(), |o| format!("{}:{}", o.file, o.no));
                    return Err(VerifyError::Reordered {
                        file: l.file.clone(),
                        line: l.no,
                        found: seq,
                        expected: want,
                        other,
                    });
                }
                return Err(VerifyError::Removed {
                    file: l.file.clone(),
                    line: l.no,
                    count: seq.saturating_sub(want),
                    found: seq,
                    expected: want,
                });
            }
            Some(_) => {}
        }
        if let Some(h) = prev_hash {
            if h != prev {
                let before = i.checked_sub(1).and_then(|j| lines.get(j));
                return Err(VerifyError::Changed {
                    file: before.map_or(l.file.clone(), |b| b.file.clone()),
                    line: before.map_or(l.no, |b| b.no),
                });
            }
        }
        let hash: [u8; 32] = Sha256::digest(&l.raw).into();
        match kind {
            "chain" => {
                let k = v.get("key").and_then(|k| k.as_str()).unwrap_or("");
                let sec1 = hex::decode(k).map_err(|_| VerifyError::NotJson {
                    file: l.file.clone(),
                    line: l.no,
                    why: "chain key is not hex".into(),
                })?;
                let vk =
                    VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| VerifyError::NotJson {
                        file: l.file.clone(),
                        line: l.no,
                        why: "chain key is not a P-256 public key".into(),
                    })?;
                if !pinned.is_empty() && !pinned.contains(&k.to_ascii_lowercase()) {
                    return Err(VerifyError::UnknownKey {
                        file: l.file.clone(),
                        line: l.no,
                        key: k.to_string(),
                    });
                }
                report.keys.push(k.to_string());
                report.segments += 1;
                report.unsigned_tail = 0;
                key = Some((vk, sec1));
                count_in_segment = 1;
            }
            _ if key.is_none() => {
                // Older files not given: the log starts mid-segment; lines are chained but
                // no checkpoint can be judged until the next chain line.
                if report.lines == 0 && seq == 0 {
                    return Err(VerifyError::NoChain {
                        file: l.file.clone(),
                        line: l.no,
                    });
                }
                report.unsigned_tail += 1;
            }
            "checkpoint" => {
                count_in_segment += 1;
                let bad = |why: &str| VerifyError::Checkpoint {
                    file: l.file.clone(),
                    line: l.no,
                    why: why.to_string(),
                };
                let (vk, sec1) = key.as_ref().ok_or_else(|| bad("outside a segment"))?;
                let head = v
                    .get("head")
                    .and_then(|h| h.as_str())
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or_else(|| bad("has no head"))?;
                if head != prev {
                    return Err(bad("head is not the hash of the line before it"));
                }
                let n = v.get("count").and_then(|c| c.as_u64());
                if n != Some(count_in_segment) {
                    return Err(bad(&format!(
                        "counts {} lines, the segment has {count_in_segment}",
                        n.unwrap_or(0)
                    )));
                }
                let sig = v
                    .get("sig")
                    .and_then(|s| s.as_str())
                    .and_then(|s| hex::decode(s).ok())
                    .and_then(|s| Signature::from_slice(&s).ok())
                    .ok_or_else(|| bad("signature is malformed"))?;
                let msg = super::chain::checkpoint_message(sec1, seq, &head);
                vk.verify(&msg, &sig).map_err(|_| {
                    bad("signature does not verify (not made with the segment's key)")
                })?;
                report.checkpoints += 1;
                report.unsigned_tail = 0;
            }
            _ => {
                count_in_segment += 1;
                report.unsigned_tail += 1;
            }
        }
        report.lines += 1;
        expected = Some(seq + 1);
        prev_hash = Some(hash);
    }
    Ok(report)
}

fn seq_of(raw: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(raw)
        .ok()?
        .get("seq")?
        .as_u64()
}

fn read_lines(path: &Path, out: &mut Vec<Line>) -> Result<(), VerifyError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| VerifyError::Read {
        file: file.clone(),
        why: e.to_string(),
    })?;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let no = i as u64 + 1;
        if raw.is_empty() {
            continue;
        }
        out.push(Line {
            file: file.clone(),
            no,
            raw: raw.to_vec(),
        });
    }
    Ok(())
}
