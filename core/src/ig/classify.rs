//! What to do about an IG error answer: from the endpoint, the HTTP status and the
//! exact `errorCode` (never a substring of the body) to an action.

use std::time::Duration;

use crate::error::{ActionRequired, ApiError, Error};

/// Which request the answer belongs to; the same code means different things on
/// different endpoints (a throttling 401 on login, a 412 on a switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /session` (any version) or the web-platform login.
    Login,
    /// `POST /session/refresh-token`.
    Refresh,
    /// `GET /session/encryptionKey`.
    EncryptionKey,
    /// `GET /session`.
    ReadSession,
    /// `PUT /session`.
    Switch,
    /// `DELETE /session`.
    Logout,
    /// An application request stamped by the session.
    Application,
}

/// The action for an error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Fatal: end the operation and close the session; never retried (bad
    /// credentials, an invalid API key, a required user action).
    Close(Error),
    /// End the operation with this error; the session itself is unaffected.
    Fail(Error),
    /// The CST/XST (or the account token) are no longer valid: log in again, once.
    Relogin(ApiError),
    /// The v3 access token is no longer valid: refresh, once.
    Refresh(ApiError),
    /// Slow down: nothing is sent before `retry_after` has passed.
    BackOff {
        /// What IG said.
        error: ApiError,
        /// How long to wait.
        retry_after: Duration,
    },
    /// Transient (5xx, IG's generic errors): retry a bounded number of times.
    Retry(ApiError),
    /// The answer means the operation's goal is already reached (412 "must be
    /// different" on a switch; 401 on a logout).
    AlreadyDone(ApiError),
}

/// Back-off durations the classification hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackOffs {
    /// After an allowance error or a 429.
    pub allowance: Duration,
    /// After IG throttled a login.
    pub login_throttle: Duration,
}

/// The login-throttling code: logins too fast, not bad credentials.
pub const LOGIN_THROTTLED: &str =
    "service.security.authentication.failure-invalid-client-security-token";

const HISTORICAL_ALLOWANCE: &str = "error.public-api.exceeded-account-historical-data-allowance";

/// Classifies an error answer (any non-2xx, non-3xx status).
pub fn classify(endpoint: Endpoint, status: u16, code: Option<&str>, b: BackOffs) -> Action {
    let api = ApiError::new(status, code);
    let code = code.unwrap_or("");
    let is_login = endpoint == Endpoint::Login;

    // Exact codes first: they say more than the status.
    match code {
        "error.security.invalid-details" | "error.security.too-many-failed-attempts" => {
            return Action::Close(Error::CredentialsRejected(api));
        }
        LOGIN_THROTTLED if is_login => {
            return Action::BackOff {
                error: api,
                retry_after: b.login_throttle,
            };
        }
        "error.public-api.failure.encryption.required" => {
            return Action::Close(Error::ActionRequired(ActionRequired::EncryptionRequired));
        }
        "error.public-api.failure.kyc.required" => {
            return Action::Close(Error::ActionRequired(ActionRequired::Forms {
                forms: vec!["KYC".into()],
            }));
        }
        "error.public-api.failure.pending.agreements.required"
        | "error.public-api.failure.preferred.account.disabled"
        | "error.public-api.failure.preferred.account.not.set" => {
            return Action::Close(Error::ActionRequired(
                ActionRequired::AuthenticationStatus {
                    status: api.code_str().to_owned(),
                },
            ));
        }
        HISTORICAL_ALLOWANCE => {
            // A weekly quota: waiting a minute does not help, so fail fast.
            return Action::Fail(Error::Throttled {
                error: api,
                retry_after: Duration::from_secs(7 * 24 * 3600),
            });
        }
        "error.security.oauth-token-invalid" if !is_login && endpoint != Endpoint::Refresh => {
            return Action::Refresh(api);
        }
        "error.switch.accountId-must-be-different" if endpoint == Endpoint::Switch => {
            return Action::AlreadyDone(api);
        }
        "error.security.generic" | "error.security.get.session.timeout" => {
            return Action::Retry(api);
        }
        _ => {}
    }
    if code.starts_with("error.public-api.exceeded-") && code.ends_with("allowance") {
        return Action::BackOff {
            error: api,
            retry_after: b.allowance,
        };
    }
    // An account code on an application call may concern only that call (another
    // account's data, say): it falls through to the status rules, so a 401 gets one
    // re-login, whose own answer closes the session if the account really is barred.
    if is_key_problem(code) || (is_account_problem(code) && endpoint != Endpoint::Application) {
        return Action::Close(Error::Rejected(api));
    }
    if status == 429 {
        return Action::BackOff {
            error: api,
            retry_after: b.allowance,
        };
    }
    if status >= 500 {
        return Action::Retry(api);
    }
    if endpoint == Endpoint::Logout && status == 401 {
        return Action::AlreadyDone(api);
    }
    if status == 401 {
        return match endpoint {
            // Never retry a login IG refused: repeated failures lock the account.
            Endpoint::Login => Action::Close(Error::CredentialsRejected(api)),
            // A refused refresh token: the caller falls back to one login.
            Endpoint::Refresh => Action::Fail(Error::Unauthorized(api)),
            _ => Action::Relogin(api),
        };
    }
    if is_login {
        // Anything else refused at login is configuration; retrying cannot fix it.
        return Action::Close(Error::Rejected(api));
    }
    Action::Fail(Error::Rejected(api))
}

fn is_key_problem(code: &str) -> bool {
    code.starts_with("error.security.api-key-")
        || code.starts_with("unauthorised.api-key")
        || code == "unauthorised.clientId.api-key.mismatch"
        || code == "endpoint.unavailable.for.api-key"
        || code == "error.security.invalid-application"
}

fn is_account_problem(code: &str) -> bool {
    matches!(
        code,
        "error.security.account-suspended"
            | "error.security.client-suspended"
            | "error.security.account-access-denied"
            | "error.security.account-not-yet-activated"
            | "error.security.account-migrated"
            | "error.security.all-accounts-pending"
            | "error.security.all-accounts-suspended"
            | "error.security.authentication.failure.not-a-client-account"
            | "error.public-api.failure.missing.credentials"
            | "error.public-api.failure.stockbroking-not-supported"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: BackOffs = BackOffs {
        allowance: Duration::from_secs(60),
        login_throttle: Duration::from_secs(180),
    };

    fn c(e: Endpoint, s: u16, code: &str) -> Action {
        classify(e, s, (!code.is_empty()).then_some(code), B)
    }

    #[test]
    fn account_codes_on_application_calls_do_not_close_the_session() {
        assert!(matches!(
            c(
                Endpoint::Application,
                403,
                "error.security.account-access-denied"
            ),
            Action::Fail(_)
        ));
        assert!(matches!(
            c(
                Endpoint::Application,
                401,
                "error.security.account-suspended"
            ),
            Action::Relogin(_)
        ));
        assert!(matches!(
            c(Endpoint::Login, 401, "error.security.account-suspended"),
            Action::Close(Error::Rejected(_))
        ));
    }

    #[test]
    fn spec_table() {
        use Endpoint::*;
        assert!(matches!(
            c(Login, 401, "error.security.invalid-details"),
            Action::Close(Error::CredentialsRejected(_))
        ));
        assert!(matches!(
            c(Login, 403, "error.security.api-key-invalid"),
            Action::Close(Error::Rejected(_))
        ));
        assert!(matches!(
            c(Login, 400, "error.security.api-key-missing"),
            Action::Close(Error::Rejected(_))
        ));
        assert!(matches!(
            c(
                Login,
                400,
                "validation.pattern.invalid.authenticationRequest.identifier"
            ),
            Action::Close(Error::Rejected(_))
        ));
        assert_eq!(
            c(Login, 401, LOGIN_THROTTLED),
            Action::BackOff {
                error: ApiError::new(401, Some(LOGIN_THROTTLED)),
                retry_after: B.login_throttle
            }
        );
        assert!(matches!(
            c(Application, 401, LOGIN_THROTTLED),
            Action::Relogin(_)
        ));
        assert!(matches!(
            c(Application, 401, "error.security.client-token-invalid"),
            Action::Relogin(_)
        ));
        assert!(matches!(
            c(Application, 401, "error.security.account-token-invalid"),
            Action::Relogin(_)
        ));
        assert!(matches!(c(Application, 401, ""), Action::Relogin(_)));
        assert!(matches!(
            c(Application, 401, "error.security.oauth-token-invalid"),
            Action::Refresh(_)
        ));
        assert!(matches!(
            c(Refresh, 401, "error.security.oauth-token-invalid"),
            Action::Fail(Error::Unauthorized(_))
        ));
        assert!(matches!(
            c(
                Application,
                403,
                "error.public-api.exceeded-api-key-allowance"
            ),
            Action::BackOff { .. }
        ));
        assert!(matches!(
            c(
                Application,
                403,
                "error.public-api.exceeded-account-trading-allowance"
            ),
            Action::BackOff { .. }
        ));
        assert!(matches!(
            c(Application, 403, HISTORICAL_ALLOWANCE),
            Action::Fail(Error::Throttled { .. })
        ));
        assert!(matches!(c(ReadSession, 429, ""), Action::BackOff { .. }));
        assert!(matches!(c(ReadSession, 503, ""), Action::Retry(_)));
        assert!(matches!(
            c(Switch, 412, "error.switch.accountId-must-be-different"),
            Action::AlreadyDone(_)
        ));
        assert!(matches!(
            c(Switch, 400, "error.switch.invalid-accountId"),
            Action::Fail(Error::Rejected(_))
        ));
        assert!(matches!(c(Logout, 401, ""), Action::AlreadyDone(_)));
        assert!(matches!(
            c(Login, 400, "error.public-api.failure.encryption.required"),
            Action::Close(Error::ActionRequired(ActionRequired::EncryptionRequired))
        ));
        assert!(matches!(
            c(Login, 401, "error.public-api.failure.kyc.required"),
            Action::Close(Error::ActionRequired(ActionRequired::Forms { .. }))
        ));
        assert!(matches!(
            c(Login, 401, "weird"),
            Action::Close(Error::CredentialsRejected(_))
        ));
        assert!(matches!(c(Login, 500, ""), Action::Retry(_)));
    }
}
