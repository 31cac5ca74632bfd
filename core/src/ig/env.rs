//! [`IgConfig`] from the `IG_*` variables (the table is in [`crate::env`]).

use super::{IgConfig, IgEnvironment, LoginFlow};
use crate::env::{EnvError, FromLookup, Vars};

const NEEDED: &str = "an IG session needs it";

impl IgConfig {
    /// Reads the `IG_*` variables through `lookup` (see the table in
    /// [`broker_session::env`](crate::env)); every setting without a variable is at
    /// its documented default. Pure: `lookup` does the reading. The transports'
    /// `IgConfig::from_env()` read the process environment (and `IG_*_FILE` files).
    ///
    /// ```
    /// use broker_session::ig::{IgConfig, IgEnvironment};
    ///
    /// let config = IgConfig::from_lookup(|name| match name {
    ///     "IG_BASE_URL" => Some("https://demo-api.ig.com/gateway/deal".into()),
    ///     "IG_API_KEY" => Some("my-api-key".into()),
    ///     "IG_IDENTIFIER" => Some("my-user".into()),
    ///     "IG_PASSWORD" => Some("my-password".into()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(config.environment, IgEnvironment::Demo);
    /// # Ok::<(), broker_session::env::EnvError>(())
    /// ```
    ///
    /// # Errors
    /// [`EnvError::Missing`] naming the first required variable not set;
    /// [`EnvError::Invalid`] naming a variable whose value cannot work (never showing
    /// the value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let vars = Vars(lookup);
        let environment = environment(&vars.required("IG_BASE_URL", NEEDED)?)?;
        let mut config = Self::new(
            environment,
            vars.required("IG_API_KEY", NEEDED)?,
            vars.required("IG_IDENTIFIER", NEEDED)?,
            vars.required("IG_PASSWORD", NEEDED)?,
        );
        if let Some(flow) = vars.get("IG_FLOW") {
            config.login_flow = login_flow(&flow)?;
        }
        config.account_id = vars.get("IG_ACCOUNT_ID").map(|a| a.trim().to_owned());
        if config.validate().is_err() {
            return Err(EnvError::Invalid {
                name: "IG_BASE_URL",
                reason: "must be demo, live or an absolute http(s) URL (and the web-platform login is for live only)",
            });
        }
        Ok(config)
    }
}

impl FromLookup for IgConfig {
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        Self::from_lookup(lookup)
    }
}

fn environment(value: &str) -> Result<IgEnvironment, EnvError> {
    let v = value.trim();
    let url = v.trim_end_matches('/');
    Ok(
        if v.eq_ignore_ascii_case("demo") || url == IgEnvironment::Demo.base_url() {
            IgEnvironment::Demo
        } else if v.eq_ignore_ascii_case("live") || url == IgEnvironment::Live.base_url() {
            IgEnvironment::Live
        } else if v.contains("://") {
            IgEnvironment::Custom(v.to_owned())
        } else {
            return Err(EnvError::Invalid {
                name: "IG_BASE_URL",
                reason: "must be demo, live or an absolute http(s) URL",
            });
        },
    )
}

fn login_flow(value: &str) -> Result<LoginFlow, EnvError> {
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "v1" => LoginFlow::V1,
        "v2" => LoginFlow::V2,
        "v3" => LoginFlow::V3,
        "encrypted" | "encrypted-v2" => LoginFlow::EncryptedV2,
        "web" | "web-platform" => LoginFlow::WebPlatform,
        _ => {
            return Err(EnvError::Invalid {
                name: "IG_FLOW",
                reason: "must be v1, v2, v3, encrypted or web",
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<IgConfig, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        IgConfig::from_lookup(|name| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 4] = [
        ("IG_BASE_URL", "live"),
        ("IG_API_KEY", "key-123"),
        ("IG_IDENTIFIER", "user"),
        ("IG_PASSWORD", "pw-secret"),
    ];

    #[test]
    fn every_variable_lands_in_its_field() {
        let mut vars = BASE.to_vec();
        vars.extend([("IG_FLOW", " V3 "), ("IG_ACCOUNT_ID", "XYZ")]);
        let c = read(&vars).unwrap();
        assert_eq!(c.environment, IgEnvironment::Live);
        assert_eq!(c.api_key.expose_secret(), "key-123");
        assert_eq!(c.identifier, "user");
        assert_eq!(c.password.expose_secret(), "pw-secret");
        assert_eq!(c.login_flow, LoginFlow::V3);
        assert_eq!(c.account_id.as_deref(), Some("XYZ"));
        let mut custom = BASE.to_vec();
        custom[0] = ("IG_BASE_URL", "https://127.0.0.1:8443/gateway/deal/");
        assert_eq!(
            read(&custom).unwrap().environment,
            IgEnvironment::Custom("https://127.0.0.1:8443/gateway/deal/".into())
        );
    }

    #[test]
    fn missing_and_blank_variables_are_named() {
        for (i, (name, _)) in BASE.iter().enumerate() {
            let mut vars = BASE.to_vec();
            vars[i].1 = "  ";
            match read(&vars) {
                Err(EnvError::Missing { name: n, .. }) => assert_eq!(n, *name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_values_are_named_never_shown() {
        let mut vars = BASE.to_vec();
        vars.push(("IG_FLOW", "pw-secret"));
        let e = read(&vars).unwrap_err();
        assert!(
            matches!(
                e,
                EnvError::Invalid {
                    name: "IG_FLOW",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.to_string().contains("pw-secret"), "{e}");
        let mut vars = BASE.to_vec();
        vars[0].1 = "ftp://example.com/x";
        let e = read(&vars).unwrap_err();
        assert!(
            matches!(
                e,
                EnvError::Invalid {
                    name: "IG_BASE_URL",
                    ..
                }
            ),
            "{e:?}"
        );
        let mut vars = BASE.to_vec();
        vars[0].1 = "demo";
        vars.push(("IG_FLOW", "web"));
        assert!(read(&vars).is_err(), "the web-platform login is live only");
    }
}
