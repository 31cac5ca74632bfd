//! IG recovery, back-off and failure handling against the fake.

use std::time::Duration;

use broker_session::ig::{IgIntent, IgOutcome, IgSession, IgState, LoginFlow};
use broker_session::{
    AuthorizeError, Error, Event, FailureKind, Machine, Observation, ProtocolError, UsageError,
};
use broker_session_testkit::ig::{
    FakeIg, FakeIgConfig, Fault, LOGIN_THROTTLED, accounts_request, session_config,
};
use broker_session_testkit::sim::{Sim, VirtualClock};

fn sim_with(fake: FakeIg, flow: LoginFlow) -> Sim<IgSession, FakeIg> {
    let clock = VirtualClock::new();
    let cfg = session_config(&fake, flow);
    Sim::with_clock(
        IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap(),
        fake,
        clock,
    )
}

fn sim(flow: LoginFlow) -> Sim<IgSession, FakeIg> {
    sim_with(FakeIg::default(), flow)
}

fn lost_events(s: &Sim<IgSession, FakeIg>) -> usize {
    s.events
        .iter()
        .filter(|e| matches!(e, Event::SessionLost { .. }))
        .count()
}

#[test]
fn v3_reactive_refresh_on_injected_401() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/accounts",
        None,
        Fault::error(401, Some("error.security.oauth-token-invalid")),
    );
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.observation, Some(Observation::Accepted));
    assert_eq!(s.broker.stats.refreshes, 1);
    assert_eq!(s.broker.stats.logins, 1);
}

#[test]
fn v3_failed_refresh_falls_back_to_exactly_one_login() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.broker.revoke_access_tokens();
    s.broker.revoke_refresh_tokens();
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.response.unwrap().status(), 200);
    assert_eq!(s.broker.stats.failed_refreshes, 1);
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn v3_proactive_refresh_failure_falls_back_to_one_login() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.broker.revoke_refresh_tokens();
    s.advance(Duration::from_secs(55));
    assert_eq!(s.broker.stats.failed_refreshes, 1);
    assert_eq!(s.broker.stats.logins, 2);
    assert!(matches!(s.machine.state(), IgState::Active { .. }));
    // The fallback login still completes the refresh operation.
    assert!(
        s.completions()
            .any(|(_, r)| matches!(r, Ok(IgOutcome::Refreshed { .. })))
    );
}

#[test]
fn v2_401_without_code_relogs_in_once_and_replays() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject("/accounts", None, Fault::error(401, None));
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.observation, Some(Observation::Accepted));
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn v2_expired_cst_relogs_in_once() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.expire_cst_sessions();
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.response.unwrap().status(), 200);
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn second_401_after_recovery_means_lost_not_a_loop() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject("/accounts", None, Fault::error(401, None));
    s.broker.inject("/accounts", None, Fault::error(401, None));
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert!(matches!(
        out.observation,
        Some(Observation::Lost(Error::Unauthorized(_)))
    ));
    assert_eq!(s.broker.stats.logins, 2);
    s.pump();
    assert_eq!(lost_events(&s), 1);
    assert!(matches!(s.machine.state(), IgState::Lost { .. }));
    assert!(matches!(
        s.app_request(&req),
        Err(AuthorizeError::Lost(Error::Unauthorized(_)))
    ));
    s.advance(Duration::from_secs(3600));
    assert_eq!(s.broker.stats.logins, 2, "no login loop");
    // A new login is allowed after a loss.
    assert!(s.run(IgIntent::Login).is_ok());
}

#[test]
fn stale_stamp_gets_replay_not_a_second_recovery() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let now = s.now();
    let mut a = accounts_request(&s.broker);
    let mut b = accounts_request(&s.broker);
    let sa = s.machine.authorize(&mut a, now).unwrap();
    let sb = s.machine.authorize(&mut b, now).unwrap();
    let unauthorized = http::Response::builder()
        .status(401)
        .body(br#"{"errorCode":"error.security.client-token-invalid"}"#.to_vec())
        .unwrap();
    let Observation::Recover { op } = s.machine.observe(&unauthorized, sa, now) else {
        panic!()
    };
    // Same generation, recovery running: joins it.
    assert_eq!(
        s.machine.observe(&unauthorized, sb, now),
        Observation::Recover { op }
    );
    assert!(matches!(s.wait_for(op), Ok(IgOutcome::Recovered { .. })));
    let now = s.now();
    assert_eq!(
        s.machine.observe(&unauthorized, sb, now),
        Observation::Replay
    );
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn invalid_credentials_one_attempt_and_closed() {
    let mut s = sim(LoginFlow::V2);
    s.broker.config.password = "changed".into();
    let e = s.run(IgIntent::Login).unwrap_err();
    assert!(
        matches!(e, Error::CredentialsRejected(ref a) if a.code_str() == "error.security.invalid-details")
    );
    assert_eq!(s.broker.stats.login_attempts, 1);
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));
    assert_eq!(s.submit(IgIntent::Login), Err(UsageError::SessionClosed));
    let delivered = s.delivered.len();
    s.advance(Duration::from_secs(3600));
    assert_eq!(s.delivered.len(), delivered, "closed session sends nothing");
    let req = accounts_request(&s.broker);
    assert!(matches!(s.app_request(&req), Err(AuthorizeError::Lost(_))));
}

#[test]
fn invalid_credentials_during_recovery_close_the_session() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.expire_cst_sessions();
    s.broker.config.password = "changed".into();
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 1);
    assert_eq!(s.broker.stats.failed_logins, 1);
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));
}

#[test]
fn wrong_api_key_is_fatal() {
    let mut s = sim(LoginFlow::V2);
    s.broker.config.api_key = "other".into();
    let e = s.run(IgIntent::Login).unwrap_err();
    assert!(
        matches!(e, Error::Rejected(ref a) if a.status == 403 && a.code_str() == "error.security.api-key-invalid")
    );
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));
}

#[test]
fn allowance_403_backs_off_without_relogin() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/accounts",
        None,
        Fault::error(403, Some("error.public-api.exceeded-api-key-allowance")),
    );
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    let Some(Observation::BackOff { until }) = out.observation else {
        panic!("{out:?}")
    };
    assert_eq!(until - s.now().mono, Duration::from_secs(60));
    assert_eq!(s.broker.stats.logins, 1);
    assert!(matches!(
        s.app_request(&req),
        Err(AuthorizeError::BackingOff { .. })
    ));
    assert!(matches!(s.machine.state(), IgState::BackingOff { .. }));
    s.advance(Duration::from_secs(61));
    assert!(matches!(s.machine.state(), IgState::Active { .. }));
    assert_eq!(
        s.app_request(&req).unwrap().observation,
        Some(Observation::Accepted)
    );
    assert_eq!(s.broker.stats.logins, 1);
}

#[test]
fn historical_allowance_fails_fast_without_back_off() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/accounts",
        None,
        Fault::error(
            403,
            Some("error.public-api.exceeded-account-historical-data-allowance"),
        ),
    );
    let req = accounts_request(&s.broker);
    assert_eq!(
        s.app_request(&req).unwrap().observation,
        Some(Observation::Accepted)
    );
    assert!(matches!(s.machine.state(), IgState::Active { .. }));
}

#[test]
fn http_429_backs_off() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject("/accounts", None, Fault::raw(429, b""));
    let req = accounts_request(&s.broker);
    assert!(matches!(
        s.app_request(&req).unwrap().observation,
        Some(Observation::BackOff { .. })
    ));
}

#[test]
fn login_throttle_gives_throttled_with_retry_after() {
    let fake = FakeIg::new(FakeIgConfig {
        min_login_interval: Duration::from_secs(120),
        ..FakeIgConfig::default()
    });
    let mut s = sim_with(fake, LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let e = s.run(IgIntent::Login).unwrap_err();
    let Error::Throttled { error, retry_after } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(error.code_str(), LOGIN_THROTTLED);
    assert_eq!(*retry_after, Duration::from_secs(180));
    assert_eq!(s.broker.stats.throttled_logins, 1);
    assert_eq!(s.broker.stats.failed_logins, 0);
    assert!(matches!(s.machine.state(), IgState::BackingOff { .. }));
    // A login submitted now waits for the back-off, then succeeds.
    let op = s.submit(IgIntent::Login).unwrap();
    assert!(s.wait_for(op).is_ok());
    assert!(s.broker.stats.throttled_logins == 1);
    assert!(s.delivered.last().unwrap().at >= Duration::from_secs(180));
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let mut s = sim(LoginFlow::V2);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::raw(503, b"<html>down</html>"),
    );
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::Fail(FailureKind::Connect),
    );
    assert!(s.run(IgIntent::Login).is_ok());
    assert_eq!(s.broker.stats.count("POST /session"), 3);

    let mut s = sim(LoginFlow::V2);
    for _ in 0..5 {
        s.broker.inject(
            "/session",
            Some(http::Method::POST),
            Fault::raw(502, b"Bad Gateway"),
        );
    }
    let e = s.run(IgIntent::Login).unwrap_err();
    assert!(matches!(e, Error::Unavailable(ref a) if a.status == 502 && a.code.is_none()));
    assert_eq!(s.broker.stats.count("POST /session"), 3);
    assert_eq!(s.machine.state(), IgState::LoggedOut);
    // Not fatal: a later login works.
    assert!(s.run(IgIntent::Login).is_ok());

    // A login that timed out may have reached IG: it is never sent again.
    let mut s = sim(LoginFlow::V2);
    for _ in 0..3 {
        s.broker.inject(
            "/session",
            Some(http::Method::POST),
            Fault::Fail(FailureKind::Timeout),
        );
    }
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::LoginUnanswered {
            failure: Some(_),
            ..
        })
    ));
    assert_eq!(s.broker.stats.count("POST /session"), 1);
}

#[test]
fn malformed_truncated_and_huge_bodies_are_protocol_errors() {
    for fault in [
        Fault::raw(200, b"{\"currentAccountId\":\"A"),
        Fault::raw(200, b"not json"),
        Fault::huge(),
    ] {
        let mut s = sim(LoginFlow::V2);
        s.broker.inject("/session", Some(http::Method::POST), fault);
        let e = s.run(IgIntent::Login).unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        assert_eq!(s.machine.state(), IgState::LoggedOut);
        assert!(s.run(IgIntent::Login).is_ok());
    }
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/session/refresh-token",
        None,
        Fault::raw(
            200,
            br#"{"access_token":"a","refresh_token":"r","expires_in":"sixty"}"#,
        ),
    );
    let e = s.run(IgIntent::Refresh);
    // A refresh answer that cannot be used falls back to one login.
    assert!(e.is_ok(), "{e:?}");
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn redirect_is_never_followed() {
    let mut s = sim(LoginFlow::V2);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::Respond {
            status: 302,
            headers: vec![("location".into(), "https://evil.test/".into())],
            body: Vec::new(),
        },
    );
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::Protocol(ProtocolError::Redirect { status: 302, .. }))
    ));
    assert_eq!(s.delivered.len(), 1);
}

#[test]
fn change_environment_and_forms_are_action_required() {
    let mut s = sim(LoginFlow::V2);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::Respond {
            status: 200,
            headers: vec![("CST".into(), "temp".into())],
            body: br#"{"authenticationStatus":"CHANGE_ENVIRONMENT","reroutingEnvironment":"LIVE"}"#
                .to_vec(),
        },
    );
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::ActionRequired(
            broker_session::ActionRequired::ChangeEnvironment { .. }
        ))
    ));
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));

    let mut s = sim(LoginFlow::V2);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::error(400, Some("error.public-api.failure.encryption.required")),
    );
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::ActionRequired(
            broker_session::ActionRequired::EncryptionRequired
        ))
    ));
}

/// The transport drops every request: the core's own deadline must fire.
#[test]
fn a_dropped_request_times_out_on_the_core_deadline() {
    let fake = FakeIg::default();
    let clock = VirtualClock::new();
    let mut m = IgSession::new(
        session_config(&fake, LoginFlow::V2),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .unwrap();
    let now = clock.now();
    let op = m.submit(IgIntent::Login, now).unwrap();
    let mut sends = 0;
    let mut t = now;
    let result = loop {
        match m.poll_output(t) {
            broker_session::Output::Send(_) => sends += 1, // dropped on the floor
            broker_session::Output::Event(Event::Completed { op: o, result }) if o == op => {
                break result;
            }
            broker_session::Output::Event(_) => {}
            broker_session::Output::Wait(Some(at)) => {
                assert!(at > t.mono);
                t = t + (at - t.mono);
                m.handle_input(broker_session::Input::Timeout, t);
            }
            broker_session::Output::Wait(None) => panic!("stuck"),
            _ => {}
        }
    };
    // A login is never sent twice when its answer may still come.
    assert_eq!(sends, 1);
    assert!(matches!(
        result,
        Err(Error::LoginUnanswered { failure: None, .. })
    ));
}

#[test]
fn stale_responses_are_ignored() {
    let fake = FakeIg::default();
    let clock = VirtualClock::new();
    let mut m = IgSession::new(
        session_config(&fake, LoginFlow::V2),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .unwrap();
    let now = clock.now();
    m.submit(IgIntent::Login, now).unwrap();
    let broker_session::Output::Send(t) = m.poll_output(now) else {
        panic!()
    };
    let bogus = http::Response::builder()
        .status(200)
        .body(Vec::new())
        .unwrap();
    m.handle_input(
        broker_session::Input::Response {
            id: broker_session::RequestId(t.id.0 + 100),
            response: bogus,
        },
        now,
    );
    assert_eq!(m.state(), IgState::LoggingIn);
}

#[test]
fn foreign_hosts_are_refused() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let now = s.now();
    for uri in [
        "https://evil.test/gateway/deal/accounts",
        "http://fake-ig.test/gateway/deal/accounts",
        "https://fake-ig.test:8443/gateway/deal/accounts",
        "https://fake-ig.test/other/accounts",
    ] {
        let mut req = http::Request::get(uri).body(Vec::<u8>::new()).unwrap();
        assert!(matches!(
            s.machine.authorize(&mut req, now),
            Err(AuthorizeError::Refused(_))
        ));
        assert!(req.headers().is_empty());
    }
}

#[test]
fn authorize_does_not_touch_version() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    let now = s.now();
    let mut req = accounts_request(&s.broker);
    req.headers_mut()
        .insert("Version", http::HeaderValue::from_static("2"));
    let _stamp = s.machine.authorize(&mut req, now).unwrap();
    assert_eq!(req.headers()["version"], "2");
    for h in ["authorization", "ig-account-id", "x-ig-api-key"] {
        assert!(req.headers()[h].is_sensitive(), "{h}");
    }
}

#[test]
fn every_op_completes_exactly_once() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.advance(Duration::from_secs(1800));
    s.broker.revoke_refresh_tokens();
    s.advance(Duration::from_secs(600));
    let mut ids: Vec<_> = s.completions().map(|(op, _)| op).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn fatal_application_answer_cancels_the_running_operation() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let now = s.now();
    let op = s
        .submit(IgIntent::ReadSession {
            fetch_tokens: false,
        })
        .unwrap();
    // Let the machine send GET /session, but do not answer yet.
    let broker_session::Output::Send(_t) = s.machine.poll_output(now) else {
        panic!()
    };
    let mut req = accounts_request(&s.broker);
    let stamp = s.machine.authorize(&mut req, now).unwrap();
    let bad_key = http::Response::builder()
        .status(403)
        .body(br#"{"errorCode":"error.security.api-key-revoked"}"#.to_vec())
        .unwrap();
    assert!(matches!(
        s.machine.observe(&bad_key, stamp, now),
        Observation::Lost(Error::Rejected(_))
    ));
    s.pump();
    let done: Vec<_> = s.completions().filter(|(o, _)| *o == op).collect();
    assert_eq!(done.len(), 1);
    assert!(matches!(done[0].1, Err(Error::Cancelled)));
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));
}

#[test]
fn refused_encryption_key_does_not_recurse_into_logins() {
    let mut s = sim(LoginFlow::EncryptedV2);
    s.broker
        .inject("/session/encryptionKey", None, Fault::error(401, None));
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(s.broker.stats.count("GET /session/encryptionKey"), 1);
    assert_eq!(s.broker.stats.count("POST /session"), 0);
}
