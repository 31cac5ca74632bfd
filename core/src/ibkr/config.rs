//! Configuration of an IBKR session: which way in, and the policies of the shared life.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::encode::Base;
use crate::error::UsageError;
use crate::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};

/// Default base URL of a local Client Portal Gateway.
pub const GATEWAY_BASE_URL: &str = "https://localhost:5000/v1/api";
/// Default base URL for OAuth 1.0a direct access.
pub const OAUTH_BASE_URL: &str = "https://api.ibkr.com/v1/api";

/// How the session authenticates.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum IbkrAuth {
    /// The Client Portal Gateway holds the session after a browser login; requests
    /// carry no credentials.
    Gateway,
    /// OAuth 1.0a: a live session token is obtained with Diffie-Hellman and every
    /// request is signed with HMAC-SHA256.
    OAuth(Box<OAuthConfig>),
}

/// Which query parameters enter the HMAC-SHA256 signature of a request.
///
/// IBKR accepts both variants for HMAC-signed calls:
/// - [`Omit`](Self::Omit) is what ibind (PyPI `ibind` 0.2.2, `IbkrClient._get_headers`)
///   sends for every GET with a query string, and ibind is in wide use against the
///   live OAuth 1.0a API;
/// - [`Include`](Self::Include) is what IBKR's own description of the base string
///   prescribes ("a lexicographically sorted list of key/value pairs including the
///   authorization header pairs, query parameters and …", quoted in ibind's
///   `generate_base_string`), as do RFC 5849 §3.4.1.3 and other ports (Ruby,
///   TypeScript) used against the live API.
///
/// `Include` is the default because it is the documented rule and the OAuth 1.0a
/// standard; `Omit` exists for matching ibind byte for byte. (IBKR's C# sample signs
/// a third way, the whole lower-cased URL with its query string; neither variant here
/// reproduces that.) The test kit's fake accepts both, as IBKR does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuerySigning {
    /// RFC 5849 §3.4.1.3: query parameters are decoded, re-encoded and sorted together
    /// with the OAuth parameters. The default: it is what the OAuth 1.0a standard and
    /// IBKR's description of the base string say.
    Include,
    /// Only the OAuth parameters are signed (what ibind does).
    Omit,
}

/// Whether `/iserver/reauthenticate` is sent as POST (what the gateway accepts and
/// ibeam uses) or GET (what the newer IBKR OpenAPI describes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReauthenticateMethod {
    /// `POST /iserver/reauthenticate` (default).
    Post,
    /// `GET /iserver/reauthenticate`.
    Get,
}

/// OAuth 1.0a credentials and parameters, from IBKR's self-service portal (first
/// party) or the access token exchange (third party).
///
/// ```
/// use broker_session::ibkr::OAuthConfig;
/// use broker_session::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};
///
/// let mut oauth = OAuthConfig::new(
///     "TESTCONS",
///     AccessToken::new("0123456789abcdef0123"),
///     AccessTokenSecret::new("base64 ciphertext"),
///     PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----..."),
///     PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----..."),
///     "ffffffffffffffffc90f...",
/// );
/// oauth.realm = "test_realm".into(); // IBKR's test consumer TESTCONS
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OAuthConfig {
    /// The consumer key (9 characters for first-party consumers, e.g. `TESTCONS`).
    pub consumer_key: String,
    /// The access token (`oauth_token`, 20 hex characters).
    pub access_token: AccessToken,
    /// The access token secret: base64 of an RSA ciphertext made with the consumer's
    /// public encryption key.
    pub access_token_secret: AccessTokenSecret,
    /// The private encryption key, PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub encryption_key: PrivateKeyPem,
    /// The private signature key, PEM (PKCS#1 or PKCS#8).
    pub signature_key: PrivateKeyPem,
    /// The Diffie-Hellman prime: hex, or the `dhparam.pem` (`BEGIN DH PARAMETERS`).
    pub dh_prime: String,
    /// The Diffie-Hellman generator. Default `2`. A generator inside a dhparam PEM
    /// takes precedence.
    pub dh_generator: u32,
    /// The OAuth realm. Default `limited_poa`; IBKR's test consumer uses `test_realm`.
    pub realm: String,
    /// Query parameters in request signatures. Default [`QuerySigning::Include`].
    pub query_signing: QuerySigning,
    /// How long before `live_session_token_expiration` the token is renewed. Default
    /// 5 minutes; at most 12 hours (IBKR's tokens live 24 hours).
    ///
    /// A token whose expiry is less than this margin plus one minute ahead (or that
    /// looks like epoch seconds rather than milliseconds) is refused as a
    /// [`ProtocolError::InvalidField`](crate::ProtocolError::InvalidField) naming
    /// `live_session_token_expiration`, rather than renewed at once in a loop.
    pub lst_refresh_margin: Duration,
}

impl OAuthConfig {
    /// OAuth credentials with the documented defaults for everything else.
    pub fn new(
        consumer_key: impl Into<String>,
        access_token: AccessToken,
        access_token_secret: AccessTokenSecret,
        encryption_key: PrivateKeyPem,
        signature_key: PrivateKeyPem,
        dh_prime: impl Into<String>,
    ) -> Self {
        Self {
            consumer_key: consumer_key.into(),
            access_token,
            access_token_secret,
            encryption_key,
            signature_key,
            dh_prime: dh_prime.into(),
            dh_generator: 2,
            realm: "limited_poa".to_owned(),
            query_signing: QuerySigning::Include,
            lst_refresh_margin: Duration::from_secs(5 * 60),
        }
    }
}

/// Configuration of an [`IbkrSession`](super::IbkrSession).
///
/// Build it with [`IbkrConfig::gateway`] or [`IbkrConfig::oauth`], then adjust the
/// public fields; each states its default. Durations are capped at one year and
/// [`init_attempts`](Self::init_attempts) is kept within 1..=100.
///
/// ```
/// use std::time::Duration;
/// use broker_session::ibkr::IbkrConfig;
///
/// let mut config = IbkrConfig::gateway();
/// config.base_url = "https://localhost:5001/v1/api".into();
/// config.tickle_interval = Duration::from_secs(45);
/// config.compete = false;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IbkrConfig {
    /// How the session authenticates.
    pub auth: IbkrAuth,
    /// Base URL of the Web API, up to and including `/v1/api` (no trailing slash
    /// needed). Default [`GATEWAY_BASE_URL`] for the gateway, [`OAUTH_BASE_URL`] for
    /// OAuth. Credentials are only ever stamped on requests to this scheme, host and
    /// port.
    pub base_url: String,
    /// `compete` in `ssodh/init`: `true` takes over a brokerage session held elsewhere
    /// (TWS, mobile, another API client) for the same username. Default `true` (what
    /// IBKR's examples and ibind use); set `false` to leave other sessions alone. It
    /// also decides whether the keep-alive re-initialises a session it finds competing.
    pub compete: bool,
    /// Initialise the brokerage session (`ssodh/init`) automatically after the OAuth
    /// login and whenever the status says "not authenticated". Default `true`.
    pub auto_init: bool,
    /// After the brokerage session becomes ready, `GET /iserver/accounts` once: IBKR
    /// refuses other `/iserver` calls until accounts were queried ("Please query
    /// /accounts first"). Best effort: its failure does not fail the operation.
    /// Default `true`.
    pub preflight_accounts: bool,
    /// How many `ssodh/init` attempts one operation makes before giving up. Default 3.
    pub init_attempts: u32,
    /// Pause before the second `ssodh/init` attempt; doubles for each further one.
    /// Default 2 s.
    pub init_backoff: Duration,
    /// Interval of status polling after `ssodh/init` or `reauthenticate`. Default 1 s.
    pub status_poll_interval: Duration,
    /// How long status polling waits for the brokerage session to become ready.
    /// Default 30 s.
    pub ready_timeout: Duration,
    /// Interval of the keep-alive `POST /tickle`. Default 60 s; clamped to at least
    /// 1 s and at least [`tickle_min_interval`](Self::tickle_min_interval); IBKR drops
    /// idle sessions after about 5 min.
    pub tickle_interval: Duration,
    /// How much shorter than [`tickle_interval`](Self::tickle_interval) a keep-alive
    /// interval may be, at random, so that sessions started together (100,000 created
    /// in one burst) do not all tickle in the same millisecond. Each interval is drawn
    /// anew, uniformly from `[interval - spread, interval]`. Default 6 s (a tenth of the
    /// default interval).
    ///
    /// Bounds: at most half the interval, and never below 1 s or
    /// [`tickle_min_interval`](Self::tickle_min_interval); an interval is only ever
    /// shortened, so a session is never tickled later than `tickle_interval`. The
    /// draw comes from the session's seed: a test with a fixed
    /// [`RngSeed`](crate::RngSeed) sees the same schedule every run. `Duration::ZERO`
    /// tickles every `tickle_interval` exactly.
    pub tickle_spread: Duration,
    /// Pacing: the least time between two `POST /tickle` requests of this session.
    /// A tickle asked for sooner (the user's [`IbkrIntent::Tickle`](super::IbkrIntent::Tickle)
    /// or the keep-alive's) waits for its slot and then goes; its answer says how
    /// long it waited ([`TickleInfo::pacing`](super::TickleInfo::pacing)).
    ///
    /// Default 1 s: IBKR's per-endpoint limit for `/tickle`, "1 req/s" (IBKR Web API
    /// documentation, "Pacing Limitations"; `/work/shared/spec/ibkr-session.md`
    /// "POST /tickle" and A.7). Requests beyond a limit are answered 429 and the
    /// caller's IP is put in a penalty box for 10 to 15 minutes, so lower it only
    /// when something else paces the requests. At most one year.
    pub tickle_min_interval: Duration,
    /// Pacing: the least time between two `GET /sso/validate` requests of this
    /// session. A validate asked for sooner waits for its slot and then goes; its
    /// answer says how long it waited ([`ValidateInfo::pacing`](super::ValidateInfo::pacing)).
    ///
    /// Default 60 s: IBKR's per-endpoint limit for `/sso/validate`, "1 req/min"
    /// (IBKR Web API documentation, "Pacing Limitations";
    /// `/work/shared/spec/ibkr-session.md` "GET /sso/validate" and A.7). At most one
    /// year.
    pub validate_min_interval: Duration,
    /// Method of `/iserver/reauthenticate`. Default [`ReauthenticateMethod::Post`].
    pub reauthenticate_method: ReauthenticateMethod,
    /// Back-off after a 429 (IBKR's penalty box lasts 10 to 15 minutes). Default 15 min.
    pub throttle_backoff: Duration,
    /// How long the machine waits for the answer to each of its requests before it
    /// gives up on it ([`ProtocolError::NoResponse`](crate::ProtocolError::NoResponse)).
    /// Default 30 s; at least 1 s. (A transport's `request_timeout`, its socket
    /// timeout per exchange, is a different setting.)
    pub request_deadline: Duration,
    /// The request parts derived from [`base_url`](Self::base_url), shared by the
    /// sessions built from one `Arc` of this configuration (see [`SessionParts::of`]).
    parts: PartsCache,
}

impl IbkrConfig {
    /// A Client Portal Gateway session at [`GATEWAY_BASE_URL`].
    pub fn gateway() -> Self {
        Self::with_auth(IbkrAuth::Gateway, GATEWAY_BASE_URL)
    }

    /// An OAuth 1.0a session at [`OAUTH_BASE_URL`].
    pub fn oauth(oauth: OAuthConfig) -> Self {
        Self::with_auth(IbkrAuth::OAuth(Box::new(oauth)), OAUTH_BASE_URL)
    }

    fn with_auth(auth: IbkrAuth, base_url: &str) -> Self {
        Self {
            auth,
            base_url: base_url.to_owned(),
            compete: true,
            auto_init: true,
            preflight_accounts: true,
            init_attempts: 3,
            init_backoff: Duration::from_secs(2),
            status_poll_interval: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(30),
            tickle_interval: Duration::from_secs(60),
            tickle_spread: Duration::from_secs(6),
            tickle_min_interval: Duration::from_secs(1),
            validate_min_interval: Duration::from_secs(60),
            reauthenticate_method: ReauthenticateMethod::Post,
            throttle_backoff: Duration::from_secs(15 * 60),
            request_deadline: Duration::from_secs(30),
            parts: PartsCache::default(),
        }
    }
}

/// The parts of a session's requests derived from its configuration alone: the base
/// URL, split and parsed, and every endpoint's URI (`Base`). About 220 bytes inline
/// and 150 on the heap; every session built from one `Arc<IbkrConfig>` holds the same
/// ones, behind one pointer.
pub(crate) struct SessionParts {
    pub(crate) base: Base,
}

impl SessionParts {
    /// The parts for `config`: the ones cached with the configuration when they were
    /// built from its current [`base_url`](IbkrConfig::base_url), new ones otherwise.
    /// New ones are cached when the cache is empty, or replace a stale one when
    /// `config` is the only handle to the configuration; a stale cache that other
    /// handles share is left alone, and each session built from it gets its own parts
    /// (correct, only not shared).
    ///
    /// # Errors
    /// As [`Base::parse`]: a base URL that is not an absolute http(s) URL.
    pub(crate) fn of(config: &mut Arc<IbkrConfig>) -> Result<Arc<Self>, UsageError> {
        if let Some(parts) = config.parts.0.get()
            && parts.built_from(config)
        {
            return Ok(Arc::clone(parts));
        }
        let parts = Arc::new(Self {
            base: Base::parse(&config.base_url)?,
        });
        match Arc::get_mut(config) {
            Some(only) => only.parts = PartsCache(OnceLock::from(Arc::clone(&parts))),
            None => {
                let _ = config.parts.0.set(Arc::clone(&parts));
            }
        }
        Ok(parts)
    }

    /// Whether these parts are the ones `config`'s fields give now. `Base::parse`
    /// reads the base URL trimmed of white space and trailing slashes and keeps that
    /// text, so the same text gives the same parts.
    fn built_from(&self, config: &IbkrConfig) -> bool {
        self.base.url == Base::trimmed(&config.base_url)
    }
}

/// The cache of [`SessionParts`] an [`IbkrConfig`] carries. A clone shares it: the
/// parts are checked against the fields before each use ([`SessionParts::of`]), so a
/// clone whose base URL is then changed builds its own.
#[derive(Clone, Default)]
struct PartsCache(OnceLock<Arc<SessionParts>>);

impl fmt::Debug for PartsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Derived request parts, not a setting.
        f.write_str(if self.0.get().is_some() {
            "(built)"
        } else {
            "(not built)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions built from one `Arc` share the derived request parts; a clone that is
    /// changed afterwards, or the same configuration changed while nothing else holds
    /// it, never reuses parts built from the old base URL.
    #[test]
    fn derived_parts_are_shared_and_never_stale() {
        let mut shared = Arc::new(IbkrConfig::gateway());
        let first = SessionParts::of(&mut shared.clone()).unwrap();
        let second = SessionParts::of(&mut shared.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.base.url, GATEWAY_BASE_URL);

        // The same text up to white space and trailing slashes: the same parts.
        let mut padded = (*shared).clone();
        padded.base_url = format!(" {GATEWAY_BASE_URL}// ");
        assert!(Arc::ptr_eq(
            &first,
            &SessionParts::of(&mut Arc::new(padded)).unwrap()
        ));

        let mut other = (*shared).clone();
        other.base_url = "http://127.0.0.1:9/x".into();
        let moved = SessionParts::of(&mut Arc::new(other.clone())).unwrap();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_eq!(moved.base.url, "http://127.0.0.1:9/x");
        // A case change is a change: the parts keep the text they were built from.
        other.base_url = "http://127.0.0.1:9/X".into();
        assert_eq!(
            SessionParts::of(&mut Arc::new(other)).unwrap().base.url,
            "http://127.0.0.1:9/X"
        );

        drop((first, second));
        Arc::get_mut(&mut shared).unwrap().base_url = OAUTH_BASE_URL.into();
        let oauth = SessionParts::of(&mut shared).unwrap();
        assert_eq!(oauth.base.url, OAUTH_BASE_URL);
        // The replaced cache serves the next session.
        assert!(Arc::ptr_eq(
            &oauth,
            &SessionParts::of(&mut shared.clone()).unwrap()
        ));

        // A bad base URL is refused, whatever the cache holds.
        Arc::make_mut(&mut shared).base_url = "ftp://x/y".into();
        assert!(SessionParts::of(&mut shared).is_err());
    }

    /// The same through sessions: a clone of a configuration already used, pointed
    /// elsewhere, sends there; the original still sends to its own base URL.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant to start from
    fn a_changed_clone_sends_to_its_own_base_url() {
        use crate::{Machine, Now, Output, RngSeed};
        let now = Now::new(std::time::Instant::now(), std::time::SystemTime::UNIX_EPOCH);
        let status_uri = |config: Arc<IbkrConfig>| {
            let mut s = super::super::IbkrSession::new(config, RngSeed::from_u64(1), now).unwrap();
            s.submit(super::super::IbkrIntent::CheckStatus, now)
                .unwrap();
            loop {
                match s.poll_output(now) {
                    Output::Send(t) => return t.request.uri().to_string(),
                    Output::Event(_) => {}
                    other => panic!("no request: {other:?}"),
                }
            }
        };
        let original = Arc::new(IbkrConfig::gateway());
        assert_eq!(
            status_uri(Arc::clone(&original)),
            "https://localhost:5000/v1/api/iserver/auth/status"
        );
        let mut moved = (*original).clone();
        moved.base_url = "http://127.0.0.1:9/x/".into();
        assert_eq!(
            status_uri(Arc::new(moved)),
            "http://127.0.0.1:9/x/iserver/auth/status"
        );
        assert_eq!(
            status_uri(original),
            "https://localhost:5000/v1/api/iserver/auth/status"
        );
    }
}
