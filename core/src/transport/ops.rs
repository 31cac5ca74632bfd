//! Typed operations: each broker method a client offers (`login`, `connect`,
//! `tickle` …) as a value that knows its intent and how to read its outcome, written
//! once for both transports.
//!
//! A transport has one generic `call(op)` that submits [`Operation::intent`], waits
//! for the operation and reads the result with [`Operation::output`]; its per-broker
//! methods (`client.login()`, `session.connect().await`) are one line each on top.

use super::Error;
use crate::machine::{Machine, RngSeed};
use crate::time::Now;

/// One typed operation of a broker machine.
pub trait Operation {
    /// The machine it runs on.
    type Machine: Machine;
    /// What the caller gets when it succeeds.
    type Output;
    /// The intent to submit.
    fn intent(self) -> <Self::Machine as Machine>::Intent;
    /// The output, if `outcome` is of the kind this operation produces.
    fn output(outcome: <Self::Machine as Machine>::Outcome) -> Option<Self::Output>;
}

/// The result of `O` from its operation's result: a core error keeps its meaning
/// ([`Error::from_session`]), an outcome of another kind is
/// [`Error::UnexpectedOutcome`].
pub fn output_of<O: Operation>(
    result: Result<<O::Machine as Machine>::Outcome, crate::Error>,
) -> Result<O::Output, Error> {
    O::output(result.map_err(Error::from_session)?).ok_or(Error::UnexpectedOutcome)
}

/// A broker configuration a client can build its machine from, so that a client
/// for it is one call (`Client::open(config, &http)`).
pub trait SessionConfig {
    /// The machine it builds.
    type Machine: Machine;
    /// The base URL of the broker's API: application requests with a relative path
    /// are sent under it.
    fn base_url(&self) -> String;
    /// Builds the machine.
    ///
    /// # Errors
    /// [`Error::SessionConfig`] when the configuration cannot work.
    fn build(self, seed: RngSeed, now: Now) -> Result<Self::Machine, Error>;
}

impl SessionConfig for crate::ig::IgConfig {
    type Machine = crate::ig::IgSession;
    fn base_url(&self) -> String {
        self.environment.base_url().to_owned()
    }
    fn build(self, seed: RngSeed, now: Now) -> Result<Self::Machine, Error> {
        crate::ig::IgSession::new(self, seed, now).map_err(Error::SessionConfig)
    }
}

impl SessionConfig for crate::ibkr::IbkrConfig {
    type Machine = crate::ibkr::IbkrSession;
    fn base_url(&self) -> String {
        self.base_url.trim_end_matches('/').to_owned()
    }
    fn build(self, seed: RngSeed, now: Now) -> Result<Self::Machine, Error> {
        crate::ibkr::IbkrSession::new(self, seed, now).map_err(Error::SessionConfig)
    }
}

/// Defines an operation: its type, its intent and the outcome pattern it reads.
macro_rules! operation {
    ($machine:ty, $op:ty, $out:ty, |$s:pat_param| $intent:expr, $($pat:pat => $val:expr),+ $(,)?) => {
        impl Operation for $op {
            type Machine = $machine;
            type Output = $out;
            fn intent(self) -> <$machine as Machine>::Intent {
                let $s = self;
                $intent
            }
            fn output(outcome: <$machine as Machine>::Outcome) -> Option<$out> {
                match outcome {
                    $($pat => Some($val),)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}

/// IG's operations.
pub mod ig {
    use std::time::Instant;

    use super::{Machine, Operation};
    use crate::ig::{IgIntent, IgOutcome, IgSession, SessionDetails, SessionInfo, SessionSnapshot};

    /// Log in with the configured flow.
    #[derive(Clone, Copy, Debug)]
    pub struct Login;
    /// Take over saved tokens and check them.
    #[derive(Debug)]
    pub struct Resume(pub SessionSnapshot);
    /// Refresh the v3 access token now.
    #[derive(Clone, Copy, Debug)]
    pub struct Refresh;
    /// `GET /session`.
    #[derive(Clone, Copy, Debug)]
    pub struct ReadSession {
        /// Also fetch CST/X-SECURITY-TOKEN for streaming.
        pub fetch_tokens: bool,
    }
    /// Act on another account from now on.
    #[derive(Clone, Debug)]
    pub struct SwitchAccount {
        /// The account to switch to.
        pub account_id: String,
        /// Make it the default account of later logins too.
        pub make_default: bool,
    }
    /// Log out.
    #[derive(Clone, Copy, Debug)]
    pub struct Logout;

    /// What a switch of account did.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct SwitchOutcome {
        /// The account now active.
        pub account_id: String,
        /// IG said the account already was the active one (nothing changed).
        pub already_active: bool,
    }

    /// What a logout did. The session's tokens are forgotten either way.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct LogoutOutcome {
        /// IG confirmed the logout; `false` when its answer did not come or was not a
        /// success (the tokens then expire on their own).
        pub server_confirmed: bool,
    }

    operation!(IgSession, Login, SessionInfo, |_| IgIntent::Login,
        IgOutcome::LoggedIn(info) => *info);
    operation!(IgSession, Resume, SessionInfo, |Resume(s)| IgIntent::Resume(s),
        IgOutcome::Resumed(info) => *info);
    operation!(IgSession, Refresh, Instant, |_| IgIntent::Refresh,
        IgOutcome::Refreshed { expires_at } => expires_at);
    operation!(IgSession, ReadSession, SessionDetails,
        |ReadSession { fetch_tokens }| IgIntent::ReadSession { fetch_tokens },
        IgOutcome::Session { details, .. } => *details);
    operation!(IgSession, SwitchAccount, SwitchOutcome,
        |SwitchAccount { account_id, make_default }| IgIntent::SwitchAccount { account_id, make_default },
        IgOutcome::Switched { account_id, already_active } => SwitchOutcome { account_id, already_active });
    operation!(IgSession, Logout, LogoutOutcome, |_| IgIntent::Logout,
        IgOutcome::LoggedOut { server_confirmed } => LogoutOutcome { server_confirmed });
}

/// Interactive Brokers' operations.
pub mod ibkr {
    use super::{Machine, Operation};
    use crate::ibkr::{AuthStatus, IbkrIntent, IbkrOutcome, IbkrSession, TickleInfo, ValidateInfo};

    /// Establish a ready brokerage session.
    #[derive(Clone, Copy, Debug)]
    pub struct Connect;
    /// `POST /iserver/auth/status`.
    #[derive(Clone, Copy, Debug)]
    pub struct CheckStatus;
    /// `ssodh/init`, then poll the status until ready.
    #[derive(Clone, Copy, Debug)]
    pub struct InitBrokerage {
        /// Take the brokerage session over from another login (`Some(true)`), or not.
        pub compete: Option<bool>,
    }
    /// `POST /tickle` now, paced (see [`IbkrIntent::Tickle`]).
    #[derive(Clone, Copy, Debug)]
    pub struct Tickle;
    /// Reauthenticate, then poll the status until ready.
    #[derive(Clone, Copy, Debug)]
    pub struct Reauthenticate;
    /// `GET /sso/validate` (gateway only), paced (see [`IbkrIntent::Validate`]).
    #[derive(Clone, Copy, Debug)]
    pub struct Validate;
    /// OAuth only: obtain a new live session token now.
    #[derive(Clone, Copy, Debug)]
    pub struct RenewToken;
    /// `POST /logout`.
    #[derive(Clone, Copy, Debug)]
    pub struct Logout;

    /// What a logout did.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct LogoutOutcome {
        /// IBKR's `status` answer: `Some(true)` when it confirmed the logout, `None`
        /// when its answer did not say (or did not come).
        pub confirmed: Option<bool>,
    }

    macro_rules! status_op {
        ($op:ty, |$s:pat_param| $intent:expr) => {
            operation!(IbkrSession, $op, AuthStatus, |$s| $intent,
                IbkrOutcome::Connected(s) => s, IbkrOutcome::Status(s) => s);
        };
    }
    status_op!(Connect, |_| IbkrIntent::Connect);
    status_op!(CheckStatus, |_| IbkrIntent::CheckStatus);
    status_op!(InitBrokerage, |InitBrokerage { compete }| {
        IbkrIntent::InitBrokerage { compete }
    });
    status_op!(Reauthenticate, |_| IbkrIntent::Reauthenticate);
    status_op!(RenewToken, |_| IbkrIntent::RenewToken);
    operation!(IbkrSession, Tickle, TickleInfo, |_| IbkrIntent::Tickle,
        IbkrOutcome::Tickled(t) => t);
    operation!(IbkrSession, Validate, ValidateInfo, |_| IbkrIntent::Validate,
        IbkrOutcome::Validated(v) => v);
    operation!(IbkrSession, Logout, LogoutOutcome, |_| IbkrIntent::Logout,
        IbkrOutcome::LoggedOut { status } => LogoutOutcome { confirmed: status });
}

/// The per-broker methods of a transport's client, written once: `$client` is the
/// client type, with a generic `call(op)` and `with_machine(f)`, and `HttpClient`,
/// `Config` and `Error` in scope; `async`/`await` make the methods async.
#[doc(hidden)]
#[macro_export]
macro_rules! __broker_methods {
    ($client:ident $(, $async:tt $await:tt)?) => {
        /// IG Markets sessions.
        impl $client<$crate::ig::IgSession> {
            /// Builds an [`IgSession`]($crate::ig::IgSession) from `session`, seeded
            /// from the operating system, and a client for it with its own
            /// [`HttpClient`] built from `config`. To share one connection pool
            /// between sessions, use `open` with one [`HttpClient`].
            pub fn ig(session: $crate::ig::IgConfig, config: &Config) -> Result<Self, Error> {
                Self::open(session, &HttpClient::new(config)?)
            }

            /// Logs in with the configured flow.
            pub $($async)? fn login(&self) -> Result<$crate::ig::SessionInfo, Error> {
                self.call($crate::transport::ops::ig::Login)$(.$await)?
            }

            /// Takes over saved tokens (from [`snapshot`](Self::snapshot)) and checks
            /// them.
            pub $($async)? fn resume(
                &self,
                snapshot: $crate::ig::SessionSnapshot,
            ) -> Result<$crate::ig::SessionInfo, Error> {
                self.call($crate::transport::ops::ig::Resume(snapshot))$(.$await)?
            }

            /// Refreshes the v3 access token now; returns when the new one expires.
            pub $($async)? fn refresh(&self) -> Result<std::time::Instant, Error> {
                self.call($crate::transport::ops::ig::Refresh)$(.$await)?
            }

            /// `GET /session`; with `fetch_tokens`, also fetches CST/X-SECURITY-TOKEN
            /// for streaming.
            pub $($async)? fn read_session(
                &self,
                fetch_tokens: bool,
            ) -> Result<$crate::ig::SessionDetails, Error> {
                self.call($crate::transport::ops::ig::ReadSession { fetch_tokens })$(.$await)?
            }

            /// Acts on another account from now on; says whether IG found it already
            /// active.
            pub $($async)? fn switch_account(
                &self,
                account_id: impl Into<String>,
                make_default: bool,
            ) -> Result<$crate::transport::ops::ig::SwitchOutcome, Error> {
                let account_id = account_id.into();
                self.call($crate::transport::ops::ig::SwitchAccount { account_id, make_default })
                    $(.$await)?
            }

            /// Logs out; says whether IG confirmed it (the tokens are forgotten
            /// anyway).
            pub $($async)? fn logout(
                &self,
            ) -> Result<$crate::transport::ops::ig::LogoutOutcome, Error> {
                self.call($crate::transport::ops::ig::Logout)$(.$await)?
            }

            /// What a Lightstreamer client needs, once logged in. Reads only.
            pub fn lightstreamer_credentials(
                &self,
            ) -> Option<$crate::ig::LightstreamerCredentials> {
                self.with_machine(|m| m.lightstreamer_credentials())
            }

            /// The session's tokens, to save and [`resume`](Self::resume) later.
            /// Reads only.
            pub fn snapshot(&self) -> Option<$crate::ig::SessionSnapshot> {
                self.with_machine(|m| m.snapshot())
            }
        }

        /// Interactive Brokers sessions (Client Portal Gateway or OAuth 1.0a).
        impl $client<$crate::ibkr::IbkrSession> {
            /// Builds an [`IbkrSession`]($crate::ibkr::IbkrSession) from `session`,
            /// seeded from the operating system, and a client for it with its own
            /// [`HttpClient`] built from `config`. For a gateway with its self-signed
            /// certificate, set `config.tls` to `Tls::Pem` with that certificate.
            pub fn ibkr(session: $crate::ibkr::IbkrConfig, config: &Config) -> Result<Self, Error> {
                Self::open(session, &HttpClient::new(config)?)
            }

            /// Establishes a ready brokerage session (and starts the machine's tickle
            /// timer); returns the final status.
            pub $($async)? fn connect(&self) -> Result<$crate::ibkr::AuthStatus, Error> {
                self.call($crate::transport::ops::ibkr::Connect)$(.$await)?
            }

            /// `POST /iserver/auth/status`.
            pub $($async)? fn status(&self) -> Result<$crate::ibkr::AuthStatus, Error> {
                self.call($crate::transport::ops::ibkr::CheckStatus)$(.$await)?
            }

            /// `ssodh/init`, then polls the status until ready.
            pub $($async)? fn init_brokerage(
                &self,
                compete: Option<bool>,
            ) -> Result<$crate::ibkr::AuthStatus, Error> {
                self.call($crate::transport::ops::ibkr::InitBrokerage { compete })$(.$await)?
            }

            /// `POST /tickle` now.
            ///
            /// Paced: IBKR allows one tickle a second, so a tickle within
            /// [`IbkrConfig::tickle_min_interval`]($crate::ibkr::IbkrConfig::tickle_min_interval)
            /// (default 1 s) of this session's previous one, the keep-alive's included,
            /// waits for its slot before it is sent. The answer is always fresh;
            /// [`TickleInfo::pacing`]($crate::ibkr::TickleInfo::pacing) says whether
            /// and how long it waited.
            pub $($async)? fn tickle(&self) -> Result<$crate::ibkr::TickleInfo, Error> {
                self.call($crate::transport::ops::ibkr::Tickle)$(.$await)?
            }

            /// Reauthenticates, then polls the status until ready.
            pub $($async)? fn reauthenticate(&self) -> Result<$crate::ibkr::AuthStatus, Error> {
                self.call($crate::transport::ops::ibkr::Reauthenticate)$(.$await)?
            }

            /// `GET /sso/validate` (gateway only).
            ///
            /// Paced: IBKR allows one validate a minute, so a validate within
            /// [`IbkrConfig::validate_min_interval`]($crate::ibkr::IbkrConfig::validate_min_interval)
            /// (default 60 s) of this session's previous one waits for the rest of
            /// that interval before it is sent: two calls in a row take a minute. The
            /// answer is always fresh;
            /// [`ValidateInfo::pacing`]($crate::ibkr::ValidateInfo::pacing) says
            /// whether and how long it waited.
            pub $($async)? fn validate(&self) -> Result<$crate::ibkr::ValidateInfo, Error> {
                self.call($crate::transport::ops::ibkr::Validate)$(.$await)?
            }

            /// OAuth only: obtains a new live session token now.
            pub $($async)? fn renew_token(&self) -> Result<$crate::ibkr::AuthStatus, Error> {
                self.call($crate::transport::ops::ibkr::RenewToken)$(.$await)?
            }

            /// `POST /logout`; returns IBKR's answer, if any.
            pub $($async)? fn logout(
                &self,
            ) -> Result<$crate::transport::ops::ibkr::LogoutOutcome, Error> {
                self.call($crate::transport::ops::ibkr::Logout)$(.$await)?
            }
        }
    };
}
