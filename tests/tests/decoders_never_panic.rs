//! Every public decoder, parser and classifier returns a value or a typed error for
//! any input, and the generated inputs provably reach the decoders' deep paths.
//!
//! Inputs start from valid answers (the documented bodies of IG's and IBKR's session
//! endpoints, the OAuth test vectors, a real RSA public key) and get at most ONE
//! mutation each: a value of the wrong type, a huge, negative or zero number, a number
//! sent as a string (or the other way round), a missing or an extra key, an edited
//! string (a flipped character, a cut, a flipped byte under its base64), a cut or
//! corrupted body, a body over the size limit, a missing or unreadable header, or bytes
//! unrelated to the template. Each test counts the outcomes per decoder, prints the
//! rates (`cargo test --test decoders_never_panic -- --nocapture`) and fails when
//! fewer than a set share of inputs decode (or fail), so a generator that stops
//! reaching a decoder's deep paths is caught. Unmutated templates must decode, and
//! errors never quote a value from the body.
//!
//! Case counts: `PROPTEST_CASES` (default 4,000) per decoder; the tests doing RSA or
//! 2048-bit modular arithmetic per case run a fraction of that.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use broker_session::ibkr::oauth::{
    base_string, dh::DhGroup, dh::DhSecret, hex_decode, lst, percent, sign,
};
use broker_session::ibkr::{self as ibkr_policy, responses as ibkr_decode};
use broker_session::ig::{
    BackOffs, Endpoint, PersistedSession, SessionSnapshot, action_for, encrypt_password, responses,
};
use broker_session::secret::Password;
use broker_session::{Error, MAX_BODY};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::SeedableRng;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Settings and tallies.

/// The OAuth test vectors (throwaway keys, the DH prime, a worked LST exchange).
static VECTORS: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    serde_json::from_str(broker_session_testkit::ibkr::VECTORS_JSON).expect("vectors parse")
});

/// The fixture Diffie-Hellman group (2048-bit prime), built once.
static GROUP: std::sync::LazyLock<DhGroup> = std::sync::LazyLock::new(|| {
    DhGroup::new(VECTORS["dh"]["prime_hex"].as_str().expect("prime"), 2).expect("group")
});

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

fn runner(divisor: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: (cases() / divisor).max(1),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// A value no decoder may quote in an error: it stands for a token or a key that
/// ended up in the wrong field.
const PLANTED: &str = "planted-Secret-0xC0FFEE-do-not-echo";

/// Ok/Err counts per decoder (or per pipeline stage).
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, (u64, u64)>>);

impl Tally {
    fn count(&self, name: &'static str, ok: bool) {
        let mut m = self.0.borrow_mut();
        let e = m.entry(name).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    fn result<T, E>(&self, name: &'static str, r: &Result<T, E>) {
        self.count(name, r.is_ok());
    }

    /// Prints every rate and asserts, for each `(name, min_ok, min_err)`, that at
    /// least those shares of the counted inputs decoded and failed. Skipped for tiny
    /// case counts, where the shares are noise. Each floor sits at about half the
    /// share measured at the default case count, so a run only fails when a
    /// generator (or a decoder) changed, not by chance.
    fn check(&self, test: &str, floors: &[(&'static str, f64, f64)]) {
        let m = self.0.borrow();
        for (name, (ok, err)) in m.iter() {
            let n = ok + err;
            #[allow(clippy::cast_precision_loss)]
            let rate = 100.0 * *ok as f64 / n.max(1) as f64;
            println!("{test}: {name:<34} ok {ok:>6} err {err:>6}  ok {rate:5.1} %");
        }
        for (name, min_ok, min_err) in floors {
            let (ok, err) = m.get(name).copied().unwrap_or((0, 0));
            let n = ok + err;
            if n < 200 {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let (ok_rate, err_rate) = (ok as f64 / n as f64, err as f64 / n as f64);
            assert!(
                ok_rate >= *min_ok,
                "{test}: {name} decoded Ok for {ok} of {n} inputs, below {min_ok}: the deep path is not reached"
            );
            assert!(
                err_rate >= *min_err,
                "{test}: {name} failed for {err} of {n} inputs, below {min_err}: the error paths are not reached"
            );
        }
    }
}

/// Fails the case if an error's text or `Debug` quotes the planted value.
fn no_echo(what: &str, text: String) -> Result<(), TestCaseError> {
    prop_assert!(
        !text.contains(PLANTED),
        "{what} quotes a value from the body: {text}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Templates and their mutations.

/// A valid answer: headers and a JSON body (or a raw body).
#[derive(Clone, Debug)]
struct Template {
    headers: Vec<(&'static str, String)>,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn tpl(headers: &[(&'static str, &str)], body: Value) -> Template {
    Template {
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        body: Body::Json(body),
    }
}

/// How a string value gets edited.
#[derive(Clone, Debug)]
enum Edit {
    /// The character at this position becomes this one.
    Char(usize, char),
    /// Cut at this position.
    Cut(usize),
    /// Upper case.
    Upper,
    /// Surrounded by spaces.
    Pad,
    /// `00` in front (a leading zero byte for hex, junk for base64).
    ZeroPrefix,
    /// If standard base64: decode, flip one byte, encode again (a corrupted DER key or
    /// ciphertext under valid base64).
    FlipDecoded(usize, u8),
    /// If standard base64: the URL-safe alphabet instead.
    UrlSafe,
    /// Without `=` padding.
    StripPadding,
}

/// One mutation of a template.
#[derive(Clone, Debug)]
enum Mutation {
    /// Unchanged: must decode.
    Keep,
    /// The value at the picked path becomes this one (a wrong type, an edge number,
    /// a planted secret).
    Replace(Value),
    /// Numbers become strings of digits and strings of digits numbers.
    Stringify,
    /// The picked key is removed.
    Remove,
    /// A key is added to the picked object (or the top one).
    Insert(String, Value),
    /// The picked string value is edited.
    Edit(Edit),
    /// The serialized body is cut at this position.
    Truncate(usize),
    /// One byte of the serialized body is replaced.
    Corrupt(usize, u8),
    /// The body is padded with spaces beyond the size limit.
    Oversize,
    /// The picked header is dropped.
    DropHeader,
    /// The picked header gets this (often unreadable) value.
    BadHeader(Vec<u8>),
    /// The body is these bytes, unrelated to the template.
    Random(Vec<u8>),
}

fn edge_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(-60),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(366 * 24 * 3600 + 1),
            Just(1_714_669_716),
        ]
        .prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => prop_oneof![Just(1e300), Just(-1e300), Just(0.5), Just(60.0), Just(-0.0)].prop_map(
            |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        ),
        1 => prop_oneof![
            Just("60"),
            Just(" 60 "),
            Just("-1"),
            Just("0"),
            Just(""),
            Just("1e3"),
            Just("9223372036854775808"),
            Just("true"),
            Just("null"),
            Just("ff"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
        // A secret in the wrong place, bare and nested.
        3 => Just(Value::String(PLANTED.to_owned())),
        1 => Just(json!([PLANTED])),
        1 => Just(json!({ "value": PLANTED })),
        1 => "[ -~]{0,24}".prop_map(Value::String),
        1 => Just(json!([])),
        1 => Just(json!({})),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![
                Just('!'),
                Just('g'),
                Just('A'),
                Just('0'),
                Just('/'),
                Just('%'),
                Just('é')
            ]
        )
            .prop_map(|(i, c)| Edit::Char(i, c)),
        any::<usize>().prop_map(Edit::Cut),
        Just(Edit::Upper),
        Just(Edit::Pad),
        Just(Edit::ZeroPrefix),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::FlipDecoded(i, x)),
        Just(Edit::UrlSafe),
        Just(Edit::StripPadding),
    ]
}

/// Names the decoders read, for extra keys.
const KEYS: &[&str] = &[
    "accountId",
    "currentAccountId",
    "accounts",
    "authenticationStatus",
    "reroutingEnvironment",
    "formDetails",
    "oauthToken",
    "access_token",
    "expires_in",
    "timeStamp",
    "authenticated",
    "error",
    "session",
    "live_session_token_expiration",
    "tokens",
    "mode",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => Just(Mutation::Keep),
        4 => edge_value().prop_map(Mutation::Replace),
        1 => Just(Mutation::Stringify),
        2 => Just(Mutation::Remove),
        1 => (
            prop_oneof![proptest::sample::select(KEYS).prop_map(str::to_owned), "[a-z_]{1,8}"],
            edge_value()
        )
            .prop_map(|(k, v)| Mutation::Insert(k, v)),
        3 => edit().prop_map(Mutation::Edit),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Corrupt(i, b)),
        1 => Just(Mutation::Oversize),
        1 => Just(Mutation::DropHeader),
        1 => prop_oneof![
            Just(Vec::new()),
            Just(b"  ".to_vec()),
            Just(vec![0xff, 0xfe]),
            Just(b"tok\x7fen".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
        .prop_map(Mutation::BadHeader),
        1 => prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "[ -~]{0,64}".prop_map(String::into_bytes),
        ]
        .prop_map(Mutation::Random),
    ]
}

/// A template index, a mutation, and a number that picks the path (or header) it hits.
fn case(templates: usize) -> impl Strategy<Value = (usize, Mutation, usize)> {
    (0..templates, mutation(), any::<usize>())
}

/// As [`case`], half of the mutations being string edits: for pipelines whose
/// interesting inputs are strings (keys, hex, signatures).
fn edit_case(templates: usize) -> impl Strategy<Value = (usize, Mutation, usize)> {
    (
        0..templates,
        prop_oneof![mutation(), edit().prop_map(Mutation::Edit)],
        any::<usize>(),
    )
}

/// Every JSON pointer in `v`, the top (`""`) included.
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(c, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn edit_string(s: &str, e: &Edit) -> String {
    let chars: Vec<char> = s.chars().collect();
    match e {
        Edit::Char(i, c) if !chars.is_empty() => {
            let mut chars = chars;
            let i = i % chars.len();
            chars[i] = if chars[i] == *c { '~' } else { *c };
            chars.into_iter().collect()
        }
        Edit::Cut(i) => chars[..i % (chars.len() + 1)].iter().collect(),
        Edit::Upper => s.to_uppercase(),
        Edit::Pad => format!("  {s} "),
        Edit::ZeroPrefix => format!("00{s}"),
        Edit::FlipDecoded(i, x) => match STANDARD.decode(s) {
            Ok(mut raw) if !raw.is_empty() => {
                let i = i % raw.len();
                raw[i] ^= x;
                STANDARD.encode(raw)
            }
            _ => format!("{s}{x}"),
        },
        Edit::UrlSafe => match STANDARD.decode(s) {
            Ok(raw) => URL_SAFE.encode(raw),
            Err(_) => s.replace(['+', '/'], "-"),
        },
        Edit::StripPadding => s.trim_end_matches('=').to_owned(),
        Edit::Char(..) => "x".to_owned(),
    }
}

/// The mutated answer, and whether it is the unmutated template.
struct Rendered {
    response: http::Response<Vec<u8>>,
    pristine: bool,
    /// The JSON pointer the mutation hit (`None` for byte-level ones).
    path: Option<String>,
}

impl Rendered {
    fn body(&self) -> &[u8] {
        self.response.body()
    }
}

fn render(t: &Template, m: &Mutation, pick: usize) -> Rendered {
    render_at(t, m, pick, None)
}

/// [`render`], with the mutation aimed at the value at `focus` (a JSON pointer) when
/// given and present.
fn render_at(t: &Template, m: &Mutation, pick: usize, focus: Option<&str>) -> Rendered {
    let mut headers = t.headers.clone();
    let mut path = None;
    let mut pristine = false;
    let mut bytes = match &t.body {
        Body::Raw(b) => b.clone(),
        Body::Json(v) => {
            let mut v = v.clone();
            let mut ps = Vec::new();
            pointers(&v, "", &mut ps);
            let p = focus
                .filter(|f| v.pointer(f).is_some())
                .map_or_else(|| ps[pick % ps.len()].clone(), str::to_owned);
            match m {
                Mutation::Keep => pristine = true,
                Mutation::Replace(new) => {
                    if let Some(slot) = v.pointer_mut(&p) {
                        *slot = new.clone();
                    }
                }
                Mutation::Stringify => {
                    if let Some(slot) = v.pointer_mut(&p) {
                        *slot = match slot.take() {
                            Value::Number(n) => Value::String(n.to_string()),
                            Value::String(s) => s
                                .trim()
                                .parse::<i64>()
                                .map_or(Value::String(s), Value::from),
                            Value::Bool(b) => Value::String(b.to_string()),
                            other => Value::String(other.to_string()),
                        };
                    }
                }
                Mutation::Remove => match p.rsplit_once('/') {
                    Some((parent, key)) => match v.pointer_mut(parent) {
                        Some(Value::Object(o)) => {
                            o.remove(key);
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = key.parse::<usize>()
                                && i < a.len()
                            {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    },
                    None => v = Value::Null,
                },
                Mutation::Insert(k, new) => {
                    let target = match v.pointer_mut(&p) {
                        Some(Value::Object(_)) => p.clone(),
                        _ => String::new(),
                    };
                    if let Some(Value::Object(o)) = v.pointer_mut(&target) {
                        o.insert(k.clone(), new.clone());
                    }
                    path = Some(format!("{target}/{k}"));
                }
                Mutation::Edit(e) => {
                    if let Some(Value::String(s)) = v.pointer_mut(&p) {
                        *s = edit_string(s, e);
                    }
                }
                _ => {}
            }
            if matches!(
                m,
                Mutation::Replace(_) | Mutation::Stringify | Mutation::Remove | Mutation::Edit(_)
            ) {
                path = Some(p);
            }
            v.to_string().into_bytes()
        }
    };
    if matches!(t.body, Body::Raw(_)) && matches!(m, Mutation::Keep) {
        pristine = true;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
        Mutation::Corrupt(i, b) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] = *b;
        }
        Mutation::Oversize => {
            // `vec!` of a byte is one memset, even in a debug build.
            let pad = vec![b' '; (MAX_BODY + 1).saturating_sub(bytes.len())];
            bytes.extend_from_slice(&pad);
        }
        Mutation::Random(r) => bytes.clone_from(r),
        Mutation::DropHeader if !headers.is_empty() => {
            headers.remove(pick % headers.len());
        }
        _ => {}
    }
    let mut r = http::Response::new(bytes);
    for (i, (k, v)) in headers.iter().enumerate() {
        let value = match m {
            Mutation::BadHeader(b) if i == pick % headers.len() => {
                http::HeaderValue::from_bytes(b).ok()
            }
            _ => http::HeaderValue::from_str(v).ok(),
        };
        if let Some(value) = value {
            r.headers_mut()
                .append(http::HeaderName::from_static(k), value);
        }
    }
    if headers.is_empty() && matches!(m, Mutation::DropHeader | Mutation::BadHeader(_)) {
        pristine = true;
    }
    Rendered {
        response: r,
        pristine,
        path,
    }
}

/// Fields whose value an error names on purpose (an instruction for the user), so a
/// planted value there may show.
fn echoed_on_purpose(path: Option<&str>) -> bool {
    path.is_some_and(|p| {
        [
            "authenticationStatus",
            "reroutingEnvironment",
            "formDetails",
        ]
        .iter()
        .any(|f| p.contains(f))
    })
}

// ---------------------------------------------------------------------------------
// IG.

const CST: &str = "tmpl-cst-6f1d2a-0000-secret-value";
const XST: &str = "tmpl-xst-77ac90-1111-secret-value";
const ACCESS: &str = "tmpl-access-e5f9d1c4-2222-secret";
const REFRESH: &str = "tmpl-refresh-0b1a3c7d-3333-secret";
const TOKENS: [&str; 4] = [CST, XST, ACCESS, REFRESH];

/// IG's documented v1/v2 login body (see the IG session notes, §2.1).
fn ig_v2_body() -> Value {
    json!({
        "accountType": "CFD",
        "accountInfo": {"balance": 10000.0, "deposit": 0.0, "profitLoss": 0.0, "available": 10000.0},
        "currencyIsoCode": "GBP",
        "currencySymbol": "£",
        "currentAccountId": "ABC123",
        "lightstreamerEndpoint": "https://demo-apd.marketdatasystems.com",
        "accounts": [
            {"accountId": "ABC123", "accountName": "CFD", "preferred": true, "accountType": "CFD"},
            {"accountId": "XYZ789", "accountName": "SB", "preferred": false, "accountType": "SPREADBET"}
        ],
        "clientId": "100001",
        "timezoneOffset": 1,
        "hasActiveDemoAccounts": true,
        "hasActiveLiveAccounts": false,
        "trailingStopsEnabled": false,
        "reroutingEnvironment": null,
        "dealingEnabled": true,
        "authenticationStatus": "AUTHENTICATED",
        "formDetails": []
    })
}

fn ig_token_body(expires_in: Value) -> Value {
    json!({
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "scope": "profile",
        "token_type": "Bearer",
        "expires_in": expires_in,
    })
}

fn ig_v3_body(expires_in: Value) -> Value {
    json!({
        "clientId": "100001",
        "accountId": "ABC123",
        "timezoneOffset": 1,
        "lightstreamerEndpoint": "https://demo-apd.marketdatasystems.com",
        "oauthToken": ig_token_body(expires_in),
    })
}

fn ig_session_body() -> Value {
    json!({
        "clientId": "100001",
        "accountId": "ABC123",
        "timezoneOffset": 1,
        "locale": "en_GB",
        "currency": "GBP",
        "lightstreamerEndpoint": "https://demo-apd.marketdatasystems.com",
    })
}

/// Base64 DER SubjectPublicKeyInfo of the fixture RSA key, as IG sends `encryptionKey`.
fn ig_public_key() -> (rsa::PrivateKey, String) {
    let sk = rsa::PrivateKey::from_pkcs8_pem(broker_session_testkit::ig::ENCRYPTION_KEY_PEM)
        .expect("fixture key");
    let der = sk.to_public_key().to_public_key_der().expect("der");
    (sk, STANDARD.encode(der.as_bytes()))
}

/// Fails the case if a decoded value's `Debug` shows a template token.
fn redacted(what: &str, debug: &str) -> Result<(), TestCaseError> {
    for t in TOKENS {
        prop_assert!(!debug.contains(t), "{what} shows a token: {debug}");
    }
    Ok(())
}

/// Runs `decode` over mutated `templates`; counts outcomes under `name`; an
/// unmutated template must decode; errors never quote the planted value; decoded
/// values never show a token.
fn run_decoder<T: std::fmt::Debug>(
    tally: &Tally,
    name: &'static str,
    templates: &[Template],
    decode: impl Fn(&http::Response<Vec<u8>>) -> Result<T, Error>,
) {
    runner(1)
        .run(&case(templates.len()), |(i, m, pick)| {
            let r = render(&templates[i], &m, pick);
            let out = decode(&r.response);
            tally.result(name, &out);
            match &out {
                Ok(v) => redacted(name, &format!("{v:?}"))?,
                Err(e) => {
                    prop_assert!(!r.pristine, "{name}: a valid answer was refused: {e}");
                    if !echoed_on_purpose(r.path.as_deref()) {
                        no_echo(name, format!("{e} {e:?}"))?;
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// A CST login's answer as the session sees it: a person having to act is an error.
fn cst_login(
    answer: Result<responses::CstLoginAnswer, broker_session::ProtocolError>,
) -> Result<responses::CstLogin, Error> {
    match answer? {
        responses::CstLoginAnswer::LoggedIn(l) => Ok(l),
        responses::CstLoginAnswer::ActionRequired(a) => Err(Error::ActionRequired(a)),
        _ => unreachable!("a new kind of login answer"),
    }
}

#[test]
fn ig_session_answers_decode_or_fail_typed() {
    let tally = Tally::default();
    let cst_headers = [("cst", CST), ("x-security-token", XST)];
    let v2 = [
        tpl(&cst_headers, ig_v2_body()),
        tpl(&cst_headers, json!({"currentAccountId": "Q1"})),
        tpl(
            &cst_headers,
            json!({"accountId": "Q1", "clientId": 100_001, "accounts": []}),
        ),
    ];
    run_decoder(&tally, "ig login_v2", &v2, |r| {
        cst_login(responses::login_v2(r.headers(), r.body()))
    });
    let web = [tpl(
        &cst_headers,
        json!({
            "clientId": "100001",
            "currentAccountId": "ABC123",
            "lightstreamerEndpoint": "https://demo-apd.marketdatasystems.com",
            "accounts": [{"accountId": "ABC123", "productCode": "CFD", "canSwitchTo": true}],
            "kycType": "FULL",
        }),
    )];
    run_decoder(&tally, "ig web_platform_login", &web, |r| {
        cst_login(responses::web_platform_login(r.headers(), r.body()))
    });
    let v3 = [
        tpl(&[], ig_v3_body(json!("60"))),
        tpl(&[], ig_v3_body(json!(60))),
    ];
    run_decoder(&tally, "ig login_v3", &v3, |r| {
        let l = responses::login_v3(r.body())?;
        // A decoded lifetime is always usable: neither zero nor beyond a year.
        assert!((1..=366 * 24 * 3600).contains(&l.tokens.expires_in.as_secs()));
        Ok(l)
    });
    let refresh = [
        tpl(&[], ig_token_body(json!("30"))),
        tpl(&[], ig_token_body(json!(30))),
    ];
    run_decoder(&tally, "ig refresh", &refresh, |r| {
        let t = responses::refresh(r.body())?;
        assert!(t.expires_in >= Duration::from_secs(1));
        Ok(t)
    });
    let read = [
        tpl(&[], ig_session_body()),
        tpl(&cst_headers, ig_session_body()),
    ];
    run_decoder(&tally, "ig read_session", &read, |r| {
        Ok(responses::read_session(r.headers(), r.body())?)
    });
    let switch = [
        tpl(
            &[("x-security-token", XST)],
            json!({"trailingStopsEnabled": false, "dealingEnabled": true, "hasActiveDemoAccounts": true, "hasActiveLiveAccounts": false}),
        ),
        tpl(&cst_headers, json!({})),
    ];
    run_decoder(&tally, "ig switch_account", &switch, |r| {
        Ok(responses::switch_account(r.headers(), r.body())?)
    });
    let (_, key) = ig_public_key();
    let enc = [
        tpl(
            &[],
            json!({"encryptionKey": key, "timeStamp": 1_601_218_928_621_i64}),
        ),
        tpl(
            &[],
            json!({"encryptionKey": key, "timeStamp": "1601218928621"}),
        ),
    ];
    run_decoder(&tally, "ig encryption_key", &enc, |r| {
        Ok(responses::encryption_key(r.body())?)
    });
    let errors = [
        tpl(&[], json!({"errorCode": "error.security.invalid-details"})),
        tpl(
            &[],
            json!({"errorCode": "error.public-api.exceeded-api-key-allowance"}),
        ),
    ];
    run_decoder(&tally, "ig error_code (Some)", &errors, |r| {
        responses::error_code(r.body()).ok_or(Error::Protocol(
            broker_session::ProtocolError::MissingField {
                endpoint: "error body",
                field: "errorCode",
            },
        ))
    });
    tally.check(
        "ig",
        &[
            ("ig login_v2", 0.2, 0.2),
            ("ig web_platform_login", 0.2, 0.2),
            ("ig login_v3", 0.2, 0.2),
            ("ig refresh", 0.2, 0.2),
            ("ig read_session", 0.2, 0.2),
            // Only the headers and the size limit can fail a switch answer.
            ("ig switch_account", 0.2, 0.03),
            ("ig encryption_key", 0.2, 0.2),
            ("ig error_code (Some)", 0.2, 0.2),
        ],
    );
}

#[test]
fn ig_error_code_and_action_for() {
    const BACKOFFS: BackOffs = BackOffs {
        allowance: Duration::from_secs(60),
        login_throttle: Duration::from_secs(180),
    };
    const ENDPOINTS: [Endpoint; 11] = [
        Endpoint::LoginV1,
        Endpoint::LoginV2,
        Endpoint::LoginV3,
        Endpoint::WebPlatformLogin,
        Endpoint::Refresh,
        Endpoint::EncryptionKey,
        Endpoint::ReadSession {
            fetch_tokens: false,
        },
        Endpoint::ReadSession { fetch_tokens: true },
        Endpoint::Switch,
        Endpoint::Logout,
        Endpoint::Application,
    ];
    let codes = [
        tpl(&[], json!({"errorCode": "error.security.invalid-details"})),
        tpl(
            &[],
            json!({"errorCode": broker_session::ig::LOGIN_THROTTLED}),
        ),
        tpl(
            &[],
            json!({"errorCode": "error.security.client-token-invalid"}),
        ),
        tpl(
            &[],
            json!({"errorCode": "error.public-api.exceeded-account-allowance"}),
        ),
    ];
    let strategy = (
        case(codes.len()),
        prop_oneof![
            Just(200u16),
            Just(400),
            Just(401),
            Just(403),
            Just(429),
            Just(500),
            Just(503),
            0u16..1000
        ],
        proptest::option::of("[ -~]{0,40}"),
    );
    runner(2)
        .run(&strategy, |((i, m, pick), s, code)| {
            let r = render(&codes[i], &m, pick);
            let from_body = responses::error_code(r.body());
            for e in ENDPOINTS {
                let _ = action_for(e, s, from_body.as_deref(), BACKOFFS);
                let _ = action_for(e, s, code.as_deref(), BACKOFFS);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

fn persisted_templates() -> [Template; 3] {
    [
        tpl(
            &[],
            json!({
                "base_url": "https://demo-api.ig.com/gateway/deal",
                "account_id": "ABC123",
                "lightstreamer_endpoint": "https://demo-apd.marketdatasystems.com",
                "tokens": {"mode": "cst", "cst": CST, "xst": XST}
            }),
        ),
        tpl(
            &[],
            json!({
                "base_url": "https://demo-api.ig.com/gateway/deal",
                "account_id": "ABC123",
                "lightstreamer_endpoint": null,
                "tokens": {
                    "mode": "oauth",
                    "access_token": ACCESS,
                    "refresh_token": REFRESH,
                    "expires_at_epoch_ms": 1_714_669_716_258_i64,
                    "streaming_cst": CST,
                    "streaming_xst": XST
                }
            }),
        ),
        tpl(
            &[],
            json!({
                "base_url": "https://api.ig.com/gateway/deal",
                "account_id": "XYZ789",
                "lightstreamer_endpoint": null,
                "tokens": {
                    "mode": "oauth",
                    "access_token": ACCESS,
                    "refresh_token": REFRESH,
                    "expires_at_epoch_ms": 0,
                    "streaming_cst": null,
                    "streaming_xst": null
                }
            }),
        ),
    ]
}

#[test]
fn ig_snapshot_from_persisted_json() {
    let tally = Tally::default();
    let templates = persisted_templates();
    runner(1)
        .run(&case(templates.len()), |(i, m, pick)| {
            let r = render(&templates[i], &m, pick);
            let parsed = serde_json::from_slice::<PersistedSession>(r.body());
            tally.result("PersistedSession", &parsed);
            let Ok(p) = parsed else {
                prop_assert!(r.pristine || !matches!(m, Mutation::Keep));
                return Ok(());
            };
            let before = serde_json::to_value(&p).expect("serializes");
            redacted("PersistedSession", &format!("{p:?}"))?;
            let s = SessionSnapshot::from_persisted(p);
            redacted("SessionSnapshot", &format!("{s:?}"))?;
            prop_assert_eq!(s.base_url(), before["base_url"].as_str().unwrap_or(""));
            prop_assert_eq!(s.account_id(), before["account_id"].as_str().unwrap_or(""));
            // Resuming and storing again gives back what was stored.
            let after = serde_json::to_value(s.expose_secrets()).expect("serializes");
            let (mut b, mut a) = (before, after);
            // A CST pair given half (one of the two streaming tokens) is dropped.
            for v in [&mut b, &mut a] {
                if let Some(t) = v.get_mut("tokens").and_then(Value::as_object_mut)
                    && (t.get("streaming_cst").is_none_or(Value::is_null)
                        || t.get("streaming_xst").is_none_or(Value::is_null))
                {
                    t.insert("streaming_cst".into(), Value::Null);
                    t.insert("streaming_xst".into(), Value::Null);
                }
            }
            prop_assert_eq!(a, b);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    tally.check("snapshot", &[("PersistedSession", 0.2, 0.2)]);
}

#[test]
fn ig_encryption_key_to_encrypted_password() {
    let tally = Tally::default();
    let (sk, key) = ig_public_key();
    let templates = [
        tpl(
            &[],
            json!({"encryptionKey": key, "timeStamp": 1_601_218_928_621_i64}),
        ),
        tpl(
            &[],
            json!({"encryptionKey": key, "timeStamp": "1601218928621"}),
        ),
    ];
    let strategy = (
        edit_case(templates.len()),
        any::<bool>(),
        prop_oneof![
            9 => Just("pä$s-word".to_owned()),
            1 => Just("x".repeat(300)),
            1 => "[ -~]{0,40}",
        ],
    );
    let checked = RefCell::new(0u32);
    runner(2)
        .run(&strategy, |((i, m, pick), on_key, pw)| {
            let focus = on_key.then_some("/encryptionKey");
            let r = render_at(&templates[i], &m, pick, focus);
            let k = responses::encryption_key(r.response.body());
            tally.result("encryption_key", &k);
            let Ok(k) = k else { return Ok(()) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let out = encrypt_password(&mut rng, &k.key, k.time_stamp, &Password::new(pw.clone()));
            tally.result("encrypt_password", &out);
            match out {
                Err(e) => no_echo("encrypt_password", format!("{e} {e:?}"))?,
                Ok(ct) => {
                    let raw = STANDARD.decode(ct.expose_secret()).expect("base64 out");
                    prop_assert!(!raw.is_empty());
                    // The real key (2048 bits) decrypts it; a few cases only, as a
                    // private RSA operation is slow in a debug build. (An edited key
                    // that still parses is another key, of another size maybe.)
                    let mut n = checked.borrow_mut();
                    if k.key == key {
                        prop_assert_eq!(raw.len(), 256);
                    }
                    if k.key == key && *n < 12 {
                        *n += 1;
                        let inner = sk.decrypt(rsa::Pkcs1v15Encrypt, &raw).expect("decrypts");
                        let plain = STANDARD.decode(inner).expect("inner base64");
                        prop_assert_eq!(plain, format!("{pw}|{}", k.time_stamp).into_bytes());
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(*checked.borrow() > 0, "no encryption was checked");
    tally.check(
        "encrypt",
        &[
            // Decoding is covered by `ig_session_answers_decode_or_fail_typed`.
            ("encryption_key", 0.2, 0.1),
            ("encrypt_password", 0.2, 0.2),
        ],
    );
}

// ---------------------------------------------------------------------------------
// IBKR.

fn ibkr_status_body(authenticated: bool) -> Value {
    let mut v = json!({
        "authenticated": authenticated,
        "competing": false,
        "connected": true,
        "message": "",
        "MAC": "98:F2:B3:23:BF:A0",
        "fail": "",
        "hardware_info": "3b0679ee|98:F2:B3:23:BF:A0",
    });
    if authenticated {
        v["serverInfo"] = json!({"serverName": "JifN19053", "serverVersion": "Build 10.25.0p"});
        v["established"] = json!(true);
    }
    v
}

/// Runs a body decoder over mutated templates (as [`run_decoder`], for IBKR's
/// body-only parsers).
fn run_body_decoder<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(
    tally: &Tally,
    name: &'static str,
    templates: &[Template],
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    runner(1)
        .run(&case(templates.len()), |(i, m, pick)| {
            let r = render(&templates[i], &m, pick);
            let out = decode(r.body());
            tally.result(name, &out);
            match &out {
                Ok(v) => {
                    let debug = format!("{v:?}");
                    prop_assert!(
                        !debug.contains("bb665d0f55b6289d70bc8ba97ee6d2fd"),
                        "{name} shows the session id: {debug}"
                    );
                }
                Err(e) => {
                    prop_assert!(!r.pristine, "{name}: a valid answer was refused: {e}");
                    no_echo(name, format!("{e} {e:?}"))?;
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn lst_templates() -> Vec<Template> {
    VECTORS["dh"]["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            tpl(
                &[],
                json!({
                    "diffie_hellman_response": c["dh_response_B_hex"],
                    "live_session_token_signature": c["live_session_token_signature_hex"],
                    "live_session_token_expiration": 1_714_669_716_258_i64,
                }),
            )
        })
        .collect()
}

#[test]
fn ibkr_session_answers_decode_or_fail_typed() {
    let tally = Tally::default();
    let status = [
        tpl(&[], ibkr_status_body(true)),
        tpl(&[], ibkr_status_body(false)),
    ];
    run_body_decoder(&tally, "ibkr auth_status", &status, |b| {
        let s = ibkr_decode::auth_status(b)?;
        let _ = ibkr_policy::session_class(&s);
        Ok::<_, broker_session::ProtocolError>(s)
    });
    run_body_decoder(&tally, "ibkr ssodh_init", &status, ibkr_decode::ssodh_init);
    let tickle = [
        tpl(
            &[],
            json!({
                "session": "bb665d0f55b6289d70bc8ba97ee6d2fd",
                "ssoExpires": 460_311,
                "collission": false,
                "userId": 123_456_789,
                "hmds": {"error": "no bridge"},
                "iserver": {"authStatus": ibkr_status_body(true), "tickle": true},
            }),
        ),
        tpl(&[], json!({"error": "no session"})),
    ];
    run_body_decoder(&tally, "ibkr tickle", &tickle, |b| {
        let t = ibkr_decode::tickle(b)?;
        if let ibkr_decode::TickleResponse::Ok(info) = &t {
            // The rest of the body is read on demand: that read never panics either,
            // and its details never show the session id (checked on the result).
            let details = info.details();
            return Ok::<_, broker_session::ProtocolError>((t.clone(), details.ok()));
        }
        Ok((t, None))
    });
    let validate = [tpl(
        &[],
        json!({
            "USER_ID": 123_456_789, "USER_NAME": "testuser1", "RESULT": true,
            "AUTH_TIME": 1_702_580_846_836_i64, "SF_ENABLED": false, "IS_FREE_TRIAL": false,
            "CREDENTIAL": "testuser1", "IP": "12.345.678.901", "EXPIRES": 415_890,
            "QUALIFIED_FOR_MOBILE_AUTH": null, "LANDING_APP": "UNIVERSAL", "IS_MASTER": false,
            "lastAccessed": 1_702_582_037_124_i64, "LOGIN_TYPE": 2, "PAPER_USER_NAME": "testuser1",
            "features": {"env": "PROD", "wlms": true, "realtime": true, "bond": true},
            "region": "NJ"
        }),
    )];
    run_body_decoder(&tally, "ibkr validate", &validate, ibkr_decode::validate);
    let logout = [
        tpl(&[], json!({"status": true})),
        tpl(&[], json!({"confirmed": false})),
    ];
    run_body_decoder(&tally, "ibkr logout", &logout, ibkr_decode::logout);
    let reauth = [tpl(&[], json!({"message": "triggered"}))];
    run_body_decoder(
        &tally,
        "ibkr reauthenticate",
        &reauth,
        ibkr_decode::reauthenticate,
    );
    run_body_decoder(
        &tally,
        "ibkr live_session_token",
        &lst_templates(),
        ibkr_decode::live_session_token,
    );
    let errors = [
        tpl(
            &[],
            json!({"error": "not authenticated", "statusCode": 401}),
        ),
        tpl(
            &[],
            json!({"error": "id: 3931, error: invalid consumer", "statusCode": 401}),
        ),
    ];
    run_body_decoder(&tally, "ibkr error_text (Some)", &errors, |b| {
        ibkr_decode::error_text(b).ok_or("no error text")
    });
    tally.check(
        "ibkr",
        &[
            ("ibkr auth_status", 0.2, 0.2),
            ("ibkr tickle", 0.2, 0.2),
            ("ibkr validate", 0.2, 0.2),
            ("ibkr logout", 0.2, 0.2),
            ("ibkr reauthenticate", 0.2, 0.2),
            ("ibkr live_session_token", 0.2, 0.2),
            ("ibkr error_text (Some)", 0.2, 0.2),
        ],
    );
}

#[test]
fn ibkr_status_classification() {
    let templates = [
        Template {
            headers: vec![("content-type", "application/json".into())],
            body: Body::Json(json!({"error": "not authenticated", "statusCode": 401})),
        },
        Template {
            headers: vec![(
                "location",
                "https://localhost:5000/sso/Login?forwardTo=22".into(),
            )],
            body: Body::Raw(Vec::new()),
        },
        tpl(
            &[],
            json!({"error": "Bad Request: no bridge", "statusCode": 400}),
        ),
    ];
    let strategy = (case(templates.len()), 100u16..1000);
    runner(2)
        .run(&strategy, |((i, m, pick), s)| {
            let mut r = render(&templates[i], &m, pick).response;
            *r.status_mut() = http::StatusCode::from_u16(s).unwrap_or(http::StatusCode::OK);
            let _ = ibkr_policy::is_no_session(&r);
            let _ = ibkr_policy::is_sso_redirect(&r);
            let _ = ibkr_policy::is_no_bridge(&r);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn oauth_header_and_query_parsers() {
    let header = VECTORS["hmac_request"]["authorization_header"]
        .as_str()
        .expect("header")
        .to_owned();
    let encoded = VECTORS["hmac_request"]["signature_percent_encoded"]
        .as_str()
        .expect("signature")
        .to_owned();
    let tally = Tally::default();
    let templates = [
        header.clone(),
        "a=1&b=%20x&c=&d".to_owned(),
        encoded.clone(),
        VECTORS["rsa"]["expected_prepend_hex"]
            .as_str()
            .expect("hex")
            .to_owned(),
    ];
    let strategy = (
        0..templates.len(),
        prop_oneof![2 => Just(None), 5 => edit().prop_map(Some)],
        "[ -~]{0,120}",
    );
    runner(1)
        .run(&strategy, |(i, e, junk)| {
            let s = e.map_or_else(|| templates[i].clone(), |e| edit_string(&templates[i], &e));
            tally.result(
                [
                    "parse_authorization_header",
                    "query_params",
                    "percent::decode",
                    "hex_decode",
                ][i],
                &[
                    base_string::parse_authorization_header(&s).map(|_| ()),
                    base_string::query_params(&s).map(|_| ()),
                    percent::decode(&s, false).map(|_| ()),
                    hex_decode(&s).map(|_| ()),
                ][i]
                    .ok_or(()),
            );
            for input in [s.as_str(), junk.as_str()] {
                let _ = base_string::parse_authorization_header(input);
                let _ = base_string::query_params(input);
                let _ = percent::decode(input, false);
                let _ = percent::decode(input, true);
                let _ = hex_decode(input);
            }
            if s == header {
                let (realm, params) =
                    base_string::parse_authorization_header(&s).expect("the vector parses");
                prop_assert_eq!(realm, "limited_poa");
                prop_assert!(
                    params
                        .iter()
                        .any(|(k, v)| k == "oauth_signature" && *v == encoded)
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    tally.check(
        "oauth",
        &[
            ("parse_authorization_header", 0.2, 0.2),
            ("query_params", 0.2, 0.0),
            // Only a `%` without two hex digits fails.
            ("percent::decode", 0.2, 0.01),
            ("hex_decode", 0.2, 0.1),
        ],
    );
}

/// The live session token exchange from its answer on: decode, shared secret, token,
/// signature check. The unmutated vectors must give the vectors' token.
#[test]
fn ibkr_lst_answer_to_validated_token() {
    let tally = Tally::default();
    let cases_json = VECTORS["dh"]["cases"].as_array().expect("cases").clone();
    let templates = lst_templates();
    let prepend = hex_decode(
        VECTORS["dh"]["cases"][0]["prepend_hex"]
            .as_str()
            .expect("hex"),
    )
    .expect("prepend");
    // A 2048-bit modular exponentiation per decoded answer.
    let focus = prop_oneof![
        1 => Just(None),
        1 => Just(Some("/diffie_hellman_response")),
        2 => Just(Some("/live_session_token_signature")),
    ];
    runner(8)
        .run(
            &(edit_case(templates.len()), focus),
            |((i, m, pick), focus)| {
                let c = &cases_json[i];
                let r = render_at(&templates[i], &m, pick, focus);
                let decoded = ibkr_decode::live_session_token(r.body());
                tally.result("live_session_token", &decoded);
                let Ok(answer) = decoded else { return Ok(()) };
                let secret =
                    DhSecret::from_hex(c["dh_random_a_hex"].as_str().expect("a")).expect("secret");
                let k = GROUP.shared_secret(&secret, &answer.diffie_hellman_response);
                tally.result("shared_secret", &k);
                let k = match k {
                    Ok(k) => k,
                    Err(e) => return no_echo("shared_secret", format!("{e} {e:?}")),
                };
                let token = lst::live_session_token(k.expose_secret(), &prepend);
                let valid = lst::validate_live_session_token(
                    &token,
                    "TESTCONS",
                    &answer.live_session_token_signature,
                );
                tally.result("validate_live_session_token", &valid);
                if r.pristine {
                    prop_assert_eq!(
                        token.expose_secret(),
                        c["live_session_token_b64"].as_str().expect("lst")
                    );
                    prop_assert!(valid.is_ok());
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    tally.check(
        "lst",
        &[
            // Decoding is covered by `ibkr_session_answers_decode_or_fail_typed`; here
            // most edits keep a string a string, to reach the arithmetic.
            ("live_session_token", 0.2, 0.05),
            ("shared_secret", 0.2, 0.02),
            ("validate_live_session_token", 0.2, 0.1),
        ],
    );
}

/// The consumer's key material: PEM private keys (PKCS#1 and PKCS#8) and the access
/// token secret, each from the vectors with one edit.
#[test]
fn ibkr_key_material_parsers() {
    let tally = Tally::default();
    let rsa = &VECTORS["rsa"];
    let pems: Vec<String> = [
        "encryption_private_key_pkcs1_pem",
        "encryption_private_key_pkcs8_pem",
    ]
    .iter()
    .map(|k| rsa[*k].as_str().expect("pem").to_owned())
    .collect();
    let secret = rsa["access_token_secret_b64"]
        .as_str()
        .expect("secret")
        .to_owned();
    let prepend = rsa["expected_prepend_hex"]
        .as_str()
        .expect("hex")
        .to_owned();
    let strategy = (
        0..pems.len(),
        prop_oneof![2 => Just(None), 3 => edit().prop_map(Some)],
        prop_oneof![2 => Just(None), 3 => edit().prop_map(Some)],
        any::<bool>(),
    );
    runner(20)
        .run(&strategy, |(i, pem_edit, secret_edit, edit_pem)| {
            // One edit: either the key or the secret.
            let (pem_edit, secret_edit) = if edit_pem {
                (pem_edit, None)
            } else {
                (None, secret_edit)
            };
            let pem = pem_edit
                .as_ref()
                .map_or_else(|| pems[i].clone(), |e| edit_pem_body(&pems[i], e));
            let key = sign::parse_private_key(&pem, "encryption key");
            tally.result("parse_private_key", &key);
            let key = match key {
                Ok(k) => k,
                Err(e) => {
                    prop_assert!(pem_edit.is_some(), "the vector key was refused: {e}");
                    return no_echo("parse_private_key", format!("{e} {e:?}"));
                }
            };
            let s = secret_edit
                .as_ref()
                .map_or_else(|| secret.clone(), |e| edit_string(&secret, e));
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let out = sign::decrypt_access_token_secret(&key, &mut rng, &s);
            tally.result("decrypt_access_token_secret", &out);
            if pem_edit.is_none() && secret_edit.is_none() {
                let out = out.expect("the vector secret decrypts");
                prop_assert_eq!(
                    broker_session::ibkr::oauth::hex_encode(out.expose_secret()),
                    prepend.clone()
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    tally.check(
        "keys",
        &[
            ("parse_private_key", 0.2, 0.1),
            ("decrypt_access_token_secret", 0.2, 0.1),
        ],
    );
}

/// An edit of a PEM's base64 body (its lines joined), the armour kept.
fn edit_pem_body(pem: &str, e: &Edit) -> String {
    let lines: Vec<&str> = pem.lines().collect();
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return pem.to_owned();
    };
    let body: String = lines[1..lines.len().saturating_sub(1)].concat();
    let edited = edit_string(&body, e);
    let wrapped: Vec<String> = edited
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("{first}\n{}\n{last}\n", wrapped.join("\n"))
}

/// Configuration parsers (a prime, a secret), not broker input; each odd modulus
/// costs a Montgomery set-up, so fewer cases.
#[test]
fn dh_configuration_parsers() {
    let prime = VECTORS["dh"]["prime_hex"]
        .as_str()
        .expect("prime")
        .to_owned();
    let a = VECTORS["dh"]["cases"][0]["dh_random_a_hex"]
        .as_str()
        .expect("a")
        .to_owned();
    let tally = Tally::default();
    let strategy = (
        prop_oneof![Just(prime), Just(a), "[0-9a-fA-F]{0,300}"],
        prop_oneof![1 => Just(None), 3 => edit().prop_map(Some)],
        "[ -~]{0,64}",
    );
    runner(10)
        .run(&strategy, |(hex, e, junk)| {
            let hex = e.map_or_else(|| hex.clone(), |e| edit_string(&hex, &e));
            tally.result("DhGroup::new", &DhGroup::new(&hex, 2));
            let _ = DhGroup::new(&junk, 2);
            tally.result("DhSecret::from_hex", &DhSecret::from_hex(&hex));
            let _ = DhSecret::from_hex(&junk);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    tally.check("dh config", &[]);
}
