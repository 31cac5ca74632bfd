//! Errors: what went wrong, and what the caller should do about it.
//!
//! One [`Error`] type for everything a session can report. Each variant's `Display`
//! says what to do next. No variant ever holds a secret or echoes a response body:
//! broker error codes are kept (they are not secret), values are not.

use std::fmt;
use std::time::Duration;

use crate::failure::TransportFailure;

/// What the broker said when it refused a request: the HTTP status and the broker's
/// error code (`errorCode` for IG, the `error` text for IBKR), cut to 200 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code of the response.
    pub status: u16,
    /// The broker's error code, if the body carried one (e.g. `error.security.invalid-details`).
    pub code: Option<String>,
}

impl ApiError {
    /// An error from a status and an optional code. The code is trimmed to 200
    /// characters and stripped of control characters, so a hostile body cannot flood
    /// logs.
    pub fn new(status: u16, code: Option<&str>) -> Self {
        let code = code.map(|c| {
            c.chars()
                .filter(|ch| !ch.is_control())
                .take(200)
                .collect::<String>()
        });
        Self { status, code }
    }

    /// The error code, or `""` when there was none.
    pub fn code_str(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "HTTP {} `{code}`", self.status),
            None => write!(f, "HTTP {}", self.status),
        }
    }
}

/// Everything a session operation can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The broker rejected the credentials (IG `error.security.invalid-details`, IBKR
    /// OAuth 401 on the live session token request). Never retried: brokers lock
    /// accounts after repeated failures.
    CredentialsRejected(ApiError),
    /// The broker refused for a reason retrying cannot fix: an invalid or disabled API
    /// key, a suspended account, a bad request. Never retried.
    Rejected(ApiError),
    /// Rate limit or allowance exceeded, or logins too fast. Retry after `retry_after`.
    Throttled {
        /// What the broker said.
        error: ApiError,
        /// How long to wait before the next attempt.
        retry_after: Duration,
    },
    /// The session's credentials were refused after the one recovery the library
    /// allows itself (refresh or re-login). Log in again.
    Unauthorized(ApiError),
    /// The broker needs a person to act before the session can be used.
    ActionRequired(ActionRequired),
    /// The broker answered with a server error or is unavailable, after bounded retries.
    Unavailable(ApiError),
    /// A response did not follow the protocol (bad JSON, a missing header, an
    /// unexpected status, a body too large).
    Protocol(ProtocolError),
    /// The transport could not complete the exchange.
    Transport(TransportFailure),
    /// A cryptographic step failed (a key that does not parse, a live session token
    /// whose signature does not match).
    Crypto(CryptoError),
    /// The operation was cancelled before it completed: the session was logged out
    /// or lost while it waited.
    Cancelled,
    /// A login request may have reached the broker, but its answer never came: the
    /// core's request deadline passed, or the transport failed after the request may
    /// have been sent. It was not sent again, because a repeated login with a password
    /// the broker may have just rejected can lock the account. If the broker's answer
    /// still arrives and rejects the credentials, the session closes with
    /// [`Error::CredentialsRejected`]. Retryable: logging in again later can succeed.
    LoginUnanswered {
        /// The endpoint, e.g. `POST /session`.
        endpoint: &'static str,
        /// The transport's failure, or `None` when the core's own deadline passed.
        failure: Option<TransportFailure>,
    },
    /// A session following another process's credentials had those of generation
    /// `refused` refused, and no newer generation arrived from the owner before the
    /// request deadline. Retryable: the owner may be failing over.
    NoNewerCredentials {
        /// The generation that was refused.
        refused: u64,
    },
    /// The operation made no sense in the session's state.
    Usage(UsageError),
}

impl Error {
    /// Whether retrying the same thing later can succeed. `false` for rejected
    /// credentials, configuration problems, required user action and usage errors.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. }
                | Self::Unavailable(_)
                | Self::Transport(_)
                | Self::Protocol(_)
                | Self::Unauthorized(_)
                | Self::Cancelled
                | Self::LoginUnanswered { .. }
                | Self::NoNewerCredentials { .. }
        )
    }

    /// For [`Error::Throttled`], how long to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CredentialsRejected(e) => {
                write!(
                    f,
                    "credentials rejected ({e}): not retried, to avoid locking the account; "
                )?;
                f.write_str(credentials_fix(e))
            }
            Self::Rejected(e) => write!(
                f,
                "request refused ({e}): not retried; check the configuration (API key, environment, account)"
            ),
            Self::Throttled { error, retry_after } => write!(
                f,
                "throttled by the broker ({error}): retry after {} s",
                retry_after.as_secs()
            ),
            Self::Unauthorized(e) => write!(
                f,
                "session no longer authorized ({e}) after one recovery attempt: log in again"
            ),
            Self::ActionRequired(a) => write!(f, "{a}"),
            Self::Unavailable(e) => {
                write!(f, "broker unavailable ({e}): retry later")
            }
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Transport(e) => write!(f, "transport failure: {e}"),
            Self::Crypto(e) => write!(f, "crypto failure: {e}"),
            Self::Cancelled => {
                f.write_str("operation cancelled: the session ended before it completed")
            }
            Self::Usage(e) => write!(f, "usage error: {e}"),
            Self::NoNewerCredentials { refused } => write!(
                f,
                "the shared credentials of generation {refused} were refused and no newer ones \
                 came from the owner before the deadline: check the owning process is running, \
                 then retry"
            ),
            Self::LoginUnanswered { endpoint, failure } => {
                match failure {
                    Some(t) => write!(f, "{endpoint}: the answer never came ({t})")?,
                    None => write!(
                        f,
                        "{endpoint}: the answer never came before the request deadline"
                    )?,
                }
                f.write_str(
                    "; the login may have reached the broker, so nothing was retried (a repeated login with rejected credentials can lock the account): check the credentials and the network, then log in again",
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// What to check after a credentials rejection, for the broker that said it. IG's
/// error codes are dotted names under `error.`; IBKR's OAuth rejection is free text
/// (`invalid consumer`, `LST failed …`).
fn credentials_fix(e: &ApiError) -> &'static str {
    const IG: &str = "check the identifier, password, API key and environment (demo and live need different ones)";
    const IBKR: &str = "check the consumer key, access token and secret, the signature and encryption keys, the DH prime and the realm (new OAuth credentials can take a day to activate)";
    match e.code.as_deref() {
        Some(code) if code.starts_with("error.") => IG,
        Some(_) => IBKR,
        None => {
            "check the credentials in the configuration (IG: identifier, password, API key and environment; IBKR OAuth: consumer key, access token, keys and realm)"
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Self::Usage(e)
    }
}

impl From<TransportFailure> for Error {
    fn from(e: TransportFailure) -> Self {
        Self::Transport(e)
    }
}

/// Something only a person can do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionRequired {
    /// IG: the login must be completed in another environment
    /// (`reroutingEnvironment`, or `authenticationStatus: CHANGE_ENVIRONMENT`).
    ChangeEnvironment {
        /// The environment IG named (`DEMO`, `LIVE`, `TEST`, `UAT`), if any.
        environment: Option<String>,
    },
    /// IG: forms must be completed on the web platform (`formDetails`, e.g. `KYC`, `BCA`).
    Forms {
        /// The form types IG listed.
        forms: Vec<String>,
    },
    /// IG: `authenticationStatus` other than `AUTHENTICATED` (e.g.
    /// `DISABLED_PREFERRED_ACCOUNT`).
    AuthenticationStatus {
        /// The status IG sent.
        status: String,
    },
    /// IG: this account's region requires an encrypted password
    /// (`error.public-api.failure.encryption.required`): use the encrypted v2 login.
    EncryptionRequired,
    /// IBKR Client Portal Gateway: nobody is logged in; log in through the gateway's
    /// web page in a browser, then check the status again.
    BrowserLogin,
}

impl fmt::Display for ActionRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChangeEnvironment { environment } => write!(
                f,
                "the broker asks to complete the login in another environment ({}): check that the API key, user and base URL belong to the same environment",
                environment.as_deref().unwrap_or("unnamed")
            ),
            Self::Forms { forms } => write!(
                f,
                "forms must be completed on the broker's web platform before API use: {}",
                forms.join(", ")
            ),
            Self::AuthenticationStatus { status } => write!(
                f,
                "login not completed (authenticationStatus {status}): fix the account settings on the broker's web platform"
            ),
            Self::EncryptionRequired => f.write_str(
                "this account requires an encrypted password: use the encrypted v2 login",
            ),
            Self::BrowserLogin => f.write_str(
                "no gateway session: log in through the Client Portal Gateway's page in a browser, then check the status again",
            ),
        }
    }
}

/// A response that does not follow the protocol. Never carries body text or header
/// values, only names, positions and sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The status is not one the endpoint answers with.
    UnexpectedStatus {
        /// The endpoint, e.g. `POST /session`.
        endpoint: &'static str,
        /// The status received.
        status: u16,
    },
    /// The broker answered with a redirect; redirects are never followed, since
    /// credentials must not be forwarded.
    Redirect {
        /// The endpoint.
        endpoint: &'static str,
        /// The status received.
        status: u16,
    },
    /// The body is not the JSON the endpoint sends.
    MalformedBody {
        /// The endpoint.
        endpoint: &'static str,
        /// Where and how parsing failed (never the offending value).
        detail: String,
    },
    /// A required header is absent.
    MissingHeader {
        /// The endpoint.
        endpoint: &'static str,
        /// The header name.
        header: &'static str,
    },
    /// A header is present but unusable (not visible ASCII, say).
    InvalidHeader {
        /// The endpoint.
        endpoint: &'static str,
        /// The header name.
        header: &'static str,
    },
    /// A required field is absent from the body.
    MissingField {
        /// The endpoint.
        endpoint: &'static str,
        /// The field name.
        field: &'static str,
    },
    /// A field is present with a value that cannot be used.
    InvalidField {
        /// The endpoint.
        endpoint: &'static str,
        /// The field name.
        field: &'static str,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// The body is larger than the limit.
    BodyTooLarge {
        /// The endpoint.
        endpoint: &'static str,
        /// The body's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// No response arrived before the core's own per-request deadline.
    NoResponse {
        /// The endpoint.
        endpoint: &'static str,
    },
}

impl ProtocolError {
    /// A [`ProtocolError::MalformedBody`] from a `serde_json` error, keeping only its
    /// category and position: serde's messages can quote the offending value, which
    /// may be a token.
    pub fn from_json(endpoint: &'static str, e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Io => "read error",
            Category::Syntax => "not valid JSON",
            Category::Data => "unexpected JSON shape or type",
            Category::Eof => "truncated JSON",
        };
        Self::MalformedBody {
            endpoint,
            detail: format!("{what} at line {} column {}", e.line(), e.column()),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedStatus { endpoint, status } => {
                write!(f, "{endpoint}: unexpected HTTP status {status}")
            }
            Self::Redirect { endpoint, status } => write!(
                f,
                "{endpoint}: redirect (HTTP {status}) not followed; check the base URL"
            ),
            Self::MalformedBody { endpoint, detail } => {
                write!(f, "{endpoint}: malformed response body: {detail}")
            }
            Self::MissingHeader { endpoint, header } => {
                write!(f, "{endpoint}: response header `{header}` missing")
            }
            Self::InvalidHeader { endpoint, header } => {
                write!(f, "{endpoint}: response header `{header}` unusable")
            }
            Self::MissingField { endpoint, field } => {
                write!(f, "{endpoint}: response field `{field}` missing")
            }
            Self::InvalidField {
                endpoint,
                field,
                reason,
            } => write!(f, "{endpoint}: response field `{field}` invalid: {reason}"),
            Self::BodyTooLarge {
                endpoint,
                len,
                limit,
            } => write!(
                f,
                "{endpoint}: response body of {len} bytes exceeds the {limit}-byte limit"
            ),
            Self::NoResponse { endpoint } => {
                write!(f, "{endpoint}: no response before the request deadline")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A failed cryptographic step.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key (PEM, DER, base64) could not be parsed.
    InvalidKey {
        /// Which key, e.g. `IG encryptionKey`, `IBKR signature key`.
        which: &'static str,
    },
    /// RSA encryption failed (a message too long for the key, say).
    Encrypt {
        /// Why.
        reason: &'static str,
    },
    /// RSA decryption of the access token secret failed.
    Decrypt,
    /// RSA signing failed.
    Sign,
    /// A Diffie-Hellman parameter or response is outside the valid range.
    DiffieHellman {
        /// Why.
        reason: &'static str,
    },
    /// The live session token computed locally does not match the broker's
    /// signature: usually the wrong encryption key, access token secret or DH prime.
    LiveSessionTokenMismatch,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidKey { which } => write!(f, "{which} could not be parsed"),
            Self::Encrypt { reason } => write!(f, "RSA encryption failed: {reason}"),
            Self::Decrypt => f.write_str(
                "RSA decryption of the access token secret failed: check the private encryption key",
            ),
            Self::Sign => f.write_str("RSA signing failed: check the private signature key"),
            Self::DiffieHellman { reason } => write!(f, "Diffie-Hellman: {reason}"),
            Self::LiveSessionTokenMismatch => f.write_str(
                "live session token does not match the broker's signature: check the private encryption key, the access token secret and the DH prime",
            ),
        }
    }
}

impl std::error::Error for CryptoError {}

/// An intent or call that makes no sense in the session's current state, or a
/// configuration value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The call needs a logged-in session; log in first.
    NotLoggedIn,
    /// The intent is not available in this session's mode.
    Unsupported {
        /// The intent, e.g. `refresh`.
        intent: &'static str,
        /// Why, e.g. `only v3 sessions have refresh tokens`.
        reason: &'static str,
    },
    /// An argument or configuration value is invalid.
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The session was ended after rejected credentials or a required user action;
    /// it will not send again until the configuration changes (build a new session).
    SessionClosed,
    /// Too many intents queued (the limit protects against runaway callers).
    QueueFull,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoggedIn => f.write_str("not logged in: log in first"),
            Self::Unsupported { intent, reason } => {
                write!(f, "`{intent}` is not available: {reason}")
            }
            Self::InvalidArgument { what, reason } => write!(f, "invalid {what}: {reason}"),
            Self::SessionClosed => f.write_str(
                "session closed after a fatal error: build a new session with corrected configuration",
            ),
            Self::QueueFull => f.write_str("too many operations queued: wait for some to complete"),
        }
    }
}

impl std::error::Error for UsageError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_code_is_sanitized() {
        let long = "x".repeat(500);
        let e = ApiError::new(401, Some(&format!("a\nb\u{7}{long}")));
        let code = e.code.unwrap();
        assert!(code.starts_with("ab"));
        assert_eq!(code.chars().count(), 200);
    }

    #[test]
    fn json_errors_do_not_echo_values() {
        let err = serde_json::from_str::<u64>("\"secret-token-value\"").unwrap_err();
        let p = ProtocolError::from_json("POST /session", &err);
        assert!(!p.to_string().contains("secret-token-value"), "{p}");
    }

    #[test]
    fn each_broker_rejection_names_its_own_fix() {
        let ig =
            Error::CredentialsRejected(ApiError::new(401, Some("error.security.invalid-details")));
        assert!(ig.to_string().contains("API key and environment"), "{ig}");
        let ibkr = Error::CredentialsRejected(ApiError::new(
            401,
            Some("id: 3931, error: invalid consumer"),
        ));
        assert!(ibkr.to_string().contains("consumer key"), "{ibkr}");
        assert!(!ibkr.to_string().contains("identifier"), "{ibkr}");
    }

    #[test]
    fn fatal_errors_are_not_retryable() {
        let e =
            Error::CredentialsRejected(ApiError::new(401, Some("error.security.invalid-details")));
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("not retried"));
    }
}
