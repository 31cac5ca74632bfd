//! Typed methods for the IG and IBKR session machines.

use std::time::Instant;

use broker_session::ibkr::{
    AuthStatus, IbkrConfig, IbkrIntent, IbkrOutcome, IbkrSession, TickleInfo, ValidateInfo,
};
use broker_session::ig::{
    IgConfig, IgIntent, IgOutcome, IgSession, LightstreamerCredentials, SessionDetails,
    SessionInfo, SessionSnapshot,
};

use crate::{Client, Config, Error, now, os_seed};

/// IG Markets sessions.
///
/// ```no_run
/// # fn demo(ig_config: broker_session::ig::IgConfig) -> Result<(), broker_session_ureq::Error> {
/// use broker_session_ureq::{Client, Config};
///
/// let client = Client::ig(ig_config, &Config::default())?;
/// let info = client.login()?;
/// println!("logged in to {}", info.account_id);
/// let _keep_alive = client.keep_alive()?; // refreshes v3 tokens before they expire
/// client.logout()?;
/// # Ok(()) }
/// ```
impl Client<IgSession> {
    /// Builds an [`IgSession`] from `session`, seeded from the operating system
    /// ([`os_seed`]), and a client for it.
    pub fn ig(session: IgConfig, config: &Config) -> Result<Self, Error> {
        let machine = IgSession::new(session, os_seed()?, now()).map_err(Error::Session)?;
        Self::new(machine, config)
    }

    /// Logs in with the configured flow.
    pub fn login(&self) -> Result<SessionInfo, Error> {
        match self.run(IgIntent::Login)? {
            IgOutcome::LoggedIn(info) => Ok(info),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// Takes over saved tokens and checks them.
    pub fn resume(&self, snapshot: SessionSnapshot) -> Result<SessionInfo, Error> {
        match self.run(IgIntent::Resume(snapshot))? {
            IgOutcome::Resumed(info) => Ok(info),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// Refreshes the v3 access token now; returns when the new one expires.
    pub fn refresh(&self) -> Result<Instant, Error> {
        match self.run(IgIntent::Refresh)? {
            IgOutcome::Refreshed { expires_at } => Ok(expires_at),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// `GET /session`; with `fetch_tokens`, also fetches CST/X-SECURITY-TOKEN for
    /// streaming.
    pub fn read_session(&self, fetch_tokens: bool) -> Result<SessionDetails, Error> {
        match self.run(IgIntent::ReadSession { fetch_tokens })? {
            IgOutcome::Session { details, .. } => Ok(details),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// Acts on another account from now on. Returns `true` if IG said it already was
    /// the active account.
    pub fn switch_account(
        &self,
        account_id: impl Into<String>,
        make_default: bool,
    ) -> Result<bool, Error> {
        let intent = IgIntent::SwitchAccount {
            account_id: account_id.into(),
            make_default,
        };
        match self.run(intent)? {
            IgOutcome::Switched { already_active, .. } => Ok(already_active),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// Logs out; returns whether IG confirmed it (the tokens are forgotten anyway).
    pub fn logout(&self) -> Result<bool, Error> {
        match self.run(IgIntent::Logout)? {
            IgOutcome::LoggedOut { server_confirmed } => Ok(server_confirmed),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// What a Lightstreamer client needs, once logged in.
    pub fn lightstreamer_credentials(&self) -> Option<LightstreamerCredentials> {
        self.with_machine(|m| m.lightstreamer_credentials())
    }

    /// The session's tokens, to save and [`resume`](Self::resume) later.
    pub fn snapshot(&self) -> Option<SessionSnapshot> {
        self.with_machine(|m| m.snapshot())
    }
}

fn auth_status(outcome: IbkrOutcome) -> Result<AuthStatus, Error> {
    match outcome {
        IbkrOutcome::Connected(s) | IbkrOutcome::Status(s) => Ok(s),
        _ => Err(Error::UnexpectedOutcome),
    }
}

/// Interactive Brokers sessions (Client Portal Gateway or OAuth 1.0a).
impl Client<IbkrSession> {
    /// Builds an [`IbkrSession`] from `session`, seeded from the operating system
    /// ([`os_seed`]), and a client for it. For a gateway
    /// with its self-signed certificate, set [`Config::tls`] to
    /// [`Tls::Pem`](crate::Tls::Pem) with that certificate.
    pub fn ibkr(session: IbkrConfig, config: &Config) -> Result<Self, Error> {
        let machine = IbkrSession::new(session, os_seed()?, now()).map_err(Error::Session)?;
        Self::new(machine, config)
    }

    /// Establishes a ready brokerage session (and starts the machine's tickle
    /// timer); returns the final status.
    pub fn connect(&self) -> Result<AuthStatus, Error> {
        auth_status(self.run(IbkrIntent::Connect)?)
    }

    /// `POST /iserver/auth/status`.
    pub fn status(&self) -> Result<AuthStatus, Error> {
        auth_status(self.run(IbkrIntent::CheckStatus)?)
    }

    /// `ssodh/init`, then polls the status until ready.
    pub fn init_brokerage(&self, compete: Option<bool>) -> Result<AuthStatus, Error> {
        auth_status(self.run(IbkrIntent::InitBrokerage { compete })?)
    }

    /// `POST /tickle` now.
    pub fn tickle(&self) -> Result<TickleInfo, Error> {
        match self.run(IbkrIntent::Tickle)? {
            IbkrOutcome::Tickled(t) => Ok(t),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// Reauthenticates, then polls the status until ready.
    pub fn reauthenticate(&self) -> Result<AuthStatus, Error> {
        auth_status(self.run(IbkrIntent::Reauthenticate)?)
    }

    /// `GET /sso/validate` (gateway only).
    pub fn validate(&self) -> Result<ValidateInfo, Error> {
        match self.run(IbkrIntent::Validate)? {
            IbkrOutcome::Validated(v) => Ok(v),
            _ => Err(Error::UnexpectedOutcome),
        }
    }

    /// OAuth only: obtains a new live session token now.
    pub fn renew_token(&self) -> Result<AuthStatus, Error> {
        auth_status(self.run(IbkrIntent::RenewToken)?)
    }

    /// `POST /logout`; returns IBKR's answer, if any.
    pub fn logout(&self) -> Result<Option<bool>, Error> {
        match self.run(IbkrIntent::Logout)? {
            IbkrOutcome::LoggedOut { status } => Ok(status),
            _ => Err(Error::UnexpectedOutcome),
        }
    }
}
