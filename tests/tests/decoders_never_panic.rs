//! Every public decoder, parser and classifier returns a value or a typed error for
//! any input: arbitrary bytes, and arbitrary-but-JSON-shaped bodies built from the
//! field names the decoders look for. They are pure functions, so each proptest runs
//! 10,000 cases by default (`PROPTEST_CASES` overrides), except the two doing big-integer
//! arithmetic per case (a quarter and a tenth of that).

use std::time::Duration;

use broker_session::ibkr::oauth::{
    base_string, dh::DhGroup, dh::DhSecret, hex_decode, lst, percent,
};
use broker_session::ibkr::{decode as ibkr_decode, status};
use broker_session::ig::{
    BackOffs, Endpoint, PersistedSession, SessionSnapshot, classify, encrypt_password, responses,
};
use broker_session::secret::{LiveSessionToken, Password};
use proptest::prelude::*;
use rand::SeedableRng;
use serde_json::{Map, Value};

/// The fixture Diffie-Hellman group (2048-bit prime), built once.
static GROUP: std::sync::LazyLock<DhGroup> = std::sync::LazyLock::new(|| {
    let vectors: Value = serde_json::from_str(broker_session_testkit::ibkr::VECTORS_JSON).unwrap();
    DhGroup::new(vectors["dh"]["prime_hex"].as_str().unwrap(), 2).unwrap()
});

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Field names the IG and IBKR decoders read, so generated documents reach deep.
const KEYS: &[&str] = &[
    "errorCode",
    "currentAccountId",
    "accountId",
    "accounts",
    "accountName",
    "preferred",
    "accountType",
    "clientId",
    "lightstreamerEndpoint",
    "timezoneOffset",
    "oauthToken",
    "access_token",
    "refresh_token",
    "expires_in",
    "encryptionKey",
    "timeStamp",
    "authenticationStatus",
    "formDetails",
    "formType",
    "locale",
    "currency",
    "authenticated",
    "connected",
    "competing",
    "established",
    "message",
    "fail",
    "MAC",
    "serverInfo",
    "serverName",
    "session",
    "ssoExpires",
    "collission",
    "userId",
    "iserver",
    "authStatus",
    "hmds",
    "error",
    "statusCode",
    "USER_ID",
    "RESULT",
    "EXPIRES",
    "features",
    "status",
    "confirmed",
    "diffie_hellman_response",
    "live_session_token_signature",
    "live_session_token_expiration",
    "mode",
    "base_url",
    "account_id",
    "tokens",
    "cst",
    "xst",
    "expires_at_epoch_ms",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<u64>().prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("60"),
            Just("-1"),
            Just("1e400"),
            Just("no session"),
            Just("no bridge"),
            Just("true"),
            Just("oauth"),
            Just("cst"),
            Just("error.security.invalid-details"),
            Just("ff"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (prop_oneof![4 => proptest::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-z_]{1,8}"], inner),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Arbitrary bytes, JSON documents, and JSON documents cut or corrupted.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..384),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(|(v, at, b, cut)| {
            let mut bytes = v.to_string().into_bytes();
            if !bytes.is_empty() {
                let i = at % bytes.len();
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = b;
                }
            }
            bytes
        }),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("CST".to_owned()),
                Just("X-SECURITY-TOKEN".to_owned()),
                Just("location".to_owned()),
                Just("content-type".to_owned()),
                "[a-z-]{1,12}",
            ],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..48),
                Just(b"https://localhost:5000/sso/Login?forwardTo=22".to_vec()),
                Just(b"/sso/Dispatcher".to_vec()),
            ],
        ),
        0..4,
    )
}

fn response(status: u16, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

fn status_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(204),
        Just(302),
        Just(400),
        Just(401),
        Just(403),
        Just(412),
        Just(429),
        Just(500),
        Just(503),
        100u16..1000,
    ]
}

const BACKOFFS: BackOffs = BackOffs {
    allowance: Duration::from_secs(60),
    login_throttle: Duration::from_secs(180),
};

const ENDPOINTS: [Endpoint; 7] = [
    Endpoint::Login,
    Endpoint::Refresh,
    Endpoint::EncryptionKey,
    Endpoint::ReadSession,
    Endpoint::Switch,
    Endpoint::Logout,
    Endpoint::Application,
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ig_responses(s in status_code(), h in headers(), b in body()) {
        let r = response(s, &h, b);
        let _ = responses::login_v2(&r);
        let _ = responses::login_v3(&r);
        let _ = responses::refresh(&r);
        let _ = responses::read_session(&r);
        let _ = responses::switch_account(&r);
        let _ = responses::encryption_key(&r);
        let _ = responses::web_platform_login(&r);
    }

    #[test]
    fn ig_error_code_and_classify(s in 0u16..1000, b in body(), code in proptest::option::of("[ -~]{0,40}")) {
        let from_body = responses::error_code(&b);
        for e in ENDPOINTS {
            let _ = classify(e, s, from_body.as_deref(), BACKOFFS);
            let _ = classify(e, s, code.as_deref(), BACKOFFS);
        }
    }

    #[test]
    fn ig_snapshot_from_any_json(b in body()) {
        if let Ok(p) = serde_json::from_slice::<PersistedSession>(&b) {
            let s = SessionSnapshot::from_persisted(p);
            let _ = (s.base_url().len(), s.account_id().len(), format!("{s:?}"));
        }
    }

    #[test]
    fn ibkr_decoders(b in body()) {
        let _ = ibkr_decode::auth_status("POST /iserver/auth/status", &b);
        let _ = ibkr_decode::tickle(&b);
        let _ = ibkr_decode::validate(&b);
        let _ = ibkr_decode::logout(&b);
        let _ = ibkr_decode::reauthenticate(&b);
        let _ = ibkr_decode::live_session_token(&b);
        let _ = ibkr_decode::error_text(&b);
        if let Ok(s) = ibkr_decode::auth_status("x", &b) {
            let _ = status::classify(&s);
        }
    }

    #[test]
    fn ibkr_status_classification(s in 100u16..1000, h in headers(), b in body()) {
        let r = response(s, &h, b);
        let _ = status::is_no_session(&r);
        let _ = status::is_sso_redirect(&r);
        let _ = status::is_no_bridge(&r);
    }

    #[test]
    fn oauth_header_and_query_parsers(s in "[ -~]{0,200}", raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let lossy = String::from_utf8_lossy(&raw);
        for input in [s.as_str(), &*lossy] {
            let _ = base_string::parse_authorization_header(input);
            let _ = base_string::query_params(input);
            let _ = percent::decode(input, true);
            let _ = percent::decode(input, false);
            let _ = hex_decode(input);
        }
        let oauth_like = format!("OAuth realm=\"limited_poa\", {s}");
        let _ = base_string::parse_authorization_header(&oauth_like);
    }
}

proptest! {
    // A 2048-bit modular exponentiation per valid response: 2,500 cases by default.
    #![proptest_config(ProptestConfig { cases: cases() / 4, ..config() })]

    #[test]
    fn dh_response_and_token_checks(resp in "[0-9a-fA-F]{0,300}", junk in "[ -~]{0,64}", sig in "[ -~]{0,64}") {
        let group = &*GROUP;
        if let Ok(secret) = DhSecret::from_hex("0123456789abcdef") {
            let _ = group.shared_secret(&secret, &resp);
            let _ = group.shared_secret(&secret, &junk);
        }
        let token = lst::live_session_token(resp.as_bytes(), junk.as_bytes());
        let _ = lst::validate_live_session_token(&token, "TESTCONS", &sig);
        let _ = lst::live_session_token_signature(&LiveSessionToken::new(junk.clone()), &sig);
    }

}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ig_encryption_key_from_any_text(key in prop_oneof!["[A-Za-z0-9+/=]{0,400}", "[ -~]{0,100}"], ts in any::<i64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let _ = encrypt_password(&mut rng, &key, ts, &Password::new("pw"));
    }
}

proptest! {
    // Configuration parsers (a prime, a secret), not broker input; each odd modulus
    // costs a Montgomery set-up, so fewer cases.
    #![proptest_config(ProptestConfig { cases: cases() / 10, ..config() })]

    #[test]
    fn dh_configuration_parsers(hex in "[0-9a-fA-F]{0,300}", junk in "[ -~]{0,64}") {
        let _ = DhGroup::new(&hex, 2);
        let _ = DhGroup::new(&junk, 2);
        let _ = DhSecret::from_hex(&hex);
        let _ = DhSecret::from_hex(&junk);
    }
}
