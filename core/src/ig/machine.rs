//! The IG session machine: transitions only. Requests come from `encode`, answers
//! are read by `decode`, error answers are judged by `classify`.

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
    Transmit, TransportFailure,
};
use crate::rng::{SessionRng, session_rng};
use crate::secret::{
    AccessToken, Cst, LightstreamerPassword, Password, RefreshToken, SecurityToken,
};
use crate::time::Now;
use crate::wire::Ids;

/// Intents that may wait in the queue at once.
const MAX_QUEUE: usize = 64;

/// An IG Markets session: a sans-IO [`Machine`].
///
/// ```
/// use broker_session::ig::{IgConfig, IgEnvironment, IgSession, IgIntent, IgState};
/// use broker_session::{Machine, Now, RngSeed};
/// use std::time::{Instant, SystemTime};
///
/// let config = IgConfig::new(IgEnvironment::Demo, "key", "user", "password", RngSeed::from_u64(1));
/// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH);
/// let mut session = IgSession::new(config, now).unwrap();
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
    /// # Errors
    /// [`UsageError::InvalidArgument`] for a configuration that cannot work: an empty
    /// API key, a base URL that is not an absolute http(s) URL, the web-platform login
    /// on demo.
    pub fn new(config: IgConfig, now: Now) -> Result<Self, UsageError> {
        let _ = now;
        let base = config.validate()?;
        let base_str = config.environment.base_url().to_owned();
        Ok(Self {
            rng: session_rng(&config.rng_seed),
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
        }
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

    fn run_timers(&mut self, now: Now) {
        if self.backoff_until.is_some_and(|t| t <= now.mono) {
            self.backoff_until = None;
        }
        if let Some(f) = self.in_flight.take_if(|f| f.deadline <= now.mono) {
            let endpoint = step_endpoint_name(&f.step);
            self.on_failure(
                f.step,
                Error::Protocol(ProtocolError::NoResponse { endpoint }),
                now,
            );
        }
        if self.in_flight.is_none()
            && self
                .current
                .as_ref()
                .and_then(|o| o.retry_at)
                .is_some_and(|t| t <= now.mono)
        {
            if let Some(op) = self.current.as_mut() {
                op.retry_at = None;
            }
            self.advance(now);
        }
        if self.refresh_at.is_some_and(|t| t <= now.mono) && self.closed.is_none() {
            self.refresh_at = None;
            if matches!(self.tokens, Some(Tokens::OAuth { .. })) && self.recovery_op().is_none() {
                // Ahead of queued intents: they need a live token too.
                self.enqueue_front(Kind::Refresh);
            }
        }
    }

    fn start_next(&mut self, now: Now) {
        if self.current.is_some() || self.backoff_until.is_some() || self.closed.is_some() {
            return;
        }
        let Some(mut op) = self.queue.pop_front() else {
            return;
        };
        let ready: Result<Vec<Step>, Error> = match op.kind {
            Kind::Login => {
                self.lost = None;
                Ok(self.login_steps())
            }
            Kind::Recover => Ok(self.recovery_steps()),
            Kind::Refresh => match self.tokens {
                Some(Tokens::OAuth { .. }) => Ok(vec![Step::Refresh]),
                Some(_) => Err(Error::Usage(UsageError::Unsupported {
                    intent: "refresh",
                    reason: "only v3 sessions have refresh tokens",
                })),
                None => Err(Error::Usage(UsageError::NotLoggedIn)),
            },
            Kind::Read { fetch } => self.need_tokens().map(|()| vec![Step::Read { fetch }]),
            Kind::Logout => self.need_tokens().map(|()| vec![Step::Logout]),
            Kind::Switch { make_default } => self.need_tokens().and_then(|()| {
                match (&self.tokens, make_default) {
                    (Some(Tokens::OAuth { .. }), true) => Err(Error::Usage(UsageError::Unsupported {
                        intent: "switch_account",
                        reason: "a v3 session switches by header only; changing the default account needs a v2 session",
                    })),
                    (Some(Tokens::OAuth { .. }), false) => Ok(vec![Step::Select]),
                    _ => Ok(vec![Step::SwitchPut {
                        account: op.target_account.clone().unwrap_or_default(),
                        make_default,
                    }]),
                }
            }),
            Kind::Resume => {
                // Resume ops carry their tokens in `target_account`'s companion: set in submit.
                // An expired v3 access token is refreshed first; a failed refresh does not
                // fall back to a login (the caller decides).
                op.fell_back = true;
                let mut s = Vec::new();
                if let Some(Tokens::OAuth { expires_at, .. }) = &self.tokens
                    && *expires_at <= now.mono
                {
                    s.push(Step::Refresh);
                }
                s.push(Step::Read { fetch: false });
                Ok(s)
            }
        };
        match ready {
            Ok(steps) => {
                op.steps = steps.into();
                self.current = Some(op);
                self.advance(now);
            }
            Err(e) => {
                self.current = Some(op);
                self.finish(Err(e), now);
            }
        }
    }

    fn need_tokens(&self) -> Result<(), Error> {
        if self.tokens.is_some() {
            Ok(())
        } else {
            Err(Error::Usage(UsageError::NotLoggedIn))
        }
    }

    /// Runs steps until one needs a request, a retry delay holds, or none is left.
    fn advance(&mut self, now: Now) {
        loop {
            let Some(op) = self.current.as_mut() else {
                return;
            };
            if op.retry_at.is_some() || self.in_flight.is_some() {
                return;
            }
            let Some(step) = op.steps.pop_front() else {
                self.finish(Ok(()), now);
                return;
            };
            if step == Step::Select {
                if let Some(put) = self.select_step()
                    && let Some(op) = self.current.as_mut()
                {
                    op.steps.push_front(put);
                }
                continue;
            }
            match self.request_for(&step) {
                Ok(request) => {
                    let id = self.ids.request();
                    self.in_flight = Some(InFlight {
                        id,
                        step,
                        deadline: now.mono + self.cfg.request_deadline,
                    });
                    self.outbox
                        .push_back(Output::Send(Transmit { id, request }));
                    return;
                }
                Err(e) => {
                    self.finish(Err(e), now);
                    return;
                }
            }
        }
    }

    /// The local part of selecting an account; returns the `PUT /session` a CST
    /// session needs, if any.
    fn select_step(&mut self) -> Option<Step> {
        let op = self.current.as_ref()?;
        let wanted = match op.kind {
            Kind::Switch { .. } => op.target_account.clone(),
            _ => self
                .selected_account
                .clone()
                .or_else(|| self.cfg.account_id.clone()),
        }?;
        match self.tokens {
            Some(Tokens::OAuth { .. }) => {
                let before = self.account_id().map(str::to_owned);
                if before.as_deref() != Some(wanted.as_str()) {
                    self.generation += 1;
                } else if let Some(op) = self.current.as_mut() {
                    op.already_active = true;
                }
                self.selected_account = Some(wanted);
                None
            }
            Some(Tokens::Cst { .. }) => {
                if self.session_account.as_deref() == Some(wanted.as_str()) {
                    self.selected_account = Some(wanted);
                    None
                } else {
                    Some(Step::SwitchPut {
                        account: wanted,
                        make_default: false,
                    })
                }
            }
            None => None,
        }
    }

    fn auth(&self) -> Result<AuthHeaders<'_>, Error> {
        match &self.tokens {
            Some(Tokens::Cst { cst, xst }) => Ok(AuthHeaders::Cst { cst, xst }),
            Some(Tokens::OAuth { access, .. }) => Ok(AuthHeaders::Bearer {
                token: access,
                account_id: self.account_id().unwrap_or_default(),
            }),
            None => Err(Error::Usage(UsageError::NotLoggedIn)),
        }
    }

    fn request_for(&mut self, step: &Step) -> Result<http::Request<Vec<u8>>, Error> {
        let base = self.base_str.as_str();
        let key = &self.cfg.api_key;
        match step {
            Step::EncKey => encode::encryption_key(base, key),
            Step::Login => {
                let (version, encrypted) = match self.cfg.login_flow {
                    LoginFlow::V1 => (1, false),
                    LoginFlow::V3 => (3, false),
                    LoginFlow::EncryptedV2 => (2, true),
                    _ => (2, false),
                };
                let enc = self.current.as_mut().and_then(|o| o.enc_password.take());
                let password = match (&enc, encrypted) {
                    (Some(p), true) => p,
                    (None, true) => {
                        return Err(Error::Usage(UsageError::InvalidArgument {
                            what: "login",
                            reason: "encrypted login without an encryption key",
                        }));
                    }
                    _ => &self.cfg.password,
                };
                encode::login(
                    base,
                    key,
                    version,
                    &self.cfg.identifier,
                    password,
                    encrypted,
                )
            }
            Step::WebLogin => encode::web_platform_login(
                &self.cfg.web_platform_url,
                &self.cfg.identifier,
                &self.cfg.password,
            ),
            Step::Refresh => match &self.tokens {
                Some(Tokens::OAuth { refresh, .. }) => encode::refresh(base, key, refresh),
                _ => Err(Error::Usage(UsageError::NotLoggedIn)),
            },
            Step::Read { fetch } => encode::read_session(base, key, self.auth()?, *fetch),
            Step::SwitchPut {
                account,
                make_default,
            } => encode::switch_account(base, key, self.auth()?, account, *make_default),
            Step::Logout => encode::logout(base, key, self.auth()?),
            Step::Select => Err(Error::Usage(UsageError::InvalidArgument {
                what: "step",
                reason: "select is local",
            })),
        }
    }

    fn on_response(&mut self, step: Step, response: &http::Response<Vec<u8>>, now: Now) {
        let status = response.status();
        let next = if status.is_success() {
            match self.apply_success(&step, response, now) {
                Ok(()) => {
                    if let Some(op) = self.current.as_mut() {
                        op.attempts = 0;
                    }
                    Next::Continue
                }
                Err(e) => self.on_decode_error(&step, e, now),
            }
        } else if status.is_redirection() || status.is_informational() {
            let endpoint = step_endpoint_name(&step);
            self.on_decode_error(
                &step,
                Error::Protocol(ProtocolError::Redirect {
                    endpoint,
                    status: status.as_u16(),
                }),
                now,
            )
        } else {
            let code = decode::error_code(response.body());
            let action = classify(
                step_endpoint(&step),
                status.as_u16(),
                code.as_deref(),
                self.backoffs(),
            );
            self.on_action(step, action, now)
        };
        match next {
            Next::Continue => self.advance(now),
            Next::Done(r) => self.finish(r, now),
        }
    }

    /// A 2xx that does not parse, or a redirect: a login's failure leaves the session
    /// logged out; a logout still forgets the tokens.
    fn on_decode_error(&mut self, step: &Step, e: Error, now: Now) -> Next {
        match step {
            Step::Logout => Next::Done(Ok(())),
            // An unusable refresh answer is a failed refresh: one login instead.
            Step::Refresh => self.refresh_failed(e),
            Step::EncKey | Step::Login | Step::WebLogin => {
                if matches!(e, Error::ActionRequired(_) | Error::Crypto(_)) {
                    self.close(e.clone(), now);
                }
                Next::Done(Err(e))
            }
            _ => Next::Done(Err(e)),
        }
    }

    fn apply_success(
        &mut self,
        step: &Step,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<(), Error> {
        match step {
            Step::EncKey => {
                let key = decode::encryption_key(response)?;
                let enc = super::crypto::encrypt_password(
                    &mut self.rng,
                    &key.key,
                    key.time_stamp,
                    &self.cfg.password,
                )?;
                if let Some(op) = self.current.as_mut() {
                    op.enc_password = Some(enc);
                }
            }
            Step::Login | Step::WebLogin => {
                if self.cfg.login_flow == LoginFlow::V3 {
                    let l = decode::login_v3(response)?;
                    self.set_oauth(l.tokens, now);
                    self.session_account = Some(l.account_id);
                    self.client_id = l.client_id;
                    self.lightstreamer_endpoint = l.lightstreamer_endpoint;
                    self.accounts.clear();
                } else {
                    let l = if *step == Step::WebLogin {
                        decode::web_platform_login(response)?
                    } else {
                        decode::login_v2(response)?
                    };
                    self.tokens = Some(Tokens::Cst {
                        cst: l.cst,
                        xst: l.xst,
                    });
                    self.refresh_at = None;
                    self.session_account = Some(l.account_id);
                    self.client_id = l.client_id;
                    self.lightstreamer_endpoint = l.lightstreamer_endpoint;
                    self.accounts = l.accounts;
                }
                self.streaming = None;
                self.generation += 1;
            }
            Step::Refresh => {
                let t = decode::refresh(response)?;
                self.set_oauth(t, now);
                self.generation += 1;
            }
            Step::Read { .. } => {
                let (details, tokens) = decode::read_session(response)?;
                if let Some(op) = self.current.as_mut() {
                    op.streaming_tokens = tokens.is_some();
                    op.details = Some(details.clone());
                }
                if let Some(t) = tokens {
                    self.streaming = Some((t.cst, t.xst));
                }
                if details.lightstreamer_endpoint.is_some() {
                    self.lightstreamer_endpoint = details.lightstreamer_endpoint;
                }
                if self.session_account.is_none() {
                    self.session_account = Some(details.account_id);
                }
            }
            Step::SwitchPut { account, .. } => {
                let t = decode::switch_account(response)?;
                if let Some(Tokens::Cst { cst, xst }) = self.tokens.as_mut() {
                    if let Some(c) = t.cst {
                        *cst = c;
                    }
                    if let Some(x) = t.xst {
                        *xst = x;
                    }
                }
                self.switched_to(account.clone());
            }
            Step::Logout => {
                if let Some(op) = self.current.as_mut() {
                    op.already_active = true;
                }
            }
            Step::Select => {}
        }
        Ok(())
    }

    fn switched_to(&mut self, account: String) {
        self.session_account = Some(account.clone());
        self.selected_account = Some(account);
        self.generation += 1;
    }

    fn set_oauth(&mut self, t: decode::OAuthTokens, now: Now) {
        let expires_at = now.mono + t.expires_in;
        // The margin stays at most half the lifetime, so short tokens never loop.
        let margin = self.cfg.refresh_margin.min(t.expires_in / 2);
        self.refresh_at = Some(expires_at - margin);
        self.tokens = Some(Tokens::OAuth {
            access: t.access_token,
            refresh: t.refresh_token,
            expires_at,
            expires_epoch_ms: now
                .unix_millis()
                .saturating_add(i64::try_from(t.expires_in.as_millis()).unwrap_or(i64::MAX)),
        });
    }

    fn on_action(&mut self, step: Step, action: Action, now: Now) -> Next {
        if step == Step::Logout {
            // The tokens are forgotten whatever IG says; only the flag differs.
            let confirmed = matches!(action, Action::AlreadyDone(_));
            if let Some(op) = self.current.as_mut() {
                op.already_active = confirmed;
            }
            return Next::Done(Ok(()));
        }
        match action {
            Action::Close(e) => {
                self.close(e.clone(), now);
                Next::Done(Err(e))
            }
            Action::Fail(e) => {
                if step == Step::Refresh {
                    return self.refresh_failed(e);
                }
                Next::Done(Err(e))
            }
            Action::Relogin(api) | Action::Refresh(api) => {
                if step == Step::Refresh {
                    return self.refresh_failed(Error::Unauthorized(api));
                }
                let Some(op) = self.current.as_mut() else {
                    return Next::Done(Err(Error::Unauthorized(api)));
                };
                let cst_resume =
                    op.kind == Kind::Resume && !matches!(self.tokens, Some(Tokens::OAuth { .. }));
                if op.recovered || cst_resume || op.kind == Kind::Recover {
                    return Next::Done(Err(Error::Unauthorized(api)));
                }
                op.recovered = true;
                let mut steps = self.recovery_steps();
                steps.push(step);
                if let Some(op) = self.current.as_mut() {
                    for s in steps.into_iter().rev() {
                        op.steps.push_front(s);
                    }
                }
                Next::Continue
            }
            Action::BackOff { error, retry_after } => {
                let until = now.mono + retry_after;
                self.backoff_until = Some(self.backoff_until.map_or(until, |u| u.max(until)));
                Next::Done(Err(Error::Throttled { error, retry_after }))
            }
            Action::Retry(api) => self.retry(step, Error::Unavailable(api), now),
            Action::AlreadyDone(_) => {
                if let Step::SwitchPut { account, .. } = step {
                    if let Some(op) = self.current.as_mut() {
                        op.already_active = true;
                    }
                    // IG keeps the current tokens: nothing to replace.
                    self.session_account = Some(account.clone());
                    self.selected_account = Some(account);
                }
                Next::Continue
            }
        }
    }

    /// A refused refresh falls back to one full login (not for a resume, where the
    /// caller decides).
    fn refresh_failed(&mut self, e: Error) -> Next {
        let steps = self.login_steps();
        match self.current.as_mut() {
            Some(op) if !op.fell_back => {
                op.fell_back = true;
                for s in steps.into_iter().rev() {
                    op.steps.push_front(s);
                }
                Next::Continue
            }
            _ => Next::Done(Err(e)),
        }
    }

    fn retry(&mut self, step: Step, e: Error, now: Now) -> Next {
        let max = self.cfg.max_attempts.max(1);
        let delay = self.cfg.retry_delay;
        let Some(op) = self.current.as_mut() else {
            return Next::Done(Err(e));
        };
        op.attempts += 1;
        if op.attempts >= max {
            return Next::Done(Err(e));
        }
        let factor = 1u32 << (op.attempts - 1).min(10);
        op.retry_at = Some(now.mono + delay.saturating_mul(factor).max(Duration::from_millis(1)));
        op.steps.push_front(step);
        Next::Continue
    }

    fn on_failure(&mut self, step: Step, e: Error, now: Now) {
        let next = if step == Step::Logout {
            Next::Done(Ok(()))
        } else {
            self.retry(step, e, now)
        };
        match next {
            Next::Continue => self.advance(now),
            Next::Done(r) => self.finish(r, now),
        }
    }

    fn forget_tokens(&mut self) {
        self.tokens = None;
        self.streaming = None;
        self.refresh_at = None;
        self.recovered_gen = None;
        self.session_account = None;
        self.selected_account = None;
        self.accounts.clear();
    }

    fn lose(&mut self, reason: Error) {
        self.forget_tokens();
        self.lost = Some(reason.clone());
        self.outbox
            .push_back(Output::Event(Event::SessionLost { reason }));
    }

    fn close(&mut self, reason: Error, _now: Now) {
        if self.closed.is_some() {
            return;
        }
        self.forget_tokens();
        self.in_flight = None;
        self.backoff_until = None;
        self.closed = Some(reason.clone());
        for op in std::mem::take(&mut self.queue) {
            self.outbox.push_back(Output::Event(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            }));
        }
        self.outbox
            .push_back(Output::Event(Event::SessionLost { reason }));
    }

    fn session_info(&self) -> Option<SessionInfo> {
        Some(SessionInfo {
            account_id: self.account_id()?.to_owned(),
            client_id: self.client_id.clone(),
            accounts: self.accounts.clone(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.clone(),
            mode: self.mode()?,
        })
    }

    fn finish(&mut self, result: Result<(), Error>, now: Now) {
        let Some(op) = self.current.take() else {
            return;
        };
        self.in_flight = None;
        let not_logged_in = || Error::Usage(UsageError::NotLoggedIn);
        let result: Result<IgOutcome, Error> = match (op.kind, result) {
            (Kind::Logout, _) => {
                self.forget_tokens();
                self.lost = None;
                Ok(IgOutcome::LoggedOut {
                    server_confirmed: op.already_active,
                })
            }
            (Kind::Login, Ok(())) => self
                .session_info()
                .map(IgOutcome::LoggedIn)
                .ok_or_else(not_logged_in),
            (Kind::Resume, Ok(())) => self
                .session_info()
                .map(IgOutcome::Resumed)
                .ok_or_else(not_logged_in),
            (Kind::Refresh, Ok(())) => match &self.tokens {
                Some(Tokens::OAuth { expires_at, .. }) => Ok(IgOutcome::Refreshed {
                    expires_at: *expires_at,
                }),
                _ => Err(not_logged_in()),
            },
            (Kind::Recover, Ok(())) => {
                self.recovered_gen = Some(self.generation);
                Ok(IgOutcome::Recovered {
                    generation: self.generation,
                })
            }
            (Kind::Read { .. }, Ok(())) => match op.details {
                Some(details) => Ok(IgOutcome::Session {
                    details,
                    streaming_tokens: op.streaming_tokens,
                }),
                None => Err(not_logged_in()),
            },
            (Kind::Switch { .. }, Ok(())) => Ok(IgOutcome::Switched {
                account_id: self.account_id().unwrap_or_default().to_owned(),
                already_active: op.already_active,
            }),
            (kind, Err(e)) => {
                self.after_failure(kind, &e, now);
                Err(e)
            }
        };
        self.outbox
            .push_back(Output::Event(Event::Completed { op: op.id, result }));
    }

    fn after_failure(&mut self, kind: Kind, e: &Error, now: Now) {
        if self.closed.is_some() {
            return;
        }
        let throttled = matches!(e, Error::Throttled { .. });
        let expired = match &self.tokens {
            Some(Tokens::OAuth { expires_at, .. }) => *expires_at <= now.mono,
            _ => false,
        };
        match kind {
            Kind::Resume => self.forget_tokens(),
            Kind::Login => {
                if !throttled {
                    self.forget_tokens();
                }
            }
            Kind::Recover => {
                if throttled {
                    // Keep the tokens: a back-off answer says nothing about them.
                } else {
                    self.lose(e.clone());
                }
            }
            Kind::Refresh => {
                if matches!(e, Error::Unauthorized(_) | Error::CredentialsRejected(_))
                    || expired && !throttled
                {
                    self.lose(e.clone());
                } else if !expired && self.tokens.is_some() {
                    // Try again later while the current token still works.
                    self.refresh_at =
                        Some(now.mono + self.cfg.retry_delay.max(Duration::from_secs(1)));
                }
            }
            Kind::Read { .. } | Kind::Switch { .. } => {
                if matches!(e, Error::Unauthorized(_)) {
                    self.lose(e.clone());
                }
            }
            Kind::Logout => {}
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t.filter(|t| *t > now) {
                d = Some(d.map_or(t, |x: Instant| x.min(t)));
            }
        };
        consider(self.in_flight.as_ref().map(|f| f.deadline));
        consider(self.current.as_ref().and_then(|o| o.retry_at));
        consider(self.refresh_at);
        consider(self.backoff_until);
        d
    }
}

fn step_endpoint(step: &Step) -> Endpoint {
    match step {
        Step::EncKey => Endpoint::EncryptionKey,
        Step::Login | Step::WebLogin | Step::Select => Endpoint::Login,
        Step::SwitchPut { .. } => Endpoint::Switch,
        Step::Refresh => Endpoint::Refresh,
        Step::Read { .. } => Endpoint::ReadSession,
        Step::Logout => Endpoint::Logout,
    }
}

fn step_endpoint_name(step: &Step) -> &'static str {
    use decode::ep;
    match step {
        Step::EncKey => ep::ENC_KEY,
        Step::Login | Step::Select => ep::LOGIN,
        Step::WebLogin => ep::WEB_LOGIN,
        Step::SwitchPut { .. } => ep::SWITCH,
        Step::Refresh => ep::REFRESH,
        Step::Read { .. } => ep::READ,
        Step::Logout => ep::LOGOUT,
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
                if account_id.is_empty() || encode_check(&account_id) {
                    return Err(UsageError::InvalidArgument {
                        what: "account_id",
                        reason: "empty or not a valid header value",
                    });
                }
                let mut op = self.new_op(Kind::Switch { make_default });
                op.target_account = Some(account_id);
                op
            }
            IgIntent::Logout => self.new_op(Kind::Logout),
            IgIntent::Resume(snapshot) => {
                if snapshot.base_url.trim_end_matches('/') != self.base_str {
                    return Err(UsageError::InvalidArgument {
                        what: "snapshot",
                        reason: "saved for another base URL",
                    });
                }
                if self.tokens.is_some() || self.current.is_some() {
                    return Err(UsageError::InvalidArgument {
                        what: "resume",
                        reason: "the session is busy or logged in; resume into a fresh session",
                    });
                }
                self.install_snapshot(snapshot, now);
                self.new_op(Kind::Resume)
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
                    self.on_response(f.step, &response, now);
                }
            }
            Input::Failed { id, failure } => {
                if let Some(f) = self.in_flight.take_if(|f| f.id == id) {
                    self.on_failure(f.step, Error::Transport(sanitize(failure)), now);
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
        if let Some(o) = self.outbox.pop_front() {
            return o;
        }
        Output::Wait(self.next_deadline(now.mono))
    }

    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        if let Some(reason) = &self.closed {
            return Err(AuthorizeError::Lost(reason.clone()));
        }
        if !self.base.covers(request.uri()) {
            return Err(AuthorizeError::Refused(UsageError::InvalidArgument {
                what: "request URI",
                reason: "not under the session's base URL: credentials go only to IG",
            }));
        }
        if let Some(until) = self.backoff_until.filter(|t| *t > now.mono) {
            return Err(AuthorizeError::BackingOff { until });
        }
        if let Some(op) = self
            .current
            .as_ref()
            .filter(|o| matches!(o.kind, Kind::Login | Kind::Resume | Kind::Recover))
        {
            return Err(AuthorizeError::Pending { op: op.id });
        }
        if self.tokens.is_none() {
            if let Some(op) = self.credential_op() {
                return Err(AuthorizeError::Pending { op });
            }
            return Err(match &self.lost {
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
        let auth = self.auth().map_err(|_| AuthorizeError::NotLoggedIn)?;
        encode::apply_auth(request.headers_mut(), &self.cfg.api_key, auth).map_err(|_| {
            AuthorizeError::Refused(UsageError::InvalidArgument {
                what: "credentials",
                reason: "not valid header values",
            })
        })?;
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
        let obs = match classify(
            Endpoint::Application,
            status.as_u16(),
            code.as_deref(),
            self.backoffs(),
        ) {
            Action::Relogin(api) | Action::Refresh(api) => {
                if self.closed.is_some()
                    || (self.tokens.is_none() && self.credential_op().is_none())
                {
                    Observation::Lost(self.closed.clone().unwrap_or(Error::Unauthorized(api)))
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
                let until = now.mono + retry_after;
                let until = self.backoff_until.map_or(until, |u| u.max(until));
                self.backoff_until = Some(until);
                Observation::BackOff { until }
            }
            Action::Close(e) => {
                self.close(e.clone(), now);
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
                    self.refresh_at = Some(expires_at - margin);
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
