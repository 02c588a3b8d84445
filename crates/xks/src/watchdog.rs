//! Connection deadlines for the XKS listener, without a timer per request.
//!
//! Every connection gets a [`ConnGuard`]: the coarse monotonic second of its last request start
//! (or of its accept), the number of its requests in flight, and a signal the connection task
//! waits on. The accept loop calls [`Watchdog::sweep`] once a second and applies
//! [`Deadlines`]:
//!
//! * a request in flight longer than `request` (its body arriving too slowly, mostly): the
//!   connection is dropped at once;
//! * a connection that never started a request within `header` (slow-loris headers, or a
//!   client that connects and sends nothing), or, once it has, none for `idle` (idle
//!   keep-alive, or the next headers trickling in): it is asked to shut down gracefully, and
//!   dropped [`GRACE`] later if it has not. While more than `pressure_at` connections are open,
//!   idle connections get `header` instead of `idle`, so held connections are shed first.
//!
//! At server shutdown every connection is asked at once.
//!
//! Why not hyper's `header_read_timeout`: it re-arms a Tokio timer for every request (a
//! clock read and a lock on the timer wheel), which showed in the request-path profile. Here a
//! request costs one coarse clock read (no clock-source access), a relaxed store and an
//! increment at its start, and a decrement at its end, all on the connection's own guard.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use super::clock::mono_secs;

/// How long a connection asked to shut down may take before it is dropped.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// What a connection has been asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Signal {
    Run = 0,
    /// Finish the request in flight, then close (HTTP/2: GOAWAY).
    Drain = 1,
    /// Close now.
    Drop = 2,
}

/// The deadlines every connection of a listener gets, in whole seconds (at least 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Until the first request starts (and the idle limit under pressure).
    pub header: u64,
    /// Between requests once one has been served.
    pub idle: u64,
    /// From a request's headers to its answer.
    pub request: u64,
    /// Above this many open connections, idle ones get `header` instead of `idle`.
    pub pressure_at: usize,
}

impl Deadlines {
    /// From durations; `header` is capped at `idle`.
    pub(crate) fn new(
        header: Duration,
        idle: Duration,
        request: Duration,
        pressure_at: usize,
    ) -> Self {
        let idle = idle.as_secs().max(1);
        Deadlines {
            header: header.as_secs().clamp(1, idle),
            idle,
            request: request.as_secs().max(1),
            pressure_at,
        }
    }
}

/// One connection's activity and signal, shared by its task and the accept loop.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    /// Coarse monotonic seconds of the last request start, or of the accept.
    stamp: AtomicU64,
    /// Requests in flight on this connection.
    busy: AtomicU32,
    /// Whether a request has started on this connection.
    served: AtomicBool,
    signal: AtomicU8,
    waker: AtomicWaker,
}

impl ConnGuard {
    fn new() -> Self {
        ConnGuard {
            stamp: AtomicU64::new(mono_secs()),
            busy: AtomicU32::new(0),
            served: AtomicBool::new(false),
            signal: AtomicU8::new(Signal::Run as u8),
            waker: AtomicWaker::new(),
        }
    }

    /// A request started; it counts as in flight until the returned [`Busy`] is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.stamp.store(mono_secs(), Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn raise(&self, s: Signal) {
        if self.signal.fetch_max(s as u8, Ordering::AcqRel) < s as u8 {
            self.waker.wake();
        }
    }

    /// Resolves once the connection has been asked for `at_least`.
    pub(crate) fn wait(&self, at_least: Signal) -> Wait<'_> {
        Wait {
            guard: self,
            at_least,
        }
    }
}

/// A request in flight on a connection (see [`ConnGuard::begin`]).
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnGuard>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The future of [`ConnGuard::wait`].
pub(crate) struct Wait<'a> {
    guard: &'a ConnGuard,
    at_least: Signal,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let g = self.guard;
        if g.signal.load(Ordering::Acquire) >= self.at_least as u8 {
            return Poll::Ready(());
        }
        g.waker.register(cx.waker());
        if g.signal.load(Ordering::Acquire) >= self.at_least as u8 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The accept loop's list of live connections.
#[derive(Debug)]
pub(crate) struct Watchdog {
    conns: Vec<Arc<ConnGuard>>,
    deadlines: Deadlines,
}

impl Watchdog {
    pub(crate) fn new(deadlines: Deadlines) -> Self {
        Watchdog {
            conns: Vec::new(),
            deadlines,
        }
    }

    /// Watch a new connection; its task keeps the returned guard.
    pub(crate) fn watch(&mut self) -> Arc<ConnGuard> {
        let g = Arc::new(ConnGuard::new());
        self.conns.push(g.clone());
        g
    }

    /// How many connections are watched (ended ones are forgotten at the next sweep).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Forget ended connections and apply the deadlines (see the module comment). Returns how
    /// many are still watched.
    pub(crate) fn sweep(&mut self) -> usize {
        let now = mono_secs();
        let d = self.deadlines;
        let pressure = self.conns.len() > d.pressure_at;
        self.conns.retain(|g| {
            // The task dropped its guard: the connection is gone.
            if Arc::strong_count(g) == 1 {
                return false;
            }
            let stamp = g.stamp.load(Ordering::Relaxed);
            if g.busy.load(Ordering::Relaxed) > 0 {
                if now > stamp + d.request {
                    g.raise(Signal::Drop);
                }
                return true;
            }
            let limit = if pressure || !g.served.load(Ordering::Relaxed) {
                d.header
            } else {
                d.idle
            };
            if now > stamp + limit + GRACE.as_secs() {
                g.raise(Signal::Drop);
            } else if now > stamp + limit {
                g.raise(Signal::Drain);
            }
            true
        });
        self.conns.len()
    }

    /// Ask every connection to finish gracefully (server shutdown).
    pub(crate) fn drain_all(&self) {
        for g in &self.conns {
            g.raise(Signal::Drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(w: &mut Wait<'_>, waker: &std::task::Waker) -> bool {
        Pin::new(w).poll(&mut Context::from_waker(waker)).is_ready()
    }

    fn dog(header: u64, idle: u64, request: u64, pressure_at: usize) -> Watchdog {
        Watchdog::new(Deadlines {
            header,
            idle,
            request,
            pressure_at,
        })
    }

    fn age(g: &ConnGuard, secs: u64) {
        g.stamp
            .store(mono_secs().saturating_sub(secs), Ordering::Relaxed);
    }

    #[test]
    fn deadlines_drain_then_drop_and_wake_the_task() {
        let mut dog = dog(60, 60, 60, 100);
        let g = dog.watch();
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut drain = g.wait(Signal::Drain);
        assert!(!poll(&mut drain, &waker));
        assert_eq!(dog.sweep(), 1);
        assert!(!poll(&mut drain, &waker), "not due yet");

        // Past the deadline: drained, and the waiting task is woken.
        age(&g, 61);
        dog.sweep();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut drain, &waker));
        assert!(!poll(&mut g.wait(Signal::Drop), &waker));

        // A request starting does not undo a drain already asked for...
        drop(g.begin());
        assert!(poll(&mut g.wait(Signal::Drain), &waker));
        // ...and past the grace period the connection is dropped.
        age(&g, 61 + GRACE.as_secs());
        dog.sweep();
        assert!(poll(&mut g.wait(Signal::Drop), &waker));

        // The task ended: the guard is forgotten.
        drop(g);
        assert_eq!(dog.sweep(), 0);
    }

    #[test]
    fn a_slow_request_is_dropped_and_a_new_connection_gets_the_header_deadline() {
        let mut dog = dog(5, 60, 10, 100);
        let waker = std::task::Waker::noop();
        // A request in flight for 11 s (its body trickling): dropped outright.
        let slow = dog.watch();
        let busy = slow.begin();
        age(&slow, 9);
        dog.sweep();
        assert!(
            !poll(&mut slow.wait(Signal::Drain), waker),
            "within its deadline"
        );
        age(&slow, 11);
        dog.sweep();
        assert!(poll(&mut slow.wait(Signal::Drop), waker));
        drop(busy);
        // A connection that never sent a request: the 5 s header deadline, not the idle one.
        let silent = dog.watch();
        age(&silent, 6);
        dog.sweep();
        assert!(poll(&mut silent.wait(Signal::Drain), waker));
        // One that has served a request: idle for 6 s is fine.
        let kept = dog.watch();
        drop(kept.begin());
        age(&kept, 6);
        dog.sweep();
        assert!(!poll(&mut kept.wait(Signal::Drain), waker));
    }

    #[test]
    fn under_pressure_idle_connections_get_the_header_deadline() {
        let mut dog = dog(5, 60, 10, 2);
        let waker = std::task::Waker::noop();
        let conns: Vec<_> = (0..3).map(|_| dog.watch()).collect();
        for c in &conns {
            drop(c.begin());
            age(c, 6);
        }
        dog.sweep();
        for c in &conns {
            assert!(poll(&mut c.wait(Signal::Drain), waker));
        }
    }

    #[test]
    fn drain_all_reaches_everyone() {
        let mut dog = dog(5, 5, 5, 100);
        let a = dog.watch();
        let b = dog.watch();
        dog.sweep();
        let waker = std::task::Waker::noop();
        assert!(!poll(&mut a.wait(Signal::Drain), waker));
        dog.drain_all();
        assert!(poll(&mut a.wait(Signal::Drain), waker));
        assert!(poll(&mut b.wait(Signal::Drain), waker));
    }
}
