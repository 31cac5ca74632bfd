//! Interactive Brokers sessions: the Client Portal Gateway and OAuth 1.0a, one machine.
//!
//! Two ways in, one shared life:
//!
//! - **Client Portal Gateway** ([`IbkrConfig::gateway`]): the local gateway holds the
//!   session after the user logs in with a browser; requests carry no credentials.
//!   "No session" (401, a redirect to `/sso/Login`, `{"error":"no session"}`) becomes
//!   [`IbkrState::BrowserLoginRequired`] and
//!   [`ActionRequired::BrowserLogin`](crate::ActionRequired::BrowserLogin); the machine
//!   never retries it in a loop, since only a person can log in.
//! - **OAuth 1.0a** ([`IbkrConfig::oauth`]): the machine obtains a live session token
//!   (`POST /oauth/live_session_token`, Diffie-Hellman, RSA-SHA256, HMAC-SHA1), renews
//!   it before `live_session_token_expiration` and after a 401, and signs every request
//!   (its own, and yours through [`Machine::authorize`](crate::Machine::authorize))
//!   with HMAC-SHA256.
//!
//! Then both: `/iserver/auth/status` judged ([`SessionClass`]),
//! `ssodh/init` with bounded attempts and status polling until ready, a keep-alive
//! `/tickle` on a timer, `reauthenticate`, `/sso/validate`, `/logout`, and pacing:
//! tickles at least [`IbkrConfig::tickle_min_interval`] apart (default 1 s) and
//! validates at least [`IbkrConfig::validate_min_interval`] apart (default 60 s),
//! IBKR's limits; a call asked for sooner waits for its slot, and its answer says
//! so ([`Pacing`]). A 429 starts a back-off.
//!
//! What goes wrong, and how it is reported:
//!
//! | situation | result |
//! |---|---|
//! | gateway: no session (401, 302 to `/sso/Login`, `{"error":"no session"}`) | [`Error::ActionRequired`](crate::Error::ActionRequired)`(BrowserLogin)`, state [`IbkrState::BrowserLoginRequired`], not retried |
//! | OAuth: 401 on `/oauth/live_session_token` (also after the machine stopped waiting) | [`Error::CredentialsRejected`](crate::Error::CredentialsRejected), state [`IbkrState::Closed`], never retried |
//! | OAuth: token request timed out or broken after it may have been sent | that operation fails; no token is asked for again until the user's Connect or RenewToken |
//! | OAuth: `live_session_token_expiration` not ahead by the refresh margin plus a minute (zero, past, epoch seconds) | [`ProtocolError::InvalidField`](crate::ProtocolError::InvalidField) naming the field; one token request per operation, ever |
//! | OAuth: derived token does not match `live_session_token_signature` | [`CryptoError::LiveSessionTokenMismatch`](crate::CryptoError::LiveSessionTokenMismatch), state `Closed` |
//! | OAuth: 401 on a signed request | one new live session token, then the request again; a second 401 is [`Error::Unauthorized`](crate::Error::Unauthorized) |
//! | 429 | [`Error::Throttled`](crate::Error::Throttled), state [`IbkrState::BackingOff`] for [`IbkrConfig::throttle_backoff`] |
//! | `ssodh/init` failing | retried [`IbkrConfig::init_attempts`] times with back-off, then [`Error::Unavailable`](crate::Error::Unavailable) |
//! | a failed keep-alive tickle | that tickle's operation fails; the keep-alive goes on |
//!
//! One login shared by several processes, as for IG: one session owns it (asks for the
//! live session token, tickles, initialises, recovers) and reports each new generation
//! ([`Event::CredentialsChanged`](crate::Event)); the others are built with
//! [`IbkrSession::follower`], install each generation with [`IbkrIntent::Adopt`]
//! (OAuth: the owner's token, [`IbkrSnapshot`]), and when a request is refused ask for
//! a newer one ([`Event::CredentialsWanted`](crate::Event)) instead of recovering by
//! themselves. [`IbkrIntent::Lead`] (a status check with the adopted token, never
//! `compete=true`) and [`IbkrIntent::Follow`] move the ownership;
//! [`IbkrIntent::Recover`] is the owner's side of a follower's request. The sharing
//! itself is `broker-session-redis`'s.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession};
//! use broker_session::{Machine, Now, Output, RngSeed};
//!
//! let now = Now::new(Instant::now(), SystemTime::now());
//! let mut session = IbkrSession::new(IbkrConfig::gateway(), RngSeed::from_u64(1), now).unwrap();
//! let op = session.submit(IbkrIntent::Connect, now).unwrap();
//! // The first request probes the gateway's status (after a state-change event).
//! let transmit = loop {
//!     match session.poll_output(now) {
//!         Output::Send(t) => break t,
//!         Output::Event(_) => continue,
//!         other => panic!("{other:?}"),
//!     }
//! };
//! assert_eq!(transmit.request.uri(), "https://localhost:5000/v1/api/iserver/auth/status");
//! # let _ = op;
//! ```

mod config;
mod decode;
mod display;
mod encode;
mod endpoint;
mod env;
mod machine;
pub mod oauth;
mod policy;
mod readiness;
mod snapshot;

use std::time::Instant;

pub use config::{
    GATEWAY_BASE_URL, IbkrAuth, IbkrConfig, OAUTH_BASE_URL, OAuthConfig, QuerySigning,
    ReauthenticateMethod,
};
pub use decode::{AuthStatus, Pacing, TickleDetails, TickleInfo, ValidateInfo};
pub use endpoint::Endpoint;
pub use machine::IbkrSession;
pub use policy::{SessionClass, is_no_bridge, is_no_session, is_sso_redirect, session_class};
pub use snapshot::{IbkrSnapshot, PersistedIbkrSession};

/// Pure request builders for IBKR's session endpoints (for tests, fuzzing and custom
/// drivers; the machine uses them itself).
pub mod requests {
    pub use super::encode::ssodh_init_body;
}

/// Pure response parsers for IBKR's session endpoints (for tests and fuzzing).
pub mod responses {
    pub use super::decode::{
        AuthStatus, LstResponse, Pacing, ServerInfo, TickleDetails, TickleInfo, TickleResponse,
        ValidateInfo, auth_status, error_text, live_session_token, logout, reauthenticate,
        ssodh_init, tickle, validate,
    };
}

/// What the user can ask an [`IbkrSession`] to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IbkrIntent {
    /// Establish a ready brokerage session: (OAuth) obtain a live session token, probe
    /// the status, `ssodh/init` when needed (per [`IbkrConfig::auto_init`] and
    /// [`IbkrConfig::compete`]), poll until ready. Starts the keep-alive.
    Connect,
    /// `POST /iserver/auth/status`, classified.
    CheckStatus,
    /// `POST /iserver/auth/ssodh/init`, then poll the status until ready.
    InitBrokerage {
        /// Take over a brokerage session held elsewhere; `None` uses the config.
        compete: Option<bool>,
    },
    /// `POST /tickle` now (the keep-alive tickles by itself). Paced: sent no sooner
    /// than [`IbkrConfig::tickle_min_interval`] (default 1 s) after the session's
    /// previous tickle; [`TickleInfo::pacing`] says whether it waited.
    Tickle,
    /// `/iserver/reauthenticate` (deprecated by IBKR, asynchronous), then poll the
    /// status until ready.
    Reauthenticate,
    /// `GET /sso/validate` (gateway only). Paced: sent no sooner than
    /// [`IbkrConfig::validate_min_interval`] (default 60 s, IBKR's limit) after the
    /// session's previous validate, so a second validate within the minute waits for
    /// the rest of it; [`ValidateInfo::pacing`] says whether and how long it waited.
    Validate,
    /// OAuth only: obtain a new live session token now, then make sure the brokerage
    /// session is ready.
    RenewToken,
    /// `POST /logout`; stops the keep-alive and forgets the live session token.
    ///
    /// Final: every operation submitted before it and not finished completes with
    /// [`Error::Cancelled`](crate::Error::Cancelled), no timer (keep-alive, token
    /// renewal) starts anything, a 401 on an application call starts no recovery, and
    /// nothing but the logout is sent until the user submits [`Connect`](Self::Connect)
    /// (or [`RenewToken`](Self::RenewToken)); other intents until then fail with
    /// [`UsageError::NotLoggedIn`](crate::UsageError::NotLoggedIn).
    Logout,

    /// Follower role only: use what another process (the owner) published as
    /// `generation` (OAuth: its live session token). Installed only when `generation`
    /// is newer than the session's own; nothing is sent. Calls waiting for a newer
    /// generation go on with it. Completes at once with [`IbkrOutcome::Adopted`].
    Adopt {
        /// The generation the owner published the snapshot under.
        generation: u64,
        /// The owner's snapshot.
        snapshot: IbkrSnapshot,
    },
    /// Become the owner ([`IbkrRole::Owner`]): from now on the session tickles, renews
    /// its live session token and recovers by itself. It takes over with a status
    /// check signed with the adopted live session token while that token is valid (no
    /// new token request), initialising the brokerage session if needed with
    /// `compete=false`, never taking it over; the token is renewed ahead of its expiry
    /// as after the session's own request. Completes with [`IbkrOutcome::Connected`]
    /// or [`IbkrOutcome::Status`]; an OAuth session without a valid adopted token
    /// completes with [`UsageError::NotLoggedIn`](crate::UsageError::NotLoggedIn):
    /// connect.
    Lead {
        /// The highest generation the fleet has used. What this session obtains from
        /// now on gets generations above it.
        generation_floor: u64,
    },
    /// Become a follower ([`IbkrRole::Follower`]), e.g. after losing the ownership:
    /// every queued operation completes as [`Error::Cancelled`](crate::Error::Cancelled),
    /// the running one once its request (if any) is answered, no timer is left (no
    /// tickle, no renewal), and the live session token is forgotten until the next
    /// [`IbkrIntent::Adopt`]. Completes at once with [`IbkrOutcome::Following`].
    Follow {
        /// The generation the fleet holds now: only newer ones are adopted.
        generation: u64,
    },
    /// Owner role only: another process (a follower) had a request refused (no
    /// session, no bridge) with generation `refused`. Recovers once: OAuth, a new live
    /// session token (then the status); gateway, a status check and `ssodh/init` with
    /// `compete=false` if needed. Nothing is done when a newer generation exists
    /// already, and a recovery under way is joined (its operation id is returned).
    /// Completes with [`IbkrOutcome::Recovered`].
    Recover {
        /// The generation the follower saw refused.
        refused: u64,
    },
}

/// Who acts on an IBKR session.
///
/// One login shared by several processes has one owner, which obtains the live
/// session token, tickles, initialises and recovers the brokerage session and logs
/// out, and any number of followers, which send application requests (OAuth: signed
/// with the token the owner publishes) and, when those are refused, wait for a newer
/// generation instead of recovering by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IbkrRole {
    /// The session acts by itself (every session built with [`IbkrSession::new`]).
    Owner,
    /// The session uses what [`IbkrIntent::Adopt`] gives it; it never requests a live
    /// session token, tickles, initialises, validates, reauthenticates or logs out.
    Follower,
}

/// The externally visible state of an [`IbkrSession`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IbkrState {
    /// Nothing established yet, or logged out.
    Disconnected,
    /// Probing and initialising the brokerage session.
    Connecting,
    /// OAuth: obtaining a live session token.
    AcquiringToken,
    /// Gateway: nobody is logged in. Log in through the gateway's page in a browser,
    /// then submit [`IbkrIntent::Connect`].
    BrowserLoginRequired,
    /// A session exists but is not connected to the IBKR backend.
    NotConnected,
    /// Connected, brokerage session not authenticated (the machine re-initialises it
    /// when [`IbkrConfig::auto_init`] is set).
    NotAuthenticated,
    /// Another brokerage session for this username is active elsewhere.
    Competing,
    /// Authenticated, connected, not competing: `/iserver` calls work.
    Ready,
    /// IBKR answered 429: nothing is sent before `until`.
    BackingOff {
        /// When sending resumes.
        until: Instant,
    },
    /// Credentials rejected or keys that do not match: nothing more is sent. Build a
    /// new session with a corrected configuration.
    Closed,
}

/// The typed result of a completed IBKR operation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum IbkrOutcome {
    /// The brokerage session is ready (Connect, InitBrokerage, Reauthenticate,
    /// RenewToken and the machine's own recoveries).
    Connected(AuthStatus),
    /// The status as it is (CheckStatus; or Connect when policy stopped it short of
    /// ready: [`IbkrConfig::auto_init`] off, or competing with
    /// [`IbkrConfig::compete`] off).
    Status(AuthStatus),
    /// A tickle's answer.
    Tickled(TickleInfo),
    /// `/sso/validate`'s answer.
    Validated(ValidateInfo),
    /// Logged out; `status` is IBKR's `status` (or old `confirmed`) field.
    LoggedOut {
        /// What IBKR said, if anything.
        status: Option<bool>,
    },
    /// A recovery for a follower ([`IbkrIntent::Recover`]) succeeded, or a follower's
    /// wait for a newer generation ended with one: requests stamped with older
    /// generations can be replayed.
    Recovered {
        /// The new generation.
        generation: u64,
    },
    /// [`IbkrIntent::Adopt`] completed.
    Adopted {
        /// The generation offered.
        generation: u64,
        /// Whether it was installed (`false`: the session already had that generation
        /// or a newer one).
        installed: bool,
    },
    /// [`IbkrIntent::Follow`] completed: the session is a follower.
    Following,
}
