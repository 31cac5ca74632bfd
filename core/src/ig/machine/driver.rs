//! The loop contract: submit, handle_input, poll_output, authorize, observe.

use super::*;

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
            IgIntent::Logout => {
                self.cancel_for_logout(now);
                self.new_op(Kind::Logout)
            }
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
                } else if let Some(i) = self.abandoned_logins.iter().position(|a| *a == id) {
                    self.abandoned_logins.remove(i);
                    self.on_late_login_answer(&response, now);
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
            crate::machine::trace_output("ig", &o);
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
                self.close(e.clone(), now);
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
}
