//! Operations: their kinds, their plans of steps, the queue, sending (`try_send`,
//! `request_for`) and completing (`finish`).
//!
//! The running operation's remaining steps are the session's `plan` (one buffer for
//! every operation, since one runs at a time: starting one allocates nothing). It is
//! written when the operation starts (`first_steps`). A step leaves the plan when
//! its request is sent; the answer (in `answers.rs`) then continues the plan, pushes
//! steps to its front (a retry pushes the step again; a token renewal pushes `Lst`
//! before it; an answer that says what comes next, such as "not authenticated" after
//! a status, pushes that step), or finishes the operation.

use std::time::{Duration, Instant};

use super::{ABANDONED_LST_MEMORY, IbkrSession};
use crate::error::{Error, ProtocolError, UsageError};
use crate::ibkr::decode::AuthStatus;
use crate::ibkr::encode;
use crate::ibkr::endpoint::Endpoint;
use crate::ibkr::oauth::dh::DhSecret;
use crate::ibkr::{IbkrOutcome, IbkrState};
use crate::machine::{Event, OpId, Output, RequestId, Transmit};
use crate::time::{Now, deadline_after};

/// Where an operation is: each step but `Poll` is one request to its endpoint
/// ([`IbkrSession::endpoint`]); `Poll` asks for the status again after a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Lst,
    Status,
    Init,
    Poll,
    Tickle,
    Reauth,
    Validate,
    Logout,
    Accounts,
}

/// What an operation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Connect, RenewToken, and the machine's recoveries and proactive renewals.
    Connect {
        force_lst: bool,
    },
    CheckStatus,
    Init,
    Tickle {
        keepalive: bool,
    },
    Reauth,
    Validate,
    Logout,
}

/// A running or queued operation.
#[derive(Debug)]
pub(super) struct Op {
    pub(super) id: OpId,
    pub(super) kind: Kind,
    pub(super) compete: bool,
    pub(super) wake: Option<Instant>,
    pub(super) init_attempts: u32,
    pub(super) poll_deadline: Option<Instant>,
    /// A live session token was obtained by this operation: a second 401 is final.
    pub(super) lst_renewed: bool,
    /// Started by `observe` after a 401 on an application request.
    pub(super) reactive: bool,
    /// Submitted by the user (not started by the machine itself).
    pub(super) by_user: bool,
    /// Live session token requests this operation sent: never more than one.
    pub(super) lst_requests: u32,
    /// A logout was submitted while this operation's request was in flight: it
    /// completes as cancelled when the answer (or the deadline) comes.
    pub(super) cancelled: bool,
    /// When pacing first held this operation's tickle or validate back.
    pub(super) held_since: Option<Instant>,
    /// How long pacing held the request that was sent, reported in its answer.
    pub(super) delayed_by: Option<Duration>,
    /// The ready status, kept while the accounts preflight runs (boxed: every
    /// queued operation would carry its room).
    pub(super) ready: Option<Box<AuthStatus>>,
    /// A recovery asked for by a follower (another process) whose request was refused
    /// with this generation.
    pub(super) for_follower: Option<u64>,
}

/// The one request in flight: the step it serves, and its Diffie-Hellman secret when
/// it asks for a live session token.
pub(super) struct InFlight {
    pub(super) id: RequestId,
    pub(super) step: Step,
    pub(super) deadline: Instant,
    pub(super) dh: Option<DhSecret>,
}

impl IbkrSession {
    /// The endpoint a step calls.
    pub(super) fn endpoint(&self, step: Step) -> Endpoint {
        match step {
            Step::Lst => Endpoint::LiveSessionToken,
            Step::Status | Step::Poll => Endpoint::Status,
            Step::Init => Endpoint::SsodhInit,
            Step::Tickle => Endpoint::Tickle,
            Step::Reauth => Endpoint::Reauthenticate(self.cfg.reauthenticate_method),
            Step::Validate => Endpoint::Validate,
            Step::Logout => Endpoint::Logout,
            Step::Accounts => Endpoint::Accounts,
        }
    }

    /// The plan an operation of `kind` starts with. It holds what is known when the
    /// operation starts; answers push what they show is needed (`ssodh/init`, status
    /// polls, the accounts preflight, a token renewal).
    pub(super) fn first_steps(&self, kind: Kind) -> &'static [Step] {
        match kind {
            Kind::Connect { force_lst: true } if self.signer.is_some() => {
                &[Step::Lst, Step::Status]
            }
            Kind::Connect { .. } | Kind::CheckStatus => &[Step::Status],
            Kind::Init => &[Step::Init],
            Kind::Tickle { .. } => &[Step::Tickle],
            Kind::Reauth => &[Step::Reauth],
            Kind::Validate => &[Step::Validate],
            Kind::Logout => &[Step::Logout],
        }
    }

    /// An operation of `kind`; its plan is written when it starts.
    pub(super) fn new_op(&mut self, kind: Kind, reactive: bool) -> Op {
        Op {
            id: self.ids.op(),
            kind,
            compete: self.cfg.compete,
            wake: None,
            init_attempts: 0,
            poll_deadline: None,
            lst_renewed: false,
            reactive,
            by_user: false,
            lst_requests: 0,
            cancelled: false,
            held_since: None,
            delayed_by: None,
            ready: None,
            for_follower: None,
        }
    }

    /// The operation currently obtaining a live session token, if any (running or
    /// queued).
    pub(super) fn token_op(&self) -> Option<OpId> {
        let lst_in_flight = self.in_flight.as_ref().is_some_and(|f| f.step == Step::Lst);
        let running = self.current.as_ref().filter(|o| {
            lst_in_flight
                || self.plan.front() == Some(&Step::Lst)
                || matches!(o.kind, Kind::Connect { force_lst: true })
        });
        running.map(|o| o.id).or_else(|| {
            self.queue
                .iter()
                .find(|o| matches!(o.kind, Kind::Connect { force_lst: true }))
                .map(|o| o.id)
        })
    }

    /// Queues an operation the machine starts by itself. Callers check
    /// [`Self::may_start_work`] first: after a logout the machine starts nothing.
    pub(super) fn machine_op(&mut self, kind: Kind, reactive: bool, front: bool) -> OpId {
        debug_assert!(!self.logged_out, "machine operation after a logout");
        let mut op = self.new_op(kind, reactive);
        if self.shared {
            // A session shared by a fleet never takes the brokerage session over by
            // itself: another member may hold it (only a user's connect may compete).
            op.compete = false;
        }
        let id = op.id;
        if front {
            self.queue.push_front(op);
        } else {
            self.queue.push_back(op);
        }
        id
    }

    /// A logout was submitted: every operation before it ends as cancelled (the one
    /// whose request is in flight when its answer comes), and no timer starts anything
    /// any more. Nothing but the logout leaves the machine until the user connects.
    pub(super) fn begin_logout(&mut self) {
        self.logged_out = true;
        self.next_tickle = None;
        self.lst_refresh_at = None;
        if matches!(self.state, IbkrState::BackingOff { .. }) {
            // The back-off still paces the logout, but must not end in a live state.
            self.before_backoff = Some(IbkrState::Disconnected);
        }
        while let Some(op) = self.queue.pop_front() {
            self.complete(op, Err(Error::Cancelled));
        }
        if self.in_flight.is_some() {
            if let Some(op) = self.current.as_mut() {
                op.cancelled = true;
            }
        } else if self.current.is_some() {
            self.finish(Err(Error::Cancelled));
        }
    }

    /// Remembers a live session token request given up at the deadline.
    pub(super) fn abandon_lst(&mut self, id: RequestId) {
        if self.abandoned_lst.len() >= ABANDONED_LST_MEMORY {
            self.abandoned_lst.pop_front();
        }
        self.abandoned_lst.push_back(id);
    }

    pub(super) fn complete(&mut self, op: Op, result: Result<IbkrOutcome, Error>) {
        self.out
            .push_back(Output::Event(Event::Completed { op: op.id, result }));
    }

    pub(super) fn finish(&mut self, result: Result<IbkrOutcome, Error>) {
        let connect_failed = result.is_err()
            && matches!(
                self.current.as_ref().map(|o| o.kind),
                Some(Kind::Connect { .. })
            );
        if connect_failed
            && matches!(
                self.state,
                IbkrState::Connecting | IbkrState::AcquiringToken
            )
        {
            // Nothing established: do not stay "connecting" after giving up.
            self.set_state(IbkrState::Disconnected);
        }
        if connect_failed
            && matches!(
                self.before_backoff,
                Some(IbkrState::Connecting | IbkrState::AcquiringToken)
            )
        {
            // Throttled while connecting: the back-off must not end in "connecting"
            // with no operation left to finish it.
            self.before_backoff = Some(IbkrState::Disconnected);
        }
        if let Some(op) = self.current.take() {
            self.plan.clear();
            let result = self.shared_result(&op, result);
            self.complete(op, result);
        }
    }

    // ---- driving ----------------------------------------------------------------

    /// Runs everything due at `now`, until nothing more can happen.
    ///
    /// This ends: each step that reports progress uses up something finite at one
    /// instant. It fires a timer that resets itself to a later instant or to none;
    /// ends a back-off; takes a queued operation (the queue only grows through those
    /// timers, each once per instant, or a submit, never here); finishes the current
    /// operation; or sends a request, after which nothing is sent until its answer
    /// or its deadline, which is at least a second later
    /// ([`IbkrConfig::request_deadline`](crate::ibkr::IbkrConfig::request_deadline)).
    /// So there is no step budget that could stop the machine short of quiescence.
    pub(super) fn drive(&mut self, now: Now) {
        self.lapse_lead(now);
        self.expire_awaiting(now);
        while self.step_once(now) {}
        self.announce_credentials();
    }

    /// One unit of progress; `false` when nothing more can happen at `now`.
    pub(super) fn step_once(&mut self, now: Now) -> bool {
        if self.closed.is_some() {
            return false;
        }
        // A request nobody answered in time fails, so the machine never hangs.
        if let Some(f) = &self.in_flight {
            if now.mono >= f.deadline {
                let step = f.step;
                if let Some(f) = self.in_flight.take() {
                    if step == Step::Lst {
                        self.abandon_lst(f.id);
                    }
                    let err = Error::Protocol(ProtocolError::NoResponse {
                        endpoint: self.endpoint(step).name(),
                    });
                    if !self.cancel_if_logging_out(step, None) {
                        self.on_failure(step, err, f.dh, now);
                    }
                }
                return true;
            }
            return false;
        }
        if let Some(until) = self.backoff_until
            && now.mono >= until
        {
            self.backoff_until = None;
            let back = self
                .before_backoff
                .take()
                .unwrap_or(IbkrState::Disconnected);
            let back = if self.logged_out {
                IbkrState::Disconnected
            } else {
                back
            };
            self.set_state(back);
            if self.session_alive() {
                self.next_tickle = None;
                self.start_keepalive(now);
            }
            return true;
        }
        // Timers that start machine operations.
        if let Some(at) = self.lst_refresh_at
            && now.mono >= at
        {
            self.lst_refresh_at = None;
            if self.token_op().is_none() && self.may_renew_lst() {
                self.machine_op(Kind::Connect { force_lst: true }, false, false);
            }
            return true;
        }
        if let Some(at) = self.next_tickle
            && now.mono >= at
            && self.backoff_until.is_none()
        {
            self.next_tickle = None;
            let already = self
                .queue
                .iter()
                .any(|o| o.kind == (Kind::Tickle { keepalive: true }));
            if !already && self.may_start_work() {
                self.machine_op(Kind::Tickle { keepalive: true }, false, false);
            }
            return true;
        }
        if self.current.is_none() {
            match self.queue.pop_front() {
                Some(op) => {
                    let user_connect = op.by_user && matches!(op.kind, Kind::Connect { .. });
                    if user_connect {
                        // The user's Connect (or RenewToken) is the only way back after a
                        // logout, and the user's decision to try a token request again.
                        self.logged_out = false;
                        self.lst_hold = None;
                    }
                    let refused = self.logged_out && op.kind != Kind::Logout;
                    debug_assert!(
                        self.plan.is_empty(),
                        "a plan left from a finished operation"
                    );
                    self.plan.clear();
                    self.plan.extend(self.first_steps(op.kind));
                    self.current = Some(op);
                    if refused {
                        // After a logout only Connect brings the session back.
                        self.finish(Err(Error::Usage(UsageError::NotLoggedIn)));
                    }
                    return true;
                }
                None => return false,
            }
        }
        self.try_send(now)
    }

    pub(super) fn try_send(&mut self, now: Now) -> bool {
        if self.backoff_until.is_some_and(|u| u > now.mono) {
            return false;
        }
        let Some(op) = self.current.as_ref() else {
            return false;
        };
        if op.wake.is_some_and(|w| w > now.mono) {
            return false;
        }
        let Some(mut step) = self.plan.front().copied() else {
            // Every answer either pushes a step or finishes the operation, so a plan
            // never runs dry here; should one, the operation ends rather than hangs.
            debug_assert!(false, "an operation ran out of steps without finishing");
            self.finish(Err(Error::Cancelled));
            return true;
        };
        // Pacing: an early tickle or validate waits for its slot, and its answer
        // will say how long it waited.
        let not_before = match step {
            Step::Tickle => self
                .last_tickle
                .map(|t| deadline_after(t, self.cfg.tickle_min_interval)),
            Step::Validate => self
                .last_validate
                .map(|t| deadline_after(t, self.cfg.validate_min_interval)),
            _ => None,
        };
        if let Some(nb) = not_before.filter(|nb| *nb > now.mono) {
            if let Some(op) = self.current.as_mut() {
                op.wake = Some(nb);
                op.held_since.get_or_insert(now.mono);
            }
            return false;
        }
        // OAuth requests need a live session token: obtain one first.
        if self.signer.is_some() && step != Step::Lst && !self.lst_valid(now) {
            if step == Step::Logout {
                self.finish(Ok(IbkrOutcome::LoggedOut { status: None }));
                self.after_logout();
                return true;
            }
            self.plan.push_front(Step::Lst);
            step = Step::Lst;
        }
        if step == Step::Lst
            && let Some(refusal) = self.lst_refusal(now)
        {
            self.finish(Err(refusal));
            return true;
        }
        if self.logged_out && step != Step::Logout {
            // Belt and braces: after a logout nothing but the logout is sent.
            self.finish(Err(Error::Cancelled));
            return true;
        }
        match self.request_for(step, now) {
            Ok((request, dh)) => {
                let id = self.ids.request();
                self.plan.pop_front();
                if matches!(step, Step::Tickle | Step::Validate)
                    && let Some(op) = self.current.as_mut()
                {
                    op.delayed_by = op
                        .held_since
                        .take()
                        .map(|h| now.mono.saturating_duration_since(h));
                }
                match step {
                    Step::Tickle => {
                        self.last_tickle = Some(now.mono);
                        if self.session_alive() && !self.logged_out {
                            let interval = self.keepalive_interval();
                            self.next_tickle = Some(now.after(interval));
                        }
                    }
                    Step::Validate => self.last_validate = Some(now.mono),
                    Step::Lst => {
                        if let Some(op) = self.current.as_mut() {
                            op.lst_requests += 1;
                        }
                        if !self.lst_valid(now) {
                            self.set_state(IbkrState::AcquiringToken);
                        }
                    }
                    Step::Status
                        if matches!(
                            self.state,
                            IbkrState::Disconnected
                                | IbkrState::BrowserLoginRequired
                                | IbkrState::AcquiringToken
                        ) && matches!(
                            self.current.as_ref().map(|o| o.kind),
                            Some(Kind::Connect { .. })
                        ) =>
                    {
                        self.set_state(IbkrState::Connecting);
                    }
                    _ => {}
                }
                let deadline = now.after(self.cfg.request_deadline);
                self.in_flight = Some(InFlight {
                    id,
                    step,
                    deadline,
                    dh,
                });
                self.out.push_back(Output::Send(Transmit {
                    id,
                    request,
                    deadline,
                }));
            }
            Err(e) => self.finish(Err(e)),
        }
        true
    }

    /// Why the current operation may not ask for a live session token now, if it may
    /// not: it already asked once (an operation never asks twice, whatever the
    /// answers), or an earlier request's fate is unknown and the operation is not the
    /// user's Connect or RenewToken.
    pub(super) fn lst_refusal(&mut self, now: Now) -> Option<Error> {
        let op = self.current.as_ref()?;
        if op.lst_requests >= 1 {
            return Some(Error::Protocol(ProtocolError::InvalidField {
                endpoint: Endpoint::LiveSessionToken.name(),
                field: "live_session_token_expiration",
                reason: "the token this operation obtained expired before it could be used; not asking again",
            }));
        }
        let hold = self.lst_hold.as_deref().cloned()?;
        if self.session_alive() && !self.lst_valid(now) {
            self.lst = None;
            self.lst_refresh_at = None;
            self.set_state(IbkrState::Disconnected);
            self.out.push_back(Output::Event(Event::SessionLost {
                reason: hold.clone(),
            }));
        }
        Some(hold)
    }

    /// The request for `step`: built from its endpoint, signed when the session uses
    /// OAuth (the live session token request is signed with RSA and carries a fresh
    /// Diffie-Hellman secret, returned beside it).
    pub(super) fn request_for(
        &mut self,
        step: Step,
        now: Now,
    ) -> Result<(http::Request<Vec<u8>>, Option<DhSecret>), Error> {
        if step == Step::Lst {
            let signer = self
                .signer
                .as_ref()
                .ok_or(Error::Usage(UsageError::Unsupported {
                    intent: "renew token",
                    reason: "only OAuth sessions have a live session token",
                }))?;
            let (req, dh) = signer.lst_request(&self.parts.base, self.rng.get(), now)?;
            return Ok((req, Some(dh)));
        }
        let endpoint = self.endpoint(step);
        let body = (endpoint == Endpoint::SsodhInit).then(|| {
            let compete = self.current.as_ref().is_some_and(|o| o.compete);
            encode::ssodh_init_body(compete)
        });
        let mut req = encode::request(&self.parts.base, endpoint, body)?;
        if let (Some(signer), Some(lst)) = (&self.signer, &self.lst) {
            signer.sign(&mut req, &lst.token, self.rng.get(), now)?;
        }
        Ok((req, None))
    }
}
