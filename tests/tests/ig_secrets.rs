//! No secret (password, API key, CST, XST, access or refresh token), in any encoding,
//! appears in any Debug or Display output of the IG session's public types, events,
//! errors or transmits: on every login flow, on rejected credentials, and on broken
//! answers that carry a token (invalid JSON, a token in a field of the wrong type).
//! A base URL with userinfo is refused before anything is sent.

use std::time::Duration;

use broker_session::ig::{IgIntent, IgSession, LoginFlow};
use broker_session::{AuthorizeError, Input, Machine, Now, Output, UsageError};
use broker_session_testkit::ig::{FakeIg, Fault, accounts_request, session_config};
use broker_session_testkit::secret_scan::SecretScan;
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};

/// Every secret the fake knows or issues ends with this suffix.
const MARK: &str = "-secret";

/// The secrets known before any answer: the API key and the passwords.
fn known_secrets(fake: &FakeIg) -> SecretScan {
    let mut scan = SecretScan::new();
    scan.add("API key", &fake.config.api_key);
    scan.add("password", &fake.config.password);
    scan.add("wrong password", "other-password-secret");
    scan
}

/// Drives the machine by hand (so every `Output`, including each `Transmit`, is
/// printed) until it waits with nothing in flight. Every token the fake's answers
/// carry goes into `scan`; every error is printed by `Display` and `Debug`.
fn drive(
    m: &mut IgSession,
    fake: &mut FakeIg,
    clock: &mut VirtualClock,
    out: &mut Vec<String>,
    scan: &mut SecretScan,
) {
    for _ in 0..10_000 {
        let now = clock.now();
        match m.poll_output(now) {
            Output::Send(t) => {
                out.push(format!("{t:?}"));
                let reply = fake.handle(&t.request, now);
                clock.advance(Duration::from_millis(5));
                let input = match reply {
                    Reply::Response(response) => {
                        scan.add_from_response(&response);
                        Input::Response { id: t.id, response }
                    }
                    Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                };
                out.push(format!("{input:?}"));
                m.handle_input(input, clock.now());
            }
            Output::Event(e) => {
                out.push(format!("{e:?}"));
                match &e {
                    broker_session::Event::Completed { result: Err(e), .. }
                    | broker_session::Event::SessionLost { reason: e } => {
                        out.push(format!("{e} {e:?}"));
                    }
                    _ => {}
                }
            }
            Output::Wait(Some(at)) if at <= clock.now().mono + Duration::from_secs(5) => {
                // Short retry timers: let them fire.
                clock.advance_to(at);
                m.handle_input(Input::Timeout, clock.now());
            }
            Output::Wait(_) => return,
            o => out.push(format!("{o:?}")),
        }
    }
    panic!("did not settle");
}

fn run(flow: LoginFlow, wrong_password: bool) -> (Vec<String>, SecretScan) {
    let mut fake = FakeIg::default();
    let mut clock = VirtualClock::new();
    let cfg = session_config(&fake, flow);
    let mut scan = known_secrets(&fake);
    let mut out = vec![format!("{cfg:?}")];
    if wrong_password {
        fake.config.password = "other-password-secret".into();
    }
    let mut m = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    let now = clock.now();
    m.submit(IgIntent::Login, now).unwrap();
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    out.push(format!("{m:?} {:?}", m.state()));
    let _ = m.submit(IgIntent::ReadSession { fetch_tokens: true }, clock.now());
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
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
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    // Time passes (refreshes for v3), then switch and logout.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        m.handle_input(Input::Timeout, clock.now());
        drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    }
    let _ = m.submit(
        IgIntent::SwitchAccount {
            account_id: "ACC-OTHER".into(),
            make_default: false,
        },
        clock.now(),
    );
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    let _ = m.submit(IgIntent::Logout, clock.now());
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    out.push(format!("{m:?} {:?} {fake:?}", m.state()));
    (out, scan)
}

fn assert_clean(lines: &[String], scan: &SecretScan) {
    for l in lines {
        assert!(!l.contains(MARK), "secret leaked: {l}");
    }
    scan.assert_clean("IG output", &lines.join("\n"));
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
        let (lines, scan) = run(flow, false);
        assert!(lines.len() > 10);
        // The fake really issued tokens (CST and XST, or access and refresh ones).
        assert!(scan.len() >= 5, "{flow:?}: {} secrets seen", scan.len());
        assert_clean(&lines, &scan);
        let (lines, scan) = run(flow, true);
        assert_clean(&lines, &scan);
    }
}

/// Tokens planted in broken answers; each is an issued secret as far as the scan is
/// concerned.
const PLANTED: [&str; 3] = [
    "fakeig-cst-99901-secret",
    "fakeig-access-99902-secret",
    "fakeig-refresh-99903-secret",
];

/// One broken answer: where it is injected, after which flow, and what it is.
struct Broken {
    name: &'static str,
    flow: LoginFlow,
    /// Log in successfully first (the fault then hits a later request).
    logged_in_first: bool,
    path: &'static str,
    method: http::Method,
    fault: Fault,
    /// The intent that meets the fault (after the optional login).
    intent: IgIntent,
    /// Whether an operation fails (otherwise the machine retries or recovers).
    fails: bool,
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Fault {
    Fault::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

fn broken_answers() -> Vec<Broken> {
    let [cst, access, refresh] = PLANTED;
    let tokens = [("CST", cst), ("X-SECURITY-TOKEN", refresh)];
    let post = http::Method::POST;
    vec![
        Broken {
            name: "v2 login, 200 with invalid JSON holding a token",
            flow: LoginFlow::V2,
            logged_in_first: false,
            path: "/session",
            method: post.clone(),
            fault: respond(
                200,
                &tokens,
                &format!(r#"{{"currentAccountId":"ACC-DEFAULT","cst":"{cst}", "#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "v2 login, token in a field of the wrong type",
            flow: LoginFlow::V2,
            logged_in_first: false,
            path: "/session",
            method: post.clone(),
            fault: respond(
                200,
                &tokens,
                &format!(r#"{{"currentAccountId":"ACC-DEFAULT","accounts":"{access}"}}"#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "v3 login, token object replaced by the token",
            flow: LoginFlow::V3,
            logged_in_first: false,
            path: "/session",
            method: post.clone(),
            fault: respond(
                200,
                &[],
                &format!(r#"{{"accountId":"ACC-DEFAULT","oauthToken":"{access}"}}"#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "v3 login, expires_in is a token",
            flow: LoginFlow::V3,
            logged_in_first: false,
            path: "/session",
            method: post.clone(),
            fault: respond(
                200,
                &[],
                &format!(
                    r#"{{"accountId":"ACC-DEFAULT","oauthToken":{{"access_token":"{access}","refresh_token":"{refresh}","expires_in":"{cst}"}}}}"#
                ),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "refresh, the body is a bare token string",
            flow: LoginFlow::V3,
            logged_in_first: true,
            path: "/session/refresh-token",
            method: post.clone(),
            fault: respond(200, &[], &format!(r#""{refresh}""#)),
            // The refresh falls due while time passes (see `broken_answer`).
            intent: IgIntent::ReadSession {
                fetch_tokens: false,
            },
            fails: false,
        },
        Broken {
            name: "read session, accountId is an object holding a token",
            flow: LoginFlow::V2,
            logged_in_first: true,
            path: "/session",
            method: http::Method::GET,
            fault: respond(
                200,
                &tokens,
                &format!(r#"{{"accountId":{{"cst":"{cst}"}}}}"#),
            ),
            intent: IgIntent::ReadSession { fetch_tokens: true },
            fails: true,
        },
        Broken {
            name: "encryption key, the key is a token and the time stamp too",
            flow: LoginFlow::EncryptedV2,
            logged_in_first: false,
            path: "/session/encryptionKey",
            method: http::Method::GET,
            fault: respond(
                200,
                &[],
                &format!(r#"{{"encryptionKey":"{access}","timeStamp":"{refresh}"}}"#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "encryption key, the key is a token",
            flow: LoginFlow::EncryptedV2,
            logged_in_first: false,
            path: "/session/encryptionKey",
            method: http::Method::GET,
            fault: respond(
                200,
                &[],
                &format!(r#"{{"encryptionKey":"{access}","timeStamp":1}}"#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
        Broken {
            name: "switch, 200 with unreadable token headers and a token body",
            flow: LoginFlow::V2,
            logged_in_first: true,
            path: "/session",
            method: http::Method::PUT,
            fault: respond(200, &[("X-SECURITY-TOKEN", " ")], &format!(r#"["{cst}"]"#)),
            intent: IgIntent::SwitchAccount {
                account_id: "ACC-OTHER".into(),
                make_default: false,
            },
            fails: true,
        },
        Broken {
            name: "login, 500 page echoing the request's token",
            flow: LoginFlow::V2,
            logged_in_first: false,
            path: "/session",
            method: post.clone(),
            fault: respond(500, &tokens, &format!("<html>session {cst} failed</html>")),
            intent: IgIntent::Login,
            fails: false,
        },
        Broken {
            name: "login, 401 with a token beside the error code",
            flow: LoginFlow::V2,
            logged_in_first: false,
            path: "/session",
            method: post,
            fault: respond(
                401,
                &[],
                &format!(r#"{{"errorCode":"error.security.invalid-details","cst":"{cst}"}}"#),
            ),
            intent: IgIntent::Login,
            fails: true,
        },
    ]
}

/// Runs one broken answer through a machine; returns everything printed, the scan,
/// and the fake (to check the broken answer was given).
fn broken_answer(b: Broken) -> (Vec<String>, SecretScan, FakeIg) {
    let mut fake = FakeIg::default();
    let mut clock = VirtualClock::new();
    let cfg = session_config(&fake, b.flow);
    let mut scan = known_secrets(&fake);
    for p in PLANTED {
        scan.add("planted token", p);
    }
    let mut out = vec![format!("{cfg:?}")];
    let mut m = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    if b.logged_in_first {
        m.submit(IgIntent::Login, clock.now()).unwrap();
        drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    }
    fake.inject(b.path, Some(b.method), b.fault);
    let _ = m.submit(b.intent, clock.now());
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    // Let refreshes fall due.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(60));
        m.handle_input(Input::Timeout, clock.now());
        drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    }
    out.push(format!("{m:?} {:?}", m.state()));
    (out, scan, fake)
}

#[test]
fn broken_answers_carrying_tokens_are_not_echoed() {
    for b in broken_answers() {
        let name = b.name;
        let key = format!("{} {}", b.method, b.path);
        let fails = b.fails;
        let (lines, scan, fake) = broken_answer(b);
        let all = lines.join("\n");
        // The broken answer was given (the fault fires on the first matching
        // request), and the machine reported the failure, unless it retries or
        // recovers from such an answer.
        assert!(fake.stats.count(&key) >= 1, "{name}: not met");
        assert_eq!(
            all.contains("Err(") || all.contains("SessionLost"),
            fails,
            "{name}:\n{all}"
        );
        scan.assert_clean(name, &all);
    }
}

/// serde_json's messages quote the offending value (`invalid type: string "…",
/// expected …`): the session's errors must not pass them on.
#[test]
fn parse_errors_do_not_echo_the_serde_message() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Login {
        accounts: Option<Vec<serde_json::Value>>,
    }
    let token = PLANTED[1];
    let body = format!(r#"{{"currentAccountId":"ACC-DEFAULT","accounts":"{token}"}}"#);
    // The premise: serde's own message holds the token.
    let serde_message = serde_json::from_str::<Login>(&body)
        .unwrap_err()
        .to_string();
    assert!(serde_message.contains(token), "{serde_message}");

    let mut scan = SecretScan::new();
    scan.add("planted token", token);
    let r = http::Response::builder()
        .header("CST", PLANTED[0])
        .header("X-SECURITY-TOKEN", PLANTED[2])
        .body(body.into_bytes())
        .unwrap();
    let e = broker_session::ig::responses::login_v2(r.headers(), r.body()).unwrap_err();
    scan.assert_clean("login_v2 error", &format!("{e} {e:?}"));

    // And through a session: the error the login completes with.
    let mut fake = FakeIg::default();
    let clock = VirtualClock::new();
    let cfg = session_config(&fake, LoginFlow::V2);
    fake.inject(
        "/session",
        Some(http::Method::POST),
        respond(
            200,
            &[("CST", PLANTED[0]), ("X-SECURITY-TOKEN", PLANTED[2])],
            &format!(r#"{{"currentAccountId":"ACC-DEFAULT","accounts":"{token}"}}"#),
        ),
    );
    let mut m = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    m.submit(IgIntent::Login, clock.now()).unwrap();
    let mut failures = Vec::new();
    loop {
        match m.poll_output(clock.now()) {
            Output::Send(t) => {
                let reply = fake.handle(&t.request, clock.now());
                let Reply::Response(response) = reply else {
                    panic!("transport failure")
                };
                m.handle_input(Input::Response { id: t.id, response }, clock.now());
            }
            Output::Event(broker_session::Event::Completed { result: Err(e), .. }) => {
                failures.push(format!("{e} {e:?}"));
            }
            Output::Event(_) => {}
            _ => break,
        }
    }
    assert_eq!(failures.len(), 1, "the login failed once: {failures:?}");
    assert!(failures[0].contains("malformed"), "{}", failures[0]);
    scan.assert_clean("login error", &failures[0]);
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
    let mut scan = known_secrets(&fake);
    drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
    let p = m.snapshot().unwrap().expose_secrets();
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains(MARK));
    assert!(scan.find(&json).is_some());
    assert!(!format!("{p:?}").contains(MARK));
    scan.assert_clean("persisted session Debug", &format!("{p:?}"));
    // The Lightstreamer password holds CST and XST: the scan finds it encoded too.
    if let Some(ls) = m.lightstreamer_credentials() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(ls.password.expose_secret());
        assert!(scan.find(&b64).is_some());
    }
    let _ = Now::new(clock.now().mono, clock.now().wall);
}

/// An application request whose URI carries userinfo (`https://user:pw@host/…`) gets
/// no credentials, even on the session's own host, port and path: such a URI shows
/// its password wherever it is printed, and `user@` can disguise the real host to a
/// reader. Each flow, CST and OAuth.
#[test]
fn app_request_with_userinfo_gets_no_credentials() {
    for flow in [LoginFlow::V2, LoginFlow::V3] {
        let mut fake = FakeIg::default();
        let mut clock = VirtualClock::new();
        let mut scan = known_secrets(&fake);
        let mut out = Vec::new();
        let mut m = IgSession::new(
            session_config(&fake, flow),
            broker_session::RngSeed::from_u64(1),
            clock.now(),
        )
        .unwrap();
        m.submit(IgIntent::Login, clock.now()).unwrap();
        drive(&mut m, &mut fake, &mut clock, &mut out, &mut scan);
        // The session stamps its own URL…
        let mut ok = accounts_request(&fake);
        assert!(m.authorize(&mut ok, clock.now()).is_ok(), "{flow:?}");
        // …and nothing with userinfo in front of the same host.
        for uri in [
            "https://user:pw-0123456789@fake-ig.test/gateway/deal/accounts",
            "https://user@fake-ig.test/gateway/deal/accounts",
            "https://fake-ig.test@fake-ig.test/gateway/deal/accounts",
        ] {
            let mut req = accounts_request(&fake);
            *req.uri_mut() = uri.parse().unwrap();
            let r = m.authorize(&mut req, clock.now());
            assert!(
                matches!(
                    r,
                    Err(AuthorizeError::Refused(UsageError::InvalidArgument { .. }))
                ),
                "{flow:?} {uri}: {r:?}"
            );
            for h in ["cst", "x-security-token", "authorization", "ig-account-id"] {
                assert!(!req.headers().contains_key(h), "{flow:?} {uri}: {h} added");
            }
            let shown = format!("{r:?} {:?}", m);
            scan.assert_clean("refusal", &shown);
        }
    }
}
