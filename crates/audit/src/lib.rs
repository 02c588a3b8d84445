//! The audit log: one JSON line per XKS request and per admin action, written off the request
//! path.
//!
//! A handler fills an [`XksRecord`] (one small string buffer, the only allocation) and sends it
//! over a bounded channel to a dedicated writer thread, which formats the JSON line into a buffer
//! handed to a file (append, mode 0600) or stderr in large writes. The writer flushes at most
//! [`FLUSH_EVERY`] after a line arrives, on [`AuditLog::flush`], and on [`AuditLog::shutdown`],
//! which drains every queued line, flushes and fsyncs: no acknowledged request loses its line.
//!
//! What is logged: time, kmsRequestId, operation, kmsOperation, key id, principal, via service,
//! source VPC/VPCE, access key id, decision, HTTP status, error name, latency. Never plaintext,
//! ciphertext, AAD, key bytes or secrets: the record has no field that could hold them.
//!
//! When the channel is full (the disk cannot keep up), the request thread WAITS for room rather
//! than drop the line: an audit log that silently loses records under load is worse than a
//! request that is briefly slower, and KMS retries slow answers while it never learns about
//! a lost line. Each wait is counted ([`AuditLog::waits`]). A line is lost only if the writer
//! thread is gone (after `shutdown`), or the sink has been failing for longer than
//! [`MAX_PENDING`] bytes of lines; those are counted in [`AuditLog::lost`] and reported on
//! stderr.
//!
//! When the sink fails (ENOSPC, EIO), the lines stay in memory, in order, and every
//! [`FLUSH_EVERY`] the writer tries again; [`AuditLog::failing`] says so from the first failed
//! write until one succeeds, and the XKS handlers refuse operations meanwhile (an answer is not
//! given for a request whose line may not reach the disk). Nothing already formatted is ever
//! dropped, so a line cut by a short write is completed when the disk recovers and the hash
//! chain goes on. Lines that arrive while more than [`MAX_PENDING`] bytes wait are not
//! formatted (they never enter the chain, so it still verifies); once the sink works again an
//! `audit.gap` admin line says how many were not written and why.

mod chain;
mod verify;

// Offline verification of a log's hash chain and signed checkpoints (`keyward audit verify`).
pub use verify::{verify, Report, VerifyError};

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Where the lines go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    Stderr,
    File(PathBuf),
}

/// Lines waiting between the handlers and the writer.
pub const CHANNEL_CAPACITY: usize = 16_384;
/// The longest a written line waits in the buffer before it is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Errors from the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(io::Error),
    #[error("audit log write failed: {0}")]
    Write(io::Error),
    #[error("audit writer is no longer running")]
    Gone,
}

/// The string fields of an XKS record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    KmsRequestId,
    KmsOperation,
    KeyId,
    Principal,
    ViaService,
    SourceVpc,
    SourceVpce,
    KmsKeyArn,
    AccessKeyId,
    UriPrefix,
}

const FIELDS: [(Field, &str); 10] = [
    (Field::KmsRequestId, "kmsRequestId"),
    (Field::KmsOperation, "kmsOperation"),
    (Field::KeyId, "keyId"),
    (Field::Principal, "principal"),
    (Field::ViaService, "viaService"),
    (Field::SourceVpc, "sourceVpc"),
    (Field::SourceVpce, "sourceVpce"),
    (Field::KmsKeyArn, "kmsKeyArn"),
    (Field::AccessKeyId, "accessKeyId"),
    (Field::UriPrefix, "uriPrefix"),
];

const ABSENT: (u32, u32) = (u32::MAX, 0);

/// One XKS request's audit record. Strings live in one buffer (one allocation per request).
#[derive(Debug, Clone)]
pub struct XksRecord {
    /// When the request arrived (monotonic; the writer turns it into wall-clock time, so the
    /// request path reads no extra clock).
    at: Instant,
    operation: &'static str,
    status: u16,
    error: Option<&'static str>,
    latency_us: u64,
    grant: Option<u32>,
    buf: String,
    spans: [(u32, u32); 10],
}

impl Default for XksRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl XksRecord {
    /// An empty record stamped with the current time.
    pub fn new() -> Self {
        Self::at(Instant::now())
    }

    /// An empty record for a request that arrived at `at`.
    pub fn at(at: Instant) -> Self {
        Self {
            at,
            operation: "unknown",
            status: 0,
            error: None,
            latency_us: 0,
            grant: None,
            buf: String::with_capacity(256),
            spans: [ABSENT; 10],
        }
    }

    /// Set a string field (at most 4096 bytes are kept; later calls replace earlier ones).
    pub fn set(&mut self, f: Field, v: &str) {
        let mut end = v.len().min(4096);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        let start = self.buf.len();
        self.buf.push_str(&v[..end]);
        self.spans[f as usize] = (start as u32, self.buf.len() as u32);
    }

    /// A string field, if set.
    pub fn get(&self, f: Field) -> Option<&str> {
        let (s, e) = self.spans[f as usize];
        (s != u32::MAX)
            .then(|| self.buf.get(s as usize..e as usize))
            .flatten()
    }

    /// The API called (`Encrypt`, ...).
    pub fn set_operation(&mut self, op: &'static str) {
        self.operation = op;
    }

    /// The grant (index in the key's grant list) that allowed the request.
    pub fn set_grant(&mut self, idx: usize) {
        self.grant = u32::try_from(idx).ok();
    }

    /// The API called (`Encrypt`, ..., `unknown` until set).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The HTTP status answered (0 until [`XksRecord::finish`]).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The spec's errorName of the answer, if it was an error.
    pub fn error_name(&self) -> Option<&'static str> {
        self.error
    }

    /// How long the request took.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us)
    }

    /// The outcome.
    pub fn finish(&mut self, status: u16, error: Option<&'static str>, latency: Duration) {
        self.status = status;
        self.error = error;
        self.latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    }

    fn decision(&self) -> &'static str {
        match self.status {
            200..=299 => "allow",
            401 | 403 => "deny",
            _ => "error",
        }
    }

    /// One JSON line; `clock` maps the arrival instant to wall-clock time.
    fn write_json(&self, w: &mut impl Write, clock: &mut WallClock) -> io::Result<()> {
        w.write_all(b"{\"time\":\"")?;
        clock.write_time(w, self.at)?;
        w.write_all(b"\",\"type\":\"xks\",\"operation\":\"")?;
        w.write_all(self.operation.as_bytes())?;
        w.write_all(b"\"")?;
        for (f, name) in FIELDS {
            if let Some(v) = self.get(f) {
                w.write_all(b",\"")?;
                w.write_all(name.as_bytes())?;
                w.write_all(b"\":\"")?;
                write_escaped(w, v)?;
                w.write_all(b"\"")?;
            }
        }
        w.write_all(b",\"decision\":\"")?;
        w.write_all(self.decision().as_bytes())?;
        w.write_all(b"\",\"httpStatus\":")?;
        write_uint(w, u64::from(self.status), 1)?;
        match self.error {
            Some(e) => {
                w.write_all(b",\"errorName\":\"")?;
                w.write_all(e.as_bytes())?;
                w.write_all(b"\"")?;
            }
            None => w.write_all(b",\"errorName\":null")?,
        }
        if let Some(g) = self.grant {
            w.write_all(b",\"grant\":")?;
            write_uint(w, g as u64, 1)?;
        }
        w.write_all(b",\"latencyUs\":")?;
        write_uint(w, self.latency_us, 1)?;
        w.write_all(b"}\n")
    }
}

struct AdminRecord {
    time: SystemTime,
    subject: String,
    action: String,
    detail: String,
    ok: bool,
}

impl AdminRecord {
    fn write_json(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"{\"time\":\"")?;
        write_time(w, self.time)?;
        w.write_all(b"\",\"type\":\"admin\",\"subject\":\"")?;
        write_escaped(w, &self.subject)?;
        w.write_all(b"\",\"action\":\"")?;
        write_escaped(w, &self.action)?;
        w.write_all(b"\",\"detail\":\"")?;
        write_escaped(w, &self.detail)?;
        writeln!(
            w,
            "\",\"decision\":\"{}\"}}",
            if self.ok { "allow" } else { "error" }
        )
    }
}

enum Msg {
    Xks(XksRecord),
    Admin(AdminRecord),
    Flush(SyncSender<io::Result<()>>),
    Shutdown(SyncSender<io::Result<()>>),
}

/// What the writer thread calls with every XKS record it writes (metrics): it runs on the
/// writer thread, off the request path, and must be quick.
pub type XksHook = Arc<dyn Fn(&XksRecord) + Send + Sync>;

struct Inner {
    tx: SyncSender<Msg>,
    /// XKS and admin lines handed to the channel (one relaxed add per request: the only
    /// figure the request path keeps, so the queue depth can be read as `sent - written`).
    sent: AtomicU64,
    waits: AtomicU64,
    lost: AtomicU64,
    /// Lines the writer has formatted (XKS and admin; chain and checkpoint lines not counted).
    written: Arc<AtomicU64>,
    /// The writer's view of the sink: failing now, failed writes, lines it could not keep.
    state: Arc<SinkState>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The chain's signing key (public half, SEC1 hex).
    public_key: String,
}

/// A handle on the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl From<Arc<AuditLog>> for AuditLog {
    fn from(a: Arc<AuditLog>) -> Self {
        (*a).clone()
    }
}

impl AuditLog {
    /// Open the sink and start the writer thread.
    pub fn start(sink: AuditSink) -> Result<Self, AuditError> {
        Self::start_with(sink, None)
    }

    /// [`AuditLog::start`], with `hook` called on the writer thread for every XKS record
    /// (after its line is formatted): how metrics see every request without touching the
    /// request path.
    pub fn start_with(sink: AuditSink, hook: Option<XksHook>) -> Result<Self, AuditError> {
        let (out, chain, truncated) = Self::open(&sink)?;
        Self::run(out, chain, truncated, hook)
    }

    /// Start on any writer, as a new chain (seq 0): the same writer thread, buffering,
    /// chaining and failure handling as a file. For fault injection (a writer that fails
    /// like a full or broken disk) and for embedding.
    pub fn start_on(w: Box<dyn Write + Send>, hook: Option<XksHook>) -> Result<Self, AuditError> {
        Self::run(Out::Writer(w), chain::Chain::new(0, [0; 32]), 0, hook)
    }

    fn open(sink: &AuditSink) -> Result<(Out, chain::Chain, usize), AuditError> {
        Ok(match sink {
            AuditSink::Stderr => (Out::Stderr(io::stderr()), chain::Chain::new(0, [0; 32]), 0),
            AuditSink::File(path) => {
                let open = |source| AuditError::Open {
                    path: path.clone(),
                    source,
                };
                let mut o = OpenOptions::new();
                o.create(true).read(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                let mut f = o.open(path).map_err(open)?;
                // Continue the chain of what is there; a torn last line (a crash mid-write)
                // is cut off and its length recorded in the new chain line.
                let (seq, prev, torn, keep) = chain::tail_of(&mut f).map_err(open)?;
                if torn > 0 {
                    f.set_len(keep).map_err(open)?;
                }
                (Out::File(f), chain::Chain::new(seq, prev), torn)
            }
        })
    }

    fn run(
        out: Out,
        chain: chain::Chain,
        truncated: usize,
        hook: Option<XksHook>,
    ) -> Result<Self, AuditError> {
        let public_key = chain.public_key_hex();
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let written = Arc::new(AtomicU64::new(0));
        let state = Arc::new(SinkState::default());
        let tap = Tap {
            hook,
            written: written.clone(),
            state: state.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("keyward-audit".into())
            .spawn(move || writer(rx, Sink::new(out), chain, truncated, tap))
            .map_err(AuditError::Thread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                sent: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                written,
                state,
                thread: Mutex::new(Some(thread)),
                public_key,
            }),
        })
    }

    /// The public half (SEC1, hex) of the key that signs this log's checkpoints: made in this
    /// process at start and never stored. `keyward audit verify --key` pins it.
    pub fn public_key(&self) -> &str {
        &self.inner.public_key
    }

    /// Record one XKS request.
    pub fn xks(&self, rec: XksRecord) {
        self.send(Msg::Xks(rec));
    }

    /// Record one admin action: who (the admin certificate's subject), what, and the change.
    pub fn admin(&self, subject: &str, action: &str, detail: &str, ok: bool) {
        self.send(Msg::Admin(AdminRecord {
            time: SystemTime::now(),
            subject: subject.to_owned(),
            action: action.to_owned(),
            detail: detail.to_owned(),
            ok,
        }));
    }

    fn send(&self, m: Msg) {
        self.inner.sent.fetch_add(1, Ordering::Relaxed);
        match self.inner.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => {
                // Back-pressure, never drop (see the module comment).
                self.inner.waits.fetch_add(1, Ordering::Relaxed);
                if self.inner.tx.send(m).is_err() {
                    self.inner.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.inner.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Write every line queued so far to the sink (no fsync).
    pub fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = mpsc::sync_channel(1);
        self.inner
            .tx
            .send(Msg::Flush(ack))
            .map_err(|_| AuditError::Gone)?;
        done.recv()
            .map_err(|_| AuditError::Gone)?
            .map_err(AuditError::Write)
    }

    /// Drain every queued line, flush, fsync, and stop the writer. Idempotent.
    pub fn shutdown(&self) -> Result<(), AuditError> {
        let Some(thread) = self.inner.thread.lock().ok().and_then(|mut t| t.take()) else {
            return Ok(());
        };
        let (ack, done) = mpsc::sync_channel(1);
        let res = match self.inner.tx.send(Msg::Shutdown(ack)) {
            Ok(()) => done
                .recv()
                .map_err(|_| AuditError::Gone)
                .and_then(|r| r.map_err(AuditError::Write)),
            Err(_) => Err(AuditError::Gone),
        };
        let _ = thread.join();
        let lost = self.lost();
        if lost > 0 {
            eprintln!("keyward: audit log lost {lost} line(s) because its writer had stopped");
        }
        res
    }

    /// How many times a request waited for room in the channel.
    pub fn waits(&self) -> u64 {
        self.inner.waits.load(Ordering::Relaxed)
    }

    /// Lines that could not be written: the writer had stopped, or the sink had been failing
    /// for more than [`MAX_PENDING`] bytes of lines.
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed) + self.inner.state.dropped.load(Ordering::Relaxed)
    }

    /// True from the first failed write to the sink (ENOSPC, EIO) until a write succeeds
    /// again: lines are waiting in memory. The XKS handlers refuse operations meanwhile.
    pub fn failing(&self) -> bool {
        self.inner.state.failing.load(Ordering::Relaxed)
    }

    /// Writes and flushes to the sink that failed since start.
    pub fn write_errors(&self) -> u64 {
        self.inner.state.errors.load(Ordering::Relaxed)
    }

    /// XKS and admin lines the writer has formatted so far.
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Lines handed to the writer and not yet formatted by it (queued, or being written):
    /// the queue depth. Read from two counters without a lock, so it is a close estimate.
    pub fn queued(&self) -> u64 {
        let sent = self.inner.sent.load(Ordering::Relaxed);
        let done = self.written() + self.lost();
        sent.saturating_sub(done)
    }

    /// How many lines the channel holds before requests wait.
    pub const fn capacity(&self) -> usize {
        CHANNEL_CAPACITY
    }
}

/// The sink: stderr, a file that can be fsynced, or a caller's writer.
enum Out {
    Stderr(io::Stderr),
    File(std::fs::File),
    Writer(Box<dyn Write + Send>),
}

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Out::Stderr(e) => e.write(b),
            Out::File(f) => f.write(b),
            Out::Writer(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Stderr(e) => e.flush(),
            Out::File(f) => f.flush(),
            Out::Writer(w) => w.flush(),
        }
    }
}

/// While records keep coming (one within this long), the writer polls the channel every
/// [`BUSY_POLL`] instead of blocking on it: a blocked receiver makes every sender pay a futex
/// wake-up and a context switch on the request path (seen in `perf` under load); a polling one
/// costs one short sleep per millisecond, off the request path.
const BUSY_WINDOW: Duration = Duration::from_millis(100);
const BUSY_POLL: Duration = Duration::from_millis(1);

/// Maps an `Instant` to wall-clock time with one reading of both clocks for many lines: each
/// line then costs a subtraction instead of a clock read. A line newer than the reading takes
/// a new one, so every time printed is as exact as a direct read. The formatted date and
/// second are kept too: lines within the same second only write their microseconds.
struct WallClock {
    wall: SystemTime,
    mono: Instant,
    /// The second (since the epoch) whose `YYYY-MM-DDTHH:MM:SS.` is in `head`.
    head_sec: Option<u64>,
    head: [u8; 20],
}

impl WallClock {
    fn now() -> Self {
        WallClock {
            wall: SystemTime::now(),
            mono: Instant::now(),
            head_sec: None,
            head: [0; 20],
        }
    }

    fn wall(&mut self, at: Instant) -> SystemTime {
        if at > self.mono {
            self.wall = SystemTime::now();
            self.mono = Instant::now();
        }
        let ago = self.mono.saturating_duration_since(at);
        self.wall.checked_sub(ago).unwrap_or(self.wall)
    }

    /// `at` as [`write_time`] prints it.
    fn write_time(&mut self, w: &mut impl Write, at: Instant) -> io::Result<()> {
        let t = self.wall(at);
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if self.head_sec != Some(d.as_secs()) {
            let mut full = Vec::with_capacity(32);
            write_time(&mut full, t)?;
            if full.len() != 27 {
                // A year outside 0000-9999: not cached.
                return w.write_all(&full);
            }
            self.head.copy_from_slice(&full[..20]);
            self.head_sec = Some(d.as_secs());
        }
        w.write_all(&self.head)?;
        let mut tail = *b"000000Z";
        let mut v = d.subsec_micros();
        for c in tail[..6].iter_mut().rev() {
            *c = b'0' + (v % 10) as u8;
            v /= 10;
        }
        w.write_all(&tail)
    }
}

/// Lines waiting for the sink. The writer formats each line straight into `buf` and hands
/// it to the file in one `write` per [`SINK_BYTES`] or flush (a `BufWriter` behind a line
/// buffer copied every byte twice).
struct Sink {
    out: Out,
    buf: Vec<u8>,
}

/// Bytes gathered before a write to the sink.
const SINK_BYTES: usize = 64 * 1024;
/// Pending bytes kept while the sink fails; lines arriving beyond this are not written
/// (counted in [`AuditLog::lost`] and named by an `audit.gap` line at recovery).
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

impl Sink {
    fn new(out: Out) -> Self {
        Sink {
            out,
            buf: Vec::with_capacity(SINK_BYTES + 4096),
        }
    }

    /// After a line: write out once enough has gathered (`None`: nothing was written).
    fn line_done(&mut self) -> Option<io::Result<()>> {
        (self.buf.len() >= SINK_BYTES).then(|| self.write_out())
    }

    /// Hand everything gathered to the sink; on failure keep it for the next attempt.
    fn write_out(&mut self) -> io::Result<()> {
        let mut done = 0;
        let res = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match self.out.write(&self.buf[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done);
        res
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

/// The most lines written between two checks of the flush timer.
const BATCH: usize = 256;

/// What the writer reports per line: the XKS hook and the count of lines written.
struct Tap {
    hook: Option<XksHook>,
    written: Arc<AtomicU64>,
    state: Arc<SinkState>,
}

/// The sink's health as the writer sees it, read by [`AuditLog::failing`] and the metrics.
#[derive(Default)]
struct SinkState {
    failing: std::sync::atomic::AtomicBool,
    errors: AtomicU64,
    dropped: AtomicU64,
}

/// The writer's record of one failure: when it began, its first error, what was dropped.
struct Outage {
    since: SystemTime,
    error: String,
    dropped_at_start: u64,
}

impl Tap {
    /// Note the outcome of a write or flush to the sink; on the first failure say so on
    /// stderr, on the first success after failures say so too and return the `audit.gap`
    /// line to write when lines were dropped meanwhile.
    fn note(
        &self,
        r: &io::Result<()>,
        what: &str,
        outage: &mut Option<Outage>,
    ) -> Option<AdminRecord> {
        match r {
            Err(e) => {
                self.state.errors.fetch_add(1, Ordering::Relaxed);
                if outage.is_none() {
                    self.state.failing.store(true, Ordering::Relaxed);
                    eprintln!(
                        "keyward: audit log {what} failed: {e}; lines are kept in memory (up to \
                         {MAX_PENDING} bytes) and XKS operations are refused until it works again"
                    );
                    *outage = Some(Outage {
                        since: SystemTime::now(),
                        error: e.to_string(),
                        dropped_at_start: self.state.dropped.load(Ordering::Relaxed),
                    });
                }
                None
            }
            Ok(()) => {
                let o = outage.take()?;
                self.state.failing.store(false, Ordering::Relaxed);
                let dropped = self.state.dropped.load(Ordering::Relaxed) - o.dropped_at_start;
                let secs = o.since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                eprintln!(
                    "keyward: audit log writes again after {secs} s ({}); {dropped} line(s) \
                     were not written",
                    o.error
                );
                (dropped > 0).then(|| AdminRecord {
                    time: SystemTime::now(),
                    subject: "keyward".into(),
                    action: "audit.gap".into(),
                    detail: format!(
                        "{dropped} line(s) not written: the audit log failed ({}) for {secs} s \
                         with more than {MAX_PENDING} bytes waiting",
                        o.error
                    ),
                    ok: false,
                })
            }
        }
    }
}

fn writer(rx: Receiver<Msg>, mut out: Sink, mut chain: chain::Chain, truncated: usize, tap: Tap) {
    // When the oldest line not yet flushed was written, and when the last message came.
    let mut dirty: Option<Instant> = None;
    let mut last_msg: Option<Instant> = None;
    let mut outage: Option<Outage> = None;
    let mut clock = WallClock::now();
    let r = chain
        .write_start(&mut out.buf, SystemTime::now(), truncated)
        .and_then(|()| out.flush());
    if r.is_err() {
        dirty = Some(Instant::now());
    }
    let _ = tap.note(&r, "write", &mut outage);
    loop {
        // Wait for a message, flushing when the oldest buffered line is FLUSH_EVERY old.
        let first = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Disconnected) => {
                let _ = chain.write_checkpoint(&mut out.buf, SystemTime::now());
                let _ = out.flush();
                return;
            }
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if chain.checkpoint_due(now) && outage.is_none() {
                    let _ = chain.write_checkpoint(&mut out.buf, SystemTime::now());
                    dirty.get_or_insert(now);
                }
                if dirty.is_some_and(|t| now.duration_since(t) >= FLUSH_EVERY) {
                    dirty = flush(&mut out, &mut chain, &tap, &mut outage);
                }
                if last_msg.is_some_and(|t| now.duration_since(t) < BUSY_WINDOW) {
                    std::thread::sleep(BUSY_POLL);
                    continue;
                }
                let wait = dirty.map_or(chain::CHECKPOINT_EVERY, |t| {
                    FLUSH_EVERY.saturating_sub(now.duration_since(t))
                });
                match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = chain.write_checkpoint(&mut out.buf, SystemTime::now());
                        let _ = out.flush();
                        return;
                    }
                }
            }
        };
        // A batch: this message and up to BATCH - 1 already queued, with one clock read.
        let now = Instant::now();
        last_msg = Some(now);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(msg) = next.take() {
            // While the sink fails, lines wait in `buf`; past MAX_PENDING new ones are not
            // formatted (so never chained) and are named by the gap line at recovery.
            let full = out.buf.len() > MAX_PENDING;
            match msg {
                Msg::Xks(rec) => {
                    if full {
                        tap.state.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let start = out.buf.len();
                        // Formatting into the Vec cannot fail.
                        let _ = rec
                            .write_json(&mut out.buf, &mut clock)
                            .and_then(|()| chain.seal(&mut out.buf, start));
                        if let Some(w) = out.line_done() {
                            let gap = tap.note(&w, "write", &mut outage);
                            write_gap(gap, &mut out, &mut chain);
                        }
                        tap.written.fetch_add(1, Ordering::Relaxed);
                    }
                    dirty.get_or_insert(now);
                    if let Some(hook) = &tap.hook {
                        hook(&rec);
                    }
                }
                Msg::Admin(r) => {
                    if full {
                        tap.state.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let start = out.buf.len();
                        // Formatting into the Vec cannot fail.
                        let _ = r
                            .write_json(&mut out.buf)
                            .and_then(|()| chain.seal(&mut out.buf, start));
                        if let Some(w) = out.line_done() {
                            let gap = tap.note(&w, "write", &mut outage);
                            write_gap(gap, &mut out, &mut chain);
                        }
                        tap.written.fetch_add(1, Ordering::Relaxed);
                    }
                    dirty.get_or_insert(now);
                }
                Msg::Flush(ack) => {
                    let r = out.flush();
                    let failed = r.is_err();
                    write_gap(tap.note(&r, "flush", &mut outage), &mut out, &mut chain);
                    let _ = ack.send(r);
                    dirty = failed.then_some(now);
                }
                Msg::Shutdown(ack) => {
                    // Everything sent before the shutdown is written (FIFO); a last signed
                    // checkpoint over it; flush and sync.
                    let r = chain
                        .write_checkpoint(&mut out.buf, SystemTime::now())
                        .and_then(|()| out.flush())
                        .and_then(|()| sync(&mut out.out));
                    if r.is_err() && !out.buf.is_empty() {
                        eprintln!(
                            "keyward: audit log: {} byte(s) of lines could not be written at \
                             shutdown",
                            out.buf.len()
                        );
                    }
                    let _ = ack.send(r);
                    return;
                }
            }
            n += 1;
            if n < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if chain.checkpoint_due(now) && outage.is_none() {
            let _ = chain.write_checkpoint(&mut out.buf, SystemTime::now());
        }
        if dirty.is_some_and(|t| t.elapsed() >= FLUSH_EVERY) {
            dirty = flush(&mut out, &mut chain, &tap, &mut outage);
        }
    }
}

/// Flush the sink and note the outcome; the new `dirty` mark: none after a success (unless a
/// gap line was just added), now after a failure, so the writer tries again in FLUSH_EVERY.
fn flush(
    out: &mut Sink,
    chain: &mut chain::Chain,
    tap: &Tap,
    outage: &mut Option<Outage>,
) -> Option<Instant> {
    let r = out.flush();
    let failed = r.is_err();
    let gap = write_gap(tap.note(&r, "flush", outage), out, chain);
    (failed || gap).then(Instant::now)
}

/// Chain the `audit.gap` line, if there is one; true when one was added.
fn write_gap(gap: Option<AdminRecord>, out: &mut Sink, chain: &mut chain::Chain) -> bool {
    let Some(g) = gap else { return false };
    let start = out.buf.len();
    let _ = g
        .write_json(&mut out.buf)
        .and_then(|()| chain.seal(&mut out.buf, start));
    true
}

fn sync(w: &mut Out) -> io::Result<()> {
    match w {
        Out::Stderr(_) | Out::Writer(_) => Ok(()),
        Out::File(f) => f.sync_all(),
    }
}

/// A JSON string body. Most values need no escaping: one branch-free pass over the bytes
/// (which the compiler vectorises) finds that out, and they are written in one piece.
fn write_escaped(w: &mut impl Write, s: &str) -> io::Result<()> {
    let b = s.as_bytes();
    let needs = |c: u8| c == b'"' || c == b'\\' || c < 0x20 || c == 0x7f;
    if !b.iter().fold(false, |acc, &c| acc | needs(c)) {
        return w.write_all(b);
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !needs(c) {
            continue;
        }
        w.write_all(&b[start..i])?;
        match c {
            b'"' => w.write_all(b"\\\"")?,
            b'\\' => w.write_all(b"\\\\")?,
            _ => write!(w, "\\u{:04x}", c)?,
        }
        start = i + 1;
    }
    w.write_all(&b[start..])
}

fn write_time(w: &mut impl Write, t: SystemTime) -> io::Result<()> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return write!(
            w,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_micros()
        );
    }
    // The common case without core::fmt: the writer thread formats one line per request.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, (rem % 3600 / 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 6, u64::from(d.subsec_micros()));
    w.write_all(&b)
}

/// `n` in decimal, zero-padded to at least `min_width` digits (no core::fmt on the hot path).
fn write_uint(w: &mut impl Write, mut n: u64, min_width: usize) -> io::Result<()> {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(min_width));
    w.write_all(&buf[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_numbers_match_an_independent_formatter() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        for (secs, micros) in [
            (0u64, 0u32),
            (951_782_400, 1),           // 2000-02-29
            (1_795_893_022, 123_456),   // 2026-11-28
            (4_107_542_399, 999_999),   // 2100-02-28T23:59:59
            (253_402_300_799, 500_000), // 9999-12-31T23:59:59
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
            let mut ours = Vec::new();
            write_time(&mut ours, t).unwrap();
            let theirs = time::OffsetDateTime::from(t).format(fmt).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{secs}");
        }
        for (n, width, want) in [
            (0u64, 1, "0"),
            (7, 4, "0007"),
            (200, 1, "200"),
            (123_456, 2, "123456"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            write_uint(&mut out, n, width).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    /// The queue depth is what the writer has not taken: a writer held in its hook leaves
    /// every later line queued, and a flush drains them to zero.
    #[test]
    fn queue_depth_counts_lines_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let (held_tx, held_rx) = mpsc::sync_channel::<()>(0);
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(Some(go_rx));
        let hook: XksHook = Arc::new(move |_r: &XksRecord| {
            // The first record holds the writer until the test lets it go.
            if let Some(rx) = go_rx.lock().unwrap().take() {
                let _ = held_tx.send(());
                let _ = rx.recv();
            }
        });
        let log =
            AuditLog::start_with(AuditSink::File(dir.path().join("a.log")), Some(hook)).unwrap();
        let rec = || {
            let mut r = XksRecord::new();
            r.set_operation("Encrypt");
            r.finish(200, None, Duration::from_micros(5));
            r
        };
        log.xks(rec());
        held_rx.recv().unwrap();
        for _ in 0..9 {
            log.xks(rec());
        }
        log.admin("op", "keys_create", "k", true);
        assert_eq!(log.queued(), 10, "nine XKS lines and one admin line wait");
        go_tx.send(()).unwrap();
        log.flush().unwrap();
        assert_eq!(log.queued(), 0);
        assert_eq!(log.written(), 11);
        log.shutdown().unwrap();
    }

    #[test]
    fn writes_every_line_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(AuditSink::File(path.clone())).unwrap();
        for i in 0..1000 {
            let mut r = XksRecord::new();
            r.set_operation("Encrypt");
            r.set(Field::KmsRequestId, &format!("req-{i}"));
            r.set(Field::Principal, "arn:\"quoted\"\\\n");
            r.finish(200, None, Duration::from_micros(12));
            log.xks(r);
        }
        log.admin(
            "CN=admin",
            "keys create",
            "id=k1 usage=encrypt,decrypt",
            true,
        );
        log.shutdown().unwrap();
        log.shutdown().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let all: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The chain line first, the shutdown checkpoint last.
        assert_eq!(all[0]["type"], "chain");
        assert_eq!(all[all.len() - 1]["type"], "checkpoint");
        let lines: Vec<&serde_json::Value> = all
            .iter()
            .filter(|l| l["type"] != "chain" && l["type"] != "checkpoint")
            .collect();
        assert_eq!(lines.len(), 1001);
        let report =
            verify::verify(std::slice::from_ref(&path), &[log.public_key().to_string()]).unwrap();
        assert_eq!(report.lines as usize, all.len());
        assert_eq!(report.unsigned_tail, 0);
        assert_eq!(lines[999]["kmsRequestId"], "req-999");
        assert_eq!(lines[0]["principal"], "arn:\"quoted\"\\\n");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[1000]["type"], "admin");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        // After shutdown, lines are counted as lost, not silently dropped.
        log.xks(XksRecord::new());
        assert_eq!(log.lost(), 1);
    }

    #[test]
    fn the_hook_sees_every_xks_record_on_the_writer_thread() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let hook: XksHook = Arc::new(move |r: &XksRecord| {
            let on = std::thread::current().name().map(str::to_owned);
            if let Ok(mut v) = s2.lock() {
                v.push((r.operation(), r.status(), r.error_name(), r.latency(), on));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let log =
            AuditLog::start_with(AuditSink::File(dir.path().join("a.log")), Some(hook)).unwrap();
        let mut r = XksRecord::new();
        r.set_operation("Decrypt");
        r.finish(
            400,
            Some("InvalidCiphertextException"),
            Duration::from_micros(70),
        );
        log.xks(r);
        log.admin("CN=a", "keys list", "", true);
        log.shutdown().unwrap();
        assert_eq!(log.written(), 2);
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![(
                "Decrypt",
                400,
                Some("InvalidCiphertextException"),
                Duration::from_micros(70),
                Some("keyward-audit".to_string())
            )]
        );
    }

    #[test]
    fn formats_time() {
        let mut v = Vec::new();
        write_time(
            &mut v,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160),
        )
        .unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), "2015-08-30T12:36:00.000000Z");
    }

    /// A line's time is its request's arrival, mapped through one clock reading; an instant
    /// newer than the reading takes a new one (a stale reading would be 300 ms off here).
    #[test]
    fn the_wall_clock_maps_instants_exactly() {
        let mut c = WallClock::now();
        std::thread::sleep(Duration::from_millis(300));
        let wall_at = SystemTime::now();
        let at = Instant::now();
        let mapped = c.wall(at);
        let off = match mapped.duration_since(wall_at) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(off < Duration::from_millis(150), "{off:?} off");
        let older = c.wall(at - Duration::from_millis(20));
        assert_eq!(
            mapped.duration_since(older).unwrap(),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn escaping_matches_serde_json() {
        for s in [
            "",
            "plain arn:aws:iam::123456789012:user/Alice",
            "\"",
            "a\\b",
            "tab\there\u{1}\u{1f}\u{7f}end",
            "\u{e9}t\u{e9} \u{1F600}",
        ] {
            let mut ours = b"\"".to_vec();
            write_escaped(&mut ours, s).unwrap();
            ours.push(b'"');
            let back: String = serde_json::from_slice(&ours).unwrap();
            assert_eq!(back, s);
        }
    }

    /// Lines in the same second reuse the formatted date; every line's time still equals
    /// the uncached formatter's for the same instant.
    #[test]
    fn cached_times_equal_the_formatter() {
        let mut c = WallClock::now();
        let base = c.mono;
        let steps_us: [u64; 9] = [
            0,
            1,
            999_999,
            1_000_000,
            1_500_000,
            2_000_001,
            61_000_000,
            3_600_000_000,
            86_400_000_007,
        ];
        for back in [0u64, 5_000_000] {
            for us in steps_us {
                // Instants at and before the reading (mapped without a new one).
                let Some(at) = base.checked_sub(Duration::from_micros(back + us % 100_000_000))
                else {
                    continue; // a machine up for less than 105 s
                };
                let mut ours = Vec::new();
                c.write_time(&mut ours, at).unwrap();
                let mut want = Vec::new();
                write_time(&mut want, c.wall(at)).unwrap();
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(want).unwrap()
                );
            }
        }
    }
}
