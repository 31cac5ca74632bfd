//! One login shared by several processes: the follower role, adopting another
//! process's live session token, taking the ownership over and giving it up,
//! recovering for a follower, and announcing each new generation to share.
//!
//! The same model as IG's (`ig/machine/follower.rs`), with IBKR's two ways in:
//!
//! - OAuth: what is shared is the live session token. A follower signs application
//!   requests with the adopted token and never asks for one; a refusal (401) or an
//!   expired token turns into one wait for a newer generation ([`Awaiting`]), shared
//!   by every call that hit it, and ended by [`IbkrIntent::Adopt`] or the request
//!   deadline. The owner announces each new token.
//! - Gateway: the gateway holds the brokerage session, so nothing secret is shared;
//!   a generation stands for one recovery of the brokerage session. Only the owner
//!   tickles, checks the status, initialises, reauthenticates and logs out; a
//!   follower's "no session" or "no bridge" becomes a wait for the owner's recovery
//!   of that generation.
//!
//! Taking over never takes a brokerage session over from the fleet itself: `Lead` is a
//! status check (signed with the adopted token while it is valid, so no new token is
//! asked for) and, when needed, `ssodh/init` with `compete=false`.

use super::ops::Kind;
use super::*;
use crate::ibkr::{IbkrRole, IbkrSnapshot};

/// Calls of a follower waiting for a generation newer than `refused`.
pub(super) struct Awaiting {
    /// The operation the calls wait for; it completes with the next adopted
    /// generation, or with [`Error::NoNewerCredentials`] at `deadline`.
    pub(super) op: OpId,
    pub(super) refused: u64,
    pub(super) deadline: Instant,
}

impl IbkrSession {
    /// A session in the [`IbkrRole::Follower`] role: it sends application requests
    /// with what [`IbkrIntent::Adopt`] gives it (OAuth: signed with the owner's live
    /// session token) and never requests a token, tickles, initialises, validates,
    /// reauthenticates or logs out. When a request is refused (or the adopted token
    /// expires) it emits [`Event::CredentialsWanted`] and the calls wait, up to
    /// [`IbkrConfig::request_deadline`], for a newer generation.
    /// [`IbkrIntent::Lead`] makes it the owner.
    ///
    /// ```
    /// use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrRole, IbkrSession};
    /// use broker_session::{Machine, Now, RngSeed, UsageError};
    /// use std::time::{Instant, SystemTime};
    ///
    /// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH);
    /// let mut session =
    ///     IbkrSession::follower(IbkrConfig::gateway(), RngSeed::from_u64(1), now).unwrap();
    /// assert_eq!(session.role(), IbkrRole::Follower);
    /// // Only the owner tickles.
    /// assert!(matches!(
    ///     session.submit(IbkrIntent::Tickle, now),
    ///     Err(UsageError::Unsupported { .. })
    /// ));
    /// ```
    ///
    /// # Errors
    /// As [`IbkrSession::new`].
    pub fn follower(
        config: impl Into<Arc<IbkrConfig>>,
        seed: RngSeed,
        now: Now,
    ) -> Result<Self, Error> {
        let mut session = Self::new(config, seed, now)?;
        session.role = IbkrRole::Follower;
        session.shared = true;
        Ok(session)
    }

    /// Whether the session acts by itself ([`IbkrRole::Owner`]) or follows another
    /// process ([`IbkrRole::Follower`]).
    pub fn role(&self) -> IbkrRole {
        self.role
    }

    /// What another process needs to act on this session ([`IbkrIntent::Adopt`]):
    /// OAuth, the live session token and its expiry (`None` without a token); a
    /// gateway's holds no secret and is always there. See
    /// [`IbkrSnapshot::expose_secrets`] to store it.
    pub fn snapshot(&self) -> Option<IbkrSnapshot> {
        let Some(signer) = &self.signer else {
            return Some(IbkrSnapshot {
                base_url: self.parts.base.url.clone(),
                consumer_key: None,
                lst: None,
                expires_at_epoch_ms: None,
            });
        };
        let lst = self.lst.as_ref()?;
        Some(IbkrSnapshot {
            base_url: self.parts.base.url.clone(),
            consumer_key: Some(signer.consumer_key().to_owned()),
            lst: Some(lst.token.clone()),
            expires_at_epoch_ms: lst.expires_epoch_ms,
        })
    }

    /// Whether the session holds something to act with: an adopted (or obtained) live
    /// session token, or a gateway generation adopted from the owner.
    pub fn holds_credentials(&self) -> bool {
        if self.signer.is_some() {
            self.lst.is_some()
        } else {
            self.adopted || self.role == IbkrRole::Owner
        }
    }

    /// Handles the intents of a shared session, and refuses in the follower role those
    /// only an owner may act on. `Ok(Err(intent))`: an owner's intent, for `submit`.
    pub(super) fn submit_shared(
        &mut self,
        intent: IbkrIntent,
        now: Now,
    ) -> Result<Result<OpId, IbkrIntent>, UsageError> {
        let follower = self.role == IbkrRole::Follower;
        let only_owner = |intent: &'static str| UsageError::Unsupported {
            intent,
            reason: "a follower uses the session its owner publishes; only the owner requests \
                     live session tokens, tickles, checks the status, initialises, \
                     reauthenticates, validates, recovers or logs out",
        };
        let id = match intent {
            IbkrIntent::Adopt {
                generation,
                snapshot,
            } => {
                if !follower {
                    return Err(UsageError::Unsupported {
                        intent: "adopt",
                        reason: "an owner obtains its own session: follow first",
                    });
                }
                self.check_snapshot(&snapshot)?;
                self.adopt(generation, snapshot, now)
            }
            IbkrIntent::Lead { generation_floor } => self.lead(generation_floor, now),
            IbkrIntent::Follow { generation } => self.follow(generation),
            IbkrIntent::Recover { refused } => {
                if follower {
                    return Err(only_owner("recover"));
                }
                self.recover_for_follower(refused)
            }
            IbkrIntent::Connect if follower => return Err(only_owner("connect")),
            IbkrIntent::CheckStatus if follower => return Err(only_owner("check_status")),
            IbkrIntent::InitBrokerage { .. } if follower => {
                return Err(only_owner("init_brokerage"));
            }
            IbkrIntent::Tickle if follower => return Err(only_owner("tickle")),
            IbkrIntent::Reauthenticate if follower => return Err(only_owner("reauthenticate")),
            IbkrIntent::Validate if follower => return Err(only_owner("validate")),
            IbkrIntent::RenewToken if follower => return Err(only_owner("renew token")),
            IbkrIntent::Logout if follower => return Err(only_owner("logout")),
            other => return Ok(Err(other)),
        };
        Ok(Ok(id))
    }

    /// A snapshot must belong to this session: same base URL, same way in, and for
    /// OAuth the same consumer key.
    fn check_snapshot(&self, snapshot: &IbkrSnapshot) -> Result<(), UsageError> {
        let invalid = |reason| UsageError::InvalidArgument {
            what: "snapshot",
            reason,
        };
        if snapshot.base_url.trim_end_matches('/') != self.parts.base.url.trim_end_matches('/') {
            return Err(invalid("saved for another base URL"));
        }
        match (&self.signer, &snapshot.lst) {
            (Some(signer), Some(_)) => {
                if snapshot.consumer_key.as_deref() != Some(signer.consumer_key()) {
                    return Err(invalid("saved for another consumer key"));
                }
                Ok(())
            }
            (None, None) => Ok(()),
            (Some(_), None) => Err(invalid("a gateway's snapshot, for an OAuth session")),
            (None, Some(_)) => Err(invalid("an OAuth snapshot, for a gateway session")),
        }
    }

    fn complete_now(&mut self, result: Result<IbkrOutcome, Error>) -> OpId {
        let op = self.ids.op();
        self.out
            .push_back(Output::Event(Event::Completed { op, result }));
        op
    }

    /// Installs `snapshot` as `generation` when it is newer than what the session
    /// holds (or the session holds nothing at that generation, after `Follow`).
    fn adopt(&mut self, generation: u64, snapshot: IbkrSnapshot, now: Now) -> OpId {
        let installed = generation > self.generation
            || (!self.holds_credentials() && generation == self.generation);
        if installed {
            self.lst = snapshot.lst.map(|token| Lst {
                token,
                expires_at: snapshot
                    .expires_at_epoch_ms
                    .map(|ms| now.instant_at_epoch_millis(ms)),
                expires_epoch_ms: snapshot.expires_at_epoch_ms,
            });
            // A follower never renews: the owner does.
            self.lst_refresh_at = None;
            self.reactive_generation = None;
            self.adopted = true;
            self.generation = generation;
            self.announced = generation;
            self.set_state(IbkrState::Ready);
            if let Some(a) = self.awaiting.take() {
                self.out.push_back(Output::Event(Event::Completed {
                    op: a.op,
                    result: Ok(IbkrOutcome::Recovered { generation }),
                }));
            }
        }
        self.complete_now(Ok(IbkrOutcome::Adopted {
            generation,
            installed,
        }))
    }

    /// Becomes the owner; takes over with a status check (no token request while the
    /// adopted token is valid, no `compete=true`).
    fn lead(&mut self, floor: u64, now: Now) -> OpId {
        self.role = IbkrRole::Owner;
        self.shared = true;
        let holding = self.holds_credentials();
        if floor > self.generation {
            // The fleet has used generations this session never saw: what it holds or
            // obtains from now on is numbered above them.
            self.generation = floor + u64::from(self.signer.is_some() && holding);
            self.announced = floor;
        }
        if let Some(a) = self.awaiting.take() {
            // The waiting calls authorize again: the session is now this one's own to
            // check or recover.
            self.out.push_back(Output::Event(Event::Completed {
                op: a.op,
                result: Ok(IbkrOutcome::Recovered {
                    generation: self.generation,
                }),
            }));
        }
        if self.signer.is_some() && !self.lst_valid(now) {
            // Nothing valid to take over: the caller connects (a new token).
            self.lst = None;
            self.set_state(IbkrState::Disconnected);
            return self.complete_now(Err(Error::Usage(UsageError::NotLoggedIn)));
        }
        if let Some(expires_at) = self.lst.as_ref().and_then(|l| l.expires_at) {
            // Renewed ahead of expiry, as after the session's own request.
            self.lst_refresh_at = Some(self.refresh_instant(expires_at, now));
        }
        self.logged_out = false;
        self.lst_hold = None;
        let mut op = self.new_op(Kind::Connect { force_lst: false }, false);
        // Failing over must never take the brokerage session over from the fleet.
        op.compete = false;
        let id = op.id;
        self.queue.push_back(op);
        id
    }

    /// Becomes a follower: nothing queued or running goes on, no timer is left, and
    /// the token is forgotten until the next adoption.
    fn follow(&mut self, generation: u64) -> OpId {
        self.stop_leading();
        self.lst = None;
        self.adopted = false;
        self.generation = generation;
        self.announced = generation;
        if !matches!(self.state, IbkrState::BackingOff { .. } | IbkrState::Closed) {
            self.set_state(IbkrState::Disconnected);
        }
        self.complete_now(Ok(IbkrOutcome::Following))
    }

    /// Bounds the owner's authority by time: from `until` on (the end of the lease
    /// that makes this process the owner, as the sharing layer measures it, erring
    /// early) the session steps down to [`IbkrRole::Follower`] by itself, before it
    /// would renew its token, tickle, initialise or recover. It keeps the live
    /// session token for application calls; a refusal then waits for a newer
    /// generation like any follower's. This covers a process paused past its lease
    /// whose overdue timers would otherwise fire, once it runs again, before its lease
    /// keeper notices the lease is gone (a token request that replaces the new owner's
    /// token). Renew it with each lease renewal; `None` (the default) sets no bound.
    ///
    /// ```
    /// use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrRole, IbkrSession};
    /// use broker_session::{Machine, Now, RngSeed};
    /// use std::time::{Duration, Instant, SystemTime};
    ///
    /// let start = Instant::now();
    /// let now = Now::new(start, SystemTime::UNIX_EPOCH);
    /// let mut session =
    ///     IbkrSession::follower(IbkrConfig::gateway(), RngSeed::from_u64(1), now).unwrap();
    /// session.set_lease_deadline(Some(start + Duration::from_secs(15)));
    /// let _ = session.submit(IbkrIntent::Lead { generation_floor: 0 }, now);
    /// assert_eq!(session.role(), IbkrRole::Owner);
    /// // Driven again after the lease's end: it follows.
    /// let later = Now::new(start + Duration::from_secs(16), SystemTime::UNIX_EPOCH);
    /// let _ = session.poll_output(later);
    /// assert_eq!(session.role(), IbkrRole::Follower);
    /// ```
    pub fn set_lease_deadline(&mut self, until: Option<Instant>) {
        self.lease_until = until;
    }

    /// Steps down by itself once the owner's lease has ended (see
    /// [`IbkrSession::set_lease_deadline`]). The token stays for application calls.
    pub(super) fn lapse_lead(&mut self, now: Now) {
        if self.role == IbkrRole::Owner && self.lease_until.is_some_and(|t| t <= now.mono) {
            self.stop_leading();
            self.adopted = true;
            self.announced = self.generation;
        }
    }

    /// Takes the follower role: nothing queued or running goes on and no timer is
    /// left. The token stays.
    fn stop_leading(&mut self) {
        self.role = IbkrRole::Follower;
        self.shared = true;
        self.lease_until = None;
        while let Some(op) = self.queue.pop_front() {
            self.complete(op, Err(Error::Cancelled));
        }
        if self.in_flight.is_some() {
            // Its answer completes it as cancelled (a late token rejection still
            // closes the session).
            if let Some(op) = self.current.as_mut() {
                op.cancelled = true;
            }
        } else if self.current.is_some() {
            self.finish(Err(Error::Cancelled));
        }
        self.lst_refresh_at = None;
        self.next_tickle = None;
        self.reactive_generation = None;
    }

    /// One recovery of `refused` for a follower, unless a newer generation exists or
    /// one is under way.
    fn recover_for_follower(&mut self, refused: u64) -> OpId {
        self.shared = true;
        if self.logged_out {
            return self.complete_now(Err(Error::Cancelled));
        }
        if refused < self.generation && self.holds_credentials() {
            let generation = self.generation;
            return self.complete_now(Ok(IbkrOutcome::Recovered { generation }));
        }
        if let Some(op) = self
            .current
            .iter()
            .chain(self.queue.iter())
            .find(|o| o.for_follower.is_some() || matches!(o.kind, Kind::Connect { .. }))
        {
            // A recovery (or a connect, which ends in a new generation) is under way.
            return op.id;
        }
        if let Some(hold) = &self.lst_hold {
            return self.complete_now(Err((**hold).clone()));
        }
        let oauth = self.signer.is_some();
        let mut op = self.new_op(Kind::Connect { force_lst: oauth }, false);
        // A recovery never takes the brokerage session over from the fleet.
        op.compete = false;
        op.for_follower = Some(refused);
        let id = op.id;
        self.queue.push_front(op);
        id
    }

    /// The wait of a follower's calls for a generation newer than `refused`: the one
    /// under way, or a new one (announced with [`Event::CredentialsWanted`]).
    pub(super) fn await_newer(&mut self, refused: u64, now: Now) -> OpId {
        if let Some(a) = &self.awaiting {
            return a.op;
        }
        let op = self.ids.op();
        self.awaiting = Some(Awaiting {
            op,
            refused,
            deadline: now.after(self.cfg.request_deadline),
        });
        self.out
            .push_back(Output::Event(Event::CredentialsWanted { refused }));
        op
    }

    /// Ends a wait for a newer generation whose deadline has passed.
    pub(super) fn expire_awaiting(&mut self, now: Now) {
        if let Some(a) = self.awaiting.take_if(|a| a.deadline <= now.mono) {
            self.out.push_back(Output::Event(Event::Completed {
                op: a.op,
                result: Err(Error::NoNewerCredentials { refused: a.refused }),
            }));
        }
    }

    /// A follower's answer to a refused application request (no session, no bridge):
    /// replay when a newer generation is held already, else wait for one.
    pub(super) fn observe_as_follower(&mut self, stamp: AuthStamp, now: Now) -> Observation {
        if let Some(e) = &self.closed {
            return Observation::Lost((**e).clone());
        }
        if stamp.generation < self.generation {
            return Observation::Replay;
        }
        Observation::Recover {
            op: self.await_newer(stamp.generation, now),
        }
    }

    /// The owner of a shared session reports each new generation once it is usable:
    /// OAuth, once a new live session token is held and no token request is under
    /// way; gateway, once a recovery (or the first connect) has ended. A session that
    /// was never shared reports nothing.
    pub(super) fn announce_credentials(&mut self) {
        if !self.shared
            || self.role != IbkrRole::Owner
            || self.generation <= self.announced
            || self.closed.is_some()
            || self.logged_out
        {
            return;
        }
        if self.signer.is_some() && (self.lst.is_none() || self.token_op_in_flight()) {
            return;
        }
        self.announced = self.generation;
        self.out.push_back(Output::Event(Event::CredentialsChanged {
            generation: self.generation,
        }));
    }

    /// Whether a live session token request is waiting for its answer.
    fn token_op_in_flight(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| f.step == ops::Step::Lst)
    }

    /// Gateway: a shared owner's connect (or recovery for a follower) that ended with
    /// a ready brokerage session starts a new generation, so followers refused with
    /// an older one replay. OAuth sessions number their tokens instead. The result of
    /// a recovery for a follower is [`IbkrOutcome::Recovered`].
    pub(super) fn shared_result(
        &mut self,
        op: &Op,
        result: Result<IbkrOutcome, Error>,
    ) -> Result<IbkrOutcome, Error> {
        if !self.shared || self.role != IbkrRole::Owner {
            return result;
        }
        let connected = matches!(result, Ok(IbkrOutcome::Connected(_)));
        if self.signer.is_none() && connected && matches!(op.kind, Kind::Connect { .. }) {
            let refused = op.for_follower.unwrap_or(self.generation);
            if self.generation <= refused {
                self.generation = refused + 1;
            }
        }
        match (op.for_follower, result) {
            (Some(_), Ok(IbkrOutcome::Connected(_))) => Ok(IbkrOutcome::Recovered {
                generation: self.generation,
            }),
            (_, result) => result,
        }
    }
}
