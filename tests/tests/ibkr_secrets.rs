//! No secret of an IBKR session ever shows, in any encoding, in Debug or Display
//! output: configuration, session, transmits, events, errors, outcomes; also when
//! answers are broken and carry a secret (invalid JSON, a secret in a field of the
//! wrong type).
//!
//! Secrets looked for: the access token and its secret, the decrypted prepend, both
//! private keys (PEM text and DER bytes), every live session token the server
//! derived, the Diffie-Hellman shared secret behind each, and the tickle session id.

use std::time::Duration;

use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret};
use broker_session::ibkr::oauth::{base_string, hex_encode};
use broker_session::ibkr::{IbkrIntent, IbkrSession, OAuthConfig};
use broker_session::{Input, Machine, Output};
use broker_session_testkit::ibkr::{ACCESS_TOKEN, FakeIbkr, Fault, VECTORS_JSON};
use broker_session_testkit::secret_scan::SecretScan;
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};

/// The fake's own Diffie-Hellman secret (see `FakeIbkr::oauth`), to recompute the
/// shared secret of each exchange from the client's challenge.
const SERVER_DH_SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543211";

/// The tickle session id the fake hands out.
const TICKLE_SESSION: &str = "bb665d0f55b6289d70bc8ba97ee6d2fd";

/// The secrets known up front: access token, its secret, the prepend, both keys.
fn known_secrets(oauth: &OAuthConfig) -> SecretScan {
    let mut scan = SecretScan::new();
    scan.add("access token", ACCESS_TOKEN);
    scan.add(
        "access token secret",
        oauth.access_token_secret.expose_secret(),
    );
    let prepend: Vec<u8> = (0x40u8..0x60).collect();
    scan.add("prepend", &prepend);
    for (label, pem) in [
        ("encryption key", oauth.encryption_key.expose_secret()),
        ("signature key", oauth.signature_key.expose_secret()),
    ] {
        scan.add(label, pem);
        // The DER bytes under the armour (in base64 the scan decodes them too).
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        scan.add(label, body);
    }
    scan
}

/// Everything a run printed, and the secrets it issued.
struct Run {
    printed: Vec<String>,
    scan: SecretScan,
    lsts: Vec<String>,
}

impl Run {
    /// Answers one request and records the secrets it made: harvested from the
    /// answer, the server's current live session token, and the shared secret
    /// behind it.
    fn exchange(
        &mut self,
        fake: &mut FakeIbkr,
        request: &http::Request<Vec<u8>>,
        clock: &VirtualClock,
    ) -> Reply {
        let reply = fake.handle(request, clock.now());
        if let Reply::Response(r) = &reply {
            self.scan.add_from_response(r);
        }
        if let Some(l) = fake.oauth_server().and_then(|o| o.current_lst())
            && !self.lsts.contains(&l)
        {
            self.scan.add("live session token", &l);
            self.lsts.push(l);
        }
        if request.uri().path().ends_with("/oauth/live_session_token")
            && let Some(challenge) = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(base_string::parse_authorization_header)
                .and_then(|(_, p)| {
                    p.into_iter()
                        .find(|(k, _)| k == "diffie_hellman_challenge")
                        .map(|(_, v)| v)
                })
            && let Ok(k) = group().shared_secret(&server_secret(), &challenge)
        {
            self.scan.add("DH shared secret", k.expose_secret());
        }
        reply
    }

    /// Drives the session until it waits with nothing due before `until`, printing
    /// every output, every error (Display and Debug) and the session after each step.
    fn drive(
        &mut self,
        session: &mut IbkrSession,
        fake: &mut FakeIbkr,
        clock: &mut VirtualClock,
        until: std::time::Instant,
    ) {
        for _ in 0..100_000 {
            match session.poll_output(clock.now()) {
                Output::Send(t) => {
                    self.printed.push(format!("{t:?}"));
                    self.printed.push(format!("{:?}", t.request.headers()));
                    let reply = self.exchange(fake, &t.request, clock);
                    clock.advance(Duration::from_millis(10));
                    let input = match reply {
                        Reply::Response(response) => Input::Response { id: t.id, response },
                        Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                    };
                    self.printed.push(format!("{input:?}"));
                    session.handle_input(input, clock.now());
                }
                Output::Event(e) => {
                    self.printed.push(format!("{e:?}"));
                    if let broker_session::Event::Completed {
                        result: Err(err), ..
                    }
                    | broker_session::Event::SessionLost { reason: err } = &e
                    {
                        self.printed.push(format!("{err} {err:?}"));
                    }
                }
                Output::Wait(Some(at)) if at <= until => {
                    clock.advance_to(at);
                    session.handle_input(Input::Timeout, clock.now());
                }
                Output::Wait(_) => return,
                _ => {}
            }
            self.printed.push(format!("{session:?}"));
        }
        panic!("did not settle");
    }
}

fn group() -> DhGroup {
    let v: serde_json::Value = serde_json::from_str(VECTORS_JSON).expect("vectors");
    DhGroup::new(v["dh"]["prime_hex"].as_str().expect("prime"), 2).expect("group")
}

fn server_secret() -> DhSecret {
    DhSecret::from_hex(SERVER_DH_SECRET).expect("secret")
}

#[test]
fn nothing_secret_is_ever_printed() {
    let (mut fake, oauth) = FakeIbkr::oauth(true);
    fake.oauth_server().unwrap().lst_lifetime = Duration::from_secs(2 * 3600);
    let config = FakeIbkr::oauth_config(oauth.clone());

    let mut run = Run {
        printed: vec![format!("{config:?}"), format!("{oauth:?}")],
        scan: known_secrets(&oauth),
        lsts: Vec::new(),
    };
    let mut clock = VirtualClock::new();
    let mut session =
        IbkrSession::new(config, broker_session::RngSeed::from_u64(3), clock.now()).unwrap();
    run.printed.push(format!("{session:?}"));

    // Faults so error paths print too.
    fake.inject(
        Some("/tickle"),
        Fault::Status(503, r#"{"error":"Service Unavailable"}"#),
    );
    fake.inject(Some("/tickle"), Fault::Body("{broken"));
    fake.inject(
        Some("/tickle"),
        Fault::Status(401, r#"{"error":"not authenticated","statusCode":401}"#),
    );

    session.submit(IbkrIntent::Connect, clock.now()).unwrap();
    let end = clock.now().mono + Duration::from_secs(5 * 3600);
    run.drive(&mut session, &mut fake, &mut clock, end);
    // An application request stamped by the session.
    let mut req = http::Request::get("https://api.ibkr.com/v1/api/iserver/accounts")
        .body(())
        .unwrap();
    let _stamp = session.authorize(&mut req, clock.now()).unwrap();
    run.printed.push(format!("{req:?}"));
    let err = session
        .authorize(
            &mut http::Request::get("https://evil.example/")
                .body(())
                .unwrap(),
            clock.now(),
        )
        .unwrap_err();
    run.printed.push(format!("{err:?} {err}"));
    session.submit(IbkrIntent::Logout, clock.now()).unwrap();
    let until = clock.now().mono;
    run.drive(&mut session, &mut fake, &mut clock, until);

    assert!(
        run.lsts.len() >= 2,
        "token renewals happened: {}",
        run.lsts.len()
    );
    // Harvested: the tickle session id; derived: each LST's shared secret.
    assert!(run.scan.find(TICKLE_SESSION).is_some());
    assert!(run.scan.len() >= 8 + 2 * run.lsts.len(), "{:?}", run.scan);
    let all = run.printed.join("\n");
    assert!(all.len() > 10_000);
    run.scan.assert_clean("IBKR output", &all);
}

/// Leaks a body for `Fault::Body`, which takes `&'static str` (a test, so fine).
fn body(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn broken_answers_carrying_secrets_are_not_echoed() {
    // Each: the path, and a body built from the secrets of a connected session.
    type Make = fn(&str, &str) -> String;
    let cases: [(&str, &'static str, Make); 6] = [
        (
            "status: a token where a flag goes",
            "/iserver/auth/status",
            |lst, _| format!(r#"{{"authenticated":"{lst}","connected":true}}"#),
        ),
        (
            "status: invalid JSON holding a token",
            "/iserver/auth/status",
            |lst, _| format!(r#"{{"authenticated":true,"token":"{lst}""#),
        ),
        (
            "tickle: the session id where an object goes",
            "/tickle",
            |_, _| {
                format!(
                    r#"{{"session":"{TICKLE_SESSION}","iserver":{{"authStatus":"{TICKLE_SESSION}"}}}}"#
                )
            },
        ),
        (
            "tickle: the body is a bare secret",
            "/tickle",
            |_, secret| format!(r#""{secret}""#),
        ),
        (
            "token renewal: secrets where the DH answer goes",
            "/oauth/live_session_token",
            |lst, secret| {
                format!(
                    r#"{{"diffie_hellman_response":{{"k":"{secret}"}},"live_session_token_signature":"{lst}","live_session_token_expiration":"{ACCESS_TOKEN}"}}"#
                )
            },
        ),
        (
            "reauthenticate: a token where a string goes",
            "/iserver/reauthenticate",
            |lst, _| format!(r#"{{"message":["{lst}"]}}"#),
        ),
    ];
    for (name, path, make) in cases {
        let (mut fake, oauth) = FakeIbkr::oauth(true);
        let config = FakeIbkr::oauth_config(oauth.clone());
        let mut run = Run {
            printed: Vec::new(),
            scan: known_secrets(&oauth),
            lsts: Vec::new(),
        };
        let mut clock = VirtualClock::new();
        let mut session =
            IbkrSession::new(config, broker_session::RngSeed::from_u64(3), clock.now()).unwrap();
        session.submit(IbkrIntent::Connect, clock.now()).unwrap();
        let until = clock.now().mono;
        run.drive(&mut session, &mut fake, &mut clock, until);
        let lst = run.lsts.last().expect("connected").clone();
        let secret = oauth.access_token_secret.expose_secret().to_owned();
        fake.inject(Some(path), Fault::Body(body(make(&lst, &secret))));
        let intent = match path {
            "/tickle" => IbkrIntent::Tickle,
            "/oauth/live_session_token" => IbkrIntent::RenewToken,
            "/iserver/reauthenticate" => IbkrIntent::Reauthenticate,
            _ => IbkrIntent::CheckStatus,
        };
        session.submit(intent, clock.now()).unwrap();
        let until = clock.now().mono;
        run.drive(&mut session, &mut fake, &mut clock, until);
        let all = run.printed.join("\n");
        assert!(
            fake.requests_to(path).count() >= 1,
            "{name}: the broken answer was not given"
        );
        assert!(all.contains("Err("), "{name}: no failure reported:\n{all}");
        run.scan.assert_clean(name, &all);
    }
}

#[test]
fn the_scan_knows_the_lst_in_every_form() {
    let (mut fake, oauth) = FakeIbkr::oauth(false);
    let mut run = Run {
        printed: Vec::new(),
        scan: known_secrets(&oauth),
        lsts: Vec::new(),
    };
    let mut clock = VirtualClock::new();
    let mut session = IbkrSession::new(
        FakeIbkr::oauth_config(oauth),
        broker_session::RngSeed::from_u64(3),
        clock.now(),
    )
    .unwrap();
    session.submit(IbkrIntent::Connect, clock.now()).unwrap();
    let until = clock.now().mono;
    run.drive(&mut session, &mut fake, &mut clock, until);
    let lst = run.lsts.first().expect("a token").clone();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&lst)
        .unwrap();
    for shown in [lst.clone(), hex_encode(&raw), format!("{raw:?}")] {
        assert!(run.scan.find(&shown).is_some(), "{shown}");
    }
}

#[test]
fn gateway_debug_output_is_clean_too() {
    let config = FakeIbkr::gateway_config();
    let text = format!("{config:?}");
    assert!(text.contains("Gateway"), "{text}");
    // The seed determines DH secrets and nonces: its Debug is redacted.
    let seed = broker_session::RngSeed::from_u64(0x5eed_5eed_5eed_5eed);
    assert_eq!(format!("{seed:?}"), "RngSeed(***)");
}
