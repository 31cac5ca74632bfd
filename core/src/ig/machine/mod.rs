//! The IG session machine: transitions only. Requests come from `encode` (built from
//! an [`Endpoint`]), answers are read by `decode`, error answers are judged by
//! `policy`.
//!
//! - `mod.rs`: the session's fields, constructor, getters, its state as seen from
//!   outside, and the [`Machine`] contract (`submit`, `handle_input`, `poll_output`,
//!   `authorize`, `observe`);
//! - `ops.rs`: operations, their plan of steps, the queue, sending, completing;
//! - `answers.rs`: what each answer, failure or timeout does to the running operation
//!   and the session.

mod answers;
mod follower;
mod ops;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::follower::Awaiting;
use self::ops::{Call, InFlight, Kind, Next, Op, Queued, Step};
use super::config::{IgConfig, LoginFlow, SessionParts};
use super::decode::{self, CstLoginAnswer, IgAccount};
use super::encode::{self, AuthHeaders, AuthValues};
use super::endpoint::Endpoint;
use super::policy::{Action, BackOffs, action_for};
use super::snapshot::{SessionSnapshot, SnapTokens};
use super::{
    AuthMode, IgIntent, IgOutcome, IgRole, IgState, LightstreamerCredentials, SessionDetails,
    SessionInfo,
};
use crate::error::{Error, ProtocolError, UsageError};
use crate::machine::{
    AuthStamp, AuthorizeError, Event, Input, Machine, Observation, OpId, Output, RequestId,
    RngSeed, Transmit, TransportFailure,
};
use crate::rng::{JitterRng, LazyRng};
use crate::secret::{
    AccessToken, Cst, LightstreamerPassword, Password, RefreshToken, SecurityToken,
};
use crate::time::Now;
use crate::wire::Ids;

/// Intents that may wait in the queue at once.
const MAX_QUEUE: usize = 64;

/// Abandoned login requests remembered for their late answers. Each is one login
/// whose answer never came in time; a handful covers every realistic case, and the
/// oldest is forgotten first.
const MAX_ABANDONED: usize = 4;

/// An IG Markets session: a sans-IO [`Machine`].
///
/// ```
/// use broker_session::ig::{IgConfig, IgEnvironment, IgSession, IgIntent, IgState};
/// use broker_session::{Machine, Now, RngSeed};
/// use std::time::{Instant, SystemTime};
///
/// let config = IgConfig::new(IgEnvironment::Demo, "key", "user", "password");
/// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH);
/// let mut session = IgSession::new(config, RngSeed::from_u64(1), now).unwrap();
/// assert_eq!(session.state(), IgState::LoggedOut);
/// let _login = session.submit(IgIntent::Login, now).unwrap();
/// ```
pub struct IgSession {
    cfg: Arc<IgConfig>,
    /// The fixed parts of the session's requests (base URL, endpoint URIs, API key),
    /// parsed once per configuration and shared by the sessions built from it.
    parts: Arc<SessionParts>,
    /// The credentials' header values, built when first needed after a change of
    /// tokens or account and checked against the current ones before every use.
    auth_values: Option<AuthValues>,
    /// RSA padding of the encrypted password (created when first needed).
    rng: LazyRng,
    /// Draws the refresh jitter (see [`IgConfig::refresh_spread`]).
    jitter: JitterRng,
    ids: Ids,
    tokens: Option<Tokens>,
    /// The account IG made active at login (or the last switch).
    session_account: Option<Box<str>>,
    /// The account the user chose; kept outside the tokens so a refresh or re-login
    /// does not silently undo a switch.
    selected_account: Option<Box<str>>,
    lightstreamer_endpoint: Option<Box<str>>,
    client_id: Option<Box<str>>,
    accounts: Vec<IgAccount>,
    /// CST/XST fetched with `fetchSessionTokens=true`, apart from the OAuth tokens
    /// (boxed, as the errors below: rare, and every session would carry the room).
    streaming: Option<Box<(Cst, SecurityToken)>>,
    generation: u64,
    /// Generation produced by a reactive recovery and not yet accepted by IG.
    recovered_gen: Option<u64>,
    refresh_at: Option<Instant>,
    backoff_until: Option<Instant>,
    closed: Option<Box<Error>>,
    lost: Option<Box<Error>>,
    queue: VecDeque<Op>,
    current: Option<Op>,
    /// The running operation's remaining steps, the next first (empty when none
    /// runs). One buffer for every operation: see `ops.rs`.
    plan: VecDeque<Step>,
    in_flight: Option<InFlight>,
    outbox: VecDeque<Queued>,
    last_state: IgState,
    /// Login requests (they carry the password) given up on before their answer came.
    /// A late answer to one of them still counts if it rejects the credentials.
    abandoned_logins: VecDeque<RequestId>,
    /// Whether the session obtains its credentials or follows another process's.
    role: IgRole,
    /// The last generation reported as [`Event::CredentialsChanged`] (or adopted).
    announced: u64,
    /// Follower role: calls waiting for credentials newer than a refused generation.
    awaiting: Option<Awaiting>,
    /// The credentials are shared with other processes (the session was built as a
    /// follower, or led, followed or recovered for one): new ones are announced.
    shared: bool,
    /// Owner of shared credentials: the end of its lease, after which it steps down
    /// by itself (see [`IgSession::set_lease_deadline`]).
    lease_until: Option<Instant>,
}

enum Tokens {
    Cst {
        cst: Cst,
        xst: SecurityToken,
    },
    OAuth {
        access: AccessToken,
        refresh: RefreshToken,
        expires_at: Instant,
        expires_epoch_ms: i64,
    },
}

impl IgSession {
    /// A logged-out session.
    ///
    /// `seed` seeds the session's random generators (RSA padding of the encrypted
    /// password; the refresh jitter, [`IgConfig::refresh_spread`]). It is an argument,
    /// not a configuration field, so that no session is built on a default seed by
    /// accident: the transports fill it from the operating
    /// system; tests pass a fixed seed ([`RngSeed::from_u64`]) so every byte is
    /// reproducible. `_now`, the creation time, is not used: nothing is scheduled at
    /// creation. It is part of the signature so that every broker's session is built
    /// the same way, `new(config, seed, now)`, and a session that one day schedules
    /// something at creation needs no new constructor.
    ///
    /// `config` is an [`IgConfig`] or an `Arc<IgConfig>`: sessions built from one
    /// shared `Arc` (many sessions of one application and user) share it rather than
    /// each holding a copy. Only a configuration whose durations need clamping is
    /// copied.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::{Instant, SystemTime};
    /// use broker_session::ig::{IgConfig, IgEnvironment, IgSession};
    /// use broker_session::{Now, RngSeed};
    ///
    /// let now = Now::new(Instant::now(), SystemTime::now());
    /// let config = Arc::new(IgConfig::new(IgEnvironment::Demo, "key", "user", "password"));
    /// let first = IgSession::new(Arc::clone(&config), RngSeed::from_u64(1), now)?;
    /// let second = IgSession::new(config, RngSeed::from_u64(2), now)?;
    /// # let _ = (first, second);
    /// # Ok::<(), broker_session::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Usage`] ([`UsageError::InvalidArgument`]) for a configuration that
    /// cannot work: an empty API key or one that cannot go in an HTTP header, a base
    /// URL that is not an absolute http(s) URL, the web-platform login on demo, a zero
    /// deadline.
    pub fn new(config: impl Into<Arc<IgConfig>>, seed: RngSeed, _now: Now) -> Result<Self, Error> {
        let mut config: Arc<IgConfig> = config.into();
        if !config.is_clamped() {
            Arc::make_mut(&mut config).clamp();
        }
        let parts = SessionParts::of(&mut config)?;
        Ok(Self {
            rng: LazyRng::new(&seed),
            jitter: JitterRng::new(&seed),
            parts,
            auth_values: None,
            cfg: config,
            ids: Ids::default(),
            tokens: None,
            session_account: None,
            selected_account: None,
            lightstreamer_endpoint: None,
            client_id: None,
            accounts: Vec::new(),
            streaming: None,
            generation: 0,
            recovered_gen: None,
            refresh_at: None,
            backoff_until: None,
            closed: None,
            lost: None,
            queue: VecDeque::with_capacity(1),
            current: None,
            plan: VecDeque::new(),
            in_flight: None,
            // Sized for a typical exchange (a state change and a request, or a
            // completion and a state change): the first push would otherwise
            // reserve four events, kept for the session's life.
            outbox: VecDeque::with_capacity(2),
            last_state: IgState::LoggedOut,
            abandoned_logins: VecDeque::new(),
            role: IgRole::Owner,
            announced: 0,
            awaiting: None,
            shared: false,
            lease_until: None,
        })
    }

    /// A logged-out session in the [`IgRole::Follower`] role: it authorizes requests
    /// with credentials given by [`IgIntent::Adopt`] and never logs in, refreshes or
    /// logs out by itself. When the credentials are refused (or expire) it emits
    /// [`Event::CredentialsWanted`] and the calls wait, up to
    /// [`IgConfig::request_deadline`], for a newer generation. [`IgIntent::Lead`]
    /// makes it the owner.
    ///
    /// ```
    /// use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgRole, IgSession};
    /// use broker_session::{Machine, Now, RngSeed, UsageError};
    /// use std::time::{Instant, SystemTime};
    ///
    /// let config = IgConfig::new(IgEnvironment::Demo, "key", "user", "password");
    /// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH);
    /// let mut session = IgSession::follower(config, RngSeed::from_u64(1), now).unwrap();
    /// assert_eq!(session.role(), IgRole::Follower);
    /// // Only the owner logs in.
    /// assert!(matches!(
    ///     session.submit(IgIntent::Login, now),
    ///     Err(UsageError::Unsupported { .. })
    /// ));
    /// ```
    ///
    /// # Errors
    /// As [`IgSession::new`].
    pub fn follower(config: IgConfig, seed: RngSeed, now: Now) -> Result<Self, Error> {
        let mut session = Self::new(config, seed, now)?;
        session.role = IgRole::Follower;
        session.shared = true;
        Ok(session)
    }

    /// Whether the session obtains its credentials ([`IgRole::Owner`]) or follows
    /// another process's ([`IgRole::Follower`]).
    pub fn role(&self) -> IgRole {
        self.role
    }

    /// Bounds the owner's authority by time: from `until` on (the end of the lease
    /// that makes this process the owner, as the sharing layer measures it, erring
    /// early) the session steps down to [`IgRole::Follower`] by itself, before it
    /// would refresh, recover or log in. It keeps its credentials for application
    /// calls, and a refusal then waits for a newer generation like any follower's.
    /// This covers the one case a sharing layer cannot: a process paused (or starved)
    /// past its lease whose overdue timers, once it runs again, would fire before its
    /// lease keeper notices the lease is gone, and spend a refresh token the new owner
    /// holds. Renew it with each lease renewal; `None` (the default) sets no bound.
    /// Only an owner is bounded; [`IgIntent::Follow`] and stepping down clear it.
    ///
    /// ```
    /// use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgRole, IgSession};
    /// use broker_session::{Machine, Now, RngSeed};
    /// use std::time::{Duration, Instant, SystemTime};
    ///
    /// let config = IgConfig::new(IgEnvironment::Demo, "key", "user", "password");
    /// let start = Instant::now();
    /// let now = Now::new(start, SystemTime::UNIX_EPOCH);
    /// let mut session = IgSession::follower(config, RngSeed::from_u64(1), now).unwrap();
    /// session.set_lease_deadline(Some(start + Duration::from_secs(15)));
    /// let _ = session.submit(IgIntent::Lead { generation_floor: 0 }, now);
    /// assert_eq!(session.role(), IgRole::Owner);
    /// // Driven again after the lease's end: it follows.
    /// let later = Now::new(start + Duration::from_secs(16), SystemTime::UNIX_EPOCH);
    /// let _ = session.poll_output(later);
    /// assert_eq!(session.role(), IgRole::Follower);
    /// ```
    pub fn set_lease_deadline(&mut self, until: Option<Instant>) {
        self.lease_until = until;
    }

    /// The account requests act on, once logged in.
    pub fn account_id(&self) -> Option<&str> {
        self.tokens.as_ref()?;
        self.selected_account
            .as_deref()
            .or(self.session_account.as_deref())
    }

    /// When the v3 access token expires (`None` for CST sessions).
    pub fn access_token_expires_at(&self) -> Option<Instant> {
        match &self.tokens {
            Some(Tokens::OAuth { expires_at, .. }) => Some(*expires_at),
            _ => None,
        }
    }

    /// The current credential generation (see [`AuthStamp`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Credentials for IG's Lightstreamer server: user = account id, password =
    /// `CST-<cst>|XST-<xst>`. A CST session has them after login; a v3 session only
    /// after [`IgIntent::ReadSession`] with `fetch_tokens` (or
    /// [`IgConfig::fetch_streaming_tokens`]).
    pub fn lightstreamer_credentials(&self) -> Option<LightstreamerCredentials> {
        let (cst, xst) = match (&self.tokens, self.streaming.as_deref()) {
            (Some(Tokens::Cst { cst, xst }), _) => (cst, xst),
            (Some(Tokens::OAuth { .. }), Some((c, x))) => (c, x),
            _ => return None,
        };
        Some(LightstreamerCredentials {
            endpoint: self.lightstreamer_endpoint.as_deref().map(str::to_owned),
            user: self.account_id()?.to_owned(),
            password: LightstreamerPassword::new(format!(
                "CST-{}|XST-{}",
                cst.expose_secret(),
                xst.expose_secret()
            )),
        })
    }

    /// The session's tokens, for [`IgIntent::Resume`] in another process. `None` when
    /// logged out. See [`SessionSnapshot::expose_secrets`] to store it.
    pub fn snapshot(&self) -> Option<SessionSnapshot> {
        let tokens = match self.tokens.as_ref()? {
            Tokens::Cst { cst, xst } => SnapTokens::Cst {
                cst: cst.clone(),
                xst: xst.clone(),
            },
            Tokens::OAuth {
                access,
                refresh,
                expires_epoch_ms,
                ..
            } => SnapTokens::OAuth {
                access: access.clone(),
                refresh: refresh.clone(),
                expires_at_epoch_ms: *expires_epoch_ms,
                streaming: self.streaming.as_deref().cloned(),
            },
        };
        Some(SessionSnapshot {
            base_url: self.base_str().to_owned(),
            account_id: self.account_id()?.to_owned(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.as_deref().map(str::to_owned),
            tokens,
        })
    }

    /// The base URL, without a trailing slash.
    fn base_str(&self) -> &str {
        self.cfg.environment.base_url()
    }

    fn mode(&self) -> Option<AuthMode> {
        match self.tokens {
            Some(Tokens::Cst { .. }) => Some(AuthMode::Cst),
            Some(Tokens::OAuth { .. }) => Some(AuthMode::OAuth),
            None => None,
        }
    }

    fn backoffs(&self) -> BackOffs {
        BackOffs {
            allowance: self.cfg.allowance_backoff,
            login_throttle: self.cfg.login_throttle_backoff,
        }
    }

    /// The state seen from outside, borrowed from the fields: `sync_state` runs after
    /// every call and compares it with the last state emitted, so it copies nothing
    /// (the account id, an error) unless the state changed.
    fn state_view(&self) -> StateView<'_> {
        if let Some(reason) = self.closed.as_deref() {
            return StateView::Closed(reason);
        }
        if let Some(until) = self.backoff_until {
            return StateView::BackingOff(until);
        }
        if self.awaiting.is_some() {
            return StateView::Recovering;
        }
        match self.current.as_ref().map(|o| o.kind) {
            Some(Kind::Login | Kind::Resume) => return StateView::LoggingIn,
            Some(Kind::Recover) => return StateView::Recovering,
            Some(Kind::Logout) => return StateView::LoggingOut,
            _ => {}
        }
        if let (Some(mode), Some(account_id)) = (self.mode(), self.account_id()) {
            return StateView::Active(account_id, mode);
        }
        if let Some(reason) = self.lost.as_deref() {
            return StateView::Lost(reason);
        }
        StateView::LoggedOut
    }

    fn compute_state(&self) -> IgState {
        self.state_view().to_state()
    }

    fn sync_state(&mut self) {
        self.announce_credentials();
        let view = self.state_view();
        if view.is(&self.last_state) {
            return;
        }
        let s = view.to_state();
        self.last_state = s.clone();
        self.emit(Event::StateChanged(s));
    }
}

/// [`IgState`] borrowing from the session (see `IgSession::state_view`).
#[derive(Clone, Copy)]
enum StateView<'a> {
    LoggedOut,
    LoggingIn,
    Active(&'a str, AuthMode),
    Recovering,
    LoggingOut,
    BackingOff(Instant),
    Lost(&'a Error),
    Closed(&'a Error),
}

impl StateView<'_> {
    fn to_state(self) -> IgState {
        match self {
            Self::LoggedOut => IgState::LoggedOut,
            Self::LoggingIn => IgState::LoggingIn,
            Self::Active(account_id, mode) => IgState::Active {
                account_id: account_id.to_owned(),
                mode,
            },
            Self::Recovering => IgState::Recovering,
            Self::LoggingOut => IgState::LoggingOut,
            Self::BackingOff(until) => IgState::BackingOff { until },
            Self::Lost(reason) => IgState::Lost {
                reason: reason.clone(),
            },
            Self::Closed(reason) => IgState::Closed {
                reason: reason.clone(),
            },
        }
    }

    /// Whether `to_state()` would equal `s`.
    fn is(&self, s: &IgState) -> bool {
        match (*self, s) {
            (Self::LoggedOut, IgState::LoggedOut)
            | (Self::LoggingIn, IgState::LoggingIn)
            | (Self::Recovering, IgState::Recovering)
            | (Self::LoggingOut, IgState::LoggingOut) => true,
            (Self::Active(a, m), IgState::Active { account_id, mode }) => {
                a == account_id && m == *mode
            }
            (Self::BackingOff(u), IgState::BackingOff { until }) => u == *until,
            (Self::Lost(r), IgState::Lost { reason })
            | (Self::Closed(r), IgState::Closed { reason }) => r == reason,
            _ => false,
        }
    }
}

impl Machine for IgSession {
    type Intent = IgIntent;
    type State = IgState;
    type Outcome = IgOutcome;

    fn submit(&mut self, intent: IgIntent, now: Now) -> Result<OpId, UsageError> {
        if self.closed.is_some() {
            return Err(UsageError::SessionClosed);
        }
        if self.queue.len() >= MAX_QUEUE {
            return Err(UsageError::QueueFull);
        }
        self.lapse_lead(now);
        let intent = match self.submit_shared(intent, now)? {
            Ok(id) => {
                self.sync_state();
                return Ok(id);
            }
            Err(intent) => intent,
        };
        let op = match intent {
            IgIntent::Login => self.new_op(Kind::Login),
            IgIntent::Refresh => self.new_op(Kind::Refresh),
            IgIntent::ReadSession { fetch_tokens } => self.new_op(Kind::Read {
                fetch: fetch_tokens,
            }),
            IgIntent::SwitchAccount {
                account_id,
                make_default,
            } => {
                if account_id.is_empty() || !is_valid_header_value(&account_id) {
                    return Err(UsageError::InvalidArgument {
                        what: "account_id",
                        reason: "empty or not a valid header value",
                    });
                }
                let mut op = self.new_op(Kind::Switch { make_default });
                op.target_account = Some(account_id);
                op
            }
            IgIntent::Logout => {
                self.cancel_for_logout(now);
                self.new_op(Kind::Logout)
            }
            IgIntent::Resume(snapshot) => {
                self.check_snapshot(&snapshot)?;
                if self.tokens.is_some() || self.current.is_some() {
                    return Err(UsageError::InvalidArgument {
                        what: "resume",
                        reason: "the session is busy or logged in; resume into a fresh session",
                    });
                }
                self.install_snapshot(snapshot, now);
                self.new_op(Kind::Resume)
            }
            // Handled by `submit_shared`.
            IgIntent::Adopt { .. }
            | IgIntent::Lead { .. }
            | IgIntent::Follow { .. }
            | IgIntent::Recover { .. } => {
                return Err(UsageError::InvalidArgument {
                    what: "intent",
                    reason: "not an intent of this role",
                });
            }
        };
        let id = op.id;
        self.queue.push_back(op);
        self.sync_state();
        Ok(id)
    }

    fn handle_input(&mut self, input: Input, now: Now) {
        match input {
            Input::Response { id, response } => {
                if let Some(f) = self.in_flight.take_if(|f| f.id == id) {
                    self.on_response(f.call, &response, now);
                } else if let Some(i) = self.abandoned_logins.iter().position(|a| *a == id) {
                    self.abandoned_logins.remove(i);
                    self.on_late_login_answer(&response, now);
                }
            }
            Input::Failed { id, failure } => {
                if let Some(f) = self.in_flight.take_if(|f| f.id == id) {
                    self.on_failure(f.call, Error::Transport(sanitize(failure)), now);
                }
            }
            _ => self.run_timers(now),
        }
        self.sync_state();
    }

    fn poll_output(&mut self, now: Now) -> Output<IgState, IgOutcome> {
        self.run_timers(now);
        self.start_next(now);
        self.sync_state();
        while let Some(queued) = self.outbox.pop_front() {
            let out = match queued {
                Queued::Event(e) => Output::Event(e),
                Queued::Send(id) => match self.transmit(id, now) {
                    Some(t) => Output::Send(t),
                    None => {
                        self.sync_state();
                        continue;
                    }
                },
            };
            crate::machine::trace_output("ig", &out);
            return out;
        }
        Output::Wait(self.next_deadline(now.mono))
    }

    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        if let Some(reason) = self.closed.as_deref() {
            return Err(AuthorizeError::Lost(reason.clone()));
        }
        self.lapse_lead(now);
        if !self.parts.base.covers(request.uri()) {
            return Err(AuthorizeError::Refused(UsageError::InvalidArgument {
                what: "request URI",
                reason: "not under the session's base URL: credentials go only to IG",
            }));
        }
        if let Some(until) = self.backoff_until.filter(|t| *t > now.mono) {
            return Err(AuthorizeError::BackingOff { until });
        }
        if self.logout_pending() {
            // The credentials are being given up: none are handed out any more.
            return Err(AuthorizeError::NotLoggedIn);
        }
        // Credentials being replaced (or not yet validated) are not handed out.
        let replacing = self
            .current
            .iter()
            .filter(|o| matches!(o.kind, Kind::Login | Kind::Resume | Kind::Recover))
            .chain(
                self.queue
                    .iter()
                    .filter(|o| matches!(o.kind, Kind::Resume | Kind::Recover)),
            )
            .next();
        if let Some(op) = replacing {
            return Err(AuthorizeError::Pending { op: op.id });
        }
        if self.role == IgRole::Follower
            && (self.tokens.is_none()
                || self
                    .access_token_expires_at()
                    .is_some_and(|t| t <= now.mono))
        {
            // The owner obtains credentials: wait for a newer generation.
            let op = self.await_newer(self.generation, now);
            self.sync_state();
            return Err(AuthorizeError::Pending { op });
        }
        if self.tokens.is_none() {
            if let Some(op) = self.credential_op() {
                return Err(AuthorizeError::Pending { op });
            }
            return Err(match self.lost.as_deref() {
                Some(e) => AuthorizeError::Lost(e.clone()),
                None => AuthorizeError::NotLoggedIn,
            });
        }
        if self
            .access_token_expires_at()
            .is_some_and(|t| t <= now.mono)
        {
            let op = self.ensure_refresh();
            self.sync_state();
            return Err(AuthorizeError::Pending { op });
        }
        let auth = match self.auth_values() {
            Ok(auth) => auth,
            Err(Error::Usage(UsageError::NotLoggedIn)) => return Err(AuthorizeError::NotLoggedIn),
            Err(_) => {
                return Err(AuthorizeError::Refused(UsageError::InvalidArgument {
                    what: "credentials",
                    reason: "not valid header values",
                }));
            }
        };
        self.parts.requests.stamp(request.headers_mut(), &auth);
        Ok(AuthStamp {
            generation: self.generation,
        })
    }

    fn observe<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
        stamp: AuthStamp,
        now: Now,
    ) -> Observation {
        let status = response.status();
        if status.is_success() || status.is_redirection() || status.is_informational() {
            if status.is_success() && self.recovered_gen == Some(stamp.generation) {
                self.recovered_gen = None;
            }
            return Observation::Accepted;
        }
        let code = decode::error_code(response.body().as_ref());
        self.lapse_lead(now);
        let obs = match action_for(
            Endpoint::Application,
            status.as_u16(),
            code.as_deref(),
            self.backoffs(),
        ) {
            Action::Relogin(_) | Action::Refresh(_) if self.role == IgRole::Follower => {
                if let Some(reason) = self.closed.as_deref() {
                    Observation::Lost(reason.clone())
                } else if stamp.generation < self.generation {
                    Observation::Replay
                } else {
                    // Only the owner recovers: wait for a generation newer than this one.
                    Observation::Recover {
                        op: self.await_newer(stamp.generation, now),
                    }
                }
            }
            Action::Relogin(api) | Action::Refresh(api) => {
                if self.closed.is_some()
                    || (self.tokens.is_none() && self.credential_op().is_none())
                {
                    Observation::Lost(
                        self.closed
                            .as_deref()
                            .cloned()
                            .unwrap_or(Error::Unauthorized(api)),
                    )
                } else if self.logout_pending() {
                    // Logout is final: a refused request starts no recovery after it.
                    Observation::Lost(Error::Cancelled)
                } else if stamp.generation < self.generation {
                    Observation::Replay
                } else if let Some(op) = self.recovery_op().or_else(|| self.credential_op()) {
                    Observation::Recover { op }
                } else if self.recovered_gen == Some(stamp.generation) {
                    let e = Error::Unauthorized(api);
                    self.lose(e.clone());
                    Observation::Lost(e)
                } else {
                    Observation::Recover {
                        op: self.enqueue_front(Kind::Recover),
                    }
                }
            }
            Action::BackOff { retry_after, .. } => {
                let until = now.after(retry_after);
                let until = self.backoff_until.map_or(until, |u| u.max(until));
                self.backoff_until = Some(until);
                Observation::BackOff { until }
            }
            Action::Close(e) => {
                self.close(e.clone());
                // The running operation's request was dropped with the session.
                if self.current.is_some() {
                    self.finish(Err(Error::Cancelled), now);
                }
                Observation::Lost(e)
            }
            _ => Observation::Accepted,
        };
        self.sync_state();
        obs
    }

    fn state(&self) -> IgState {
        self.compute_state()
    }

    fn base_url(&self) -> Option<&str> {
        Some(self.base_str())
    }
}

/// Transports promise not to put secrets in `detail`; cut it anyway so a hostile
/// peer cannot flood logs through it.
fn sanitize(mut f: TransportFailure) -> TransportFailure {
    if f.detail.len() > 200 {
        f.detail = f.detail.chars().take(200).collect();
    }
    f
}

/// Whether `v` can be sent as an HTTP header value (no control characters).
fn is_valid_header_value(v: &str) -> bool {
    http::HeaderValue::from_str(v).is_ok()
}

impl std::fmt::Debug for IgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgSession")
            .field("base_url", &self.base_str())
            .field("login_flow", &self.cfg.login_flow)
            .field("state", &self.compute_state())
            .field("generation", &self.generation)
            .field("role", &self.role)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}
