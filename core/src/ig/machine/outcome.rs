//! What each answer, failure or timeout does to the running operation.

use super::steps::{sends_password, step_endpoint, step_endpoint_name};
use super::*;
use crate::machine::FailureKind;

impl IgSession {
    pub(super) fn on_response(&mut self, step: Step, response: &http::Response<Vec<u8>>, now: Now) {
        let status = response.status();
        let next = if status.is_success() {
            match self.apply_success(&step, response, now) {
                Ok(()) => {
                    // A key fetch is only the first half of an encrypted login: its
                    // success must not reset the login's attempt count.
                    if step != Step::EncKey
                        && let Some(op) = self.current.as_mut()
                    {
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
    pub(super) fn on_decode_error(&mut self, step: &Step, e: Error, now: Now) -> Next {
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

    pub(super) fn apply_success(
        &mut self,
        step: &Step,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<(), Error> {
        match step {
            Step::EncKey => {
                let key = decode::encryption_key(response)?;
                let enc = crate::ig::encrypt_password(
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

    pub(super) fn switched_to(&mut self, account: String) {
        self.session_account = Some(account.clone());
        self.selected_account = Some(account);
        self.generation += 1;
    }

    pub(super) fn set_oauth(&mut self, t: decode::OAuthTokens, now: Now) {
        let expires_at = now.after(t.expires_in);
        // The margin stays at most half the lifetime, so short tokens never loop.
        let margin = self.cfg.refresh_margin.min(t.expires_in / 2);
        self.refresh_at = Some(expires_at.checked_sub(margin).unwrap_or(now.mono));
        self.tokens = Some(Tokens::OAuth {
            access: t.access_token,
            refresh: t.refresh_token,
            expires_at,
            expires_epoch_ms: now
                .unix_millis()
                .saturating_add(i64::try_from(t.expires_in.as_millis()).unwrap_or(i64::MAX)),
        });
    }

    pub(super) fn on_action(&mut self, step: Step, action: Action, now: Now) -> Next {
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
                if matches!(step, Step::EncKey | Step::Login | Step::WebLogin) {
                    // Logging in again to fix a refused login would recurse.
                    return Next::Done(Err(Error::Unauthorized(api)));
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
                let until = now.after(retry_after);
                self.backoff_until = Some(self.backoff_until.map_or(until, |u| u.max(until)));
                Next::Done(Err(Error::Throttled { error, retry_after }))
            }
            // A login is repeated only after an answer that says IG did not judge it
            // (a server error), never after a 4xx whatever its code.
            Action::Retry(api) if sends_password(&step) && api.status < 500 => {
                Next::Done(Err(Error::Unavailable(api)))
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
    pub(super) fn refresh_failed(&mut self, e: Error) -> Next {
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

    pub(super) fn retry(&mut self, step: Step, e: Error, now: Now) -> Next {
        let max = self.cfg.max_attempts.max(1);
        let delay = self.cfg.retry_delay;
        // The encrypted password was used up by the failed attempt (and its timeStamp
        // ages): a retried encrypted login fetches a fresh encryption key first.
        let fresh_key = step == Step::Login && self.cfg.login_flow == LoginFlow::EncryptedV2;
        let Some(op) = self.current.as_mut() else {
            return Next::Done(Err(e));
        };
        if op.cancelled {
            return Next::Done(Err(e));
        }
        op.attempts += 1;
        if op.attempts >= max {
            return Next::Done(Err(e));
        }
        let factor = 1u32 << (op.attempts - 1).min(10);
        op.retry_at = Some(now.after(delay.saturating_mul(factor).max(Duration::from_millis(1))));
        op.steps.push_front(step);
        if fresh_key {
            op.steps.push_front(Step::EncKey);
        }
        Next::Continue
    }

    pub(super) fn on_failure(&mut self, step: Step, e: Error, now: Now) {
        let next = if step == Step::Logout {
            Next::Done(Ok(()))
        } else if sends_password(&step) {
            match e {
                // No connection was opened: the password never left, so try again.
                Error::Transport(f) if f.kind == FailureKind::Connect => {
                    self.retry(step, Error::Transport(f), now)
                }
                Error::Transport(f) => Next::Done(Err(Error::LoginUnanswered {
                    endpoint: step_endpoint_name(&step),
                    failure: Some(f),
                })),
                e => Next::Done(Err(e)),
            }
        } else {
            self.retry(step, e, now)
        };
        match next {
            Next::Continue => self.advance(now),
            Next::Done(r) => self.finish(r, now),
        }
    }

    /// The answer to a login request given up on earlier (its deadline passed).
    ///
    /// A rejection still counts: bad credentials (and the other fatal answers) close
    /// the session as if the answer had come in time, whatever runs now, so nobody
    /// logs in again with a rejected password; a throttling answer starts its
    /// back-off.
    ///
    /// A late *success* is ignored and its tokens dropped. The login's operation has
    /// already failed; adopting the tokens now would make the session active without
    /// the rest of that login (selecting the configured account, fetching streaming
    /// tokens), could undo a logout submitted meanwhile, or replace the credentials of
    /// a newer login. Ignoring it costs one idle session at IG, which expires there by
    /// itself; the application logs in again as the failed operation told it to.
    pub(super) fn on_late_login_answer(&mut self, response: &http::Response<Vec<u8>>, now: Now) {
        let status = response.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return;
        }
        let code = decode::error_code(response.body());
        match classify(
            Endpoint::Login,
            status.as_u16(),
            code.as_deref(),
            self.backoffs(),
        ) {
            Action::Close(e) => {
                self.close(e, now);
                // The running operation's request was dropped with the session.
                if self.current.is_some() {
                    self.finish(Err(Error::Cancelled), now);
                }
            }
            Action::BackOff { retry_after, .. } if self.closed.is_none() => {
                let until = now.after(retry_after);
                self.backoff_until = Some(self.backoff_until.map_or(until, |u| u.max(until)));
            }
            _ => {}
        }
    }

    /// A logout was submitted: every other queued operation completes as cancelled,
    /// the running one as soon as its request (if any) is answered, and no refresh or
    /// retry timer is left.
    pub(super) fn cancel_for_logout(&mut self, now: Now) {
        for op in std::mem::take(&mut self.queue) {
            self.outbox.push_back(Output::Event(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            }));
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

    pub(super) fn forget_tokens(&mut self) {
        self.tokens = None;
        self.streaming = None;
        self.refresh_at = None;
        self.recovered_gen = None;
        self.session_account = None;
        self.selected_account = None;
        self.accounts.clear();
    }

    pub(super) fn lose(&mut self, reason: Error) {
        self.forget_tokens();
        self.lost = Some(reason.clone());
        self.outbox
            .push_back(Output::Event(Event::SessionLost { reason }));
    }

    pub(super) fn close(&mut self, reason: Error, _now: Now) {
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

    pub(super) fn session_info(&self) -> Option<SessionInfo> {
        Some(SessionInfo {
            account_id: self.account_id()?.to_owned(),
            client_id: self.client_id.clone(),
            accounts: self.accounts.clone(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.clone(),
            mode: self.mode()?,
        })
    }

    pub(super) fn finish(&mut self, result: Result<(), Error>, now: Now) {
        let Some(op) = self.current.take() else {
            return;
        };
        self.in_flight = None;
        if op.cancelled {
            // Cancelled by a logout: whatever the operation reached, it reports
            // `Cancelled` and leaves the session to the logout (no loss, no retry).
            self.outbox.push_back(Output::Event(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            }));
            return;
        }
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
        d
    }
}
