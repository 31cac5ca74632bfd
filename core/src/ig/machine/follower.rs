//! One login shared by several processes: the follower role, adopting another
//! process's credentials, taking the ownership over and giving it up, recovering for
//! a follower, and announcing new credentials to share.
//!
//! A follower never obtains credentials: a refusal (or an expired v3 access token)
//! turns into one wait for a newer generation ([`Awaiting`]), shared by every call that
//! hit it, and ended by [`IgIntent::Adopt`] or the request deadline. Nothing here sends
//! a request; taking over validates the adopted credentials with the `Resume` plan.

use super::*;

/// Calls of a follower waiting for credentials newer than `refused`.
pub(super) struct Awaiting {
    /// The operation the calls wait for; it completes with the next adopted
    /// credentials, or with [`Error::NoNewerCredentials`] at `deadline`.
    pub(super) op: OpId,
    pub(super) refused: u64,
    pub(super) deadline: Instant,
}

impl IgSession {
    /// Handles the intents of a shared session, and refuses in the follower role those
    /// only an owner may act on. `Ok(Err(intent))`: an owner's intent, for `submit`.
    pub(super) fn submit_shared(
        &mut self,
        intent: IgIntent,
        now: Now,
    ) -> Result<Result<OpId, IgIntent>, UsageError> {
        let follower = self.role == IgRole::Follower;
        let only_owner = |intent: &'static str| UsageError::Unsupported {
            intent,
            reason: "a follower uses the credentials its owner publishes; only the owner logs in, \
                     refreshes, switches accounts, recovers or logs out",
        };
        let id = match intent {
            IgIntent::Adopt {
                generation,
                snapshot,
            } => {
                if !follower {
                    return Err(UsageError::Unsupported {
                        intent: "adopt",
                        reason: "an owner obtains its own credentials: follow first",
                    });
                }
                self.check_snapshot(&snapshot)?;
                self.adopt(generation, snapshot, now)
            }
            IgIntent::Lead { generation_floor } => self.lead(generation_floor, now),
            IgIntent::Follow { generation } => self.follow(generation),
            IgIntent::Recover { refused } => {
                if follower {
                    return Err(only_owner("recover"));
                }
                self.recover_for_follower(refused)
            }
            IgIntent::Login if follower => return Err(only_owner("login")),
            IgIntent::Refresh if follower => return Err(only_owner("refresh")),
            IgIntent::ReadSession { .. } if follower => return Err(only_owner("read_session")),
            IgIntent::SwitchAccount { .. } if follower => {
                return Err(only_owner("switch_account"));
            }
            IgIntent::Logout if follower => return Err(only_owner("logout")),
            IgIntent::Resume(_) if follower => return Err(only_owner("resume")),
            other => return Ok(Err(other)),
        };
        Ok(Ok(id))
    }

    /// A snapshot must belong to this session's base URL.
    pub(super) fn check_snapshot(&self, snapshot: &SessionSnapshot) -> Result<(), UsageError> {
        if snapshot.base_url.trim_end_matches('/') == self.base_str() {
            Ok(())
        } else {
            Err(UsageError::InvalidArgument {
                what: "snapshot",
                reason: "saved for another base URL",
            })
        }
    }

    fn complete_now(&mut self, result: Result<IgOutcome, Error>) -> OpId {
        let op = self.ids.op();
        self.emit(Event::Completed { op, result });
        op
    }

    /// Installs `snapshot` as `generation` when it is newer than what the session
    /// holds (or the session holds nothing at that generation, after `Follow`).
    fn adopt(&mut self, generation: u64, snapshot: SessionSnapshot, now: Now) -> OpId {
        let installed = generation > self.generation
            || (self.tokens.is_none() && generation == self.generation);
        if installed {
            self.streaming = None;
            self.install_snapshot(snapshot, now);
            // A follower never refreshes: the owner does.
            self.refresh_at = None;
            self.recovered_gen = None;
            self.generation = generation;
            self.announced = generation;
            if let Some(a) = self.awaiting.take() {
                self.emit(Event::Completed {
                    op: a.op,
                    result: Ok(IgOutcome::Recovered { generation }),
                });
            }
        }
        self.complete_now(Ok(IgOutcome::Adopted {
            generation,
            installed,
        }))
    }

    /// Becomes the owner; validates the credentials held, if any.
    fn lead(&mut self, floor: u64, now: Now) -> OpId {
        self.role = IgRole::Owner;
        self.shared = true;
        if let Some(Tokens::OAuth { expires_at, .. }) = &self.tokens {
            // The owner refreshes ahead of expiry, as after its own login.
            let left = expires_at.saturating_duration_since(now.mono);
            if !left.is_zero() {
                let margin = self.cfg.refresh_margin.min(left / 2);
                self.refresh_at = Some(expires_at.checked_sub(margin).unwrap_or(now.mono));
            }
        }
        if floor > self.generation {
            // The fleet has used generations this session never saw: what it holds or
            // obtains from now on is numbered above them.
            self.generation = floor + u64::from(self.tokens.is_some());
        }
        if let Some(a) = self.awaiting.take() {
            // The waiting calls authorize again: the credentials are now this
            // session's own to validate or recover.
            self.emit(Event::Completed {
                op: a.op,
                result: Ok(IgOutcome::Recovered {
                    generation: self.generation,
                }),
            });
        }
        if self.tokens.is_none() {
            return self.complete_now(Err(Error::Usage(UsageError::NotLoggedIn)));
        }
        let op = self.new_op(Kind::Resume);
        let id = op.id;
        self.queue.push_back(op);
        id
    }

    /// Becomes a follower: nothing queued or running goes on, no timer is left, and
    /// the credentials are forgotten until the next adoption.
    fn follow(&mut self, generation: u64) -> OpId {
        self.stop_leading();
        self.forget_tokens();
        self.lost = None;
        self.generation = generation;
        self.announced = generation;
        self.complete_now(Ok(IgOutcome::Following))
    }

    /// Takes the follower role: nothing queued or running goes on and no timer is
    /// left. The credentials stay.
    fn stop_leading(&mut self) {
        self.role = IgRole::Follower;
        self.shared = true;
        self.lease_until = None;
        self.refresh_at = None;
        self.recovered_gen = None;
        if let Some(f) = self.in_flight.take()
            && f.call.endpoint().sends_password()
        {
            // Its answer is no longer applied, but a late rejection still counts.
            self.abandon_login(f.id);
        }
        self.plan.clear();
        for op in std::mem::take(&mut self.queue)
            .into_iter()
            .chain(self.current.take())
        {
            self.emit(Event::Completed {
                op: op.id,
                result: Err(Error::Cancelled),
            });
        }
    }

    /// Steps down by itself once the owner's lease has ended (see
    /// [`IgSession::set_lease_deadline`]): a process that was paused past its lease
    /// must not refresh, recover or log in when it runs again, since another process
    /// may own the session by then. The credentials stay for application calls; a
    /// refusal turns into a wait for a newer generation, as for any follower.
    pub(super) fn lapse_lead(&mut self, now: Now) {
        if self.role == IgRole::Owner && self.lease_until.is_some_and(|t| t <= now.mono) {
            self.stop_leading();
            self.announced = self.generation;
        }
    }

    /// One recovery of `refused` for a follower, unless newer credentials exist or
    /// one is under way.
    fn recover_for_follower(&mut self, refused: u64) -> OpId {
        self.shared = true;
        if self.logout_pending() {
            return self.complete_now(Err(Error::Cancelled));
        }
        if refused < self.generation && self.tokens.is_some() {
            let generation = self.generation;
            return self.complete_now(Ok(IgOutcome::Recovered { generation }));
        }
        if let Some(op) = self.recovery_op().or_else(|| self.credential_op()) {
            return op;
        }
        if self.tokens.is_none() {
            return self.complete_now(Err(Error::Usage(UsageError::NotLoggedIn)));
        }
        let id = self.enqueue_front(Kind::Recover);
        if let Some(op) = self.queue.front_mut() {
            op.for_follower = true;
        }
        id
    }

    /// The wait of a follower's calls for credentials newer than `refused`: the one
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
        self.emit(Event::CredentialsWanted { refused });
        op
    }

    /// Ends a wait for newer credentials whose deadline has passed.
    pub(super) fn expire_awaiting(&mut self, now: Now) {
        if let Some(a) = self.awaiting.take_if(|a| a.deadline <= now.mono) {
            self.emit(Event::Completed {
                op: a.op,
                result: Err(Error::NoNewerCredentials { refused: a.refused }),
            });
        }
    }

    /// The owner of shared credentials reports each new generation once it is ready
    /// to use (not halfway through a login that still selects an account or fetches
    /// streaming tokens). A session that was never shared reports nothing.
    pub(super) fn announce_credentials(&mut self) {
        if !self.shared
            || self.role != IgRole::Owner
            || self.tokens.is_none()
            || self.generation <= self.announced
        {
            return;
        }
        if self.current.as_ref().is_some_and(|o| {
            matches!(
                o.kind,
                Kind::Login | Kind::Resume | Kind::Recover | Kind::Refresh
            )
        }) {
            return;
        }
        self.announced = self.generation;
        self.emit(Event::CredentialsChanged {
            generation: self.generation,
        });
    }
}
