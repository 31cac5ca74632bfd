//! The blocking session client: one machine behind a mutex, driven by whichever
//! thread needs progress, never holding the lock during network IO.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use broker_session::driver::{Driver, SessionEvent};
use broker_session::transport::ops::{Operation, SessionConfig, output_of};
use broker_session::transport::{Call, CallInput, CallStep};
use broker_session::{Input, Machine, Now, OpId, Transmit, deadline_after};

use crate::scheduler::{Hook, Timed};
use crate::{Config, Error, HttpClient, now, os_seed};

/// How long a waiter sleeps at most while another thread has a request in flight;
/// a safety net only: the waiter is woken as soon as the exchange ends.
const IN_FLIGHT_POLL: Duration = Duration::from_secs(1);

broker_session::__client_handle! {
    /// A blocking session client for any [`Machine`].
    ///
    /// Shareable across threads (`Clone` it, or share a reference): calls from many
    /// threads are serialised on the machine, while network exchanges run outside the
    /// lock. Whichever thread needs progress drives the machine (sends its requests,
    /// runs its due timers), so no background thread is needed; use
    /// [`keep_alive`](Client::keep_alive) or [`service`](Client::service) to run timers
    /// (keep-alive ticks, proactive refreshes) while no call is being made.
    Client
}

pub(crate) struct Inner<M: Machine> {
    http: HttpClient,
    base_url: Option<String>,
    shared: Mutex<Driver<M>>,
    changed: Condvar,
    /// How many threads sleep on `changed`; changed only with `shared` locked. A
    /// notification with nobody waiting is a system call saved (several per
    /// exchange).
    waiting: AtomicUsize,
    /// The [`Scheduler`](crate::Scheduler) to wake when the machine's deadline moves
    /// earlier than the one it knows, if the session is on one.
    scheduled: Mutex<Option<Hook>>,
    /// Whether `scheduled` holds a hook; changed only with `shared` locked, so a
    /// drive of a session on no scheduler takes no second lock.
    hooked: AtomicBool,
}

impl<M: Machine> Inner<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<M>> {
        // A panic in another thread leaves the machine as it was between two calls;
        // carrying on is safer than poisoning every later call.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drives the machine until it waits: exchanges its transmits on this thread,
    /// with the lock released, and feeds the results back.
    pub(crate) fn drive<'a>(&'a self, g: MutexGuard<'a, Driver<M>>) -> MutexGuard<'a, Driver<M>> {
        self.drive_at(g, now())
    }

    /// [`drive`](Self::drive), the first step at `now` (read by the caller for the
    /// call that gave the machine work).
    fn drive_at<'a>(
        &'a self,
        mut g: MutexGuard<'a, Driver<M>>,
        mut now: Now,
    ) -> MutexGuard<'a, Driver<M>> {
        // One clock read per step: the instant the results were fed in is the one
        // the machine is then polled at.
        loop {
            let pump = g.pump(now);
            if pump.changed {
                self.notify();
            }
            if pump.transmits.is_empty() {
                if self.hooked.load(Ordering::Relaxed)
                    && let Some(hook) = self.hook().as_mut()
                {
                    hook.moved(g.deadline());
                }
                return g;
            }
            drop(g);
            let exchange = |t: Transmit| match self.http.execute_before(t.request, t.deadline) {
                Ok(response) => Input::Response { id: t.id, response },
                Err(failure) => Input::Failed { id: t.id, failure },
            };
            // The machine sends one request at a time: the first result needs no
            // vector of its own.
            let mut transmits = pump.transmits.into_iter();
            let first = transmits.next().map(exchange);
            // Collected only if there are more (collecting an empty rest in place
            // would still reallocate the transmits' buffer).
            let rest: Vec<Input> = if transmits.len() == 0 {
                Vec::new()
            } else {
                transmits.map(exchange).collect()
            };
            g = self.lock();
            now = crate::now();
            for input in first.into_iter().chain(rest) {
                g.handle_input(input, now);
            }
            // An exchange ended: waiters re-check even if the machine emits nothing.
            self.notify();
        }
    }

    /// Drives until `ready` yields, sleeping on the condition variable until the
    /// machine's next deadline or another thread's progress.
    fn wait_until<'a, T>(
        &'a self,
        mut g: MutexGuard<'a, Driver<M>>,
        now: Now,
        mut ready: impl FnMut(&mut Driver<M>) -> Option<T>,
    ) -> (MutexGuard<'a, Driver<M>>, Result<T, Error>) {
        g = self.drive_at(g, now);
        loop {
            if let Some(v) = ready(&mut g) {
                return (g, Ok(v));
            }
            let sleep = match g.deadline() {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if g.in_flight() > 0 => IN_FLIGHT_POLL,
                None => return (g, Err(Error::Stalled)),
            };
            if !sleep.is_zero() {
                g = self.wait_changed(g, sleep);
            }
            g = self.drive(g);
        }
    }

    /// Sleeps on the condition variable up to `timeout`, the lock released meanwhile.
    pub(crate) fn wait_changed<'a>(
        &'a self,
        g: MutexGuard<'a, Driver<M>>,
        timeout: Duration,
    ) -> MutexGuard<'a, Driver<M>> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let g = self
            .changed
            .wait_timeout(g, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// Wakes the threads sleeping in [`wait_changed`](Self::wait_changed), if any.
    /// Called with the machine's lock held, or after releasing the lock a change was
    /// made under (a sleeper counted itself under that lock, before the change).
    pub(crate) fn notify(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.changed.notify_all();
        }
    }

    /// Taken with the machine's lock held (never the other way round).
    pub(crate) fn hook(&self) -> MutexGuard<'_, Option<Hook>> {
        // Holds a plain value, consistent between two statements.
        self.scheduled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M> Timed for Inner<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn service_scheduled(&self) -> Option<Instant> {
        let g = self.drive(self.lock());
        let deadline = g.deadline();
        if let Some(hook) = self.hook().as_mut() {
            hook.learnt(deadline);
        }
        deadline
    }

    fn attach(&self, hook: Option<Hook>) {
        let _g = self.lock();
        self.hooked.store(hook.is_some(), Ordering::Relaxed);
        *self.hook() = hook;
    }

    fn detach(&self, id: u64) {
        let _g = self.lock();
        let mut hook = self.hook();
        if hook.as_ref().is_some_and(|h| h.id() == id) {
            *hook = None;
            self.hooked.store(false, Ordering::Relaxed);
        }
    }
}

impl<M: Machine> Client<M> {
    /// A client for `machine` with its own [`HttpClient`] built from `config`.
    pub fn new(machine: M, config: &Config) -> Result<Self, Error> {
        Ok(Self::with_http(machine, HttpClient::new(config)?))
    }

    /// A client for `machine` that shares `http` (and its connection pool) with other
    /// clients; its event buffer holds the [`Config::event_capacity`] `http` was built
    /// with. To build the machine too, use [`open`](Self::open).
    pub fn with_http(machine: M, http: HttpClient) -> Self {
        Self::build(machine, http, None)
    }

    fn build(machine: M, http: HttpClient, base_url: Option<String>) -> Self {
        let base_url = base_url.or_else(|| machine.base_url().map(str::to_owned));
        let capacity = http.policy().event_capacity;
        Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                shared: Mutex::new(Driver::new(machine, capacity)),
                changed: Condvar::new(),
                waiting: AtomicUsize::new(0),
                scheduled: Mutex::new(None),
                hooked: AtomicBool::new(false),
            }),
        }
    }

    /// A client for the machine built from a broker configuration (seeded from the
    /// operating system), sharing `http`: many sessions over one pool.
    ///
    /// ```no_run
    /// # fn demo(a: broker_session_ureq::IgConfig, b: broker_session_ureq::IbkrConfig) -> Result<(), broker_session_ureq::Error> {
    /// use broker_session_ureq::{Client, Config, HttpClient};
    ///
    /// let http = HttpClient::new(&Config::default())?;
    /// let ig = Client::open(a, &http)?;
    /// let ibkr = Client::open(b, &http)?;
    /// # let _ = (ig, ibkr); Ok(()) }
    /// ```
    pub fn open<C>(session: C, http: &HttpClient) -> Result<Self, Error>
    where
        C: SessionConfig<Machine = M>,
    {
        let base_url = session.base_url();
        let machine = session.build(os_seed()?, now())?;
        Ok(Self::build(machine, http.clone(), Some(base_url)))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<M>> {
        &self.inner
    }

    /// Submits `intent` and drives the machine until its operation completes; returns
    /// the operation's typed result.
    pub fn run(&self, intent: M::Intent) -> Result<M::Outcome, Error> {
        let now = now();
        let mut g = self.inner.lock();
        let op = g.submit(intent, now)?;
        g.await_op(op);
        let (mut g, r) = self.inner.wait_until(g, now, |d| d.take_result(op));
        g.forget_op(op);
        Ok(r??)
    }

    /// Runs the typed operation `op` (what `login`, `connect` … do) and returns its
    /// typed output.
    pub fn call<O: Operation<Machine = M>>(&self, op: O) -> Result<O::Output, Error> {
        let now = now();
        let mut g = self.inner.lock();
        let id = g.submit(op.intent(), now)?;
        g.await_op(id);
        let (mut g, r) = self.inner.wait_until(g, now, |d| d.take_result(id));
        g.forget_op(id);
        output_of::<O>(r?)
    }

    /// Queues `intent` without sending anything; returns its operation id. The
    /// operation runs when the machine is next driven (by [`service`](Self::service),
    /// the [`keep_alive`](Self::keep_alive) thread or any other call), and its result
    /// arrives as an [`Event::Completed`](broker_session::Event::Completed) in the
    /// event buffer, so this subscribes to events (see [`subscribe`](Self::subscribe)).
    pub fn submit(&self, intent: M::Intent) -> Result<OpId, Error> {
        let now = now();
        let mut g = self.inner.lock();
        let op = g.submit(intent, now)?;
        g.subscribe();
        // Whoever runs the session's timers runs the new operation now.
        if let Some(hook) = self.inner.hook().as_mut() {
            hook.moved(Some(now.mono));
        }
        drop(g);
        self.inner.notify();
        Ok(op)
    }

    /// Sends an application request with the session's credentials and returns the
    /// broker's response, whatever its status.
    ///
    /// A path without scheme and host (`/accounts`) is sent under the session's
    /// [`base_url`](Self::base_url). At IG, say which version of an endpoint you want
    /// in a `Version` header: a request without one gets version 1, and most
    /// endpoints have later versions with other fields.
    ///
    /// Authorizes the request, exchanges it and lets the machine observe the
    /// response. If the credentials were refused and the machine recovers them
    /// (refresh or re-login), waits for that one recovery (shared by every thread that
    /// hit the same refusal) and resends the request once with the new credentials;
    /// if they had already been replaced, resends it once at once. If credentials are
    /// being obtained when the request is made, waits for them first. The decisions
    /// are [`Call`]'s.
    ///
    /// Errors: [`Error::Authorize`] when the session cannot stamp the request (not
    /// logged in, backing off, lost, another host), [`Error::Transport`] when the
    /// exchange failed, [`Error::Session`] when the session was lost or its recovery
    /// failed.
    pub fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, Error> {
        let mut call = Call::new(request, self.inner.base_url.as_deref());
        let mut input = CallInput::Start;
        let mut g = self.inner.lock();
        loop {
            let now = now();
            let step = call.next(g.machine_mut(), input, now);
            input = match step {
                CallStep::Send(request) => {
                    drop(g);
                    let sent = self.inner.http.execute(request);
                    g = self.inner.lock();
                    CallInput::Sent(sent)
                }
                CallStep::WaitFor(op) => {
                    // Joined under the lock `next` ran under: its end cannot be missed.
                    g.join(op);
                    let (g2, finished) = self.inner.wait_until(g, now, |d| d.finished(op));
                    g = g2;
                    g.leave(op);
                    CallInput::Finished(finished?)
                }
                CallStep::Done(result) => {
                    drop(self.inner.drive_at(g, now));
                    return result;
                }
                _ => unreachable!("a call step this client does not know"),
            };
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

    /// Waits up to `timeout` for the next event, driving the machine meanwhile. Any
    /// duration is accepted: `Duration::MAX` waits as long as it takes. Subscribes to
    /// events (see [`subscribe`](Self::subscribe)).
    pub fn next_event(&self, timeout: Duration) -> Option<SessionEvent<M>> {
        let end = deadline_after(Instant::now(), timeout);
        let mut g = self.inner.lock();
        g.subscribe();
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
}

broker_session::__broker_methods!(Client);
