//! Configuration of an IG session: environment, credentials, login flow, timings.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::encode::Prepared;
use crate::error::{Error, UsageError};
use crate::secret::{ApiKey, Password};

/// The IG environment: which REST base URL the session talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgEnvironment {
    /// IG's demo environment, `https://demo-api.ig.com/gateway/deal`. Demo needs its own
    /// API key and username.
    Demo,
    /// IG's live environment, `https://api.ig.com/gateway/deal`.
    Live,
    /// Any other base URL (a proxy, a test server). Must be `http` or `https` with a
    /// host; requests go to `{base}/session` and so on.
    Custom(String),
}

impl IgEnvironment {
    /// The REST base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        match self {
            Self::Demo => "https://demo-api.ig.com/gateway/deal",
            Self::Live => "https://api.ig.com/gateway/deal",
            Self::Custom(url) => url.trim_end_matches('/'),
        }
    }
}

/// How the session logs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoginFlow {
    /// `POST /session` Version 1: CST and X-SECURITY-TOKEN, like v2.
    V1,
    /// `POST /session` Version 2: CST and X-SECURITY-TOKEN in the response headers.
    /// The default: one login serves for hours, no refresh traffic, and the tokens
    /// double as Lightstreamer credentials.
    #[default]
    V2,
    /// `POST /session` Version 3: OAuth access and refresh tokens, refreshed before
    /// they expire (typically every minute). Needed when the default account is an
    /// ISA or share-dealing account; switching accounts costs no request.
    V3,
    /// `GET /session/encryptionKey`, then a v2 login with an RSA-encrypted password
    /// (`encryptedPassword: true`). Required for some regions (Singapore).
    EncryptedV2,
    /// The web platform's login, `POST https://api.ig.com/clientsecurity/session`.
    ///
    /// **Unofficial**: this endpoint is not part of IG's public REST API, is not
    /// supported by IG and may change or disappear without notice. Production only.
    /// Use it only if you know why you need it.
    WebPlatform,
}

/// The longest duration a configuration field takes effect with: one year.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The default URL of the web-platform login ([`LoginFlow::WebPlatform`]).
pub const WEB_PLATFORM_LOGIN_URL: &str = "https://api.ig.com/clientsecurity/session";

/// Everything an [`IgSession`](super::IgSession) needs.
///
/// Build it with [`IgConfig::builder`] (credentials by name), from environment
/// variables with [`IgConfig::from_lookup`], or with the positional
/// [`IgConfig::new`]; then adjust the public fields. Secrets are held in redacting
/// types, so `Debug` never shows them.
///
/// ```
/// use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
///
/// let mut config = IgConfig::builder(IgEnvironment::Demo)
///     .api_key("my-api-key")
///     .identifier("my-user")
///     .password("my-password")
///     .build()?;
/// config.login_flow = LoginFlow::V3;
/// assert!(!format!("{config:?}").contains("my-password"));
/// # Ok::<(), broker_session::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IgConfig {
    /// Where to connect. No default: demo and live need different keys and users.
    pub environment: IgEnvironment,
    /// The API key, sent as `X-IG-API-KEY` on every request.
    pub api_key: ApiKey,
    /// The login username (IG's `identifier`; not an e-mail address).
    pub identifier: String,
    /// The login password.
    pub password: Password,
    /// How to log in. Default [`LoginFlow::V2`].
    pub login_flow: LoginFlow,
    /// How long before a v3 access token expires it is refreshed. Default 10 s. Clamped
    /// to at most half the token's lifetime, so a short-lived token is never refreshed
    /// in a loop (and to at most a year).
    pub refresh_margin: Duration,
    /// How much earlier than [`refresh_margin`](Self::refresh_margin) a refresh may
    /// come, at random, so that sessions started together (100,000 created in one
    /// burst) do not all refresh in the same millisecond. Each refresh is due at a
    /// point drawn uniformly from `[margin, margin + spread]` before the token
    /// expires, drawn anew for every token. Default 5 s.
    ///
    /// Bounds: margin plus spread is clamped to half the token's lifetime, so a refresh
    /// always comes before the token expires and a short-lived token is never
    /// refreshed in a loop (at most a year). The draw comes from the session's seed
    /// (not from the refresh token or the clock): a test with a fixed
    /// [`RngSeed`](crate::RngSeed) sees the same schedule every run. `Duration::ZERO`
    /// refreshes exactly `refresh_margin` before expiry.
    pub refresh_spread: Duration,
    /// How long the session waits for the answer to one of its own requests before it
    /// treats the request as failed. Default 30 s; at most a year (longer values are
    /// clamped). A login whose answer does not come in time is never sent again.
    pub request_deadline: Duration,
    /// Attempts per session request on server errors (5xx) and transport failures,
    /// including the first. Default 3. Rejected credentials are never retried.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles on each further retry. Default 1 s; at
    /// most a year (longer values are clamped).
    pub retry_delay: Duration,
    /// How long to back off after an allowance error (`exceeded-*-allowance`, 403) or a
    /// 429. Default 60 s; at most a year (longer values are clamped).
    pub allowance_backoff: Duration,
    /// How long to back off when IG throttles logins (401
    /// `service.security.authentication.failure-invalid-client-security-token` on
    /// `POST /session`). Default 3 minutes; at most a year (longer values are clamped).
    pub login_throttle_backoff: Duration,
    /// An account to select after every login. Default `None` (stay on the account
    /// IG selects).
    pub account_id: Option<String>,
    /// After a v3 login, also fetch CST and X-SECURITY-TOKEN
    /// (`GET /session?fetchSessionTokens=true`) for Lightstreamer. Default `false`.
    pub fetch_streaming_tokens: bool,
    /// URL of the unofficial web-platform login. Default [`WEB_PLATFORM_LOGIN_URL`];
    /// overridable for tests.
    pub web_platform_url: String,
    /// The request parts derived from the fields above, shared by the sessions built
    /// from one `Arc` of this configuration (see [`SessionParts::of`]).
    parts: PartsCache,
}

impl IgConfig {
    /// A configuration with every setting at its documented default, from four
    /// positional arguments: environment, **API key**, **identifier**, password.
    /// The API key and the identifier are both strings, so swapping them compiles
    /// (and IG then rejects the login); [`IgConfig::builder`] names each one instead.
    /// Nothing is checked here; [`IgSession::new`](super::IgSession::new) checks.
    ///
    /// ```
    /// use broker_session::ig::{IgConfig, IgEnvironment};
    /// let config = IgConfig::new(IgEnvironment::Demo, "api-key", "identifier", "password");
    /// assert_eq!(config.identifier, "identifier");
    /// ```
    pub fn new(
        environment: IgEnvironment,
        api_key: impl Into<ApiKey>,
        identifier: impl Into<String>,
        password: impl Into<Password>,
    ) -> Self {
        Self {
            environment,
            api_key: api_key.into(),
            identifier: identifier.into(),
            password: password.into(),
            login_flow: LoginFlow::default(),
            refresh_margin: Duration::from_secs(10),
            refresh_spread: Duration::from_secs(5),
            request_deadline: Duration::from_secs(30),
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
            allowance_backoff: Duration::from_secs(60),
            login_throttle_backoff: Duration::from_secs(180),
            account_id: None,
            fetch_streaming_tokens: false,
            web_platform_url: WEB_PLATFORM_LOGIN_URL.to_owned(),
            parts: PartsCache::default(),
        }
    }

    fn durations(&mut self) -> [&mut Duration; 6] {
        [
            &mut self.refresh_margin,
            &mut self.refresh_spread,
            &mut self.request_deadline,
            &mut self.retry_delay,
            &mut self.allowance_backoff,
            &mut self.login_throttle_backoff,
        ]
    }

    /// Caps every duration at [`MAX_DURATION`], so no deadline computed from the
    /// configuration can come near `Instant`'s range.
    pub(crate) fn clamp(&mut self) {
        for d in self.durations() {
            *d = (*d).min(MAX_DURATION);
        }
    }

    /// Whether [`clamp`](Self::clamp) would change nothing.
    pub(crate) fn is_clamped(&self) -> bool {
        [
            self.refresh_margin,
            self.refresh_spread,
            self.request_deadline,
            self.retry_delay,
            self.allowance_backoff,
            self.login_throttle_backoff,
        ]
        .iter()
        .all(|d| *d <= MAX_DURATION)
    }

    pub(crate) fn validate(&self) -> Result<BaseUrl, UsageError> {
        if self.api_key.is_empty() {
            return Err(UsageError::InvalidArgument {
                what: "api_key",
                reason: "empty",
            });
        }
        if self.login_flow == LoginFlow::WebPlatform {
            if self.environment == IgEnvironment::Demo {
                return Err(UsageError::InvalidArgument {
                    what: "login_flow",
                    reason: "the web-platform login exists only in production",
                });
            }
            BaseUrl::parse(&self.web_platform_url).map_err(|_| UsageError::InvalidArgument {
                what: "web_platform_url",
                reason: "not an absolute http(s) URL without user info or query",
            })?;
        }
        if self.request_deadline.is_zero() {
            return Err(UsageError::InvalidArgument {
                what: "request_deadline",
                reason: "must be positive",
            });
        }
        BaseUrl::parse(self.environment.base_url()).map_err(|_| UsageError::InvalidArgument {
            what: "environment",
            reason: "base URL is not an absolute http(s) URL without user info or query",
        })
    }
}

/// The parts of a session's requests derived from its configuration alone: the parsed
/// base URL and the prepared request parts (endpoint URIs, the API key's header
/// value). About 180 bytes inline and 250 on the heap; every session built from one
/// `Arc<IgConfig>` holds the same ones, behind one pointer.
pub(crate) struct SessionParts {
    pub(crate) base: BaseUrl,
    pub(crate) requests: Prepared,
    /// The web-platform login's URL they were built with, if that is the login flow
    /// (the base URL and the API key are checked against `base` and the prepared
    /// header value themselves).
    web_platform_url: Option<Box<str>>,
}

impl SessionParts {
    /// The parts for `config`, validated ([`IgConfig::validate`]): the ones cached
    /// with the configuration when they were built from its current fields, new ones
    /// otherwise. New ones are cached when the cache is empty, or replace a stale one
    /// when `config` is the only handle to the configuration; a stale cache that other
    /// handles share is left alone, and each session built from it gets its own
    /// parts (correct, only not shared).
    pub(crate) fn of(config: &mut Arc<IgConfig>) -> Result<Arc<Self>, Error> {
        let base = config.validate().map_err(Error::Usage)?;
        if let Some(parts) = config.parts.0.get()
            && parts.built_from(config, &base)
        {
            return Ok(Arc::clone(parts));
        }
        let web_platform_url = (config.login_flow == LoginFlow::WebPlatform)
            .then_some(config.web_platform_url.as_str());
        let parts = Arc::new(Self {
            requests: Prepared::new(&base, &config.api_key, web_platform_url)?,
            base,
            web_platform_url: web_platform_url.map(Into::into),
        });
        match Arc::get_mut(config) {
            Some(only) => only.parts = PartsCache(OnceLock::from(Arc::clone(&parts))),
            None => {
                let _ = config.parts.0.set(Arc::clone(&parts));
            }
        }
        Ok(parts)
    }

    /// Whether these parts are the ones `config`'s fields give now (`base` being
    /// its base URL, parsed).
    fn built_from(&self, config: &IgConfig, base: &BaseUrl) -> bool {
        let web_platform_url = (config.login_flow == LoginFlow::WebPlatform)
            .then_some(config.web_platform_url.as_str());
        self.base == *base
            && self.web_platform_url.as_deref() == web_platform_url
            && self.requests.has_api_key(&config.api_key)
    }
}

/// The cache of [`SessionParts`] an [`IgConfig`] carries. A clone shares it: the parts
/// are checked against the fields before each use ([`SessionParts::of`]), so a clone
/// whose fields are then changed builds its own.
#[derive(Clone, Default)]
struct PartsCache(OnceLock<Arc<SessionParts>>);

impl fmt::Debug for PartsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Derived request parts, not a setting; the API key's header value is in them.
        f.write_str(if self.0.get().is_some() {
            "(built)"
        } else {
            "(not built)"
        })
    }
}

/// A parsed base URL: scheme, authority and path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) prefix: String,
}

impl BaseUrl {
    pub(crate) fn parse(s: &str) -> Result<Self, ()> {
        let uri: http::Uri = s.parse().map_err(|_| ())?;
        let scheme = uri.scheme().cloned().ok_or(())?;
        if scheme != http::uri::Scheme::HTTPS && scheme != http::uri::Scheme::HTTP {
            return Err(());
        }
        let authority = uri.authority().cloned().ok_or(())?;
        // User info in a base URL (`https://user:pw@host/...`) would be sent with every
        // request and printed wherever the URL is; IG never uses it.
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(());
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }

    /// Whether `uri` is on this base's scheme, host and port and under its path.
    pub(crate) fn covers(&self, uri: &http::Uri) -> bool {
        let same_origin = uri.scheme() == Some(&self.scheme)
            && uri.authority().is_some_and(|a| {
                a.host().eq_ignore_ascii_case(self.authority.host())
                    && a.port_u16().or(default_port(&self.scheme))
                        == self.authority.port_u16().or(default_port(&self.scheme))
                    && !a.as_str().contains('@')
            });
        let path = uri.path();
        same_origin
            && (self.prefix.is_empty()
                || path == self.prefix
                || path
                    .strip_prefix(self.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

fn default_port(s: &http::uri::Scheme) -> Option<u16> {
    if *s == http::uri::Scheme::HTTPS {
        Some(443)
    } else if *s == http::uri::Scheme::HTTP {
        Some(80)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions built from one `Arc` share the derived request parts; a clone that is
    /// changed afterwards, or the same configuration changed while nothing else holds
    /// it, never reuses parts built from the old values.
    #[test]
    fn derived_parts_are_shared_and_never_stale() {
        let mut shared = Arc::new(IgConfig::new(IgEnvironment::Demo, "k1", "u", "p"));
        let first = SessionParts::of(&mut shared.clone()).unwrap();
        let second = SessionParts::of(&mut shared.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));

        let mut other = (*shared).clone();
        other.environment = IgEnvironment::Custom("http://127.0.0.1:9/x".into());
        let moved = SessionParts::of(&mut Arc::new(other.clone())).unwrap();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_eq!(moved.base.authority.as_str(), "127.0.0.1:9");
        assert_eq!(moved.base.prefix, "/x");

        other.api_key = ApiKey::new("k2");
        let rekeyed = SessionParts::of(&mut Arc::new(other)).unwrap();
        assert!(rekeyed.requests.has_api_key(&ApiKey::new("k2")));
        assert!(!rekeyed.requests.has_api_key(&ApiKey::new("k1")));

        drop((first, second));
        Arc::get_mut(&mut shared).unwrap().login_flow = LoginFlow::WebPlatform;
        Arc::get_mut(&mut shared).unwrap().environment = IgEnvironment::Live;
        let web = SessionParts::of(&mut shared).unwrap();
        assert_eq!(
            web.web_platform_url.as_deref(),
            Some(WEB_PLATFORM_LOGIN_URL)
        );
        assert_eq!(web.base.authority.as_str(), "api.ig.com");
        // The replaced cache serves the next session.
        assert!(Arc::ptr_eq(
            &web,
            &SessionParts::of(&mut shared.clone()).unwrap()
        ));
    }

    /// The same through sessions: a clone of a configuration already used, pointed
    /// elsewhere, logs in there with its own API key.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant to start from
    fn a_changed_clone_sends_to_its_own_base_url() {
        use crate::{Machine, Now, Output, RngSeed};
        let now = Now::new(std::time::Instant::now(), std::time::SystemTime::UNIX_EPOCH);
        let login_uri = |config: Arc<IgConfig>| {
            let mut s = super::super::IgSession::new(config, RngSeed::from_u64(1), now).unwrap();
            s.submit(super::super::IgIntent::Login, now).unwrap();
            loop {
                match s.poll_output(now) {
                    Output::Send(t) => {
                        let key = t.request.headers()["x-ig-api-key"].clone();
                        return (t.request.uri().to_string(), key);
                    }
                    Output::Event(_) => {}
                    other => panic!("no request: {other:?}"),
                }
            }
        };
        let original = Arc::new(IgConfig::new(IgEnvironment::Demo, "k1", "u", "p"));
        let (uri, key) = login_uri(Arc::clone(&original));
        assert_eq!(uri, "https://demo-api.ig.com/gateway/deal/session");
        assert_eq!(key, "k1");
        let mut moved = (*original).clone();
        moved.environment = IgEnvironment::Custom("http://127.0.0.1:9/x/".into());
        moved.api_key = ApiKey::new("k2");
        let (uri, key) = login_uri(Arc::new(moved));
        assert_eq!(uri, "http://127.0.0.1:9/x/session");
        assert_eq!(key, "k2");
        assert_eq!(
            login_uri(original).0,
            "https://demo-api.ig.com/gateway/deal/session"
        );
    }

    #[test]
    fn base_urls_with_user_info_are_refused() {
        for url in [
            "https://user:pw@demo-api.ig.com/gateway/deal",
            "https://user@demo-api.ig.com/gateway/deal",
        ] {
            let c = IgConfig::new(IgEnvironment::Custom(url.into()), "k", "u", "p");
            let e = c.validate().unwrap_err();
            assert!(!format!("{e} {e:?}").contains("pw@"), "{e}");
            let mut w = IgConfig::new(IgEnvironment::Live, "k", "u", "p");
            w.login_flow = LoginFlow::WebPlatform;
            w.web_platform_url = url.into();
            assert!(w.validate().is_err());
        }
    }

    #[test]
    fn base_url_covers_only_its_origin_and_prefix() {
        let b = BaseUrl::parse("https://demo-api.ig.com/gateway/deal").unwrap();
        let ok: http::Uri = "https://demo-api.ig.com/gateway/deal/accounts"
            .parse()
            .unwrap();
        let port: http::Uri = "https://demo-api.ig.com:443/gateway/deal/positions"
            .parse()
            .unwrap();
        assert!(b.covers(&ok));
        assert!(b.covers(&port));
        for bad in [
            "http://demo-api.ig.com/gateway/deal/accounts",
            "https://evil.example/gateway/deal/accounts",
            "https://demo-api.ig.com:8443/gateway/deal/accounts",
            "https://demo-api.ig.com/gateway/dealer/x",
            "https://demo-api.ig.com/other",
            "/gateway/deal/accounts",
        ] {
            let u: http::Uri = bad.parse().unwrap();
            assert!(!b.covers(&u), "{bad}");
        }
    }

    #[test]
    fn defaults_are_documented_values_and_debug_redacts() {
        let c = IgConfig::new(IgEnvironment::Live, "key-123", "user", "pw-xyz");
        assert_eq!(c.login_flow, LoginFlow::V2);
        assert_eq!(c.refresh_margin, Duration::from_secs(10));
        assert_eq!(c.refresh_spread, Duration::from_secs(5));
        assert_eq!(c.request_deadline, Duration::from_secs(30));
        let d = format!("{c:?}");
        assert!(!d.contains("key-123") && !d.contains("pw-xyz"), "{d}");
        assert!(c.validate().is_ok());
        let mut w = c.clone();
        w.environment = IgEnvironment::Demo;
        w.login_flow = LoginFlow::WebPlatform;
        assert!(w.validate().is_err());
        let mut u = c;
        u.environment = IgEnvironment::Custom("ftp://x/y".into());
        assert!(u.validate().is_err());
    }
}
