//! The file implementation of [`KeyStore`]: one directory holding an append-only log of JSON
//! lines (`keystore.jsonl`: the [`Header`] first, then one [`SignedRecord`] per line), compacted
//! by rewriting it, and the sealed store head (`keystore.head`, one JSON object).
//!
//! Why a log: an admin change appends one line (~300 bytes) and `fdatasync`s it, whatever the
//! number of keys, and opening reads one file sequentially (100k keys: one 30 MB read instead of
//! 100k file opens). Rewriting one 100k-key file on every change would cost ~30 MB of writes per
//! change; a file per key would cost 100k opens per unseal. The log is rewritten (compacted)
//! only when superseded lines outnumber live ones.
//!
//! Durability: an append is `write` + `fdatasync`; the first header and every compaction are a
//! temp file, `fsync`, `rename`, `fsync` of the directory; so is every head update. A `kill -9`
//! can only leave a torn last line (no final newline) or complete lines after the sealed head,
//! neither acknowledged: `load` reports the torn line and the registry decides (it cuts off
//! only what lies beyond the acknowledged head, see `registry.rs`). A complete line that does
//! not parse is damage, not a crash, and is refused. An exclusive `flock` on `keystore.lock`
//! keeps a second process from writing the same store.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::model::{Header, KeyStore, SealedHead, SignedRecord};
use super::KeystoreError;

const DATA: &str = "keystore.jsonl";
const TMP: &str = "keystore.jsonl.tmp";
const LOCK: &str = "keystore.lock";
const HEAD: &str = "keystore.head";
const HEAD_TMP: &str = "keystore.head.tmp";
/// Largest sealed head file accepted.
const MAX_HEAD: u64 = 4096;
/// Longest line accepted when reading (a record is well under 64 KiB even with many grants).
const MAX_LINE: usize = 1 << 20;

/// A key store in a directory.
pub struct FileKeyStore {
    dir: PathBuf,
    /// Holds the `flock` for as long as the store is open.
    _lock: nix::fcntl::Flock<File>,
    header: Option<Header>,
    /// Append handle, once the header exists.
    file: Option<File>,
    /// Bytes of valid data in the log (end of the last complete line).
    len: u64,
    records: usize,
    /// Set when a failed write could not be rolled back: refuse further writes.
    poisoned: bool,
    /// `load` found an incomplete last line after `len`; appends wait for `truncate_after`.
    torn: bool,
    /// The last appended batch: the `seq` before it, its record count and the length before it
    /// (undone without a rescan).
    last_batch: Option<(u64, usize, u64)>,
}

fn sync_dir(dir: &Path) -> Result<(), KeystoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(KeystoreError::io("fsync directory"))
}

impl FileKeyStore {
    /// Open the store in `dir`, creating the directory (mode 0700) if missing, and take its lock.
    /// Fails with [`KeystoreError::Locked`] if another process has it open.
    pub fn open(dir: &Path) -> Result<FileKeyStore, KeystoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(KeystoreError::io("create directory"))?;
        // Make the directory entry itself durable (it may have just been created).
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK))
            .map_err(KeystoreError::io("open lock file"))?;
        let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(KeystoreError::Locked(dir.display().to_string()))
            }
            Err((_, e)) => {
                return Err(KeystoreError::Io {
                    op: "lock",
                    source: std::io::Error::from(e),
                })
            }
        };
        // A temp file left by a compaction or head update that crashed before its rename is
        // garbage.
        for tmp in [TMP, HEAD_TMP] {
            match std::fs::remove_file(dir.join(tmp)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(KeystoreError::Io {
                        op: "remove temp file",
                        source: e,
                    })
                }
            }
        }
        Ok(FileKeyStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            header: None,
            file: None,
            len: 0,
            records: 0,
            poisoned: false,
            torn: false,
            last_batch: None,
        })
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    fn open_append(&mut self) -> Result<(), KeystoreError> {
        let f = OpenOptions::new()
            .append(true)
            .open(self.data_path())
            .map_err(KeystoreError::io("open for append"))?;
        self.file = Some(f);
        Ok(())
    }

    /// Write `header` and `records` to the temp file and rename it over the log.
    fn replace(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let tmp = self.dir.join(TMP);
        let result = (|| {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(KeystoreError::io("create temp file"))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let mut len = write_line(&mut w, header)?;
            let mut n = 0usize;
            for r in records {
                len += write_line(&mut w, &r?)?;
                n += 1;
            }
            let f = w.into_inner().map_err(|e| KeystoreError::Io {
                op: "write temp file",
                source: e.into_error(),
            })?;
            f.sync_all().map_err(KeystoreError::io("fsync temp file"))?;
            Ok((len, n))
        })();
        let (len, n) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, self.data_path()).map_err(KeystoreError::io("rename"))?;
        sync_dir(&self.dir)?;
        self.header = Some(header.clone());
        self.len = len;
        self.records = n;
        self.poisoned = false;
        self.torn = false;
        self.last_batch = None;
        self.open_append()
    }

    /// Cut the log at `off` (a line boundary) and make it durable.
    fn cut_at(&mut self, off: u64, records: usize) -> Result<(), KeystoreError> {
        let f = OpenOptions::new()
            .write(true)
            .open(self.data_path())
            .map_err(KeystoreError::io("open for truncation"))?;
        let res = f.set_len(off).and_then(|()| f.sync_all());
        if let Err(e) = res {
            self.poisoned = true;
            return Err(KeystoreError::Io {
                op: "truncate",
                source: e,
            });
        }
        self.len = off;
        self.records = records;
        self.torn = false;
        self.last_batch = None;
        Ok(())
    }
}

/// Only the sequence number of a line (the rest is skipped).
#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Serialize `v` as one line; returns the bytes written.
fn write_line<T: serde::Serialize>(w: &mut impl Write, v: &T) -> Result<u64, KeystoreError> {
    let mut line = serde_json::to_vec(v).map_err(|_| KeystoreError::Seal)?;
    line.push(b'\n');
    w.write_all(&line).map_err(KeystoreError::io("write"))?;
    Ok(line.len() as u64)
}

/// Read one line into `buf` (cleared first), at most `MAX_LINE` bytes. Returns the bytes read
/// (0 at end of file).
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> Result<usize, KeystoreError> {
    buf.clear();
    let n = <&mut R as std::io::Read>::take(r, MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(KeystoreError::io("read"))?;
    Ok(n)
}

impl KeyStore for FileKeyStore {
    fn location(&self) -> String {
        self.data_path().display().to_string()
    }

    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        let f = match File::open(self.data_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeystoreError::Io {
                    op: "open",
                    source: e,
                })
            }
        };
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        let n = read_line(&mut r, &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(KeystoreError::Format(format!(
                "{} has no complete header line",
                self.location()
            )));
        }
        let h: Header = serde_json::from_slice(&buf).map_err(|e| {
            KeystoreError::Format(format!("{}: header unreadable: {e}", self.location()))
        })?;
        self.header = Some(h.clone());
        Ok(Some(h))
    }

    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        if self.data_path().exists() {
            return Err(KeystoreError::Format(format!(
                "{} is already initialised",
                self.location()
            )));
        }
        self.replace(header, &mut std::iter::empty())
    }

    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let f = File::open(self.data_path()).map_err(KeystoreError::io("open"))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut buf = Vec::with_capacity(1024);
        // Header line (already parsed by `header`).
        let mut off = read_line(&mut r, &mut buf)? as u64;
        let mut line_no = 1usize;
        let mut records = 0usize;
        loop {
            let n = read_line(&mut r, &mut buf)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                if n > MAX_LINE {
                    return Err(KeystoreError::Tampered {
                        record: format!("line {line_no}"),
                        why: "line too long",
                    });
                }
                // Torn last line from a crash mid-append. Whether it may be cut off (it lies
                // beyond the acknowledged head) is the registry's decision: report it.
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut r, &mut rest).map_err(KeystoreError::io("read"))?;
                tracing::debug!(
                    bytes = n + rest.len(),
                    store = %self.location(),
                    "incomplete last line in the key store log"
                );
                self.torn = true;
                break;
            }
            let rec: SignedRecord =
                serde_json::from_slice(&buf).map_err(|_| KeystoreError::Tampered {
                    record: format!("line {line_no}"),
                    why: "record does not parse",
                })?;
            visit(rec)?;
            off += n as u64;
            records += 1;
        }
        self.len = off;
        self.records = records;
        self.last_batch = None;
        self.open_append()
    }

    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        self.append_batch(std::slice::from_ref(rec))
    }

    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        if self.poisoned {
            return Err(KeystoreError::Io {
                op: "append",
                source: std::io::Error::other(
                    "an earlier failed write could not be undone; reopen",
                ),
            });
        }
        if self.torn {
            return Err(KeystoreError::Format(
                "the log's incomplete last line was not removed before an append".into(),
            ));
        }
        let before = (
            recs.first().map_or(0, |r| r.seq.saturating_sub(1)),
            self.len,
        );
        let Some(f) = self.file.as_mut() else {
            return Err(KeystoreError::Format(
                "store not loaded before append".into(),
            ));
        };
        let mut line = Vec::with_capacity(400 * recs.len());
        for rec in recs {
            serde_json::to_writer(&mut line, rec).map_err(|_| KeystoreError::Seal)?;
            line.push(b'\n');
        }
        // One write and one fdatasync for the whole batch.
        let res = f.write_all(&line).and_then(|()| f.sync_data());
        if let Err(e) = res {
            // Undo a partial line so the next append starts on a line boundary.
            if f.set_len(self.len).and_then(|()| f.sync_data()).is_err() {
                self.poisoned = true;
            }
            return Err(KeystoreError::Io {
                op: "append",
                source: e,
            });
        }
        self.len += line.len() as u64;
        self.records += recs.len();
        self.last_batch = Some((before.0, recs.len(), before.1));
        Ok(())
    }

    fn record_count(&self) -> usize {
        self.records
    }

    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let Some(header) = self.header.clone() else {
            return Err(KeystoreError::Format("store not initialised".into()));
        };
        self.replace(&header, records)
    }

    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        self.replace(header, records)
    }

    fn has_torn_tail(&self) -> bool {
        self.torn
    }

    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        // The batch just appended (an anchor refusal): its start is known.
        if let Some((prev, n, len)) = self.last_batch {
            if prev == seq && !self.torn {
                let records = self.records.saturating_sub(n);
                return self.cut_at(len, records);
            }
        }
        // Otherwise (at open, rare): find the first line after `seq`.
        let f = File::open(self.data_path()).map_err(KeystoreError::io("open"))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut buf = Vec::with_capacity(1024);
        let mut off = read_line(&mut r, &mut buf)? as u64;
        let mut records = 0usize;
        loop {
            let n = read_line(&mut r, &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            match serde_json::from_slice::<SeqOnly>(&buf) {
                Ok(l) if l.seq <= seq => {}
                _ => break,
            }
            off += n as u64;
            records += 1;
        }
        drop(r);
        self.cut_at(off, records)?;
        self.open_append()
    }

    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        let f = match File::open(self.dir.join(HEAD)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeystoreError::Io {
                    op: "open head",
                    source: e,
                })
            }
        };
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_HEAD + 1), &mut buf)
            .map_err(KeystoreError::io("read head"))?;
        if buf.len() as u64 > MAX_HEAD {
            return Err(KeystoreError::Tampered {
                record: "sealed head".into(),
                why: "the head file is too long",
            });
        }
        serde_json::from_slice(&buf)
            .map(Some)
            .map_err(|_| KeystoreError::Tampered {
                record: "sealed head".into(),
                why: "the head file does not parse",
            })
    }

    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        let tmp = self.dir.join(HEAD_TMP);
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(KeystoreError::io("create head temp file"))?;
            write_line(&mut f, head)?;
            f.sync_all()
                .map_err(KeystoreError::io("fsync head temp file"))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, self.dir.join(HEAD)).map_err(KeystoreError::io("rename head"))?;
        sync_dir(&self.dir)
    }
}
