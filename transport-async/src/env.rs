//! Configurations from the process environment.

use broker_session::env::{EnvError, FromLookup, from_vars_and_files};

/// Reads a broker configuration from the process environment: the `IG_*` or
/// `IBKR_*` variables in the tables of [`broker_session::env`], each of which may
/// instead name a file in `<NAME>_FILE` (e.g. `IBKR_ENCRYPTION_KEY_FILE=enc.pem`).
///
/// ```no_run
/// use broker_session_hyper::{FromEnv, IbkrConfig, IgConfig};
///
/// let ig = IgConfig::from_env()?; // IG_BASE_URL, IG_API_KEY, IG_IDENTIFIER, IG_PASSWORD …
/// let ibkr = IbkrConfig::from_env()?; // IBKR_GATEWAY_URL, or the OAuth 1.0a variables
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait FromEnv: Sized {
    /// The configuration from the environment variables (and `*_FILE` files).
    ///
    /// # Errors
    /// An [`EnvError`] naming the variable that is missing or unusable, or the
    /// `*_FILE` that cannot be read; values are never shown.
    fn from_env() -> Result<Self, EnvError>;
}

impl<T: FromLookup> FromEnv for T {
    fn from_env() -> Result<Self, EnvError> {
        from_vars_and_files(
            |name| std::env::var(name).ok(),
            |path| std::fs::read_to_string(path).map_err(|e| e.to_string()),
        )
    }
}
