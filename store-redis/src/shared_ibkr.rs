//! One IBKR session shared by a fleet of processes: [`SharedIbkrSession`] (blocking, on
//! the ureq transport), on the coordination of `shared.rs`.
//!
//! OAuth: the owner obtains the live session token, tickles, initialises and renews;
//! it publishes each token, sealed, and the followers sign their requests with it. A
//! dead owner's successor takes over with the stored token while it is valid: a
//! status check, no token request. Gateway: the gateway holds the brokerage session,
//! so nothing secret is published; a generation stands for one recovery of the
//! brokerage session, and only the owner tickles, checks the status, initialises and
//! logs out. Neither ever takes the brokerage session over (`compete=true`) by itself.

use std::fmt;

use broker_session_ureq::broker_session::ibkr::IbkrRole;
use broker_session_ureq::{Client, Error as TransportError, HttpClient, IbkrConfig, IbkrSession};
use broker_session_ureq::{http, now, os_seed};

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
