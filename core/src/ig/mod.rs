//! IG Markets REST sessions.
//!
//! [`IgSession`] is a sans-IO [`Machine`](crate::Machine) that logs in (v1, v2, v3,
//! encrypted-password v2, or the unofficial web-platform login), keeps a v3 session's
//! access token fresh, reads the session, switches accounts, logs out, resumes from a
//! [`SessionSnapshot`], and stamps credentials on your own requests.
//!
//! What it does about IG's answers (the exact `errorCode`, never a substring):
//!
//! - bad credentials (`error.security.invalid-details`), key and account problems and
//!   required user action close the session: nothing is retried, so repeated failures
//!   cannot lock the account;
//! - a refused CST/XST (`client-token-invalid`, `account-token-invalid`, a 401 without
//!   a code) starts one re-login; a refused v3 access token (`oauth-token-invalid`)
//!   one refresh, which falls back to one login; credentials that fail again right
//!   after such a recovery mean the session is lost, never a loop;
//! - allowance errors (403 `exceeded-*-allowance`), 429 and login throttling (401
//!   `service.security.authentication.failure-invalid-client-security-token` on
//!   login) start a back-off; nothing is sent, and nobody logs in, before it ends;
//! - server errors and transport failures of the session's own requests are retried a
//!   bounded number of times ([`IgConfig::max_attempts`]).
//!
//! One login shared by several processes: one session owns the credentials and
//! reports each new generation ([`Event::CredentialsChanged`](crate::Event)); the others
//! are built with [`IgSession::follower`], install each generation with
//! [`IgIntent::Adopt`], and when it is refused ask for a newer one
//! ([`Event::CredentialsWanted`](crate::Event)) instead of recovering by themselves.
//! [`IgIntent::Lead`] and [`IgIntent::Follow`] move the ownership;
//! [`IgIntent::Recover`] is the owner's side of a follower's request. The sharing
//! itself (a lease, a store, notifications) is `broker-session-redis`'s.
//!
//! Account switching: a v2 session sends `PUT /session` and keeps the new
//! X-SECURITY-TOKEN. A v3 session switches locally, by changing the `IG-ACCOUNT-ID`
//! it stamps on later requests (no request: IG's OAuth tokens identify the client,
//! not the account); the choice survives refreshes and re-logins.

mod builder;
mod config;
mod crypto;
mod decode;
mod display;
mod encode;
mod endpoint;
mod env;
mod machine;
mod policy;
mod snapshot;

use std::time::Instant;

pub use builder::IgConfigBuilder;
pub use config::{IgConfig, IgEnvironment, LoginFlow, WEB_PLATFORM_LOGIN_URL};
pub use crypto::encrypt_password;
pub use endpoint::Endpoint;
pub use machine::IgSession;
pub use policy::{Action, BackOffs, LOGIN_THROTTLED, action_for};
pub use snapshot::{PersistedSession, PersistedTokens, SessionSnapshot};

/// Pure request builders for IG's session endpoints (for tests, fuzzing and custom
/// drivers; the machine uses them itself).
pub mod requests {
    pub use super::encode::{
        AuthHeaders, JSON, apply_auth, encryption_key, login, logout, read_session, refresh,
        switch_account, web_platform_login,
    };
}

/// Pure response parsers for IG's session endpoints (for tests and fuzzing).
pub mod responses {
    pub use super::decode::{
        CstLogin, CstLoginAnswer, EncryptionKey, IgAccount, OAuthLogin, OAuthTokens,
        SessionDetails, StreamingTokens, SwitchTokens, encryption_key, error_code, login_v2,
        login_v3, read_session, refresh, switch_account, web_platform_login,
    };
}

pub use decode::{IgAccount, SessionDetails};

use crate::error::Error;
use crate::secret::LightstreamerPassword;

/// What the user can ask an [`IgSession`] for.
#[derive(Debug)]
#[non_exhaustive]
pub enum IgIntent {
    /// Log in with the configured flow (and select [`IgConfig::account_id`] if set).
    Login,
    /// Refresh the v3 access token now (v3 sessions only; the session also does this
    /// by itself before the token expires).
    Refresh,
    /// `GET /session`; with `fetch_tokens`, also fetch CST/X-SECURITY-TOKEN (a v3
    /// session needs them for Lightstreamer). They are kept apart from the OAuth tokens.
    ReadSession {
        /// Ask for `CST`/`X-SECURITY-TOKEN` headers (`?fetchSessionTokens=true`).
        fetch_tokens: bool,
    },
    /// Act on another account from now on.
    SwitchAccount {
        /// The account to switch to.
        account_id: String,
        /// Also make it the profile's default account (permanent; v2 sessions only).
        make_default: bool,
    },
    /// `DELETE /session` and forget the tokens (they are forgotten whatever IG says).
    Logout,
    /// Take over saved tokens and check them with `GET /session` (a v3 access token
    /// that has expired is refreshed first). Stale tokens end the operation with
    /// [`Error::Unauthorized`] and leave the session logged out; no login is attempted.
    Resume(SessionSnapshot),

    /// Follower role only: use the credentials another process (the owner) published
    /// as `generation`. Installed only when `generation` is newer than the session's
    /// own; nothing is sent. Calls waiting for newer credentials go on with them.
    /// Completes at once with [`IgOutcome::Adopted`].
    Adopt {
        /// The generation the owner published the snapshot under.
        generation: u64,
        /// The owner's credentials.
        snapshot: SessionSnapshot,
    },
    /// Become the owner of the credentials ([`IgRole::Owner`]): from now on the
    /// session refreshes, recovers and logs out by itself. Credentials it holds (adopted
    /// from the previous owner) are checked with `GET /session` (a v3 access token that
    /// has expired is refreshed first), as [`IgIntent::Resume`] does: completes with
    /// [`IgOutcome::Resumed`], or [`Error::Unauthorized`] (the tokens are then
    /// forgotten: log in). Without credentials it completes with
    /// [`UsageError::NotLoggedIn`](crate::UsageError::NotLoggedIn): log in.
    Lead {
        /// The highest generation the fleet has used. Credentials this session obtains
        /// from now on get generations above it, so they are never mistaken for older
        /// ones.
        generation_floor: u64,
    },
    /// Become a follower ([`IgRole::Follower`]), e.g. after losing the ownership: every
    /// queued operation completes as [`Error::Cancelled`], the running one once its
    /// request (if any) is answered, no timer is left, and the credentials are
    /// forgotten until the next [`IgIntent::Adopt`]. Completes at once with
    /// [`IgOutcome::Following`].
    Follow {
        /// The generation the fleet holds now: only newer ones are adopted.
        generation: u64,
    },
    /// Owner role only: another process (a follower) saw the credentials of
    /// generation `refused` refused. Recovers them once (refresh for v3, else a
    /// login) unless newer credentials exist already, or a recovery is under way
    /// (its operation id is returned). Completes with [`IgOutcome::Recovered`].
    Recover {
        /// The generation the follower saw refused.
        refused: u64,
    },
}

/// Who obtains a session's credentials.
///
/// One broker login shared by several processes has one owner, which logs in,
/// refreshes and recovers, and any number of followers, which authorize requests with
/// the credentials the owner publishes and, when those are refused, wait for newer
/// ones instead of recovering by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IgRole {
    /// The session obtains its credentials itself (every session built with
    /// [`IgSession::new`]).
    Owner,
    /// The session uses credentials given with [`IgIntent::Adopt`]; it never logs in,
    /// refreshes or logs out by itself, and runs no keep-alive timer.
    Follower,
}

/// How the session authenticates requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMode {
    /// `CST` + `X-SECURITY-TOKEN` (v1, v2, encrypted v2, web platform, resumed CST).
    Cst,
    /// `Authorization: Bearer` + `IG-ACCOUNT-ID` (v3).
    OAuth,
}

/// The externally visible state of an [`IgSession`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgState {
    /// No credentials.
    LoggedOut,
    /// A login (or resume) is in progress.
    LoggingIn,
    /// Credentials are ready: [`authorize`](crate::Machine::authorize) stamps them.
    Active {
        /// The account requests act on.
        account_id: String,
        /// How requests are authenticated.
        mode: AuthMode,
    },
    /// Recovering refused credentials (refresh or re-login).
    Recovering,
    /// A logout is in progress.
    LoggingOut,
    /// IG throttled: nothing is sent before `until`.
    BackingOff {
        /// When sending may resume.
        until: Instant,
    },
    /// The session was lost (credentials refused after one recovery); log in again.
    Lost {
        /// Why.
        reason: Error,
    },
    /// Closed after a fatal error (rejected credentials, API key, required action);
    /// it sends nothing more. Build a new session with corrected configuration.
    Closed {
        /// Why.
        reason: Error,
    },
}

/// What a login or resume produced.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The account requests act on.
    pub account_id: String,
    /// The client id, when IG sent it.
    pub client_id: Option<String>,
    /// The client's accounts (v1/v2 logins only).
    pub accounts: Vec<IgAccount>,
    /// The Lightstreamer server of the session.
    pub lightstreamer_endpoint: Option<String>,
    /// How requests are authenticated.
    pub mode: AuthMode,
}

/// The typed result of a completed [`IgSession`] operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgOutcome {
    /// [`IgIntent::Login`] succeeded. (Boxed, as [`Session`](Self::Session)'s
    /// details: a login comes once in a session's life, a refresh every minute, and
    /// every event the session queues has the room of the largest outcome.)
    LoggedIn(Box<SessionInfo>),
    /// [`IgIntent::Resume`] succeeded: the tokens are valid.
    Resumed(Box<SessionInfo>),
    /// The v3 access token was refreshed (by [`IgIntent::Refresh`], or by the session
    /// itself before expiry); it now expires at `expires_at`.
    Refreshed {
        /// When the new access token expires.
        expires_at: Instant,
    },
    /// A recovery the session started after refused credentials succeeded; requests
    /// stamped with older credentials can be replayed.
    Recovered {
        /// The new credential generation.
        generation: u64,
    },
    /// [`IgIntent::ReadSession`] answered.
    Session {
        /// The details IG returned.
        details: Box<SessionDetails>,
        /// Whether CST/X-SECURITY-TOKEN came with it (and were stored for streaming).
        streaming_tokens: bool,
    },
    /// [`IgIntent::SwitchAccount`] succeeded.
    Switched {
        /// The account now in use.
        account_id: String,
        /// IG said it was already the active account (412
        /// `error.switch.accountId-must-be-different`).
        already_active: bool,
    },
    /// [`IgIntent::Logout`] finished; the tokens are forgotten.
    LoggedOut {
        /// IG confirmed the logout (2xx) or said the session was already gone (401).
        /// `false` when the request failed; the tokens were forgotten anyway.
        server_confirmed: bool,
    },

    /// [`IgIntent::Adopt`] completed.
    Adopted {
        /// The generation offered.
        generation: u64,
        /// Whether it was installed (`false`: the session already had that generation
        /// or a newer one).
        installed: bool,
    },
    /// [`IgIntent::Follow`] completed: the session is a follower.
    Following,
}

/// What a Lightstreamer client needs to connect to IG's streaming server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LightstreamerCredentials {
    /// The server (`lightstreamerEndpoint`), when IG sent it.
    pub endpoint: Option<String>,
    /// The user: the account id.
    pub user: String,
    /// The password: `CST-<cst>|XST-<xst>`.
    pub password: LightstreamerPassword,
}
