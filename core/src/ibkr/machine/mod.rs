//! The IBKR session machine: the session struct, its constructor and getters, the
//! state seen from outside, and the [`Machine`] impl. Operations live in `ops.rs`,
//! what each answer does in `answers.rs`; requests are built in `encode`, answers
//! parsed in `decode` and judged with `policy`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{IbkrAuth, IbkrConfig, SessionParts};
use super::encode::Signer;
use super::policy;
use super::{IbkrIntent, IbkrOutcome, IbkrRole, IbkrState};
use crate::error::{ActionRequired, Error, UsageError};
use crate::machine::{
    AuthStamp, AuthorizeError, Event, Input, Machine, Observation, OpId, Output, RequestId,
    RngSeed, TransportFailure,
};
use crate::rng::{JitterRng, LazyRng};
use crate::secret::LiveSessionToken;
use crate::time::{Now, deadline_after};
use crate::wire::Ids;

/// Intents beyond this many queued are refused with [`UsageError::QueueFull`].
const MAX_QUEUE: usize = 64;
/// The shortest keep-alive interval honoured, whatever the pacing setting.
const MIN_TICKLE_INTERVAL: Duration = Duration::from_secs(1);
/// Live session token requests abandoned at the machine's deadline that are still
/// remembered, so that a late credentials rejection closes the session.
pub(super) const ABANDONED_LST_MEMORY: usize = 8;
/// The largest [`OAuthConfig::lst_refresh_margin`](super::OAuthConfig::lst_refresh_margin)
/// honoured: IBKR's tokens live 24 hours.
pub(super) const MAX_LST_REFRESH_MARGIN: Duration = Duration::from_secs(12 * 3600);

mod answers;
mod follower;
mod ops;

/// The configuration's durations and counts, and their bounds.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Limits {
    tickle_min_interval: Duration,
    validate_min_interval: Duration,
    tickle_interval: Duration,
    status_poll_interval: Duration,
    request_deadline: Duration,
    ready_timeout: Duration,
    init_backoff: Duration,
    throttle_backoff: Duration,
    init_attempts: u32,
    lst_refresh_margin: Option<Duration>,
}

impl Limits {
    fn of(c: &IbkrConfig) -> Self {
        Self {
            tickle_min_interval: c.tickle_min_interval,
            validate_min_interval: c.validate_min_interval,
            tickle_interval: c.tickle_interval,
            status_poll_interval: c.status_poll_interval,
            request_deadline: c.request_deadline,
            ready_timeout: c.ready_timeout,
            init_backoff: c.init_backoff,
            throttle_backoff: c.throttle_backoff,
            init_attempts: c.init_attempts,
            lst_refresh_margin: match &c.auth {
                IbkrAuth::OAuth(o) => Some(o.lst_refresh_margin),
                IbkrAuth::Gateway => None,
            },
        }
    }

    /// Every value within its bounds: durations at most a year, the keep-alive at
    /// least its pacing floor, a deadline of at least a second, 1 to 100 attempts.
    fn bounded(self) -> Self {
        let year = Duration::from_secs(365 * 24 * 3600);
        let tickle_min_interval = self.tickle_min_interval.min(year);
        Self {
            tickle_min_interval,
            validate_min_interval: self.validate_min_interval.min(year),
            tickle_interval: self
                .tickle_interval
                .clamp(MIN_TICKLE_INTERVAL.max(tickle_min_interval), year),
            status_poll_interval: self
                .status_poll_interval
                .clamp(Duration::from_millis(100), year),
            request_deadline: self.request_deadline.clamp(Duration::from_secs(1), year),
            ready_timeout: self.ready_timeout.min(year),
            init_backoff: self.init_backoff.min(year),
            throttle_backoff: self.throttle_backoff.min(year),
            init_attempts: self.init_attempts.clamp(1, 100),
            lst_refresh_margin: self
                .lst_refresh_margin
                .map(|m| m.min(MAX_LST_REFRESH_MARGIN)),
        }
    }

    fn apply(self, c: &mut IbkrConfig) {
        c.tickle_min_interval = self.tickle_min_interval;
        c.validate_min_interval = self.validate_min_interval;
        c.tickle_interval = self.tickle_interval;
        c.status_poll_interval = self.status_poll_interval;
        c.request_deadline = self.request_deadline;
        c.ready_timeout = self.ready_timeout;
        c.init_backoff = self.init_backoff;
        c.throttle_backoff = self.throttle_backoff;
        c.init_attempts = self.init_attempts;
        if let (IbkrAuth::OAuth(o), Some(m)) = (&mut c.auth, self.lst_refresh_margin) {
            o.lst_refresh_margin = m;
        }
    }
}

use answers::api_error;
use follower::Awaiting;
use ops::{InFlight, Kind, Op};

type Out = Output<IbkrState, IbkrOutcome>;

struct Lst {
    token: LiveSessionToken,
    expires_at: Option<Instant>,
    /// The expiry as IBKR gave it (wall-clock epoch milliseconds), for a snapshot.
    expires_epoch_ms: Option<i64>,
}

/// One Interactive Brokers session (gateway or OAuth 1.0a), driven through
/// [`Machine`].
///
/// `Debug` shows the mode, state and timers; never a key, token or the prepend.
pub struct IbkrSession {
    cfg: Arc<IbkrConfig>,
    /// The fixed parts of the session's requests (base URL, endpoint URIs), parsed
    /// once per configuration and shared by the sessions built from it.
    parts: Arc<SessionParts>,
    /// Boxed: only OAuth sessions have one, and it is large (keys, the
    /// Diffie-Hellman group, the decrypted secret's prepend).
    signer: Option<Box<Signer>>,
    /// DH secrets, nonces, RSA blinding (created when first needed: never for the
    /// gateway).
    rng: LazyRng,
    /// Draws the keep-alive jitter (see [`IbkrConfig::tickle_spread`]).
    jitter: JitterRng,
    ids: Ids,
    state: IbkrState,
    /// State to return to when a back-off ends.
    before_backoff: Option<IbkrState>,
    lst: Option<Lst>,
    lst_refresh_at: Option<Instant>,
    generation: u64,
    /// The generation a reactive recovery produced, until a response is accepted.
    reactive_generation: Option<u64>,
    queue: VecDeque<Op>,
    current: Option<Op>,
    /// The running operation's remaining steps, the next first (empty when none
    /// runs). One buffer for every operation: see `ops.rs`.
    plan: VecDeque<ops::Step>,
    in_flight: Option<InFlight>,
    out: VecDeque<Out>,
    next_tickle: Option<Instant>,
    last_tickle: Option<Instant>,
    last_validate: Option<Instant>,
    backoff_until: Option<Instant>,
    /// Boxed, as `lst_hold`: rare, and every session would carry the room.
    closed: Option<Box<Error>>,
    /// `/iserver/accounts` was queried since the session last became ready.
    preflight_done: bool,
    /// A logout was submitted and no Connect (or RenewToken) submitted by the user
    /// has started since: the machine starts nothing by itself and sends nothing but
    /// the logout.
    logged_out: bool,
    /// A live session token request ended without a clear answer (timed out, or the
    /// connection broke after it may have been sent): the machine asks for no other
    /// token by itself until the user submits Connect or RenewToken. The error says
    /// what happened.
    lst_hold: Option<Box<Error>>,
    /// Ids of live session token requests abandoned at the machine's deadline (the
    /// last few), so that a late credentials rejection still closes the session.
    abandoned_lst: VecDeque<RequestId>,
    /// Whether the session acts by itself or follows another process.
    role: IbkrRole,
    /// The last generation reported as [`Event::CredentialsChanged`] (or adopted).
    announced: u64,
    /// Follower role: calls waiting for a generation newer than a refused one.
    awaiting: Option<Awaiting>,
    /// The session is shared with other processes (built as a follower, or led,
    /// followed or recovered for one): new generations are announced.
    shared: bool,
    /// Follower role: a generation was adopted (and not forgotten by `Follow`).
    adopted: bool,
    /// Owner of a shared session: the end of its lease, after which it steps down by
    /// itself (see [`IbkrSession::set_lease_deadline`]).
    lease_until: Option<Instant>,
}

impl fmt::Debug for IbkrSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IbkrSession")
            .field(
                "mode",
                &if self.signer.is_some() {
                    "oauth"
                } else {
                    "gateway"
                },
            )
            .field("base_url", &self.parts.base.url)
            .field("state", &self.state)
            .field("generation", &self.generation)
            .field("role", &self.role)
            .field("has_lst", &self.lst.is_some())
            .field("queued", &self.queue.len())
            .field("next_tickle", &self.next_tickle)
            .finish_non_exhaustive()
    }
}

impl IbkrSession {
    /// A session in [`IbkrState::Disconnected`]. Keys, the DH prime and the access
    /// token secret are parsed (and decrypted) now, so a bad configuration fails here.
    ///
    /// `seed` seeds the session's random generators (Diffie-Hellman secrets, OAuth
    /// nonces, RSA blinding; the keep-alive jitter, [`IbkrConfig::tickle_spread`]). It is an argument, not a configuration field, so that no
    /// session is built on a default seed by accident: two sessions on one seed would
    /// send the same DH challenge and nonces. The transports fill it from the operating
    /// system; tests pass a fixed seed ([`RngSeed::from_u64`]). `_now`, the creation
    /// time, is not used: nothing is scheduled at creation. It is part of the
    /// signature so that every broker's session is built the same way,
    /// `new(config, seed, now)`, and a session that one day schedules something at
    /// creation needs no new constructor.
    ///
    /// `config` is an [`IbkrConfig`] or an `Arc<IbkrConfig>`: sessions built from one
    /// shared `Arc` share it rather than each holding a copy (with its keys), and
    /// share the request parts derived from it (the parsed base URL and endpoint
    /// URIs): the first session builds them, the others reuse them without parsing.
    /// Only a configuration with a value out of its bounds is copied.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::{Instant, SystemTime};
    /// use broker_session::ibkr::{IbkrConfig, IbkrSession};
    /// use broker_session::{Now, RngSeed};
    ///
    /// let now = Now::new(Instant::now(), SystemTime::now());
    /// let config = Arc::new(IbkrConfig::gateway());
    /// let first = IbkrSession::new(Arc::clone(&config), RngSeed::from_u64(1), now)?;
    /// let second = IbkrSession::new(config, RngSeed::from_u64(2), now)?;
    /// # let _ = (first, second);
    /// # Ok::<(), broker_session::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Crypto`] ([`CryptoError::InvalidKey`](crate::CryptoError::InvalidKey)) for a key or prime that does not
    /// parse, [`Error::Usage`] for a bad base URL.
    pub fn new(
        config: impl Into<Arc<IbkrConfig>>,
        seed: RngSeed,
        _now: Now,
    ) -> Result<Self, Error> {
        let mut config: Arc<IbkrConfig> = config.into();
        let parts = SessionParts::of(&mut config)?;
        let mut rng = LazyRng::new(&seed);
        let jitter = JitterRng::new(&seed);
        let signer = match &config.auth {
            IbkrAuth::Gateway => None,
            IbkrAuth::OAuth(o) => Some(Box::new(Signer::new(o, rng.get())?)),
        };
        // Bounded durations keep every `Instant + Duration` below overflow. A shared
        // configuration is copied only when a bound changes something.
        let mut cfg = config;
        let limits = Limits::of(&cfg);
        let bounded = limits.bounded();
        if bounded != limits {
            bounded.apply(Arc::make_mut(&mut cfg));
        }
        Ok(Self {
            cfg,
            parts,
            signer,
            rng,
            jitter,
            ids: Ids::default(),
            state: IbkrState::Disconnected,
            before_backoff: None,
            lst: None,
            lst_refresh_at: None,
            generation: 0,
            reactive_generation: None,
            queue: VecDeque::with_capacity(1),
            current: None,
            plan: VecDeque::new(),
            in_flight: None,
            // Sized for a typical exchange (a state change and a request, or a
            // completion and a state change): the first push would otherwise
            // reserve four of these large values, kept for the session's life.
            out: VecDeque::with_capacity(2),
            next_tickle: None,
            last_tickle: None,
            last_validate: None,
            backoff_until: None,
            closed: None,
            preflight_done: false,
            logged_out: false,
            lst_hold: None,
            abandoned_lst: VecDeque::new(),
            role: IbkrRole::Owner,
            announced: 0,
            awaiting: None,
            shared: false,
            adopted: false,
            lease_until: None,
        })
    }

    /// Whether this session uses OAuth 1.0a (rather than the gateway).
    pub fn is_oauth(&self) -> bool {
        self.signer.is_some()
    }

    /// The credential generation: increments with every new live session token and
    /// on logout.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the keep-alive tickles next, if it runs.
    pub fn next_tickle(&self) -> Option<Instant> {
        self.next_tickle
    }

    fn set_state(&mut self, s: IbkrState) {
        if !matches!(s, IbkrState::Ready | IbkrState::BackingOff { .. }) {
            self.preflight_done = false;
        }
        if self.state != s {
            self.state = s.clone();
            self.out.push_back(Output::Event(Event::StateChanged(s)));
        }
        self.update_keepalive_flag();
    }

    fn session_alive(&self) -> bool {
        matches!(
            self.state,
            IbkrState::Ready
                | IbkrState::NotAuthenticated
                | IbkrState::Competing
                | IbkrState::NotConnected
        )
    }

    fn update_keepalive_flag(&mut self) {
        if !self.session_alive() && !matches!(self.state, IbkrState::BackingOff { .. }) {
            self.next_tickle = None;
        }
    }

    fn start_keepalive(&mut self, now: Now) {
        if self.next_tickle.is_none() && !self.logged_out {
            let from = self.last_tickle.unwrap_or(now.mono).max(now.mono);
            let interval = self.keepalive_interval();
            self.next_tickle = Some(deadline_after(from, interval));
        }
    }

    /// The next keep-alive interval: `tickle_interval` shortened by a random part of
    /// `tickle_spread` (at most half the interval, never below the pacing floor).
    pub(super) fn keepalive_interval(&mut self) -> Duration {
        let interval = self.cfg.tickle_interval;
        let floor = MIN_TICKLE_INTERVAL.max(self.cfg.tickle_min_interval);
        let spread = self
            .cfg
            .tickle_spread
            .min(interval / 2)
            .min(interval.saturating_sub(floor));
        interval - self.jitter.up_to(spread)
    }

    /// Whether the machine may start an operation by itself (keep-alive, renewal,
    /// recovery): not after a logout, and not on a closed session.
    fn may_start_work(&self) -> bool {
        !self.logged_out && self.closed.is_none()
    }

    /// Whether the machine may ask for a live session token by itself: not while an
    /// earlier request's fate is unknown (see `lst_hold`).
    fn may_renew_lst(&self) -> bool {
        self.may_start_work() && self.lst_hold.is_none()
    }

    /// The session will not send again: credentials rejected or keys wrong.
    fn close(&mut self, err: Error) {
        self.closed = Some(Box::new(err.clone()));
        self.lst = None;
        self.lst_refresh_at = None;
        self.next_tickle = None;
        self.in_flight = None;
        self.set_state(IbkrState::Closed);
        self.finish(Err(err.clone()));
        while let Some(op) = self.queue.pop_front() {
            self.complete(op, Err(Error::Cancelled));
        }
        self.out
            .push_back(Output::Event(Event::SessionLost { reason: err }));
    }

    fn lose_to_browser_login(&mut self) {
        let had_session = self.session_alive();
        self.set_state(IbkrState::BrowserLoginRequired);
        let err = Error::ActionRequired(ActionRequired::BrowserLogin);
        if had_session {
            self.out
                .push_back(Output::Event(Event::SessionLost { reason: err }));
        }
    }

    fn enter_backoff(&mut self, now: Now) -> Instant {
        let until = now.after(self.cfg.throttle_backoff);
        self.backoff_until = Some(until);
        if !matches!(self.state, IbkrState::BackingOff { .. }) {
            self.before_backoff = Some(self.state.clone());
        }
        self.set_state(IbkrState::BackingOff { until });
        // The keep-alive restarts when the back-off ends.
        self.next_tickle = None;
        until
    }

    fn lst_valid(&self, now: Now) -> bool {
        self.lst
            .as_ref()
            .is_some_and(|l| l.expires_at.is_none_or(|e| e > now.mono))
    }
}

impl Machine for IbkrSession {
    type Intent = IbkrIntent;
    type State = IbkrState;
    type Outcome = IbkrOutcome;

    fn submit(&mut self, intent: IbkrIntent, now: Now) -> Result<OpId, UsageError> {
        if self.closed.is_some() {
            return Err(UsageError::SessionClosed);
        }
        if self.queue.len() >= MAX_QUEUE {
            return Err(UsageError::QueueFull);
        }
        self.lapse_lead(now);
        let intent = match self.submit_shared(intent, now)? {
            Ok(id) => {
                self.drive(now);
                return Ok(id);
            }
            Err(intent) => intent,
        };
        let kind = match intent {
            IbkrIntent::Connect => Kind::Connect { force_lst: false },
            IbkrIntent::CheckStatus => Kind::CheckStatus,
            IbkrIntent::InitBrokerage { .. } => Kind::Init,
            IbkrIntent::Tickle => Kind::Tickle { keepalive: false },
            IbkrIntent::Reauthenticate => Kind::Reauth,
            IbkrIntent::Validate => {
                if self.signer.is_some() {
                    return Err(UsageError::Unsupported {
                        intent: "validate",
                        reason: "IBKR serves /sso/validate to gateway and OAuth 2.0 sessions only",
                    });
                }
                Kind::Validate
            }
            IbkrIntent::RenewToken => {
                if self.signer.is_none() {
                    return Err(UsageError::Unsupported {
                        intent: "renew token",
                        reason: "only OAuth sessions have a live session token",
                    });
                }
                Kind::Connect { force_lst: true }
            }
            IbkrIntent::Logout => {
                self.begin_logout();
                Kind::Logout
            }
            // Handled by `submit_shared`.
            IbkrIntent::Adopt { .. }
            | IbkrIntent::Lead { .. }
            | IbkrIntent::Follow { .. }
            | IbkrIntent::Recover { .. } => {
                return Err(UsageError::InvalidArgument {
                    what: "intent",
                    reason: "not an intent of this role",
                });
            }
        };
        let mut op = self.new_op(kind, false);
        op.by_user = true;
        if let IbkrIntent::InitBrokerage { compete: Some(c) } = intent {
            op.compete = c;
        }
        let id = op.id;
        self.queue.push_back(op);
        self.drive(now);
        Ok(id)
    }

    fn handle_input(&mut self, input: Input, now: Now) {
        let (id, result): (RequestId, Result<http::Response<Vec<u8>>, TransportFailure>) =
            match input {
                Input::Response { id, response } => (id, Ok(response)),
                Input::Failed { id, failure } => (id, Err(failure)),
                _ => {
                    self.drive(now);
                    return;
                }
            };
        if self.closed.is_some() {
            return;
        }
        if self.in_flight.as_ref().is_none_or(|f| f.id != id) {
            // A late answer to a token request given up at its deadline: a credentials
            // rejection still ends the session (it must never be asked again).
            if let Ok(resp) = &result
                && self.abandoned_lst.contains(&id)
                && resp.status() == http::StatusCode::UNAUTHORIZED
            {
                self.close(Error::CredentialsRejected(api_error(resp)));
            }
            return; // otherwise stale or unknown: ignored
        }
        let Some(f) = self.in_flight.take() else {
            return;
        };
        if self.cancel_if_logging_out(f.step, result.as_ref().ok()) {
            self.drive(now);
            return;
        }
        match result {
            Ok(resp) => self.on_response(f.step, &resp, f.dh, now),
            Err(failure) => self.on_failure(f.step, Error::Transport(failure), f.dh, now),
        }
        self.drive(now);
    }

    fn poll_output(&mut self, now: Now) -> Out {
        self.drive(now);
        if let Some(o) = self.out.pop_front() {
            crate::machine::trace_output("ibkr", &o);
            return o;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(f) = &self.in_flight {
            consider(Some(f.deadline));
        } else if let Some(until) = self.backoff_until.filter(|u| *u > now.mono) {
            // Nothing is sent while backing off; only the renewal timer may queue.
            consider(Some(until));
            consider(self.lst_refresh_at);
        } else if self.closed.is_none() {
            consider(self.current.as_ref().and_then(|o| o.wake));
            consider(self.backoff_until);
            consider(self.next_tickle);
            consider(self.lst_refresh_at);
        }
        consider(self.awaiting.as_ref().map(|a| a.deadline));
        // Everything due has run in `drive`; keep the contract even so.
        Output::Wait(next.map(|t| t.max(now.after(Duration::from_millis(1)))))
    }

    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        if !self.parts.base.same_origin(request.uri()) {
            return Err(AuthorizeError::Refused(UsageError::InvalidArgument {
                what: "request URI",
                reason: "not on the session's base URL scheme, host and port; credentials are never sent elsewhere",
            }));
        }
        if let Some(e) = self.closed.as_deref() {
            return Err(AuthorizeError::Lost(e.clone()));
        }
        if let Some(until) = self.backoff_until.filter(|u| *u > now.mono) {
            return Err(AuthorizeError::BackingOff { until });
        }
        self.lapse_lead(now);
        let stamp = AuthStamp {
            generation: self.generation,
        };
        if self.role == IbkrRole::Follower {
            if !self.holds_credentials() || (self.signer.is_some() && !self.lst_valid(now)) {
                // The owner obtains the session: wait for a newer generation.
                let op = self.await_newer(self.generation, now);
                return Err(AuthorizeError::Pending { op });
            }
            if self.signer.is_none() {
                return Ok(stamp);
            }
        } else if self.signer.is_none() {
            if self.logged_out {
                return Err(AuthorizeError::NotLoggedIn);
            }
            if self.state == IbkrState::BrowserLoginRequired {
                // The gateway would answer 401: say what the person has to do.
                return Err(AuthorizeError::Lost(Error::ActionRequired(
                    ActionRequired::BrowserLogin,
                )));
            }
            return Ok(stamp);
        }
        if self.logged_out {
            return Err(AuthorizeError::NotLoggedIn);
        }
        if !self.lst_valid(now) {
            if let Some(op) = self.token_op() {
                return Err(AuthorizeError::Pending { op });
            }
            if self.state == IbkrState::Disconnected {
                return Err(AuthorizeError::NotLoggedIn);
            }
            if let Some(hold) = self.lst_hold.as_deref() {
                return Err(AuthorizeError::Lost(hold.clone()));
            }
            let op = self.machine_op(Kind::Connect { force_lst: true }, false, true);
            return Err(AuthorizeError::Pending { op });
        }
        if let (Some(signer), Some(lst)) = (&self.signer, &self.lst) {
            signer
                .sign(request, &lst.token, self.rng.get(), now)
                .map_err(|e| match e {
                    Error::Usage(u) => AuthorizeError::Refused(u),
                    other => AuthorizeError::Lost(other),
                })?;
        }
        Ok(stamp)
    }

    fn observe<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
        stamp: AuthStamp,
        now: Now,
    ) -> Observation {
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
            let until = self.enter_backoff(now);
            return Observation::BackOff { until };
        }
        self.lapse_lead(now);
        if self.role == IbkrRole::Follower
            && (policy::is_no_session(response) || policy::is_no_bridge(response))
        {
            return self.observe_as_follower(stamp, now);
        }
        if self.logged_out && (policy::is_no_session(response) || policy::is_no_bridge(response)) {
            // Logged out by the user: nothing is recovered, nothing changes.
            return Observation::Lost(Error::Usage(UsageError::NotLoggedIn));
        }
        if policy::is_no_session(response) {
            if self.signer.is_none() {
                self.lose_to_browser_login();
                return Observation::Lost(Error::ActionRequired(ActionRequired::BrowserLogin));
            }
            if stamp.generation < self.generation {
                return Observation::Replay;
            }
            if let Some(e) = self.closed.as_deref() {
                return Observation::Lost(e.clone());
            }
            if let Some(op) = self.token_op() {
                return Observation::Recover { op };
            }
            if let Some(hold) = self.lst_hold.as_deref() {
                return Observation::Lost(hold.clone());
            }
            if self.reactive_generation == Some(self.generation) {
                // Credentials from a reactive recovery refused before any success.
                let err = Error::Unauthorized(api_error(response));
                self.lst = None;
                self.lst_refresh_at = None;
                self.reactive_generation = None;
                self.set_state(IbkrState::Disconnected);
                self.out.push_back(Output::Event(Event::SessionLost {
                    reason: err.clone(),
                }));
                return Observation::Lost(err);
            }
            let op = self.machine_op(Kind::Connect { force_lst: true }, true, true);
            return Observation::Recover { op };
        }
        if policy::is_no_bridge(response) && self.closed.is_none() {
            if let Some(op) = self
                .current
                .iter()
                .chain(self.queue.iter())
                .find(|o| matches!(o.kind, Kind::Connect { .. }))
            {
                return Observation::Recover { op: op.id };
            }
            let op = self.machine_op(Kind::Connect { force_lst: false }, false, true);
            return Observation::Recover { op };
        }
        if stamp.generation == self.generation && response.status().is_success() {
            self.reactive_generation = None;
        }
        Observation::Accepted
    }

    fn state(&self) -> IbkrState {
        self.state.clone()
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.parts.base.url)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn sent(s: &mut IbkrSession, now: Now) -> RequestId {
        loop {
            match s.poll_output(now) {
                Output::Send(t) => return t.id,
                Output::Event(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// One answer can release more work than any fixed step budget: every queued
    /// operation completes before the machine is asked again, and nothing is left due.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant to start from
    fn drive_runs_until_nothing_is_due() {
        let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH);
        let mut s = IbkrSession::new(IbkrConfig::gateway(), RngSeed::from_u64(1), now).unwrap();
        let logout = s.submit(IbkrIntent::Logout, now).unwrap();
        let id = sent(&mut s, now);
        let mut queued = Vec::new();
        while let Ok(op) = s.submit(IbkrIntent::CheckStatus, now) {
            queued.push(op);
        }
        assert_eq!(queued.len(), MAX_QUEUE);
        let response = http::Response::builder()
            .status(200)
            .body(br#"{"status":true}"#.to_vec())
            .unwrap();
        s.handle_input(Input::Response { id, response }, now);
        assert!(!s.step_once(now), "work left due after handling an answer");
        let completed: Vec<OpId> = s
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Event(Event::Completed { op, .. }) => Some(*op),
                _ => None,
            })
            .collect();
        assert_eq!(completed.len(), MAX_QUEUE + 1);
        assert_eq!(completed[0], logout);
        assert_eq!(&completed[1..], &queued[..]);
    }
}
