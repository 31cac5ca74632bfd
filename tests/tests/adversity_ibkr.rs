//! IBKR under adversity: server values at the edges, a logout racing due timers and
//! late answers, credentials rejected after the machine stopped waiting, and URIs
//! that must never carry credentials. Each test pins one promise:
//!
//! - at most one live session token request per operation, whatever the expiry says;
//! - logout is final: nothing but the logout leaves the machine until a new Connect;
//! - a rejected token request is never followed by another, even when the rejection
//!   comes late, and a token request whose fate is unknown is not repeated by itself;
//! - credentials are stamped only on the session's own origin, never with userinfo.

use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrOutcome, IbkrSession, IbkrState, OAuthConfig};
use broker_session::{
    AuthorizeError, Error, Event, FailureKind, Input, Machine, Observation, OpId, Output,
    ProtocolError, Transmit, UsageError,
};
use broker_session_testkit::ibkr::{FakeIbkr, Fault};
use broker_session_testkit::sim::{FakeBroker, Reply, Sim, VirtualClock};
use serde_json::Value;

const OAUTH_BASE: &str = "https://api.ibkr.com/v1/api";
const GATEWAY_BASE: &str = "https://localhost:5000/v1/api";

/// Wraps the fake IBKR: rewrites `live_session_token_expiration` in its token answers
/// and refuses to answer more than `max_lst` token requests (a loop fails the test at
/// once instead of hanging it).
struct Rewrite {
    inner: FakeIbkr,
    /// The expiry to put in the next token answers (`None`: leave the fake's).
    expiry: Option<Box<dyn Fn(i64) -> Value>>,
    max_lst: usize,
    lst_requests: usize,
}

impl FakeBroker for Rewrite {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: broker_session::Now) -> Reply {
        let is_lst = request.uri().path().ends_with("/oauth/live_session_token");
        if is_lst {
            self.lst_requests += 1;
            assert!(
                self.lst_requests <= self.max_lst,
                "live session token request #{} (at most {} expected)",
                self.lst_requests,
                self.max_lst
            );
        }
        let reply = self.inner.handle(request, now);
        match (reply, &self.expiry) {
            (Reply::Response(resp), Some(f)) if is_lst && resp.status() == 200 => {
                let (parts, body) = resp.into_parts();
                let mut v: Value = serde_json::from_slice(&body).unwrap();
                v["live_session_token_expiration"] = f(now.unix_millis());
                Reply::Response(http::Response::from_parts(
                    parts,
                    v.to_string().into_bytes(),
                ))
            }
            (reply, _) => reply,
        }
    }
}

fn oauth_machine(oauth: OAuthConfig, clock: &VirtualClock) -> IbkrSession {
    let mut config = FakeIbkr::oauth_config(oauth);
    config.base_url = OAUTH_BASE.into();
    IbkrSession::new(config, broker_session::RngSeed::from_u64(5), clock.now()).unwrap()
}

fn rewrite_sim(
    expiry: Option<Box<dyn Fn(i64) -> Value>>,
    max_lst: usize,
) -> Sim<IbkrSession, Rewrite> {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let clock = VirtualClock::new();
    let machine = oauth_machine(oauth, &clock);
    let broker = Rewrite {
        inner: fake,
        expiry,
        max_lst,
        lst_requests: 0,
    };
    Sim::with_clock(machine, broker, clock)
}

fn oauth_sim() -> Sim<IbkrSession, FakeIbkr> {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let clock = VirtualClock::new();
    let machine = oauth_machine(oauth, &clock);
    Sim::with_clock(machine, fake, clock)
}

fn oauth_sim_with(f: impl FnOnce(&mut FakeIbkr)) -> Sim<IbkrSession, FakeIbkr> {
    let (mut fake, oauth) = FakeIbkr::oauth(false);
    f(&mut fake);
    let clock = VirtualClock::new();
    let machine = oauth_machine(oauth, &clock);
    Sim::with_clock(machine, fake, clock)
}

fn gateway_sim() -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let machine = IbkrSession::new(
        FakeIbkr::gateway_config(),
        broker_session::RngSeed::from_u64(5),
        clock.now(),
    )
    .unwrap();
    Sim::with_clock(machine, FakeIbkr::gateway(), clock)
}

/// Polls the machine until it asks to send, keeping its events in the harness.
fn next_send<F: FakeBroker>(sim: &mut Sim<IbkrSession, F>) -> Transmit {
    loop {
        let now = sim.now();
        match sim.machine.poll_output(now) {
            Output::Send(t) => return t,
            Output::Event(e) => sim.events.push(e),
            Output::Wait(w) => panic!("machine waits ({w:?}) instead of sending"),
            _ => panic!("unknown output"),
        }
    }
}

fn result_of<F: FakeBroker>(
    sim: &Sim<IbkrSession, F>,
    op: OpId,
) -> Option<Result<IbkrOutcome, Error>> {
    sim.completions()
        .find(|(o, _)| *o == op)
        .map(|(_, r)| r.clone())
}

fn response(status: u16, body: &str) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .body(body.as_bytes().to_vec())
        .unwrap()
}

fn accounts(base: &str) -> http::Request<Vec<u8>> {
    http::Request::get(format!("{base}/iserver/accounts"))
        .body(Vec::<u8>::new())
        .unwrap()
}

// ---- live session token expiry ----------------------------------------------------

fn assert_invalid_expiry(result: Result<IbkrOutcome, Error>) {
    match result {
        Err(Error::Protocol(ProtocolError::InvalidField { field, .. })) => {
            assert_eq!(field, "live_session_token_expiration");
        }
        other => panic!("expected an invalid expiry, got {other:?}"),
    }
}

/// An expiry that is not in the future (zero, epoch seconds, the past, a few seconds
/// ahead) used to mean "expires now": the machine asked for another token at once, in
/// the same operation, forever. Now `connect` fails after exactly one token request,
/// with an error naming the field, and nothing more is asked later.
#[test]
fn lst_expiry_not_in_the_future_ends_connect_after_one_token_request() {
    type Expiry = Box<dyn Fn(i64) -> Value>;
    let cases: Vec<(&str, Expiry)> = vec![
        ("zero", Box::new(|_| Value::from(0))),
        ("negative", Box::new(|_| Value::from(-1))),
        (
            "epoch seconds",
            Box::new(|ms| Value::from(ms / 1000 + 86_400)),
        ),
        (
            "epoch seconds as a string",
            Box::new(|ms| Value::from((ms / 1000 + 86_400).to_string())),
        ),
        ("an hour ago", Box::new(|ms| Value::from(ms - 3_600_000))),
        ("now", Box::new(Value::from)),
        ("ten seconds ahead", Box::new(|ms| Value::from(ms + 10_000))),
        (
            "inside the refresh margin",
            Box::new(|ms| Value::from(ms + 5 * 60_000)),
        ),
    ];
    for (name, expiry) in cases {
        let mut sim = rewrite_sim(Some(expiry), 1);
        let result = sim.run(IbkrIntent::Connect);
        assert_invalid_expiry(result);
        assert_eq!(sim.machine.state(), IbkrState::Disconnected, "{name}");
        sim.advance(Duration::from_secs(3600));
        assert_eq!(sim.broker.lst_requests, 1, "{name}");
        assert_eq!(
            sim.broker.inner.requests.len(),
            1,
            "{name}: {:?}",
            sim.broker.inner.requests
        );
    }
}

/// A proactive renewal answered with a bad expiry keeps the old token and tries again
/// later, paced: a bounded number of token requests, never a loop.
#[test]
fn lst_renewal_with_a_past_expiry_is_paced_not_looped() {
    let mut sim = rewrite_sim(None, 100);
    sim.run(IbkrIntent::Connect).unwrap();
    // From now on every token answer expires in the past.
    sim.broker.expiry = Some(Box::new(|ms| Value::from(ms - 1)));
    sim.advance(Duration::from_secs(48 * 3600));
    // The 24 h token is renewed 5 min before its end, then every 30 s until it ends;
    // once it has ended no more token requests are made by the machine itself.
    assert!(
        sim.broker.lst_requests <= 1 + 11,
        "{}",
        sim.broker.lst_requests
    );
}

/// Far-future and absurd expiries are accepted without an overflow panic.
#[test]
fn lst_expiry_far_in_the_future_does_not_panic() {
    for expiry in [i64::MAX, i64::MAX - 1, 253_402_300_799_000] {
        let mut sim = rewrite_sim(Some(Box::new(move |_| Value::from(expiry))), 1);
        sim.run(IbkrIntent::Connect).unwrap();
        // The fake's own token ends after 24 h; until then nothing is renewed.
        sim.advance(Duration::from_secs(20 * 3600));
        assert_eq!(sim.broker.lst_requests, 1);
    }
}

// ---- logout is final ---------------------------------------------------------------

fn paths_after(requests: &[broker_session_testkit::ibkr::Recorded], n: usize) -> Vec<String> {
    requests[n..].iter().map(|r| r.path.clone()).collect()
}

/// The keep-alive fell due while nobody drove the machine; the user logs out. The
/// tickle used to run after the logout: a new live session token, then `ssodh/init`
/// with `compete=true`, taking the user's other session over.
#[test]
fn oauth_due_tickle_does_not_run_after_logout() {
    let mut sim = oauth_sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let n = sim.broker.requests.len();
    sim.clock.advance(Duration::from_secs(120)); // the tickle is due; nobody drives
    let op = sim.submit(IbkrIntent::Logout).unwrap();
    assert!(sim.wait_for(op).is_ok());
    sim.advance(Duration::from_secs(3 * 3600));
    assert_eq!(paths_after(&sim.broker.requests, n), ["/logout"]);
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 1);
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
}

#[test]
fn gateway_due_tickle_does_not_run_after_logout() {
    let mut sim = gateway_sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let n = sim.broker.requests.len();
    sim.clock.advance(Duration::from_secs(120));
    let op = sim.submit(IbkrIntent::Logout).unwrap();
    assert!(sim.wait_for(op).is_ok());
    sim.broker.browser_login_done = true; // even with a session at the gateway
    sim.advance(Duration::from_secs(3 * 3600));
    assert_eq!(paths_after(&sim.broker.requests, n), ["/logout"]);
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
}

/// Operations queued before a logout complete as cancelled, the logout goes first,
/// and intents other than Connect are refused until the user connects again.
#[test]
fn queued_operations_are_cancelled_by_logout() {
    for oauth in [false, true] {
        let mut sim = if oauth { oauth_sim() } else { gateway_sim() };
        sim.run(IbkrIntent::Connect).unwrap();
        sim.run(IbkrIntent::Tickle).unwrap();
        let n = sim.broker.requests.len();
        // The next tickle waits for IBKR's one-second pacing; the others queue.
        let tickle = sim.submit(IbkrIntent::Tickle).unwrap();
        let reauth = sim.submit(IbkrIntent::Reauthenticate).unwrap();
        let init = sim
            .submit(IbkrIntent::InitBrokerage {
                compete: Some(true),
            })
            .unwrap();
        let logout = sim.submit(IbkrIntent::Logout).unwrap();
        assert!(sim.wait_for(logout).is_ok());
        for op in [tickle, reauth, init] {
            assert_eq!(result_of(&sim, op), Some(Err(Error::Cancelled)), "{op}");
        }
        let status = sim.submit(IbkrIntent::CheckStatus).unwrap();
        assert_eq!(
            sim.wait_for(status),
            Err(Error::Usage(UsageError::NotLoggedIn))
        );
        sim.advance(Duration::from_secs(600));
        assert_eq!(
            paths_after(&sim.broker.requests, n),
            ["/logout"],
            "oauth {oauth}"
        );
        // Connect brings the session back.
        sim.broker.browser_login_done = !oauth;
        sim.run(IbkrIntent::Connect).unwrap();
        assert_eq!(sim.machine.state(), IbkrState::Ready);
    }
}

/// An application call answered 401 while the logout is in flight used to start a
/// recovery that ran after the logout: a new token and a ready session again.
#[test]
fn oauth_app_401_during_logout_starts_nothing() {
    let mut sim = oauth_sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let n = sim.broker.requests.len();
    let mut req = accounts(OAUTH_BASE);
    let stamp = sim.machine.authorize(&mut req, sim.now()).unwrap();
    let logout = sim.submit(IbkrIntent::Logout).unwrap();
    let t = next_send(&mut sim);
    assert!(t.request.uri().path().ends_with("/logout"));
    let obs = sim.machine.observe(
        &response(401, r#"{"error":"not authenticated","statusCode":401}"#),
        stamp,
        sim.now(),
    );
    assert!(!matches!(obs, Observation::Recover { .. }), "{obs:?}");
    let Reply::Response(resp) = sim.broker.handle(&t.request, sim.now()) else {
        panic!()
    };
    let now = sim.now();
    sim.machine.handle_input(
        Input::Response {
            id: t.id,
            response: resp,
        },
        now,
    );
    assert!(sim.wait_for(logout).is_ok());
    sim.advance(Duration::from_secs(3 * 3600));
    assert_eq!(paths_after(&sim.broker.requests, n), ["/logout"]);
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 1);
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
    let mut req = accounts(OAUTH_BASE);
    assert_eq!(
        sim.machine.authorize(&mut req, sim.now()),
        Err(AuthorizeError::NotLoggedIn)
    );
}

/// The same on the gateway, with a 401 and with a 400 "no bridge" (which used to
/// start a Connect that re-initialised the brokerage session after the logout).
#[test]
fn gateway_app_401_or_no_bridge_during_logout_starts_nothing() {
    for (status, body) in [
        (401, r#"{"error":"not authenticated","statusCode":401}"#),
        (
            400,
            r#"{"error":"Bad Request: no bridge","statusCode":400}"#,
        ),
    ] {
        let mut sim = gateway_sim();
        sim.run(IbkrIntent::Connect).unwrap();
        let n = sim.broker.requests.len();
        let mut req = accounts(GATEWAY_BASE);
        let stamp = sim.machine.authorize(&mut req, sim.now()).unwrap();
        let logout = sim.submit(IbkrIntent::Logout).unwrap();
        let t = next_send(&mut sim);
        let obs = sim
            .machine
            .observe(&response(status, body), stamp, sim.now());
        assert!(
            !matches!(obs, Observation::Recover { .. }),
            "{status}: {obs:?}"
        );
        let Reply::Response(resp) = sim.broker.handle(&t.request, sim.now()) else {
            panic!()
        };
        let now = sim.now();
        sim.machine.handle_input(
            Input::Response {
                id: t.id,
                response: resp,
            },
            now,
        );
        assert!(sim.wait_for(logout).is_ok());
        sim.broker.browser_login_done = true;
        sim.advance(Duration::from_secs(3 * 3600));
        assert_eq!(
            paths_after(&sim.broker.requests, n),
            ["/logout"],
            "{status}"
        );
        assert_eq!(sim.machine.state(), IbkrState::Disconnected, "{status}");
    }
}

// ---- rejected or unknown token requests --------------------------------------------

/// The token request's rejection arrives after the machine stopped waiting for it. It
/// used to be dropped as stale, leaving a retryable "no response" and a session that
/// asked again on the next Connect. Now it closes the session: credentials rejected.
#[test]
fn late_lst_rejection_closes_the_session() {
    let mut sim = oauth_sim();
    let op = sim.submit(IbkrIntent::Connect).unwrap();
    let t = next_send(&mut sim);
    assert!(
        t.request
            .uri()
            .path()
            .ends_with("/oauth/live_session_token")
    );
    // No answer before the machine's deadline.
    sim.clock.advance_to(t.deadline);
    let now = sim.now();
    sim.machine.handle_input(Input::Timeout, now);
    sim.pump();
    assert!(matches!(
        result_of(&sim, op),
        Some(Err(Error::Protocol(ProtocolError::NoResponse { .. })))
    ));
    // Then IBKR's rejection arrives.
    let late = response(
        401,
        r#"{"error":"id: 3931, error: invalid consumer","statusCode":401}"#,
    );
    let now = sim.now();
    sim.machine.handle_input(
        Input::Response {
            id: t.id,
            response: late,
        },
        now,
    );
    sim.pump();
    assert_eq!(sim.machine.state(), IbkrState::Closed);
    let lost = sim.events.iter().find_map(|e| match e {
        Event::SessionLost { reason } => Some(reason.clone()),
        _ => None,
    });
    let Some(reason @ Error::CredentialsRejected(_)) = lost else {
        panic!("no credentials rejection: {lost:?}");
    };
    assert!(!reason.is_retryable());
    assert_eq!(
        sim.submit(IbkrIntent::Connect),
        Err(UsageError::SessionClosed)
    );
    sim.advance(Duration::from_secs(3600));
    assert!(sim.broker.requests.is_empty(), "{:?}", sim.broker.requests);
}

/// A rejection answered in time closes the session and nothing is asked again,
/// whatever the timers.
#[test]
fn lst_rejection_is_final() {
    let mut sim =
        oauth_sim_with(|f| f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(3600));
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.oauth_server().unwrap().reject_consumer = true;
    sim.advance(Duration::from_secs(6 * 3600));
    assert_eq!(sim.machine.state(), IbkrState::Closed);
    assert_eq!(
        sim.broker.requests_to("/oauth/live_session_token").count(),
        2
    );
}

/// A proactive renewal that timed out (it may have reached IBKR) is not repeated by
/// the machine itself: it used to be retried every 30 s. The session ends when the old
/// token does, and the user's Connect is the one to try again.
#[test]
fn timed_out_lst_renewal_is_not_retried_by_itself() {
    for kind in [FailureKind::Timeout, FailureKind::Io] {
        let mut sim =
            oauth_sim_with(|f| f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(3600));
        sim.run(IbkrIntent::Connect).unwrap();
        sim.broker
            .inject(Some("/oauth/live_session_token"), Fault::Transport(kind));
        sim.advance(Duration::from_secs(3 * 3600));
        assert_eq!(
            sim.broker.requests_to("/oauth/live_session_token").count(),
            2,
            "{kind:?}"
        );
        assert_eq!(sim.machine.state(), IbkrState::Disconnected, "{kind:?}");
        let mut req = accounts(OAUTH_BASE);
        assert!(sim.machine.authorize(&mut req, sim.now()).is_err());
        sim.run(IbkrIntent::Connect).unwrap();
        assert_eq!(sim.machine.state(), IbkrState::Ready);
        assert_eq!(
            sim.broker.requests_to("/oauth/live_session_token").count(),
            3
        );
    }
}

/// A renewal whose connection never opened proves nothing was sent: it is tried again.
#[test]
fn lst_renewal_that_never_connected_is_retried() {
    let mut sim =
        oauth_sim_with(|f| f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(3600));
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.inject(
        Some("/oauth/live_session_token"),
        Fault::Transport(FailureKind::Connect),
    );
    sim.advance(Duration::from_secs(3500));
    assert_eq!(
        sim.broker.requests_to("/oauth/live_session_token").count(),
        3
    );
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

// ---- credentials only on the session's origin --------------------------------------

/// A URI with userinfo is never signed or stamped, even on the session's host.
#[test]
fn userinfo_uris_are_refused() {
    let mut oauth = oauth_sim();
    oauth.run(IbkrIntent::Connect).unwrap();
    let mut gateway = gateway_sim();
    gateway.run(IbkrIntent::Connect).unwrap();
    for (sim, host) in [
        (&mut oauth, "api.ibkr.com"),
        (&mut gateway, "localhost:5000"),
    ] {
        for userinfo in ["user@", "user:pw@", "@", "evil.example@"] {
            let mut req =
                http::Request::get(format!("https://{userinfo}{host}/v1/api/iserver/accounts"))
                    .body(Vec::<u8>::new())
                    .unwrap();
            let r = sim.machine.authorize(&mut req, sim.now());
            assert!(
                matches!(r, Err(AuthorizeError::Refused(_))),
                "{userinfo}{host}: {r:?}"
            );
            assert!(!req.headers().contains_key(http::header::AUTHORIZATION));
        }
    }
}

/// A keep-alive tickle refused 401 renews the token and tickles again; that second
/// tickle used not to schedule the next one, so the keep-alive stopped and IBKR
/// dropped the idle brokerage session five minutes later.
#[test]
fn keepalive_goes_on_after_a_tickle_renewed_the_token() {
    let mut sim = oauth_sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.oauth_server().unwrap().revoke();
    sim.advance(Duration::from_secs(2 * 3600));
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 2);
    assert!(sim.broker.requests_to("/tickle").count() >= 110);
    assert!(sim.broker.authenticated, "the brokerage session idled out");
    assert_eq!(
        sim.broker.requests_to("/iserver/auth/ssodh/init").count(),
        1
    );
}
