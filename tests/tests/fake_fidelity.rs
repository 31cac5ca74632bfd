//! The fakes accept what the real brokers accept: each test sends the exact request
//! an existing third-party client sends (headers and body as that library builds
//! them) and checks the fake's answer.
//!
//! Clients quoted: PyPI `trading-ig` 0.0.25 (`trading_ig/rest.py`), npm
//! `ig-trading-api` 0.13.9 (`src/login/LoginAPI.ts`, `src/APIClient.ts`), PyPI
//! `ibind` 0.2.2 (`ibind/oauth/oauth1a.py`, `ibind/base/rest_client.py`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_session::Now;
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret};
use broker_session_testkit::ibkr::{ACCESS_TOKEN, CONSUMER_KEY, FakeIbkr, QueryAcceptance};
use broker_session_testkit::ig::{FakeIg, NOT_FOUND, VERSION_UNSUPPORTED};
use broker_session_testkit::server::{ServedOn, Server};
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};
use hmac::{KeyInit as _, Mac as _};
use rsa::PrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// IG

const IG: &str = "https://demo-api.ig.com/gateway/deal";

fn ig_call(
    fake: &mut FakeIg,
    now: Now,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<Vec<u8>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{IG}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body.as_bytes().to_vec()).unwrap();
    match fake.handle(&req, now) {
        Reply::Response(r) => r,
        Reply::Fail(f) => panic!("transport fault {f:?}"),
    }
}

fn error_code(resp: &http::Response<Vec<u8>>) -> String {
    let v: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    v["errorCode"].as_str().unwrap_or("").to_owned()
}

fn header(resp: &http::Response<Vec<u8>>, name: &str) -> String {
    resp.headers()[name].to_str().unwrap().to_owned()
}

/// The headers trading-ig 0.0.25's `IGSessionCRUD` puts on its requests session.
fn trading_ig_base(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-IG-API-KEY", key.to_owned()),
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json; charset=UTF-8".to_owned()),
    ]
}

fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn ig_a_missing_version_header_means_version_1_on_every_endpoint() {
    let mut fake = FakeIg::default();
    let clock = VirtualClock::new();
    let now = clock.now();
    let key = fake.config.api_key.clone();
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    // ig-trading-api 0.13.9 `createSession` as its axios instance sends it: no Version.
    let axios = [
        ("X-IG-API-KEY", key.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/plain, */*"),
    ];
    let resp = ig_call(&mut fake, now, "POST", "/session", &axios, &login);
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    // Version 1 answers with CST/XST headers and the v1/v2 body.
    let (cst, xst) = (header(&resp, "cst"), header(&resp, "x-security-token"));
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body["currentAccountId"], "ACC-DEFAULT");

    let authed = [
        ("X-IG-API-KEY", key.as_str()),
        ("Accept", "application/json, text/plain, */*"),
        ("CST", cst.as_str()),
        ("X-SECURITY-TOKEN", xst.as_str()),
        ("IG-ACCOUNT-ID", "ACC-DEFAULT"),
    ];
    // `getSession`.
    let resp = ig_call(&mut fake, now, "GET", "/session", &authed, "");
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    // trading-ig 0.0.25 `get_encryption_key` before any other call: the requests
    // session carries no VERSION yet.
    let fresh = trading_ig_base(&key);
    let resp = ig_call(
        &mut fake,
        now,
        "GET",
        "/session/encryptionKey",
        &refs(&fresh),
        "",
    );
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    // `logout`: DELETE without Version.
    let resp = ig_call(&mut fake, now, "DELETE", "/session", &authed, "");
    assert_eq!(resp.status(), 204, "{}", error_code(&resp));
    assert!(!fake.cst_is_valid(&cst, now));
    assert!(
        fake.stats.rejections.is_empty(),
        "{:?}",
        fake.stats.rejections
    );
}

#[test]
fn ig_refresh_without_version_and_a_version_above_the_endpoints_is_refused() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    let v3 = [
        ("X-IG-API-KEY", key.as_str()),
        ("Content-Type", "application/json"),
        ("Version", "3"),
    ];
    let resp = ig_call(&mut fake, now, "POST", "/session", &v3, &login);
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    let refresh = body["oauthToken"]["refresh_token"].as_str().unwrap();
    // ig-trading-api 0.13.9 `refreshToken`: no Version header.
    let resp = ig_call(
        &mut fake,
        now,
        "POST",
        "/session/refresh-token",
        &[
            ("X-IG-API-KEY", key.as_str()),
            ("Content-Type", "application/json"),
        ],
        &json!({ "refresh_token": refresh }).to_string(),
    );
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    assert_eq!(fake.stats.refreshes, 1);

    // A Version the endpoint does not have stays an error.
    for (method, path, v) in [
        ("POST", "/session", "4"),
        ("GET", "/session/encryptionKey", "2"),
        ("POST", "/session/refresh-token", "2"),
    ] {
        let resp = ig_call(
            &mut fake,
            now,
            method,
            path,
            &[("X-IG-API-KEY", key.as_str()), ("Version", v)],
            "{}",
        );
        assert_eq!(resp.status(), 400, "{method} {path}");
        assert_eq!(error_code(&resp), VERSION_UNSUPPORTED);
    }
}

#[test]
fn ig_post_with_method_delete_is_a_logout_not_a_login() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    let mut h = trading_ig_base(&key);
    h.push(("VERSION", "2".to_owned()));
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    let resp = ig_call(&mut fake, now, "POST", "/session", &refs(&h), &login);
    assert_eq!(resp.status(), 200);
    let (cst, xst) = (header(&resp, "cst"), header(&resp, "x-security-token"));
    // trading-ig 0.0.25 `logout`: `IGSessionCRUD.delete` posts `{}` with VERSION 1,
    // `_method: DELETE` and the session's CST/XST.
    h.pop();
    h.extend([
        ("CST", cst.clone()),
        ("X-SECURITY-TOKEN", xst),
        ("VERSION", "1".to_owned()),
        ("_method", "DELETE".to_owned()),
    ]);
    let resp = ig_call(&mut fake, now, "POST", "/session", &refs(&h), "{}");
    assert_eq!(resp.status(), 204, "{}", error_code(&resp));
    assert!(!fake.cst_is_valid(&cst, now), "the session must end");
    assert_eq!(fake.stats.logouts, 1);
    assert_eq!(fake.stats.logins, 1, "not a second login");
    assert_eq!(fake.stats.count("DELETE /session"), 1);
}

#[test]
fn ig_post_with_method_put_switches_the_account() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    let mut h = trading_ig_base(&key);
    h.push(("VERSION", "2".to_owned()));
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    let resp = ig_call(&mut fake, now, "POST", "/session", &refs(&h), &login);
    let (cst, xst) = (header(&resp, "cst"), header(&resp, "x-security-token"));
    h.pop();
    h.extend([
        ("CST", cst),
        ("X-SECURITY-TOKEN", xst.clone()),
        ("VERSION", "1".to_owned()),
        ("_method", "PUT".to_owned()),
    ]);
    let body = json!({"accountId": "ACC-OTHER", "defaultAccount": false}).to_string();
    let resp = ig_call(&mut fake, now, "POST", "/session", &refs(&h), &body);
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    assert_ne!(header(&resp, "x-security-token"), xst);
    assert_eq!(fake.stats.switches, 1);
}

#[test]
fn ig_v3_switch_with_fetched_session_tokens_next_to_the_bearer_token() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    let mut h = trading_ig_base(&key);
    h.push(("VERSION", "3".to_owned()));
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    let resp = ig_call(&mut fake, now, "POST", "/session", &refs(&h), &login);
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    let access = body["oauthToken"]["access_token"].as_str().unwrap();
    // trading-ig `_manage_headers` / `_handle_oauth`: IG-ACCOUNT-ID and Bearer stay on
    // the requests session from now on.
    h.pop();
    h.extend([
        ("IG-ACCOUNT-ID", "ACC-DEFAULT".to_owned()),
        ("Authorization", format!("Bearer {access}")),
    ]);
    // Before fetching the CST/XST pair, a Bearer-only switch lacks the client token:
    // the code names exactly that.
    let mut put = h.clone();
    put.push(("VERSION", "1".to_owned()));
    let switch = json!({"accountId": "ACC-OTHER", "defaultAccount": false}).to_string();
    let resp = ig_call(&mut fake, now, "PUT", "/session", &refs(&put), &switch);
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(&resp), "error.security.client-token-missing");

    // `read_session(fetch_session_tokens="true")`: the answer's CST/XST are copied
    // onto the requests session (`handle_session_tokens`).
    let resp = ig_call(
        &mut fake,
        now,
        "GET",
        "/session?fetchSessionTokens=true",
        &refs(&put),
        "",
    );
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    put.extend([
        ("CST", header(&resp, "cst")),
        ("X-SECURITY-TOKEN", header(&resp, "x-security-token")),
    ]);
    // `switch_account`: PUT with Bearer, IG-ACCOUNT-ID, CST and XST all at once.
    let resp = ig_call(&mut fake, now, "PUT", "/session", &refs(&put), &switch);
    assert_eq!(resp.status(), 200, "{}", error_code(&resp));
    assert!(resp.headers().contains_key("x-security-token"));
    assert_eq!(fake.stats.switches, 1);
}

#[test]
fn ig_refresh_without_a_refresh_token_is_a_bad_request() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    for body in ["", "{}", r#"{"refresh_token": null}"#] {
        let resp = ig_call(
            &mut fake,
            now,
            "POST",
            "/session/refresh-token",
            &[("X-IG-API-KEY", key.as_str()), ("Version", "1")],
            body,
        );
        assert_eq!(resp.status(), 400, "{body:?}");
        assert_eq!(error_code(&resp), "invalid.input");
    }
    // An unknown refresh token is still an authentication failure.
    let resp = ig_call(
        &mut fake,
        now,
        "POST",
        "/session/refresh-token",
        &[("X-IG-API-KEY", key.as_str()), ("Version", "1")],
        r#"{"refresh_token": "never-issued"}"#,
    );
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(&resp), "error.security.oauth-token-invalid");
}

#[test]
fn ig_paths_outside_the_rest_prefix_are_not_found() {
    let mut fake = FakeIg::default();
    let now = VirtualClock::new().now();
    let key = fake.config.api_key.clone();
    let login =
        json!({"identifier": fake.config.identifier, "password": fake.config.password}).to_string();
    for path in ["/session", "/deal/session", "/gateway/dealsession"] {
        let req = http::Request::post(format!("https://demo-api.ig.com{path}"))
            .header("X-IG-API-KEY", key.as_str())
            .header("Version", "2")
            .body(login.clone().into_bytes())
            .unwrap();
        let Reply::Response(resp) = fake.handle(&req, now) else {
            panic!()
        };
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(error_code(&resp), NOT_FOUND);
    }
    assert_eq!(fake.stats.login_attempts, 0);
}

// ---------------------------------------------------------------------------
// IBKR OAuth 1.0a, signed the way ibind 0.2.2 signs

/// Python's `urllib.parse.quote_plus` with no safe characters (what ibind uses).
fn quote_plus(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// ibind `generate_base_string`: sorted `k=v` (values as given) joined by `&`,
/// `quote_plus`-encoded; the URL `quote_plus`-encoded; the prepend before it all.
fn ibind_base_string(
    method: &str,
    url: &str,
    params: &[(String, String)],
    prepend: &str,
) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let joined: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{prepend}{method}&{}&{}",
        quote_plus(url),
        quote_plus(&joined.join("&"))
    )
}

/// ibind `generate_authorization_header_string`.
fn ibind_header(realm: &str, params: &[(String, String)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let pairs: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("OAuth realm=\"{realm}\", {}", pairs.join(", "))
}

struct Ibind {
    fake: FakeIbkr,
    clock: VirtualClock,
    nonce: u32,
    lst: Vec<u8>,
    served: ServedOn,
}

const LOOPBACK_BASE: &str = "https://127.0.0.1:5005/v1/api/";

impl Ibind {
    fn oauth_params(&mut self, method: &str) -> Vec<(String, String)> {
        self.nonce += 1;
        vec![
            ("oauth_consumer_key".into(), CONSUMER_KEY.into()),
            ("oauth_nonce".into(), format!("ibindNonce{:06}", self.nonce)),
            ("oauth_signature_method".into(), method.into()),
            (
                "oauth_timestamp".into(),
                self.clock.now().unix_seconds().to_string(),
            ),
            ("oauth_token".into(), ACCESS_TOKEN.into()),
        ]
    }

    /// The request as it reaches the fake through the loopback server: ibind's
    /// headers (`Host: api.ibkr.com` always), the URI rebuilt from that Host, and the
    /// address it really came in on.
    fn send(
        &mut self,
        method: &str,
        endpoint_and_query: &str,
        authorization: String,
        body: &[u8],
    ) -> http::Response<Vec<u8>> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://api.ibkr.com/v1/api/{endpoint_and_query}"))
            .header("Accept", "*/*")
            .header("Accept-Encoding", "gzip,deflate")
            .header("Authorization", authorization)
            .header("Connection", "keep-alive")
            .header("Host", "api.ibkr.com")
            .header("User-Agent", "ibind")
            .header("Content-Length", body.len().to_string());
        if !body.is_empty() {
            req = req.header("Content-Type", "application/json");
        }
        let mut req = req.body(body.to_vec()).unwrap();
        req.extensions_mut().insert(self.served);
        match self.fake.handle(&req, self.clock.now()) {
            Reply::Response(r) => r,
            Reply::Fail(f) => panic!("{f:?}"),
        }
    }

    /// ibind `req_live_session_token`, signed for `base` + `oauth/live_session_token`.
    fn live_session_token(base: &str, realm: &str) -> (Self, http::Response<Vec<u8>>) {
        let (fake, _) = FakeIbkr::oauth(false);
        let v: Value = serde_json::from_str(broker_session_testkit::ibkr::VECTORS_JSON).unwrap();
        let key = |k: &str| PrivateKey::from_pkcs1_pem(v["rsa"][k].as_str().unwrap()).unwrap();
        let enc = key("encryption_private_key_pkcs1_pem");
        let sig = key("signature_private_key_pkcs1_pem");
        let prime = v["dh"]["prime_hex"].as_str().unwrap();
        // The access token secret sim-server prints (the same fixture encryption).
        let (_, config) = FakeIbkr::oauth(false);
        let secret = STANDARD
            .decode(config.access_token_secret.expose_secret())
            .unwrap();
        let prepend_bytes = enc.decrypt(rsa::Pkcs1v15Encrypt, &secret).unwrap();
        let prepend: String = prepend_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let group = DhGroup::new(prime, 2).unwrap();
        let a =
            DhSecret::from_hex("123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
                .unwrap();
        let mut me = Self {
            fake,
            clock: VirtualClock::new(),
            nonce: 0,
            lst: Vec::new(),
            served: ServedOn {
                tls: true,
                addr: SocketAddr::from(([127, 0, 0, 1], 5005)),
            },
        };
        let mut params = me.oauth_params("RSA-SHA256");
        params.push(("diffie_hellman_challenge".into(), group.challenge(&a)));
        let url = format!("{base}oauth/live_session_token");
        let base_string = ibind_base_string("POST", &url, &params, &prepend);
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(sig);
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        let signature = signer.sign(base_string.as_bytes()).to_vec();
        params.push((
            "oauth_signature".into(),
            quote_plus(&STANDARD.encode(signature)),
        ));
        let resp = me.send(
            "POST",
            "oauth/live_session_token",
            ibind_header(realm, &params),
            b"",
        );
        if resp.status() == 200 {
            let body: Value = serde_json::from_slice(resp.body()).unwrap();
            let k = group
                .shared_secret(&a, body["diffie_hellman_response"].as_str().unwrap())
                .unwrap();
            let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(k.expose_secret()).unwrap();
            mac.update(&prepend_bytes);
            me.lst = mac.finalize().into_bytes().to_vec();
            // ibind `validate_live_session_token`.
            let mut check = hmac::Hmac::<sha1::Sha1>::new_from_slice(&me.lst).unwrap();
            check.update(CONSUMER_KEY.as_bytes());
            let hex: String = check
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(body["live_session_token_signature"], hex.as_str());
        }
        (me, resp)
    }

    /// ibind `_get_headers` → `generate_oauth_headers` (HMAC-SHA256): signed for
    /// `url` (ibind: its base URL + endpoint, never the query string) and, when given,
    /// with the query parameters in the signed set (RFC 5849 style, not ibind's).
    fn signed(
        &mut self,
        method: &str,
        endpoint: &str,
        query: &str,
        signed_url_base: &str,
        sign_query: bool,
        body: &[u8],
    ) -> http::Response<Vec<u8>> {
        let mut params = self.oauth_params("HMAC-SHA256");
        let mut signed = params.clone();
        if sign_query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                signed.push((k.to_owned(), v.to_owned()));
            }
        }
        let url = format!("{signed_url_base}{endpoint}");
        let base_string = ibind_base_string(method, &url, &signed, "");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.lst).unwrap();
        mac.update(base_string.as_bytes());
        params.push((
            "oauth_signature".into(),
            quote_plus(&STANDARD.encode(mac.finalize().into_bytes())),
        ));
        let target = if query.is_empty() {
            endpoint.to_owned()
        } else {
            format!("{endpoint}?{query}")
        };
        let header = ibind_header("test_realm", &params);
        self.send(method, &target, header, body)
    }
}

#[test]
fn ibkr_ibind_live_session_token_with_host_api_ibkr_com_and_test_realm() {
    // ibind signs for the base URL it was given (the loopback address) and sends
    // `Host: api.ibkr.com`.
    let (me, resp) = Ibind::live_session_token(LOOPBACK_BASE, "test_realm");
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        String::from_utf8_lossy(resp.body())
    );
    let mut me = me;
    let server = me.fake.oauth_server().unwrap();
    assert_eq!(server.tokens_issued, 1);
    assert_eq!(server.bad_signatures, 0);
    assert_eq!(
        server.current_lst().unwrap(),
        STANDARD.encode(&me.lst),
        "both sides derive the same live session token"
    );
    // A client that believes it talks to the real host signs for the public URL.
    let (_, resp) = Ibind::live_session_token("https://api.ibkr.com/v1/api/", "test_realm");
    assert_eq!(resp.status(), 200);
}

#[test]
fn ibkr_testcons_pairs_with_test_realm_only() {
    let (mut me, resp) = Ibind::live_session_token(LOOPBACK_BASE, "limited_poa");
    assert_eq!(resp.status(), 401);
    assert!(String::from_utf8_lossy(resp.body()).contains("invalid consumer"));
    assert_eq!(me.fake.oauth_server().unwrap().tokens_issued, 0);
    assert_eq!(
        broker_session_testkit::ibkr::realm_for("TESTCONS"),
        "test_realm"
    );
    assert_eq!(
        broker_session_testkit::ibkr::realm_for("ABCDEFGHI"),
        "limited_poa"
    );
}

#[test]
fn ibkr_signed_calls_are_verified_against_every_url_a_client_may_have_signed() {
    let (mut me, resp) = Ibind::live_session_token(LOOPBACK_BASE, "test_realm");
    assert_eq!(resp.status(), 200);
    // `initialize_brokerage_session`: POST with JSON body, signed for the loopback URL.
    let body = br#"{"publish": true, "compete": true}"#;
    let resp = me.signed(
        "POST",
        "iserver/auth/ssodh/init",
        "",
        LOOPBACK_BASE,
        false,
        body,
    );
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        String::from_utf8_lossy(resp.body())
    );
    // Signed for the public URL (a client that thinks it talks to api.ibkr.com).
    let resp = me.signed(
        "GET",
        "iserver/accounts",
        "",
        "https://api.ibkr.com/v1/api/",
        false,
        b"",
    );
    assert_eq!(resp.status(), 200);
    // `localhost` instead of 127.0.0.1 reaches the same listener.
    let resp = me.signed(
        "POST",
        "tickle",
        "",
        "https://localhost:5005/v1/api/",
        false,
        b"",
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(me.fake.oauth_server().unwrap().bad_signatures, 0);
    // A URL nobody could have connected to is refused.
    let resp = me.signed(
        "POST",
        "tickle",
        "",
        "https://example.com/v1/api/",
        false,
        b"",
    );
    assert_eq!(resp.status(), 401);
    let resp = me.signed(
        "POST",
        "tickle",
        "",
        "https://127.0.0.1:5006/v1/api/",
        false,
        b"",
    );
    assert_eq!(resp.status(), 401);
    assert_eq!(me.fake.oauth_server().unwrap().bad_signatures, 2);
}

#[test]
fn ibkr_gets_with_a_query_string_pass_signed_with_or_without_the_query() {
    let (mut me, resp) = Ibind::live_session_token(LOOPBACK_BASE, "test_realm");
    assert_eq!(resp.status(), 200);
    let body = br#"{"publish": true, "compete": true}"#;
    assert_eq!(
        me.signed(
            "POST",
            "iserver/auth/ssodh/init",
            "",
            LOOPBACK_BASE,
            false,
            body
        )
        .status(),
        200
    );
    // ibind `live_orders(filters=["filled"], force=True)`: requests encodes the
    // params into the URL; ibind signs without them.
    let query = "filters=filled&force=True";
    let resp = me.signed(
        "GET",
        "iserver/account/orders",
        query,
        LOOPBACK_BASE,
        false,
        b"",
    );
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        String::from_utf8_lossy(resp.body())
    );
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["orders"], json!([]));
    // The RFC 5849 variant (query parameters in the signed set) passes too.
    let resp = me.signed(
        "GET",
        "iserver/account/orders",
        query,
        LOOPBACK_BASE,
        true,
        b"",
    );
    assert_eq!(resp.status(), 200);
    // A fake told to accept only one variant refuses the other.
    me.fake.oauth_server().unwrap().query_signing = QueryAcceptance::Included;
    let resp = me.signed(
        "GET",
        "iserver/account/orders",
        query,
        LOOPBACK_BASE,
        false,
        b"",
    );
    assert_eq!(resp.status(), 401);
    me.fake.oauth_server().unwrap().query_signing = QueryAcceptance::Omitted;
    let resp = me.signed(
        "GET",
        "iserver/account/orders",
        query,
        LOOPBACK_BASE,
        true,
        b"",
    );
    assert_eq!(resp.status(), 401);
}

#[test]
fn ibkr_sso_validate_is_for_the_gateway_not_oauth_1() {
    let (mut me, resp) = Ibind::live_session_token(LOOPBACK_BASE, "test_realm");
    assert_eq!(resp.status(), 200);
    // ibind `validate()`: GET /sso/validate.
    let resp = me.signed("GET", "sso/validate", "", LOOPBACK_BASE, false, b"");
    assert_eq!(resp.status(), 401);
    assert_eq!(me.fake.oauth_server().unwrap().bad_signatures, 0);

    let mut gateway = FakeIbkr::gateway();
    let req = http::Request::get("https://127.0.0.1:5000/v1/api/sso/validate")
        .header("User-Agent", "python-requests/2.34.2")
        .body(Vec::new())
        .unwrap();
    let Reply::Response(resp) = gateway.handle(&req, VirtualClock::new().now()) else {
        panic!()
    };
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["RESULT"], true);
}

// ---------------------------------------------------------------------------
// The loopback server

fn raw_exchange(addr: &str, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_body_over_the_limit_gets_413_not_a_reset() {
    let server = Server::start(FakeIg::default()).unwrap();
    let addr = server.http_url().trim_start_matches("http://").to_owned();
    let request = format!(
        "POST /gateway/deal/session HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        3 << 20
    );
    let answer = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // Chunked, without a declared length: the limit still holds.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!("POST /gateway/deal/session HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..3 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        server.requests().is_empty(),
        "the fake never sees an oversized request"
    );
}

#[test]
fn a_body_that_never_arrives_times_out() {
    let mut options = broker_session_testkit::server::ServerOptions::default();
    options.body_timeout = Duration::from_millis(300);
    let fake = std::sync::Arc::new(std::sync::Mutex::new(FakeIg::default()));
    let server = Server::start_shared(fake, options).unwrap();
    let addr = server.http_url().trim_start_matches("http://").to_owned();
    // Headers promise 100 bytes; none follow, and the socket stays open.
    let request = format!(
        "POST /gateway/deal/session HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n"
    );
    let started = std::time::Instant::now();
    let answer = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Headers that never finish: the connection is closed, not held.
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        &addr,
        b"GET /gateway/deal/session HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{answer:?}");
}

#[test]
fn the_request_log_records_headers_without_credentials() {
    let dir = std::env::temp_dir().join(format!("fake-fidelity-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let mut options = broker_session_testkit::server::ServerOptions::default();
    options.request_log = Some(dir.clone());
    let fake = FakeIg::default();
    let (key, id, pw) = (
        fake.config.api_key.clone(),
        fake.config.identifier.clone(),
        fake.config.password.clone(),
    );
    let server =
        Server::start_shared(std::sync::Arc::new(std::sync::Mutex::new(fake)), options).unwrap();
    let addr = server.http_url().trim_start_matches("http://").to_owned();
    let body = json!({"identifier": id, "password": pw}).to_string();
    let request = format!(
        "POST /gateway/deal/session HTTP/1.1\r\nHost: {addr}\r\nX-IG-API-KEY: {key}\r\nVersion: 2\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let request = format!(
        "GET /gateway/deal/session HTTP/1.1\r\nHost: {addr}\r\nX-IG-API-KEY: {key}\r\nAuthorization: Bearer abc-secret\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    drop(server);
    let log = std::fs::read_to_string(&dir).unwrap();
    let _ = std::fs::remove_file(&dir);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["path"], "/gateway/deal/session");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["headers"]["version"], "2");
    assert_eq!(lines[0]["headers"]["x-ig-api-key"], "<redacted>");
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[1]["error"], "error.security.oauth-token-invalid");
    assert_eq!(lines[1]["headers"]["authorization"], "Bearer <redacted>");
    for secret in [
        key.as_str(),
        pw.as_str(),
        "abc-secret",
        "fakeig-cst",
        "fakeig-xst",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

// ---------------------------------------------------------------------------
// sim-server

#[test]
fn sim_server_help_explains_every_option() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--http-port",
        "--https-port",
        "--ibkr MODE",
        "--oauth-public-url",
        "--self-signed",
        "--ca-out",
        "--request-log",
        "--ig-access-ttl",
        "--ig-min-login-gap",
        "--ibkr-competing",
        "--ibkr-idle-timeout",
        "--body-timeout",
        "--stall",
        "--for",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(option))
            .unwrap_or_else(|| panic!("{option} missing from --help"));
        assert!(
            line.len() > option.len() + 10,
            "{option} has no meaning: {line}"
        );
    }
    assert!(help.contains("default: https://api.ibkr.com/v1/api"));
}

#[test]
fn sim_server_answers_a_wrong_ig_base_path_with_the_ig_fakes_404() {
    use std::io::{BufRead as _, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sim-server"))
        .args(["--ibkr", "oauth", "--for", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Listening on 127.0.0.1");
        lines.push(line);
        if done {
            break;
        }
    }
    let ig_base = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("http://127.0.0.1:") && l.ends_with("/gateway/deal"))
        .unwrap()
        .to_owned();
    let output = lines.join("\n");
    for expected in [
        "IGService.BASE_URL",
        "oauth_rest_url",
        "realm:               test_realm",
        "Example: curl",
    ] {
        assert!(
            output.contains(expected),
            "{expected} missing from:\n{output}"
        );
    }
    let addr = ig_base
        .trim_start_matches("http://")
        .trim_end_matches("/gateway/deal")
        .to_owned();
    let body = r#"{"identifier":"fake-user","password":"x"}"#;
    let answers: Vec<String> = ["/session", "/deal/session", "/gateway/deal/nowhere"]
        .iter()
        .map(|path| {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-IG-API-KEY: fakeig-api-key-secret\r\nVersion: 2\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5))
        })
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains(NOT_FOUND), "{answer}");
    }
}
