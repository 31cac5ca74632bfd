//! A tokio task that runs the session's timers.

use broker_session::Machine;
use tokio::task::JoinHandle;

use crate::client::Client;

/// Runs a session's timers (keep-alive ticks, proactive refreshes, retries) on a
/// tokio task, which is aborted when this handle is dropped. The task exchanges the
/// session requests it starts itself; one in flight when the handle drops is still
/// completed on a task of its own and fed to the machine.
#[must_use = "the keep-alive task stops when the handle is dropped"]
#[derive(Debug)]
pub struct KeepAlive {
    task: JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<M> Client<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Starts a task that drives the machine whenever one of its timers falls due,
    /// so the session stays alive while the application makes no calls. Events it
    /// produces are buffered like any others for a subscriber (see
    /// [`drain_events`](Client::drain_events)).
    pub fn keep_alive(&self) -> KeepAlive {
        let inner = std::sync::Arc::clone(self.inner());
        // On the session's runtime, so this works (and does not panic) from any thread.
        let task = self.runtime().spawn(inner.keep_alive_loop());
        KeepAlive { task }
    }
}
