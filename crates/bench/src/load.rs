//! The load loops.
//!
//! * Closed loop: each connection sends its next request as soon as the previous answer is in.
//! * Open loop: a pacer thread emits request slots at the intended times `start + i / rate`
//!   (with a 1 ns timer slack, so it wakes within tens of microseconds); connections take slots
//!   from a shared queue. Latency is measured from the slot's INTENDED time, so when the server
//!   (or the generator) falls behind, the wait in the queue is counted, not hidden
//!   (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{mpsc, Mutex};

use super::conn::Connector;
use super::payload::{Pools, Prepared};
use super::report::{new_histogram, record};
use super::settings::{Mix, Op};
use super::signer::Signer;

/// What every connection task shares.
pub(crate) struct Shared {
    pub pools: Pools,
    pub mix: Mix,
    pub signer: Signer,
    pub connector: Connector,
    pub timeout: Duration,
    /// Requests before this instant are warm-up: sent, not recorded.
    pub measure_start: Instant,
    /// No request is started at or after this instant.
    pub end: Instant,
    /// Open loop: slots still queued after this instant are dropped and counted as unsent.
    pub give_up: Instant,
    /// At most this many recorded requests (None: until `end`).
    pub limit: Option<u64>,
    /// Request numbers handed out (picks the operation and the body).
    pub issued: AtomicU64,
    /// Recorded requests claimed (for `limit`).
    pub claimed: AtomicU64,
    /// Completed requests (for the progress line).
    pub done: AtomicU64,
    /// Failed requests (for the progress line).
    pub failed: AtomicU64,
    pub stop: AtomicBool,
}

/// One connection's tally, merged at the end.
pub(crate) struct Tally {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub by_op: BTreeMap<&'static str, u64>,
    pub unsent: u64,
    pub last_completion: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            by_op: BTreeMap::new(),
            unsent: 0,
            last_completion: None,
        }
    }

    pub(crate) fn merge(&mut self, o: Tally) {
        // Both histograms share the same bounds (new_histogram), so adding cannot fail; a
        // failure would only lose that connection's latencies, never panic.
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.by_op {
            *self.by_op.entry(k).or_default() += v;
        }
        self.unsent += o.unsent;
        self.last_completion = self.last_completion.max(o.last_completion);
    }

    fn count(&mut self, op: Op, outcome: &Result<(), String>, latency: Duration, at: Instant) {
        record(&mut self.hist, latency);
        *self.by_op.entry(op.name()).or_default() += 1;
        match outcome {
            Ok(()) => self.ok += 1,
            Err(e) => *self.errors.entry(e.clone()).or_default() += 1,
        }
        self.last_completion = Some(at);
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// The answer to one request: `Ok` for 200, else the error key.
pub(crate) type Outcome = Result<(), String>;

/// Sends one signed request on `conn` (reconnecting first if it is gone) and reads the answer.
/// Returns the outcome and, for 200 answers, the body (used by decrypt priming).
pub(crate) async fn send(
    shared: &Shared,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    p: &Prepared,
) -> (Outcome, Option<Bytes>) {
    let attempt = async {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = None;
            *conn = Some(
                shared
                    .connector
                    .connect()
                    .await
                    .map_err(|e| short(&e.to_string()))?,
            );
        }
        let Some(sender) = conn.as_mut() else {
            return Err("connect: no connection".to_string());
        };
        sender
            .ready()
            .await
            .map_err(|e| short(&format!("http: {e}")))?;
        let req = shared
            .signer
            .request(p, SystemTime::now())
            .map_err(|e| short(&e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| short(&format!("http: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| short(&format!("http body: {e}")))?
            .to_bytes();
        if status == http::StatusCode::OK {
            Ok(body)
        } else {
            Err(error_key(status.as_u16(), &body))
        }
    };
    match tokio::time::timeout(shared.timeout, attempt).await {
        Ok(Ok(body)) => (Ok(()), Some(body)),
        Ok(Err(e)) => {
            if !e.starts_with(|c: char| c.is_ascii_digit()) {
                // Transport failure: this connection is no longer trustworthy.
                *conn = None;
            }
            (Err(e), None)
        }
        Err(_) => {
            *conn = None;
            (Err("timeout".to_string()), None)
        }
    }
}

/// `"<status> <errorName>"` from an XKS error answer (or `"<status> -"` without one).
pub(crate) fn error_key(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "errorName")]
        error_name: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b)
            if b.error_name.len() <= 64
                && b.error_name.bytes().all(|c| c.is_ascii_alphanumeric()) =>
        {
            format!("{status} {}", b.error_name)
        }
        _ => format!("{status} -"),
    }
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('~');
    }
    out
}

fn pick(shared: &Shared, n: u64) -> Option<&Prepared> {
    let op = shared.mix.pick(n);
    // Each op's pool is cycled by how many of that op came before, approximately n / ops.
    shared
        .pools
        .get(op, n / shared.mix.entries().len().max(1) as u64)
}

/// One closed-loop connection: request, answer, repeat, until `end`, `limit` or `stop`.
pub(crate) async fn closed_worker(
    shared: Arc<Shared>,
    mut conn: Option<SendRequest<Full<Bytes>>>,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let start = Instant::now();
        if start >= shared.end {
            break;
        }
        let measured = start >= shared.measure_start;
        if measured {
            if let Some(limit) = shared.limit {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
            }
        }
        let n = shared.issued.fetch_add(1, Ordering::Relaxed);
        let Some(p) = pick(&shared, n) else { break };
        let (outcome, _) = send(&shared, &mut conn, p).await;
        let at = Instant::now();
        shared.done.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        if measured {
            tally.count(p.op, &outcome, at - start, at);
        }
    }
    tally
}

/// One slot of the open-loop schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub n: u64,
    pub intended: Instant,
}

/// The open-loop schedule: runs on its own OS thread, sends slot `i` at `start + i / rate`
/// until `end` or `limit` recorded slots, then closes the queue.
pub(crate) fn pacer(
    start: Instant,
    rate: f64,
    measure_start: Instant,
    end: Instant,
    limit: Option<u64>,
    stop: Arc<Shared>,
    tx: mpsc::UnboundedSender<Slot>,
) {
    // Ask for precise wake-ups (the default 50 us slack would blur a 555 us period).
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let period = 1.0 / rate;
    let mut recorded = 0u64;
    for i in 0u64.. {
        if stop.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = start + Duration::from_secs_f64(i as f64 * period);
        if intended >= end {
            break;
        }
        if intended >= measure_start {
            if limit.is_some_and(|l| recorded >= l) {
                break;
            }
            recorded += 1;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if tx.send(Slot { n: i, intended }).is_err() {
            break;
        }
    }
}

/// One open-loop connection: takes the next slot, sends it, records latency from the slot's
/// intended time.
pub(crate) async fn open_worker(
    shared: Arc<Shared>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Slot>>>,
    mut conn: Option<SendRequest<Full<Bytes>>>,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let slot = {
            let mut guard = rx.lock().await;
            guard.recv().await
        };
        let Some(slot) = slot else { break };
        let measured = slot.intended >= shared.measure_start;
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= shared.give_up {
            if measured {
                tally.unsent += 1;
            }
            continue;
        }
        let Some(p) = pick(&shared, slot.n) else {
            break;
        };
        let (outcome, _) = send(&shared, &mut conn, p).await;
        let at = Instant::now();
        shared.done.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        if measured {
            tally.count(
                p.op,
                &outcome,
                at.saturating_duration_since(slot.intended),
                at,
            );
        }
    }
    tally
}
