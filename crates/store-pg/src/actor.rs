//! The PostgreSQL store and heartbeat board on a thread of their own, so they can be called
//! (and dropped) from anywhere, an async task included.
//!
//! The `postgres` client blocks on a small runtime of its own, which tokio refuses inside
//! another runtime's thread: a registry write made from an async task (the appliance's start-up
//! store sync), or the registry dropped there at shutdown, would panic. Here every call is sent
//! to the owning thread and the caller waits on a channel (an ordinary blocking wait, allowed
//! anywhere), and the client is dropped on that thread. Written here rather than taken from a
//! crate: it is one channel and one thread, and `tokio_postgres` would need the whole seam made
//! async.

use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use keyward_keystore::{FleetBoard, Member};
use keyward_keystore::{Header, SealedHead, SignedRecord};
use keyward_keystore::{KeyStore, KeystoreError};

use crate::{PgConfig, PgFleetBoard, PgKeyStore};

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A value owned by its own thread; [`Owned::call`] runs a closure on it there.
struct Owned<T: Send + 'static> {
    tx: Mutex<Option<mpsc::Sender<Job<T>>>>,
    thread: Option<JoinHandle<()>>,
    location: String,
}

impl<T: Send + 'static> Owned<T> {
    fn start(
        name: &str,
        location: String,
        make: impl FnOnce() -> Result<T, KeystoreError> + Send + 'static,
    ) -> Result<Self, KeystoreError> {
        let (tx, rx) = mpsc::channel::<Job<T>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), KeystoreError>>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut value = match make() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut value);
                }
                // `value` (and its connection) is dropped here, on this thread.
            })
            .map_err(|source| KeystoreError::Io {
                op: "start the database thread",
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Owned {
                tx: Mutex::new(Some(tx)),
                thread: Some(thread),
                location,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(gone(&location))
            }
        }
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, KeystoreError> {
        let (rtx, rrx) = mpsc::sync_channel::<R>(1);
        let job: Job<T> = Box::new(move |v| {
            let _ = rtx.send(f(v));
        });
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let sent = tx.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
            if !sent {
                return Err(gone(&self.location));
            }
        }
        rrx.recv().map_err(|_| gone(&self.location))
    }
}

impl<T: Send + 'static> Drop for Owned<T> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gone(location: &str) -> KeystoreError {
    KeystoreError::Unavailable {
        location: location.to_string(),
        what: "database thread",
        source: "the thread that owns the connection has stopped".into(),
    }
}

/// [`PgKeyStore`] on its own thread: the [`KeyStore`] the appliance opens.
pub struct SharedPgStore {
    inner: Owned<PgKeyStore>,
    /// Mirrors the store's count after each call (`record_count` takes `&self`).
    records: std::sync::atomic::AtomicUsize,
    /// Mirrors [`KeyStore::rewritten`] after each call.
    rewritten: std::sync::atomic::AtomicBool,
}

impl SharedPgStore {
    /// Connect (on the new thread) to the database in `cfg`, migrating its schema.
    pub fn connect(cfg: &PgConfig) -> Result<SharedPgStore, KeystoreError> {
        let c = cfg.clone();
        let inner = Owned::start("keyward-pg-store", cfg.location(), move || {
            PgKeyStore::connect(&c)
        })?;
        Ok(SharedPgStore {
            inner,
            records: std::sync::atomic::AtomicUsize::new(0),
            rewritten: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgKeyStore) -> Result<R, KeystoreError> + Send + 'static,
    ) -> Result<R, KeystoreError> {
        let (r, n, w) = self.inner.call(move |s| {
            let r = f(s);
            (r, s.record_count(), s.rewritten())
        })?;
        self.records.store(n, std::sync::atomic::Ordering::Relaxed);
        self.rewritten
            .store(w, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl KeyStore for SharedPgStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn header(&mut self) -> Result<Option<Header>, KeystoreError> {
        self.call(|s| s.header())
    }

    fn init(&mut self, header: &Header) -> Result<(), KeystoreError> {
        let h = header.clone();
        self.call(move |s| s.init(&h))
    }

    /// The records are read on the database thread (in its batches) and handed to `visit` here;
    /// a whole store is held in memory once, as sealed JSON-decoded records.
    fn load(
        &mut self,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let all = self.call(|s| {
            let mut out = Vec::new();
            s.load(&mut |r| {
                out.push(r);
                Ok(())
            })?;
            Ok(out)
        })?;
        all.into_iter().try_for_each(visit)
    }

    fn load_after(
        &mut self,
        seq: u64,
        visit: &mut dyn FnMut(SignedRecord) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let new = self.call(move |s| {
            let mut out = Vec::new();
            s.load_after(seq, &mut |r| {
                out.push(r);
                Ok(())
            })?;
            Ok(out)
        })?;
        new.into_iter().try_for_each(visit)
    }

    fn shared(&self) -> bool {
        true
    }

    fn tip(&mut self) -> Result<Option<u64>, KeystoreError> {
        self.call(|s| s.tip())
    }

    fn append(&mut self, rec: &SignedRecord) -> Result<(), KeystoreError> {
        let r = rec.clone();
        self.call(move |s| s.append(&r))
    }

    fn append_batch(&mut self, recs: &[SignedRecord]) -> Result<(), KeystoreError> {
        let r = recs.to_vec();
        self.call(move |s| s.append_batch(&r))
    }

    fn record_count(&self) -> usize {
        self.records.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn compact(
        &mut self,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let all: Vec<SignedRecord> = records.collect::<Result<_, _>>()?;
        self.call(move |s| s.compact(&mut all.into_iter().map(Ok)))
    }

    fn rewrite(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
    ) -> Result<(), KeystoreError> {
        let all: Vec<SignedRecord> = records.collect::<Result<_, _>>()?;
        let h = header.clone();
        self.call(move |s| s.rewrite(&h, &mut all.into_iter().map(Ok)))
    }

    fn truncate_after(&mut self, seq: u64) -> Result<(), KeystoreError> {
        self.call(move |s| s.truncate_after(seq))
    }

    fn load_head(&mut self) -> Result<Option<SealedHead>, KeystoreError> {
        self.call(|s| s.load_head())
    }

    fn store_head(&mut self, head: &SealedHead) -> Result<(), KeystoreError> {
        let h = head.clone();
        self.call(move |s| s.store_head(&h))
    }

    fn reseal(
        &mut self,
        header: &Header,
        records: &mut dyn Iterator<Item = Result<SignedRecord, KeystoreError>>,
        head: &SealedHead,
    ) -> Result<(), KeystoreError> {
        let all: Vec<SignedRecord> = records.collect::<Result<_, _>>()?;
        let (h, sh) = (header.clone(), head.clone());
        self.call(move |s| s.reseal(&h, &mut all.into_iter().map(Ok), &sh))
    }

    fn rewritten(&self) -> bool {
        self.rewritten.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// [`PgFleetBoard`] on its own thread.
pub struct SharedPgBoard {
    inner: Owned<PgFleetBoard>,
}

impl SharedPgBoard {
    /// Connect (on the new thread) to the database in `cfg`.
    pub fn connect(cfg: &PgConfig) -> Result<SharedPgBoard, KeystoreError> {
        let c = cfg.clone();
        let inner = Owned::start("keyward-pg-fleet", cfg.location(), move || {
            PgFleetBoard::connect(&c)
        })?;
        Ok(SharedPgBoard { inner })
    }
}

impl FleetBoard for SharedPgBoard {
    fn beat(&self, member: &Member) -> Result<(), KeystoreError> {
        let m = member.clone();
        self.inner.call(move |b| b.beat(&m))?
    }

    fn members(&self, within_secs: u64) -> Result<(Vec<Member>, u64), KeystoreError> {
        self.inner.call(move |b| b.members(within_secs))?
    }

    fn leave(&self, id: &str) -> Result<(), KeystoreError> {
        let id = id.to_string();
        self.inner.call(move |b| b.leave(&id))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason this module exists: called and dropped inside an async task (a
    /// current-thread runtime, the strictest), a connection attempt neither panics nor blocks
    /// the runtime forever; it returns the database's error.
    #[test]
    fn usable_and_droppable_inside_an_async_task() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Nothing listens on port 1: a prompt connection error, not a panic.
            let cfg = PgConfig::new("postgresql://keyward@127.0.0.1:1/keyward");
            match SharedPgStore::connect(&cfg) {
                Err(KeystoreError::Unavailable { .. }) => {}
                Err(e) => panic!("expected Unavailable, got {e}"),
                Ok(_) => panic!("connected to nothing"),
            }
        });
    }
}
