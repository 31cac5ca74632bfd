//! One IG session shared by a fleet of processes: [`SharedIgSession`] (blocking, on
//! the ureq transport) and `AsyncSharedIgSession` (on the hyper transport); the
//! coordination itself, which `shared_ibkr.rs` reuses for IBKR.
//!
//! Every process runs an [`IgSession`], built as a follower. At most one process holds the [`Lease`] and is the owner: it leads its
//! session (resuming from the stored snapshot, else logging in) and publishes every
//! new credential generation, sealed, with [`GenerationStore::publish`]. The others
//! adopt each generation as it is announced (pub/sub, with a periodic check as a
//! fallback) and keep it in memory, so an application call costs no Redis round trip.
//!
//! Two background threads per process: the lease thread (acquire, renew at a third of
//! the TTL, notice the loss) and the coordinator (publish, adopt, forward recovery
//! requests, take over and step down), the same for both transports: the coordinator
//! sees the session through a small trait (`SessionHandle`) that neither form of the
//! client has to block a runtime for, and sees the broker's machine through another
//! (`Broker`, in `broker.rs`), so one coordinator serves both brokers. Application
//! calls run in the caller's thread or task through the transport's `send`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::{
    Connection, Error, FencingToken, GenerationStore, Lease, RecoveryRequests, Redis, Sealing,
    Subscriber,
};
#[cfg(feature = "async")]
use broker_session_hyper::{Client as AsyncClient, HttpClient as AsyncHttpClient};
use broker_session_ureq::broker_session::driver::SessionEvent;
use broker_session_ureq::broker_session::ig::IgRole;
use broker_session_ureq::broker_session::{Event, Machine};
use broker_session_ureq::{
    Client, Error as TransportError, HttpClient, IgConfig, IgSession, http, now, os_seed,
};
#[cfg(feature = "async")]
use tokio::runtime::Handle;

/// How long the coordinator waits for a session event before it looks at its other
/// sources (announcements, lease changes, timers): the extra latency of an adoption
/// or a recovery request.
const TICK: Duration = Duration::from_millis(10);

/// The longest the lease thread sleeps between looks at the stop flag.
const LEASE_SLEEP: Duration = Duration::from_millis(50);

/// How many [`FleetEvent`]s are kept for [`SharedIgSession::drain_events`]; the oldest
/// is dropped first.
const EVENT_CAPACITY: usize = 256;

/// How a process takes part in a shared session.
///
/// ```
/// use broker_session_redis::{Sealing, SealingKey, SharedConfig};
/// use std::time::Duration;
///
/// let mut config = SharedConfig::new("ig-live-ABC123", Sealing::Sealed(SealingKey::from_bytes([7; 32])));
/// config.lease_ttl = Duration::from_secs(10);
/// assert_eq!(config.poll_interval, Duration::from_secs(5));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct SharedConfig {
    /// One namespace per broker login (e.g. `ig-live-<account>`); every process of the
    /// fleet uses the same one.
    pub namespace: String,
    /// This process's name in the lease (default `<hostname>/<pid>`), for operators.
    pub process: String,
    /// How long the lease lasts without renewal (default 15 s). A dead owner is
    /// replaced within about this long; the owner renews at a third of it.
    pub lease_ttl: Duration,
    /// How often a follower checks the stored generation, and the owner the recovery
    /// requests, besides pub/sub (default 5 s).
    pub poll_interval: Duration,
    /// How snapshots are sealed; every process needs the same key.
    pub sealing: Sealing,
}

impl SharedConfig {
    /// The defaults for `namespace`, sealed (or not) as `sealing` says.
    pub fn new(namespace: impl Into<String>, sealing: Sealing) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
        Self {
            namespace: namespace.into(),
            process: format!("{host}/{}", std::process::id()),
            lease_ttl: Duration::from_secs(15),
            poll_interval: Duration::from_secs(5),
            sealing,
        }
    }
}

/// What a shared session ([`SharedIgSession`], `SharedIbkrSession`) did, for logs and
/// metrics. No variant holds a secret. `M` is the broker's session machine: IG's by
/// default, `FleetEvent<IbkrSession>` for an IBKR fleet.
#[non_exhaustive]
pub enum FleetEvent<M: Machine = IgSession> {
    /// This process took the lease and now owns the session.
    Owning {
        /// The lease's fencing token.
        token: FencingToken,
    },
    /// As the new owner, this process resumed from the stored credentials, without a
    /// login.
    Resumed {
        /// The generation resumed.
        generation: u64,
    },
    /// As the owner, this process logged in (IBKR: connected, with a new live session
    /// token) because nothing usable was stored.
    LoggedIn,
    /// The owner published a credential generation.
    Published {
        /// The generation.
        generation: u64,
    },
    /// A follower adopted a generation.
    Adopted {
        /// The generation.
        generation: u64,
    },
    /// A follower asked the owner to recover a refused generation.
    RecoveryRequested {
        /// The refused generation.
        refused: u64,
        /// Whether this was the first request for it (later ones are collapsed).
        first: bool,
    },
    /// The owner started (or joined) a recovery a follower asked for.
    Recovering {
        /// The refused generation.
        refused: u64,
    },
    /// This process stopped owning the session.
    Following {
        /// Why.
        reason: &'static str,
    },
    /// Something failed; the session goes on (retrying where it can).
    Failed(Error),
    /// An event of the session itself (state changes, completions, loss).
    Session(SessionEvent<M>),
}

impl<M: Machine> fmt::Debug for FleetEvent<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owning { token } => f.debug_struct("Owning").field("token", token).finish(),
            Self::Resumed { generation } => f
                .debug_struct("Resumed")
                .field("generation", generation)
                .finish(),
            Self::LoggedIn => f.write_str("LoggedIn"),
            Self::Published { generation } => f
                .debug_struct("Published")
                .field("generation", generation)
                .finish(),
            Self::Adopted { generation } => f
                .debug_struct("Adopted")
                .field("generation", generation)
                .finish(),
            Self::RecoveryRequested { refused, first } => f
                .debug_struct("RecoveryRequested")
                .field("refused", refused)
                .field("first", first)
                .finish(),
            Self::Recovering { refused } => f
                .debug_struct("Recovering")
                .field("refused", refused)
                .finish(),
            Self::Following { reason } => {
                f.debug_struct("Following").field("reason", reason).finish()
            }
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            Self::Session(e) => f.debug_tuple("Session").field(e).finish(),
        }
    }
}

impl<M: Machine> fmt::Display for FleetEvent<M>
where
    M::State: fmt::Display,
    M::Outcome: fmt::Display,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owning { token } => write!(f, "owner (fencing token {token})"),
            Self::Resumed { generation } => {
                write!(f, "resumed generation {generation} without logging in")
            }
            Self::LoggedIn => f.write_str("logged in"),
            Self::Published { generation } => write!(f, "published generation {generation}"),
            Self::Adopted { generation } => write!(f, "adopted generation {generation}"),
            Self::RecoveryRequested { refused, first } => write!(
                f,
                "asked for a recovery of generation {refused}{}",
                if *first { "" } else { " (already asked)" }
            ),
            Self::Recovering { refused } => write!(f, "recovering generation {refused}"),
            Self::Following { reason } => write!(f, "following: {reason}"),
            Self::Failed(e) => write!(f, "failed: {e}"),
            Self::Session(e) => write!(f, "session: {e}"),
        }
    }
}

/// What the handle and the threads share.
struct Shared<M: Machine> {
    stop: AtomicBool,
    /// Set when the coordinator has ended: the lease is given up only then, so that
    /// credentials the owner obtained just before it stopped are still published.
    coordinator_done: AtomicBool,
    events: Mutex<VecDeque<FleetEvent<M>>>,
    /// The lease while this process holds it.
    lease: Mutex<Option<Lease>>,
}

impl<M: Machine> Shared<M> {
    fn push(&self, event: FleetEvent<M>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() >= EVENT_CAPACITY {
            events.pop_front();
        }
        events.push_back(event);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Gives the lease up, if this process holds it: best effort (an unreachable
    /// Redis lets it lapse at its TTL instead).
    fn release_lease(&self, conn: &mut Connection) {
        let lease = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(lease) = lease {
            let _ = lease.release(conn);
        }
    }
}

/// Marks the coordinator ended when dropped, even by a panic.
struct Done<M: Machine>(Arc<Shared<M>>);

impl<M: Machine> Drop for Done<M> {
    fn drop(&mut self) {
        self.0.coordinator_done.store(true, Ordering::Release);
    }
}

/// Lease changes, from the lease thread to the coordinator.
enum LeaseChange {
    Acquired(FencingToken),
    Lost(&'static str),
}

/// What the coordinator needs of a session client: the blocking client offers it as
/// is; the async one through [`AsyncHandle`]. No method waits on a runtime, so the
/// coordinator never blocks one.
pub(crate) trait SessionHandle<M: Machine>: Send + 'static {
    fn with_machine<T>(&self, f: impl FnOnce(&mut M) -> T) -> T;
    fn submit(&self, intent: M::Intent) -> Result<(), TransportError>;
    fn service(&self);
    /// Waits up to `timeout` for the next event, running the session's timers.
    fn next_event(&self, timeout: Duration) -> Option<SessionEvent<M>>;
    /// Runs `intent` to its end.
    fn run(&self, intent: M::Intent) -> Result<M::Outcome, TransportError>;
    /// Takes the buffered events without driving the machine (no timer runs).
    fn take_events(&self) -> Vec<SessionEvent<M>>;
    /// A way for the lease thread to bound the owner's authority by the lease's end
    /// (`set_lease_deadline` of the session) without waiting for the coordinator.
    fn lease_deadline_setter(&self) -> LeaseDeadline;
}

/// Sets the session's lease deadline (see [`SessionHandle::lease_deadline_setter`]).
type LeaseDeadline = Box<dyn Fn(Instant) + Send>;

impl<M> SessionHandle<M> for Client<M>
where
    M: Broker,
    M::Intent: Send,
    M::State: Send,
    M::Outcome: Send,
{
    fn with_machine<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        Self::with_machine(self, f)
    }

    fn submit(&self, intent: M::Intent) -> Result<(), TransportError> {
        Self::submit(self, intent).map(drop)
    }

    fn service(&self) {
        let _ = Self::service(self);
    }

    fn next_event(&self, timeout: Duration) -> Option<SessionEvent<M>> {
        Self::next_event(self, timeout)
    }

    fn run(&self, intent: M::Intent) -> Result<M::Outcome, TransportError> {
        Self::run(self, intent)
    }

    fn take_events(&self) -> Vec<SessionEvent<M>> {
        Self::drain_events(self)
    }

    fn lease_deadline_setter(&self) -> LeaseDeadline {
        let client = self.clone();
        Box::new(move |until| client.with_machine(|m| m.set_lease_deadline(Some(until))))
    }
}

/// The async client seen from the coordinator's std thread. Its session requests are
/// exchanged by tasks on the client's runtime; this side only drives the machine
/// (`service`, which also runs the owner's timers, as the keep-alive task would) and
/// reads its event buffer, sleeping between looks. It never calls `block_on` and
/// sets no tokio timer, so it works on any runtime flavour and cannot panic when
/// the runtime shuts down first.
#[cfg(feature = "async")]
pub(crate) struct AsyncHandle<M: Machine> {
    client: AsyncClient<M>,
    /// Events drained from the client but not yet handed out.
    pending: Mutex<VecDeque<SessionEvent<M>>>,
}

/// How long [`AsyncHandle`] sleeps between looks at the session while it runs an
/// operation (a takeover's resume or login).
#[cfg(feature = "async")]
const RUN_POLL: Duration = Duration::from_millis(2);

#[cfg(feature = "async")]
impl<M> AsyncHandle<M>
where
    M: Broker,
    M::Intent: Send,
    M::State: Send,
    M::Outcome: Send,
{
    pub(crate) fn new(client: AsyncClient<M>) -> Self {
        Self {
            client,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<SessionEvent<M>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drives the machine, then takes one event.
    fn poll_event(&self) -> Option<SessionEvent<M>> {
        let _ = self.client.service();
        let mut pending = self.pending();
        pending.extend(self.client.drain_events());
        pending.pop_front()
    }
}

#[cfg(feature = "async")]
impl<M> SessionHandle<M> for AsyncHandle<M>
where
    M: Broker,
    M::Intent: Send,
    M::State: Send,
    M::Outcome: Send,
{
    fn with_machine<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        self.client.with_machine(f)
    }

    fn submit(&self, intent: M::Intent) -> Result<(), TransportError> {
        self.client.submit(intent).map(drop)
    }

    fn service(&self) {
        let _ = self.client.service();
    }

    fn next_event(&self, timeout: Duration) -> Option<SessionEvent<M>> {
        if let Some(event) = self.poll_event() {
            return Some(event);
        }
        thread::sleep(timeout);
        self.poll_event()
    }

    fn run(&self, intent: M::Intent) -> Result<M::Outcome, TransportError> {
        let op = self.client.submit(intent)?;
        loop {
            let _ = self.client.service();
            let mut pending = self.pending();
            pending.extend(self.client.drain_events());
            let done = pending
                .iter()
                .position(|e| matches!(e, Event::Completed { op: o, .. } if *o == op));
            if let Some(i) = done
                && let Some(Event::Completed { result, .. }) = pending.remove(i)
            {
                return result.map_err(TransportError::from_session);
            }
            drop(pending);
            thread::sleep(RUN_POLL);
        }
    }

    fn take_events(&self) -> Vec<SessionEvent<M>> {
        let mut pending = self.pending();
        pending.extend(self.client.drain_events());
        pending.drain(..).collect()
    }

    fn lease_deadline_setter(&self) -> LeaseDeadline {
        let client = self.client.clone();
        Box::new(move |until| client.with_machine(|m| m.set_lease_deadline(Some(until))))
    }
}

/// A process's part in the fleet, whatever the transport: the threads and what they
/// share with the handle.
pub(crate) struct Fleet<M: Machine> {
    shared: Arc<Shared<M>>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl<M> Fleet<M>
where
    M: Broker,
    M::Intent: Send,
    M::State: Send,
    M::Outcome: Send,
{
    /// Joins the fleet of `config.namespace` with `client` (see
    /// [`SharedIgSession::start`]); blocks for the takeover when no process owns the
    /// session.
    pub(crate) fn join<C: SessionHandle<M>>(
        client: C,
        redis: &Redis,
        config: SharedConfig,
    ) -> Result<Self, Error> {
        let store = GenerationStore::new(&config.namespace, config.sealing)?;
        let requests = RecoveryRequests::new(&config.namespace)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            coordinator_done: AtomicBool::new(false),
            events: Mutex::new(VecDeque::new()),
            lease: Mutex::new(None),
        });
        let mut conn = redis.connect()?;
        // Subscribe first, then read: no announcement falls in between.
        let generations = store.subscribe(redis)?;
        let recoveries = requests.subscribe(redis)?;
        let first = Lease::try_acquire(
            &mut conn,
            &config.namespace,
            &config.process,
            config.lease_ttl,
        )?;
        let first_token = first.as_ref().map(Lease::token);
        let set_deadline = client.lease_deadline_setter();
        if let Some(lease) = &first {
            set_deadline(lease.expires_by());
        }
        *shared.lease.lock().unwrap_or_else(PoisonError::into_inner) = first;
        let (changes_tx, changes) = mpsc::channel();
        let mut coordinator = Coordinator {
            client,
            conn,
            store,
            requests,
            generations,
            recoveries,
            changes,
            shared: Arc::clone(&shared),
            poll_interval: config.poll_interval,
            next_poll: Instant::now(),
            handled_recovery: 0,
            unpublished: None,
            leading: false,
        };
        coordinator.adopt_latest();
        // Apply the adoption now: the session holds the stored generation on return.
        coordinator.client.service();
        if let Some(token) = first_token {
            coordinator.take_over(token)?;
            // Publish the login's credentials before returning: a process that
            // joins next adopts them at once.
            for event in coordinator.client.take_events() {
                coordinator.on_event(event);
            }
        }
        let lease_thread = LeaseThread {
            conn: redis.connect()?,
            namespace: config.namespace,
            process: config.process,
            ttl: config.lease_ttl,
            retry: config.lease_ttl.min(config.poll_interval) / 4,
            changes: changes_tx,
            set_deadline,
            shared: Arc::clone(&shared),
        };
        let fleet = Self {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        // From here on, an error drops `fleet`, which stops what was started.
        let spawned = [
            thread::Builder::new()
                .name("broker-session-redis-lease".into())
                .spawn(move || lease_thread.run()),
            thread::Builder::new()
                .name("broker-session-redis-coordinator".into())
                .spawn(move || coordinator.run()),
        ];
        for thread in spawned {
            let thread = thread.map_err(|_| Error::Session(TransportError::ThreadSpawn))?;
            fleet
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(thread);
        }
        Ok(fleet)
    }

    pub(crate) fn drain_events(&self) -> Vec<FleetEvent<M>> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }

    /// Stops the threads, waits for them, then makes the session a follower.
    pub(crate) fn stop<C: SessionHandle<M>>(&self, client: &C) {
        self.signal_stop();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
        let generation = client.with_machine(|m| m.generation());
        let _ = client.submit(M::follow(generation));
        client.service();
    }
}

impl<M: Machine> Fleet<M> {
    /// Tells the threads to stop (the lease thread gives the lease up as it ends).
    pub(crate) fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

impl<M: Machine> Drop for Fleet<M> {
    /// A fleet member dropped without `stop` (an async start whose future was
    /// dropped, an error half-way through a start) still leaves: its threads end
    /// and the lease is given up.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The follower session every process starts with.
fn follower(ig: IgConfig) -> Result<IgSession, Error> {
    IgSession::follower(ig, os_seed().map_err(Error::Session)?, now())
        .map_err(|e| Error::Session(TransportError::SessionConfig(e)))
}

/// One IG session shared by every process that starts one on the same namespace:
/// one login, one refresh per token lifetime, one recovery per refusal, for the whole
/// fleet. This is the blocking form; [`AsyncSharedIgSession`] is the async one, and
/// both can share one namespace.
///
/// ```no_run
/// use broker_session_redis::{Redis, Sealing, SealingKey, SharedConfig, SharedIgSession};
/// use broker_session_ureq::{Config, FromEnv, HttpClient, IgConfig, http};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let key = SealingKey::from_slice(&std::fs::read("/run/secrets/session-key")?).ok_or("bad key")?;
/// let shared = SharedIgSession::start(
///     IgConfig::from_env()?,
///     &HttpClient::new(&Config::default())?,
///     &redis,
///     SharedConfig::new("ig-live-ABC123", Sealing::Sealed(key)),
/// )?;
/// let accounts = http::Request::get("/accounts").header("Version", "1").body(Vec::new())?;
/// println!("{}", shared.send(accounts)?.status());
/// for event in shared.drain_events() {
///     println!("{event}");
/// }
/// # Ok(())
/// # }
/// ```
pub struct SharedIgSession {
    client: Client<IgSession>,
    fleet: Fleet<IgSession>,
}

impl SharedIgSession {
    /// Joins the fleet of `config.namespace`: adopts the stored credentials, and if no
    /// process owns the session, takes the lease and leads it (resuming from the
    /// stored snapshot when IG still accepts it, else logging in) before returning.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`], [`Error::InvalidTtl`], [`Error::Redis`] when Redis
    /// cannot be reached at start, [`Error::Session`] when the IG configuration is
    /// unusable or the owner's login fails.
    pub fn start(
        ig: IgConfig,
        http: &HttpClient,
        redis: &Redis,
        config: SharedConfig,
    ) -> Result<Self, Error> {
        let client = Client::with_http(follower(ig)?, http.clone());
        // The coordinator reads the session's events from its start.
        client.subscribe();
        let fleet = Fleet::join(client.clone(), redis, config)?;
        Ok(Self { client, fleet })
    }

    /// Sends an application request with the fleet's current credentials (see
    /// [`Client::send`]). When they are refused, the call waits (up to the session's
    /// request deadline) for the owner to publish newer ones (asking it to recover
    /// them, once for the whole fleet) and replays once.
    ///
    /// # Errors
    ///
    /// As [`Client::send`]; a wait for newer credentials that ends without them is
    /// [`broker_session_ureq::Error::Session`] with
    /// [`NoNewerCredentials`](broker_session_ureq::broker_session::Error::NoNewerCredentials).
    pub fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, broker_session_ureq::Error> {
        self.client.send(request)
    }

    /// The transport client of this process's session (state, base URL, its
    /// machine's getters).
    pub fn client(&self) -> &Client<IgSession> {
        &self.client
    }

    /// Whether this process owns the session now.
    pub fn is_owner(&self) -> bool {
        self.client.with_machine(|m| m.role()) == IgRole::Owner
    }

    /// The credential generation this process uses.
    pub fn generation(&self) -> u64 {
        self.client.with_machine(|m| m.generation())
    }

    /// Takes what happened since the last call, oldest first (at most the last 256).
    pub fn drain_events(&self) -> Vec<FleetEvent<IgSession>> {
        self.fleet.drain_events()
    }

    /// Leaves the fleet: stops the threads and gives the lease up if this process
    /// holds it, so another process takes over at once (resuming the session; nothing
    /// is logged out). The session stops acting as owner: calls made afterwards wait
    /// for credentials that no longer come, and fail. Dropping the handle does the
    /// same.
    pub fn shutdown(&self) {
        self.fleet.stop(&self.client);
    }
}

impl Drop for SharedIgSession {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for SharedIgSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedIgSession")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The async form of [`SharedIgSession`], on the hyper transport
/// (`broker-session-hyper`): the same fleet, the same coordination (the lease and
/// coordinator threads are the same std threads), with an `async fn`
/// [`send`](Self::send) that runs on your tokio runtime. Async and blocking
/// processes can share one namespace. Needs the `async` feature (on by default).
///
/// Keep the runtime running while the session lives: its session requests (the
/// owner's login and refreshes) are exchanged by tasks on it.
///
/// ```no_run
/// use broker_session_hyper::{Config, FromEnv, HttpClient, IgConfig, http};
/// use broker_session_redis::{AsyncSharedIgSession, Redis, Sealing, SealingKey, SharedConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let key = SealingKey::from_slice(&std::fs::read("/run/secrets/session-key")?).ok_or("bad key")?;
/// let shared = AsyncSharedIgSession::start(
///     IgConfig::from_env()?,
///     &HttpClient::new(&Config::default())?,
///     &redis,
///     SharedConfig::new("ig-live-ABC123", Sealing::Sealed(key)),
/// )
/// .await?;
/// let accounts = http::Request::get("/accounts").header("Version", "1").body(Vec::new())?;
/// println!("{}", shared.send(accounts).await?.status());
/// shared.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "async")]
pub struct AsyncSharedIgSession {
    client: AsyncClient<IgSession>,
    fleet: Arc<Fleet<IgSession>>,
    runtime: Handle,
}

#[cfg(feature = "async")]
impl AsyncSharedIgSession {
    /// Joins the fleet of `config.namespace`, as [`SharedIgSession::start`] does; the
    /// blocking part (Redis, and the takeover's resume or login when no process owns
    /// the session) runs on the runtime's blocking pool. Call it inside a tokio
    /// runtime.
    ///
    /// ```no_run
    /// # async fn demo(ig: broker_session_hyper::IgConfig, http: broker_session_hyper::HttpClient,
    /// #               redis: broker_session_redis::Redis, config: broker_session_redis::SharedConfig)
    /// #               -> Result<(), broker_session_redis::Error> {
    /// let shared = broker_session_redis::AsyncSharedIgSession::start(ig, &http, &redis, config).await?;
    /// println!("owner: {}", shared.is_owner());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`SharedIgSession::start`], and [`Error::Session`] with
    /// [`NoRuntime`](broker_session_hyper::Error::NoRuntime) outside a tokio runtime
    /// (or [`ThreadSpawn`](broker_session_hyper::Error::ThreadSpawn) if the blocking
    /// pool could not run the start).
    pub async fn start(
        ig: IgConfig,
        http: &AsyncHttpClient,
        redis: &Redis,
        config: SharedConfig,
    ) -> Result<Self, Error> {
        let runtime =
            Handle::try_current().map_err(|_| Error::Session(TransportError::NoRuntime))?;
        let client = AsyncClient::with_http(follower(ig)?, http.clone()).map_err(Error::Session)?;
        // The coordinator reads the session's events from its start.
        client.subscribe();
        let handle = AsyncHandle::new(client.clone());
        let redis = redis.clone();
        let fleet = runtime
            .spawn_blocking(move || Fleet::join(handle, &redis, config))
            .await
            .map_err(|_| Error::Session(TransportError::ThreadSpawn))??;
        Ok(Self {
            client,
            fleet: Arc::new(fleet),
            runtime,
        })
    }

    /// Sends an application request with the fleet's current credentials (see
    /// `broker_session_hyper::Client::send`). When they are refused, the call waits
    /// (up to the session's request deadline) for the owner to publish newer ones
    /// (asking it to recover them, once for the whole fleet) and replays once.
    ///
    /// ```no_run
    /// # async fn demo(shared: &broker_session_redis::AsyncSharedIgSession) -> Result<(), Box<dyn std::error::Error>> {
    /// let request = broker_session_hyper::http::Request::get("/accounts")
    ///     .header("Version", "1")
    ///     .body(Vec::new())?;
    /// let response = shared.send(request).await?;
    /// assert!(response.status().is_success());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As the hyper client's `send`; a wait for newer credentials that ends without
    /// them is [`broker_session_hyper::Error::Session`] with
    /// [`NoNewerCredentials`](broker_session_hyper::broker_session::Error::NoNewerCredentials).
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        self.client.send(request).await
    }

    /// The async transport client of this process's session (state, base URL, its
    /// machine's getters).
    ///
    /// ```no_run
    /// # fn demo(shared: &broker_session_redis::AsyncSharedIgSession) {
    /// println!("{:?}", shared.client().state());
    /// # }
    /// ```
    pub fn client(&self) -> &AsyncClient<IgSession> {
        &self.client
    }

    /// Whether this process owns the session now.
    ///
    /// ```no_run
    /// # fn demo(shared: &broker_session_redis::AsyncSharedIgSession) {
    /// if shared.is_owner() {
    ///     println!("this process leads the session");
    /// }
    /// # }
    /// ```
    pub fn is_owner(&self) -> bool {
        self.client.with_machine(|m| m.role()) == IgRole::Owner
    }

    /// The credential generation this process uses.
    ///
    /// ```no_run
    /// # fn demo(shared: &broker_session_redis::AsyncSharedIgSession) {
    /// println!("generation {}", shared.generation());
    /// # }
    /// ```
    pub fn generation(&self) -> u64 {
        self.client.with_machine(|m| m.generation())
    }

    /// Takes what happened since the last call, oldest first (at most the last 256).
    ///
    /// ```no_run
    /// # fn demo(shared: &broker_session_redis::AsyncSharedIgSession) {
    /// for event in shared.drain_events() {
    ///     println!("{event}");
    /// }
    /// # }
    /// ```
    pub fn drain_events(&self) -> Vec<FleetEvent<IgSession>> {
        self.fleet.drain_events()
    }

    /// Leaves the fleet, as [`SharedIgSession::shutdown`], and waits (without
    /// blocking the runtime) until the threads have stopped and the lease is given
    /// up. Dropping the handle does the same in the background.
    ///
    /// ```no_run
    /// # async fn demo(shared: broker_session_redis::AsyncSharedIgSession) {
    /// shared.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        let fleet = Arc::clone(&self.fleet);
        let handle = AsyncHandle::new(self.client.clone());
        if self
            .runtime
            .spawn_blocking(move || fleet.stop(&handle))
            .await
            .is_err()
        {
            self.fleet.signal_stop();
        }
    }
}

#[cfg(feature = "async")]
impl Drop for AsyncSharedIgSession {
    fn drop(&mut self) {
        // Joining here could block a runtime thread the threads wait on: stop them
        // at once and join them on a thread of their own.
        self.fleet.signal_stop();
        let fleet = Arc::clone(&self.fleet);
        let handle = AsyncHandle::new(self.client.clone());
        let _ = thread::Builder::new()
            .name("broker-session-redis-stop".into())
            .spawn(move || fleet.stop(&handle));
    }
}

#[cfg(feature = "async")]
impl fmt::Debug for AsyncSharedIgSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSharedIgSession")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Acquires, renews and gives up the lease; tells the coordinator of each change.
struct LeaseThread<M: Machine> {
    conn: Connection,
    namespace: String,
    process: String,
    ttl: Duration,
    retry: Duration,
    changes: mpsc::Sender<LeaseChange>,
    /// Bounds the session's authority by the lease's end, at each acquisition and
    /// renewal: a session driven after that end steps down by itself.
    set_deadline: LeaseDeadline,
    shared: Arc<Shared<M>>,
}

impl<M: Machine> LeaseThread<M> {
    fn run(mut self) {
        let mut next = Instant::now();
        while !self.shared.stopped() {
            let now = Instant::now();
            if now >= next {
                next = self.step(now);
            }
            thread::sleep(
                next.saturating_duration_since(Instant::now())
                    .min(LEASE_SLEEP),
            );
        }
        // Give the lease up once the coordinator has published what it had (bounded
        // by the lease's own lifetime: it would lapse then anyway).
        let end = Instant::now() + self.ttl;
        while !self.shared.coordinator_done.load(Ordering::Acquire) && Instant::now() < end {
            thread::sleep(Duration::from_millis(2));
        }
        self.shared.release_lease(&mut self.conn);
    }

    /// One acquisition attempt or renewal; returns when to come back.
    fn step(&mut self, now: Instant) -> Instant {
        let mut slot = self
            .shared
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            None => {
                match Lease::try_acquire(&mut self.conn, &self.namespace, &self.process, self.ttl) {
                    Ok(Some(lease)) => {
                        let token = lease.token();
                        let renew = now + lease.renew_after();
                        (self.set_deadline)(lease.expires_by());
                        *slot = Some(lease);
                        let _ = self.changes.send(LeaseChange::Acquired(token));
                        return renew;
                    }
                    Ok(None) => {}
                    Err(e) => self.shared.push(FleetEvent::Failed(e)),
                }
                now + self.retry
            }
            Some(lease) if lease.expires_by() <= now => {
                *slot = None;
                let _ = self
                    .changes
                    .send(LeaseChange::Lost("the lease expired before it was renewed"));
                now + self.retry
            }
            Some(lease) => match lease.renew(&mut self.conn) {
                Ok(()) => {
                    (self.set_deadline)(lease.expires_by());
                    now + lease.renew_after()
                }
                Err(Error::LeaseLost { .. }) => {
                    *slot = None;
                    let _ = self
                        .changes
                        .send(LeaseChange::Lost("another process holds the lease"));
                    now + self.retry
                }
                Err(e) => {
                    // Redis did not answer: try again soon, until the lease lapses.
                    self.shared.push(FleetEvent::Failed(e));
                    now + self.retry
                }
            },
        }
    }
}

/// Publishes, adopts, forwards recovery requests, takes over and steps down; the
/// same logic whichever transport the session runs on.
struct Coordinator<M: Machine, C: SessionHandle<M>> {
    client: C,
    conn: Connection,
    store: GenerationStore,
    requests: RecoveryRequests,
    generations: Subscriber,
    recoveries: Subscriber,
    changes: mpsc::Receiver<LeaseChange>,
    shared: Arc<Shared<M>>,
    poll_interval: Duration,
    next_poll: Instant,
    /// The highest refused generation handed to the session as a recovery.
    handled_recovery: u64,
    /// A generation whose publication failed for want of Redis; tried again.
    unpublished: Option<u64>,
    /// Whether this coordinator made the session the owner (and has not stepped it
    /// down since): an owner that follows while this is set stepped down by itself,
    /// its lease having ended.
    leading: bool,
}

impl<M, C> Coordinator<M, C>
where
    M: Broker,
    M::Intent: Send,
    M::State: Send,
    M::Outcome: Send,
    C: SessionHandle<M>,
{
    fn run(mut self) {
        let _done = Done(Arc::clone(&self.shared));
        self.coordinate();
        // Credentials obtained just before the stop (an event handled no longer)
        // are still published, while the lease is held: without the machine being
        // driven again, so no new refresh starts now.
        for event in self.client.take_events() {
            self.on_event(event);
        }
    }

    fn coordinate(&mut self) {
        while !self.shared.stopped() {
            if self.is_owner() && !self.lease_held() {
                // Checked before the session is driven: an owner that was paused past
                // its lease (and is running again) must not refresh on its own.
                self.step_down("the lease expired before it was renewed");
            }
            if self.leading && !self.is_owner() {
                // The session stepped down by itself at its lease deadline (driven by
                // an application call before this thread ran again).
                self.leading = false;
                self.shared.release_lease(&mut self.conn);
                self.shared.push(FleetEvent::Following {
                    reason: "the lease ended before it was renewed",
                });
                self.adopt_latest();
            }
            // Drives the session (its timers too) and waits a little for an event.
            if let Some(event) = self.client.next_event(TICK) {
                self.on_event(event);
                continue;
            }
            while let Ok(change) = self.changes.try_recv() {
                match change {
                    LeaseChange::Acquired(token) => {
                        if let Err(e) = self.take_over(token) {
                            self.shared.push(FleetEvent::Failed(e));
                        }
                    }
                    LeaseChange::Lost(reason) => self.step_down(reason),
                }
            }
            let owner = self.is_owner();
            let mut adopt = false;
            while let Ok(Some(_)) = self.generations.try_recv() {
                adopt = !owner;
            }
            if adopt {
                self.adopt_latest();
            }
            let mut wanted = None;
            while let Ok(Some(crate::Notice::Generation(g))) = self.recoveries.try_recv() {
                wanted = wanted.max(Some(g));
            }
            if owner && let Some(refused) = wanted {
                self.recover(refused);
            }
            if owner && let Some(g) = self.unpublished.take() {
                self.publish(g);
            }
            if Instant::now() >= self.next_poll {
                self.next_poll = Instant::now() + self.poll_interval;
                if owner {
                    match self.requests.latest(&mut self.conn) {
                        Ok(Some(refused)) => self.recover(refused),
                        Ok(None) => {}
                        Err(e) => self.shared.push(FleetEvent::Failed(e)),
                    }
                } else {
                    self.adopt_latest();
                }
            }
        }
    }

    fn is_owner(&self) -> bool {
        self.client.with_machine(|m| m.is_owner())
    }

    fn lease_held(&self) -> bool {
        self.shared
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|l| l.expires_by() > Instant::now())
    }

    fn on_event(&mut self, event: SessionEvent<M>) {
        match event {
            Event::CredentialsChanged { generation } => self.publish(generation),
            Event::CredentialsWanted { refused } => {
                match self.requests.request(&mut self.conn, refused) {
                    Ok(first) => self
                        .shared
                        .push(FleetEvent::RecoveryRequested { refused, first }),
                    Err(e) => self.shared.push(FleetEvent::Failed(e)),
                }
                // Newer credentials may be stored already (the announcement raced).
                self.adopt_latest();
            }
            // The coordinator's own adoptions: reported as `Adopted`.
            Event::Completed {
                result: Ok(outcome),
                ..
            } if M::is_adoption(&outcome) => {}
            other => self.shared.push(FleetEvent::Session(other)),
        }
    }

    /// Publishes the session's snapshot as `generation`, if this process owns the
    /// session; steps down when fenced off.
    fn publish(&mut self, generation: u64) {
        let Some(bytes) = self.client.with_machine(|m| m.snapshot_bytes()) else {
            return;
        };
        let result = {
            let slot = self
                .shared
                .lease
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                Some(lease) => self
                    .store
                    .publish(&mut self.conn, lease, generation, &bytes),
                None => Err(Error::NotOwner {
                    namespace: self.store.namespace().to_owned(),
                }),
            }
        };
        match result {
            Ok(()) => self.shared.push(FleetEvent::Published { generation }),
            Err(Error::NotOwner { .. }) => {
                // The lease is no longer ours whatever this process believed.
                *self
                    .shared
                    .lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.step_down("fenced off: another process owns the lease");
            }
            Err(e @ Error::Redis { .. }) => {
                self.unpublished = Some(generation);
                self.shared.push(FleetEvent::Failed(e));
            }
            Err(e) => self.shared.push(FleetEvent::Failed(e)),
        }
    }

    /// Adopts the stored generation if it is newer than the session's (or the session
    /// holds nothing).
    fn adopt_latest(&mut self) {
        let (generation, holding) = self.client.with_machine(|m| (m.generation(), m.holds()));
        let seen = if holding {
            generation
        } else {
            generation.saturating_sub(1)
        };
        let stored = match self.store.poll_latest(&mut self.conn, seen) {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                self.shared.push(FleetEvent::Failed(e));
                return;
            }
        };
        let Some(intent) = M::adopt(stored.generation(), stored.bytes()) else {
            self.shared
                .push(FleetEvent::Failed(Error::SnapshotMalformed {
                    namespace: self.store.namespace().to_owned(),
                }));
            return;
        };
        // Refused only if this process became the owner meanwhile: owners do not adopt.
        if self.client.submit(intent).is_ok() {
            self.shared.push(FleetEvent::Adopted {
                generation: stored.generation(),
            });
        }
    }

    /// Hands a follower's recovery request to the owning session, once per generation.
    fn recover(&mut self, refused: u64) {
        if refused <= self.handled_recovery && self.handled_recovery != 0 {
            return;
        }
        if refused < self.client.with_machine(|m| m.generation()) {
            return;
        }
        self.handled_recovery = refused;
        if self.client.submit(M::recover(refused)).is_ok() {
            self.shared.push(FleetEvent::Recovering { refused });
        }
    }

    /// Leads the session after taking the lease: adopt what is stored, then resume
    /// from it, or log in when there is nothing to resume.
    fn take_over(&mut self, token: FencingToken) -> Result<(), Error> {
        self.shared.push(FleetEvent::Owning { token });
        self.adopt_latest();
        // Let the adoption land before leading.
        self.client.service();
        let floor = match self.store.current_generation(&mut self.conn) {
            Ok(g) => g,
            Err(e) => {
                self.shared.push(FleetEvent::Failed(e));
                self.client.with_machine(|m| m.generation())
            }
        };
        self.handled_recovery = 0;
        self.next_poll = Instant::now();
        self.leading = true;
        match self.client.run(M::lead(floor)) {
            Ok(_) => {
                let generation = self.client.with_machine(|m| m.generation());
                self.shared.push(FleetEvent::Resumed { generation });
                // Redis may have lost the snapshot (a restart without persistence):
                // store the resumed credentials again for processes that join.
                if self
                    .store
                    .current_generation(&mut self.conn)
                    .is_ok_and(|stored| stored < generation)
                {
                    self.publish(generation);
                }
                Ok(())
            }
            Err(_) => match self.client.run(M::obtain()) {
                Ok(_) => {
                    self.shared.push(FleetEvent::LoggedIn);
                    Ok(())
                }
                Err(e) => {
                    // Let another process try: give the ownership up.
                    self.shared.release_lease(&mut self.conn);
                    self.step_down("the owner's login failed");
                    Err(Error::Session(e))
                }
            },
        }
    }

    /// Stops acting as the owner: the session follows the stored generation again.
    fn step_down(&mut self, reason: &'static str) {
        let was_leading = std::mem::take(&mut self.leading);
        if !self.is_owner() {
            if was_leading {
                // The session stepped down by itself at its lease deadline (driven by
                // an application call) between this thread's look and now: report it.
                self.shared.push(FleetEvent::Following { reason });
                self.adopt_latest();
            }
            return;
        }
        let generation = match self.store.current_generation(&mut self.conn) {
            Ok(g) => g,
            Err(_) => self.client.with_machine(|m| m.generation()),
        };
        let _ = self.client.submit(M::follow(generation));
        self.shared.push(FleetEvent::Following { reason });
        self.client.service();
        self.adopt_latest();
    }
}
