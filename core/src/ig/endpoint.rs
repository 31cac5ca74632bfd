//! IG's session endpoints, written once: method, path, `Version` header and the
//! name errors and logs use. `encode` builds requests from them, `decode` names them
//! in its errors, `policy` judges answers by them.

use http::Method;

use super::config::LoginFlow;

/// An IG session endpoint (or an application request stamped by the session).
///
/// The same error code means different things on different endpoints (a throttling
/// 401 on a login, a 412 on a switch), so [`action_for`](super::action_for) takes one.
///
/// ```
/// use broker_session::ig::Endpoint;
///
/// let e = Endpoint::ReadSession { fetch_tokens: true };
/// assert_eq!(e.method(), Some(broker_session::http::Method::GET));
/// assert_eq!(e.path(), Some("/session?fetchSessionTokens=true"));
/// assert_eq!(e.version(), Some(1));
/// assert_eq!(e.name(), "GET /session");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /session`, Version 1 (CST tokens).
    LoginV1,
    /// `POST /session`, Version 2 (CST tokens; also the encrypted-password login).
    LoginV2,
    /// `POST /session`, Version 3 (OAuth tokens).
    LoginV3,
    /// The unofficial web-platform login, `POST` to
    /// [`IgConfig::web_platform_url`](super::IgConfig::web_platform_url) (not under
    /// the base URL; no API key, no `Version`).
    WebPlatformLogin,
    /// `GET /session/encryptionKey`.
    EncryptionKey,
    /// `POST /session/refresh-token`.
    Refresh,
    /// `GET /session`; with `fetch_tokens`, `?fetchSessionTokens=true` so IG answers
    /// with `CST` and `X-SECURITY-TOKEN` headers.
    ReadSession {
        /// Ask for the CST/X-SECURITY-TOKEN headers.
        fetch_tokens: bool,
    },
    /// `PUT /session` (switch account).
    Switch,
    /// `DELETE /session`.
    Logout,
    /// An application request stamped by the session (any method and path).
    Application,
}

impl Endpoint {
    /// The login endpoint of a login flow.
    #[must_use]
    pub const fn login(flow: LoginFlow) -> Self {
        match flow {
            LoginFlow::V1 => Self::LoginV1,
            LoginFlow::V2 | LoginFlow::EncryptedV2 => Self::LoginV2,
            LoginFlow::V3 => Self::LoginV3,
            LoginFlow::WebPlatform => Self::WebPlatformLogin,
        }
    }

    /// The HTTP method (`None` for [`Endpoint::Application`]).
    #[must_use]
    pub fn method(self) -> Option<Method> {
        match self {
            Self::LoginV1 | Self::LoginV2 | Self::LoginV3 | Self::WebPlatformLogin => {
                Some(Method::POST)
            }
            Self::Refresh => Some(Method::POST),
            Self::EncryptionKey | Self::ReadSession { .. } => Some(Method::GET),
            Self::Switch => Some(Method::PUT),
            Self::Logout => Some(Method::DELETE),
            Self::Application => None,
        }
    }

    /// The path (and query) relative to the session's base URL; `None` for the
    /// web-platform login (a configured absolute URL) and application requests.
    #[must_use]
    pub const fn path(self) -> Option<&'static str> {
        match self {
            Self::LoginV1 | Self::LoginV2 | Self::LoginV3 | Self::Switch | Self::Logout => {
                Some("/session")
            }
            Self::ReadSession {
                fetch_tokens: false,
            } => Some("/session"),
            Self::ReadSession { fetch_tokens: true } => Some("/session?fetchSessionTokens=true"),
            Self::EncryptionKey => Some("/session/encryptionKey"),
            Self::Refresh => Some("/session/refresh-token"),
            Self::WebPlatformLogin | Self::Application => None,
        }
    }

    /// The `Version` header the request carries. IG assumes 1 when it is absent, which
    /// silently changes a v2 or v3 login's answer, so every session request but the
    /// web-platform login sends one explicitly.
    #[must_use]
    pub const fn version(self) -> Option<u8> {
        match self {
            Self::LoginV1 => Some(1),
            Self::LoginV2 => Some(2),
            Self::LoginV3 => Some(3),
            Self::EncryptionKey
            | Self::Refresh
            | Self::ReadSession { .. }
            | Self::Switch
            | Self::Logout => Some(1),
            Self::WebPlatformLogin | Self::Application => None,
        }
    }

    /// A short name for errors and logs, e.g. `POST /session`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::LoginV1 | Self::LoginV2 | Self::LoginV3 => "POST /session",
            Self::WebPlatformLogin => "POST /clientsecurity/session",
            Self::EncryptionKey => "GET /session/encryptionKey",
            Self::Refresh => "POST /session/refresh-token",
            Self::ReadSession { .. } => "GET /session",
            Self::Switch => "PUT /session",
            Self::Logout => "DELETE /session",
            Self::Application => "application request",
        }
    }

    /// Whether this is a login (`POST /session` in any version, or the web platform's).
    #[must_use]
    pub const fn is_login(self) -> bool {
        matches!(
            self,
            Self::LoginV1 | Self::LoginV2 | Self::LoginV3 | Self::WebPlatformLogin
        )
    }

    /// Whether the request carries the password: such a request is never sent twice
    /// unless the first provably never left (see
    /// [`FailureKind::Connect`](crate::FailureKind::Connect)).
    #[must_use]
    pub const fn sends_password(self) -> bool {
        self.is_login()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_endpoint_has_a_method_and_a_version_or_says_why_not() {
        let all = [
            Endpoint::LoginV1,
            Endpoint::LoginV2,
            Endpoint::LoginV3,
            Endpoint::WebPlatformLogin,
            Endpoint::EncryptionKey,
            Endpoint::Refresh,
            Endpoint::ReadSession {
                fetch_tokens: false,
            },
            Endpoint::ReadSession { fetch_tokens: true },
            Endpoint::Switch,
            Endpoint::Logout,
        ];
        for e in all {
            assert!(e.method().is_some(), "{e:?}");
            let method = e.method().map(|m| m.to_string()).unwrap_or_default();
            assert!(e.name().starts_with(&method), "{e:?}");
            assert_eq!(
                e.path().is_none() && e.version().is_none(),
                e == Endpoint::WebPlatformLogin,
                "{e:?}"
            );
        }
        assert_eq!(Endpoint::Application.method(), None);
        assert_eq!(Endpoint::login(LoginFlow::EncryptedV2), Endpoint::LoginV2);
    }
}
