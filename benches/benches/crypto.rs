//! Crypto: IG's password encryption, IBKR's live session token (the whole step and
//! each of its parts), and the HMAC-SHA256 signature of every OAuth request.
//!
//! Keys are the throwaway fixtures (`tests/fixtures/`). Run:
//! `cargo bench -p broker-session-benches --bench crypto`.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret, to_java_bytes};
use broker_session::ibkr::oauth::{base_string, lst, sign};
use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession};
use broker_session::ig::encrypt_password;
use broker_session::secret::{LiveSessionToken, Password};
use broker_session::{Input, Machine, Now, Output};
use broker_session_benches::alloc::{self, CountingAlloc};
use broker_session_benches::replay::Script;
use broker_session_benches::sys;
use broker_session_testkit::ibkr::{FakeIbkr, VECTORS_JSON};
use broker_session_testkit::ig::ENCRYPTION_KEY_PEM;
use broker_session_testkit::sim::VirtualClock;
use divan::{Bencher, black_box};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use serde_json::Value;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    println!("machine: {}", sys::machine_line());
    alloc::set_counting(true);
    let o = oauth();
    let mut m = o.connected();
    let mut req = app_request(true);
    let _ = m.authorize(&mut req, o.clock.now());
    let before = alloc::snapshot();
    let _ = m.authorize(&mut req, o.clock.now());
    let d = alloc::snapshot().since(before);
    alloc::set_counting(false);
    println!(
        "OAuth authorize (HMAC-SHA256 stamp, query signed): {} allocations, {} bytes per request\n",
        d.allocs, d.bytes
    );
    divan::main();
}

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(VECTORS_JSON).expect("vectors parse"))
}

fn v(path: &[&str]) -> String {
    let mut x = vectors();
    for p in path {
        x = &x[*p];
    }
    x.as_str().expect("string field").to_owned()
}

/// `GET /iserver/marketdata/snapshot?…` or `GET /portfolio/accounts` on the OAuth base.
fn app_request(query: bool) -> http::Request<Vec<u8>> {
    let uri = if query {
        "https://api.ibkr.com/v1/api/iserver/marketdata/snapshot?conids=265598,8314&fields=31,84,86"
    } else {
        "https://api.ibkr.com/v1/api/portfolio/accounts"
    };
    http::Request::get(uri).body(Vec::new()).expect("valid")
}

/// An OAuth session recorded against the fake: the answers of a full connect.
struct OAuth {
    config: IbkrConfig,
    clock: VirtualClock,
    script: Script,
}

fn oauth() -> &'static OAuth {
    static O: OnceLock<OAuth> = OnceLock::new();
    O.get_or_init(|| {
        let (mut fake, oc) = FakeIbkr::oauth(false);
        let config = FakeIbkr::oauth_config(oc);
        let clock = VirtualClock::new();
        let mut m = IbkrSession::new(
            config.clone(),
            broker_session::RngSeed::from_u64(7),
            clock.now(),
        )
        .expect("valid config");
        let script = Script::record(&mut m, &mut fake, clock.now(), vec![IbkrIntent::Connect]);
        assert_eq!(script.requests[0], "POST /v1/api/oauth/live_session_token");
        OAuth {
            config,
            clock,
            script,
        }
    })
}

impl OAuth {
    fn connected(&self) -> IbkrSession {
        let mut m = IbkrSession::new(
            self.config.clone(),
            broker_session::RngSeed::from_u64(1),
            self.clock.now(),
        )
        .expect("valid");
        let ok = self
            .script
            .replay(&mut m, vec![IbkrIntent::Connect], self.script.responses());
        assert_eq!(ok, self.script.ops);
        m
    }
}

fn next_send(m: &mut IbkrSession, now: Now) -> broker_session::Transmit {
    loop {
        match m.poll_output(now) {
            Output::Send(t) => return t,
            Output::Event(_) => {}
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- IG

/// RSA-PKCS#1 v1.5 encryption of the password with IG's 2048-bit key (key parse
/// included, as the machine does on every encrypted login).
#[divan::bench(max_time = 2)]
fn ig_encrypt_password(bencher: Bencher<'_, '_>) {
    let sk = rsa::PrivateKey::from_pkcs8_pem(ENCRYPTION_KEY_PEM).expect("fixture key");
    let der = sk.to_public_key().to_public_key_der().expect("encodes");
    let key_b64 = STANDARD.encode(der.as_bytes());
    let password = Password::new("fakeig-password-secret");
    let mut rng = StdRng::seed_from_u64(1);
    bencher.bench_local(|| {
        encrypt_password(&mut rng, black_box(&key_b64), 1_795_435_200_000, &password)
            .expect("encrypts")
    });
}

// ---------------------------------------------------------------- IBKR LST

/// The whole live session token step through the machine: build the session (parse
/// both PEM keys, the DH prime, RSA-decrypt the access token secret), submit Connect,
/// the LST request (DH challenge, RSA-SHA256 signature), the canned answer (DH shared
/// secret, HMAC-SHA1, check against the broker's signature), up to the first
/// HMAC-signed request.
#[divan::bench(max_time = 5)]
fn ibkr_lst_whole_step(bencher: Bencher<'_, '_>) {
    let o = oauth();
    let now = o.clock.now();
    bencher
        .with_inputs(|| (o.config.clone(), o.script.response(0)))
        .bench_local_values(|(config, answer)| {
            let mut m =
                IbkrSession::new(config, broker_session::RngSeed::from_u64(1), now).expect("valid");
            let _ = m.submit(IbkrIntent::Connect, now);
            let t = next_send(&mut m, now);
            m.handle_input(
                Input::Response {
                    id: t.id,
                    response: answer,
                },
                now,
            );
            let signed = next_send(&mut m, now);
            debug_assert!(
                signed
                    .request
                    .uri()
                    .path()
                    .ends_with("/iserver/auth/status")
            );
            (m, signed)
        });
}

/// The LST exchange on a session already built (keys parsed, secret decrypted):
/// what a renewal costs.
#[divan::bench(max_time = 5)]
fn ibkr_lst_exchange_only(bencher: Bencher<'_, '_>) {
    let o = oauth();
    let now = o.clock.now();
    bencher
        .with_inputs(|| {
            let m = IbkrSession::new(o.config.clone(), broker_session::RngSeed::from_u64(1), now)
                .expect("valid");
            (m, o.script.response(0))
        })
        .bench_local_values(|(mut m, answer)| {
            let _ = m.submit(IbkrIntent::Connect, now);
            let t = next_send(&mut m, now);
            m.handle_input(
                Input::Response {
                    id: t.id,
                    response: answer,
                },
                now,
            );
            let signed = next_send(&mut m, now);
            (m, signed)
        });
}

/// Part: parse one PKCS#1 PEM private key (2048-bit; `rsa` precomputes CRT values).
#[divan::bench(max_time = 2)]
fn ibkr_part_parse_pem_key(bencher: Bencher<'_, '_>) {
    let pem = v(&["rsa", "encryption_private_key_pkcs1_pem"]);
    bencher.bench_local(|| sign::parse_private_key(black_box(&pem), "bench").expect("parses"));
}

/// Part: RSA decrypt of the access token secret (PKCS#1 v1.5, 2048-bit private key).
#[divan::bench(max_time = 3)]
fn ibkr_part_rsa_decrypt(bencher: Bencher<'_, '_>) {
    let key = sign::parse_private_key(&v(&["rsa", "encryption_private_key_pkcs1_pem"]), "e")
        .expect("parses");
    let secret = v(&["rsa", "access_token_secret_b64"]);
    let mut rng = StdRng::seed_from_u64(2);
    bencher.bench_local(|| {
        sign::decrypt_access_token_secret(&key, &mut rng, black_box(&secret)).expect("decrypts")
    });
}

/// Part: RSA-SHA256 signature of the LST base string (PKCS#1 v1.5, 2048-bit).
#[divan::bench(max_time = 3)]
fn ibkr_part_rsa_sign(bencher: Bencher<'_, '_>) {
    let key = sign::parse_private_key(&v(&["rsa", "signature_private_key_pkcs1_pem"]), "s")
        .expect("parses");
    let base = v(&["rsa", "lst_base_string"]);
    let mut rng = StdRng::seed_from_u64(3);
    bencher.bench_local(|| sign::rsa_sha256_signature(&key, &mut rng, black_box(&base)));
}

fn group() -> DhGroup {
    DhGroup::new(&v(&["dh", "prime_hex"]), 2).expect("prime parses")
}

/// Part: the DH challenge `A = g^a mod p` (2048-bit prime, 256-bit exponent).
#[divan::bench(max_time = 3)]
fn ibkr_part_dh_challenge(bencher: Bencher<'_, '_>) {
    let g = group();
    let case = &vectors()["dh"]["cases"][0];
    let a = DhSecret::from_hex(case["dh_random_a_hex"].as_str().expect("a")).expect("hex");
    bencher.bench_local(|| g.challenge(black_box(&a)));
}

/// Part: the shared secret `K = B^a mod p` (with the range check and Java bytes).
#[divan::bench(max_time = 3)]
fn ibkr_part_dh_shared_secret(bencher: Bencher<'_, '_>) {
    let g = group();
    let case = &vectors()["dh"]["cases"][0];
    let a = DhSecret::from_hex(case["dh_random_a_hex"].as_str().expect("a")).expect("hex");
    let b = case["dh_response_B_hex"].as_str().expect("B").to_owned();
    bencher.bench_local(|| g.shared_secret(&a, black_box(&b)).expect("in range"));
}

/// Part: LST = HMAC-SHA1(K, prepend), and its check against the broker's signature.
#[divan::bench(max_time = 1)]
fn ibkr_part_hmac_sha1_lst_and_check(bencher: Bencher<'_, '_>) {
    let case = &vectors()["dh"]["cases"][0];
    let k =
        broker_session::ibkr::oauth::hex_decode(case["K_hex"].as_str().expect("K")).expect("hex");
    let k = to_java_bytes(&k);
    let prepend =
        broker_session::ibkr::oauth::hex_decode(case["prepend_hex"].as_str().expect("prepend"))
            .expect("hex");
    let sig = case["live_session_token_signature_hex"]
        .as_str()
        .expect("sig")
        .to_owned();
    bencher.bench_local(|| {
        let token: LiveSessionToken = lst::live_session_token(black_box(&k), &prepend);
        lst::validate_live_session_token(&token, "TESTCONS", &sig).expect("matches");
        token
    });
}

/// Part: the DH group from the prime's hex (done once per session).
#[divan::bench(max_time = 1)]
fn ibkr_part_dh_group(bencher: Bencher<'_, '_>) {
    let p = v(&["dh", "prime_hex"]);
    bencher.bench_local(|| DhGroup::new(black_box(&p), 2).expect("parses"));
}

// ---------------------------------------------------------------- per request

/// `authorize` on an OAuth session: HMAC-SHA256 over the base string (query
/// parameters signed), `Authorization` header stamped.
#[divan::bench(max_time = 2)]
fn ibkr_authorize_hmac_sha256_with_query(bencher: Bencher<'_, '_>) {
    let o = oauth();
    let mut m = o.connected();
    let mut req = app_request(true);
    let now = o.clock.now();
    bencher.bench_local(|| m.authorize(black_box(&mut req), now).expect("stamped"));
}

/// The same without a query string.
#[divan::bench(max_time = 2)]
fn ibkr_authorize_hmac_sha256_no_query(bencher: Bencher<'_, '_>) {
    let o = oauth();
    let mut m = o.connected();
    let mut req = app_request(false);
    let now = o.clock.now();
    bencher.bench_local(|| m.authorize(black_box(&mut req), now).expect("stamped"));
}

/// Part of it: the HMAC-SHA256 alone over the vectors' base string.
#[divan::bench(max_time = 1)]
fn ibkr_part_hmac_sha256(bencher: Bencher<'_, '_>) {
    let key = STANDARD
        .decode(v(&["hmac_request", "live_session_token_b64"]))
        .expect("b64");
    let base = v(&["hmac_request", "base_string"]);
    bencher.bench_local(|| sign::hmac_sha256_signature(&key, black_box(&base)));
}

/// Part of it: building the base string (percent-encoding, sorting the parameters).
#[divan::bench(max_time = 1)]
fn ibkr_part_base_string(bencher: Bencher<'_, '_>) {
    let params: Vec<(String, String)> = vectors()["hmac_request"]["params"]
        .as_object()
        .expect("params")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let url = v(&["hmac_request", "url"]);
    bencher.bench_local(|| base_string::base_string("", "POST", black_box(&url), &params));
}
