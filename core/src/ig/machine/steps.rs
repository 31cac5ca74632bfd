//! Starting operations and building their requests.

use super::*;

impl IgSession {
    pub(super) fn run_timers(&mut self, now: Now) {
        if self.backoff_until.is_some_and(|t| t <= now.mono) {
            self.backoff_until = None;
        }
        if let Some(f) = self.in_flight.take_if(|f| f.deadline <= now.mono) {
            let endpoint = step_endpoint_name(&f.step);
            if sends_password(&f.step) {
                // The login may have reached IG: never sent again. Its answer, should
                // it still come, is judged by `on_late_login_answer`.
                self.abandon_login(f.id);
                self.finish(
                    Err(Error::LoginUnanswered {
                        endpoint,
                        failure: None,
                    }),
                    now,
                );
            } else {
                self.on_failure(
                    f.step,
                    Error::Protocol(ProtocolError::NoResponse { endpoint }),
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
                    let deadline = now.after(self.cfg.request_deadline);
                    self.in_flight = Some(InFlight { id, step, deadline });
                    self.outbox.push_back(Output::Send(Transmit {
                        id,
                        request,
                        deadline,
                    }));
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
    pub(super) fn select_step(&mut self) -> Option<Step> {
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

    pub(super) fn request_for(&mut self, step: &Step) -> Result<http::Request<Vec<u8>>, Error> {
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
}

/// Whether the step's request carries the password: such a request is never sent
/// twice unless the first provably never left (see [`FailureKind::Connect`]).
///
/// [`FailureKind::Connect`]: crate::FailureKind::Connect
pub(super) fn sends_password(step: &Step) -> bool {
    matches!(step, Step::Login | Step::WebLogin)
}

pub(super) fn step_endpoint(step: &Step) -> Endpoint {
    match step {
        Step::EncKey => Endpoint::EncryptionKey,
        Step::Login | Step::WebLogin | Step::Select => Endpoint::Login,
        Step::SwitchPut { .. } => Endpoint::Switch,
        Step::Refresh => Endpoint::Refresh,
        Step::Read { .. } => Endpoint::ReadSession,
        Step::Logout => Endpoint::Logout,
    }
}

pub(super) fn step_endpoint_name(step: &Step) -> &'static str {
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
