//! With the core's `tracing` feature on, every IG and IBKR flow runs under a
//! subscriber that records every event and span field at every level: the record
//! mentions the sessions' progress and none of their secrets.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrSession};
use broker_session::ig::{IgIntent, IgSession, LoginFlow};
use broker_session_testkit::ibkr::{ACCESS_TOKEN, FakeIbkr};
use broker_session_testkit::ig::{FakeIg, accounts_request, session_config};
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

fn ig_flows() {
    for flow in [LoginFlow::V2, LoginFlow::V3, LoginFlow::EncryptedV2] {
        let fake = FakeIg::default();
        let config = session_config(&fake, flow);
        let request = accounts_request(&fake);
        let machine = IgSession::new(
            config,
            broker_session::RngSeed::from_u64(1),
            broker_session_testkit::sim::VirtualClock::new().now(),
        )
        .expect("session");
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
    }
    // Rejected credentials, and their error message.
    let mut fake = FakeIg::default();
    let config = session_config(&fake, LoginFlow::V2);
    fake.config.password = "another-secret".into();
    let machine = IgSession::new(
        config,
        broker_session::RngSeed::from_u64(1),
        broker_session_testkit::sim::VirtualClock::new().now(),
    )
    .expect("session");
    let mut sim = Sim::new(machine, fake);
    assert!(sim.run(IgIntent::Login).is_err());
}

fn ibkr_flows() -> Vec<String> {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let secrets = vec![
        ACCESS_TOKEN.to_owned(),
        oauth.access_token_secret.expose_secret().to_owned(),
    ];
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
    sim.run(IbkrIntent::Logout).expect("logout");
    let gateway = IbkrSession::new(
        FakeIbkr::gateway_config(),
        broker_session::RngSeed::from_u64(8),
        broker_session_testkit::sim::VirtualClock::new().now(),
    )
    .expect("session");
    let mut sim = Sim::new(gateway, FakeIbkr::gateway());
    sim.run(IbkrIntent::Connect).expect("connect");
    sim.advance(Duration::from_secs(300));
    secrets
}

#[test]
fn every_flow_traced_without_a_secret() {
    let capture = Capture::default();
    let ibkr_secrets = tracing::subscriber::with_default(capture.clone(), || {
        ig_flows();
        ibkr_flows()
    });
    let lines = capture.lines();
    let all = lines.join("\n");
    // The record is there: state changes, requests and completions of both brokers.
    assert!(all.contains("session state changed"), "{all}");
    assert!(all.contains("broker=\"ig\""), "{all}");
    assert!(all.contains("broker=\"ibkr\""), "{all}");
    assert!(all.contains("/session/refresh-token"), "{all}");
    assert!(all.contains("/oauth/live_session_token"), "{all}");
    assert!(all.contains("credentials rejected"), "{all}");
    // And no secret.
    for line in &lines {
        assert!(!line.contains(IG_MARK), "IG secret in a trace line: {line}");
        for s in &ibkr_secrets {
            assert!(!line.contains(s.as_str()), "IBKR secret in a trace line");
        }
    }
}
