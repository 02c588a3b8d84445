//! [`Watcher`]: wakes a member when another one wrote to the shared store. A thread with its
//! own connection `LISTEN`s on [`crate::NOTIFY_CHANNEL`] and calls `notify_one()` on each
//! notification, after each (re)connect (a change may have been missed meanwhile) and every
//! `poll` interval whatever happens (the fallback when notifications are lost or the database
//! is unreachable). The woken task reads the tip and applies what is new; a wake-up without a
//! change costs one one-row read.
//!
//! The connection is made again with capped exponential backoff; each outage is logged once
//! when it starts and once when it ends, not on every try.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_keystore::KeystoreError;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use tokio::sync::Notify;

use crate::config::Connector;
use crate::PgConfig;

/// Longest single wait, so that dropping the watcher stops the thread promptly.
const SLICE: Duration = Duration::from_millis(200);
/// First and largest pause between connection attempts.
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The listening thread; dropping it stops the thread (within about 200 ms, or the connect
/// timeout when a connection attempt is under way).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Start watching the database in `cfg`; the returned `Notify` is notified on every change
    /// and every `poll` (at least 100 ms). Fails only on a configuration error (the URL, the
    /// CA file) or when the thread cannot be spawned; the database being down is not an error
    /// (the thread keeps trying and the poll keeps ticking).
    pub fn start(cfg: &PgConfig, poll: Duration) -> Result<(Watcher, Arc<Notify>), KeystoreError> {
        let conn = Connector::new(cfg)?;
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let poll = poll.max(Duration::from_millis(100));
        let thread = {
            let (notify, stop) = (Arc::clone(&notify), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("keyward-pg-watch".into())
                .spawn(move || run(&conn, poll, &notify, &stop))
                .map_err(|e| KeystoreError::Io {
                    op: "start the store watcher thread",
                    source: e,
                })?
        };
        Ok((
            Watcher {
                stop,
                thread: Some(thread),
            },
            notify,
        ))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(conn: &Connector) -> Result<Client, KeystoreError> {
    let mut c = conn.connect()?;
    c.batch_execute(&format!("LISTEN {}", crate::NOTIFY_CHANNEL))
        .map_err(|e| conn.unavailable("listen", e))?;
    Ok(c)
}

fn run(conn: &Connector, poll: Duration, notify: &Notify, stop: &AtomicBool) {
    let mut client: Option<Client> = None;
    let mut outage = false;
    let mut backoff = BACKOFF_START;
    let mut next_try = Instant::now();
    let mut next_poll = Instant::now() + poll;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_poll {
            notify.notify_one();
            next_poll = now + poll;
        }
        let Some(c) = client.as_mut() else {
            if now < next_try {
                std::thread::sleep(SLICE.min(next_try - now).min(next_poll - now));
                continue;
            }
            match listen(conn) {
                Ok(c) => {
                    if outage {
                        tracing::info!(
                            database = %conn.location(),
                            "key store watcher connected again"
                        );
                    }
                    outage = false;
                    backoff = BACKOFF_START;
                    client = Some(c);
                    // Whatever happened while it was not listening.
                    notify.notify_one();
                }
                Err(e) => {
                    if !outage {
                        tracing::warn!(
                            error = %e,
                            "key store watcher cannot listen for changes; retrying with \
                             backoff, polling every {poll:?} meanwhile"
                        );
                        outage = true;
                    }
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        let wait = SLICE.min(next_poll.saturating_duration_since(now));
        let got = {
            let mut n = c.notifications();
            let first = n.timeout_iter(wait).next();
            if let Ok(Some(_)) = first {
                // Drain what else arrived: one wake-up covers them all.
                let mut more = n.iter();
                while let Ok(Some(_)) = more.next() {}
            }
            first.map(|n| n.is_some())
        };
        match got {
            Ok(true) => notify.notify_one(),
            Ok(false) if !c.is_closed() => {}
            Ok(false) | Err(_) => {
                let why = got.err().map(|e| e.to_string());
                tracing::warn!(
                    database = %conn.location(),
                    error = why.as_deref().unwrap_or("connection closed"),
                    "key store watcher lost its connection; reconnecting"
                );
                client = None;
                outage = true;
                next_try = Instant::now();
                backoff = BACKOFF_START;
            }
        }
    }
}
