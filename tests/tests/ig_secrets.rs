//! No secret (password, API key, CST, XST, access or refresh token) appears in any
//! Debug or Display output of the IG session's public types, events, errors or
//! transmits.

use std::time::Duration;

use broker_session::ig::{IgIntent, IgSession, LoginFlow};
use broker_session::{Input, Machine, Now, Output};
use broker_session_testkit::ig::{FakeIg, Fault, accounts_request, session_config};
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};

/// Every secret the fake knows or issues ends with this suffix.
const MARK: &str = "-secret";

/// Drives the machine by hand (so every `Output`, including each `Transmit`, is
/// printed) until it waits with nothing in flight.
fn drive(m: &mut IgSession, fake: &mut FakeIg, clock: &mut VirtualClock, out: &mut Vec<String>) {
    for _ in 0..10_000 {
        let now = clock.now();
        match m.poll_output(now) {
            Output::Send(t) => {
                out.push(format!("{t:?}"));
                let reply = fake.handle(&t.request, now);
                clock.advance(Duration::from_millis(5));
                let input = match reply {
                    Reply::Response(response) => Input::Response { id: t.id, response },
                    Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                };
                out.push(format!("{input:?}"));
                m.handle_input(input, clock.now());
            }
            Output::Event(e) => {
                out.push(format!("{e:?}"));
                if let broker_session::Event::Completed { result: Err(e), .. } = &e {
                    out.push(e.to_string());
                }
            }
            Output::Wait(_) => return,
            o => out.push(format!("{o:?}")),
        }
    }
    panic!("did not settle");
}

fn run(flow: LoginFlow, wrong_password: bool) -> Vec<String> {
    let mut fake = FakeIg::default();
    let mut clock = VirtualClock::new();
    let cfg = session_config(&fake, flow);
    let mut out = vec![format!("{cfg:?}")];
    if wrong_password {
        fake.config.password = "other-secret".into();
    }
    let mut m = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    let now = clock.now();
    m.submit(IgIntent::Login, now).unwrap();
    drive(&mut m, &mut fake, &mut clock, &mut out);
    out.push(format!("{m:?} {:?}", m.state()));
    let _ = m.submit(IgIntent::ReadSession { fetch_tokens: true }, clock.now());
    drive(&mut m, &mut fake, &mut clock, &mut out);
    if let Some(ls) = m.lightstreamer_credentials() {
        out.push(format!("{ls:?} {}", ls.password));
    }
    if let Some(snap) = m.snapshot() {
        out.push(format!("{snap:?}"));
        out.push(format!("{:?}", snap.expose_secrets()));
    }
    // Application requests through authorize/observe, including a 401.
    let mut req = accounts_request(&fake);
    let now = clock.now();
    match m.authorize(&mut req, now) {
        Ok(stamp) => {
            out.push(format!("{stamp:?} {:?}", req.headers()));
            fake.inject(
                "/accounts",
                None,
                Fault::error(401, Some("error.security.client-token-invalid")),
            );
            if let Reply::Response(resp) = fake.handle(&req, now) {
                let obs = m.observe(&resp, stamp, now);
                out.push(format!("{obs:?}"));
            }
        }
        Err(e) => out.push(format!("{e:?} {e}")),
    }
    drive(&mut m, &mut fake, &mut clock, &mut out);
    // Time passes (refreshes for v3), then switch and logout.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        m.handle_input(Input::Timeout, clock.now());
        drive(&mut m, &mut fake, &mut clock, &mut out);
    }
    let _ = m.submit(
        IgIntent::SwitchAccount {
            account_id: "ACC-OTHER".into(),
            make_default: false,
        },
        clock.now(),
    );
    drive(&mut m, &mut fake, &mut clock, &mut out);
    let _ = m.submit(IgIntent::Logout, clock.now());
    drive(&mut m, &mut fake, &mut clock, &mut out);
    out.push(format!("{m:?} {:?} {fake:?}", m.state()));
    // The fake must really have issued secrets for the check to mean anything.
    out
}

fn assert_clean(lines: &[String]) {
    for l in lines {
        assert!(!l.contains(MARK), "secret leaked: {l}");
    }
}

#[test]
fn no_secret_in_any_output() {
    for flow in [
        LoginFlow::V1,
        LoginFlow::V2,
        LoginFlow::V3,
        LoginFlow::EncryptedV2,
        LoginFlow::WebPlatform,
    ] {
        let lines = run(flow, false);
        assert!(lines.len() > 10);
        assert_clean(&lines);
        assert_clean(&run(flow, true));
    }
}

#[test]
fn the_check_would_catch_a_leak() {
    // Sanity: the secrets exist and the persisted form (explicitly exposed) has them.
    let mut fake = FakeIg::default();
    let mut clock = VirtualClock::new();
    let mut m = IgSession::new(
        session_config(&fake, LoginFlow::V3),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .unwrap();
    m.submit(IgIntent::Login, clock.now()).unwrap();
    let mut out = Vec::new();
    drive(&mut m, &mut fake, &mut clock, &mut out);
    let p = m.snapshot().unwrap().expose_secrets();
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains(MARK));
    assert!(!format!("{p:?}").contains(MARK));
    let _ = Now::new(clock.now().mono, clock.now().wall);
}
