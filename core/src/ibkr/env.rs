//! [`IbkrConfig`] from the `IBKR_*` variables (the table is in [`crate::env`]).

use std::time::Duration;

use super::config::OAUTH_BASE_URL;
use super::{IbkrConfig, OAuthConfig};
use crate::env::{EnvError, FromLookup, Vars};
use crate::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};

const OAUTH: &str = "an IBKR OAuth 1.0a session needs it";
const KEY: &str = "an IBKR OAuth 1.0a session needs it (the PEM text, or a path in <NAME>_FILE)";

impl IbkrConfig {
    /// Reads the `IBKR_*` variables through `lookup` (see the table in
    /// [`broker_session::env`](crate::env)): a gateway session when
    /// `IBKR_GATEWAY_URL` is set, an OAuth 1.0a session when `IBKR_CONSUMER_KEY` or
    /// `IBKR_BASE_URL` is. Every setting without a variable is at its documented
    /// default. Pure: `lookup` does the reading; the transports'
    /// `IbkrConfig::from_env()` read the process environment and `*_FILE` files
    /// (for the keys: `IBKR_ENCRYPTION_KEY_FILE=enc.pem`).
    ///
    /// ```
    /// use broker_session::ibkr::{IbkrAuth, IbkrConfig};
    ///
    /// let config = IbkrConfig::from_lookup(|name| match name {
    ///     "IBKR_GATEWAY_URL" => Some("https://localhost:5000/v1/api".into()),
    ///     "IBKR_COMPETE" => Some("false".into()),
    ///     _ => None,
    /// })?;
    /// assert!(matches!(config.auth, IbkrAuth::Gateway));
    /// assert!(!config.compete);
    /// # Ok::<(), broker_session::env::EnvError>(())
    /// ```
    ///
    /// # Errors
    /// [`EnvError::Missing`] naming the first required variable not set (with
    /// nothing set: `IBKR_GATEWAY_URL`); [`EnvError::Invalid`] naming a variable
    /// whose value cannot work, or `IBKR_GATEWAY_URL` when OAuth variables are set
    /// too (the value is never shown).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let vars = Vars(lookup);
        let oauth_wanted =
            vars.get("IBKR_CONSUMER_KEY").is_some() || vars.get("IBKR_BASE_URL").is_some();
        let mut config = match vars.get("IBKR_GATEWAY_URL") {
            Some(_) if oauth_wanted => {
                return Err(EnvError::Invalid {
                    name: "IBKR_GATEWAY_URL",
                    reason: "set either it (gateway) or IBKR_CONSUMER_KEY and IBKR_BASE_URL (OAuth 1.0a), not both",
                });
            }
            Some(url) => {
                let mut config = Self::gateway();
                config.base_url = url.trim().to_owned();
                config
            }
            None if oauth_wanted => {
                let mut oauth = OAuthConfig::new(
                    vars.required("IBKR_CONSUMER_KEY", OAUTH)?.trim(),
                    AccessToken::new(vars.required("IBKR_ACCESS_TOKEN", OAUTH)?.trim()),
                    AccessTokenSecret::new(
                        vars.required("IBKR_ACCESS_TOKEN_SECRET", OAUTH)?.trim(),
                    ),
                    PrivateKeyPem::new(vars.required("IBKR_ENCRYPTION_KEY", KEY)?),
                    PrivateKeyPem::new(vars.required("IBKR_SIGNATURE_KEY", KEY)?),
                    vars.required("IBKR_DH_PRIME", OAUTH)?.trim(),
                );
                if let Some(realm) = vars.get("IBKR_REALM") {
                    realm.trim().clone_into(&mut oauth.realm);
                }
                let mut config = Self::oauth(oauth);
                config.base_url = vars
                    .get("IBKR_BASE_URL")
                    .map_or_else(|| OAUTH_BASE_URL.to_owned(), |u| u.trim().to_owned());
                config
            }
            None => {
                return Err(EnvError::Missing {
                    name: "IBKR_GATEWAY_URL",
                    needed_for: "set it for the Client Portal Gateway, or IBKR_CONSUMER_KEY and the other OAuth 1.0a variables",
                });
            }
        };
        let url_var = if matches!(config.auth, super::IbkrAuth::Gateway) {
            "IBKR_GATEWAY_URL"
        } else {
            "IBKR_BASE_URL"
        };
        if !is_http_url(&config.base_url) {
            return Err(EnvError::Invalid {
                name: url_var,
                reason: "must be an absolute http(s) URL, e.g. https://localhost:5000/v1/api",
            });
        }
        config.compete = vars.flag("IBKR_COMPETE", config.compete)?;
        config.tickle_interval = vars.seconds("IBKR_TICKLE_SECS", config.tickle_interval)?;
        if config.tickle_interval < Duration::from_secs(1) {
            return Err(EnvError::Invalid {
                name: "IBKR_TICKLE_SECS",
                reason: "must be at least 1 (IBKR's limit for /tickle)",
            });
        }
        Ok(config)
    }
}

impl FromLookup for IbkrConfig {
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        Self::from_lookup(lookup)
    }
}

fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|u| {
        u.authority().is_some()
            && (u.scheme() == Some(&http::uri::Scheme::HTTPS)
                || u.scheme() == Some(&http::uri::Scheme::HTTP))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ibkr::IbkrAuth;

    fn read(vars: &[(&str, &str)]) -> Result<IbkrConfig, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        IbkrConfig::from_lookup(|name| map.get(name).cloned())
    }

    const OAUTH_VARS: [(&str, &str); 6] = [
        ("IBKR_CONSUMER_KEY", "TESTCONS"),
        ("IBKR_ACCESS_TOKEN", "0123456789abcdef0123"),
        ("IBKR_ACCESS_TOKEN_SECRET", "c2VjcmV0LXNlY3JldA=="),
        ("IBKR_ENCRYPTION_KEY", "-----BEGIN PRIVATE KEY-----enc"),
        ("IBKR_SIGNATURE_KEY", "-----BEGIN PRIVATE KEY-----sig"),
        ("IBKR_DH_PRIME", "ffff"),
    ];

    #[test]
    fn gateway_from_its_url() {
        let c = read(&[
            ("IBKR_GATEWAY_URL", "https://localhost:5001/v1/api"),
            ("IBKR_TICKLE_SECS", "45"),
        ])
        .unwrap();
        assert!(matches!(c.auth, IbkrAuth::Gateway));
        assert_eq!(c.base_url, "https://localhost:5001/v1/api");
        assert_eq!(c.tickle_interval, Duration::from_secs(45));
        assert!(c.compete);
    }

    #[test]
    fn oauth_from_its_variables() {
        let mut vars = OAUTH_VARS.to_vec();
        vars.push(("IBKR_REALM", "test_realm"));
        let c = read(&vars).unwrap();
        assert_eq!(c.base_url, OAUTH_BASE_URL);
        let IbkrAuth::OAuth(o) = &c.auth else {
            panic!("not OAuth")
        };
        assert_eq!(o.consumer_key, "TESTCONS");
        assert_eq!(o.access_token.expose_secret(), "0123456789abcdef0123");
        assert_eq!(
            o.encryption_key.expose_secret(),
            "-----BEGIN PRIVATE KEY-----enc"
        );
        assert_eq!(
            o.signature_key.expose_secret(),
            "-----BEGIN PRIVATE KEY-----sig"
        );
        assert_eq!(o.dh_prime, "ffff");
        assert_eq!(o.realm, "test_realm");
    }

    #[test]
    fn each_missing_oauth_variable_is_named() {
        for (i, (name, _)) in OAUTH_VARS.iter().enumerate().skip(1) {
            let mut vars = OAUTH_VARS.to_vec();
            vars.remove(i);
            match read(&vars) {
                Err(EnvError::Missing { name: n, .. }) => assert_eq!(n, *name),
                other => panic!("{name}: {other:?}"),
            }
        }
        match read(&[("IBKR_BASE_URL", "https://api.ibkr.com/v1/api")]) {
            Err(EnvError::Missing { name, .. }) => assert_eq!(name, "IBKR_CONSUMER_KEY"),
            other => panic!("{other:?}"),
        }
        match read(&[]) {
            Err(EnvError::Missing { name, .. }) => assert_eq!(name, "IBKR_GATEWAY_URL"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conflicting_or_invalid_values_are_named_never_shown() {
        let mut vars = OAUTH_VARS.to_vec();
        vars.push(("IBKR_GATEWAY_URL", "https://localhost:5000/v1/api"));
        assert!(matches!(
            read(&vars),
            Err(EnvError::Invalid {
                name: "IBKR_GATEWAY_URL",
                ..
            })
        ));
        for (name, value) in [
            ("IBKR_COMPETE", "0123456789abcdef0123"),
            ("IBKR_TICKLE_SECS", "0123456789abcdef0123"),
            ("IBKR_TICKLE_SECS", "0"),
        ] {
            let mut vars = OAUTH_VARS.to_vec();
            vars.push((name, value));
            let e = read(&vars).unwrap_err();
            assert!(
                matches!(e, EnvError::Invalid { name: n, .. } if n == name),
                "{e:?}"
            );
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        }
        let e = read(&[("IBKR_GATEWAY_URL", "localhost:5000")]).unwrap_err();
        assert!(
            matches!(
                e,
                EnvError::Invalid {
                    name: "IBKR_GATEWAY_URL",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
