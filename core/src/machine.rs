//! The loop contract every broker machine implements.

use std::fmt;
use std::time::Instant;

use crate::error::{Error, UsageError};
// Re-exported here because the brokers' modules name them through `machine`.
pub(crate) use crate::failure::{FailureKind, TransportFailure};
use crate::time::Now;

/// The largest response body the core parses (1 MiB). Larger bodies are a
/// [`ProtocolError::BodyTooLarge`](crate::ProtocolError::BodyTooLarge), whatever the
/// transport's own limit.
pub const MAX_BODY: usize = 1 << 20;

/// Identifies one HTTP request the machine asked the transport to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req#{}", self.0)
    }
}

/// Identifies one operation: an intent the user submitted, or one the machine
/// started itself (a proactive refresh, a keep-alive tick, a recovery after a 401).
/// Every operation ends with exactly one [`Event::Completed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// A request for the transport to send.
///
/// `Debug` shows the method, URI, header names and body length; sensitive header
/// values and the body (which may hold a password) are never printed.
pub struct Transmit {
    /// Hand the response (or failure) back with this id.
    pub id: RequestId,
    /// The request, complete with all headers. The transport adds only what belongs to
    /// it (`User-Agent`, `Host`, `Content-Length`).
    pub request: http::Request<Vec<u8>>,
    /// When the machine stops waiting for this request's answer. After it the machine
    /// treats the request as possibly delivered (never resending a login on that
    /// ground). A transport ends the exchange before this instant (its own per-exchange
    /// timeout is capped by it), so that an answer is never left arriving after the
    /// machine gave up on it.
    pub deadline: Instant,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("id", &self.id)
            .field("method", self.request.method())
            .field("uri", self.request.uri())
            .field("headers", &HeaderNames(self.request.headers()))
            .field("body_len", &self.request.body().len())
            .field("deadline", &self.deadline)
            .finish()
    }
}

struct HeaderNames<'a>(&'a http::HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values of non-sensitive headers are shown; sensitive ones only by name.
        let mut m = f.debug_map();
        for (k, v) in self.0 {
            if v.is_sensitive() {
                m.entry(k, &"***");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// Input to [`Machine::handle_input`].
#[non_exhaustive]
pub enum Input {
    /// The response to a [`Transmit`].
    Response {
        /// The transmit's id.
        id: RequestId,
        /// The response, body fully read.
        response: http::Response<Vec<u8>>,
    },
    /// The transport failed to get a response for a [`Transmit`].
    Failed {
        /// The transmit's id.
        id: RequestId,
        /// What went wrong.
        failure: TransportFailure,
    },
    /// The deadline of the last [`Output::Wait`] has passed.
    Timeout,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Response bodies carry tokens: print only status and length.
        match self {
            Self::Response { id, response } => f
                .debug_struct("Response")
                .field("id", id)
                .field("status", &response.status())
                .field("body_len", &response.body().len())
                .finish(),
            Self::Failed { id, failure } => f
                .debug_struct("Failed")
                .field("id", id)
                .field("failure", failure)
                .finish(),
            Self::Timeout => f.write_str("Timeout"),
        }
    }
}

/// What the machine wants next; returned by [`Machine::poll_output`].
#[derive(Debug)]
#[non_exhaustive]
// `Send` is the common case and is moved out at once; boxing it would cost one
// allocation per request to shrink a value that never lives in a collection of many.
#[allow(clippy::large_enum_variant)]
pub enum Output<S, O> {
    /// Send this request and hand its response to [`Machine::handle_input`].
    Send(Transmit),
    /// Something happened: report it to the application.
    Event(Event<S, O>),
    /// Nothing to do until this instant (always after the `now` passed to
    /// `poll_output`), or until new input if `None`. Call
    /// `handle_input(Input::Timeout, now)` when it has passed.
    Wait(Option<Instant>),
}

/// Something that happened in a session.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event<S, O> {
    /// The session's state changed to this one.
    StateChanged(S),
    /// An operation ended, with its typed result. Emitted exactly once per [`OpId`],
    /// including operations the machine started itself.
    Completed {
        /// The operation.
        op: OpId,
        /// What it produced, or why it failed.
        result: Result<O, Error>,
    },
    /// The session can no longer authorize requests and will not recover by itself;
    /// `reason` says what to do.
    SessionLost {
        /// Why.
        reason: Error,
    },
    /// The session obtained new credentials by itself (a login, a refresh, a
    /// re-login, an account switch, a resume; IBKR: a live session token, or a
    /// recovered gateway session) and they are ready to use. A layer that
    /// shares one session between processes publishes the session's snapshot under
    /// this generation. Only the owner of credentials shared with other processes
    /// emits it (a session built as a follower that took the lead); credentials
    /// adopted from another process are not reported again, and a session that shares
    /// nothing never emits it.
    CredentialsChanged {
        /// The new credential generation (see [`AuthStamp`]).
        generation: u64,
    },
    /// A session that follows another process's credentials saw those of
    /// `refused` refused (or expired): it needs a newer generation, and calls wait for
    /// one. A sharing layer asks the owner for one recovery of `refused`; every
    /// process asking about the same generation gets the same one.
    CredentialsWanted {
        /// The generation that was refused.
        refused: u64,
    },
}

/// Proof of which credentials [`Machine::authorize`] stamped onto a request. Hand it
/// back to [`Machine::observe`] with the response, so a 401 on credentials that have
/// since been replaced is replayed instead of starting a second recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "hand the stamp back to `observe` with the response"]
pub struct AuthStamp {
    /// The credential generation used. Increments whenever the machine obtains new
    /// credentials (login, refresh, switch, re-login).
    pub generation: u64,
}

/// Why [`Machine::authorize`] could not stamp a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizeError {
    /// No session: log in first.
    NotLoggedIn,
    /// Credentials are being obtained (login, refresh, re-login) by this operation:
    /// drive the machine until it completes, then authorize again.
    Pending {
        /// The operation to wait for.
        op: OpId,
    },
    /// The broker asked to slow down: do not send before this instant.
    BackingOff {
        /// The earliest time to try again.
        until: Instant,
    },
    /// The session is lost; the error says why and what to do.
    Lost(Error),
    /// The request cannot carry credentials (e.g. its URI is not under the session's
    /// base URL, which would leak credentials to another host).
    Refused(UsageError),
}

impl fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoggedIn => f.write_str("not logged in: log in first"),
            Self::Pending { op } => write!(f, "credentials pending: wait for {op}"),
            Self::BackingOff { .. } => f.write_str("backing off after the broker throttled"),
            Self::Lost(e) => write!(f, "session lost: {e}"),
            Self::Refused(e) => write!(f, "request refused: {e}"),
        }
    }
}

impl std::error::Error for AuthorizeError {}

/// What the machine learned from an application response; returned by
/// [`Machine::observe`]. The transport acts on it; the machine has already updated
/// its own state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a replay, a recovery or a lost session needs the transport to act"]
pub enum Observation {
    /// Nothing for the session to do: hand the response to the application.
    Accepted,
    /// The request carried credentials that have been replaced since: authorize it
    /// again and resend it once.
    Replay,
    /// The credentials were refused; the machine is recovering them (refresh or
    /// re-login) with this operation, or already was. Drive the machine until `op`
    /// completes; if it succeeded, authorize the request again and resend it once.
    Recover {
        /// The recovery operation.
        op: OpId,
    },
    /// The broker throttled: do not send before `until`. The response goes to the
    /// application.
    BackOff {
        /// The earliest time to send again.
        until: Instant,
    },
    /// The session is lost and will not recover by itself.
    Lost(Error),
}

/// Seed for the machine's random number generator (OAuth nonces, Diffie-Hellman
/// secrets, RSA padding and blinding).
///
/// Transports fill it from the operating system; tests pass a fixed seed so every
/// request byte is reproducible. Its `Debug` is redacted: the seed determines secret
/// values.
#[derive(Clone, PartialEq, Eq)]
pub struct RngSeed(pub [u8; 32]);

impl RngSeed {
    /// A seed built from a number; for tests and simulations only.
    pub fn from_u64(n: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&n.to_le_bytes());
        Self(s)
    }
}

impl fmt::Debug for RngSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RngSeed(***)")
    }
}

impl Drop for RngSeed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The loop contract shared by every broker session machine, so each transport is
/// written once.
///
/// The rule (as in str0m and quinn-proto): after every mutating call, call
/// [`poll_output`](Machine::poll_output) until it returns [`Output::Wait`]. Send every
/// [`Output::Send`] and hand the result to [`handle_input`](Machine::handle_input);
/// when the wait deadline passes, call `handle_input(Input::Timeout, now)`.
///
/// At most one session-management request is in flight at a time; intents submitted
/// meanwhile queue. Application requests do not go through the queue: stamp them with
/// [`authorize`](Machine::authorize) and report their responses to
/// [`observe`](Machine::observe).
pub trait Machine {
    /// What the user can ask for (log in, refresh, switch account, tickle, log out …).
    type Intent;
    /// The session's externally visible state.
    type State: Clone + fmt::Debug;
    /// The typed result of a completed operation.
    type Outcome: fmt::Debug;

    /// Queues an intent. Returns its operation id, whose [`Event::Completed`] will
    /// carry the result, or a usage error if the intent makes no sense now.
    fn submit(&mut self, intent: Self::Intent, now: Now) -> Result<OpId, UsageError>;

    /// Feeds a response, a transport failure or a timer tick.
    fn handle_input(&mut self, input: Input, now: Now);

    /// The next thing to do. Timers already due at `now` are run first, so
    /// `Wait(Some(t))` always has `t > now.mono`.
    #[must_use = "every output must be acted on: send, report or wait"]
    fn poll_output(&mut self, now: Now) -> Output<Self::State, Self::Outcome>;

    /// Stamps the session's credentials onto an application request (headers only;
    /// the body is not read or changed).
    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        now: Now,
    ) -> Result<AuthStamp, AuthorizeError>;

    /// Learns from the response to an application request stamped with `stamp`: a 401
    /// starts (or joins) a recovery, a throttling answer starts a back-off.
    fn observe<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
        stamp: AuthStamp,
        now: Now,
    ) -> Observation;

    /// The current state.
    fn state(&self) -> Self::State;

    /// The base URL of the broker's API this session talks to (no trailing slash),
    /// if the machine knows it. A client sends application requests with a relative
    /// path (`/accounts`) under it. The default says nothing.
    fn base_url(&self) -> Option<&str> {
        None
    }
}

/// Reports an output through `tracing` when the `tracing` feature is on: requests by
/// method and path only (never headers or bodies), events by their `Debug`, which
/// redacts every secret.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn trace_output<S: fmt::Debug, O: fmt::Debug>(broker: &'static str, out: &Output<S, O>) {
    #[cfg(feature = "tracing")]
    match out {
        Output::Send(t) => tracing::debug!(
            broker,
            request = t.id.0,
            method = %t.request.method(),
            path = t.request.uri().path(),
            "session request"
        ),
        Output::Event(Event::StateChanged(state)) => {
            tracing::info!(broker, state = ?state, "session state changed");
        }
        Output::Event(Event::Completed {
            op,
            result: Ok(outcome),
        }) => tracing::debug!(broker, op = op.0, outcome = ?outcome, "operation completed"),
        Output::Event(Event::Completed { op, result: Err(e) }) => {
            tracing::warn!(broker, op = op.0, error = %e, "operation failed");
        }
        Output::Event(Event::SessionLost { reason }) => {
            tracing::warn!(broker, reason = %reason, "session lost");
        }
        Output::Event(Event::CredentialsChanged { generation }) => {
            tracing::info!(broker, generation, "credentials changed");
        }
        Output::Event(Event::CredentialsWanted { refused }) => {
            tracing::info!(broker, refused, "newer credentials wanted");
        }
        Output::Wait(_) => {}
    }
}

/// `Display` of an event: one line for a person, built from the state's and the
/// outcome's own `Display` (which never show a secret).
///
/// ```
/// use broker_session::ig::{IgOutcome, IgState};
/// use broker_session::{Event, OpId};
///
/// let e: Event<IgState, IgOutcome> = Event::Completed {
///     op: OpId(7),
///     result: Ok(IgOutcome::LoggedOut { server_confirmed: true }),
/// };
/// assert_eq!(e.to_string(), "op#7 done: logged out");
/// let s: Event<IgState, IgOutcome> = Event::StateChanged(IgState::LoggingIn);
/// assert_eq!(s.to_string(), "state: logging in");
/// ```
impl<S: fmt::Display, O: fmt::Display> fmt::Display for Event<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StateChanged(state) => write!(f, "state: {state}"),
            Self::Completed {
                op,
                result: Ok(outcome),
            } => write!(f, "{op} done: {outcome}"),
            Self::Completed { op, result: Err(e) } => write!(f, "{op} failed: {e}"),
            Self::SessionLost { reason } => write!(f, "session lost: {reason}"),
            Self::CredentialsChanged { generation } => {
                write!(f, "credentials changed: generation {generation}")
            }
            Self::CredentialsWanted { refused } => {
                write!(
                    f,
                    "credentials of generation {refused} refused: newer ones wanted"
                )
            }
        }
    }
}

/// A broker's free text (a status message, an account name) for a one-line `Display`:
/// control characters dropped, cut to `max` characters with `…`.
pub(crate) struct Clipped<'a>(pub(crate) &'a str, pub(crate) usize);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.trim().chars().filter(|c| !c.is_control());
        for c in chars.by_ref().take(self.1) {
            fmt::Write::write_char(f, c)?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}
