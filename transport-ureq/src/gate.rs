//! The per-host connection cap of the blocking pool: a counting gate per origin
//! (scheme, host, port) that every exchange passes through, so at most
//! [`Config::max_connections_per_host`](crate::Config::max_connections_per_host)
//! exchanges, and so connections, are open to one origin at once; the others wait
//! until a slot comes free or their deadline passes.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Counts the exchanges in progress per origin.
#[derive(Debug)]
pub(crate) struct HostGate {
    cap: usize,
    /// One line per origin ever talked to, found by a scan that allocates nothing:
    /// a client talks to one or two brokers (and perhaps a proxy), so the list stays
    /// short and is never pruned, and a [`Slot`] can name its line by index.
    lines: Mutex<Vec<Line>>,
    /// Where waiters of every origin sleep; a freed slot wakes them all, and each
    /// checks its own line (waiting is rare: only when an origin is at the cap).
    freed: Condvar,
}

/// One origin's exchanges: how many run and how many wait.
#[derive(Debug)]
struct Line {
    scheme: Box<str>,
    host: Box<str>,
    port: u16,
    busy: usize,
    waiting: usize,
}

/// One slot of an origin, given back when dropped.
pub(crate) struct Slot<'a> {
    gate: &'a HostGate,
    line: usize,
    waited: bool,
}

impl Slot<'_> {
    /// Whether the exchange had to wait for this slot.
    pub(crate) fn waited(&self) -> bool {
        self.waited
    }
}

impl HostGate {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            lines: Mutex::new(Vec::new()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Line>> {
        // Every update of the lines is complete between two statements: a panic
        // elsewhere while holding the lock cannot leave them half-updated.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot of `uri`'s origin, waiting until `until` at most; `None` if no
    /// slot came free by then. No order among waiters is promised: whoever gets the
    /// lock first after a slot came free takes it.
    pub(crate) fn enter(&self, uri: &http::Uri, until: Instant) -> Option<Slot<'_>> {
        let (scheme, host, port) = broker_session::transport::origin(uri);
        let mut lines = self.lock();
        let line = match lines
            .iter()
            .position(|l| l.port == port && *l.host == *host && *l.scheme == *scheme)
        {
            Some(i) => i,
            None => {
                lines.push(Line {
                    scheme: scheme.into(),
                    host: host.into(),
                    port,
                    busy: 0,
                    waiting: 0,
                });
                lines.len() - 1
            }
        };
        if lines[line].busy < self.cap {
            lines[line].busy += 1;
            return Some(Slot {
                gate: self,
                line,
                waited: false,
            });
        }
        lines[line].waiting += 1;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                lines = self
                    .freed
                    .wait_timeout(lines, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let l = &mut lines[line];
            if l.busy < self.cap {
                l.waiting -= 1;
                l.busy += 1;
                return Some(Slot {
                    gate: self,
                    line,
                    waited: true,
                });
            }
            if left.is_zero() {
                l.waiting -= 1;
                return None;
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut lines = self.gate.lock();
        let l = &mut lines[self.line];
        l.busy -= 1;
        let waiting = l.waiting > 0;
        drop(lines);
        if waiting {
            self.gate.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn counts_each_origin_apart_and_gives_up_at_the_deadline() {
        let gate = HostGate::new(1);
        let now = Instant::now();
        let a = gate.enter(&uri("http://127.0.0.1:1/x"), now).expect("free");
        // Another origin (port) has its own slot.
        let b = gate.enter(&uri("http://127.0.0.1:2/x"), now).expect("free");
        // The first origin is full: the deadline has passed, so no slot.
        assert!(gate.enter(&uri("http://127.0.0.1:1/y"), now).is_none());
        drop(a);
        assert!(gate.enter(&uri("http://127.0.0.1:1/y"), now).is_some());
        drop(b);
        assert_eq!(gate.lock().len(), 2);
        assert!(gate.lock().iter().all(|l| l.busy == 0 && l.waiting == 0));
    }

    #[test]
    fn a_waiter_gets_the_slot_freed_before_its_deadline() {
        let gate = Arc::new(HostGate::new(1));
        let held = gate
            .enter(&uri("https://h/"), Instant::now())
            .expect("free");
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(30);
                gate.enter(&uri("https://h:443/z"), until).is_some()
            })
        };
        while gate.lock()[0].waiting == 0 {
            std::thread::yield_now();
        }
        drop(held);
        assert!(waiter.join().expect("thread"));
    }
}
