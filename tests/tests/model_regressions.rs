//! Focused regression tests for bugs the model-based tests (`model_ig.rs`,
//! `model_ibkr.rs`) found.

use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrSession, IbkrState};
use broker_session::{Error, Machine};
use broker_session_testkit::ibkr::{FakeIbkr, Fault};
use broker_session_testkit::sim::{Sim, VirtualClock};

fn gateway_sim(fake: FakeIbkr) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let machine = IbkrSession::new(
        FakeIbkr::gateway_config(),
        broker_session::RngSeed::from_u64(3),
        clock.now(),
    )
    .unwrap();
    Sim::with_clock(machine, fake, clock)
}

fn oauth_sim(
    fake: FakeIbkr,
    oauth: broker_session::ibkr::OAuthConfig,
) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let mut config = FakeIbkr::oauth_config(oauth);
    config.base_url = "https://api.ibkr.com/v1/api".into();
    let machine =
        IbkrSession::new(config, broker_session::RngSeed::from_u64(3), clock.now()).unwrap();
    Sim::with_clock(machine, fake, clock)
}

/// A Connect throttled (429) on its first request used to leave the machine in
/// `Connecting` once the back-off ended, with no operation left to finish it.
#[test]
fn gateway_connect_throttled_ends_disconnected_after_the_backoff() {
    let mut fake = FakeIbkr::gateway();
    fake.inject(Some("/iserver/auth/status"), Fault::Status(429, ""));
    let mut sim = gateway_sim(fake);
    assert!(matches!(
        sim.run(IbkrIntent::Connect),
        Err(Error::Throttled { .. })
    ));
    assert!(matches!(sim.machine.state(), IbkrState::BackingOff { .. }));
    sim.advance(Duration::from_secs(16 * 60));
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
    // And the session connects again.
    assert!(sim.run(IbkrIntent::Connect).is_ok());
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

/// The same for an OAuth session throttled while obtaining its live session token
/// (the state was left at `AcquiringToken`).
#[test]
fn oauth_token_request_throttled_ends_disconnected_after_the_backoff() {
    let (mut fake, oauth) = FakeIbkr::oauth(false);
    fake.inject(Some("/oauth/live_session_token"), Fault::Status(429, ""));
    let mut sim = oauth_sim(fake, oauth);
    assert!(matches!(
        sim.run(IbkrIntent::Connect),
        Err(Error::Throttled { .. })
    ));
    sim.advance(Duration::from_secs(16 * 60));
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
    assert!(sim.run(IbkrIntent::Connect).is_ok());
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

fn encrypted_ig() -> Sim<broker_session::ig::IgSession, broker_session_testkit::ig::FakeIg> {
    use broker_session::ig::{IgSession, LoginFlow};
    use broker_session_testkit::ig::{FakeIg, session_config};
    let fake = FakeIg::default();
    let clock = VirtualClock::new();
    let machine = IgSession::new(
        session_config(&fake, LoginFlow::EncryptedV2),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .unwrap();
    Sim::with_clock(machine, fake, clock)
}

/// An encrypted v2 login whose `POST /session` met a 5xx used to fail with a usage
/// error ("encrypted login without an encryption key"): the retry had no encrypted
/// password left. It now fetches a fresh key and retries.
#[test]
fn encrypted_login_is_retried_with_a_fresh_key() {
    use broker_session::ig::{IgIntent, IgOutcome};
    use broker_session_testkit::ig::Fault;
    let mut sim = encrypted_ig();
    sim.broker.inject(
        "/session",
        Some(http::Method::POST),
        Fault::error(500, None),
    );
    let out = sim.run(IgIntent::Login);
    assert!(matches!(out, Ok(IgOutcome::LoggedIn(_))), "{out:?}");
    assert_eq!(sim.broker.stats.count("GET /session/encryptionKey"), 2);
    assert_eq!(sim.broker.stats.count("POST /session"), 2);
    assert_eq!(sim.broker.stats.encrypted_logins, 1);
}

/// And the retries stay bounded: a successful key fetch used to reset the attempt
/// count, so an encrypted login retried for as long as IG kept failing.
#[test]
fn encrypted_login_retries_are_bounded() {
    use broker_session::ig::IgIntent;
    use broker_session_testkit::ig::Fault;
    let mut sim = encrypted_ig();
    for _ in 0..10 {
        sim.broker.inject(
            "/session",
            Some(http::Method::POST),
            Fault::error(503, None),
        );
    }
    let out = sim.run(IgIntent::Login);
    assert!(matches!(out, Err(Error::Unavailable(_))), "{out:?}");
    // IgConfig::max_attempts defaults to 3.
    assert_eq!(sim.broker.stats.count("POST /session"), 3);
}
