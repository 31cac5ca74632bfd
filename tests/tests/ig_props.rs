//! Arbitrary statuses, headers and bodies never panic the IG decoders or the machine,
//! and the machine keeps the loop contract whatever it is fed.

use std::time::Duration;

use broker_session::ig::{
    BackOffs, Endpoint, IgIntent, IgSession, LoginFlow, action_for, responses,
};
use broker_session::{
    AuthStamp, Event, FailureKind, Input, Machine, OpId, Output, TransportFailure,
};
use broker_session_testkit::ig::{FakeIg, accounts_request, session_config};
use broker_session_testkit::sim::{Sim, VirtualClock};
use proptest::prelude::*;

const TEMPLATES: &[&str] = &[
    r#"{"currentAccountId":"A","accounts":[{"accountId":"A"}],"lightstreamerEndpoint":"x"}"#,
    r#"{"accountId":"A","oauthToken":{"access_token":"a","refresh_token":"r","expires_in":"60"}}"#,
    r#"{"access_token":"a","refresh_token":"r","expires_in":"60"}"#,
    r#"{"encryptionKey":"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A","timeStamp":"1601218928621"}"#,
    r#"{"errorCode":"error.security.oauth-token-invalid"}"#,
    r#"{"errorCode":"error.security.invalid-details"}"#,
    r#"{"errorCode":"service.security.authentication.failure-invalid-client-security-token"}"#,
    r#"{"errorCode":"error.public-api.exceeded-api-key-allowance"}"#,
    r#"{"authenticationStatus":"CHANGE_ENVIRONMENT","reroutingEnvironment":null}"#,
    r#"{"formDetails":[{"formType":"KYC"}],"currentAccountId":"A"}"#,
    "<html>oops</html>",
    "",
];

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (0..TEMPLATES.len(), any::<usize>(), any::<u8>()).prop_map(|(i, cut, b)| {
            let mut v = TEMPLATES[i].as_bytes().to_vec();
            // Truncate or corrupt one byte.
            if !v.is_empty() && b % 3 == 0 {
                let n = cut % v.len();
                v.truncate(n);
            } else if !v.is_empty() && b % 3 == 1 {
                let n = cut % v.len();
                v[n] = b;
            }
            v
        }),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("CST".to_owned()),
                Just("X-SECURITY-TOKEN".to_owned()),
                Just("x-security-token".to_owned()),
                Just("location".to_owned()),
                "[a-z-]{1,12}",
            ],
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
        0..4,
    )
}

fn status() -> impl Strategy<Value = u16> {
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
        100u16..600,
    ]
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

#[derive(Debug, Clone)]
enum Feed {
    Resp(u16, Vec<(String, Vec<u8>)>, Vec<u8>),
    Fail,
    Tick(u64),
}

fn feed() -> impl Strategy<Value = Feed> {
    prop_oneof![
        6 => (status(), headers(), body()).prop_map(|(s, h, b)| Feed::Resp(s, h, b)),
        1 => Just(Feed::Fail),
        1 => (0u64..200_000).prop_map(Feed::Tick),
    ]
}

fn flow() -> impl Strategy<Value = LoginFlow> {
    prop_oneof![
        Just(LoginFlow::V1),
        Just(LoginFlow::V2),
        Just(LoginFlow::V3),
        Just(LoginFlow::EncryptedV2),
        Just(LoginFlow::WebPlatform),
    ]
}

/// Feeds `feeds` to the machine as answers to whatever it sends, checking the loop
/// contract on the way.
fn pump_with(m: &mut IgSession, clock: &mut VirtualClock, feeds: &[Feed]) -> Vec<OpId> {
    let mut done = Vec::new();
    pump_into(m, clock, feeds, &mut done);
    done
}

fn pump_into(m: &mut IgSession, clock: &mut VirtualClock, feeds: &[Feed], done: &mut Vec<OpId>) {
    let mut feeds = feeds.iter();
    for _ in 0..500 {
        let now = clock.now();
        match m.poll_output(now) {
            Output::Send(t) => {
                let input = match feeds.next() {
                    Some(Feed::Resp(s, h, b)) => Input::Response {
                        id: t.id,
                        response: response(*s, h, b.clone()),
                    },
                    Some(Feed::Tick(ms)) => {
                        clock.advance(Duration::from_millis(*ms));
                        Input::Timeout
                    }
                    Some(Feed::Fail) => Input::Failed {
                        id: t.id,
                        failure: TransportFailure::new(FailureKind::Io, "reset"),
                    },
                    None => return,
                };
                m.handle_input(input, clock.now());
            }
            Output::Event(Event::Completed { op, .. }) => done.push(op),
            Output::Event(_) => {}
            Output::Wait(w) => {
                if let Some(at) = w {
                    assert!(at > now.mono, "Wait not in the future");
                    if feeds.len() == 0 {
                        return;
                    }
                    clock.advance_to(at);
                    m.handle_input(Input::Timeout, clock.now());
                } else {
                    return;
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(s in status(), h in headers(), b in body()) {
        let r = response(s, &h, b.clone());
        let (h, body) = (r.headers(), r.body());
        let _ = responses::login_v2(h, body);
        let _ = responses::login_v3(body);
        let _ = responses::refresh(body);
        let _ = responses::read_session(h, body);
        let _ = responses::switch_account(h, body);
        let _ = responses::encryption_key(body);
        let _ = responses::web_platform_login(h, body);
        let code = responses::error_code(&b);
        let b = BackOffs { allowance: Duration::from_secs(60), login_throttle: Duration::from_secs(180) };
        for e in [Endpoint::LoginV1, Endpoint::LoginV2, Endpoint::LoginV3, Endpoint::WebPlatformLogin,
                  Endpoint::Refresh, Endpoint::EncryptionKey, Endpoint::ReadSession { fetch_tokens: false },
                  Endpoint::ReadSession { fetch_tokens: true }, Endpoint::Switch, Endpoint::Logout,
                  Endpoint::Application] {
            let _ = action_for(e, s, code.as_deref(), b);
        }
    }

    #[test]
    fn machine_mid_login_survives_anything(f in flow(), feeds in proptest::collection::vec(feed(), 1..8)) {
        let fake = FakeIg::default();
        let mut clock = VirtualClock::new();
        let mut m = IgSession::new(session_config(&fake, f), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut submitted = vec![m.submit(IgIntent::Login, clock.now()).unwrap()];
        let mut done = pump_with(&mut m, &mut clock, &feeds);
        submitted.extend(m.submit(IgIntent::ReadSession { fetch_tokens: true }, clock.now()));
        submitted.extend(m.submit(IgIntent::SwitchAccount { account_id: "X".into(), make_default: false }, clock.now()));
        submitted.extend(m.submit(IgIntent::Logout, clock.now()));
        done.extend(pump_with(&mut m, &mut clock, &feeds));
        // Drain to the end with no more answers: every request times out on the core's
        // deadline, so every submitted operation completes, exactly once.
        for _ in 0..200 {
            let now = clock.now();
            match m.poll_output(now) {
                Output::Event(Event::Completed { op, .. }) => done.push(op),
                Output::Wait(Some(at)) => {
                    prop_assert!(at > now.mono);
                    clock.advance_to(at);
                    m.handle_input(Input::Timeout, clock.now());
                }
                Output::Wait(None) => break,
                _ => {}
            }
        }
        let mut sorted = done.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), done.len(), "an operation completed twice");
        for op in submitted {
            prop_assert!(done.contains(&op), "{} never completed", op);
        }
    }

    #[test]
    fn machine_mid_refresh_and_observe_survive_anything(
        feeds in proptest::collection::vec(feed(), 1..8),
        apps in proptest::collection::vec((status(), headers(), body(), any::<bool>()), 1..6),
    ) {
        let fake = FakeIg::default();
        let clock = VirtualClock::new();
        let m = IgSession::new(session_config(&fake, LoginFlow::V3), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut s = Sim::with_clock(m, fake, clock);
        s.run(IgIntent::Login).unwrap();
        // Due for a refresh: answer it with garbage.
        s.clock.advance(Duration::from_secs(55));
        pump_with(&mut s.machine, &mut s.clock, &feeds);
        for (st, h, b, old) in apps {
            let mut req = accounts_request(&s.broker);
            let now = s.clock.now();
            let stamp = match s.machine.authorize(&mut req, now) {
                Ok(stamp) => stamp,
                Err(_) => AuthStamp { generation: 0 },
            };
            let stamp = if old { AuthStamp { generation: stamp.generation.saturating_sub(1) } } else { stamp };
            let _ = s.machine.observe(&response(st, &h, b), stamp, now);
            pump_with(&mut s.machine, &mut s.clock, &feeds);
        }
    }
}
