//! IG promises under adversity: a login that may have reached IG is never sent again,
//! a late rejection still closes the session, logout is final, and no configuration
//! or server value makes a deadline overflow.

use std::time::Duration;

use broker_session::ig::{IgConfig, IgIntent, IgSession, IgState, LoginFlow};
use broker_session::{
    AuthorizeError, Error, Event, FailureKind, Input, Machine, Observation, Output, Transmit,
};
use broker_session_testkit::ig::{
    FakeIg, Fault, LOGIN_THROTTLED, accounts_request, session_config,
};
use broker_session_testkit::sim::{FakeBroker as _, Reply, Sim, VirtualClock};

fn sim_with(fake: FakeIg, config: IgConfig) -> Sim<IgSession, FakeIg> {
    let clock = VirtualClock::new();
    let machine = IgSession::new(config, broker_session::RngSeed::from_u64(1), clock.now())
        .expect("valid configuration");
    Sim::with_clock(machine, fake, clock)
}

fn sim(flow: LoginFlow) -> Sim<IgSession, FakeIg> {
    let fake = FakeIg::default();
    let config = session_config(&fake, flow);
    sim_with(fake, config)
}

/// Polls the machine until it wants to send, keeping its events; `None` once it waits.
fn next_send(s: &mut Sim<IgSession, FakeIg>) -> Option<Transmit> {
    loop {
        let now = s.now();
        match s.machine.poll_output(now) {
            Output::Send(t) => return Some(t),
            Output::Event(e) => s.events.push(e),
            Output::Wait(w) => {
                if let Some(at) = w {
                    assert!(at > now.mono, "Wait deadline not in the future");
                }
                return None;
            }
            _ => panic!("unknown output"),
        }
    }
}

fn closed_reason(s: &Sim<IgSession, FakeIg>) -> Option<Error> {
    match s.machine.state() {
        IgState::Closed { reason } => Some(reason),
        _ => None,
    }
}

/// The answer to a login (`401 error.security.invalid-details`) arrives after the
/// machine's own deadline for it. The login is never sent again, and the late
/// rejection still closes the session as `CredentialsRejected`, not retryable.
#[test]
fn late_rejection_of_an_abandoned_login_closes_the_session() {
    for flow in [LoginFlow::V2, LoginFlow::V3, LoginFlow::WebPlatform] {
        let fake = FakeIg::default();
        let mut config = session_config(&fake, flow);
        config.password = "wrong-password".into();
        let mut s = sim_with(fake, config);
        let op = s.submit(IgIntent::Login).unwrap();
        let login = next_send(&mut s).expect("the login request");
        // IG judges the password now; its answer is held up on the way back.
        let reply = s.broker.handle(&login.request, s.now());
        let Reply::Response(answer) = reply else {
            panic!("the fake answers")
        };
        assert_eq!(answer.status(), 401);
        // The machine's deadline passes first.
        s.clock.advance_to(login.deadline);
        let now = s.now();
        s.machine.handle_input(Input::Timeout, now);
        assert!(next_send(&mut s).is_none(), "{flow:?}: login sent again");
        let failed = s
            .completions()
            .find(|(o, _)| *o == op)
            .map(|(_, r)| r.clone());
        match failed {
            Some(Err(e @ Error::LoginUnanswered { .. })) => {
                assert!(e.to_string().contains("never came"), "{e}");
                assert!(e.to_string().contains("nothing was retried"), "{e}");
            }
            other => panic!("{flow:?}: {other:?}"),
        }
        // Time passes (any retry timer would fire) and the answer finally arrives.
        s.advance(Duration::from_secs(600));
        s.clock.advance(Duration::from_secs(1));
        let now = s.now();
        s.machine.handle_input(
            Input::Response {
                id: login.id,
                response: answer,
            },
            now,
        );
        s.pump();
        s.advance(Duration::from_secs(600));
        assert_eq!(s.broker.stats.login_attempts, 1, "{flow:?}: logins sent");
        let reason =
            closed_reason(&s).unwrap_or_else(|| panic!("{flow:?}: {:?}", s.machine.state()));
        assert!(
            matches!(reason, Error::CredentialsRejected(_)),
            "{flow:?}: {reason:?}"
        );
        assert!(!reason.is_retryable());
        assert!(
            s.events
                .iter()
                .any(|e| matches!(e, Event::StateChanged(IgState::Closed { .. }))),
            "{flow:?}: no state change reported"
        );
        // And a new login is refused, not sent.
        assert!(s.submit(IgIntent::Login).is_err());
    }
}

/// A late success of an abandoned login is ignored: the session stays logged out
/// (the operation already failed and the account selection never ran).
#[test]
fn late_success_of_an_abandoned_login_is_ignored() {
    let mut s = sim(LoginFlow::V2);
    let _op = s.submit(IgIntent::Login).unwrap();
    let login = next_send(&mut s).expect("the login request");
    let Reply::Response(answer) = s.broker.handle(&login.request, s.now()) else {
        panic!("the fake answers")
    };
    s.clock.advance_to(login.deadline);
    let now = s.now();
    s.machine.handle_input(Input::Timeout, now);
    assert!(next_send(&mut s).is_none());
    let now = s.now();
    s.machine.handle_input(
        Input::Response {
            id: login.id,
            response: answer,
        },
        now,
    );
    s.pump();
    assert_eq!(s.machine.state(), IgState::LoggedOut);
    assert!(s.machine.snapshot().is_none());
}

/// A transport failure after the login may have left is not retried; a failure to
/// connect (nothing left) is.
#[test]
fn login_is_resent_only_when_the_connection_never_opened() {
    for kind in [
        FailureKind::Io,
        FailureKind::Timeout,
        FailureKind::Cancelled,
    ] {
        let mut s = sim(LoginFlow::V2);
        s.broker
            .inject("/session", Some(http::Method::POST), Fault::Fail(kind));
        let out = s.run(IgIntent::Login);
        assert!(
            matches!(out, Err(Error::LoginUnanswered { failure: Some(ref f), .. }) if f.kind == kind),
            "{kind:?}: {out:?}"
        );
        assert_eq!(s.broker.stats.count("POST /session"), 1, "{kind:?}");
        assert_eq!(s.machine.state(), IgState::LoggedOut);
    }
    let mut s = sim(LoginFlow::V2);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::Fail(FailureKind::Connect),
    );
    assert!(s.run(IgIntent::Login).is_ok());
    assert_eq!(s.broker.stats.count("POST /session"), 2);
}

/// A proactive refresh fell due while nobody drove the machine; then the user logs
/// out. Only the logout leaves: no refresh, no login after it.
#[test]
fn logout_after_an_undriven_refresh_deadline_sends_only_the_logout() {
    for revoke in [false, true] {
        let mut s = sim(LoginFlow::V3);
        s.run(IgIntent::Login).unwrap();
        if revoke {
            // A refresh would fail and fall back to a login.
            s.broker.revoke_refresh_tokens();
        }
        // Nobody polls the machine for a while: the refresh deadline passes.
        s.clock.advance(Duration::from_secs(55));
        let queued_refresh = s.submit(IgIntent::Refresh).unwrap();
        let before = s.delivered.len();
        let logout = s.submit(IgIntent::Logout).unwrap();
        assert!(s.wait_for(logout).is_ok());
        s.advance(Duration::from_secs(600));
        let after: Vec<_> = s.delivered[before..]
            .iter()
            .map(|d| format!("{} {}", d.method, d.path))
            .collect();
        assert_eq!(after, ["DELETE /gateway/deal/session"], "revoke={revoke}");
        assert_eq!(s.machine.state(), IgState::LoggedOut);
        assert_eq!(
            s.completions()
                .find(|(o, _)| *o == queued_refresh)
                .map(|(_, r)| r.clone()),
            Some(Err(Error::Cancelled))
        );
    }
}

/// A refresh in flight when the user logs out completes as cancelled; its answer is
/// applied, then only the logout follows.
#[test]
fn logout_cancels_the_running_operation_after_its_answer() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    let refresh = s.submit(IgIntent::Refresh).unwrap();
    let t = next_send(&mut s).expect("the refresh request");
    assert!(t.request.uri().path().ends_with("/refresh-token"));
    let logout = s.submit(IgIntent::Logout).unwrap();
    let reply = s.broker.handle(&t.request, s.now());
    let Reply::Response(response) = reply else {
        panic!("the fake answers")
    };
    let now = s.now();
    s.machine
        .handle_input(Input::Response { id: t.id, response }, now);
    assert!(s.wait_for(logout).is_ok());
    assert_eq!(
        s.completions()
            .find(|(o, _)| *o == refresh)
            .map(|(_, r)| r.clone()),
        Some(Err(Error::Cancelled))
    );
    assert_eq!(s.broker.stats.logouts, 1, "the logout used the fresh token");
    assert_eq!(s.broker.stats.count("POST /session/refresh-token"), 1);
    assert_eq!(s.machine.state(), IgState::LoggedOut);
}

/// An application call answered 401 while the logout is in flight starts no
/// recovery: the session ends logged out, not active again.
#[test]
fn a_401_observed_during_logout_starts_no_recovery() {
    for flow in [LoginFlow::V2, LoginFlow::V3] {
        let mut s = sim(flow);
        s.run(IgIntent::Login).unwrap();
        // An application request stamped before the logout …
        let mut app = accounts_request(&s.broker);
        let now = s.now();
        let stamp = s.machine.authorize(&mut app, now).unwrap();
        let logout = s.submit(IgIntent::Logout).unwrap();
        let delete = next_send(&mut s).expect("the logout request");
        assert_eq!(delete.request.method(), http::Method::DELETE);
        // … is refused while the logout is on its way.
        let refused = http::Response::builder()
            .status(401)
            .body(br#"{"errorCode":"error.security.client-token-invalid"}"#.to_vec())
            .unwrap();
        let now = s.now();
        let obs = s.machine.observe(&refused, stamp, now);
        assert!(
            !matches!(obs, Observation::Recover { .. } | Observation::Replay),
            "{flow:?}: {obs:?}"
        );
        let before = s.delivered.len();
        let reply = s.broker.handle(&delete.request, s.now());
        let Reply::Response(response) = reply else {
            panic!("the fake answers")
        };
        let now = s.now();
        s.machine.handle_input(
            Input::Response {
                id: delete.id,
                response,
            },
            now,
        );
        assert!(s.wait_for(logout).is_ok());
        s.advance(Duration::from_secs(600));
        assert_eq!(
            s.delivered.len(),
            before,
            "{flow:?}: requests after the logout"
        );
        assert_eq!(s.broker.stats.login_attempts, 1, "{flow:?}");
        assert_eq!(s.machine.state(), IgState::LoggedOut, "{flow:?}");
        let mut again = accounts_request(&s.broker);
        let now = s.now();
        assert_eq!(
            s.machine.authorize(&mut again, now),
            Err(AuthorizeError::NotLoggedIn)
        );
    }
}

/// A re-login recovery queued before the logout is cancelled by it.
#[test]
fn logout_cancels_a_queued_recovery() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let mut app = accounts_request(&s.broker);
    let now = s.now();
    let stamp = s.machine.authorize(&mut app, now).unwrap();
    let refused = http::Response::builder()
        .status(401)
        .body(br#"{"errorCode":"error.security.client-token-invalid"}"#.to_vec())
        .unwrap();
    let now = s.now();
    let Observation::Recover { op: recovery } = s.machine.observe(&refused, stamp, now) else {
        panic!("a recovery")
    };
    let logout = s.submit(IgIntent::Logout).unwrap();
    assert!(s.wait_for(logout).is_ok());
    s.advance(Duration::from_secs(600));
    assert_eq!(
        s.completions()
            .find(|(o, _)| *o == recovery)
            .map(|(_, r)| r.clone()),
        Some(Err(Error::Cancelled))
    );
    assert_eq!(s.broker.stats.login_attempts, 1);
    assert_eq!(s.machine.state(), IgState::LoggedOut);
}

fn max_config(flow: LoginFlow, set: fn(&mut IgConfig)) -> Sim<IgSession, FakeIg> {
    let fake = FakeIg::default();
    let mut config = session_config(&fake, flow);
    set(&mut config);
    sim_with(fake, config)
}

#[test]
fn request_deadline_at_duration_max_does_not_panic() {
    let mut s = max_config(LoginFlow::V2, |c| c.request_deadline = Duration::MAX);
    assert!(s.run(IgIntent::Login).is_ok());
    let t = {
        let op = s
            .submit(IgIntent::ReadSession {
                fetch_tokens: false,
            })
            .unwrap();
        let t = next_send(&mut s).expect("a request");
        let _ = op;
        t
    };
    // The deadline is far away, but representable: about a year.
    assert!(t.deadline > s.now().mono + Duration::from_secs(364 * 24 * 3600));
}

#[test]
fn retry_delay_at_duration_max_does_not_panic() {
    let mut s = max_config(LoginFlow::V2, |c| c.retry_delay = Duration::MAX);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::error(503, None),
    );
    assert!(s.run(IgIntent::Login).is_ok());
    assert_eq!(s.broker.stats.count("POST /session"), 2);
}

#[test]
fn login_throttle_backoff_at_duration_max_does_not_panic() {
    let mut s = max_config(LoginFlow::V2, |c| c.login_throttle_backoff = Duration::MAX);
    s.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::error(401, Some(LOGIN_THROTTLED)),
    );
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::Throttled { .. })
    ));
    assert!(matches!(s.machine.state(), IgState::BackingOff { .. }));
    s.advance(Duration::from_secs(3600));
}

/// Reached through `observe`, i.e. inside a transport's lock.
#[test]
fn allowance_backoff_at_duration_max_does_not_panic_in_observe() {
    let mut s = max_config(LoginFlow::V2, |c| c.allowance_backoff = Duration::MAX);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/accounts",
        None,
        Fault::error(403, Some("error.public-api.exceeded-api-key-allowance")),
    );
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert!(matches!(out.observation, Some(Observation::BackOff { .. })));
    assert!(matches!(s.machine.state(), IgState::BackingOff { .. }));
    s.advance(Duration::from_secs(3600));
}

#[test]
fn refresh_margin_at_duration_max_does_not_panic() {
    let mut s = max_config(LoginFlow::V3, |c| c.refresh_margin = Duration::MAX);
    s.run(IgIntent::Login).unwrap();
    // The margin is capped at half the token's lifetime: refreshes stay paced.
    s.advance(Duration::from_secs(600));
    let refreshes = s.broker.stats.refreshes;
    assert!(
        (15..=25).contains(&refreshes),
        "{refreshes} refreshes in 10 minutes"
    );
    assert!(matches!(s.machine.state(), IgState::Active { .. }));
}

/// `expires_in` at the edges, on the login and on a refresh: an error, never a panic
/// or a refresh loop.
#[test]
fn expires_in_at_the_edges_is_an_error_not_a_panic() {
    for value in [
        "0",
        "\"0\"",
        "-1",
        "\"-60\"",
        "99999999999999999999",
        "\"9223372036854775807\"",
        "18446744073709551615",
        "1e308",
        "\"sixty\"",
        "null",
    ] {
        let body = format!(
            r#"{{"clientId":"1","accountId":"ACC-DEFAULT","timezoneOffset":0,"lightstreamerEndpoint":"https://ls","oauthToken":{{"access_token":"a","refresh_token":"r","scope":"profile","token_type":"Bearer","expires_in":{value}}}}}"#
        );
        let mut s = sim(LoginFlow::V3);
        s.broker.inject(
            "/session",
            Some(http::Method::POST),
            Fault::raw(200, body.as_bytes()),
        );
        let out = s.run(IgIntent::Login);
        assert!(matches!(out, Err(Error::Protocol(_))), "{value}: {out:?}");
        assert_eq!(s.machine.state(), IgState::LoggedOut, "{value}");

        let mut s = sim(LoginFlow::V3);
        s.run(IgIntent::Login).unwrap();
        let refresh = format!(
            r#"{{"access_token":"a","refresh_token":"r","scope":"profile","token_type":"Bearer","expires_in":{value}}}"#
        );
        s.broker.inject(
            "/session/refresh-token",
            None,
            Fault::raw(200, refresh.as_bytes()),
        );
        // An unusable refresh answer falls back to one login.
        assert!(s.run(IgIntent::Refresh).is_ok(), "{value}");
        s.advance(Duration::from_secs(600));
        assert!(
            s.delivered.len() < 40,
            "{value}: {} requests",
            s.delivered.len()
        );
    }
}
