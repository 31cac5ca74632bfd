//! Focused regression tests for bugs the model-based tests (`model_ig.rs`,
//! `model_ibkr.rs`) found.

use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrSession, IbkrState};
use broker_session::{Error, Machine};
use broker_session_testkit::ibkr::{FakeIbkr, Fault};
use broker_session_testkit::sim::{Sim, VirtualClock};

fn gateway_sim(fake: FakeIbkr) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let machine = IbkrSession::new(FakeIbkr::gateway_config(3), clock.now()).unwrap();
    Sim::with_clock(machine, fake, clock)
}

fn oauth_sim(
    fake: FakeIbkr,
    oauth: broker_session::ibkr::OAuthConfig,
) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let mut config = FakeIbkr::oauth_config(oauth, 3);
    config.base_url = "https://api.ibkr.com/v1/api".into();
    let machine = IbkrSession::new(config, clock.now()).unwrap();
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
