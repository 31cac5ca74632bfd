//! A fake Interactive Brokers Web API, strict the way IBKR is.
//!
//! Two modes, as [`broker_session::ibkr`] has two ways in:
//!
//! - **Gateway**: a "browser login done" switch, authenticated / connected /
//!   competing flags, the brokerage session dropped after
//!   [`idle_timeout`](FakeIbkr::idle_timeout) without requests, a daily reset at a
//!   configurable time of day, and 401 (or a 302 to `/sso/Login`) without a session.
//! - **OAuth 1.0a** with a real server side: it holds the consumer's public keys,
//!   verifies the RSA-SHA256 signature of the live session token request (rebuilding
//!   the base string with the prepend), answers with its own Diffie-Hellman value,
//!   derives the live session token itself, and verifies the HMAC-SHA256 signature of
//!   every later request (401 when wrong).
//!
//! Every request is recorded with its virtual time ([`FakeIbkr::requests`]), so tests
//! can check pacing. Faults (statuses, bodies, transport failures) are injected with
//! [`FakeIbkr::inject`].

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret};
use broker_session::ibkr::{IbkrConfig, OAuthConfig};
use broker_session::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};
use broker_session::{FailureKind, Now, TransportFailure};
use rand::SeedableRng;
use rsa::PrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use serde_json::{Value, json};

use crate::sim::{FakeBroker, Reply};

mod oauth_server;

pub use oauth_server::{OAuthServer, PUBLIC_BASE_URL, QueryAcceptance, realm_for};

/// The vectors file with the throwaway test keys (PKCS#1 and PKCS#8 PEMs).
pub const VECTORS_JSON: &str = include_str!("../fixtures/ibkr-oauth1-vectors.json");

/// The fake's access token.
pub const ACCESS_TOKEN: &str = "0123456789abcdef0123";
/// The fake's consumer key.
pub const CONSUMER_KEY: &str = "TESTCONS";
/// The fake's gateway/API base path.
pub const BASE_PATH: &str = "/v1/api";

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: http::Method,
    /// Path without the base path (`/tickle`).
    pub path: String,
    /// Monotonic virtual time of arrival.
    pub at: Instant,
    /// Whether it carried an `Authorization` header.
    pub authorized: bool,
}

/// A fault to inject into the next matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and body.
    Status(u16, &'static str),
    /// Answer 200 with this (malformed) body.
    Body(&'static str),
    /// Fail at the transport level.
    Transport(FailureKind),
    /// Answer 302 to `/sso/Login`.
    SsoRedirect,
}

/// The fake IBKR broker.
pub struct FakeIbkr {
    oauth: Option<OAuthServer>,
    /// Gateway: the user logged in through the browser.
    pub browser_login_done: bool,
    /// Brokerage session authenticated.
    pub authenticated: bool,
    /// Connected to the backend.
    pub connected: bool,
    /// Another session for the username is active.
    pub competing: bool,
    /// Answer 302 to `/sso/Login` instead of 401 when there is no session.
    pub redirect_without_session: bool,
    /// The brokerage session drops after this long without requests (default 5 min).
    pub idle_timeout: Duration,
    /// Time of day (UTC, since midnight) of the daily reset; `None` for none.
    pub daily_reset: Option<Duration>,
    /// `ssodh/init` answers 500 this many more times.
    pub init_failures: u32,
    /// Delay after which `reauthenticate` makes the session authenticated (default 3 s).
    pub reauth_delay: Duration,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
    /// Daily resets that happened.
    pub resets: u32,
    faults: VecDeque<(Option<&'static str>, Fault)>,
    last_activity: Option<Instant>,
    reauth_at: Option<Instant>,
    reset_day: Option<u64>,
}

impl FakeIbkr {
    /// A gateway where the browser login is done and the brokerage session is not
    /// yet initialised (what a fresh gateway login looks like).
    pub fn gateway() -> Self {
        Self {
            oauth: None,
            browser_login_done: true,
            authenticated: false,
            connected: true,
            competing: false,
            redirect_without_session: false,
            idle_timeout: Duration::from_secs(5 * 60),
            daily_reset: None,
            init_failures: 0,
            reauth_delay: Duration::from_secs(3),
            requests: Vec::new(),
            resets: 0,
            faults: VecDeque::new(),
            last_activity: None,
            reauth_at: None,
            reset_day: None,
        }
    }

    /// An OAuth 1.0a server using the fixture keys, and the matching client
    /// configuration (base `https://api.ibkr.com/v1/api`, realm `test_realm` as IBKR
    /// pairs with the test consumer `TESTCONS`). The access token secret is
    /// a real RSA encryption of the server's prepend with the consumer's public
    /// encryption key. `pkcs8` picks the client's PEM form.
    pub fn oauth(pkcs8: bool) -> (Self, OAuthConfig) {
        let v: Value = serde_json::from_str(VECTORS_JSON).unwrap_or(Value::Null);
        let pem = |k: &str| v["rsa"][k].as_str().unwrap_or_default().to_owned();
        let (enc_pem, sig_pem) = if pkcs8 {
            (
                pem("encryption_private_key_pkcs8_pem"),
                pem("signature_private_key_pkcs8_pem"),
            )
        } else {
            (
                pem("encryption_private_key_pkcs1_pem"),
                pem("signature_private_key_pkcs1_pem"),
            )
        };
        let enc_pub = PrivateKey::from_pkcs1_pem(&pem("encryption_private_key_pkcs1_pem"))
            .map(|k| k.to_public_key())
            .ok();
        let sig_pub = PrivateKey::from_pkcs1_pem(&pem("signature_private_key_pkcs1_pem"))
            .map(|k| k.to_public_key())
            .ok();
        let prime = v["dh"]["prime_hex"].as_str().unwrap_or_default().to_owned();
        let (Some(enc_pub), Some(sig_pub)) = (enc_pub, sig_pub) else {
            panic!("fixture keys do not parse");
        };
        let prepend: Vec<u8> = (0x40u8..0x60).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let ciphertext = enc_pub
            .pkcs1v15_encrypt_with_rng(&mut rng, &prepend)
            .unwrap_or_default();
        let Ok(group) = DhGroup::new(&prime, 2) else {
            panic!("fixture prime does not parse");
        };
        let Ok(server_secret) =
            DhSecret::from_hex("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543211")
        else {
            panic!("bad server secret");
        };
        let server = OAuthServer {
            consumer_key: CONSUMER_KEY.to_owned(),
            access_token: ACCESS_TOKEN.to_owned(),
            realm: realm_for(CONSUMER_KEY).to_owned(),
            signature_key: sig_pub,
            prepend,
            group,
            server_secret,
            lst: None,
            lst_expires_ms: 0,
            nonces: HashSet::new(),
            lst_lifetime: Duration::from_secs(24 * 3600),
            query_signing: QueryAcceptance::Either,
            public_base_url: PUBLIC_BASE_URL.to_owned(),
            reject_consumer: false,
            tokens_issued: 0,
            bad_signatures: 0,
        };
        let mut config = OAuthConfig::new(
            CONSUMER_KEY,
            AccessToken::new(ACCESS_TOKEN),
            AccessTokenSecret::new(STANDARD.encode(ciphertext)),
            PrivateKeyPem::new(enc_pem),
            PrivateKeyPem::new(sig_pem),
            prime,
        );
        config.realm = realm_for(CONSUMER_KEY).to_owned();
        let mut fake = Self::gateway();
        fake.browser_login_done = false;
        fake.oauth = Some(server);
        (fake, config)
    }

    /// A client configuration for this fake's gateway mode.
    pub fn gateway_config() -> IbkrConfig {
        IbkrConfig::gateway()
    }

    /// A client configuration for an OAuth fake.
    pub fn oauth_config(oauth: OAuthConfig) -> IbkrConfig {
        IbkrConfig::oauth(oauth)
    }

    /// The OAuth server side, if in OAuth mode.
    pub fn oauth_server(&mut self) -> Option<&mut OAuthServer> {
        self.oauth.as_mut()
    }

    /// Injects a fault into the next request whose path (without the base path)
    /// equals `path`, or the next request at all for `None`.
    pub fn inject(&mut self, path: Option<&'static str>, fault: Fault) {
        self.faults.push_back((path, fault));
    }

    /// Drops the brokerage session (as IBKR does after idling or a backend restart);
    /// the SSO session stays.
    pub fn drop_brokerage_session(&mut self) {
        self.authenticated = false;
    }

    /// Requests to `path` (without the base path), in order.
    pub fn requests_to<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Recorded> + 'a {
        self.requests.iter().filter(move |r| r.path == path)
    }

    /// The smallest gap between consecutive requests to `path`.
    pub fn min_gap(&self, path: &str) -> Option<Duration> {
        let times: Vec<Instant> = self.requests_to(path).map(|r| r.at).collect();
        times.windows(2).map(|w| w[1] - w[0]).min()
    }

    fn has_session(&self) -> bool {
        match &self.oauth {
            Some(o) => o.lst.is_some(),
            None => self.browser_login_done,
        }
    }

    fn advance_time(&mut self, now: Now) {
        if let Some(at) = self.daily_reset {
            let secs = now
                .wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let day = secs.saturating_sub(at.as_secs()) / 86_400;
            match self.reset_day {
                Some(d) if d != day => {
                    self.reset_day = Some(day);
                    self.resets += 1;
                    self.authenticated = false;
                    self.browser_login_done = false;
                    if let Some(o) = &mut self.oauth {
                        o.lst = None;
                    }
                }
                None => self.reset_day = Some(day),
                _ => {}
            }
        }
        if let Some(last) = self.last_activity
            && now.mono.saturating_duration_since(last) > self.idle_timeout
        {
            self.authenticated = false;
        }
        if let Some(at) = self.reauth_at
            && now.mono >= at
        {
            self.reauth_at = None;
            if self.has_session() {
                self.authenticated = true;
                self.connected = true;
            }
        }
    }

    fn status_json(&self) -> Value {
        let mut v = json!({
            "authenticated": self.authenticated,
            "competing": self.competing,
            "connected": self.connected,
            "message": "",
            "MAC": "98:F2:B3:23:BF:A0",
            "fail": "",
            "hardware_info": "3b0679ee|98:F2:B3:23:BF:A0",
        });
        if self.authenticated {
            v["serverInfo"] = json!({"serverName": "JifN19053", "serverVersion": "Build 10.25.0p"});
        }
        v
    }

    fn no_session(&self) -> http::Response<Vec<u8>> {
        if self.redirect_without_session && self.oauth.is_none() {
            return http::Response::builder()
                .status(302)
                .header(
                    "location",
                    "https://localhost:5000/sso/Login?forwardTo=22&RL=1",
                )
                .body(Vec::new())
                .unwrap_or_default();
        }
        respond(
            401,
            &json!({"error": "not authenticated", "statusCode": 401}),
        )
    }
}

fn respond(status: u16, v: &Value) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(v.to_string().into_bytes())
        .unwrap_or_default()
}

fn raw(status: u16, body: &str) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

impl FakeBroker for FakeIbkr {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        let full_path = request.uri().path().to_owned();
        let path = full_path
            .strip_prefix(BASE_PATH)
            .unwrap_or(&full_path)
            .to_owned();
        self.requests.push(Recorded {
            method: request.method().clone(),
            path: path.clone(),
            at: now.mono,
            authorized: request.headers().contains_key(http::header::AUTHORIZATION),
        });
        self.advance_time(now);
        if let Some(i) = self
            .faults
            .iter()
            .position(|(p, _)| p.is_none_or(|p| p == path))
            && let Some((_, fault)) = self.faults.remove(i)
        {
            {
                return match fault {
                    Fault::Status(s, body) => raw(s, body).into(),
                    Fault::Body(body) => raw(200, body).into(),
                    Fault::Transport(kind) => Reply::Fail(TransportFailure::new(kind, "injected")),
                    Fault::SsoRedirect => http::Response::builder()
                        .status(302)
                        .header("location", "/sso/Login?forwardTo=22")
                        .body(Vec::new())
                        .unwrap_or_default()
                        .into(),
                };
            }
        }
        if request.method() == http::Method::POST
            && !request.headers().contains_key(http::header::CONTENT_LENGTH)
        {
            return raw(411, "Length Required").into();
        }
        if let Some(server) = self.oauth.as_mut() {
            if path == "/oauth/live_session_token" {
                return server.live_session_token(request, now).into();
            }
            if let Err(resp) = server.verify(request, now) {
                return (*resp).into();
            }
        } else if !self.browser_login_done {
            return self.no_session().into();
        }
        if path.starts_with("/iserver") || path == "/tickle" {
            self.last_activity = Some(now.mono);
        }
        self.route(request, &path, now).into()
    }
}

impl FakeIbkr {
    fn route(
        &mut self,
        request: &http::Request<Vec<u8>>,
        path: &str,
        now: Now,
    ) -> http::Response<Vec<u8>> {
        let m = request.method().as_str();
        match (m, path) {
            ("POST", "/iserver/auth/status") => respond(200, &self.status_json()),
            ("POST", "/iserver/auth/ssodh/init") => {
                let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
                if body["publish"] != json!(true) {
                    return respond(500, &json!({"error": "publish must be true"}));
                }
                if self.init_failures > 0 {
                    self.init_failures -= 1;
                    return respond(500, &json!({"error": "failed to generate sso dh token"}));
                }
                if self.competing && body["compete"] == json!(true) {
                    self.competing = false;
                }
                self.connected = true;
                self.authenticated = true;
                respond(200, &self.status_json())
            }
            ("POST" | "GET", "/tickle") => {
                let v = json!({
                    "session": "bb665d0f55b6289d70bc8ba97ee6d2fd",
                    "ssoExpires": 460_311,
                    "collission": false,
                    "userId": 123_456_789,
                    "hmds": {"error": "no bridge"},
                    "iserver": {"authStatus": self.status_json(), "tickle": true},
                });
                respond(200, &v)
            }
            ("POST" | "GET", "/iserver/reauthenticate") => {
                self.reauth_at = Some(now.mono + self.reauth_delay);
                respond(200, &json!({"message": "triggered"}))
            }
            ("GET", "/sso/validate") if self.oauth.is_some() => {
                // IBKR Web API v1.0 documentation, "Validate SSO": the endpoint is
                // "only valid for Client Portal Gateway and OAuth 2.0 clients". An
                // OAuth 1.0a session has no SSO session to validate; the answer is the
                // endpoint's documented failure status, 401 (the body is this fake's).
                respond(
                    401,
                    &json!({"error": "sso validation is not available to OAuth 1.0a sessions", "statusCode": 401}),
                )
            }
            ("GET", "/sso/validate") => {
                let v = json!({
                    "USER_ID": 123_456_789, "USER_NAME": "testuser1", "RESULT": true,
                    "AUTH_TIME": 1_702_580_846_836_i64, "SF_ENABLED": false, "IS_FREE_TRIAL": false,
                    "CREDENTIAL": "testuser1", "IP": "12.345.678.901", "EXPIRES": 415_890,
                    "QUALIFIED_FOR_MOBILE_AUTH": null, "LANDING_APP": "UNIVERSAL", "IS_MASTER": false,
                    "lastAccessed": 1_702_582_037_124_i64, "LOGIN_TYPE": 2, "PAPER_USER_NAME": "testuser1",
                    "features": {"env": "PROD", "wlms": true, "realtime": true, "bond": true,
                                 "optionChains": true, "calendar": true, "newMf": true},
                    "region": "NJ"
                });
                respond(200, &v)
            }
            ("POST", "/logout") => {
                self.authenticated = false;
                self.browser_login_done = false;
                if let Some(o) = &mut self.oauth {
                    o.lst = None;
                }
                respond(200, &json!({"status": true}))
            }
            ("GET", "/iserver/accounts") => {
                if !self.authenticated {
                    return respond(
                        400,
                        &json!({"error": "Bad Request: no bridge", "statusCode": 400}),
                    );
                }
                respond(
                    200,
                    &json!({"accounts": ["DU1234567"], "selectedAccount": "DU1234567"}),
                )
            }
            ("GET", "/iserver/account/orders") => {
                // IBKR Web API "Live Orders": `GET /iserver/account/orders` with the
                // optional query `filters`, `force`, `accountId`; answers `orders` and
                // `snapshot`. Served so that signed GETs with a query string can be
                // exercised; the fake has no orders.
                if !self.authenticated {
                    return respond(
                        400,
                        &json!({"error": "Bad Request: no bridge", "statusCode": 400}),
                    );
                }
                respond(200, &json!({"orders": [], "snapshot": true}))
            }
            _ => respond(404, &json!({"error": "not found"})),
        }
    }
}
