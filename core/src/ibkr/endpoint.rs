//! IBKR's session endpoints, written once: method, path and the name errors and logs
//! use. `encode` builds requests from them, `decode` names them in its errors, the
//! machine sends and judges answers by them.

use http::Method;

use super::config::ReauthenticateMethod;

/// An IBKR session endpoint.
///
/// ```
/// use broker_session::ibkr::Endpoint;
///
/// let e = Endpoint::Tickle;
/// assert_eq!(e.method(), broker_session::http::Method::POST);
/// assert_eq!(e.path(), "/tickle");
/// assert_eq!(e.name(), "POST /tickle");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /oauth/live_session_token` (OAuth 1.0a; RSA-SHA256 signed, Diffie-Hellman).
    LiveSessionToken,
    /// `POST /iserver/auth/status`: the brokerage session status.
    Status,
    /// `POST /iserver/auth/ssodh/init`: initialise the brokerage session.
    SsodhInit,
    /// `POST /tickle`: the keep-alive.
    Tickle,
    /// `/iserver/reauthenticate`, with the configured
    /// [`IbkrConfig::reauthenticate_method`](super::IbkrConfig::reauthenticate_method).
    Reauthenticate(ReauthenticateMethod),
    /// `GET /sso/validate`.
    Validate,
    /// `POST /logout`.
    Logout,
    /// `GET /iserver/accounts` (the preflight after the session becomes ready).
    Accounts,
}

impl Endpoint {
    /// The HTTP method.
    #[must_use]
    pub fn method(self) -> Method {
        match self {
            Self::Validate | Self::Accounts | Self::Reauthenticate(ReauthenticateMethod::Get) => {
                Method::GET
            }
            Self::LiveSessionToken
            | Self::Status
            | Self::SsodhInit
            | Self::Tickle
            | Self::Reauthenticate(_)
            | Self::Logout => Method::POST,
        }
    }

    /// The path relative to the session's base URL (which ends in `/v1/api`).
    #[must_use]
    pub const fn path(self) -> &'static str {
        match self {
            Self::LiveSessionToken => "/oauth/live_session_token",
            Self::Status => "/iserver/auth/status",
            Self::SsodhInit => "/iserver/auth/ssodh/init",
            Self::Tickle => "/tickle",
            Self::Reauthenticate(_) => "/iserver/reauthenticate",
            Self::Validate => "/sso/validate",
            Self::Logout => "/logout",
            Self::Accounts => "/iserver/accounts",
        }
    }

    /// A short name for errors and logs, e.g. `POST /tickle`. Reauthenticate's name has
    /// no method: the method is a setting, the endpoint is one.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::LiveSessionToken => "POST /oauth/live_session_token",
            Self::Status => "POST /iserver/auth/status",
            Self::SsodhInit => "POST /iserver/auth/ssodh/init",
            Self::Tickle => "POST /tickle",
            Self::Reauthenticate(_) => "/iserver/reauthenticate",
            Self::Validate => "GET /sso/validate",
            Self::Logout => "POST /logout",
            Self::Accounts => "GET /iserver/accounts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_with_method_and_path() {
        let all = [
            Endpoint::LiveSessionToken,
            Endpoint::Status,
            Endpoint::SsodhInit,
            Endpoint::Tickle,
            Endpoint::Validate,
            Endpoint::Logout,
            Endpoint::Accounts,
        ];
        for e in all {
            assert_eq!(e.name(), format!("{} {}", e.method(), e.path()), "{e:?}");
        }
        for m in [ReauthenticateMethod::Post, ReauthenticateMethod::Get] {
            let e = Endpoint::Reauthenticate(m);
            assert_eq!(e.name(), e.path());
        }
        assert_eq!(
            Endpoint::Reauthenticate(ReauthenticateMethod::Get).method(),
            Method::GET
        );
        assert_eq!(
            Endpoint::Reauthenticate(ReauthenticateMethod::Post).method(),
            Method::POST
        );
    }
}
