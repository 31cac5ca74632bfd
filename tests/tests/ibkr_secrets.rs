//! No secret of an IBKR session ever shows in Debug or Display output: configuration,
//! session, transmits, events, errors, outcomes.

use std::time::Duration;

use base64::Engine as _;
use broker_session::ibkr::oauth::hex_encode;
use broker_session::ibkr::{IbkrIntent, IbkrSession};
use broker_session::{Input, Machine, Output};
use broker_session_testkit::ibkr::{ACCESS_TOKEN, FakeIbkr, Fault};
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};

#[test]
fn nothing_secret_is_ever_printed() {
    let (mut fake, oauth) = FakeIbkr::oauth(true);
    fake.oauth_server().unwrap().lst_lifetime = Duration::from_secs(2 * 3600);
    let config = FakeIbkr::oauth_config(oauth.clone());

    let mut printed = vec![format!("{config:?}"), format!("{oauth:?}")];
    let mut clock = VirtualClock::new();
    let mut session =
        IbkrSession::new(config, broker_session::RngSeed::from_u64(3), clock.now()).unwrap();
    printed.push(format!("{session:?}"));

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

    let mut lsts = Vec::new();
    session.submit(IbkrIntent::Connect, clock.now()).unwrap();
    let end = clock.now().mono + Duration::from_secs(5 * 3600);
    let mut steps = 0;
    while clock.now().mono < end && steps < 100_000 {
        steps += 1;
        match session.poll_output(clock.now()) {
            Output::Send(t) => {
                printed.push(format!("{t:?}"));
                printed.push(format!("{:?}", t.request.headers()));
                let reply = fake.handle(&t.request, clock.now());
                if let Some(l) = fake.oauth_server().unwrap().current_lst()
                    && !lsts.contains(&l)
                {
                    lsts.push(l);
                }
                clock.advance(Duration::from_millis(10));
                let input = match reply {
                    Reply::Response(response) => Input::Response { id: t.id, response },
                    Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                };
                printed.push(format!("{input:?}"));
                session.handle_input(input, clock.now());
            }
            Output::Event(e) => {
                printed.push(format!("{e:?}"));
                if let broker_session::Event::Completed {
                    result: Err(err), ..
                }
                | broker_session::Event::SessionLost { reason: err } = &e
                {
                    printed.push(err.to_string());
                }
            }
            Output::Wait(Some(at)) => {
                clock.advance_to(at);
                session.handle_input(Input::Timeout, clock.now());
            }
            Output::Wait(None) => break,
            _ => {}
        }
        printed.push(format!("{session:?}"));
    }
    // An application request stamped by the session.
    let mut req = http::Request::get("https://api.ibkr.com/v1/api/iserver/accounts")
        .body(())
        .unwrap();
    session.authorize(&mut req, clock.now()).unwrap();
    printed.push(format!("{req:?}"));
    let err = session
        .authorize(
            &mut http::Request::get("https://evil.example/")
                .body(())
                .unwrap(),
            clock.now(),
        )
        .unwrap_err();
    printed.push(format!("{err:?} {err}"));

    assert!(lsts.len() >= 2, "token renewals happened: {}", lsts.len());
    let prepend: Vec<u8> = (0x40u8..0x60).collect();
    let mut secrets = vec![
        oauth.access_token_secret.expose_secret().to_owned(),
        hex_encode(&prepend),
        ACCESS_TOKEN.to_owned(),
        "bb665d0f55b6289d70bc8ba97ee6d2fd".to_owned(), // tickle session id
    ];
    secrets.extend(lsts.iter().cloned());
    // The LST as HMAC key bytes in hex, in case anything printed raw bytes.
    for l in &lsts {
        let raw = base64::engine::general_purpose::STANDARD.decode(l).unwrap();
        secrets.push(hex_encode(&raw));
    }
    for pem in [
        oauth.encryption_key.expose_secret(),
        oauth.signature_key.expose_secret(),
    ] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")).take(3) {
            secrets.push(line.to_owned());
        }
    }
    let all = printed.join("\n");
    assert!(all.len() > 10_000);
    for s in &secrets {
        assert!(s.len() >= 16);
        assert!(!all.contains(s.as_str()), "secret leaked: {}…", &s[..6]);
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
