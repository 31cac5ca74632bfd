//! Arbitrary statuses, headers and bodies never panic the IBKR decoders or the
//! machine, and the machine keeps the loop contract throughout.

use std::time::Duration;

use broker_session::ibkr::{self as ibkr_policy, IbkrIntent, IbkrSession, responses as decode};
use broker_session::{FailureKind, Input, Machine, Output, TransportFailure};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::sim::VirtualClock;
use proptest::prelude::*;

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(br#"{"authenticated":true,"connected":true,"competing":false}"#.to_vec()),
        Just(br#"{"authenticated":false,"connected":true}"#.to_vec()),
        Just(br#"{"error":"no session"}"#.to_vec()),
        Just(br#"{"error":"Bad Request: no bridge","statusCode":400}"#.to_vec()),
        Just(br#"{"message":"triggered"}"#.to_vec()),
        Just(br#"{"status":true}"#.to_vec()),
        Just(br#"{"diffie_hellman_response":"ff","live_session_token_signature":"00","live_session_token_expiration":"x"}"#.to_vec()),
        Just(br#"{"iserver":{"authStatus":{"authenticated":"yes"}}}"#.to_vec()),
        Just(br#"{"session":1,"ssoExpires":"12","userId":1e300}"#.to_vec()),
        "[\\{\\}\\[\\]\":,a-z0-9 ]{0,40}".prop_map(String::into_bytes),
    ]
}

fn response(st: u16, location: Option<String>, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut b = http::Response::builder().status(st);
    if let Some(l) = location {
        b = b.header("location", l);
    }
    b.body(body).unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Intent(u8),
    Answer {
        status: u16,
        location: Option<String>,
        body: Vec<u8>,
    },
    Fail,
    Wait(u16),
    App {
        status: u16,
        body: Vec<u8>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..8).prop_map(Step::Intent),
        3 => (100u16..600, proptest::option::of("/sso/(Login|Dispatcher|x)[a-z?=&]{0,8}"), body())
            .prop_map(|(status, location, body)| Step::Answer { status, location, body }),
        1 => Just(Step::Fail),
        1 => (0u16..4000).prop_map(Step::Wait),
        1 => (100u16..600, body()).prop_map(|(status, body)| Step::App { status, body }),
    ]
}

fn intent(n: u8) -> IbkrIntent {
    match n {
        0 => IbkrIntent::Connect,
        1 => IbkrIntent::CheckStatus,
        2 => IbkrIntent::InitBrokerage { compete: None },
        3 => IbkrIntent::Tickle,
        4 => IbkrIntent::Reauthenticate,
        5 => IbkrIntent::Validate,
        6 => IbkrIntent::RenewToken,
        _ => IbkrIntent::Logout,
    }
}

fn run(mut session: IbkrSession, steps: Vec<Step>) {
    let mut clock = VirtualClock::new();
    let mut pending: Vec<(broker_session::RequestId, std::time::Instant)> = Vec::new();
    let mut stale = Vec::new();
    for s in steps {
        // Drain to Wait, checking the contract.
        for _ in 0..1000 {
            let now = clock.now();
            match session.poll_output(now) {
                Output::Send(t) => {
                    // A second request is only legal once the first passed the
                    // machine's own 30 s deadline; the old one becomes stale.
                    for (id, at) in pending.drain(..) {
                        assert!(
                            now.mono - at >= Duration::from_secs(30),
                            "two session requests in flight"
                        );
                        stale.push(id);
                    }
                    pending.push((t.id, now.mono));
                }
                Output::Event(_) => {}
                Output::Wait(w) => {
                    if let Some(at) = w {
                        assert!(at > now.mono);
                    }
                    break;
                }
                _ => {}
            }
        }
        let now = clock.now();
        match s {
            Step::Intent(n) => {
                let _ = session.submit(intent(n), now);
            }
            Step::Answer {
                status,
                location,
                body,
            } => {
                // Now and then a stale answer first: it must be ignored.
                if let Some(id) = stale.pop() {
                    session.handle_input(
                        Input::Response {
                            id,
                            response: response(200, None, Vec::new()),
                        },
                        now,
                    );
                }
                if let Some((id, _)) = pending.pop() {
                    session.handle_input(
                        Input::Response {
                            id,
                            response: response(status, location, body),
                        },
                        now,
                    );
                }
            }
            Step::Fail => {
                if let Some((id, _)) = pending.pop() {
                    let failure = TransportFailure::new(FailureKind::Connect, "refused");
                    session.handle_input(Input::Failed { id, failure }, now);
                }
            }
            Step::Wait(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms) * 50));
                session.handle_input(Input::Timeout, clock.now());
            }
            Step::App { status, body } => {
                let mut req =
                    http::Request::get("https://api.ibkr.com/v1/api/iserver/accounts?x=1")
                        .body(())
                        .unwrap();
                if let Ok(stamp) = session.authorize(&mut req, now) {
                    let _ = session.observe(&response(status, None, body), stamp, now);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(st in 100u16..600, loc in proptest::option::of(".{0,20}"), b in body()) {
        let _ = decode::auth_status(&b);
        let _ = decode::ssodh_init(&b);
        let _ = decode::tickle(&b);
        let _ = decode::validate(&b);
        let _ = decode::logout(&b);
        let _ = decode::reauthenticate(&b);
        let _ = decode::live_session_token(&b);
        let _ = decode::error_text(&b);
        let mut r = http::Response::builder().status(st);
        if let Some(l) = loc.filter(|l| http::HeaderValue::from_str(l).is_ok()) {
            r = r.header("location", l);
        }
        let r = r.body(b).unwrap();
        let _ = ibkr_policy::is_no_session(&r);
        let _ = ibkr_policy::is_no_bridge(&r);
    }

    #[test]
    fn gateway_machine_never_panics(steps in proptest::collection::vec(step(), 0..60)) {
        let session = IbkrSession::new(FakeIbkr::gateway_config(), broker_session::RngSeed::from_u64(5), VirtualClock::new().now()).unwrap();
        run(session, steps);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn oauth_machine_never_panics(steps in proptest::collection::vec(step(), 0..40)) {
        let (_, oauth) = FakeIbkr::oauth(false);
        let mut config = FakeIbkr::oauth_config(oauth);
        config.base_url = "https://api.ibkr.com/v1/api".into();
        let session = IbkrSession::new(config, broker_session::RngSeed::from_u64(5), VirtualClock::new().now()).unwrap();
        run(session, steps);
    }
}

fn fault() -> impl Strategy<Value = (Option<&'static str>, broker_session_testkit::ibkr::Fault)> {
    use broker_session_testkit::ibkr::Fault;
    let path = prop_oneof![
        Just(None),
        Just(Some("/tickle")),
        Just(Some("/iserver/auth/status")),
        Just(Some("/iserver/auth/ssodh/init")),
    ];
    let fault = prop_oneof![
        Just(Fault::Status(500, r#"{"error":"Internal Server Error"}"#)),
        Just(Fault::Status(503, "Service Unavailable")),
        Just(Fault::Status(429, "")),
        Just(Fault::Status(
            401,
            r#"{"error":"not authenticated","statusCode":401}"#
        )),
        Just(Fault::Body("{\"authenticated\":")),
        Just(Fault::Body("[]")),
        Just(Fault::Transport(FailureKind::Timeout)),
        Just(Fault::Transport(FailureKind::Io)),
    ];
    (path, fault)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever transient faults hit the session, once they stop the session is
    /// ready again: faults never lose an OAuth session for good.
    #[test]
    fn oauth_sessions_recover_from_transient_faults(faults in proptest::collection::vec(fault(), 0..12)) {
        use broker_session::ibkr::IbkrState;
        use broker_session_testkit::sim::Sim;
        let (mut fake, oauth) = FakeIbkr::oauth(false);
        for (p, f) in faults {
            // A 401 on the token request itself is a credentials rejection (final by
            // design), not a transient fault.
            let p = match (&p, &f) {
                (None, broker_session_testkit::ibkr::Fault::Status(401, _)) => Some("/tickle"),
                _ => p,
            };
            fake.inject(p, f);
        }
        let clock = VirtualClock::new();
        let mut config = FakeIbkr::oauth_config(oauth);
        config.throttle_backoff = Duration::from_secs(60);
        let session = IbkrSession::new(config, broker_session::RngSeed::from_u64(9), clock.now()).unwrap();
        let mut sim = Sim::with_clock(session, fake, clock);
        let first = sim.run(IbkrIntent::Connect);
        if first.is_err() {
            prop_assert_ne!(sim.machine.state(), IbkrState::Connecting);
        }
        sim.advance(Duration::from_secs(3600));
        // Each fault fails at most one attempt; repeated Connects bring the session back.
        let mut attempts = 0;
        while sim.run(IbkrIntent::Connect).is_err() {
            attempts += 1;
            prop_assert!(attempts <= 12, "still failing after the faults ran out");
        }
        prop_assert_eq!(sim.machine.state(), IbkrState::Ready);
        prop_assert!(sim.broker.min_gap("/tickle").is_none_or(|g| g >= Duration::from_secs(1)));
        prop_assert_eq!(sim.broker.oauth_server().unwrap().bad_signatures, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same for the gateway: after the faults, Connect works again, and the
    /// keep-alive never breaks pacing.
    #[test]
    fn gateway_sessions_recover_from_transient_faults(faults in proptest::collection::vec(fault(), 0..12)) {
        use broker_session::ibkr::IbkrState;
        use broker_session_testkit::sim::Sim;
        let mut fake = FakeIbkr::gateway();
        for (p, f) in faults {
            fake.inject(p, f);
        }
        let clock = VirtualClock::new();
        let mut config = FakeIbkr::gateway_config();
        config.throttle_backoff = Duration::from_secs(60);
        let session = IbkrSession::new(config, broker_session::RngSeed::from_u64(9), clock.now()).unwrap();
        let mut sim = Sim::with_clock(session, fake, clock);
        let first = sim.run(IbkrIntent::Connect);
        if first.is_err() {
            prop_assert_ne!(sim.machine.state(), IbkrState::Connecting);
        }
        sim.advance(Duration::from_secs(3600));
        let mut attempts = 0;
        while sim.run(IbkrIntent::Connect).is_err() {
            attempts += 1;
            prop_assert!(attempts <= 12, "still failing after the faults ran out");
        }
        prop_assert_eq!(sim.machine.state(), IbkrState::Ready);
        prop_assert!(sim.broker.min_gap("/tickle").is_none_or(|g| g >= Duration::from_secs(1)));
    }
}
