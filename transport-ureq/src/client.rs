//! The blocking session client: one machine behind a mutex, driven by whichever
//! thread needs progress, never holding the lock during network IO.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use broker_session::driver::{Driver, SessionEvent};
use broker_session::{AuthorizeError, Input, Machine, Observation, OpId, deadline_after};

use crate::error::Error;
use crate::http_client::HttpClient;
use crate::{Config, now};

/// How long a waiter sleeps at most while another thread has a request in flight;
/// a safety net only: the waiter is woken as soon as the exchange ends.
const IN_FLIGHT_POLL: Duration = Duration::from_secs(1);

/// A blocking session client for any [`Machine`].
///
/// Shareable across threads (`Clone` it, or share a reference): calls from many
/// threads are serialised on the machine, while network exchanges run outside the
/// lock. Whichever thread needs progress drives the machine (sends its requests,
/// runs its due timers), so no background thread is needed; use
/// [`keep_alive`](Client::keep_alive) or [`service`](Client::service) to run timers
/// (keep-alive ticks, proactive refreshes) while no call is being made.
pub struct Client<M: Machine> {
    inner: Arc<Inner<M>>,
}

impl<M: Machine> Clone for Client<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Machine> std::fmt::Debug for Client<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Client");
        // `try_lock`: Debug may be called while this thread holds the lock.
        match self.inner.shared.try_lock() {
            Ok(g) => d.field("state", &g.machine().state()),
            Err(_) => d.field("state", &"<locked>"),
        };
        d.finish_non_exhaustive()
    }
}

pub(crate) struct Inner<M: Machine> {
    http: HttpClient,
    shared: Mutex<Driver<M>>,
    changed: Condvar,
}

impl<M: Machine> Inner<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<M>> {
        // A panic in another thread leaves the machine as it was between two calls;
        // carrying on is safer than poisoning every later call.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drives the machine until it waits: exchanges its transmits on this thread,
    /// with the lock released, and feeds the results back.
    pub(crate) fn drive<'a>(
        &'a self,
        mut g: MutexGuard<'a, Driver<M>>,
    ) -> MutexGuard<'a, Driver<M>> {
        loop {
            let pump = g.pump(now());
            if pump.changed {
                self.changed.notify_all();
            }
            if pump.transmits.is_empty() {
                return g;
            }
            drop(g);
            let inputs: Vec<Input> = pump
                .transmits
                .into_iter()
                .map(|t| match self.http.execute_before(t.request, t.deadline) {
                    Ok(response) => Input::Response { id: t.id, response },
                    Err(failure) => Input::Failed { id: t.id, failure },
                })
                .collect();
            g = self.lock();
            let now = now();
            for input in inputs {
                g.handle_input(input, now);
            }
            // An exchange ended: waiters re-check even if the machine emits nothing.
            self.changed.notify_all();
        }
    }

    /// Drives until `ready` yields, sleeping on the condition variable until the
    /// machine's next deadline or another thread's progress.
    fn wait_until<'a, T>(
        &'a self,
        mut g: MutexGuard<'a, Driver<M>>,
        mut ready: impl FnMut(&mut Driver<M>) -> Option<T>,
    ) -> (MutexGuard<'a, Driver<M>>, Result<T, Error>) {
        loop {
            g = self.drive(g);
            if let Some(v) = ready(&mut g) {
                return (g, Ok(v));
            }
            let sleep = match g.deadline() {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if g.in_flight() > 0 => IN_FLIGHT_POLL,
                None => return (g, Err(Error::Stalled)),
            };
            if !sleep.is_zero() {
                g = self
                    .changed
                    .wait_timeout(g, sleep)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// Waits for an operation that another party may also wait for (a recovery, a
    /// pending login) and returns whether it succeeded.
    fn wait_finished<'a>(
        &'a self,
        g: MutexGuard<'a, Driver<M>>,
        op: OpId,
    ) -> (MutexGuard<'a, Driver<M>>, Result<(), Error>) {
        let (g, r) = self.wait_until(g, |d| d.finished(op));
        (g, r.and_then(|r| r.map_err(Error::Session)))
    }

    pub(crate) fn wait_changed<'a>(
        &'a self,
        g: MutexGuard<'a, Driver<M>>,
        timeout: Duration,
    ) -> MutexGuard<'a, Driver<M>> {
        self.changed
            .wait_timeout(g, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_all();
    }
}

impl<M: Machine> Client<M> {
    /// A client for `machine` with its own [`HttpClient`] built from `config`.
    pub fn new(machine: M, config: &Config) -> Result<Self, Error> {
        Ok(Self::with_http(machine, HttpClient::new(config)?, config))
    }

    /// A client for `machine` that shares `http` (and its connection pool) with other
    /// clients. Only [`Config::event_capacity`] is read from `config`.
    pub fn with_http(machine: M, http: HttpClient, config: &Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                shared: Mutex::new(Driver::new(machine, config.event_capacity)),
                changed: Condvar::new(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<M>> {
        &self.inner
    }

    /// Submits `intent` and drives the machine until its operation completes; returns
    /// the operation's typed result.
    pub fn run(&self, intent: M::Intent) -> Result<M::Outcome, Error> {
        let mut g = self.inner.lock();
        let op = g.submit(intent, now()).map_err(Error::Usage)?;
        g.await_op(op);
        let (mut g, r) = self.inner.wait_until(g, |d| d.take_result(op));
        g.forget_op(op);
        r?.map_err(Error::Session)
    }

    /// Queues `intent` without sending anything; returns its operation id. The
    /// operation runs when the machine is next driven (by [`service`](Self::service),
    /// the [`keep_alive`](Self::keep_alive) thread or any other call), and its result
    /// arrives as an [`Event::Completed`](broker_session::Event::Completed) in the
    /// event buffer.
    pub fn submit(&self, intent: M::Intent) -> Result<OpId, Error> {
        let op = self
            .inner
            .lock()
            .submit(intent, now())
            .map_err(Error::Usage)?;
        self.inner.notify();
        Ok(op)
    }

    /// Sends an application request with the session's credentials and returns the
    /// broker's response, whatever its status.
    ///
    /// Authorizes the request, exchanges it and lets the machine observe the
    /// response. If the credentials were refused and the machine recovers them
    /// (refresh or re-login), waits for that one recovery (shared by every thread that
    /// hit the same refusal) and resends the request once with the new credentials;
    /// if they had already been replaced, resends it once at once. If credentials are
    /// being obtained when the request is made, waits for them first.
    ///
    /// Errors: [`Error::Authorize`] when the session cannot stamp the request (not
    /// logged in, backing off, lost, another host), [`Error::Transport`] when the
    /// exchange failed, [`Error::Session`] when the session was lost or its recovery
    /// failed.
    pub fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, Error> {
        let mut resent = false;
        let mut waits = 0;
        loop {
            let mut req = clone_request(&request);
            let stamp = {
                let mut g = self.inner.lock();
                match g.machine_mut().authorize(&mut req, now()) {
                    Ok(stamp) => stamp,
                    Err(AuthorizeError::Pending { op }) if waits < 2 => {
                        waits += 1;
                        self.inner.wait_finished(g, op).1?;
                        continue;
                    }
                    Err(e) => return Err(Error::Authorize(e)),
                }
            };
            let response = self.inner.http.execute(req).map_err(Error::Transport)?;
            let mut g = self.inner.lock();
            let observation = g.machine_mut().observe(&response, stamp, now());
            match observation {
                Observation::Replay if !resent => {
                    resent = true;
                    drop(self.inner.drive(g));
                }
                Observation::Recover { op } if !resent => {
                    resent = true;
                    self.inner.wait_finished(g, op).1?;
                }
                Observation::Lost(e) => {
                    drop(self.inner.drive(g));
                    return Err(Error::Session(e));
                }
                _ => {
                    drop(self.inner.drive(g));
                    return Ok(response);
                }
            }
        }
    }

    /// Runs what is due now without sleeping, then returns.
    ///
    /// Runs the machine's timers whose deadline has passed and exchanges the
    /// session requests they produce (on this thread, so this blocks for their network
    /// round trips), and collects events. Returns the machine's next deadline: call
    /// `service` again at (or soon after) that instant. `None` means nothing is
    /// scheduled until the next call on the client.
    pub fn service(&self) -> Option<Instant> {
        let g = self.inner.drive(self.inner.lock());
        g.deadline()
    }

    /// The session's current state.
    pub fn state(&self) -> M::State {
        self.inner.lock().machine().state()
    }

    /// Runs `f` on the machine under the client's lock, e.g. to read a getter the
    /// [`Machine`] trait does not have. Do not block inside `f`, and do not call this
    /// client from it (the lock is not reentrant).
    pub fn with_machine<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        let mut g = self.inner.lock();
        let r = f(g.machine_mut());
        drop(self.inner.drive(g));
        r
    }

    /// Takes every buffered event (state changes, session loss, and completions of
    /// operations no [`run`](Client::run) call was waiting for, such as proactive
    /// refreshes and keep-alive ticks), oldest first.
    pub fn drain_events(&self) -> Vec<SessionEvent<M>> {
        self.inner.lock().drain_events()
    }

    /// Waits up to `timeout` for the next event, driving the machine meanwhile. Any
    /// duration is accepted: `Duration::MAX` waits as long as it takes.
    pub fn next_event(&self, timeout: Duration) -> Option<SessionEvent<M>> {
        let end = deadline_after(Instant::now(), timeout);
        let mut g = self.inner.lock();
        loop {
            g = self.inner.drive(g);
            if let Some(e) = g.next_event() {
                return Some(e);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            let until = g.deadline().map_or(end, |d| d.min(end));
            let sleep = until.saturating_duration_since(now);
            if !sleep.is_zero() {
                g = self.inner.wait_changed(g, sleep);
            }
        }
    }

    /// How many events were dropped because the buffer was full
    /// ([`Config::event_capacity`]).
    pub fn dropped_events(&self) -> u64 {
        self.inner.lock().dropped_events()
    }

    /// The HTTP client this session uses.
    pub fn http(&self) -> &HttpClient {
        &self.inner.http
    }
}

/// A copy of a request (method, URI, version, headers, body), for a resend.
pub(crate) fn clone_request(r: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut out = http::Request::new(r.body().clone());
    *out.method_mut() = r.method().clone();
    *out.uri_mut() = r.uri().clone();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}
