//! Connection deadlines for the XKS listener, without a timer per request.
//!
//! Every connection gets a [`ConnGuard`]: a deadline in whole seconds of the coarse monotonic
//! clock, pushed forward each time a request starts, and a signal the connection task waits
//! on. The accept loop calls [`Watchdog::sweep`] once a second: a connection past its deadline
//! (it started no request for [`Limits::conn_idle`](super::Limits): idle, or a slow-loris
//! sending headers or a body too slowly, or a client not reading its answer) is asked to shut
//! down gracefully, and is dropped [`GRACE`] later if it has not. At server shutdown every
//! connection is asked at once.
//!
//! Why not hyper's `header_read_timeout`: it re-arms a Tokio timer for every request (a
//! clock read and a lock on the timer wheel), which showed in the request-path profile. Here a
//! request costs one coarse clock read (no clock-source access) and one relaxed store.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use super::clock::mono_secs;

/// How long a connection asked to shut down may take before it is dropped.
pub const GRACE: Duration = Duration::from_secs(10);

/// What a connection has been asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Signal {
    Run = 0,
    /// Finish the request in flight, then close (HTTP/2: GOAWAY).
    Drain = 1,
    /// Close now.
    Drop = 2,
}

/// One connection's deadline and signal, shared by its task and the accept loop.
#[derive(Debug)]
pub struct ConnGuard {
    /// Coarse monotonic seconds after which the connection is drained.
    deadline: AtomicU64,
    signal: AtomicU8,
    waker: AtomicWaker,
    idle_secs: u64,
}

impl ConnGuard {
    /// A connection that must start its first request within `idle`.
    pub fn new(idle: Duration) -> Self {
        let idle_secs = idle.as_secs().max(1);
        ConnGuard {
            deadline: AtomicU64::new(mono_secs() + idle_secs),
            signal: AtomicU8::new(Signal::Run as u8),
            waker: AtomicWaker::new(),
            idle_secs,
        }
    }

    /// A request started: the connection has `idle` again from now.
    pub fn touch(&self) {
        self.deadline
            .store(mono_secs() + self.idle_secs, Ordering::Relaxed);
    }

    fn raise(&self, s: Signal) {
        if self.signal.fetch_max(s as u8, Ordering::AcqRel) < s as u8 {
            self.waker.wake();
        }
    }

    /// Resolves once the connection has been asked for `at_least`.
    pub fn wait(&self, at_least: Signal) -> Wait<'_> {
        Wait {
            guard: self,
            at_least,
        }
    }
}

/// The future of [`ConnGuard::wait`].
pub struct Wait<'a> {
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
#[derive(Debug, Default)]
pub struct Watchdog {
    conns: Vec<Arc<ConnGuard>>,
}

impl Watchdog {
    /// Watch a new connection; its task keeps the returned guard.
    pub fn watch(&mut self, idle: Duration) -> Arc<ConnGuard> {
        let g = Arc::new(ConnGuard::new(idle));
        self.conns.push(g.clone());
        g
    }

    /// Forget ended connections, drain those past their deadline, drop those past it by
    /// [`GRACE`]. Returns how many are still watched.
    pub fn sweep(&mut self) -> usize {
        let now = mono_secs();
        self.conns.retain(|g| {
            // The task dropped its guard: the connection is gone.
            if Arc::strong_count(g) == 1 {
                return false;
            }
            let deadline = g.deadline.load(Ordering::Relaxed);
            if now > deadline + GRACE.as_secs() {
                g.raise(Signal::Drop);
            } else if now > deadline {
                g.raise(Signal::Drain);
            }
            true
        });
        self.conns.len()
    }

    /// Ask every connection to finish gracefully (server shutdown).
    pub fn drain_all(&self) {
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

    #[test]
    fn deadlines_drain_then_drop_and_wake_the_task() {
        let mut dog = Watchdog::default();
        let g = dog.watch(Duration::from_secs(60));
        let count = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut drain = g.wait(Signal::Drain);
        assert!(!poll(&mut drain, &waker));
        assert_eq!(dog.sweep(), 1);
        assert!(!poll(&mut drain, &waker), "not due yet");

        // Past the deadline: drained, and the waiting task is woken.
        g.deadline
            .store(mono_secs().saturating_sub(1), Ordering::Relaxed);
        dog.sweep();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut drain, &waker));
        assert!(!poll(&mut g.wait(Signal::Drop), &waker));

        // A request starting does not undo a drain already asked for...
        g.touch();
        assert!(poll(&mut g.wait(Signal::Drain), &waker));
        // ...and past the grace period the connection is dropped.
        g.deadline.store(
            mono_secs().saturating_sub(GRACE.as_secs() + 1),
            Ordering::Relaxed,
        );
        dog.sweep();
        assert!(poll(&mut g.wait(Signal::Drop), &waker));

        // The task ended: the guard is forgotten.
        drop(g);
        assert_eq!(dog.sweep(), 0);
    }

    #[test]
    fn touching_moves_the_deadline_and_drain_all_reaches_everyone() {
        let mut dog = Watchdog::default();
        let a = dog.watch(Duration::from_secs(5));
        let b = dog.watch(Duration::from_secs(5));
        a.deadline.store(0, Ordering::Relaxed);
        a.touch();
        assert!(a.deadline.load(Ordering::Relaxed) >= mono_secs() + 4);
        dog.sweep();
        let waker = std::task::Waker::noop();
        assert!(!poll(&mut a.wait(Signal::Drain), waker));
        dog.drain_all();
        assert!(poll(&mut a.wait(Signal::Drain), waker));
        assert!(poll(&mut b.wait(Signal::Drain), waker));
    }
}
