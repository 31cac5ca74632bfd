//! A fake IG Markets REST broker, strict the way IG is.
//!
//! [`FakeIg`] answers the session endpoints (`POST/GET/PUT/DELETE /session`,
//! `POST /session/refresh-token`, `GET /session/encryptionKey`), one application
//! endpoint (`GET /accounts`, Version 1) and the unofficial web-platform login, as a
//! pure function of the request, its own state and the virtual time.
//!
//! Strictness (each rule's source is in a comment next to its code):
//! - `X-IG-API-KEY` missing → 400 `error.security.api-key-missing`; wrong → 403
//!   `error.security.api-key-invalid` (not checked on the web-platform login);
//! - a missing `Version` header means Version 1, as IG's REST guide says; a
//!   `Version` the endpoint does not serve → 400 [`VERSION_UNSUPPORTED`] (status and
//!   code are this fake's choice: IG documents none);
//! - `POST` with the header `_method: DELETE` (or `PUT`) is served as that method:
//!   IG's documented method tunnel;
//! - CST mode: missing CST → 401 `error.security.client-token-missing`; unknown or
//!   expired CST → 401 `error.security.client-token-invalid`; missing XST → 401
//!   `error.security.account-token-missing`; stale XST (e.g. from before a switch) →
//!   401 `error.security.account-token-invalid`;
//! - OAuth mode: unknown or expired access token → 401
//!   `error.security.oauth-token-invalid`; refresh tokens rotate and a used one is
//!   revoked (reuse is counted in [`FakeIgStats::reused_refresh_tokens`]); a refresh
//!   without a `refresh_token` → 400 `invalid.input`;
//! - `PUT /session` (switch account) needs the CST/XST pair; a v3 session gets one
//!   with `GET /session?fetchSessionTokens=true` and may send it next to its Bearer
//!   token;
//! - encrypted passwords are decrypted with the fixture key
//!   (`tests/fixtures/ig_encryption_key.pem`) and must be
//!   `Base64(password + "|" + timeStamp)` with a timeStamp this fake issued less than
//!   [`FakeIgConfig::encryption_key_max_age`] ago;
//! - logins closer together than [`FakeIgConfig::min_login_interval`] → 401
//!   `service.security.authentication.failure-invalid-client-security-token`;
//! - a path outside [`FakeIgConfig::prefix`] or one IG does not serve here → 404
//!   [`NOT_FOUND`].
//!
//! Faults are injected per path with [`FakeIg::inject`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use broker_session::{FailureKind, MAX_BODY, Now, TransportFailure};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rsa::{Pkcs1v15Encrypt, PrivateKey};
use serde_json::{Value, json};

use crate::sim::{FakeBroker, Reply};

/// The fixture RSA key the fake decrypts passwords with (never a production key).
pub const ENCRYPTION_KEY_PEM: &str = include_str!("../fixtures/ig_encryption_key.pem");

/// The error code of a request whose `Version` the endpoint does not serve.
///
/// IG documents no code for this; the string is this fake's own (the status, 400, is
/// the one IG uses for its other malformed-request codes such as `invalid.input`).
pub const VERSION_UNSUPPORTED: &str = "invalid.request.version";

/// The error code of a path the fake does not serve (404).
///
/// IG's reference documents no code for an unknown path; the string is this fake's
/// own, named so that it cannot be mistaken for a real IG code.
pub const NOT_FOUND: &str = "error.fake-ig.not-found";

/// The login-throttling error code.
pub const LOGIN_THROTTLED: &str =
    "service.security.authentication.failure-invalid-client-security-token";

/// Settings of a [`FakeIg`].
#[derive(Clone, Debug)]
pub struct FakeIgConfig {
    /// The accepted API key.
    pub api_key: String,
    /// The accepted identifier.
    pub identifier: String,
    /// The accepted password.
    pub password: String,
    /// The client's accounts; the first is the default (preferred) one.
    pub accounts: Vec<String>,
    /// Path prefix of the REST API (default `/gateway/deal`).
    pub prefix: String,
    /// Path of the web-platform login (default `/clientsecurity/session`).
    pub web_platform_path: String,
    /// v3 access token lifetime (default 60 s).
    pub access_ttl: Duration,
    /// How long a refresh token stays usable after its access token expired (default 10 min).
    pub refresh_grace: Duration,
    /// CST/XST validity without use (default 6 h; each use extends it).
    pub cst_idle_ttl: Duration,
    /// Minimum time between two login attempts (default 0: no throttling).
    pub min_login_interval: Duration,
    /// How long an encryption key's timeStamp is accepted (default 60 s).
    pub encryption_key_max_age: Duration,
    /// Send `timeStamp` as a JSON string instead of a number (default `false`).
    pub time_stamp_as_string: bool,
    /// Send `expires_in` as a JSON number instead of a string (default `false`).
    pub expires_in_as_number: bool,
    /// The Lightstreamer endpoint in login answers.
    pub lightstreamer_endpoint: String,
}

impl Default for FakeIgConfig {
    fn default() -> Self {
        Self {
            api_key: "fakeig-api-key-secret".into(),
            identifier: "fake-user".into(),
            password: "fakeig-password-secret".into(),
            accounts: vec!["ACC-DEFAULT".into(), "ACC-OTHER".into()],
            prefix: "/gateway/deal".into(),
            web_platform_path: "/clientsecurity/session".into(),
            access_ttl: Duration::from_secs(60),
            refresh_grace: Duration::from_secs(600),
            cst_idle_ttl: Duration::from_secs(6 * 3600),
            min_login_interval: Duration::ZERO,
            encryption_key_max_age: Duration::from_secs(60),
            time_stamp_as_string: false,
            expires_in_as_number: false,
            lightstreamer_endpoint: "https://demo-apd.marketdatasystems.com".into(),
        }
    }
}

/// An injected fault: the next matching request gets this instead of its answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// This response.
    Respond {
        /// The status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// A transport failure.
    Fail(FailureKind),
}

impl Fault {
    /// An IG error answer `{"errorCode": code}` (or an empty body without a code).
    pub fn error(status: u16, code: Option<&str>) -> Self {
        let body = code
            .map(|c| json!({ "errorCode": c }).to_string().into_bytes())
            .unwrap_or_default();
        Self::Respond {
            status,
            headers: Vec::new(),
            body,
        }
    }

    /// A raw body (non-JSON 5xx pages, truncated JSON …).
    pub fn raw(status: u16, body: &[u8]) -> Self {
        Self::Respond {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    /// A 200 whose body is larger than the core's limit.
    pub fn huge() -> Self {
        Self::raw(200, &vec![b' '; MAX_BODY + 1])
    }
}

/// What the fake saw and did, for assertions.
#[derive(Clone, Debug, Default)]
pub struct FakeIgStats {
    /// Login attempts that reached the credential check (any version, web platform too).
    pub login_attempts: usize,
    /// Successful logins.
    pub logins: usize,
    /// Logins refused for bad credentials.
    pub failed_logins: usize,
    /// Logins refused for coming too fast.
    pub throttled_logins: usize,
    /// Successful encrypted-password logins.
    pub encrypted_logins: usize,
    /// Successful web-platform logins.
    pub web_logins: usize,
    /// Successful refreshes.
    pub refreshes: usize,
    /// Refused refreshes.
    pub failed_refreshes: usize,
    /// Refresh tokens presented again after they were rotated away.
    pub reused_refresh_tokens: usize,
    /// Successful account switches.
    pub switches: usize,
    /// Switches that asked to change the default account.
    pub default_account_changes: usize,
    /// Logouts answered 204.
    pub logouts: usize,
    /// Encryption keys handed out.
    pub encryption_keys: usize,
    /// Requests per `METHOD /path` (path without the prefix, query dropped).
    pub requests: BTreeMap<String, usize>,
    /// Every refusal: `METHOD /path`, status and error code.
    pub rejections: Vec<(String, u16, String)>,
    /// The account of the last `GET /accounts` that passed authentication.
    pub last_account_seen: Option<String>,
}

impl FakeIgStats {
    /// Requests seen for `METHOD /path`.
    pub fn count(&self, method_path: &str) -> usize {
        self.requests.get(method_path).copied().unwrap_or(0)
    }
}

struct CstSession {
    xst: String,
    account: String,
    expires_at: Instant,
}

struct AccessGrant {
    account: String,
    expires_at: Instant,
}

/// The fake broker.
pub struct FakeIg {
    /// Settings (may be changed between requests).
    pub config: FakeIgConfig,
    /// Counters and records.
    pub stats: FakeIgStats,
    key: PrivateKey,
    public_der_b64: String,
    faults: VecDeque<(String, Option<http::Method>, Fault)>,
    cst_sessions: HashMap<String, CstSession>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, Instant>,
    revoked_refresh: Vec<String>,
    issued_time_stamps: Vec<i64>,
    last_login_at: Option<Instant>,
    counter: u64,
}

impl std::fmt::Debug for FakeIg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeIg")
            .field("stats", &self.stats)
            .finish()
    }
}

/// A parsed request, for handlers.
struct Req<'a> {
    method: &'a http::Method,
    path: String,
    query: Option<&'a str>,
    headers: &'a http::HeaderMap,
    body: &'a [u8],
}

type Resp = http::Response<Vec<u8>>;

/// The request's `Version`, trimmed; `"1"` when absent (IG's documented default).
fn version(headers: &http::HeaderMap) -> &str {
    headers
        .get("version")
        .and_then(|v| v.to_str().ok())
        .map_or("1", str::trim)
}

/// The method a request stands for: IG's method tunnel lets a `POST` carry the header
/// `_method: DELETE` (or `PUT`) for clients that cannot send a body with those methods
/// (IG Labs FAQ; PyPI trading-ig 0.0.25 logs out with `POST /session` + `_method:
/// DELETE`). Other methods and other `_method` values are taken as sent.
fn effective_method(request: &http::Request<Vec<u8>>) -> http::Method {
    let tunnelled = request
        .headers()
        .get("_method")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match (request.method(), tunnelled) {
        (&http::Method::POST, Some(m)) if m.eq_ignore_ascii_case("DELETE") => http::Method::DELETE,
        (&http::Method::POST, Some(m)) if m.eq_ignore_ascii_case("PUT") => http::Method::PUT,
        (m, _) => m.clone(),
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.header("content-type", "application/json; charset=UTF-8")
        .body(body.to_string().into_bytes())
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

fn empty(status: u16) -> Resp {
    http::Response::builder()
        .status(status)
        .body(Vec::new())
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

impl Default for FakeIg {
    fn default() -> Self {
        Self::new(FakeIgConfig::default())
    }
}

impl FakeIg {
    /// A fake with these settings.
    ///
    /// # Panics
    /// If the fixture key does not parse (a broken checkout).
    pub fn new(config: FakeIgConfig) -> Self {
        let key = PrivateKey::from_pkcs8_pem(ENCRYPTION_KEY_PEM).expect("fixture key parses");
        let der = key
            .to_public_key()
            .to_public_key_der()
            .expect("public key encodes");
        Self {
            config,
            stats: FakeIgStats::default(),
            public_der_b64: B64.encode(der.as_bytes()),
            key,
            faults: VecDeque::new(),
            cst_sessions: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_refresh: Vec::new(),
            issued_time_stamps: Vec::new(),
            last_login_at: None,
            counter: 0,
        }
    }

    /// The base URL a client should use with this fake, on any host.
    pub fn base_url(&self, host: &str) -> String {
        format!("https://{host}{}", self.config.prefix)
    }

    /// Queues a fault for the next request whose path (without the prefix, e.g.
    /// `/session`, `/accounts`; the web-platform path as configured) equals `path`,
    /// and whose method matches if given. Faults fire in order, once each.
    pub fn inject(&mut self, path: &str, method: Option<http::Method>, fault: Fault) {
        self.faults.push_back((path.to_owned(), method, fault));
    }

    /// Invalidates every CST/XST pair, as IG does at weekend maintenance or when the
    /// account logs in elsewhere.
    pub fn expire_cst_sessions(&mut self) {
        self.cst_sessions.clear();
    }

    /// Invalidates every v3 access token (refresh tokens stay valid).
    pub fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }

    /// Invalidates every refresh token.
    pub fn revoke_refresh_tokens(&mut self) {
        self.refresh.clear();
    }

    /// Whether a CST is currently valid.
    pub fn cst_is_valid(&self, cst: &str, now: Now) -> bool {
        self.cst_sessions
            .get(cst)
            .is_some_and(|s| s.expires_at > now.mono)
    }

    /// Live CST sessions.
    pub fn live_cst_sessions(&self) -> usize {
        self.cst_sessions.len()
    }

    fn token(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("fakeig-{kind}-{:05}-secret", self.counter)
    }

    fn reject(&mut self, r: &Req<'_>, status: u16, code: &str) -> Resp {
        self.stats
            .rejections
            .push((format!("{} {}", r.method, r.path), status, code.to_owned()));
        respond(status, &[], &json!({ "errorCode": code }))
    }

    fn check_version(&mut self, r: &Req<'_>, allowed: &[&str]) -> Option<Resp> {
        // IG REST trading API guide, header table: `Version` "defaults to 1, if not
        // specified" (https://labs.ig.com/rest-trading-api-guide). npm ig-trading-api
        // 0.13.9 sends no Version on createSession/getSession/refreshToken/logout, and
        // PyPI trading-ig 0.0.25 none on its first encryption-key fetch.
        let v = version(r.headers);
        if allowed.contains(&v) {
            None
        } else {
            Some(self.reject(r, 400, VERSION_UNSUPPORTED))
        }
    }

    fn check_key(&mut self, r: &Req<'_>) -> Option<Resp> {
        match r.headers.get("x-ig-api-key").and_then(|v| v.to_str().ok()) {
            None => Some(self.reject(r, 400, "error.security.api-key-missing")),
            Some(k) if k != self.config.api_key => {
                Some(self.reject(r, 403, "error.security.api-key-invalid"))
            }
            Some(_) => None,
        }
    }

    /// Checks auth headers; returns the account the request acts on and the CST if CST
    /// mode.
    fn check_auth(&mut self, r: &Req<'_>, now: Now) -> Result<(String, Option<String>), Box<Resp>> {
        let h = r.headers;
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(auth) = get("authorization") {
            let token = auth.strip_prefix("Bearer ").unwrap_or("").to_owned();
            let grant = self
                .access
                .get(&token)
                .filter(|g| g.expires_at > now.mono)
                .map(|g| g.account.clone());
            let Some(default_account) = grant else {
                return Err(Box::new(self.reject(
                    r,
                    401,
                    "error.security.oauth-token-invalid",
                )));
            };
            let account = get("ig-account-id").unwrap_or(default_account);
            if !self.config.accounts.contains(&account) {
                return Err(Box::new(self.reject(
                    r,
                    401,
                    "error.security.account-access-denied",
                )));
            }
            return Ok((account, None));
        }
        self.check_cst_auth(r, now)
    }

    /// Checks the CST/XST pair alone; returns the account and the CST.
    fn check_cst_auth(
        &mut self,
        r: &Req<'_>,
        now: Now,
    ) -> Result<(String, Option<String>), Box<Resp>> {
        let h = r.headers;
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let Some(cst) = get("cst") else {
            return Err(Box::new(self.reject(
                r,
                401,
                "error.security.client-token-missing",
            )));
        };
        let ttl = self.config.cst_idle_ttl;
        let valid = self
            .cst_sessions
            .get(&cst)
            .is_some_and(|s| s.expires_at > now.mono);
        if !valid {
            self.cst_sessions.remove(&cst);
            return Err(Box::new(self.reject(
                r,
                401,
                "error.security.client-token-invalid",
            )));
        }
        let Some(xst) = get("x-security-token") else {
            return Err(Box::new(self.reject(
                r,
                401,
                "error.security.account-token-missing",
            )));
        };
        let Some(s) = self.cst_sessions.get_mut(&cst) else {
            return Err(Box::new(self.reject(
                r,
                401,
                "error.security.client-token-invalid",
            )));
        };
        if s.xst != xst {
            return Err(Box::new(self.reject(
                r,
                401,
                "error.security.account-token-invalid",
            )));
        }
        s.expires_at = now.mono + ttl;
        Ok((s.account.clone(), Some(cst)))
    }

    fn new_cst_session(&mut self, account: String, now: Now) -> (String, String) {
        let cst = self.token("cst");
        let xst = self.token("xst");
        self.cst_sessions.insert(
            cst.clone(),
            CstSession {
                xst: xst.clone(),
                account,
                expires_at: now.mono + self.config.cst_idle_ttl,
            },
        );
        (cst, xst)
    }

    fn token_body(&mut self, account: &str, now: Now) -> Value {
        let access = self.token("access");
        let refresh = self.token("refresh");
        let ttl = self.config.access_ttl;
        self.access.insert(
            access.clone(),
            AccessGrant {
                account: account.to_owned(),
                expires_at: now.mono + ttl,
            },
        );
        self.refresh
            .insert(refresh.clone(), now.mono + ttl + self.config.refresh_grace);
        let expires_in = if self.config.expires_in_as_number {
            json!(ttl.as_secs())
        } else {
            json!(ttl.as_secs().to_string())
        };
        json!({
            "access_token": access,
            "refresh_token": refresh,
            "scope": "profile",
            "token_type": "Bearer",
            "expires_in": expires_in,
        })
    }

    fn default_account(&self) -> String {
        self.config.accounts.first().cloned().unwrap_or_default()
    }

    fn throttled(&mut self, r: &Req<'_>, now: Now) -> Option<Resp> {
        let too_fast = self
            .last_login_at
            .is_some_and(|t| now.mono < t + self.config.min_login_interval);
        self.last_login_at = Some(now.mono);
        if too_fast {
            self.stats.throttled_logins += 1;
            return Some(self.reject(r, 401, LOGIN_THROTTLED));
        }
        None
    }

    /// Decrypts an encrypted password and checks its format and timestamp.
    fn decrypt_password(&self, encrypted: &str, now: Now) -> Option<String> {
        let ct = B64.decode(encrypted).ok()?;
        let inner = self.key.decrypt(Pkcs1v15Encrypt, &ct).ok()?;
        let plain = String::from_utf8(B64.decode(inner).ok()?).ok()?;
        let (password, ts) = plain.rsplit_once('|')?;
        let ts: i64 = ts.parse().ok()?;
        let max_age = i64::try_from(self.config.encryption_key_max_age.as_millis()).ok()?;
        let fresh = self.issued_time_stamps.contains(&ts) && now.unix_millis() - ts <= max_age;
        fresh.then(|| password.to_owned())
    }

    fn login(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1", "2", "3"]) {
            return e;
        }
        let version = version(r.headers).to_owned();
        let Ok(body) = serde_json::from_slice::<Value>(r.body) else {
            return self.reject(r, 400, "invalid.input");
        };
        let (Some(identifier), Some(password)) =
            (body["identifier"].as_str(), body["password"].as_str())
        else {
            return self.reject(r, 400, "invalid.input");
        };
        if let Some(e) = self.throttled(r, now) {
            return e;
        }
        self.stats.login_attempts += 1;
        let encrypted = body["encryptedPassword"].as_bool() == Some(true);
        let password = if encrypted {
            if version == "3" {
                // Reported behaviour: v3 does not take encrypted passwords.
                None
            } else {
                self.decrypt_password(password, now)
            }
        } else {
            Some(password.to_owned())
        };
        if identifier != self.config.identifier
            || password.as_deref() != Some(self.config.password.as_str())
        {
            self.stats.failed_logins += 1;
            return self.reject(r, 401, "error.security.invalid-details");
        }
        self.stats.logins += 1;
        if encrypted {
            self.stats.encrypted_logins += 1;
        }
        let account = self.default_account();
        if version == "3" {
            let tokens = self.token_body(&account, now);
            return respond(
                200,
                &[],
                &json!({
                    "clientId": "100001",
                    "accountId": account,
                    "timezoneOffset": 1,
                    "lightstreamerEndpoint": self.config.lightstreamer_endpoint,
                    "oauthToken": tokens,
                }),
            );
        }
        let (cst, xst) = self.new_cst_session(account.clone(), now);
        let accounts: Vec<Value> = self
            .config
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({"accountId": a, "accountName": format!("Account {i}"), "preferred": i == 0, "accountType": "CFD"})
            })
            .collect();
        respond(
            200,
            &[("CST", &cst), ("X-SECURITY-TOKEN", &xst)],
            &json!({
                "accountType": "CFD",
                "accountInfo": {"balance": 10000.0, "deposit": 0.0, "profitLoss": 0.0, "available": 10000.0},
                "currencyIsoCode": "GBP",
                "currencySymbol": "£",
                "currentAccountId": account,
                "lightstreamerEndpoint": self.config.lightstreamer_endpoint,
                "accounts": accounts,
                "clientId": "100001",
                "timezoneOffset": 1,
                "hasActiveDemoAccounts": true,
                "hasActiveLiveAccounts": false,
                "trailingStopsEnabled": false,
                "reroutingEnvironment": null,
                "dealingEnabled": true,
                "encrypted": encrypted,
            }),
        )
    }

    fn web_login(&mut self, r: &Req<'_>, now: Now) -> Resp {
        let Ok(body) = serde_json::from_slice::<Value>(r.body) else {
            return self.reject(r, 400, "invalid.input");
        };
        if let Some(e) = self.throttled(r, now) {
            return e;
        }
        self.stats.login_attempts += 1;
        if body["username"].as_str() != Some(self.config.identifier.as_str())
            || body["password"].as_str() != Some(self.config.password.as_str())
            || body["enc"].as_bool() != Some(false)
        {
            self.stats.failed_logins += 1;
            return self.reject(r, 401, "error.security.invalid-details");
        }
        self.stats.logins += 1;
        self.stats.web_logins += 1;
        let account = self.default_account();
        let (cst, xst) = self.new_cst_session(account.clone(), now);
        respond(
            200,
            &[("CST", &cst), ("X-SECURITY-TOKEN", &xst)],
            &json!({
                "clientId": "100001",
                "currentAccountId": account,
                "lightstreamerEndpoint": self.config.lightstreamer_endpoint,
                "accounts": [{"accountId": account, "productCode": "CFD", "canSwitchTo": true}],
                "kycType": "FULL",
            }),
        )
    }

    fn refresh_token(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        // IG reference for /session/refresh-token: the body's `refresh_token` is
        // NotNull, and a generic input error is 400 `invalid.input`
        // (https://labs.ig.com/rest-trading-api-reference/service-detail?id=688).
        let body: Value = serde_json::from_slice(r.body).unwrap_or(Value::Null);
        let Some(token) = body["refresh_token"].as_str().map(str::to_owned) else {
            self.stats.failed_refreshes += 1;
            return self.reject(r, 400, "invalid.input");
        };
        if self.revoked_refresh.contains(&token) {
            self.stats.reused_refresh_tokens += 1;
        }
        let valid = self.refresh.get(&token).is_some_and(|t| *t > now.mono);
        if !valid {
            self.stats.failed_refreshes += 1;
            return self.reject(r, 401, "error.security.oauth-token-invalid");
        }
        // Rotation: the used refresh token is revoked at once.
        self.refresh.remove(&token);
        self.revoked_refresh.push(token);
        self.stats.refreshes += 1;
        let account = self.default_account();
        let body = self.token_body(&account, now);
        respond(200, &[], &body)
    }

    fn encryption_key(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        self.stats.encryption_keys += 1;
        let ts = now.unix_millis();
        self.issued_time_stamps.push(ts);
        let ts_json = if self.config.time_stamp_as_string {
            json!(ts.to_string())
        } else {
            json!(ts)
        };
        respond(
            200,
            &[],
            &json!({"encryptionKey": self.public_der_b64, "timeStamp": ts_json}),
        )
    }

    fn read_session(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        let (account, cst) = match self.check_auth(r, now) {
            Ok(a) => a,
            Err(e) => return *e,
        };
        let body = json!({
            "clientId": "100001",
            "accountId": account,
            "timezoneOffset": 1,
            "locale": "en_GB",
            "currency": "GBP",
            "lightstreamerEndpoint": self.config.lightstreamer_endpoint,
        });
        let fetch = r
            .query
            .is_some_and(|q| q.split('&').any(|p| p == "fetchSessionTokens=true"));
        if !fetch {
            return respond(200, &[], &body);
        }
        let (cst, xst) = match cst.and_then(|c| {
            self.cst_sessions
                .get(&c)
                .map(|s| (c.clone(), s.xst.clone()))
        }) {
            Some(pair) => pair,
            None => self.new_cst_session(account, now),
        };
        respond(200, &[("CST", &cst), ("X-SECURITY-TOKEN", &xst)], &body)
    }

    fn switch(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        // Switching is a CST/XST operation: IG's reference lists PUT /session under
        // the v1/v2 session model and answers with a new X-SECURITY-TOKEN (IG Java
        // sample `UpdateActiveAccountV1Request`). IG documents nothing about a Bearer
        // token on this call (v3 sessions select the account per request with
        // `IG-ACCOUNT-ID`, IG REST guide "Authentication and authorisation"). So the
        // CST/XST pair decides whenever it is sent — npm ig-trading-api 0.13.9 and PyPI
        // trading-ig 0.0.25 send the pair fetched with `fetchSessionTokens=true`,
        // trading-ig next to its Bearer token — and a request with only a Bearer token
        // is refused for the CST it lacks.
        let auth = if r.headers.contains_key("cst") {
            self.check_cst_auth(r, now)
        } else {
            self.check_auth(r, now)
        };
        let (current, cst) = match auth {
            Ok(a) => a,
            Err(e) => return *e,
        };
        let Some(cst) = cst else {
            return self.reject(r, 401, "error.security.client-token-missing");
        };
        let body: Value = serde_json::from_slice(r.body).unwrap_or(Value::Null);
        let Some(target) = body["accountId"].as_str().map(str::to_owned) else {
            return self.reject(r, 400, "invalid.input");
        };
        if target == current {
            return self.reject(r, 412, "error.switch.accountId-must-be-different");
        }
        if !self.config.accounts.contains(&target) {
            return self.reject(r, 400, "error.switch.invalid-accountId");
        }
        if body["defaultAccount"].as_bool() == Some(true) {
            self.stats.default_account_changes += 1;
            if let Some(pos) = self.config.accounts.iter().position(|a| *a == target) {
                let a = self.config.accounts.remove(pos);
                self.config.accounts.insert(0, a);
            }
        }
        let xst = self.token("xst");
        if let Some(s) = self.cst_sessions.get_mut(&cst) {
            s.xst = xst.clone();
            s.account = target;
        }
        self.stats.switches += 1;
        respond(
            200,
            &[("X-SECURITY-TOKEN", &xst)],
            &json!({"trailingStopsEnabled": false, "dealingEnabled": true, "hasActiveDemoAccounts": true, "hasActiveLiveAccounts": false}),
        )
    }

    fn logout(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        match self.check_auth(r, now) {
            Ok((_, Some(cst))) => {
                self.cst_sessions.remove(&cst);
            }
            Ok((_, None)) => {
                if let Some(t) = r
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|a| a.strip_prefix("Bearer "))
                {
                    self.access.remove(t);
                }
            }
            Err(e) => return *e,
        }
        self.stats.logouts += 1;
        empty(204)
    }

    fn accounts(&mut self, r: &Req<'_>, now: Now) -> Resp {
        if let Some(e) = self.check_version(r, &["1"]) {
            return e;
        }
        let (account, _) = match self.check_auth(r, now) {
            Ok(a) => a,
            Err(e) => return *e,
        };
        self.stats.last_account_seen = Some(account);
        let accounts: Vec<Value> = self
            .config
            .accounts
            .iter()
            .map(|a| json!({"accountId": a, "accountName": a, "status": "ENABLED"}))
            .collect();
        respond(200, &[], &json!({ "accounts": accounts }))
    }
}

impl FakeBroker for FakeIg {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        let full = request.uri().path();
        let web = full == self.config.web_platform_path;
        let under_prefix = full
            .strip_prefix(self.config.prefix.as_str())
            .filter(|p| p.is_empty() || p.starts_with('/'));
        let path = match (web, under_prefix) {
            (true, _) => full.to_owned(),
            (false, Some(p)) => p.to_owned(),
            (false, None) => full.to_owned(),
        };
        let method = &effective_method(request);
        *self
            .stats
            .requests
            .entry(format!("{method} {path}"))
            .or_insert(0) += 1;

        if let Some(pos) = self
            .faults
            .iter()
            .position(|(p, m, _)| *p == path && m.as_ref().is_none_or(|m| m == method))
            && let Some((_, _, fault)) = self.faults.remove(pos)
        {
            return match fault {
                Fault::Fail(kind) => Reply::Fail(TransportFailure::new(kind, "injected")),
                Fault::Respond {
                    status,
                    headers,
                    body,
                } => {
                    let mut b = http::Response::builder().status(status);
                    for (k, v) in &headers {
                        b = b.header(k.as_str(), v.as_str());
                    }
                    Reply::Response(b.body(body).unwrap_or_else(|_| empty(500)))
                }
            };
        }

        let r = Req {
            method,
            path: path.clone(),
            query: request.uri().query(),
            headers: request.headers(),
            body: request.body(),
        };
        if !web && under_prefix.is_none() {
            // A wrong base URL is told apart from bad credentials: nothing outside the
            // REST prefix is IG's.
            return Reply::Response(self.reject(&r, 404, NOT_FOUND));
        }
        if web {
            return if *method == http::Method::POST {
                Reply::Response(self.web_login(&r, now))
            } else {
                Reply::Response(empty(405))
            };
        }
        if let Some(e) = self.check_key(&r) {
            return Reply::Response(e);
        }
        let resp = match (method.as_str(), path.as_str()) {
            ("POST", "/session") => self.login(&r, now),
            ("GET", "/session") => self.read_session(&r, now),
            ("PUT", "/session") => self.switch(&r, now),
            ("DELETE", "/session") => self.logout(&r, now),
            ("POST", "/session/refresh-token") => self.refresh_token(&r, now),
            ("GET", "/session/encryptionKey") => self.encryption_key(&r, now),
            ("GET", "/accounts") => self.accounts(&r, now),
            _ => self.reject(&r, 404, NOT_FOUND),
        };
        Reply::Response(resp)
    }
}

/// Host name the IG tests use for the fake (any host works: the harness never
/// resolves it).
pub const TEST_HOST: &str = "fake-ig.test";

/// A session configuration matching a fake's credentials, on
/// `https://fake-ig.test/gateway/deal`, with a fixed RNG seed. The web-platform URL
/// points at the fake too.
pub fn session_config(
    fake: &FakeIg,
    flow: broker_session::ig::LoginFlow,
) -> broker_session::ig::IgConfig {
    use broker_session::ig::{IgConfig, IgEnvironment};
    let mut c = IgConfig::new(
        IgEnvironment::Custom(fake.base_url(TEST_HOST)),
        fake.config.api_key.as_str(),
        fake.config.identifier.as_str(),
        fake.config.password.as_str(),
    );
    c.login_flow = flow;
    c.web_platform_url = format!("https://{TEST_HOST}{}", fake.config.web_platform_path);
    c
}

/// An application request the fake serves: `GET /accounts`, Version 1.
///
/// # Panics
/// Never for a valid base URL.
pub fn accounts_request(fake: &FakeIg) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{}/accounts", fake.base_url(TEST_HOST)))
        .header("Version", "1")
        .header("Accept", "application/json; charset=UTF-8")
        .body(Vec::new())
        .expect("valid request")
}
