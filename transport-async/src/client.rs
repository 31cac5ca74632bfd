//! The async session: one machine behind a mutex that is never held across an
//! `.await`. A session request is exchanged inside the future that awaits the
//! machine (no task, no wake-up per exchange); if that future is dropped half-way,
//! the exchange goes on in a spawned task that feeds its result back, so dropping a
//! caller's future never leaves the machine waiting. Requests nobody awaits (from
//! `submit` or `service`) are exchanged by spawned tasks.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use broker_session::driver::{Driver, OpResult, SessionEvent};
use broker_session::transport::ops::{Operation, SessionConfig, output_of};
use broker_session::transport::{Call, CallInput, CallStep};
use broker_session::{
    FailureKind, Input, Machine, Now, OpId, RequestId, Transmit, TransportFailure,
};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::timer::{Hook, Shared as TimerShared, Timed};
use crate::{Config, Error, HttpClient, now, os_seed};

broker_session::__client_handle! {
    /// An async session client for any [`Machine`], on tokio.
    ///
    /// Cheap to clone; clones share the session. Methods can be called from many tasks
    /// at once. Every future is cancellation-safe: dropping one never loses a response
    /// the machine waits for. A session request is exchanged inside the future that
    /// awaits it (so, as with any future, keep polling it or drop it); dropped
    /// half-way, its exchange goes on in a task the session spawns and still feeds
    /// the machine. Those tasks, the exchanges of [`submit`](Client::submit),
    /// [`service`](Client::service) and the session's timers, and the timer task
    /// of [`keep_alive`](Client::keep_alive) run on the tokio runtime the session
    /// was created in.
    Client
}

pub(crate) struct Inner<M: Machine> {
    http: HttpClient,
    base_url: Option<Box<str>>,
    runtime: Handle,
    shared: Mutex<Driver<M>>,
    changed: Notify,
    /// Failures of exchanges whose task was dropped. Kept apart from `shared`
    /// because a task can be dropped while `shared` is locked (spawning on a runtime
    /// that is shutting down drops the task at once); the next drive feeds them.
    orphaned: Mutex<Vec<Input>>,
    /// Whether `orphaned` may hold inputs: set after a push, so a drive looks at the
    /// list (a second lock) only then.
    has_orphans: AtomicBool,
    /// The timer task to wake when the machine's deadline moves earlier than the one
    /// it knows, while the session is kept alive. Taken with `shared` locked (never
    /// the other way round).
    timer: Mutex<Option<Hook>>,
    /// Whether `timer` holds a hook; changed only with `shared` locked, so a drive of
    /// a session nobody keeps alive takes no second lock.
    hooked: AtomicBool,
}

/// What a waiting future does next, decided under the lock.
enum Next<T, M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Its wait is over.
    Ready(Result<T, Error>),
    /// Run this exchange here, then feed its result.
    Exchange(Exchange<M>),
    /// Sleep until something changes, or until the machine's deadline.
    Wait(Option<Instant>),
}

/// The result of a session exchange.
type Exchanged = Result<http::Response<Vec<u8>>, TransportFailure>;

/// A session exchange in flight, boxed so that it can be moved to a task when the
/// future running it is dropped (and so that the futures awaiting the machine stay
/// small).
type ExchangeFuture = Pin<Box<dyn Future<Output = Exchanged> + Send>>;

impl<M: Machine> Inner<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<M>> {
        // A panic elsewhere leaves the machine as it was between two calls; carrying
        // on is safer than poisoning every later call.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken with the machine's lock held (never the other way round).
    fn hook(&self) -> MutexGuard<'_, Option<Hook>> {
        // Holds a plain value, consistent between two statements.
        self.timer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M> Timed for Inner<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn service_timer(self: Arc<Self>, id: u64) -> Option<Option<Instant>> {
        let mut g = self.lock();
        // Under the machine's lock, which a dropped keep-alive handle takes to leave:
        // once its drop has returned, no timer of the session runs.
        if self.hook().as_ref().is_none_or(|h| h.id() != id) {
            return None;
        }
        // The session's requests go to spawned tasks: the timer task never waits
        // for a broker.
        self.drive_locked(&mut g);
        let deadline = g.deadline();
        if let Some(hook) = self.hook().as_mut() {
            hook.learnt(deadline);
        }
        Some(deadline)
    }

    fn attach(&self, timer: &Arc<TimerShared>, id: u64) -> u64 {
        let _g = self.lock();
        let mut hook = self.hook();
        match hook.as_mut() {
            Some(h) if h.is_on(timer) => {
                h.hold();
                h.id()
            }
            _ => {
                *hook = Some(Hook::new(timer, id));
                self.hooked.store(true, Ordering::Relaxed);
                id
            }
        }
    }

    fn release(&self) -> Option<Hook> {
        let _g = self.lock();
        let mut hook = self.hook();
        if !hook.as_mut()?.release() {
            return None;
        }
        self.hooked.store(false, Ordering::Relaxed);
        hook.take()
    }
}

impl<M> Inner<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// Polls the machine until it waits and hands each transmit to a spawned task.
    fn drive_locked(self: &Arc<Self>, g: &mut Driver<M>) {
        self.drive_locked_at(g, now());
    }

    /// [`drive_locked`](Self::drive_locked) at `now`, read once by the caller for
    /// the whole step.
    fn drive_locked_at(self: &Arc<Self>, g: &mut Driver<M>, now: Now) {
        if let Some(t) = self.pump_locked(g, now, false) {
            self.spawn_exchange(t);
        }
    }

    /// Feeds the orphaned inputs, polls the machine until it waits and wakes the
    /// waiters if anything changed, or if `wake` (an exchange ended: others waiting
    /// for it re-check even if the machine emitted nothing). Returns the first
    /// transmit (the machine sends one at a time) for the caller to exchange; any
    /// others go to spawned tasks.
    fn pump_locked(self: &Arc<Self>, g: &mut Driver<M>, now: Now, wake: bool) -> Option<Transmit> {
        if self.has_orphans.swap(false, Ordering::Acquire) {
            let orphaned =
                std::mem::take(&mut *self.orphaned.lock().unwrap_or_else(PoisonError::into_inner));
            for input in orphaned {
                g.handle_input(input, now);
            }
        }
        let pump = g.pump(now);
        if pump.changed || wake {
            self.changed.notify_waiters();
        }
        if self.hooked.load(Ordering::Relaxed)
            && let Some(hook) = self.hook().as_mut()
        {
            hook.moved(g.deadline());
        }
        let mut transmits = pump.transmits.into_iter();
        let first = transmits.next();
        for t in transmits {
            self.spawn_exchange(t);
        }
        first
    }

    fn spawn_exchange(self: &Arc<Self>, t: Transmit) {
        let feed = FeedBack {
            inner: Arc::clone(self),
            id: t.id,
            done: false,
        };
        self.runtime.spawn(feed.exchange(t.request, t.deadline));
    }

    fn feed(self: &Arc<Self>, input: Input) {
        let mut g = self.lock();
        let now = now();
        g.handle_input(input, now);
        // The exchange ended: wake waiters even if the machine emitted nothing.
        if let Some(t) = self.pump_locked(&mut g, now, true) {
            self.spawn_exchange(t);
        }
    }

    /// One step of a waiting future, under the lock: feeds `fed` (the result of the
    /// exchange it ran), polls the machine and decides. A transmit is kept for the
    /// caller to exchange unless its wait is over, then a task takes it.
    fn next_locked<T>(
        self: &Arc<Self>,
        g: &mut Driver<M>,
        fed: Option<Input>,
        now: Now,
        ready: &mut impl FnMut(&mut Driver<M>) -> Option<T>,
        stalls: bool,
    ) -> Next<T, M> {
        let ended = fed.is_some();
        if let Some(input) = fed {
            g.handle_input(input, now);
        }
        let transmit = self.pump_locked(g, now, ended);
        if let Some(v) = ready(g) {
            if let Some(t) = transmit {
                self.spawn_exchange(t);
            }
            return Next::Ready(Ok(v));
        }
        if let Some(t) = transmit {
            return Next::Exchange(Exchange::new(self, t));
        }
        if stalls && g.deadline().is_none() && g.in_flight() == 0 {
            return Next::Ready(Err(Error::Stalled));
        }
        Next::Wait(g.deadline())
    }

    /// Drives until `ready` yields, from `next` (the first step, taken by the caller
    /// under the lock it made its change under): exchanges the machine's requests
    /// here, and sleeps until the machine's next deadline or until something changed
    /// while another party has the request in flight. When nothing can change any
    /// more (no timer, nothing in flight), fails with [`Error::Stalled`] if `stalls`,
    /// or sleeps until another call changes the machine.
    async fn wait_until<T>(
        self: &Arc<Self>,
        mut next: Next<T, M>,
        mut ready: impl FnMut(&mut Driver<M>) -> Option<T>,
        stalls: bool,
    ) -> Result<T, Error> {
        loop {
            next = match next {
                Next::Ready(result) => return result,
                Next::Exchange(exchange) => {
                    let input = exchange.run().await;
                    let mut g = self.lock();
                    self.next_locked(&mut g, Some(input), now(), &mut ready, stalls)
                }
                Next::Wait(_) => {
                    let mut notified = pin!(self.changed.notified());
                    notified.as_mut().enable();
                    // Looked at again once listening: a change made since the last
                    // look (an orphaned exchange's failure among them) is not missed.
                    let rechecked = {
                        let mut g = self.lock();
                        self.next_locked(&mut g, None, now(), &mut ready, stalls)
                    };
                    let Next::Wait(deadline) = rechecked else {
                        next = rechecked;
                        continue;
                    };
                    match deadline {
                        Some(d) => {
                            let _ = tokio::time::timeout_at(d.into(), notified).await;
                        }
                        None => notified.await,
                    }
                    let mut g = self.lock();
                    self.next_locked(&mut g, None, now(), &mut ready, stalls)
                }
            };
        }
    }
}

/// A session exchange run inside the future that awaits the machine. Dropped before
/// it completed (or before it ran), it hands the exchange to a spawned task, which
/// feeds the result to the machine (or, if the runtime drops that task too,
/// [`FailureKind::Cancelled`]).
struct Exchange<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    inner: Arc<Inner<M>>,
    id: RequestId,
    /// `None` once completed.
    exchange: Option<ExchangeFuture>,
}

impl<M> Exchange<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn new(inner: &Arc<Inner<M>>, t: Transmit) -> Self {
        let owner = Arc::clone(inner);
        let (request, deadline) = (t.request, t.deadline);
        Self {
            inner: Arc::clone(inner),
            id: t.id,
            exchange: Some(Box::pin(async move {
                owner.http.execute_before(request, deadline).await
            })),
        }
    }

    /// The exchange's result as the machine's input.
    async fn run(mut self) -> Input {
        let exchanged = match self.exchange.as_mut() {
            Some(exchange) => exchange.await,
            None => Err(TransportFailure::new(
                FailureKind::Cancelled,
                "the exchange was already taken",
            )),
        };
        self.exchange = None;
        input_of(self.id, exchanged)
    }
}

impl<M> Drop for Exchange<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            let feed = FeedBack {
                inner: Arc::clone(&self.inner),
                id: self.id,
                done: false,
            };
            // On a runtime that is shutting down the task is dropped at once, and
            // `FeedBack`'s drop reports the exchange as cancelled.
            self.inner.runtime.spawn(feed.finish(exchange));
        }
    }
}

fn input_of(id: RequestId, exchanged: Exchanged) -> Input {
    match exchanged {
        Ok(response) => Input::Response { id, response },
        Err(failure) => Input::Failed { id, failure },
    }
}

/// Exchanges one transmit on a task of its own and feeds the result to the machine,
/// even if the task is dropped half-way (the runtime shutting down): then the
/// machine hears [`FailureKind::Cancelled`] at once instead of waiting for its own
/// deadline.
struct FeedBack<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    inner: Arc<Inner<M>>,
    id: RequestId,
    done: bool,
}

impl<M> FeedBack<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    async fn exchange(self, request: http::Request<Vec<u8>>, deadline: Instant) {
        let exchanged = self.inner.http.execute_before(request, deadline).await;
        self.complete(exchanged);
    }

    /// Completes an exchange started elsewhere (in a future since dropped).
    async fn finish(self, exchange: ExchangeFuture) {
        let exchanged = exchange.await;
        self.complete(exchanged);
    }

    fn complete(mut self, exchanged: Exchanged) {
        self.done = true;
        let input = input_of(self.id, exchanged);
        self.inner.feed(input);
    }
}

impl<M> Drop for FeedBack<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn drop(&mut self) {
        if !self.done {
            let failure = TransportFailure::new(
                FailureKind::Cancelled,
                "the exchange was dropped before it completed",
            );
            self.inner
                .orphaned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Input::Failed {
                    id: self.id,
                    failure,
                });
            self.inner.has_orphans.store(true, Ordering::Release);
            // The next drive (any call on the session, or a woken waiter) feeds it.
            self.inner.changed.notify_waiters();
        }
    }
}

/// Removes a `run` caller's slot when its future is dropped or its wait failed.
struct AwaitSlot<'a, M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    inner: &'a Inner<M>,
    op: OpId,
    /// The result was taken, which removed the slot.
    taken: bool,
}

impl<M> Drop for AwaitSlot<'_, M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn drop(&mut self) {
        if !self.taken {
            self.inner.lock().forget_op(self.op);
        }
    }
}

/// Leaves an operation a `send` call joined when its wait ends or is dropped.
struct JoinSlot<'a, M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    inner: &'a Inner<M>,
    op: OpId,
}

impl<M> Drop for JoinSlot<'_, M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    fn drop(&mut self) {
        self.inner.lock().leave(self.op);
    }
}

impl<M> Client<M>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    /// A client for `machine` with its own [`HttpClient`] built from `config`. Must
    /// be called inside a tokio runtime (its tasks are spawned on it).
    pub fn new(machine: M, config: &Config) -> Result<Self, Error> {
        Self::with_http(machine, HttpClient::new(config)?)
    }

    /// A client for `machine` sharing `http` (and its connection pool) with other
    /// clients; its event buffer holds the [`Config::event_capacity`] `http` was built
    /// with. To build the machine too, use [`open`](Self::open).
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a tokio runtime: the client spawns its exchanges
    /// and its timers' task on the runtime it was created in, so that they run
    /// (and its futures can be awaited) from any thread.
    pub fn with_http(machine: M, http: HttpClient) -> Result<Self, Error> {
        Self::build(machine, http, None)
    }

    fn build(machine: M, http: HttpClient, base_url: Option<String>) -> Result<Self, Error> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let base_url = base_url
            .map(String::into_boxed_str)
            .or_else(|| machine.base_url().map(Box::from));
        let capacity = http.policy().event_capacity;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                runtime,
                shared: Mutex::new(Driver::new(machine, capacity)),
                changed: Notify::new(),
                orphaned: Mutex::new(Vec::new()),
                has_orphans: AtomicBool::new(false),
                timer: Mutex::new(None),
                hooked: AtomicBool::new(false),
            }),
        })
    }

    /// A client for the machine built from a broker configuration (seeded from the
    /// operating system), sharing `http`: many sessions over one pool. Inside a tokio
    /// runtime, as [`with_http`](Self::with_http).
    ///
    /// ```no_run
    /// # async fn demo(a: broker_session_hyper::IgConfig, b: broker_session_hyper::IbkrConfig) -> Result<(), broker_session_hyper::Error> {
    /// use broker_session_hyper::{Client, Config, HttpClient};
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
        Self::build(machine, http.clone(), Some(base_url))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<M>> {
        &self.inner
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Submits `intent` and drives the machine until its operation completes; returns
    /// the operation's typed result. If the future is dropped, the operation still
    /// runs to its end (its result then goes to the event buffer, if someone
    /// subscribed to events).
    pub async fn run(&self, intent: M::Intent) -> Result<M::Outcome, Error> {
        Ok(self.run_op(intent).await??)
    }

    /// Runs the typed operation `op` (what `login`, `connect` … do) and returns its
    /// typed output. Cancellation-safe like [`run`](Self::run).
    pub async fn call<O: Operation<Machine = M>>(&self, op: O) -> Result<O::Output, Error> {
        output_of::<O>(self.run_op(op.intent()).await?)
    }

    async fn run_op(&self, intent: M::Intent) -> Result<OpResult<M>, Error> {
        let (op, next) = {
            let mut g = self.inner.lock();
            let now = now();
            let op = g.submit(intent, now)?;
            g.await_op(op);
            let next = self
                .inner
                .next_locked(&mut g, None, now, &mut |d| d.take_result(op), true);
            (op, next)
        };
        let mut slot = AwaitSlot {
            inner: &self.inner,
            op,
            taken: false,
        };
        let result = self
            .inner
            .wait_until(next, |d| d.take_result(op), true)
            .await;
        // Taking the result ended the wait for it: nothing left to forget.
        slot.taken = result.is_ok();
        result
    }

    /// Queues `intent` and starts it if the machine is idle, without waiting; returns
    /// its operation id. Its result arrives as an
    /// [`Event::Completed`](broker_session::Event::Completed) in the event buffer (see
    /// [`next_event`](Self::next_event)), so this subscribes to events (see
    /// [`subscribe`](Self::subscribe)). Its requests are exchanged by spawned tasks.
    /// Timers still need a driver: [`keep_alive`](Self::keep_alive),
    /// [`service`](Self::service) or any awaiting call.
    pub fn submit(&self, intent: M::Intent) -> Result<OpId, Error> {
        let mut g = self.inner.lock();
        let now = now();
        let op = g.submit(intent, now)?;
        g.subscribe();
        self.inner.drive_locked_at(&mut g, now);
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
    /// response. If the credentials were refused and the machine recovers them,
    /// waits for that one recovery (shared by every task that hit the same refusal)
    /// and resends the request once; if they had already been replaced, resends it
    /// once at once. If credentials are being obtained, waits for them first. The
    /// decisions are [`Call`]'s.
    ///
    /// Errors: [`Error::Authorize`] when the session cannot stamp the request,
    /// [`Error::Transport`] when the exchange failed, [`Error::Session`] when the
    /// session was lost or its recovery failed.
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, Error> {
        let mut call = Call::new(request, self.inner.base_url.as_deref());
        let mut input = CallInput::Start;
        loop {
            let (step, next) = {
                let mut g = self.inner.lock();
                let now = now();
                let step = call.next(g.machine_mut(), input, now);
                let next = match step {
                    CallStep::Send(_) => None,
                    CallStep::WaitFor(op) => {
                        // Joined under the lock `next` ran under: its end cannot be
                        // missed. Awaited here, so its requests are exchanged here.
                        g.join(op);
                        let mut finished = |d: &mut Driver<M>| d.finished(op);
                        Some(
                            self.inner
                                .next_locked(&mut g, None, now, &mut finished, true),
                        )
                    }
                    _ => {
                        self.inner.drive_locked_at(&mut g, now);
                        None
                    }
                };
                (step, next)
            };
            input = match (step, next) {
                (CallStep::Send(request), _) => {
                    CallInput::Sent(self.inner.http.execute(request).await)
                }
                (CallStep::WaitFor(op), Some(next)) => {
                    let _joined = JoinSlot {
                        inner: &self.inner,
                        op,
                    };
                    let finished = self.inner.wait_until(next, |d| d.finished(op), true).await;
                    CallInput::Finished(finished?)
                }
                (CallStep::Done(result), _) => return result,
                _ => unreachable!("a call step this client does not know"),
            };
        }
    }

    /// Runs what is due now without waiting: timers whose deadline has passed are
    /// run and the session requests they produce are handed to spawned tasks. Returns
    /// the machine's next deadline (`None`: nothing scheduled until the next call).
    pub fn service(&self) -> Option<Instant> {
        let mut g = self.inner.lock();
        self.inner.drive_locked(&mut g);
        g.deadline()
    }

    /// Waits for the next event, driving the machine meanwhile. Wrap it in
    /// `tokio::time::timeout` to bound the wait. Subscribes to events (see
    /// [`subscribe`](Self::subscribe)).
    pub async fn next_event(&self) -> SessionEvent<M> {
        let next = {
            let mut g = self.inner.lock();
            g.subscribe();
            self.inner
                .next_locked(&mut g, None, now(), &mut Driver::next_event, false)
        };
        match self.inner.wait_until(next, Driver::next_event, false).await {
            Ok(event) => event,
            // Without the stall check nothing fails; wait for ever, as documented.
            Err(_) => std::future::pending().await,
        }
    }
}

broker_session::__broker_methods!(Client, async await);

/// The former name of [`Client`].
#[deprecated(note = "renamed `Client`, as in the blocking transport")]
pub type Session<M> = Client<M>;
