//! The per-host connection cap of the blocking pool: a counting gate per origin
//! (scheme, host, port) that every exchange passes through, so at most
//! [`Config::max_connections_per_host`](crate::Config::max_connections_per_host)
//! exchanges, and so connections, are open to one origin at once; the others wait in
//! line until a slot comes free or their deadline passes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

type Origin = (String, String, u16);

/// Counts the exchanges in progress per origin.
#[derive(Debug)]
pub(crate) struct HostGate {
    cap: usize,
    /// The origins in use (an exchange in progress or waiting); the others have no
    /// entry, so the map stays as small as the set of origins being talked to.
    origins: Mutex<HashMap<Origin, Line>>,
}

/// One origin's exchanges: how many run, how many wait, and where the waiters sleep.
#[derive(Debug, Default)]
struct Line {
    busy: usize,
    waiting: usize,
    freed: Arc<Condvar>,
}

/// One slot of an origin, given back when dropped.
pub(crate) struct Slot<'a> {
    gate: &'a HostGate,
    origin: Origin,
}

impl HostGate {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            origins: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Origin, Line>> {
        // Every update of the map is complete between two statements: a panic
        // elsewhere while holding it cannot leave it half-updated.
        self.origins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot of `uri`'s origin, waiting until `until` at most, first come
    /// first served as far as the condition variable is fair; `None` if no slot came
    /// free by then.
    pub(crate) fn enter(&self, uri: &http::Uri, until: Instant) -> Option<Slot<'_>> {
        let (scheme, host, port) = broker_session::transport::origin(uri);
        let origin = (scheme.to_owned(), host.to_owned(), port);
        let mut origins = self.lock();
        let line = origins.entry(origin.clone()).or_default();
        if line.busy < self.cap {
            line.busy += 1;
            return Some(Slot { gate: self, origin });
        }
        line.waiting += 1;
        let freed = Arc::clone(&line.freed);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                origins = freed
                    .wait_timeout(origins, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // The entry stays while someone waits on it.
            let line = origins.get_mut(&origin)?;
            if line.busy < self.cap {
                line.waiting -= 1;
                line.busy += 1;
                return Some(Slot { gate: self, origin });
            }
            if Instant::now() >= until {
                line.waiting -= 1;
                if line.busy == 0 && line.waiting == 0 {
                    origins.remove(&origin);
                }
                return None;
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut origins = self.gate.lock();
        let Some(line) = origins.get_mut(&self.origin) else {
            return;
        };
        line.busy -= 1;
        if line.waiting > 0 {
            line.freed.notify_one();
        } else if line.busy == 0 {
            origins.remove(&self.origin);
        }
    }
}
