//! A background thread that runs the session's timers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_session::Machine;

use crate::Error;
use crate::client::Client;

/// How long the keep-alive thread sleeps when the machine has no timer at all; it is
/// woken earlier by any call on the client.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

/// Runs a session's timers (keep-alive ticks, proactive refreshes, retries) on a
/// background thread. The thread stops when this guard is dropped; the drop waits
/// for it, which takes at most one request timeout if it is in the middle of an
/// exchange.
#[must_use = "the keep-alive thread stops when the guard is dropped"]
pub struct KeepAlive {
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send + Sync>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
        if let Some(t) = self.thread.take() {
            // A panic on the thread has already been reported; nothing to add here.
            let _ = t.join();
        }
    }
}

impl<M> Client<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Starts a thread that drives the machine whenever one of its timers falls due
    /// (and whenever another call changed it), so the session stays alive while the
    /// application makes no calls. Events it produces are buffered like any others
    /// (see [`drain_events`](Client::drain_events)).
    pub fn keep_alive(&self) -> Result<KeepAlive, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let inner = Arc::clone(self.inner());
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("broker-session-keep-alive".into())
            .spawn(move || {
                loop {
                    let g = inner.lock();
                    if thread_stop.load(Ordering::Acquire) {
                        return;
                    }
                    let g = inner.drive(g);
                    if thread_stop.load(Ordering::Acquire) {
                        return;
                    }
                    let sleep = g
                        .deadline()
                        .map_or(IDLE_SLEEP, |d| d.saturating_duration_since(Instant::now()));
                    if !sleep.is_zero() {
                        drop(inner.wait_changed(g, sleep));
                    }
                }
            })
            .map_err(|_| Error::ThreadSpawn)?;
        let inner = Arc::clone(self.inner());
        let wake = Box::new(move || {
            // Taking the lock orders this wake-up after the thread's check of the
            // stop flag, so it cannot be missed.
            let _g = inner.lock();
            inner.notify();
        });
        Ok(KeepAlive {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}
