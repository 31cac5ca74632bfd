//! What an IG error answer means: from the endpoint, the HTTP status and the exact
//! `errorCode` (never a substring of the body) to an action.
//!
//! Each rule names its source: "IG reference" is the exception list of IG's REST
//! reference for `/session` and `/session/refresh-token`; "reported" is an answer
//! seen in client libraries' issue trackers (trading-ig, ig-client) where IG
//! documents nothing; "IG limits" is IG Labs' FAQ on allowances.

use std::time::Duration;

use super::endpoint::Endpoint;
use crate::error::{ActionRequired, ApiError, Error};

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

/// Back-off durations [`action_for`] hands out.
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

/// What an error answer (any non-2xx, non-3xx status) to `endpoint` means.
///
/// ```
/// use std::time::Duration;
/// use broker_session::ig::{Action, BackOffs, Endpoint, action_for};
///
/// let b = BackOffs { allowance: Duration::from_secs(60), login_throttle: Duration::from_secs(180) };
/// let a = action_for(Endpoint::Application, 401, Some("error.security.client-token-invalid"), b);
/// assert!(matches!(a, Action::Relogin(_)));
/// ```
#[must_use]
pub fn action_for(endpoint: Endpoint, status: u16, code: Option<&str>, b: BackOffs) -> Action {
    let api = ApiError::new(status, code);
    let code = code.unwrap_or("");
    let is_login = endpoint.is_login();

    // Exact codes first: they say more than the status.
    match code {
        // Reported (trading-ig#202) and listed by IG's Ruby client: bad credentials.
        // Fatal, never retried: repeated failures lock the account.
        "error.security.invalid-details" | "error.security.too-many-failed-attempts" => {
            return Action::Close(Error::CredentialsRejected(api));
        }
        // Reported by many projects for logins in quick succession ("wait 2-3
        // minutes"): back off; not a credentials error.
        LOGIN_THROTTLED if is_login => {
            return Action::BackOff {
                error: api,
                retry_after: b.login_throttle,
            };
        }
        // IG reference: a person must act (encrypt the password, fill forms, accept
        // agreements, set a preferred account).
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
        // IG limits: the historical-data allowance is a weekly quota; waiting a
        // minute does not help, so fail fast.
        HISTORICAL_ALLOWANCE => {
            return Action::Fail(Error::Throttled {
                error: api,
                retry_after: Duration::from_secs(7 * 24 * 3600),
            });
        }
        // IG reference (refresh-token), ig-client: the v3 access token expired.
        // Refresh once (on the refresh itself it is a failed refresh: the 401 rule).
        "error.security.oauth-token-invalid" if !is_login && endpoint != Endpoint::Refresh => {
            return Action::Refresh(api);
        }
        // Reported (412, trading-ig#66): already on that account.
        "error.switch.accountId-must-be-different" if endpoint == Endpoint::Switch => {
            return Action::AlreadyDone(api);
        }
        // Listed by IG's Ruby client as server-side failures: limited retry.
        "error.security.generic" | "error.security.get.session.timeout" => {
            return Action::Retry(api);
        }
        _ => {}
    }
    // Reported (403, trading-ig#203) and IG limits: an allowance is used up. Back
    // off; logging in again would spend more of it.
    if code.starts_with("error.public-api.exceeded-") && code.ends_with("allowance") {
        return Action::BackOff {
            error: api,
            retry_after: b.allowance,
        };
    }
    // IG reference and the Ruby client's list: key and account problems are fatal.
    // An account code on an application call may concern only that call (another
    // account's data, say): it falls through to the status rules, so a 401 gets one
    // re-login, whose own answer closes the session if the account really is barred.
    if is_key_problem(code) || (is_account_problem(code) && endpoint != Endpoint::Application) {
        return Action::Close(Error::Rejected(api));
    }
    // HTTP 429, rare at IG and without a body: throttling of unknown scope, back off.
    if status == 429 {
        return Action::BackOff {
            error: api,
            retry_after: b.allowance,
        };
    }
    // HTTP 5xx: transient; the machine bounds the attempts.
    if status >= 500 {
        return Action::Retry(api);
    }
    // A logout refused as unauthorized: the session is already gone.
    if endpoint == Endpoint::Logout && status == 401 {
        return Action::AlreadyDone(api);
    }
    // IG reference (`client-token-invalid`, `account-token-invalid`) and reported
    // (a bare 401 after a switch or a login elsewhere, ig-client#93): re-login once.
    if status == 401 {
        return match endpoint {
            // Never retry a login IG refused: repeated failures lock the account.
            e if e.is_login() => Action::Close(Error::CredentialsRejected(api)),
            // A refused refresh token: the caller falls back to one login.
            Endpoint::Refresh => Action::Fail(Error::Unauthorized(api)),
            _ => Action::Relogin(api),
        };
    }
    // IG reference (`invalid.input`, `validation.*`, `switch.*`): the request is
    // wrong. Fatal at login, the operation's failure elsewhere.
    if is_login {
        // Anything else refused at login is configuration; retrying cannot fix it.
        return Action::Close(Error::Rejected(api));
    }
    Action::Fail(Error::Rejected(api))
}

/// IG reference and the Ruby client's list: the API key is missing, wrong, revoked
/// or not allowed here.
fn is_key_problem(code: &str) -> bool {
    code.starts_with("error.security.api-key-")
        || code.starts_with("unauthorised.api-key")
        || code == "unauthorised.clientId.api-key.mismatch"
        || code == "endpoint.unavailable.for.api-key"
        || code == "error.security.invalid-application"
}

/// IG reference (most) and the Ruby client's list: the account cannot be used.
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
        action_for(e, s, (!code.is_empty()).then_some(code), B)
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
            c(Endpoint::LoginV3, 401, "error.security.account-suspended"),
            Action::Close(Error::Rejected(_))
        ));
    }

    #[test]
    fn spec_table() {
        use Endpoint::{Application, Logout, Refresh, Switch};
        let login = Endpoint::LoginV2;
        let read = Endpoint::ReadSession {
            fetch_tokens: false,
        };
        assert!(matches!(
            c(login, 401, "error.security.invalid-details"),
            Action::Close(Error::CredentialsRejected(_))
        ));
        assert!(matches!(
            c(login, 403, "error.security.api-key-invalid"),
            Action::Close(Error::Rejected(_))
        ));
        assert!(matches!(
            c(login, 400, "error.security.api-key-missing"),
            Action::Close(Error::Rejected(_))
        ));
        assert!(matches!(
            c(
                login,
                400,
                "validation.pattern.invalid.authenticationRequest.identifier"
            ),
            Action::Close(Error::Rejected(_))
        ));
        assert_eq!(
            c(login, 401, LOGIN_THROTTLED),
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
        assert!(matches!(c(read, 429, ""), Action::BackOff { .. }));
        assert!(matches!(c(read, 503, ""), Action::Retry(_)));
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
            c(login, 400, "error.public-api.failure.encryption.required"),
            Action::Close(Error::ActionRequired(ActionRequired::EncryptionRequired))
        ));
        assert!(matches!(
            c(login, 401, "error.public-api.failure.kyc.required"),
            Action::Close(Error::ActionRequired(ActionRequired::Forms { .. }))
        ));
        assert!(matches!(
            c(login, 401, "weird"),
            Action::Close(Error::CredentialsRejected(_))
        ));
        assert!(matches!(c(login, 500, ""), Action::Retry(_)));
    }
}
