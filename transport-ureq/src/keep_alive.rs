//! A background thread that runs one session's timers: a [`Scheduler`] of its own.

use broker_session::Machine;

use crate::client::Client;
use crate::{Error, Registration, Scheduler};

/// Runs a session's timers (keep-alive ticks, proactive refreshes, retries) on a
/// background thread. The thread stops when this guard is dropped; the drop waits
/// for it, which takes at most one request timeout if it is in the middle of an
/// exchange.
#[must_use = "the keep-alive thread stops when the guard is dropped"]
pub struct KeepAlive {
    // Dropped in this order: the session leaves, then the thread stops.
    registration: Registration,
    scheduler: Scheduler,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("registration", &self.registration)
            .field("scheduler", &self.scheduler)
            .finish()
    }
}

impl<M> Client<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Starts a thread that drives the machine whenever one of its timers falls due
    /// (and whenever a call moved its next deadline earlier or queued an operation),
    /// so the session stays alive while the application makes no calls. Events it
    /// produces are buffered like any others for a subscriber (see
    /// [`drain_events`](Client::drain_events)).
    ///
    /// One thread per session: for many sessions, put them on one [`Scheduler`]
    /// instead.
    pub fn keep_alive(&self) -> Result<KeepAlive, Error> {
        let scheduler = Scheduler::spawn()?;
        Ok(KeepAlive {
            registration: scheduler.add(self),
            scheduler,
        })
    }
}
