//! One IBKR session shared by a fleet of processes: [`SharedIbkrSession`] (blocking, on
//! the ureq transport) and `AsyncSharedIbkrSession` (on the hyper transport), on the
//! coordination of `shared.rs`.
//!
//! OAuth: the owner obtains the live session token, tickles, initialises and renews;
//! it publishes each token, sealed, and the followers sign their requests with it. A
//! dead owner's successor takes over with the stored token while it is valid: a
//! status check, no token request. Gateway: the gateway holds the brokerage session,
//! so nothing secret is published; a generation stands for one recovery of the
//! brokerage session, and only the owner tickles, checks the status, initialises and
//! logs out. Neither ever takes the brokerage session over (`compete=true`) by itself.

use std::fmt;
#[cfg(feature = "async")]
use std::sync::Arc;

#[cfg(feature = "async")]
use broker_session_hyper::{Client as AsyncClient, HttpClient as AsyncHttpClient};
use broker_session_ureq::broker_session::ibkr::IbkrRole;
use broker_session_ureq::{Client, Error as TransportError, HttpClient, IbkrConfig, IbkrSession};
use broker_session_ureq::{http, now, os_seed};

#[cfg(feature = "async")]
use tokio::runtime::Handle;

#[cfg(feature = "async")]
use crate::shared::AsyncHandle;
use crate::shared::Fleet;
use crate::{Error, FleetEvent, Redis, SharedConfig};

/// The follower session every process starts with.
fn follower(ibkr: IbkrConfig) -> Result<IbkrSession, Error> {
    IbkrSession::follower(ibkr, os_seed().map_err(Error::Session)?, now())
        .map_err(|e| Error::Session(TransportError::SessionConfig(e)))
}

/// One IBKR session shared by every process that starts one on the same namespace:
/// one live session token per token lifetime (OAuth), one process's tickles, one
/// recovery per refusal, for the whole fleet, and a take-over that neither asks for a
/// new token while the stored one is valid nor competes for the brokerage session.
/// Blocking, on the ureq transport.
///
/// ```no_run
/// use broker_session_redis::{Redis, Sealing, SealingKey, SharedConfig, SharedIbkrSession};
/// use broker_session_ureq::{Config, FromEnv, HttpClient, IbkrConfig, http};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let key = SealingKey::from_slice(&std::fs::read("/run/secrets/session-key")?).ok_or("bad key")?;
/// // Every process of the fleet runs this, with the same namespace and key.
/// let shared = SharedIbkrSession::start(
///     IbkrConfig::from_env()?,
///     &HttpClient::new(&Config::default())?,
///     &redis,
///     SharedConfig::new("ibkr-live-U1234567", Sealing::Sealed(key)),
/// )?;
/// let accounts = http::Request::get("/iserver/accounts").body(Vec::new())?;
/// println!("{}", shared.send(accounts)?.status());
/// for event in shared.drain_events() {
///     println!("{event}");
/// }
/// # Ok(())
/// # }
/// ```
pub struct SharedIbkrSession {
    client: Client<IbkrSession>,
    fleet: Fleet<IbkrSession>,
}

impl SharedIbkrSession {
    /// Joins the fleet of `config.namespace`: adopts what is stored, and if no process
    /// owns the session, takes the lease and leads it before returning: a status
    /// check with the stored live session token while it is valid (`ssodh/init` with
    /// `compete=false` if the brokerage session needs it), else a connect (OAuth: a
    /// new token).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`], [`Error::InvalidTtl`], [`Error::Redis`] when Redis
    /// cannot be reached at start, [`Error::Session`] when the IBKR configuration is
    /// unusable or the owner's connect fails.
    pub fn start(
        ibkr: IbkrConfig,
        http: &HttpClient,
        redis: &Redis,
        config: SharedConfig,
    ) -> Result<Self, Error> {
        let client = Client::with_http(follower(ibkr)?, http.clone());
        // The coordinator reads the session's events from its start.
        client.subscribe();
        let fleet = Fleet::join(client.clone(), redis, config)?;
        Ok(Self { client, fleet })
    }

    /// Sends an application request with the fleet's session (OAuth: signed with the
    /// current live session token; see [`Client::send`]). When it is refused (no
    /// session, no bridge), the call waits (up to the session's request deadline) for
    /// the owner to recover (asked once for the whole fleet) and replays once.
    ///
    /// # Errors
    ///
    /// As [`Client::send`]; a wait that ends without a newer generation is
    /// [`broker_session_ureq::Error::Session`] with
    /// [`NoNewerCredentials`](broker_session_ureq::broker_session::Error::NoNewerCredentials).
    pub fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        self.client.send(request)
    }

    /// The transport client of this process's session (state, base URL, its
    /// machine's getters).
    pub fn client(&self) -> &Client<IbkrSession> {
        &self.client
    }

    /// Whether this process owns the session now.
    pub fn is_owner(&self) -> bool {
        self.client.with_machine(|m| m.role()) == IbkrRole::Owner
    }

    /// The generation this process uses.
    pub fn generation(&self) -> u64 {
        self.client.with_machine(|m| m.generation())
    }

    /// Takes what happened since the last call, oldest first (at most the last 256).
    pub fn drain_events(&self) -> Vec<FleetEvent<IbkrSession>> {
        self.fleet.drain_events()
    }

    /// Leaves the fleet: stops the threads and gives the lease up if this process
    /// holds it, so another process takes over at once (nothing is logged out). The
    /// session stops acting as owner. Dropping the handle does the same.
    pub fn shutdown(&self) {
        self.fleet.stop(&self.client);
    }
}

impl Drop for SharedIbkrSession {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for SharedIbkrSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedIbkrSession")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// The async form of [`SharedIbkrSession`], on the hyper transport
/// (`broker-session-hyper`): the same fleet and coordination (the lease and
/// coordinator threads are std threads), with an `async fn` [`send`](Self::send) that
/// runs on your tokio runtime. Async and blocking processes can share one namespace.
/// Needs the `async` feature (on by default).
///
/// Keep the runtime running while the session lives: the owner's session requests
/// (token, status, tickles) are exchanged by tasks on it.
///
/// ```no_run
/// use broker_session_hyper::{Config, FromEnv, HttpClient, IbkrConfig, http};
/// use broker_session_redis::{AsyncSharedIbkrSession, Redis, Sealing, SealingKey, SharedConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let key = SealingKey::from_slice(&std::fs::read("/run/secrets/session-key")?).ok_or("bad key")?;
/// let shared = AsyncSharedIbkrSession::start(
///     IbkrConfig::from_env()?,
///     &HttpClient::new(&Config::default())?,
///     &redis,
///     SharedConfig::new("ibkr-live-U1234567", Sealing::Sealed(key)),
/// )
/// .await?;
/// let accounts = http::Request::get("/iserver/accounts").body(Vec::new())?;
/// println!("{}", shared.send(accounts).await?.status());
/// shared.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "async")]
pub struct AsyncSharedIbkrSession {
    client: AsyncClient<IbkrSession>,
    fleet: Arc<Fleet<IbkrSession>>,
    runtime: Handle,
}

#[cfg(feature = "async")]
impl AsyncSharedIbkrSession {
    /// Joins the fleet of `config.namespace`, as [`SharedIbkrSession::start`] does; the
    /// blocking part (Redis, and the take-over's status check or connect when no
    /// process owns the session) runs on the runtime's blocking pool. Call it inside a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`SharedIbkrSession::start`], and [`Error::Session`] with
    /// [`NoRuntime`](broker_session_hyper::Error::NoRuntime) outside a tokio runtime
    /// (or [`ThreadSpawn`](broker_session_hyper::Error::ThreadSpawn) if the blocking
    /// pool could not run the start).
    pub async fn start(
        ibkr: IbkrConfig,
        http: &AsyncHttpClient,
        redis: &Redis,
        config: SharedConfig,
    ) -> Result<Self, Error> {
        let runtime =
            Handle::try_current().map_err(|_| Error::Session(TransportError::NoRuntime))?;
        let client =
            AsyncClient::with_http(follower(ibkr)?, http.clone()).map_err(Error::Session)?;
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

    /// Sends an application request with the fleet's session, as
    /// [`SharedIbkrSession::send`] does, without blocking the runtime.
    ///
    /// # Errors
    ///
    /// As the hyper client's `send`; a wait that ends without a newer generation is
    /// [`broker_session_hyper::Error::Session`] with
    /// [`NoNewerCredentials`](broker_session_hyper::broker_session::Error::NoNewerCredentials).
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        self.client.send(request).await
    }

    /// The async transport client of this process's session.
    pub fn client(&self) -> &AsyncClient<IbkrSession> {
        &self.client
    }

    /// Whether this process owns the session now.
    pub fn is_owner(&self) -> bool {
        self.client.with_machine(|m| m.role()) == IbkrRole::Owner
    }

    /// The generation this process uses.
    pub fn generation(&self) -> u64 {
        self.client.with_machine(|m| m.generation())
    }

    /// Takes what happened since the last call, oldest first (at most the last 256).
    pub fn drain_events(&self) -> Vec<FleetEvent<IbkrSession>> {
        self.fleet.drain_events()
    }

    /// Leaves the fleet, as [`SharedIbkrSession::shutdown`], and waits (without
    /// blocking the runtime) until the threads have stopped and the lease is given
    /// up. Dropping the handle does the same in the background.
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
impl Drop for AsyncSharedIbkrSession {
    fn drop(&mut self) {
        // Joining here could block a runtime thread the threads wait on: stop them
        // at once and join them on a thread of their own.
        self.fleet.signal_stop();
        let fleet = Arc::clone(&self.fleet);
        let handle = AsyncHandle::new(self.client.clone());
        let _ = std::thread::Builder::new()
            .name("broker-session-redis-stop".into())
            .spawn(move || fleet.stop(&handle));
    }
}

#[cfg(feature = "async")]
impl fmt::Debug for AsyncSharedIbkrSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSharedIbkrSession")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
