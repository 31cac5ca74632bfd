//! Operations: what the user (or the session itself) asked for, the plan of steps
//! each follows, the queue they wait in, sending their requests, and completing
//! them.
//!
//! The running operation's plan is data (`IgSession::plan`, a `VecDeque<Step>`): it
//! is written when the operation starts (from its kind and the configuration); a
//! retry pushes the failed request back to the front, a recovery pushes a login (or a
//! refresh) before it. Only one operation runs at a time, so the session keeps one
//! plan buffer for all of them: starting an operation allocates nothing.

use super::*;

/// What an operation is for; its plan of steps is built when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Login,
    Refresh,
    Recover,
    Read { fetch: bool },
    Switch { make_default: bool },
    Logout,
    Resume,
}

/// One step of an operation's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Local: choose the account to act on (the configured or selected one, or the
    /// switch's target). A v3 session only changes the `IG-ACCOUNT-ID` it stamps; a
    /// CST session on another account then needs a [`Call::Switch`].
    SelectAccount,
    /// Send a request.
    Call(Call),
}

impl Step {
    pub(super) fn send(endpoint: Endpoint) -> Self {
        Self::Call(Call::Send(endpoint))
    }
}

/// A request of a plan: what is in flight, what an answer is matched to, what a
/// retry or a recovery sends again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    /// A request built from the endpoint and the session alone.
    Send(Endpoint),
    /// `PUT /session` ([`Endpoint::Switch`]): the one request whose inputs belong to
    /// the step (boxed: a plan step stays small).
    Switch(Box<SwitchTo>),
}

/// The inputs of a [`Call::Switch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SwitchTo {
    pub(super) account: String,
    pub(super) make_default: bool,
}

impl Call {
    pub(super) fn endpoint(&self) -> Endpoint {
        match self {
            Self::Send(endpoint) => *endpoint,
            Self::Switch(_) => Endpoint::Switch,
        }
    }
}

/// An operation: its kind and what it has gathered. Its plan (the steps left) is
/// the session's `plan` while it runs.
pub(super) struct Op {
    pub(super) id: OpId,
    pub(super) kind: Kind,
    /// The one in-operation credential recovery has been used.
    pub(super) recovered: bool,
    /// A failed refresh already fell back to a login.
    pub(super) fell_back: bool,
    pub(super) attempts: u32,
    pub(super) retry_at: Option<Instant>,
    pub(super) enc_password: Option<Password>,
    pub(super) target_account: Option<String>,
    /// Boxed: only a read has them, and every queued operation would carry the room.
    pub(super) details: Option<Box<SessionDetails>>,
    pub(super) streaming_tokens: bool,
    /// A switch found the account already active.
    pub(super) already_active: bool,
    /// IG confirmed a logout (2xx), or said the session was already gone (401).
    pub(super) server_confirmed: bool,
    /// A logout was submitted while this operation had a request in flight: the
    /// answer is applied (it may hold tokens the logout must end), then the operation
    /// completes as [`Error::Cancelled`] without sending anything more.
    pub(super) cancelled: bool,
    /// A recovery asked for by a follower (another process): its success says nothing
    /// about this session's own calls, so it does not arm the "refused again right
    /// after a recovery" loss.
    pub(super) for_follower: bool,
}

/// The request on the wire (at most one at a time).
pub(super) struct InFlight {
    pub(super) id: RequestId,
    pub(super) call: Call,
    pub(super) deadline: Instant,
}

/// What `poll_output` hands out next, in order. A request waits as its id: it is
/// built when its turn comes (`IgSession::transmit`), so the outbox holds no room for
/// a whole `http::Request` (it keeps its capacity for the session's life).
pub(super) enum Queued {
    Event(Event<IgState, IgOutcome>),
    Send(RequestId),
}

/// What an answer leaves the running operation to do.
pub(super) enum Next {
    Continue,
    Done(Result<(), Error>),
}

impl IgSession {
    pub(super) fn new_op(&mut self, kind: Kind) -> Op {
        Op {
            id: self.ids.op(),
            kind,
            recovered: false,
            fell_back: false,
            attempts: 0,
            retry_at: None,
            enc_password: None,
            target_account: None,
            details: None,
            streaming_tokens: false,
            already_active: false,
            server_confirmed: false,
            cancelled: false,
            for_follower: false,
        }
    }

    /// A logout is queued or running: nothing but it may be sent, and nothing may be
    /// started (no recovery, no refresh) until it ends.
    pub(super) fn logout_pending(&self) -> bool {
        self.current
            .iter()
            .chain(self.queue.iter())
            .any(|o| o.kind == Kind::Logout)
    }

    /// Remembers a login request given up on, for its late answer.
    pub(super) fn abandon_login(&mut self, id: RequestId) {
        if self.abandoned_logins.len() >= MAX_ABANDONED {
            self.abandoned_logins.pop_front();
        }
        self.abandoned_logins.push_back(id);
    }

    /// The queued or running operation that is obtaining credentials, if any.
    pub(super) fn credential_op(&self) -> Option<OpId> {
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

    pub(super) fn recovery_op(&self) -> Option<OpId> {
        self.current
            .iter()
            .chain(self.queue.iter())
            .find(|o| matches!(o.kind, Kind::Recover | Kind::Refresh))
            .map(|o| o.id)
    }

    pub(super) fn enqueue_front(&mut self, kind: Kind) -> OpId {
        let op = self.new_op(kind);
        let id = op.id;
        self.queue.push_front(op);
        id
    }

    pub(super) fn ensure_refresh(&mut self) -> OpId {
        match self.recovery_op() {
            Some(id) => id,
            None => {
                self.refresh_at = None;
                self.enqueue_front(Kind::Refresh)
            }
        }
    }

    /// The steps of a login, in order.
    pub(super) fn login_steps(&self) -> impl DoubleEndedIterator<Item = Step> + use<> {
        let login = Step::send(Endpoint::login(self.cfg.login_flow));
        let (before, after) = match self.cfg.login_flow {
            LoginFlow::EncryptedV2 => (Some(Step::send(Endpoint::EncryptionKey)), None),
            LoginFlow::V3 if self.cfg.fetch_streaming_tokens => (
                None,
                Some(Step::send(Endpoint::ReadSession { fetch_tokens: true })),
            ),
            _ => (None, None),
        };
        before
            .into_iter()
            .chain([login])
            .chain(after)
            .chain([Step::SelectAccount])
    }

    /// Puts `steps` (in their order) before the rest of the running plan.
    pub(super) fn plan_first(&mut self, steps: impl DoubleEndedIterator<Item = Step>) {
        for s in steps.rev() {
            self.plan.push_front(s);
        }
    }

    /// Puts the steps that recover refused credentials before the rest of the plan:
    /// a refresh for v3, a login otherwise.
    pub(super) fn plan_recovery_first(&mut self) {
        if matches!(self.tokens, Some(Tokens::OAuth { .. })) {
            self.plan.push_front(Step::send(Endpoint::Refresh));
        } else {
            self.plan_first(self.login_steps());
        }
    }

    pub(super) fn run_timers(&mut self, now: Now) {
        self.lapse_lead(now);
        if self.backoff_until.is_some_and(|t| t <= now.mono) {
            self.backoff_until = None;
        }
        self.expire_awaiting(now);
        if let Some(f) = self.in_flight.take_if(|f| f.deadline <= now.mono) {
            let endpoint = f.call.endpoint();
            if endpoint.sends_password() {
                // The login may have reached IG: never sent again. Its answer, should
                // it still come, is judged by `on_late_login_answer`.
                self.abandon_login(f.id);
                self.finish(
                    Err(Error::LoginUnanswered {
                        endpoint: endpoint.name(),
                        failure: None,
                    }),
                    now,
                );
            } else {
                self.on_failure(
                    f.call,
                    Error::Protocol(ProtocolError::NoResponse {
                        endpoint: endpoint.name(),
                    }),
                    now,
                );
            }
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
        if self.logout_pending() {
            // A logout ends the session: no refresh is due any more.
            self.refresh_at = None;
        }
        if self.refresh_at.is_some_and(|t| t <= now.mono) && self.closed.is_none() {
            self.refresh_at = None;
            if matches!(self.tokens, Some(Tokens::OAuth { .. })) && self.recovery_op().is_none() {
                // Ahead of queued intents: they need a live token too.
                self.enqueue_front(Kind::Refresh);
            }
        }
    }

    pub(super) fn start_next(&mut self, now: Now) {
        if self.current.is_some() || self.backoff_until.is_some() || self.closed.is_some() {
            return;
        }
        let Some(mut op) = self.queue.pop_front() else {
            return;
        };
        // The plan is written into the session's buffer, emptied when the last
        // operation finished.
        debug_assert!(
            self.plan.is_empty(),
            "a plan left over from a finished operation"
        );
        self.plan.clear();
        let ready: Result<(), Error> = match op.kind {
            Kind::Login => {
                self.lost = None;
                self.plan.extend(self.login_steps());
                Ok(())
            }
            Kind::Recover => {
                self.plan_recovery_first();
                Ok(())
            }
            Kind::Refresh => match self.tokens {
                Some(Tokens::OAuth { .. }) => {
                    self.plan.push_back(Step::send(Endpoint::Refresh));
                    Ok(())
                }
                Some(_) => Err(Error::Usage(UsageError::Unsupported {
                    intent: "refresh",
                    reason: "only v3 sessions have refresh tokens",
                })),
                None => Err(Error::Usage(UsageError::NotLoggedIn)),
            },
            Kind::Read { fetch } => self.need_tokens().map(|()| {
                self.plan.push_back(Step::send(Endpoint::ReadSession {
                    fetch_tokens: fetch,
                }));
            }),
            Kind::Logout => self
                .need_tokens()
                .map(|()| self.plan.push_back(Step::send(Endpoint::Logout))),
            Kind::Switch { make_default } => self.need_tokens().and_then(|()| {
                let step = match (&self.tokens, make_default) {
                    (Some(Tokens::OAuth { .. }), true) => return Err(Error::Usage(UsageError::Unsupported {
                        intent: "switch_account",
                        reason: "a v3 session switches by header only; changing the default account needs a v2 session",
                    })),
                    (Some(Tokens::OAuth { .. }), false) => Step::SelectAccount,
                    _ => Step::Call(Call::Switch(Box::new(SwitchTo {
                        account: op.target_account.clone().unwrap_or_default(),
                        make_default,
                    }))),
                };
                self.plan.push_back(step);
                Ok(())
            }),
            Kind::Resume => {
                // The snapshot's tokens were installed by `submit`. An expired v3
                // access token is refreshed first; a failed refresh does not fall
                // back to a login (the caller decides).
                op.fell_back = true;
                if let Some(Tokens::OAuth { expires_at, .. }) = &self.tokens
                    && *expires_at <= now.mono
                {
                    self.plan.push_back(Step::send(Endpoint::Refresh));
                }
                self.plan.push_back(Step::send(Endpoint::ReadSession {
                    fetch_tokens: false,
                }));
                Ok(())
            }
        };
        self.current = Some(op);
        match ready {
            Ok(()) => self.advance(now),
            Err(e) => self.finish(Err(e), now),
        }
    }

    pub(super) fn need_tokens(&self) -> Result<(), Error> {
        if self.tokens.is_some() {
            Ok(())
        } else {
            Err(Error::Usage(UsageError::NotLoggedIn))
        }
    }

    /// Runs steps until one needs a request, a retry delay holds, or none is left.
    pub(super) fn advance(&mut self, now: Now) {
        loop {
            let Some(op) = self.current.as_mut() else {
                return;
            };
            if self.in_flight.is_some() {
                return;
            }
            if op.cancelled {
                // A logout was submitted: nothing more is sent for this operation.
                self.finish(Err(Error::Cancelled), now);
                return;
            }
            if op.retry_at.is_some() {
                return;
            }
            let Some(step) = self.plan.pop_front() else {
                self.finish(Ok(()), now);
                return;
            };
            let call = match step {
                Step::SelectAccount => {
                    if let Some(put) = self.select_account() {
                        self.plan.push_front(Step::Call(put));
                    }
                    continue;
                }
                Step::Call(call) => call,
            };
            // The request itself is built when `poll_output` hands it out
            // (`transmit`).
            let id = self.ids.request();
            let deadline = now.after(self.cfg.request_deadline);
            self.in_flight = Some(InFlight { id, call, deadline });
            self.outbox.push_back(Queued::Send(id));
            return;
        }
    }

    /// The request `id`, built for `poll_output` from the call in flight; `None` when
    /// that request was given up before it left (its deadline passed, the session
    /// closed), or could not be built (the operation then fails).
    pub(super) fn transmit(&mut self, id: RequestId, now: Now) -> Option<Transmit> {
        let f = self.in_flight.take_if(|f| f.id == id)?;
        let built = self.request_for(&f.call);
        let deadline = f.deadline;
        self.in_flight = Some(f);
        match built {
            Ok(request) => Some(Transmit {
                id,
                request,
                deadline,
            }),
            Err(e) => {
                self.finish(Err(e), now);
                None
            }
        }
    }

    /// Queues an event for `poll_output`.
    pub(super) fn emit(&mut self, event: Event<IgState, IgOutcome>) {
        self.outbox.push_back(Queued::Event(event));
    }

    /// The local part of selecting an account; returns the `PUT /session` a CST
    /// session needs, if any.
    pub(super) fn select_account(&mut self) -> Option<Call> {
        let op = self.current.as_ref()?;
        let wanted = match op.kind {
            Kind::Switch { .. } => op.target_account.clone(),
            _ => self
                .selected_account
                .as_deref()
                .map(str::to_owned)
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
                self.selected_account = Some(wanted.into());
                None
            }
            Some(Tokens::Cst { .. }) => {
                if self.session_account.as_deref() == Some(wanted.as_str()) {
                    self.selected_account = Some(wanted.into());
                    None
                } else {
                    Some(Call::Switch(Box::new(SwitchTo {
                        account: wanted,
                        make_default: false,
                    })))
                }
            }
            None => None,
        }
    }

    pub(super) fn auth(&self) -> Result<AuthHeaders<'_>, Error> {
        match &self.tokens {
            Some(Tokens::Cst { cst, xst }) => Ok(AuthHeaders::Cst { cst, xst }),
            Some(Tokens::OAuth { access, .. }) => Ok(AuthHeaders::Bearer {
                token: access,
                account_id: self.account_id().unwrap_or_default(),
            }),
            None => Err(Error::Usage(UsageError::NotLoggedIn)),
        }
    }

    /// The credentials' header values for the current tokens and account: the kept
    /// ones while they still match, built anew after a change.
    pub(super) fn auth_values(&mut self) -> Result<AuthValues, Error> {
        let auth = self.auth()?;
        if let Some(kept) = self.auth_values.as_ref().filter(|v| v.are_for(auth)) {
            return Ok(kept.clone());
        }
        let values = AuthValues::new(auth)?;
        self.auth_values = Some(values.clone());
        Ok(values)
    }

    pub(super) fn request_for(&mut self, call: &Call) -> Result<http::Request<Vec<u8>>, Error> {
        let endpoint = match call {
            Call::Switch(to) => {
                let auth = self.auth_values()?;
                let body = encode::switch_body(&to.account, to.make_default);
                return self
                    .parts
                    .requests
                    .request(Endpoint::Switch, Some(&auth), body);
            }
            Call::Send(endpoint) => *endpoint,
        };
        match endpoint {
            Endpoint::EncryptionKey => self.parts.requests.request(endpoint, None, Vec::new()),
            Endpoint::LoginV1 | Endpoint::LoginV2 | Endpoint::LoginV3 => {
                let encrypted = self.cfg.login_flow == LoginFlow::EncryptedV2;
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
                let body = encode::login_body(&self.cfg.identifier, password, encrypted);
                self.parts.requests.request(endpoint, None, body)
            }
            Endpoint::WebPlatformLogin => {
                let body = encode::web_platform_body(&self.cfg.identifier, &self.cfg.password);
                self.parts.requests.request(endpoint, None, body)
            }
            Endpoint::Refresh => match &self.tokens {
                Some(Tokens::OAuth { refresh, .. }) => {
                    let body = encode::refresh_body(refresh);
                    self.parts.requests.request(endpoint, None, body)
                }
                _ => Err(Error::Usage(UsageError::NotLoggedIn)),
            },
            Endpoint::ReadSession { .. } | Endpoint::Logout => {
                let auth = self.auth_values()?;
                self.parts
                    .requests
                    .request(endpoint, Some(&auth), Vec::new())
            }
            Endpoint::Switch | Endpoint::Application => {
                Err(Error::Usage(UsageError::InvalidArgument {
                    what: "step",
                    reason: "not a request the session plans without inputs",
                }))
            }
        }
    }

    /// A logout was submitted: every other queued operation completes as cancelled,
    /// the running one as soon as its request (if any) is answered, and no refresh or
    /// retry timer is left.
    pub(super) fn cancel_for_logout(&mut self, now: Now) {
        for op in std::mem::take(&mut self.queue) {
            self.emit(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            });
        }
        self.refresh_at = None;
        let in_flight = self.in_flight.is_some();
        if let Some(op) = self.current.as_mut() {
            if op.kind == Kind::Logout {
                return;
            }
            op.cancelled = true;
            op.retry_at = None;
            if !in_flight {
                self.finish(Err(Error::Cancelled), now);
            }
        }
    }

    pub(super) fn session_info(&self) -> Option<SessionInfo> {
        Some(SessionInfo {
            account_id: self.account_id()?.to_owned(),
            client_id: self.client_id.as_deref().map(str::to_owned),
            accounts: self.accounts.clone(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.as_deref().map(str::to_owned),
            mode: self.mode()?,
        })
    }

    pub(super) fn finish(&mut self, result: Result<(), Error>, now: Now) {
        let Some(op) = self.current.take() else {
            return;
        };
        self.plan.clear();
        self.in_flight = None;
        if op.cancelled {
            // Cancelled by a logout: whatever the operation reached, it reports
            // `Cancelled` and leaves the session to the logout (no loss, no retry).
            self.emit(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            });
            return;
        }
        let not_logged_in = || Error::Usage(UsageError::NotLoggedIn);
        let result: Result<IgOutcome, Error> = match (op.kind, result) {
            (Kind::Logout, _) => {
                self.forget_tokens();
                self.lost = None;
                Ok(IgOutcome::LoggedOut {
                    server_confirmed: op.server_confirmed,
                })
            }
            (Kind::Login, Ok(())) => self
                .session_info()
                .map(|info| IgOutcome::LoggedIn(Box::new(info)))
                .ok_or_else(not_logged_in),
            (Kind::Resume, Ok(())) => self
                .session_info()
                .map(|info| IgOutcome::Resumed(Box::new(info)))
                .ok_or_else(not_logged_in),
            (Kind::Refresh, Ok(())) => match &self.tokens {
                Some(Tokens::OAuth { expires_at, .. }) => Ok(IgOutcome::Refreshed {
                    expires_at: *expires_at,
                }),
                _ => Err(not_logged_in()),
            },
            (Kind::Recover, Ok(())) => {
                if !op.for_follower {
                    self.recovered_gen = Some(self.generation);
                }
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
        self.emit(Event::Completed { op: op.id, result });
    }

    pub(super) fn after_failure(&mut self, kind: Kind, e: &Error, now: Now) {
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
                        Some(now.after(self.cfg.retry_delay.max(Duration::from_secs(1))));
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

    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
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
        consider(self.awaiting.as_ref().map(|a| a.deadline));
        d
    }
}
