//! How the machine reacts to each answer: the transitions after a response or a
//! transport failure.

use std::time::{Duration, Instant};

use super::ops::{Kind, Step};
use super::{IbkrSession, Lst};
use crate::error::{ActionRequired, ApiError, CryptoError, Error, ProtocolError};
use crate::ibkr::config::IbkrAuth;
use crate::ibkr::decode::{self, AuthStatus, Pacing, TickleResponse};
use crate::ibkr::endpoint::Endpoint;
use crate::ibkr::oauth::dh::DhSecret;
use crate::ibkr::oauth::lst::{live_session_token, validate_live_session_token};
use crate::ibkr::policy::{self, SessionClass};
use crate::ibkr::{IbkrOutcome, IbkrState};
use crate::machine::{Event, FailureKind, Output};
use crate::secret::LiveSessionToken;
use crate::time::Now;

/// Epoch milliseconds below this (March 1973) are not a token expiry in milliseconds:
/// IBKR mixes units, and an expiry in epoch seconds read as milliseconds lands in
/// January 1970.
const MIN_EPOCH_MILLIS: i64 = 100_000_000_000;
/// A live session token must stay valid this much longer than the refresh margin.
const MIN_LST_LIFETIME_BEYOND_MARGIN: Duration = Duration::from_secs(60);
/// Delay before a failed proactive renewal is tried again (only after failures that
/// prove the request was answered or never sent).
const LST_RETRY_DELAY: Duration = Duration::from_secs(30);

impl IbkrSession {
    pub(super) fn on_response(
        &mut self,
        step: Step,
        resp: &http::Response<Vec<u8>>,
        dh: Option<DhSecret>,
        now: Now,
    ) {
        let st = resp.status();
        let ep = self.endpoint(step).name();
        if step == Step::Lst {
            return self.on_lst(resp, dh, now);
        }
        if step == Step::Logout && policy::is_no_session(resp) {
            // No session left to end: logged out all the same.
            self.finish(Ok(IbkrOutcome::LoggedOut { status: None }));
            return self.after_logout();
        }
        if st == http::StatusCode::TOO_MANY_REQUESTS {
            self.enter_backoff(now);
            let retry_after = self.cfg.throttle_backoff;
            self.finish(Err(Error::Throttled {
                error: api_error(resp),
                retry_after,
            }));
            if step == Step::Logout {
                // Logout is final on this side even when the broker did not take it.
                self.after_logout();
            }
            return;
        }
        if policy::is_no_session(resp) {
            return self.on_no_session(step, resp);
        }
        if st.is_redirection() {
            return self.on_failure(
                step,
                Error::Protocol(ProtocolError::Redirect {
                    endpoint: ep,
                    status: st.as_u16(),
                }),
                None,
                now,
            );
        }
        if !st.is_success() {
            let err = if st.is_server_error() {
                Error::Unavailable(api_error(resp))
            } else {
                Error::Rejected(api_error(resp))
            };
            return self.on_failure(step, err, None, now);
        }
        let body = resp.body().as_slice();
        match step {
            Step::Status | Step::Poll | Step::Init => {
                let status = if step == Step::Init {
                    decode::ssodh_init(body)
                } else {
                    decode::auth_status(body)
                };
                match status {
                    Ok(s) => self.on_status(step, s, now),
                    Err(e) => self.on_failure(step, e.into(), None, now),
                }
            }
            Step::Tickle => match decode::tickle(body) {
                Ok(TickleResponse::Ok(mut info)) => {
                    let keepalive = matches!(
                        self.current.as_ref().map(|o| o.kind),
                        Some(Kind::Tickle { keepalive: true })
                    );
                    let class = info.session_class;
                    if let Some(c) = class {
                        self.apply_class(c);
                    }
                    if self.session_alive() {
                        // A tickle that had to renew the token was sent while not yet
                        // alive, so it did not schedule the next one: do it now.
                        self.start_keepalive(now);
                    }
                    info.pacing = self.pacing();
                    self.finish(Ok(IbkrOutcome::Tickled(info)));
                    if keepalive && self.cfg.auto_init {
                        let recover = match class {
                            Some(SessionClass::NotAuthenticated | SessionClass::NotConnected) => {
                                true
                            }
                            Some(SessionClass::Competing) => self.cfg.compete && !self.shared,
                            _ => false,
                        };
                        if recover
                            && self.may_start_work()
                            && !self
                                .queue
                                .iter()
                                .any(|o| matches!(o.kind, Kind::Connect { .. }))
                        {
                            self.machine_op(Kind::Connect { force_lst: false }, false, true);
                        }
                    }
                }
                Ok(TickleResponse::Failed { error }) => {
                    let e = Error::Unavailable(ApiError::new(st.as_u16(), Some(&error)));
                    self.finish(Err(e));
                }
                Err(e) => self.finish(Err(e.into())),
            },
            Step::Reauth => match decode::reauthenticate(body) {
                Ok(_) => self.begin_poll(now),
                Err(e) => self.finish(Err(e.into())),
            },
            Step::Accounts => {
                self.preflight_done = true;
                self.finish_preflight();
            }
            Step::Validate => match decode::validate(body) {
                Ok(mut v) => {
                    v.pacing = self.pacing();
                    self.finish(Ok(IbkrOutcome::Validated(v)));
                }
                Err(e) => self.finish(Err(e.into())),
            },
            Step::Logout => {
                let status = decode::logout(body).unwrap_or(None);
                self.finish(Ok(IbkrOutcome::LoggedOut { status }));
                self.after_logout();
            }
            Step::Lst => {}
        }
    }

    /// How pacing treated the current operation's request.
    fn pacing(&self) -> Pacing {
        Pacing {
            delayed_by: self.current.as_ref().and_then(|o| o.delayed_by),
        }
    }

    pub(super) fn after_logout(&mut self) {
        self.lst = None;
        self.lst_refresh_at = None;
        self.generation += 1;
        self.next_tickle = None;
        self.logged_out = true;
        if matches!(self.state, IbkrState::BackingOff { .. }) {
            // The back-off keeps pacing the next Connect, then ends logged out.
            self.before_backoff = Some(IbkrState::Disconnected);
        } else {
            self.set_state(IbkrState::Disconnected);
        }
    }

    /// If a logout cancelled the current operation while its request was in flight,
    /// completes it as cancelled (ignoring the answer, so nothing follows from it) and
    /// returns `true`. A credentials rejection of a token request still closes the
    /// session.
    pub(super) fn cancel_if_logging_out(
        &mut self,
        step: Step,
        resp: Option<&http::Response<Vec<u8>>>,
    ) -> bool {
        if !self.current.as_ref().is_some_and(|o| o.cancelled) {
            return false;
        }
        if step == Step::Lst
            && let Some(r) = resp.filter(|r| r.status() == http::StatusCode::UNAUTHORIZED)
        {
            self.close(Error::CredentialsRejected(api_error(r)));
            return true;
        }
        if self.state == IbkrState::AcquiringToken {
            self.set_state(IbkrState::Disconnected);
        }
        self.finish(Err(Error::Cancelled));
        true
    }

    pub(super) fn on_lst(
        &mut self,
        resp: &http::Response<Vec<u8>>,
        dh: Option<DhSecret>,
        now: Now,
    ) {
        let st = resp.status();
        if st == http::StatusCode::UNAUTHORIZED {
            // The consumer key, access token or signature was refused: never retried.
            return self.close(Error::CredentialsRejected(api_error(resp)));
        }
        if st == http::StatusCode::TOO_MANY_REQUESTS {
            self.enter_backoff(now);
            return self.finish(Err(Error::Throttled {
                error: api_error(resp),
                retry_after: self.cfg.throttle_backoff,
            }));
        }
        if !st.is_success() {
            let err = if st.is_redirection() {
                Error::Protocol(ProtocolError::Redirect {
                    endpoint: Endpoint::LiveSessionToken.name(),
                    status: st.as_u16(),
                })
            } else if st.is_server_error() {
                Error::Unavailable(api_error(resp))
            } else {
                Error::Rejected(api_error(resp))
            };
            // An answer: the request was received and refused for a reason that is
            // not the credentials. A renewal may be tried again (paced).
            self.restore_after_lst_failure(now, true);
            return self.finish(Err(err));
        }
        let result = self
            .derive_lst(resp.body(), dh)
            .and_then(|(token, expiration)| {
                Ok((token, self.lst_expiry(expiration, now)?, expiration))
            });
        match result {
            Ok((token, expires_at, expires_epoch_ms)) => {
                self.lst = Some(Lst {
                    token,
                    expires_at,
                    expires_epoch_ms: expires_at.and(expires_epoch_ms),
                });
                self.generation += 1;
                self.lst_refresh_at = expires_at.map(|e| self.refresh_instant(e, now));
                let reactive = self.current.as_ref().is_some_and(|o| o.reactive);
                self.reactive_generation = reactive.then_some(self.generation);
                if self.state == IbkrState::AcquiringToken {
                    self.set_state(IbkrState::Connecting);
                }
                if let Some(op) = self.current.as_mut() {
                    op.lst_renewed = true;
                    // The plan goes on with the step the token was obtained for (every
                    // plan holds one); a status check if none were left.
                    if self.plan.is_empty() {
                        self.plan.push_back(Step::Status);
                    }
                    op.wake = None;
                }
            }
            Err(e @ Error::Crypto(CryptoError::LiveSessionTokenMismatch)) => self.close(e),
            Err(e) => {
                self.restore_after_lst_failure(now, true);
                self.finish(Err(e));
            }
        }
    }

    /// The instant a new token expires, from `live_session_token_expiration`.
    ///
    /// The field is epoch milliseconds (IBKR's example, ibind and the C# sample; the
    /// spec says a token lives 24 hours). A value that looks like epoch *seconds*, or
    /// that is not at least the refresh margin plus a minute ahead, is a
    /// [`ProtocolError::InvalidField`]: taking it as "expires now" would ask for a
    /// new token at once, and again after that, in a loop of RSA-signed requests. The
    /// operation fails instead (one token request), and the error names the field.
    /// No expiry at all keeps the token until IBKR refuses it (a 401 renews it once).
    pub(super) fn lst_expiry(
        &self,
        expiration: Option<i64>,
        now: Now,
    ) -> Result<Option<Instant>, Error> {
        let Some(ms) = expiration else {
            return Ok(None);
        };
        let invalid = |reason| {
            Error::Protocol(ProtocolError::InvalidField {
                endpoint: Endpoint::LiveSessionToken.name(),
                field: "live_session_token_expiration",
                reason,
            })
        };
        if ms < MIN_EPOCH_MILLIS {
            return Err(invalid(
                "not epoch milliseconds (too small: epoch seconds, zero or negative)",
            ));
        }
        let margin = match &self.cfg.auth {
            IbkrAuth::OAuth(o) => o.lst_refresh_margin,
            IbkrAuth::Gateway => Duration::ZERO,
        };
        let min_ahead = margin.saturating_add(MIN_LST_LIFETIME_BEYOND_MARGIN);
        let min_ahead_ms = i64::try_from(min_ahead.as_millis()).unwrap_or(i64::MAX);
        if ms.saturating_sub(now.unix_millis()) < min_ahead_ms {
            return Err(invalid(
                "in the past or too near: less than the refresh margin plus a minute ahead",
            ));
        }
        Ok(Some(now.instant_at_epoch_millis(ms)))
    }

    /// After a failed token request: leave "acquiring", and decide whether a
    /// proactive renewal may be tried again by itself. `retry_safe` says the failure
    /// proves the request was either answered (not with a credentials rejection) or
    /// never sent; otherwise (a timeout, a connection broken after it may have been
    /// sent) the machine asks for no token by itself until the user's Connect or
    /// RenewToken, since the request may have been refused unseen.
    pub(super) fn restore_after_lst_failure(&mut self, now: Now, retry_safe: bool) {
        if self.state == IbkrState::AcquiringToken {
            self.set_state(IbkrState::Disconnected);
        }
        if !retry_safe {
            self.lst_refresh_at = None;
            return;
        }
        // A failed proactive renewal is tried again while the old token still works.
        if self.lst_valid(now) && self.lst_refresh_at.is_none() && self.may_renew_lst() {
            self.lst_refresh_at = Some(now.after(LST_RETRY_DELAY));
        }
    }

    pub(super) fn derive_lst(
        &self,
        body: &[u8],
        dh: Option<DhSecret>,
    ) -> Result<(LiveSessionToken, Option<i64>), Error> {
        let signer = self.signer.as_ref().ok_or(Error::Cancelled)?;
        let secret = dh.ok_or(Error::Cancelled)?;
        let r = decode::live_session_token(body)?;
        let k = signer
            .group()
            .shared_secret(&secret, &r.diffie_hellman_response)?;
        let token = live_session_token(k.expose_secret(), signer.prepend());
        validate_live_session_token(
            &token,
            signer.consumer_key(),
            &r.live_session_token_signature,
        )?;
        Ok((token, r.live_session_token_expiration))
    }

    /// Renew `margin` before expiry, but never in the first half of the token's life
    /// and never sooner than a second from now (no renewal loops on short tokens).
    pub(super) fn refresh_instant(&self, expires_at: Instant, now: Now) -> Instant {
        let margin = match &self.cfg.auth {
            IbkrAuth::OAuth(o) => o.lst_refresh_margin,
            IbkrAuth::Gateway => Duration::ZERO,
        };
        let life = expires_at.saturating_duration_since(now.mono);
        let at = expires_at
            .checked_sub(margin.min(life / 2))
            .unwrap_or(now.mono);
        at.max(now.after(Duration::from_secs(1)))
    }

    pub(super) fn on_no_session(&mut self, step: Step, resp: &http::Response<Vec<u8>>) {
        if self.signer.is_some() {
            let renewed = self.current.as_ref().is_none_or(|o| o.lst_renewed);
            if renewed {
                // A token this operation just obtained was refused: not another loop.
                self.lst = None;
                self.lst_refresh_at = None;
                let err = Error::Unauthorized(api_error(resp));
                self.finish(Err(err.clone()));
                self.set_state(IbkrState::Disconnected);
                self.out
                    .push_back(Output::Event(Event::SessionLost { reason: err }));
            } else {
                self.lst = None;
                if let Some(op) = self.current.as_mut() {
                    // The step again (a poll as a plain status), a new token first.
                    self.plan.push_front(if step == Step::Poll {
                        Step::Status
                    } else {
                        step
                    });
                    self.plan.push_front(Step::Lst);
                    op.wake = None;
                }
            }
        } else {
            self.lose_to_browser_login();
            self.finish(Err(Error::ActionRequired(ActionRequired::BrowserLogin)));
        }
    }

    pub(super) fn apply_class(&mut self, c: SessionClass) {
        let s = match c {
            SessionClass::Ready => IbkrState::Ready,
            SessionClass::Competing => IbkrState::Competing,
            SessionClass::NotAuthenticated => IbkrState::NotAuthenticated,
            SessionClass::NotConnected => IbkrState::NotConnected,
            SessionClass::NoSession => IbkrState::BrowserLoginRequired,
            SessionClass::Unreachable => return,
        };
        self.set_state(s);
    }

    pub(super) fn on_status(&mut self, step: Step, s: AuthStatus, now: Now) {
        let class = policy::session_class(&s);
        self.apply_class(class);
        if self.session_alive() {
            self.start_keepalive(now);
        }
        let Some(op) = self.current.as_ref() else {
            return;
        };
        let kind = op.kind;
        let compete = op.compete;
        if class == SessionClass::Ready && kind != Kind::CheckStatus {
            if self.cfg.preflight_accounts && !self.preflight_done {
                if let Some(op) = self.current.as_mut() {
                    op.ready = Some(Box::new(s));
                    self.plan.push_front(Step::Accounts);
                    op.wake = None;
                }
                return;
            }
            return self.finish(Ok(IbkrOutcome::Connected(s)));
        }
        match (kind, step) {
            (Kind::CheckStatus, _) => self.finish(Ok(IbkrOutcome::Status(s))),
            (_, Step::Init | Step::Poll) => self.continue_poll(s, now),
            (Kind::Connect { .. }, Step::Status) => {
                let init = self.cfg.auto_init && (class != SessionClass::Competing || compete);
                if init {
                    self.plan.push_front(Step::Init);
                } else {
                    self.finish(Ok(IbkrOutcome::Status(s)));
                }
            }
            _ => self.continue_poll(s, now),
        }
    }

    pub(super) fn begin_poll(&mut self, now: Now) {
        let interval = self.cfg.status_poll_interval;
        let deadline = now.after(self.cfg.ready_timeout);
        if let Some(op) = self.current.as_mut() {
            self.plan.push_front(Step::Poll);
            op.poll_deadline = Some(deadline);
            op.wake = Some(now.after(interval));
        }
    }

    pub(super) fn continue_poll(&mut self, s: AuthStatus, now: Now) {
        let interval = self.cfg.status_poll_interval;
        let Some(op) = self.current.as_mut() else {
            return;
        };
        let deadline = match op.poll_deadline {
            Some(d) => d,
            None => {
                let d = now.after(self.cfg.ready_timeout);
                op.poll_deadline = Some(d);
                d
            }
        };
        if now.after(interval) > deadline {
            let why = if policy::session_class(&s) == SessionClass::Competing {
                "brokerage session still competing at the ready deadline"
            } else {
                "brokerage session not ready before the deadline"
            };
            return self.finish(Err(Error::Unavailable(ApiError::new(200, Some(why)))));
        }
        self.plan.push_front(Step::Poll);
        op.wake = Some(now.after(interval));
    }

    pub(super) fn on_failure(&mut self, step: Step, err: Error, dh: Option<DhSecret>, now: Now) {
        drop(dh);
        if step == Step::Lst {
            let retry_safe = match &err {
                // The connection never opened, or the TLS handshake failed: nothing
                // of the signed request left this side.
                Error::Transport(f) => matches!(f.kind, FailureKind::Connect | FailureKind::Tls),
                Error::Protocol(ProtocolError::NoResponse { .. }) => false,
                _ => true,
            };
            if !retry_safe {
                self.lst_hold = Some(Box::new(err.clone()));
            }
            self.restore_after_lst_failure(now, retry_safe);
            return self.finish(Err(err));
        }
        if step == Step::Logout {
            // Logout is final on this side even when the broker did not confirm it.
            self.finish(Err(err));
            return self.after_logout();
        }
        let backoff = self.cfg.init_backoff;
        let attempts = self.cfg.init_attempts;
        let interval = self.cfg.status_poll_interval;
        let Some(op) = self.current.as_mut() else {
            return;
        };
        match step {
            // The preflight is best effort: the session is ready either way.
            Step::Accounts => self.finish_preflight(),
            Step::Init => {
                op.init_attempts += 1;
                if op.init_attempts < attempts {
                    self.plan.push_front(Step::Init);
                    let factor = 1u32 << (op.init_attempts - 1).min(16);
                    op.wake = Some(now.after(backoff.saturating_mul(factor)));
                } else {
                    self.finish(Err(err));
                }
            }
            Step::Poll => {
                if op.poll_deadline.is_some_and(|d| now.after(interval) <= d) {
                    self.plan.push_front(Step::Poll);
                    op.wake = Some(now.after(interval));
                } else {
                    self.finish(Err(err));
                }
            }
            _ => self.finish(Err(err)),
        }
    }

    pub(super) fn finish_preflight(&mut self) {
        let status = self
            .current
            .as_mut()
            .and_then(|o| o.ready.take())
            .map(|s| *s)
            .unwrap_or_default();
        self.finish(Ok(IbkrOutcome::Connected(status)));
    }
}

pub(super) fn api_error<B: AsRef<[u8]>>(resp: &http::Response<B>) -> ApiError {
    let code = decode::error_text(resp.body().as_ref());
    ApiError::new(resp.status().as_u16(), code.as_deref())
}
