//! Answers: what each response, transport failure or timeout does to the running
//! operation and to the session (tokens, back-off, loss, closing). Error answers are
//! judged by `policy::action_for`; this file decides what the judgement does.

use super::*;
use crate::machine::FailureKind;

impl IgSession {
    pub(super) fn on_response(&mut self, call: Call, response: &http::Response<Vec<u8>>, now: Now) {
        let status = response.status();
        let endpoint = call.endpoint();
        let next = if status.is_success() {
            match self.apply_success(&call, response, now) {
                Ok(()) => {
                    // A key fetch is only the first half of an encrypted login: its
                    // success must not reset the login's attempt count.
                    if endpoint != Endpoint::EncryptionKey
                        && let Some(op) = self.current.as_mut()
                    {
                        op.attempts = 0;
                    }
                    Next::Continue
                }
                Err(e) => self.on_decode_error(endpoint, e),
            }
        } else if status.is_redirection() || status.is_informational() {
            self.on_decode_error(
                endpoint,
                Error::Protocol(ProtocolError::Redirect {
                    endpoint: endpoint.name(),
                    status: status.as_u16(),
                }),
            )
        } else {
            let code = decode::error_code(response.body());
            let action = action_for(endpoint, status.as_u16(), code.as_deref(), self.backoffs());
            self.on_action(call, action, now)
        };
        match next {
            Next::Continue => self.advance(now),
            Next::Done(r) => self.finish(r, now),
        }
    }

    /// A 2xx that does not parse, or a redirect: a login's failure leaves the session
    /// logged out; a logout still forgets the tokens.
    pub(super) fn on_decode_error(&mut self, endpoint: Endpoint, e: Error) -> Next {
        match endpoint {
            Endpoint::Logout => Next::Done(Ok(())),
            // An unusable refresh answer is a failed refresh: one login instead.
            Endpoint::Refresh => self.refresh_failed(e),
            login if login == Endpoint::EncryptionKey || login.is_login() => {
                if matches!(e, Error::ActionRequired(_) | Error::Crypto(_)) {
                    self.close(e.clone());
                }
                Next::Done(Err(e))
            }
            _ => Next::Done(Err(e)),
        }
    }

    pub(super) fn apply_success(
        &mut self,
        call: &Call,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<(), Error> {
        let (headers, body) = (response.headers(), response.body().as_slice());
        let endpoint = match call {
            Call::Switch(to) => {
                let t = decode::switch_account(headers, body)?;
                if let Some(Tokens::Cst { cst, xst }) = self.tokens.as_mut() {
                    if let Some(c) = t.cst {
                        *cst = c;
                    }
                    if let Some(x) = t.xst {
                        *xst = x;
                    }
                }
                self.switched_to(to.account.clone());
                return Ok(());
            }
            Call::Send(endpoint) => *endpoint,
        };
        match endpoint {
            Endpoint::EncryptionKey => {
                let key = decode::encryption_key(body)?;
                let enc = crate::ig::encrypt_password(
                    self.rng.get(),
                    &key.key,
                    key.time_stamp,
                    &self.cfg.password,
                )?;
                if let Some(op) = self.current.as_mut() {
                    op.enc_password = Some(enc);
                }
            }
            Endpoint::LoginV1
            | Endpoint::LoginV2
            | Endpoint::LoginV3
            | Endpoint::WebPlatformLogin => {
                if endpoint == Endpoint::LoginV3 {
                    let l = decode::login_v3(body)?;
                    self.set_oauth(l.tokens, now);
                    self.session_account = Some(l.account_id.into());
                    self.client_id = l.client_id.map(Into::into);
                    self.lightstreamer_endpoint = l.lightstreamer_endpoint.map(Into::into);
                    self.accounts.clear();
                } else {
                    let answer = if endpoint == Endpoint::WebPlatformLogin {
                        decode::web_platform_login(headers, body)?
                    } else {
                        decode::login_v2(headers, body)?
                    };
                    let l = match answer {
                        CstLoginAnswer::LoggedIn(l) => l,
                        CstLoginAnswer::ActionRequired(a) => {
                            return Err(Error::ActionRequired(a));
                        }
                    };
                    self.tokens = Some(Tokens::Cst {
                        cst: l.cst,
                        xst: l.xst,
                    });
                    self.refresh_at = None;
                    self.session_account = Some(l.account_id.into());
                    self.client_id = l.client_id.map(Into::into);
                    self.lightstreamer_endpoint = l.lightstreamer_endpoint.map(Into::into);
                    self.accounts = l.accounts;
                }
                self.streaming = None;
                self.generation += 1;
            }
            Endpoint::Refresh => {
                let t = decode::refresh_tokens(body)?;
                self.refreshed(&t, now);
                self.generation += 1;
            }
            Endpoint::ReadSession { .. } => {
                let (details, tokens) = decode::read_session(headers, body)?;
                if let Some(endpoint) = details.lightstreamer_endpoint.as_deref()
                    && self.lightstreamer_endpoint.as_deref() != Some(endpoint)
                {
                    self.lightstreamer_endpoint = Some(endpoint.into());
                }
                if self.session_account.is_none() {
                    self.session_account = Some(details.account_id.as_str().into());
                }
                if let Some(op) = self.current.as_mut() {
                    op.streaming_tokens = tokens.is_some();
                    // The operation's result takes the details as they are.
                    op.details = Some(Box::new(details));
                }
                if let Some(t) = tokens {
                    self.streaming = Some(Box::new((t.cst, t.xst)));
                }
            }
            Endpoint::Logout => {
                if let Some(op) = self.current.as_mut() {
                    op.server_confirmed = true;
                }
            }
            Endpoint::Switch | Endpoint::Application => {}
        }
        Ok(())
    }

    pub(super) fn switched_to(&mut self, account: String) {
        self.session_account = Some(account.as_str().into());
        self.selected_account = Some(account.into());
        self.generation += 1;
    }

    pub(super) fn set_oauth(&mut self, t: decode::OAuthTokens, now: Now) {
        let (expires_at, expires_epoch_ms) = self.schedule_refresh(t.expires_in, now);
        self.tokens = Some(Tokens::OAuth {
            access: t.access_token,
            refresh: t.refresh_token,
            expires_at,
            expires_epoch_ms,
        });
    }

    /// Installs a refresh's tokens, in the buffers of the tokens they replace.
    pub(super) fn refreshed(&mut self, t: &decode::FreshTokens<'_>, now: Now) {
        let (at, epoch_ms) = self.schedule_refresh(t.expires_in, now);
        match &mut self.tokens {
            Some(Tokens::OAuth {
                access,
                refresh,
                expires_at,
                expires_epoch_ms,
            }) => {
                access.overwrite(&t.access);
                refresh.overwrite(&t.refresh);
                *expires_at = at;
                *expires_epoch_ms = epoch_ms;
            }
            _ => {
                self.tokens = Some(Tokens::OAuth {
                    access: AccessToken::new(t.access.as_ref()),
                    refresh: RefreshToken::new(t.refresh.as_ref()),
                    expires_at: at,
                    expires_epoch_ms: epoch_ms,
                });
            }
        }
    }

    /// Schedules the refresh of a token that lives `lifetime` from now; its expiry
    /// as an instant and in Unix milliseconds.
    fn schedule_refresh(&mut self, lifetime: Duration, now: Now) -> (Instant, i64) {
        let expires_at = now.after(lifetime);
        self.refresh_at = Some(self.refresh_due(expires_at, lifetime, now));
        let epoch_ms = now
            .unix_millis()
            .saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        (expires_at, epoch_ms)
    }

    /// When to refresh a token that expires at `expires_at`, `lifetime` from now:
    /// `refresh_margin` plus a random part of `refresh_spread` before it expires, the
    /// whole lead at most half the lifetime, so the refresh always comes before
    /// expiry and a short-lived token never loops.
    pub(super) fn refresh_due(
        &mut self,
        expires_at: Instant,
        lifetime: Duration,
        now: Now,
    ) -> Instant {
        let half = lifetime / 2;
        let margin = self.cfg.refresh_margin.min(half);
        let spread = self.cfg.refresh_spread.min(half - margin);
        let lead = margin + self.jitter.up_to(spread);
        expires_at.checked_sub(lead).unwrap_or(now.mono)
    }

    pub(super) fn install_snapshot(&mut self, s: SessionSnapshot, now: Now) {
        self.tokens = Some(match s.tokens {
            SnapTokens::Cst { cst, xst } => Tokens::Cst { cst, xst },
            SnapTokens::OAuth {
                access,
                refresh,
                expires_at_epoch_ms,
                streaming,
            } => {
                self.streaming = streaming.map(Box::new);
                let expires_at = now.instant_at_epoch_millis(expires_at_epoch_ms);
                let left = expires_at.saturating_duration_since(now.mono);
                if !left.is_zero() {
                    self.refresh_at = Some(self.refresh_due(expires_at, left, now));
                }
                Tokens::OAuth {
                    access,
                    refresh,
                    expires_at,
                    expires_epoch_ms: expires_at_epoch_ms,
                }
            }
        });
        self.session_account = Some(s.account_id.into());
        self.selected_account = None;
        self.lightstreamer_endpoint = s.lightstreamer_endpoint.map(Into::into);
        self.lost = None;
        self.generation += 1;
    }

    pub(super) fn on_action(&mut self, call: Call, action: Action, now: Now) -> Next {
        let endpoint = call.endpoint();
        if endpoint == Endpoint::Logout {
            // The tokens are forgotten whatever IG says; only the flag differs.
            let confirmed = matches!(action, Action::AlreadyDone(_));
            if let Some(op) = self.current.as_mut() {
                op.server_confirmed = confirmed;
            }
            return Next::Done(Ok(()));
        }
        match action {
            Action::Close(e) => {
                self.close(e.clone());
                Next::Done(Err(e))
            }
            Action::Fail(e) => {
                if endpoint == Endpoint::Refresh {
                    return self.refresh_failed(e);
                }
                Next::Done(Err(e))
            }
            Action::Relogin(api) | Action::Refresh(api) => {
                if endpoint == Endpoint::Refresh {
                    return self.refresh_failed(Error::Unauthorized(api));
                }
                if endpoint == Endpoint::EncryptionKey || endpoint.is_login() {
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
                self.plan.push_front(Step::Call(call));
                self.plan_recovery_first();
                Next::Continue
            }
            Action::BackOff { error, retry_after } => {
                let until = now.after(retry_after);
                self.backoff_until = Some(self.backoff_until.map_or(until, |u| u.max(until)));
                Next::Done(Err(Error::Throttled { error, retry_after }))
            }
            // A login is repeated only after an answer that says IG did not judge it
            // (a server error), never after a 4xx whatever its code.
            Action::Retry(api) if endpoint.sends_password() && api.status < 500 => {
                Next::Done(Err(Error::Unavailable(api)))
            }
            Action::Retry(api) => self.retry(call, Error::Unavailable(api), now),
            Action::AlreadyDone(_) => {
                if let Call::Switch(to) = call {
                    if let Some(op) = self.current.as_mut() {
                        op.already_active = true;
                    }
                    // IG keeps the current tokens: nothing to replace.
                    self.session_account = Some(to.account.as_str().into());
                    self.selected_account = Some(to.account.into());
                }
                Next::Continue
            }
        }
    }

    /// A refused refresh falls back to one full login (not for a resume, where the
    /// caller decides).
    pub(super) fn refresh_failed(&mut self, e: Error) -> Next {
        match self.current.as_mut() {
            Some(op) if !op.fell_back => {
                op.fell_back = true;
                self.plan_first(self.login_steps());
                Next::Continue
            }
            _ => Next::Done(Err(e)),
        }
    }

    pub(super) fn retry(&mut self, call: Call, e: Error, now: Now) -> Next {
        let max = self.cfg.max_attempts.max(1);
        let delay = self.cfg.retry_delay;
        // The encrypted password was used up by the failed attempt (and its timeStamp
        // ages): a retried encrypted login fetches a fresh encryption key first.
        let fresh_key = call.endpoint().is_login() && self.cfg.login_flow == LoginFlow::EncryptedV2;
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
        self.plan.push_front(Step::Call(call));
        if fresh_key {
            self.plan.push_front(Step::send(Endpoint::EncryptionKey));
        }
        Next::Continue
    }

    pub(super) fn on_failure(&mut self, call: Call, e: Error, now: Now) {
        let endpoint = call.endpoint();
        let next = if endpoint == Endpoint::Logout {
            Next::Done(Ok(()))
        } else if endpoint.sends_password() {
            match e {
                // No connection was opened: the password never left, so try again.
                Error::Transport(f) if f.kind == FailureKind::Connect => {
                    self.retry(call, Error::Transport(f), now)
                }
                Error::Transport(f) => Next::Done(Err(Error::LoginUnanswered {
                    endpoint: endpoint.name(),
                    failure: Some(f),
                })),
                e => Next::Done(Err(e)),
            }
        } else {
            self.retry(call, e, now)
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
        match action_for(
            Endpoint::login(self.cfg.login_flow),
            status.as_u16(),
            code.as_deref(),
            self.backoffs(),
        ) {
            Action::Close(e) => {
                self.close(e);
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
        self.lost = Some(Box::new(reason.clone()));
        self.emit(Event::SessionLost { reason });
    }

    pub(super) fn close(&mut self, reason: Error) {
        if self.closed.is_some() {
            return;
        }
        self.forget_tokens();
        self.in_flight = None;
        self.backoff_until = None;
        self.closed = Some(Box::new(reason.clone()));
        let awaiting = self.awaiting.take().map(|a| a.op);
        for op in std::mem::take(&mut self.queue)
            .into_iter()
            .map(|o| o.id)
            .chain(awaiting)
        {
            self.emit(Event::Completed {
                op,
                result: Err(Error::Cancelled),
            });
        }
        self.emit(Event::SessionLost { reason });
    }
}
