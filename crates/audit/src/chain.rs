//! The hash chain that makes the audit log tamper-evident, on the writer thread.
//!
//! Every line ends with `"seq":N,"prev":"<hex>"`: its number, and the SHA-256 of the line
//! before it exactly as written (without the newline). A writer's first line is a `chain`
//! line carrying the public half of a P-256 key made at start in this process (it never
//! leaves it, and is gone when the process ends); every [`CHECKPOINT_EVERY`] with new lines,
//! and at shutdown, a `checkpoint` line carries the count and the head hash signed with that
//! key. So a line removed, changed or reordered breaks the chain at the next line, and a log
//! rewritten from some point on cannot carry a valid checkpoint without the key. What the
//! chain cannot show: lines cut off after the last checkpoint (a crash, or a truncation);
//! `keyward audit verify` reports how many lines no checkpoint covers. The key is trusted as
//! far as its public half is known from elsewhere: `keyward audit verify --key` pins it (the
//! appliance logs it at start, to journald / CloudWatch, outside the data disk).
//!
//! The cost is one SHA-256 of each line (about 300 bytes) on the writer thread, never on the
//! request path, and one ECDSA signature per checkpoint.

use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime};

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

/// How often a checkpoint is written while lines keep coming.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// What a checkpoint signature covers: this prefix, the key's SEC1 public key, the
/// checkpoint line's `seq` (big-endian u64) and the head (the hash of the line before it).
pub(crate) const CHECKPOINT_CONTEXT: &[u8] = b"keyward audit checkpoint v1\0";

/// The message a checkpoint signs.
pub(crate) fn checkpoint_message(key_sec1: &[u8], seq: u64, head: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + key_sec1.len() + 40);
    m.extend_from_slice(CHECKPOINT_CONTEXT);
    m.extend_from_slice(key_sec1);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m
}

/// The writer's chain state.
pub(crate) struct Chain {
    seq: u64,
    prev: [u8; 32],
    key: SigningKey,
    key_sec1: Vec<u8>,
    /// Lines since this writer's `chain` line (checkpoints included).
    count: u64,
    /// Lines since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

impl Chain {
    /// A chain continuing after `seq`/`prev` (the last line already in the file), with a
    /// fresh key.
    pub(crate) fn new(next_seq: u64, prev: [u8; 32]) -> Self {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let key_sec1 = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Chain {
            seq: next_seq,
            prev,
            key,
            key_sec1,
            count: 0,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        }
    }

    /// The public key (SEC1, uncompressed), hex: what `keyward audit verify --key` pins.
    pub(crate) fn public_key_hex(&self) -> String {
        hex::encode(&self.key_sec1)
    }

    /// Finish the line that starts at `buf[start..]` and ends with `}\n`: add its number and
    /// the previous line's hash, and remember its own hash.
    pub(crate) fn seal(&mut self, buf: &mut Vec<u8>, start: usize) -> io::Result<()> {
        if buf.len() < start + 2 || !buf.ends_with(b"}\n") {
            return Err(io::Error::other("audit line does not end in }"));
        }
        buf.truncate(buf.len() - 2);
        buf.extend_from_slice(b",\"seq\":");
        write!(buf, "{}", self.seq)?;
        buf.extend_from_slice(b",\"prev\":\"");
        buf.extend_from_slice(hex::encode(self.prev).as_bytes());
        buf.extend_from_slice(b"\"}");
        self.prev = Sha256::digest(buf.get(start..).unwrap_or_default()).into();
        buf.push(b'\n');
        self.seq += 1;
        self.count += 1;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// The first line of this writer: its key, and what it found at the end of the file.
    pub(crate) fn write_start(
        &mut self,
        buf: &mut Vec<u8>,
        now: SystemTime,
        truncated_bytes: usize,
    ) -> io::Result<()> {
        let start = buf.len();
        buf.extend_from_slice(b"{\"time\":\"");
        super::write_time(buf, now)?;
        buf.extend_from_slice(b"\",\"type\":\"chain\",\"key\":\"");
        buf.extend_from_slice(self.public_key_hex().as_bytes());
        writeln!(
            buf,
            "\",\"version\":\"{}\",\"truncated_bytes\":{truncated_bytes}}}",
            env!("CARGO_PKG_VERSION")
        )?;
        self.seal(buf, start)?;
        // The chain line starts the count.
        self.count = 1;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Whether a checkpoint is due (lines since the last one, and the interval has passed).
    pub(crate) fn checkpoint_due(&self, now: Instant) -> bool {
        self.since_checkpoint > 0 && now.duration_since(self.last_checkpoint) >= CHECKPOINT_EVERY
    }

    /// A signed checkpoint over everything so far (written at shutdown even if not due).
    pub(crate) fn write_checkpoint(
        &mut self,
        buf: &mut Vec<u8>,
        now: SystemTime,
    ) -> io::Result<()> {
        if self.since_checkpoint == 0 {
            return Ok(());
        }
        let head = self.prev;
        let sig: Signature = self
            .key
            .sign(&checkpoint_message(&self.key_sec1, self.seq, &head));
        let start = buf.len();
        buf.extend_from_slice(b"{\"time\":\"");
        super::write_time(buf, now)?;
        writeln!(
            buf,
            "\",\"type\":\"checkpoint\",\"count\":{},\"head\":\"{}\",\"sig\":\"{}\"}}",
            self.count + 1,
            hex::encode(head),
            hex::encode(sig.to_bytes())
        )?;
        self.seal(buf, start)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// Where an existing log file ends: the next `seq`, the hash of its last complete line, and
/// how many bytes of a torn last line (a crash mid-write) follow it.
pub(crate) fn tail_of(file: &mut std::fs::File) -> io::Result<(u64, [u8; 32], usize, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, [0; 32], 0, 0));
    }
    let window = len.min(256 * 1024);
    file.seek(SeekFrom::Start(len - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail)?;
    // The torn part: after the last newline.
    let end = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = tail.len() - end;
    let complete = tail.get(..end).unwrap_or_default();
    let body = complete.strip_suffix(b"\n").unwrap_or(complete);
    let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = body.get(line_start..).unwrap_or_default();
    if last.is_empty() {
        return Ok((0, [0; 32], torn, len - torn as u64));
    }
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
        .map_or(0, |s| s + 1);
    Ok((seq, Sha256::digest(last).into(), torn, len - torn as u64))
}
