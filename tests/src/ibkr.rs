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
use broker_session::{FailureKind, Now, RngSeed, TransportFailure};
use hmac::{KeyInit as _, Mac as _};
use rand::SeedableRng;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::{PrivateKey, PublicKey};
use serde_json::{Value, json};

use crate::sim::{FakeBroker, Reply};

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

/// The OAuth server side.
pub struct OAuthServer {
    consumer_key: String,
    access_token: String,
    realm: String,
    signature_key: PublicKey,
    prepend: Vec<u8>,
    group: DhGroup,
    server_secret: DhSecret,
    lst: Option<Vec<u8>>,
    lst_expires_ms: i64,
    nonces: HashSet<String>,
    /// Lifetime of each live session token (default 24 h).
    pub lst_lifetime: Duration,
    /// Whether query parameters are part of the signed parameters (default `true`).
    pub sign_query: bool,
    /// Answer the LST request 401 `invalid consumer` (default `false`).
    pub reject_consumer: bool,
    /// Live session tokens issued.
    pub tokens_issued: u32,
    /// Requests refused for a bad signature.
    pub bad_signatures: u32,
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
    /// configuration (base `https://api.ibkr.com/v1/api`). The access token secret is
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
            realm: "limited_poa".to_owned(),
            signature_key: sig_pub,
            prepend,
            group,
            server_secret,
            lst: None,
            lst_expires_ms: 0,
            nonces: HashSet::new(),
            lst_lifetime: Duration::from_secs(24 * 3600),
            sign_query: true,
            reject_consumer: false,
            tokens_issued: 0,
            bad_signatures: 0,
        };
        let config = OAuthConfig::new(
            CONSUMER_KEY,
            AccessToken::new(ACCESS_TOKEN),
            AccessTokenSecret::new(STANDARD.encode(ciphertext)),
            PrivateKeyPem::new(enc_pem),
            PrivateKeyPem::new(sig_pem),
            prime,
        );
        let mut fake = Self::gateway();
        fake.browser_login_done = false;
        fake.oauth = Some(server);
        (fake, config)
    }

    /// A client configuration for this fake's gateway mode, seeded.
    pub fn gateway_config(seed: u64) -> IbkrConfig {
        let mut c = IbkrConfig::gateway();
        c.rng_seed = RngSeed::from_u64(seed);
        c
    }

    /// A client configuration for an OAuth fake, seeded.
    pub fn oauth_config(oauth: OAuthConfig, seed: u64) -> IbkrConfig {
        let mut c = IbkrConfig::oauth(oauth);
        c.rng_seed = RngSeed::from_u64(seed);
        c
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
            _ => respond(404, &json!({"error": "not found"})),
        }
    }
}

impl OAuthServer {
    /// The current live session token (base64), as the server derived it.
    pub fn current_lst(&self) -> Option<String> {
        self.lst.as_ref().map(|k| STANDARD.encode(k))
    }

    /// Forgets the live session token (as IBKR does at its reset or on expiry).
    pub fn revoke(&mut self) {
        self.lst = None;
    }

    fn live_session_token(
        &mut self,
        req: &http::Request<Vec<u8>>,
        now: Now,
    ) -> http::Response<Vec<u8>> {
        let deny = |why: &str| {
            respond(
                401,
                &json!({"error": format!("id: 3931, error: {why}"), "statusCode": 401}),
            )
        };
        if self.reject_consumer {
            return deny("invalid consumer");
        }
        let Some((realm, params)) = parse_header(req) else {
            return deny("missing authorization");
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if realm != self.realm
            || get("oauth_consumer_key").as_deref() != Some(&self.consumer_key)
            || get("oauth_token").as_deref() != Some(&self.access_token)
            || get("oauth_signature_method").as_deref() != Some("RSA-SHA256")
            || !self.fresh(get("oauth_timestamp"), get("oauth_nonce"), now)
        {
            return deny("invalid consumer");
        }
        let (Some(challenge), Some(sig)) =
            (get("diffie_hellman_challenge"), get("oauth_signature"))
        else {
            return deny("missing parameters");
        };
        let prepend_hex: String = self.prepend.iter().map(|b| format!("{b:02x}")).collect();
        let base = format!("{prepend_hex}{}", self.base_string(req, &params, false));
        let Some(sig) = pct_decode(&sig).and_then(|s| STANDARD.decode(s).ok()) else {
            return deny("bad signature encoding");
        };
        if self
            .signature_key
            .pkcs1v15_verify::<sha2::Sha256>(base.as_bytes(), &sig)
            .is_err()
        {
            self.bad_signatures += 1;
            return deny("invalid signature");
        }
        let Ok(k) = self.group.shared_secret(&self.server_secret, &challenge) else {
            return deny("invalid challenge");
        };
        let lst = hmac_sha1(k.expose_secret(), &self.prepend);
        let signature: String = hmac_sha1(&lst, self.consumer_key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let lifetime_ms = i64::try_from(self.lst_lifetime.as_millis()).unwrap_or(i64::MAX);
        self.lst_expires_ms = now.unix_millis().saturating_add(lifetime_ms);
        self.lst = Some(lst);
        self.tokens_issued += 1;
        respond(
            200,
            &json!({
                "diffie_hellman_response": self.group.public_value(&self.server_secret),
                "live_session_token_signature": signature,
                "live_session_token_expiration": self.lst_expires_ms,
            }),
        )
    }

    fn fresh(&mut self, ts: Option<String>, nonce: Option<String>, now: Now) -> bool {
        let Some(ts) = ts.and_then(|t| t.parse::<u64>().ok()) else {
            return false;
        };
        let Some(nonce) = nonce else {
            return false;
        };
        ts.abs_diff(now.unix_seconds()) <= 300 && self.nonces.insert(nonce)
    }

    /// `METHOD&pct(url)&pct(sorted params)`, independent of the client's code.
    fn base_string(
        &self,
        req: &http::Request<Vec<u8>>,
        params: &[(String, String)],
        with_query: bool,
    ) -> String {
        let uri = req.uri();
        let url = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            uri.path()
        );
        let mut all: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "oauth_signature")
            .cloned()
            .collect();
        if with_query {
            for pair in uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let dec = |s: &str| pct_decode(&s.replace('+', " ")).unwrap_or_default();
                all.push((pct(&dec(k)), pct(&dec(v))));
            }
        }
        all.sort();
        let joined: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{}&{}&{}",
            req.method().as_str(),
            pct(&url),
            pct(&joined.join("&"))
        )
    }

    fn verify(
        &mut self,
        req: &http::Request<Vec<u8>>,
        now: Now,
    ) -> Result<(), Box<http::Response<Vec<u8>>>> {
        let deny = || {
            Box::new(respond(
                401,
                &json!({"error": "not authenticated", "statusCode": 401}),
            ))
        };
        let Some(lst) = self.lst.clone() else {
            return Err(deny());
        };
        if now.unix_millis() >= self.lst_expires_ms {
            self.lst = None;
            return Err(deny());
        }
        let Some((_, params)) = parse_header(req) else {
            return Err(deny());
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("oauth_consumer_key").as_deref() != Some(&self.consumer_key)
            || get("oauth_token").as_deref() != Some(&self.access_token)
            || get("oauth_signature_method").as_deref() != Some("HMAC-SHA256")
            || !self.fresh(get("oauth_timestamp"), get("oauth_nonce"), now)
        {
            return Err(deny());
        }
        let base = self.base_string(req, &params, self.sign_query);
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&lst) else {
            return Err(deny());
        };
        mac.update(base.as_bytes());
        let expected = STANDARD.encode(mac.finalize().into_bytes());
        if get("oauth_signature")
            .and_then(|s| pct_decode(&s))
            .as_deref()
            != Some(expected.as_str())
        {
            self.bad_signatures += 1;
            return Err(deny());
        }
        Ok(())
    }
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn parse_header(req: &http::Request<Vec<u8>>) -> Option<(String, Vec<(String, String)>)> {
    let h = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let rest = h.strip_prefix("OAuth ")?;
    let mut realm = String::new();
    let mut params = Vec::new();
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?.to_owned();
        if k == "realm" {
            realm = v;
        } else {
            params.push((k.to_owned(), v));
        }
    }
    Some((realm, params))
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
