//! With the core's `tracing` feature on, every IG and IBKR flow runs under a
//! subscriber that records every event and span field at every level (TRACE
//! included): the record mentions the sessions' progress and none of their secrets,
//! in any encoding (see `SecretScan`), also when answers are broken and carry a
//! token.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_session::ibkr::oauth::base_string;
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret};
use broker_session::ibkr::{IbkrIntent, IbkrSession, OAuthConfig};
use broker_session::ig::{IgIntent, IgSession, LoginFlow};
use broker_session_testkit::ibkr::{ACCESS_TOKEN, FakeIbkr, Fault as IbkrFault, VECTORS_JSON};
use broker_session_testkit::ig::{FakeIg, Fault, accounts_request, session_config};
use broker_session_testkit::secret_scan::{Harvest, HarvestHook, SecretScan};
use broker_session_testkit::sim::Sim;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event and span as one line of `name=value` fields.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Capture {
    fn push(&self, line: String) {
        self.0.lock().expect("capture").push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("capture").clone()
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = Line(format!("span {} ", span.metadata().name()));
        span.record(&mut line);
        self.push(line.0);
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = Line("record ".to_owned());
        values.record(&mut line);
        self.push(line.0);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line(format!(
            "{} {} ",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut line);
        self.push(line.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Every secret the fake IG knows or issues ends with this.
const IG_MARK: &str = "-secret";

/// A token planted in broken answers.
const PLANTED: &str = "fakeig-cst-99901-secret";

/// An IG fake that records every token it issues, starting from the API key and
/// password.
fn ig_fake() -> Harvest<FakeIg> {
    let fake = FakeIg::default();
    let mut scan = SecretScan::new();
    scan.add("API key", &fake.config.api_key);
    scan.add("password", &fake.config.password);
    scan.add("wrong password", "another-password-secret");
    scan.add("planted token", PLANTED);
    Harvest::new(fake, scan)
}

fn ig_session(fake: &Harvest<FakeIg>, flow: LoginFlow) -> IgSession {
    IgSession::new(
        session_config(&fake.inner, flow),
        broker_session::RngSeed::from_u64(1),
        broker_session_testkit::sim::VirtualClock::new().now(),
    )
    .expect("session")
}

fn ig_flows() -> SecretScan {
    let mut all = SecretScan::new();
    for flow in [LoginFlow::V2, LoginFlow::V3, LoginFlow::EncryptedV2] {
        let fake = ig_fake();
        let request = accounts_request(&fake.inner);
        let machine = ig_session(&fake, flow);
        let mut sim = Sim::new(machine, fake);
        sim.run(IgIntent::Login).expect("login");
        sim.run(IgIntent::ReadSession { fetch_tokens: true })
            .expect("read");
        sim.run(IgIntent::SwitchAccount {
            account_id: "ACC-OTHER".into(),
            make_default: false,
        })
        .expect("switch");
        // Ten minutes: v3 tokens refresh several times.
        sim.advance(Duration::from_secs(600));
        sim.app_request(&request).expect("app request");
        sim.run(IgIntent::Logout).expect("logout");
        merge(&mut all, &sim.broker.scan);
    }
    // Rejected credentials, and their error message.
    let mut fake = ig_fake();
    let machine = ig_session(&fake, LoginFlow::V2);
    fake.inner.config.password = "another-password-secret".into();
    let mut sim = Sim::new(machine, fake);
    assert!(sim.run(IgIntent::Login).is_err());
    // Broken login answers carrying a token: invalid JSON, and a token where a list
    // goes (serde's message would quote it).
    for body in [
        format!(r#"{{"currentAccountId":"ACC-DEFAULT","cst":"{PLANTED}""#),
        format!(r#"{{"currentAccountId":"ACC-DEFAULT","accounts":"{PLANTED}"}}"#),
    ] {
        let mut fake = ig_fake();
        fake.inner.inject(
            "/session",
            Some(http::Method::POST),
            Fault::Respond {
                status: 200,
                headers: vec![
                    ("CST".into(), PLANTED.into()),
                    ("X-SECURITY-TOKEN".into(), "fakeig-xst-99902-secret".into()),
                ],
                body: body.into_bytes(),
            },
        );
        let machine = ig_session(&fake, LoginFlow::V2);
        let mut sim = Sim::new(machine, fake);
        assert!(sim.run(IgIntent::Login).is_err());
        merge(&mut all, &sim.broker.scan);
    }
    all
}

/// The fake's own Diffie-Hellman secret (see `FakeIbkr::oauth`).
const SERVER_DH_SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543211";

/// An OAuth fake that records every secret: the configured ones, each live session
/// token, the shared secret behind it, the tickle session id.
fn ibkr_fake() -> (Harvest<FakeIbkr>, OAuthConfig) {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let mut scan = SecretScan::new();
    scan.add("access token", ACCESS_TOKEN);
    scan.add(
        "access token secret",
        oauth.access_token_secret.expose_secret(),
    );
    scan.add("prepend", (0x40u8..0x60).collect::<Vec<u8>>());
    scan.add("encryption key", oauth.encryption_key.expose_secret());
    scan.add("signature key", oauth.signature_key.expose_secret());
    let v: serde_json::Value = serde_json::from_str(VECTORS_JSON).expect("vectors");
    let group = DhGroup::new(v["dh"]["prime_hex"].as_str().expect("prime"), 2).expect("group");
    let hook: HarvestHook<FakeIbkr> = Box::new(move |fake, request, scan| {
        if let Some(l) = fake.oauth_server().and_then(|o| o.current_lst()) {
            scan.add("live session token", l);
        }
        let challenge = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(base_string::parse_authorization_header)
            .and_then(|(_, p)| {
                p.into_iter()
                    .find(|(k, _)| k == "diffie_hellman_challenge")
                    .map(|(_, v)| v)
            });
        if let Some(c) = challenge
            && let Ok(secret) = DhSecret::from_hex(SERVER_DH_SECRET)
            && let Ok(k) = group.shared_secret(&secret, &c)
        {
            scan.add("DH shared secret", k.expose_secret());
        }
    });
    (Harvest::new(fake, scan).with_hook(hook), oauth)
}

fn ibkr_flows() -> SecretScan {
    let mut all = SecretScan::new();
    let (fake, oauth) = ibkr_fake();
    let config = FakeIbkr::oauth_config(oauth);
    let machine = IbkrSession::new(
        config,
        broker_session::RngSeed::from_u64(7),
        broker_session_testkit::sim::VirtualClock::new().now(),
    )
    .expect("session");
    let mut sim = Sim::new(machine, fake);
    sim.run(IbkrIntent::Connect).expect("connect");
    sim.advance(Duration::from_secs(300));
    // A status answer with the live session token where a flag goes.
    let lst = sim
        .broker
        .inner
        .oauth_server()
        .and_then(|o| o.current_lst())
        .expect("a token");
    let body: &'static str =
        Box::leak(format!(r#"{{"authenticated":"{lst}","connected":true}}"#).into_boxed_str());
    sim.broker
        .inner
        .inject(Some("/iserver/auth/status"), IbkrFault::Body(body));
    assert!(sim.run(IbkrIntent::CheckStatus).is_err());
    sim.run(IbkrIntent::Logout).expect("logout");
    merge(&mut all, &sim.broker.scan);
    let gateway = IbkrSession::new(
        FakeIbkr::gateway_config(),
        broker_session::RngSeed::from_u64(8),
        broker_session_testkit::sim::VirtualClock::new().now(),
    )
    .expect("session");
    let mut sim = Sim::new(
        gateway,
        Harvest::new(FakeIbkr::gateway(), SecretScan::new()),
    );
    sim.run(IbkrIntent::Connect).expect("connect");
    sim.advance(Duration::from_secs(300));
    merge(&mut all, &sim.broker.scan);
    all
}

fn merge(into: &mut SecretScan, from: &SecretScan) {
    into.extend(from);
}

#[test]
fn every_flow_traced_without_a_secret() {
    let capture = Capture::default();
    let (ig, ibkr) =
        tracing::subscriber::with_default(capture.clone(), || (ig_flows(), ibkr_flows()));
    let lines = capture.lines();
    let all = lines.join("\n");
    // The record is there: state changes, requests and completions of both brokers.
    assert!(all.contains("session state changed"), "{all}");
    assert!(all.contains("broker=\"ig\""), "{all}");
    assert!(all.contains("broker=\"ibkr\""), "{all}");
    assert!(all.contains("/session/refresh-token"), "{all}");
    assert!(all.contains("/oauth/live_session_token"), "{all}");
    assert!(all.contains("credentials rejected"), "{all}");
    assert!(all.contains("malformed response body"), "{all}");
    // The scans know what was issued: IG's CST/XST and OAuth tokens, IBKR's tokens,
    // shared secrets and tickle session id.
    assert!(ig.len() >= 15, "{ig:?}");
    assert!(ibkr.len() >= 8, "{ibkr:?}");
    // And no secret, in any encoding.
    for line in &lines {
        assert!(!line.contains(IG_MARK), "IG secret in a trace line: {line}");
    }
    ig.assert_clean("IG trace", &all);
    ibkr.assert_clean("IBKR trace", &all);
}
