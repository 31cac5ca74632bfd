//! A builder for [`IgConfig`] with one named step per credential, so the API key and
//! the identifier cannot be swapped by position.

use super::{IgConfig, IgEnvironment, LoginFlow};
use crate::error::{Error, UsageError};
use crate::secret::{ApiKey, Password};

impl IgConfig {
    /// Starts a configuration for `environment` whose credentials are set by name.
    /// Every other setting starts at its documented default; [`build`] checks the
    /// result as [`IgSession::new`](super::IgSession::new) would.
    ///
    /// [`build`]: IgConfigBuilder::build
    ///
    /// ```
    /// use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
    ///
    /// let config = IgConfig::builder(IgEnvironment::Demo)
    ///     .api_key("my-api-key")
    ///     .identifier("my-user")
    ///     .password("my-password")
    ///     .login_flow(LoginFlow::V3)
    ///     .build()?;
    /// assert_eq!(config.identifier, "my-user");
    ///
    /// // A forgotten step is an error that names it.
    /// let missing = IgConfig::builder(IgEnvironment::Demo).api_key("k").password("p").build();
    /// assert!(missing.unwrap_err().to_string().contains("identifier"));
    /// # Ok::<(), broker_session::Error>(())
    /// ```
    pub fn builder(environment: IgEnvironment) -> IgConfigBuilder {
        IgConfigBuilder {
            environment,
            api_key: None,
            identifier: None,
            password: None,
            login_flow: LoginFlow::default(),
            account_id: None,
        }
    }
}

/// Builds an [`IgConfig`] step by step; start with [`IgConfig::builder`].
///
/// `Debug` never shows the API key or the password.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct IgConfigBuilder {
    environment: IgEnvironment,
    api_key: Option<ApiKey>,
    identifier: Option<String>,
    password: Option<Password>,
    login_flow: LoginFlow,
    account_id: Option<String>,
}

impl IgConfigBuilder {
    /// The API key, sent as `X-IG-API-KEY` (demo and live have different ones).
    pub fn api_key(mut self, api_key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// The login username (IG's `identifier`; not an e-mail address).
    pub fn identifier(mut self, identifier: impl Into<String>) -> Self {
        self.identifier = Some(identifier.into());
        self
    }

    /// The login password.
    pub fn password(mut self, password: impl Into<Password>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How to log in. Default [`LoginFlow::V2`].
    pub fn login_flow(mut self, login_flow: LoginFlow) -> Self {
        self.login_flow = login_flow;
        self
    }

    /// An account to select after every login ([`IgConfig::account_id`]). Default:
    /// stay on the account IG selects.
    pub fn account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = Some(account_id.into());
        self
    }

    /// The configuration, with every setting not named here at its documented
    /// default (change the public fields of the result to adjust them).
    ///
    /// # Errors
    /// [`Error::Usage`] with [`UsageError::InvalidArgument`] naming the field
    /// (`api_key`, `identifier`, `password`) when a credential was not given or is
    /// empty, or naming the setting that cannot work (an `environment` URL that is
    /// not absolute `http(s)`, the web-platform login on demo).
    pub fn build(self) -> Result<IgConfig, Error> {
        fn given<T>(
            value: Option<T>,
            what: &'static str,
            empty: fn(&T) -> bool,
        ) -> Result<T, Error> {
            match value {
                None => Err(UsageError::InvalidArgument {
                    what,
                    reason: "not set: call this builder step before `build`",
                }
                .into()),
                Some(v) if empty(&v) => Err(UsageError::InvalidArgument {
                    what,
                    reason: "empty",
                }
                .into()),
                Some(v) => Ok(v),
            }
        }
        let api_key = given(self.api_key, "api_key", ApiKey::is_empty)?;
        let identifier = given(self.identifier, "identifier", |s| s.trim().is_empty())?;
        let password = given(self.password, "password", Password::is_empty)?;
        let mut config = IgConfig::new(self.environment, api_key, identifier, password);
        config.login_flow = self.login_flow;
        config.account_id = self.account_id;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_or_empty_credential_is_named() {
        let full = || {
            IgConfig::builder(IgEnvironment::Live)
                .api_key("k")
                .identifier("u")
                .password("p")
        };
        assert!(full().build().is_ok());
        let cases = [
            (full().api_key(""), "api_key"),
            (full().identifier(" "), "identifier"),
            (full().password(""), "password"),
            (
                IgConfig::builder(IgEnvironment::Live)
                    .identifier("u")
                    .password("p"),
                "api_key",
            ),
            (
                IgConfig::builder(IgEnvironment::Live)
                    .api_key("k")
                    .identifier("u"),
                "password",
            ),
        ];
        for (builder, field) in cases {
            match builder.build() {
                Err(Error::Usage(UsageError::InvalidArgument { what, .. })) => {
                    assert_eq!(what, field);
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn build_checks_what_the_session_would_and_debug_redacts() {
        let b = IgConfig::builder(IgEnvironment::Custom("ftp://x".into()))
            .api_key("key-123")
            .identifier("u")
            .password("pw-xyz");
        let d = format!("{b:?}");
        assert!(!d.contains("key-123") && !d.contains("pw-xyz"), "{d}");
        assert!(b.build().is_err());
        let c = IgConfig::builder(IgEnvironment::Demo)
            .api_key("k")
            .identifier("u")
            .password("p")
            .login_flow(LoginFlow::V3)
            .account_id("XYZ")
            .build()
            .unwrap();
        assert_eq!(c.login_flow, LoginFlow::V3);
        assert_eq!(c.account_id.as_deref(), Some("XYZ"));
        assert_eq!(c.password.expose_secret(), "p");
    }
}
