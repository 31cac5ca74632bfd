//! Client Portal Gateway sessions against the fake gateway, in virtual time.

use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrOutcome, IbkrSession, IbkrState, ReauthenticateMethod};
use broker_session::{ActionRequired, Error, Event, Machine, Observation};
use broker_session_testkit::ibkr::{FakeIbkr, Fault};
use broker_session_testkit::sim::{Sim, VirtualClock};

fn sim_with(
    fake: FakeIbkr,
    tweak: impl FnOnce(&mut broker_session::ibkr::IbkrConfig),
) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let mut config = FakeIbkr::gateway_config();
    tweak(&mut config);
    let session =
        IbkrSession::new(config, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    Sim::with_clock(session, fake, clock)
}

fn sim() -> Sim<IbkrSession, FakeIbkr> {
    sim_with(FakeIbkr::gateway(), |_| {})
}

fn paths(sim: &Sim<IbkrSession, FakeIbkr>) -> Vec<String> {
    sim.broker
        .requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[test]
fn connect_initialises_the_brokerage_session_and_keeps_it_alive() {
    let mut sim = sim();
    let out = sim.run(IbkrIntent::Connect).unwrap();
    let IbkrOutcome::Connected(status) = out else {
        panic!("{out:?}")
    };
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(sim.machine.state(), IbkrState::Ready);
    assert_eq!(
        paths(&sim),
        [
            "POST /iserver/auth/status",
            "POST /iserver/auth/ssodh/init",
            "GET /iserver/accounts"
        ]
    );
    // The gateway adds no credentials.
    assert!(sim.broker.requests.iter().all(|r| !r.authorized));
    let init = sim.broker.requests_to("/iserver/auth/ssodh/init").count();
    assert_eq!(init, 1);

    // An hour passes: tickles every 54 to 60 s (the interval, shortened by up to the
    // default 6 s spread) keep the session (the fake drops it after 5 min idle).
    sim.advance(Duration::from_secs(3600));
    let tickles = sim.broker.requests_to("/tickle").count();
    assert!((59..=67).contains(&tickles), "{tickles}");
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(1));
    assert_eq!(sim.machine.state(), IbkrState::Ready);
    assert!(sim.broker.authenticated);
}

#[test]
fn no_session_needs_a_browser_login_and_is_not_retried() {
    for redirect in [false, true] {
        let mut fake = FakeIbkr::gateway();
        fake.browser_login_done = false;
        fake.redirect_without_session = redirect;
        let mut sim = sim_with(fake, |_| {});
        let err = sim.run(IbkrIntent::Connect).unwrap_err();
        assert_eq!(err, Error::ActionRequired(ActionRequired::BrowserLogin));
        assert_eq!(sim.machine.state(), IbkrState::BrowserLoginRequired);
        assert_eq!(
            sim.broker.requests.len(),
            1,
            "exactly one request per intent"
        );

        // Nothing runs in the background while waiting for the person.
        sim.advance(Duration::from_secs(3600));
        assert_eq!(sim.broker.requests.len(), 1);

        let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
        assert_eq!(err, Error::ActionRequired(ActionRequired::BrowserLogin));
        assert_eq!(sim.broker.requests.len(), 2);

        // The person logs in; Connect now works.
        sim.broker.browser_login_done = true;
        sim.run(IbkrIntent::Connect).unwrap();
        assert_eq!(sim.machine.state(), IbkrState::Ready);
    }
}

#[test]
fn body_no_session_is_no_session() {
    let mut sim = sim();
    sim.broker.inject(
        Some("/iserver/auth/status"),
        Fault::Body(r#"{"error":"no session"}"#),
    );
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert_eq!(err, Error::ActionRequired(ActionRequired::BrowserLogin));
}

#[test]
fn a_dropped_brokerage_session_is_reinitialised_by_the_keepalive() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.drop_brokerage_session();
    sim.advance(Duration::from_secs(61));
    // The tickle saw authenticated:false, the machine re-initialised by itself.
    assert_eq!(
        sim.broker.requests_to("/iserver/auth/ssodh/init").count(),
        2
    );
    assert_eq!(sim.machine.state(), IbkrState::Ready);
    assert!(
        sim.events
            .iter()
            .any(|e| *e == Event::StateChanged(IbkrState::NotAuthenticated))
    );

    // Without keep-alive requests the fake drops the session after 5 minutes.
    let mut quiet = sim_with(FakeIbkr::gateway(), |c| {
        c.tickle_interval = Duration::from_secs(600)
    });
    quiet.run(IbkrIntent::Connect).unwrap();
    quiet.advance(Duration::from_secs(601));
    assert_eq!(
        quiet.broker.requests_to("/iserver/auth/ssodh/init").count(),
        2
    );
    assert_eq!(quiet.machine.state(), IbkrState::Ready);
}

#[test]
fn competing_session_is_taken_over_only_when_the_policy_says_so() {
    let mut fake = FakeIbkr::gateway();
    fake.authenticated = true;
    fake.competing = true;
    let mut sim = sim_with(fake, |c| c.compete = false);
    let out = sim.run(IbkrIntent::Connect).unwrap();
    assert!(matches!(out, IbkrOutcome::Status(_)), "{out:?}");
    assert_eq!(sim.machine.state(), IbkrState::Competing);
    assert_eq!(
        sim.broker.requests_to("/iserver/auth/ssodh/init").count(),
        0
    );

    // Explicitly compete.
    let out = sim
        .run(IbkrIntent::InitBrokerage {
            compete: Some(true),
        })
        .unwrap();
    assert!(matches!(out, IbkrOutcome::Connected(_)));
    assert_eq!(sim.machine.state(), IbkrState::Ready);
    assert!(!sim.broker.competing);

    // Default policy competes right away.
    let mut fake = FakeIbkr::gateway();
    fake.authenticated = true;
    fake.competing = true;
    let mut sim = sim_with(fake, |_| {});
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

#[test]
fn init_failures_are_retried_a_bounded_number_of_times() {
    let mut fake = FakeIbkr::gateway();
    fake.init_failures = 2;
    let mut sim = sim_with(fake, |_| {});
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(
        sim.broker.requests_to("/iserver/auth/ssodh/init").count(),
        3
    );

    let mut fake = FakeIbkr::gateway();
    fake.init_failures = 100;
    let mut sim = sim_with(fake, |_| {});
    let err = sim.run(IbkrIntent::Connect).unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref e) if e.status == 500),
        "{err}"
    );
    assert_eq!(
        sim.broker.requests_to("/iserver/auth/ssodh/init").count(),
        3
    );
}

#[test]
fn reauthenticate_is_asynchronous_and_polled() {
    for method in [ReauthenticateMethod::Post, ReauthenticateMethod::Get] {
        let mut sim = sim_with(FakeIbkr::gateway(), |c| c.reauthenticate_method = method);
        let out = sim.run(IbkrIntent::Reauthenticate).unwrap();
        assert!(matches!(out, IbkrOutcome::Connected(_)));
        let reauth: Vec<_> = sim.broker.requests_to("/iserver/reauthenticate").collect();
        assert_eq!(reauth.len(), 1);
        assert_eq!(
            reauth[0].method.as_str(),
            if method == ReauthenticateMethod::Get {
                "GET"
            } else {
                "POST"
            }
        );
        // Polled about once a second until the fake's 3 s delay passed.
        let polls = sim.broker.requests_to("/iserver/auth/status").count();
        assert!((3..=4).contains(&polls), "{polls}");
        assert!(sim.broker.min_gap("/iserver/auth/status").unwrap() >= Duration::from_secs(1));
    }
    // Never ready: the poll gives up at the deadline.
    let mut fake = FakeIbkr::gateway();
    fake.reauth_delay = Duration::from_secs(3600);
    let mut sim = sim_with(fake, |c| c.ready_timeout = Duration::from_secs(10));
    let err = sim.run(IbkrIntent::Reauthenticate).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    assert!(sim.broker.requests_to("/iserver/auth/status").count() <= 11);
}

#[test]
fn pacing_is_enforced_for_tickle_and_validate() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let mut ops = Vec::new();
    for _ in 0..5 {
        ops.push(sim.submit(IbkrIntent::Tickle).unwrap());
        ops.push(sim.submit(IbkrIntent::Validate).unwrap());
    }
    for op in ops {
        sim.wait_for(op).unwrap();
    }
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(1));
    assert!(sim.broker.min_gap("/sso/validate").unwrap() >= Duration::from_secs(60));
    assert_eq!(sim.broker.requests_to("/sso/validate").count(), 5);
    let out = sim.run(IbkrIntent::Validate).unwrap();
    let IbkrOutcome::Validated(v) = out else {
        panic!()
    };
    assert_eq!(v.login_type, Some(2));
    assert_eq!(v.auth_time, Some(1_702_580_846_836));
    assert_eq!(v.env.as_deref(), Some("PROD"));
    assert!(sim.broker.min_gap("/sso/validate").unwrap() >= Duration::from_secs(60));
}

#[test]
fn throttling_backs_off_for_minutes() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker
        .inject(Some("/tickle"), Fault::Status(429, "Too Many Requests"));
    let err = sim.run(IbkrIntent::Tickle).unwrap_err();
    assert!(
        matches!(err, Error::Throttled { retry_after, .. } if retry_after == Duration::from_secs(900))
    );
    assert!(matches!(sim.machine.state(), IbkrState::BackingOff { .. }));
    let n = sim.broker.requests.len();
    // A user intent waits for the back-off to end.
    let op = sim.submit(IbkrIntent::CheckStatus).unwrap();
    sim.advance(Duration::from_secs(600));
    assert_eq!(
        sim.broker.requests.len(),
        n,
        "nothing sent while backing off"
    );
    sim.wait_for(op).unwrap();
    let first_after = sim.broker.requests[n].at - sim.broker.requests[n - 1].at;
    assert!(first_after >= Duration::from_secs(900), "{first_after:?}");
    // 15 minutes without a request: the fake dropped the brokerage session.
    assert_eq!(sim.machine.state(), IbkrState::NotAuthenticated);
    // The keep-alive resumed and the machine re-initialised.
    sim.advance(Duration::from_secs(120));
    assert!(sim.broker.requests_to("/tickle").count() >= 2);
    assert_eq!(sim.machine.state(), IbkrState::Ready);

    // An application request answered 429 also backs off.
    let req = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(Vec::new())
        .unwrap();
    sim.broker
        .inject(Some("/iserver/accounts"), Fault::Status(429, ""));
    let out = sim.app_request(&req).unwrap();
    assert!(matches!(out.observation, Some(Observation::BackOff { .. })));
}

#[test]
fn transient_failures_do_not_end_the_keepalive() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.inject(
        Some("/tickle"),
        Fault::Transport(broker_session::FailureKind::Timeout),
    );
    sim.broker
        .inject(Some("/tickle"), Fault::Status(503, "Service Unavailable"));
    sim.broker.inject(Some("/tickle"), Fault::Body("{not json"));
    sim.broker.inject(
        Some("/tickle"),
        Fault::Body(r#"{"error":"failed to process request"}"#),
    );
    sim.advance(Duration::from_secs(10 * 60));
    let failed = sim.completions().filter(|(_, r)| r.is_err()).count();
    assert_eq!(failed, 4);
    assert_eq!(sim.broker.requests_to("/tickle").count(), 10);
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

#[test]
fn logout_ends_the_session() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let out = sim.run(IbkrIntent::Logout).unwrap();
    assert_eq!(out, IbkrOutcome::LoggedOut { status: Some(true) });
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
    let n = sim.broker.requests.len();
    sim.advance(Duration::from_secs(3600));
    assert_eq!(sim.broker.requests.len(), n, "keep-alive stopped");
}

#[test]
fn daily_reset_surfaces_a_browser_login_and_stops() {
    let mut fake = FakeIbkr::gateway();
    // The virtual clock starts at 12:00 UTC; reset at 05:00 UTC.
    fake.daily_reset = Some(Duration::from_secs(5 * 3600));
    let mut sim = sim_with(fake, |_| {});
    sim.run(IbkrIntent::Connect).unwrap();
    sim.advance(Duration::from_secs(24 * 3600));
    assert_eq!(sim.broker.resets, 1);
    assert_eq!(sim.machine.state(), IbkrState::BrowserLoginRequired);
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::SessionLost {
            reason: Error::ActionRequired(ActionRequired::BrowserLogin)
        }
    )));
    // After the reset: exactly the tickle that found it, nothing more.
    let last = sim.broker.requests.last().unwrap().at;
    let after: Vec<_> = sim
        .broker
        .requests
        .iter()
        .filter(|r| r.at >= last)
        .collect();
    assert_eq!(after.len(), 1);
    // The user logs in again in the browser.
    sim.broker.browser_login_done = true;
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

#[test]
fn authorize_refuses_foreign_hosts_and_adds_nothing() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let now = sim.now();
    let mut foreign = http::Request::get("https://evil.example/v1/api/iserver/accounts")
        .body(())
        .unwrap();
    assert!(matches!(
        sim.machine.authorize(&mut foreign, now),
        Err(broker_session::AuthorizeError::Refused(_))
    ));
    let mut other_port = http::Request::get("https://localhost:5001/v1/api/x")
        .body(())
        .unwrap();
    assert!(sim.machine.authorize(&mut other_port, now).is_err());
    let mut ok = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(())
        .unwrap();
    let _stamp = sim.machine.authorize(&mut ok, now).unwrap();
    assert!(ok.headers().is_empty());

    // An application 401 through the gateway means the browser login is gone.
    let req = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(Vec::new())
        .unwrap();
    sim.broker.browser_login_done = false;
    let out = sim.app_request(&req).unwrap();
    assert_eq!(out.sends, 1);
    assert!(matches!(
        out.observation,
        Some(Observation::Lost(Error::ActionRequired(
            ActionRequired::BrowserLogin
        )))
    ));
    assert_eq!(sim.machine.state(), IbkrState::BrowserLoginRequired);
}

#[test]
fn no_bridge_on_an_application_call_reinitialises() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.drop_brokerage_session();
    let req = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(Vec::new())
        .unwrap();
    let out = sim.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.response.unwrap().status(), 200);
}

#[test]
fn an_unanswered_request_times_out_in_the_core() {
    use broker_session::{Input, Output, ProtocolError};
    let clock = VirtualClock::new();
    let mut session = IbkrSession::new(
        FakeIbkr::gateway_config(),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .unwrap();
    let mut clock = clock;
    let op = session
        .submit(IbkrIntent::CheckStatus, clock.now())
        .unwrap();
    let mut sent = 0;
    let mut result = None;
    for _ in 0..100 {
        match session.poll_output(clock.now()) {
            Output::Send(_) => sent += 1, // dropped by the "transport"
            Output::Event(Event::Completed {
                op: done,
                result: r,
            }) if done == op => {
                result = Some(r);
                break;
            }
            Output::Event(_) => {}
            Output::Wait(Some(at)) => {
                assert!(at <= clock.now().mono + Duration::from_secs(30));
                clock.advance_to(at);
                session.handle_input(Input::Timeout, clock.now());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, 1);
    assert_eq!(
        result.unwrap().unwrap_err(),
        Error::Protocol(ProtocolError::NoResponse {
            endpoint: "POST /iserver/auth/status"
        })
    );
}

#[test]
fn malformed_and_unexpected_answers_are_typed_errors() {
    use broker_session::ProtocolError;
    let mut sim = sim();
    sim.broker.inject(
        Some("/iserver/auth/status"),
        Fault::Body("{\"authenticated\":\"yes\"}"),
    );
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::MalformedBody { .. })),
        "{err}"
    );
    sim.broker
        .inject(Some("/iserver/auth/status"), Fault::Status(302, ""));
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::Redirect { status: 302, .. })
        ),
        "{err}"
    );
    sim.broker
        .inject(Some("/iserver/auth/status"), Fault::SsoRedirect);
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert_eq!(err, Error::ActionRequired(ActionRequired::BrowserLogin));
    sim.broker.browser_login_done = true;
    let big = Box::leak(format!("{{\"message\":\"{}\"}}", "x".repeat(2 << 20)).into_boxed_str());
    sim.broker
        .inject(Some("/iserver/auth/status"), Fault::Body(big));
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::BodyTooLarge { .. })),
        "{err}"
    );
    sim.broker.inject(
        Some("/iserver/auth/status"),
        Fault::Status(404, r#"{"error":"not found"}"#),
    );
    let err = sim.run(IbkrIntent::CheckStatus).unwrap_err();
    assert!(
        matches!(err, Error::Rejected(ref e) if e.status == 404),
        "{err}"
    );
}

#[test]
fn the_tickle_interval_is_clamped_to_one_second() {
    let mut sim = sim_with(FakeIbkr::gateway(), |c| c.tickle_interval = Duration::ZERO);
    sim.run(IbkrIntent::Connect).unwrap();
    sim.advance(Duration::from_secs(30));
    let n = sim.broker.requests_to("/tickle").count();
    assert!((29..=31).contains(&n), "{n}");
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(1));
}

#[test]
fn authorize_reports_a_missing_browser_login() {
    let mut fake = FakeIbkr::gateway();
    fake.browser_login_done = false;
    let mut sim = sim_with(fake, |_| {});
    sim.run(IbkrIntent::Connect).unwrap_err();
    let mut req = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(())
        .unwrap();
    assert_eq!(
        sim.machine.authorize(&mut req, sim.now()),
        Err(broker_session::AuthorizeError::Lost(Error::ActionRequired(
            ActionRequired::BrowserLogin
        )))
    );
}

#[test]
fn accounts_are_queried_once_per_ready_session_best_effort() {
    let mut sim = sim();
    sim.broker
        .inject(Some("/iserver/accounts"), Fault::Status(500, ""));
    let out = sim.run(IbkrIntent::Connect).unwrap();
    assert!(matches!(out, IbkrOutcome::Connected(ref s) if s.authenticated == Some(true)));
    assert_eq!(sim.broker.requests_to("/iserver/accounts").count(), 1);
    // The failed preflight is tried again on the next Connect, then not any more.
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.broker.requests_to("/iserver/accounts").count(), 2);
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.broker.requests_to("/iserver/accounts").count(), 2);
    // The session dropped and came back: queried again.
    sim.broker.drop_brokerage_session();
    sim.advance(Duration::from_secs(61));
    assert_eq!(sim.broker.requests_to("/iserver/accounts").count(), 3);
    // Off by configuration.
    let mut sim = sim_with(FakeIbkr::gateway(), |c| c.preflight_accounts = false);
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.broker.requests_to("/iserver/accounts").count(), 0);
}

#[test]
fn a_paced_call_waits_for_its_slot_and_says_so() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();

    // The first validate goes at once; a second within the minute waits for the rest
    // of it (IBKR's 1 per minute), and its answer says how long.
    let IbkrOutcome::Validated(first) = sim.run(IbkrIntent::Validate).unwrap() else {
        panic!()
    };
    assert_eq!(first.pacing.delayed_by, None);
    assert!(!first.to_string().contains("paced"), "{first}");
    let before = sim.now().mono;
    let IbkrOutcome::Validated(second) = sim.run(IbkrIntent::Validate).unwrap() else {
        panic!()
    };
    let waited = sim.now().mono.duration_since(before);
    let delayed = second
        .pacing
        .delayed_by
        .expect("the second validate was paced");
    assert!(second.pacing.was_delayed());
    assert!(delayed > Duration::from_secs(59) && delayed <= Duration::from_secs(60));
    assert!(waited >= delayed, "{waited:?} < {delayed:?}");
    assert!(second.to_string().contains(", paced 59."), "{second}");
    assert!(sim.broker.min_gap("/sso/validate").unwrap() >= Duration::from_secs(60));

    // Tickles: at least a second apart. (The keep-alive just tickled: wait a little.)
    sim.advance(Duration::from_secs(5));
    let IbkrOutcome::Tickled(t1) = sim.run(IbkrIntent::Tickle).unwrap() else {
        panic!()
    };
    let IbkrOutcome::Tickled(t2) = sim.run(IbkrIntent::Tickle).unwrap() else {
        panic!()
    };
    assert_eq!(t1.pacing.delayed_by, None);
    let delayed = t2.pacing.delayed_by.expect("the second tickle was paced");
    assert!(delayed <= Duration::from_secs(1), "{delayed:?}");
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(1));
}

#[test]
fn pacing_limits_are_settings() {
    let mut sim = sim_with(FakeIbkr::gateway(), |c| {
        c.validate_min_interval = Duration::from_secs(5);
        c.tickle_min_interval = Duration::from_secs(3);
    });
    sim.run(IbkrIntent::Connect).unwrap();
    let before = sim.now().mono;
    sim.run(IbkrIntent::Validate).unwrap();
    let IbkrOutcome::Validated(v) = sim.run(IbkrIntent::Validate).unwrap() else {
        panic!()
    };
    let d = v.pacing.delayed_by.expect("paced");
    assert!(
        d > Duration::from_secs(4) && d <= Duration::from_secs(5),
        "{d:?}"
    );
    assert!(sim.now().mono.duration_since(before) < Duration::from_secs(10));
    sim.run(IbkrIntent::Tickle).unwrap();
    let IbkrOutcome::Tickled(t) = sim.run(IbkrIntent::Tickle).unwrap() else {
        panic!()
    };
    let d = t.pacing.delayed_by.expect("paced");
    assert!(
        d > Duration::from_secs(2) && d <= Duration::from_secs(3),
        "{d:?}"
    );
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(3));
}
