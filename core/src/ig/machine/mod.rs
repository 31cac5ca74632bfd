//! The IG session machine: transitions only. Requests come from `encode`, answers
//! are read by `decode`, error answers are judged by `classify`.
//!
//! - `mod.rs`: the session's state, accessors and the operation queue;
//! - `steps.rs`: starting operations and sending their requests;
//! - `outcome.rs`: what each answer, failure or timeout does;
//! - `driver.rs`: the [`Machine`] loop contract, `authorize` and `observe`.

mod driver;
mod outcome;
mod steps;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::classify::{Action, BackOffs, Endpoint, classify};
use super::config::{BaseUrl, IgConfig, LoginFlow};
use super::decode::{self, IgAccount};
use super::encode::{self, AuthHeaders};
use super::snapshot::{SessionSnapshot, SnapTokens};
use super::{
    AuthMode, IgIntent, IgOutcome, IgState, LightstreamerCredentials, SessionDetails, SessionInfo,
};
use crate::error::{Error, ProtocolError, UsageError};
use crate::machine::{
    AuthStamp, AuthorizeError, Event, Input, Machine, Observation, OpId, Output, RequestId,
    RngSeed, Transmit, TransportFailure,
};
use crate::rng::{SessionRng, session_rng};
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
    cfg: IgConfig,
    base: BaseUrl,
    base_str: String,
    rng: SessionRng,
    ids: Ids,
    tokens: Option<Tokens>,
    /// The account IG made active at login (or the last switch).
    session_account: Option<String>,
    /// The account the user chose; kept outside the tokens so a refresh or re-login
    /// does not silently undo a switch.
    selected_account: Option<String>,
    lightstreamer_endpoint: Option<String>,
    client_id: Option<String>,
    accounts: Vec<IgAccount>,
    /// CST/XST fetched with `fetchSessionTokens=true`, apart from the OAuth tokens.
    streaming: Option<(Cst, SecurityToken)>,
    generation: u64,
    /// Generation produced by a reactive recovery and not yet accepted by IG.
    recovered_gen: Option<u64>,
    refresh_at: Option<Instant>,
    backoff_until: Option<Instant>,
    closed: Option<Error>,
    lost: Option<Error>,
    queue: VecDeque<Op>,
    current: Option<Op>,
    in_flight: Option<InFlight>,
    outbox: VecDeque<Output<IgState, IgOutcome>>,
    last_state: IgState,
    /// Login requests (they carry the password) given up on before their answer came.
    /// A late answer to one of them still counts if it rejects the credentials.
    abandoned_logins: VecDeque<RequestId>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Login,
    Refresh,
    Recover,
    Read { fetch: bool },
    Switch { make_default: bool },
    Logout,
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    EncKey,
    Login,
    WebLogin,
    Select,
    SwitchPut { account: String, make_default: bool },
    Refresh,
    Read { fetch: bool },
    Logout,
}

struct Op {
    id: OpId,
    kind: Kind,
    steps: VecDeque<Step>,
    /// The one in-operation credential recovery has been used.
    recovered: bool,
    /// A failed refresh already fell back to a login.
    fell_back: bool,
    attempts: u32,
    retry_at: Option<Instant>,
    enc_password: Option<Password>,
    target_account: Option<String>,
    details: Option<SessionDetails>,
    streaming_tokens: bool,
    already_active: bool,
    /// A logout was submitted while this operation had a request in flight: the
    /// answer is applied (it may hold tokens the logout must end), then the operation
    /// completes as [`Error::Cancelled`] without sending anything more.
    cancelled: bool,
}

struct InFlight {
    id: RequestId,
    step: Step,
    deadline: Instant,
}

enum Next {
    Continue,
    Done(Result<(), Error>),
}

impl IgSession {
    /// A logged-out session.
    ///
    /// `seed` seeds the session's random generator (RSA padding of the encrypted
    /// password). It is an argument, not a configuration field, so that no session is
    /// built on a default seed by accident: the transports fill it from the operating
    /// system; tests pass a fixed seed ([`RngSeed::from_u64`]) so every byte is
    /// reproducible. `now` is the creation time (reserved: today nothing is scheduled
    /// at creation).
    ///
    /// # Errors
    /// [`Error::Usage`] ([`UsageError::InvalidArgument`]) for a configuration that
    /// cannot work: an empty API key, a base URL that is not an absolute http(s) URL,
    /// the web-platform login on demo, a zero deadline.
    pub fn new(config: IgConfig, seed: RngSeed, now: Now) -> Result<Self, Error> {
        let _ = now;
        let base = config.validate().map_err(Error::Usage)?;
        let config = config.clamped();
        let base_str = config.environment.base_url().to_owned();
        Ok(Self {
            rng: session_rng(&seed),
            base,
            base_str,
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
            queue: VecDeque::new(),
            current: None,
            in_flight: None,
            outbox: VecDeque::new(),
            last_state: IgState::LoggedOut,
            abandoned_logins: VecDeque::new(),
        })
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
        let (cst, xst) = match (&self.tokens, &self.streaming) {
            (Some(Tokens::Cst { cst, xst }), _) => (cst, xst),
            (Some(Tokens::OAuth { .. }), Some((c, x))) => (c, x),
            _ => return None,
        };
        Some(LightstreamerCredentials {
            endpoint: self.lightstreamer_endpoint.clone(),
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
                streaming: self.streaming.clone(),
            },
        };
        Some(SessionSnapshot {
            base_url: self.base_str.clone(),
            account_id: self.account_id()?.to_owned(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.clone(),
            tokens,
        })
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

    fn compute_state(&self) -> IgState {
        if let Some(reason) = &self.closed {
            return IgState::Closed {
                reason: reason.clone(),
            };
        }
        if let Some(until) = self.backoff_until {
            return IgState::BackingOff { until };
        }
        match self.current.as_ref().map(|o| o.kind) {
            Some(Kind::Login | Kind::Resume) => return IgState::LoggingIn,
            Some(Kind::Recover) => return IgState::Recovering,
            Some(Kind::Logout) => return IgState::LoggingOut,
            _ => {}
        }
        if let (Some(mode), Some(account_id)) = (self.mode(), self.account_id()) {
            return IgState::Active {
                account_id: account_id.to_owned(),
                mode,
            };
        }
        if let Some(reason) = &self.lost {
            return IgState::Lost {
                reason: reason.clone(),
            };
        }
        IgState::LoggedOut
    }

    fn sync_state(&mut self) {
        let s = self.compute_state();
        if s != self.last_state {
            self.last_state = s.clone();
            self.outbox.push_back(Output::Event(Event::StateChanged(s)));
        }
    }

    fn new_op(&mut self, kind: Kind) -> Op {
        Op {
            id: self.ids.op(),
            kind,
            steps: VecDeque::new(),
            recovered: false,
            fell_back: false,
            attempts: 0,
            retry_at: None,
            enc_password: None,
            target_account: None,
            details: None,
            streaming_tokens: false,
            already_active: false,
            cancelled: false,
        }
    }

    /// A logout is queued or running: nothing but it may be sent, and nothing may be
    /// started (no recovery, no refresh) until it ends.
    fn logout_pending(&self) -> bool {
        self.current
            .iter()
            .chain(self.queue.iter())
            .any(|o| o.kind == Kind::Logout)
    }

    /// Remembers a login request given up on, for its late answer.
    fn abandon_login(&mut self, id: RequestId) {
        if self.abandoned_logins.len() >= MAX_ABANDONED {
            self.abandoned_logins.pop_front();
        }
        self.abandoned_logins.push_back(id);
    }

    fn login_steps(&self) -> Vec<Step> {
        let mut s = match self.cfg.login_flow {
            LoginFlow::EncryptedV2 => vec![Step::EncKey, Step::Login],
            LoginFlow::WebPlatform => vec![Step::WebLogin],
            LoginFlow::V3 if self.cfg.fetch_streaming_tokens => {
                vec![Step::Login, Step::Read { fetch: true }]
            }
            _ => vec![Step::Login],
        };
        s.push(Step::Select);
        s
    }

    /// Steps that recover refused credentials: a refresh for v3, a login otherwise.
    fn recovery_steps(&self) -> Vec<Step> {
        match self.tokens {
            Some(Tokens::OAuth { .. }) => vec![Step::Refresh],
            _ => self.login_steps(),
        }
    }

    /// The queued or running operation that is obtaining credentials, if any.
    fn credential_op(&self) -> Option<OpId> {
        self.current
            .iter()
            .chain(self.queue.iter())
            .find(|o| {
                matches!(
                    o.kind,
                    Kind::Login | Kind::Resume | Kind::Recover | Kind::Refresh
                )
            })
            .map(|o| o.id)
    }

    fn recovery_op(&self) -> Option<OpId> {
        self.current
            .iter()
            .chain(self.queue.iter())
            .find(|o| matches!(o.kind, Kind::Recover | Kind::Refresh))
            .map(|o| o.id)
    }

    fn enqueue_front(&mut self, kind: Kind) -> OpId {
        let op = self.new_op(kind);
        let id = op.id;
        self.queue.push_front(op);
        id
    }

    fn ensure_refresh(&mut self) -> OpId {
        match self.recovery_op() {
            Some(id) => id,
            None => {
                self.refresh_at = None;
                self.enqueue_front(Kind::Refresh)
            }
        }
    }
}

impl IgSession {
    fn install_snapshot(&mut self, s: SessionSnapshot, now: Now) {
        self.tokens = Some(match s.tokens {
            SnapTokens::Cst { cst, xst } => Tokens::Cst { cst, xst },
            SnapTokens::OAuth {
                access,
                refresh,
                expires_at_epoch_ms,
                streaming,
            } => {
                self.streaming = streaming;
                let expires_at = now.instant_at_epoch_millis(expires_at_epoch_ms);
                let left = expires_at.saturating_duration_since(now.mono);
                if !left.is_zero() {
                    let margin = self.cfg.refresh_margin.min(left / 2);
                    self.refresh_at = Some(expires_at.checked_sub(margin).unwrap_or(now.mono));
                }
                Tokens::OAuth {
                    access,
                    refresh,
                    expires_at,
                    expires_epoch_ms: expires_at_epoch_ms,
                }
            }
        });
        self.session_account = Some(s.account_id);
        self.selected_account = None;
        self.lightstreamer_endpoint = s.lightstreamer_endpoint;
        self.lost = None;
        self.generation += 1;
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

fn encode_check(v: &str) -> bool {
    http::HeaderValue::from_str(v).is_err()
}

impl std::fmt::Debug for IgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgSession")
            .field("base_url", &self.base_str)
            .field("login_flow", &self.cfg.login_flow)
            .field("state", &self.compute_state())
            .field("generation", &self.generation)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}
