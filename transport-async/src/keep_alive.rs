//! Keeping a session alive: its timers run on the timer task its [`HttpClient`]
//! shares between every kept-alive session of a runtime.
//!
//! [`HttpClient`]: crate::HttpClient

use std::sync::Arc;

use broker_session::Machine;

use crate::client::Client;
use crate::timer::Timed;

/// Runs a session's timers (keep-alive ticks, proactive refreshes, retries) until
/// this handle is dropped; it holds the session meanwhile.
///
/// The timers of every session kept alive on one [`HttpClient`](crate::HttpClient)
/// run on one tokio task (per runtime), which keeps a heap of the sessions'
/// deadlines: a session kept alive costs an entry there, not a task. The task drives
/// a session when its deadline comes and hands the requests that produces to
/// spawned tasks, so one slow broker delays no other session's timer. The task
/// starts with the first session kept alive and ends when the last handle is
/// dropped.
///
/// Dropping the handle takes the session off the timer at once: once the drop has
/// returned, no timer of the session runs (a drive already under way finishes
/// first). A session request in flight then still completes on its task and is fed
/// to the machine. Calling [`keep_alive`](Client::keep_alive) again on a kept-alive
/// session adds a handle to the same registration; its timers run until the last
/// handle is dropped.
#[must_use = "the session's timers stop when the handle is dropped"]
pub struct KeepAlive {
    /// The session; its hook knows the registration (one per session, whatever the
    /// number of handles), so the handle is this pointer alone.
    session: Arc<dyn Timed>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive").finish_non_exhaustive()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(hook) = self.session.release() {
            hook.leave();
        }
    }
}

impl<M> Client<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Keeps the session alive: drives the machine whenever one of its timers falls
    /// due (and as soon as a call moves its next deadline earlier), so the session
    /// stays alive while the application makes no calls, until the returned handle
    /// is dropped. Events it produces are buffered like any others for a subscriber
    /// (see [`drain_events`](Client::drain_events)).
    ///
    /// Cheap: the timers of all the sessions kept alive on one
    /// [`HttpClient`](crate::HttpClient) run on one task of the session's runtime
    /// (see [`KeepAlive`]), so 100,000 sessions need one task, not 100,000. Callable
    /// from any thread.
    ///
    /// ```no_run
    /// # async fn demo(configs: Vec<broker_session_hyper::IgConfig>) -> Result<(), broker_session_hyper::Error> {
    /// use broker_session_hyper::{Client, Config, HttpClient};
    ///
    /// let http = HttpClient::new(&Config::default())?;
    /// let mut sessions = Vec::new();
    /// for config in configs {
    ///     let client = Client::open(config, &http)?;
    ///     client.login().await?;
    ///     let keep_alive = client.keep_alive(); // one timer task for all of them
    ///     sessions.push((client, keep_alive));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn keep_alive(&self) -> KeepAlive {
        let session: Arc<dyn Timed> = Arc::clone(self.inner()) as Arc<dyn Timed>;
        self.http().timers().register(self.runtime(), &session);
        KeepAlive { session }
    }
}
