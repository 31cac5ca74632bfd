//! Configuration from environment variables: one documented contract for both brokers,
//! shared by the examples and your programs.
//!
//! The core reads nothing itself: [`IgConfig::from_lookup`] and
//! [`IbkrConfig::from_lookup`] ask a function you give for each variable (pure, so
//! tests pass a map). The transports' `from_env()` (`broker_session_ureq::FromEnv`,
//! `broker_session_hyper::FromEnv`) ask the process environment, and also read
//! `<NAME>_FILE` files (see below).
//!
//! A variable set to an empty or blank value counts as not set. Errors name the
//! variable and never show its value.
//!
//! ## IG ([`IgConfig`])
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IG_BASE_URL` | `demo`, `live`, or a REST base URL (`https://demo-api.ig.com/gateway/deal`, `https://api.ig.com/gateway/deal`, a test server) | required |
//! | `IG_API_KEY` | the API key (`X-IG-API-KEY`) | required |
//! | `IG_IDENTIFIER` | the login username | required |
//! | `IG_PASSWORD` | the login password | required |
//! | `IG_FLOW` | [`LoginFlow`]: `v1`, `v2`, `v3`, `encrypted` (v2 with an RSA-encrypted password) or `web` (unofficial) | `v2` |
//! | `IG_ACCOUNT_ID` | an account to select after every login ([`IgConfig::account_id`]) | IG's choice |
//!
//! ## IBKR ([`IbkrConfig`])
//!
//! Set `IBKR_GATEWAY_URL` for the Client Portal Gateway, or the OAuth variables for
//! OAuth 1.0a direct access, not both.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IBKR_GATEWAY_URL` | gateway: its API base, e.g. `https://localhost:5000/v1/api` | — |
//! | `IBKR_BASE_URL` | OAuth: the API base | `https://api.ibkr.com/v1/api` |
//! | `IBKR_CONSUMER_KEY` | OAuth: the consumer key | required for OAuth |
//! | `IBKR_ACCESS_TOKEN` | OAuth: the access token | required for OAuth |
//! | `IBKR_ACCESS_TOKEN_SECRET` | OAuth: the access token secret (base64) | required for OAuth |
//! | `IBKR_ENCRYPTION_KEY` | OAuth: the private encryption key, PEM text (or `IBKR_ENCRYPTION_KEY_FILE`) | required for OAuth |
//! | `IBKR_SIGNATURE_KEY` | OAuth: the private signature key, PEM text (or `IBKR_SIGNATURE_KEY_FILE`) | required for OAuth |
//! | `IBKR_DH_PRIME` | OAuth: the Diffie-Hellman prime, hex or the `dhparam.pem` text | required for OAuth |
//! | `IBKR_REALM` | OAuth: the realm (`test_realm` for IBKR's test consumer) | `limited_poa` |
//! | `IBKR_COMPETE` | both: `true` takes over a brokerage session open elsewhere ([`IbkrConfig::compete`]) | `true` |
//! | `IBKR_TICKLE_SECS` | both: keep-alive interval in seconds ([`IbkrConfig::tickle_interval`]) | `60` |
//!
//! ## Files: `<NAME>_FILE`
//!
//! With the transports' `from_env()` (or [`from_vars_and_files`]), every variable
//! above can instead be given as a path in `<NAME>_FILE`, whose file holds the value
//! (one trailing line break is dropped): `IBKR_ENCRYPTION_KEY_FILE=enc.pem`,
//! `IG_PASSWORD_FILE=/run/secrets/ig`. `<NAME>` itself wins when both are set.
//! [`IgConfig::from_lookup`] and [`IbkrConfig::from_lookup`] see only what your
//! lookup returns.
//!
//! ```
//! use std::collections::HashMap;
//! use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
//!
//! let vars = HashMap::from([
//!     ("IG_BASE_URL", "demo"),
//!     ("IG_API_KEY", "my-api-key"),
//!     ("IG_IDENTIFIER", "my-user"),
//!     ("IG_PASSWORD", "my-password"),
//!     ("IG_FLOW", "v3"),
//! ]);
//! let config = IgConfig::from_lookup(|name| vars.get(name).map(|v| v.to_string()))?;
//! assert_eq!(config.environment, IgEnvironment::Demo);
//! assert_eq!(config.login_flow, LoginFlow::V3);
//!
//! // A missing variable is named; no value is ever shown.
//! let err = IgConfig::from_lookup(|name| (name == "IG_BASE_URL").then(|| "live".into()));
//! assert_eq!(err.unwrap_err().to_string(), "IG_API_KEY is not set: an IG session needs it");
//! # Ok::<(), broker_session::env::EnvError>(())
//! ```

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

#[cfg(doc)]
use crate::ibkr::IbkrConfig;
#[cfg(doc)]
use crate::ig::{IgConfig, LoginFlow};

/// Why a configuration could not be read from the environment. Never holds a value
/// that was read: only variable names, and for an unreadable file its path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvError {
    /// A required variable is not set (or is blank).
    Missing {
        /// The variable.
        name: &'static str,
        /// What needs it, or what to set instead.
        needed_for: &'static str,
    },
    /// A variable is set to a value that cannot work.
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A `<NAME>_FILE` variable names a file that cannot be read.
    Unreadable {
        /// The variable, e.g. `IBKR_ENCRYPTION_KEY_FILE`.
        name: String,
        /// The path and the operating system's reason.
        reason: String,
    },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name, needed_for } => write!(f, "{name} is not set: {needed_for}"),
            Self::Invalid { name, reason } => write!(f, "invalid {name}: {reason}"),
            Self::Unreadable { name, reason } => write!(f, "{name}: {reason}"),
        }
    }
}

impl std::error::Error for EnvError {}

/// A configuration that can be read from named variables. Implemented by
/// [`IgConfig`] and [`IbkrConfig`]; the variables are in the [module](self) tables.
pub trait FromLookup: Sized {
    /// Reads the configuration, asking `lookup` for each variable by name (`None`
    /// when it is not set).
    ///
    /// # Errors
    /// [`EnvError::Missing`] or [`EnvError::Invalid`], naming the variable.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError>;
}

/// Reads a configuration from variables and `<NAME>_FILE` files, with the reading
/// done by the functions you pass (the transports' `from_env()` pass the process
/// environment and the file system).
///
/// For each variable the configuration asks for: `var(NAME)` if set and not blank;
/// otherwise, if `var(NAME_FILE)` is set, the contents of that file
/// (`read_file(path)`) without one trailing line break.
///
/// # Errors
/// [`EnvError::Unreadable`] when a named file cannot be read (`read_file`'s error
/// text goes into it), otherwise as [`FromLookup::from_lookup`].
///
/// ```
/// use broker_session::env::from_vars_and_files;
/// use broker_session::ig::IgConfig;
///
/// let var = |name: &str| match name {
///     "IG_BASE_URL" => Some("live".to_owned()),
///     "IG_API_KEY" => Some("my-api-key".to_owned()),
///     "IG_IDENTIFIER" => Some("my-user".to_owned()),
///     "IG_PASSWORD_FILE" => Some("/run/secrets/ig".to_owned()),
///     _ => None,
/// };
/// let read_file = |path: &str| match path {
///     "/run/secrets/ig" => Ok("my-password\n".to_owned()),
///     _ => Err("no such file".to_owned()),
/// };
/// let config: IgConfig = from_vars_and_files(var, read_file)?;
/// assert_eq!(config.password.expose_secret(), "my-password");
/// # Ok::<(), broker_session::env::EnvError>(())
/// ```
pub fn from_vars_and_files<T: FromLookup>(
    var: impl Fn(&str) -> Option<String>,
    read_file: impl Fn(&str) -> Result<String, String>,
) -> Result<T, EnvError> {
    let unreadable = RefCell::new(None);
    let lookup = |name: &str| {
        if let Some(value) = var(name).filter(|v| !v.trim().is_empty()) {
            return Some(value);
        }
        let file_var = format!("{name}_FILE");
        let path = var(&file_var).filter(|p| !p.trim().is_empty())?;
        match read_file(path.trim()) {
            Ok(mut text) => {
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Some(text)
            }
            Err(reason) => {
                unreadable.borrow_mut().get_or_insert(EnvError::Unreadable {
                    reason: format!("cannot read {}: {reason}", path.trim()),
                    name: file_var,
                });
                None
            }
        }
    };
    let result = T::from_lookup(lookup);
    // A file that could not be read explains a "missing" variable better.
    match unreadable.into_inner() {
        Some(e) => Err(e),
        None => result,
    }
}

/// The variables as the brokers' readers use them: blank counts as unset.
pub(crate) struct Vars<F>(pub(crate) F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    /// The value, if set and not blank (kept as given: a password may have spaces).
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    /// The value, or [`EnvError::Missing`].
    pub(crate) fn required(
        &self,
        name: &'static str,
        needed_for: &'static str,
    ) -> Result<String, EnvError> {
        self.get(name).ok_or(EnvError::Missing { name, needed_for })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
    pub(crate) fn flag(&self, name: &'static str, default: bool) -> Result<bool, EnvError> {
        match self.get(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some(v)
                if ["1", "true", "yes"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(true)
            }
            Some(v)
                if ["0", "false", "no"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Ok(false)
            }
            Some(_) => Err(EnvError::Invalid {
                name,
                reason: "must be true or false",
            }),
        }
    }

    /// A whole number of seconds, or `default` when unset.
    pub(crate) fn seconds(
        &self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, EnvError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| EnvError::Invalid {
                    name,
                    reason: "must be a whole number of seconds",
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ig::IgConfig;

    #[test]
    fn name_wins_over_its_file_and_unreadable_files_are_named() {
        let var = |name: &str| match name {
            "IG_BASE_URL" => Some("demo".to_owned()),
            "IG_API_KEY" => Some("k".to_owned()),
            "IG_API_KEY_FILE" => Some("/nope".to_owned()),
            "IG_IDENTIFIER_FILE" => Some("/id".to_owned()),
            "IG_PASSWORD_FILE" => Some("/missing".to_owned()),
            _ => None,
        };
        let read = |path: &str| match path {
            "/id" => Ok("user\r\n".to_owned()),
            _ => Err("No such file or directory".to_owned()),
        };
        let err = from_vars_and_files::<IgConfig>(var, read).unwrap_err();
        assert_eq!(
            err,
            EnvError::Unreadable {
                name: "IG_PASSWORD_FILE".into(),
                reason: "cannot read /missing: No such file or directory".into()
            }
        );
        let var2 = |name: &str| match name {
            "IG_PASSWORD" => Some("p w".to_owned()),
            other => var(other),
        };
        let config: IgConfig = from_vars_and_files(var2, read).unwrap();
        assert_eq!(config.api_key.expose_secret(), "k");
        assert_eq!(config.identifier, "user");
        assert_eq!(config.password.expose_secret(), "p w");
    }
}
