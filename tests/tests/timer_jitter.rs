//! Jittered timers: sessions created together do not refresh (IG v3) or tickle (IBKR)
//! together, the schedule depends only on the seed, and the documented bounds hold
//! (an IG refresh always comes before the token expires; an IBKR keep-alive interval
//! is only ever shortened, never below the pacing floor).

use std::collections::BTreeSet;
use std::time::Duration;

use broker_session::RngSeed;
use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession};
use broker_session::ig::{IgConfig, IgIntent, IgSession, LoginFlow};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::ig::{FakeIg, FakeIgConfig, session_config};
use broker_session_testkit::sim::{Sim, VirtualClock};
use proptest::prelude::*;

const REFRESH_PATH: &str = "/gateway/deal/session/refresh-token";
const TICKLE_PATH: &str = "/v1/api/tickle";

/// A logged-in IG v3 session on a fake whose access tokens live `ttl`, with answers
/// arriving at once (so a token's lifetime starts when its request is sent).
fn ig_sim(seed: u64, ttl: Duration, tweak: impl FnOnce(&mut IgConfig)) -> Sim<IgSession, FakeIg> {
    let fake = FakeIg::new(FakeIgConfig {
        access_ttl: ttl,
        ..FakeIgConfig::default()
    });
    let mut cfg = session_config(&fake, LoginFlow::V3);
    tweak(&mut cfg);
    let clock = VirtualClock::new();
    let m = IgSession::new(cfg, RngSeed::from_u64(seed), clock.now()).unwrap();
    let mut sim = Sim::with_clock(m, fake, clock);
    sim.latency = Duration::ZERO;
    sim.run(IgIntent::Login).unwrap();
    sim
}

/// When each request to `path` was sent, from the start of the simulation.
fn sent_at<M: broker_session::Machine, F: broker_session_testkit::sim::FakeBroker>(
    sim: &Sim<M, F>,
    path: &str,
) -> Vec<Duration> {
    sim.delivered
        .iter()
        .filter(|d| d.path == path)
        .map(|d| d.at)
        .collect()
}

/// The login and every refresh: each one's token lives from the moment it is sent.
fn ig_grants(sim: &Sim<IgSession, FakeIg>) -> Vec<Duration> {
    let mut grants = sent_at(sim, "/gateway/deal/session");
    grants.truncate(1);
    grants.extend(sent_at(sim, REFRESH_PATH));
    grants
}

fn ig_refresh_schedule(seed: u64) -> Vec<Duration> {
    let mut sim = ig_sim(seed, Duration::from_secs(60), |_| {});
    sim.advance(Duration::from_secs(600));
    sent_at(&sim, REFRESH_PATH)
}

#[test]
fn ig_refresh_schedule_depends_on_the_seed_only() {
    let one = ig_refresh_schedule(1);
    assert!(one.len() >= 10, "{one:?}");
    assert_eq!(one, ig_refresh_schedule(1));
    assert_ne!(one, ig_refresh_schedule(2));
}

#[test]
fn ig_without_spread_refreshes_exactly_the_margin_before_expiry() {
    let mut sim = ig_sim(7, Duration::from_secs(60), |c| {
        c.refresh_spread = Duration::ZERO;
    });
    sim.advance(Duration::from_secs(600));
    let grants = ig_grants(&sim);
    assert!(grants.len() > 10);
    for w in grants.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_secs(50));
    }
}

/// 200 sessions created in the same instant: their first refreshes spread over the
/// whole 5 s window instead of landing in one millisecond.
#[test]
fn ig_sessions_created_in_one_burst_refresh_apart() {
    let firsts: Vec<Duration> = (0..200)
        .map(|seed| {
            let mut sim = ig_sim(seed, Duration::from_secs(60), |_| {});
            sim.advance(Duration::from_secs(55));
            sent_at(&sim, REFRESH_PATH)[0]
        })
        .collect();
    let millis: BTreeSet<u128> = firsts.iter().map(Duration::as_millis).collect();
    assert!(
        millis.len() >= 190,
        "{} distinct milliseconds",
        millis.len()
    );
    let (lo, hi) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    assert!(*lo >= Duration::from_secs(45) && *hi <= Duration::from_secs(50));
    assert!(*hi - *lo >= Duration::from_secs(4), "{lo:?}..{hi:?}");
}

fn ibkr_sim(seed: u64, tweak: impl FnOnce(&mut IbkrConfig)) -> Sim<IbkrSession, FakeIbkr> {
    let clock = VirtualClock::new();
    let mut config = FakeIbkr::gateway_config();
    tweak(&mut config);
    let m = IbkrSession::new(config, RngSeed::from_u64(seed), clock.now()).unwrap();
    let mut sim = Sim::with_clock(m, FakeIbkr::gateway(), clock);
    sim.latency = Duration::ZERO;
    sim.run(IbkrIntent::Connect).unwrap();
    sim
}

fn tickle_schedule(seed: u64) -> Vec<Duration> {
    let mut sim = ibkr_sim(seed, |_| {});
    sim.advance(Duration::from_secs(1200));
    sent_at(&sim, TICKLE_PATH)
}

#[test]
fn ibkr_tickle_schedule_depends_on_the_seed_only() {
    let one = tickle_schedule(1);
    assert!(one.len() >= 19, "{one:?}");
    assert_eq!(one, tickle_schedule(1));
    assert_ne!(one, tickle_schedule(2));
    for w in one.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (Duration::from_secs(54)..=Duration::from_secs(60)).contains(&gap),
            "{gap:?}"
        );
    }
}

#[test]
fn ibkr_without_spread_tickles_every_interval_exactly() {
    let mut sim = ibkr_sim(3, |c| c.tickle_spread = Duration::ZERO);
    sim.advance(Duration::from_secs(1200));
    let t = sent_at(&sim, TICKLE_PATH);
    assert!(t.len() >= 19);
    for w in t.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_secs(60));
    }
}

#[test]
fn ibkr_sessions_created_in_one_burst_tickle_apart() {
    let firsts: Vec<Duration> = (0..200)
        .map(|seed| {
            let mut sim = ibkr_sim(seed, |_| {});
            let ready = sim.clock.elapsed();
            sim.advance(Duration::from_secs(61));
            sent_at(&sim, TICKLE_PATH)[0] - ready
        })
        .collect();
    let millis: BTreeSet<u128> = firsts.iter().map(Duration::as_millis).collect();
    assert!(
        millis.len() >= 190,
        "{} distinct milliseconds",
        millis.len()
    );
    let (lo, hi) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    assert!(*lo >= Duration::from_secs(54) && *hi <= Duration::from_secs(60));
    assert!(*hi - *lo >= Duration::from_secs(5), "{lo:?}..{hi:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the seed, token lifetime, margin and spread: every refresh is sent
    /// before the token it replaces expires, within the documented window, and the
    /// session stays usable (the fake refused nothing).
    #[test]
    fn ig_refresh_always_precedes_expiry(
        seed in any::<u64>(),
        ttl_s in 2u64..=7_200,
        margin_ms in 0u64..=900_000,
        spread_ms in 0u64..=900_000,
    ) {
        // IG states `expires_in` in whole seconds.
        let ttl = Duration::from_secs(ttl_s);
        let (margin, spread) = (Duration::from_millis(margin_ms), Duration::from_millis(spread_ms));
        let mut sim = ig_sim(seed, ttl, |c| {
            c.refresh_margin = margin;
            c.refresh_spread = spread;
        });
        sim.advance(ttl * 6);
        let grants = ig_grants(&sim);
        prop_assert!(grants.len() >= 6, "{grants:?}");
        let half = ttl / 2;
        let margin = margin.min(half);
        let spread = spread.min(half - margin);
        for w in grants.windows(2) {
            let gap = w[1] - w[0];
            prop_assert!(gap <= ttl - margin, "{gap:?} after a {ttl:?} token");
            prop_assert!(gap >= ttl - margin - spread, "{gap:?}");
            prop_assert!(gap >= half, "{gap:?}");
        }
        prop_assert_eq!(sim.broker.stats.failed_refreshes, 0);
        prop_assert!(sim.broker.stats.rejections.is_empty(), "{:?}", sim.broker.stats.rejections);
    }

    /// Whatever the seed, interval, spread and pacing floor: consecutive keep-alive
    /// tickles are at most the interval apart and never closer than the floor or half
    /// the interval.
    #[test]
    fn ibkr_keepalive_stays_within_its_bounds(
        seed in any::<u64>(),
        interval_ms in 0u64..=600_000,
        spread_ms in 0u64..=600_000,
        min_ms in 0u64..=5_000,
    ) {
        let mut sim = ibkr_sim(seed, |c| {
            c.tickle_interval = Duration::from_millis(interval_ms);
            c.tickle_spread = Duration::from_millis(spread_ms);
            c.tickle_min_interval = Duration::from_millis(min_ms);
        });
        let floor = Duration::from_secs(1).max(Duration::from_millis(min_ms));
        let interval = Duration::from_millis(interval_ms).max(floor);
        sim.advance(interval * 8);
        let t = sent_at(&sim, TICKLE_PATH);
        prop_assert!(t.len() >= 6, "{t:?}");
        for w in t.windows(2) {
            let gap = w[1] - w[0];
            prop_assert!(gap <= interval, "{gap:?} > {interval:?}");
            prop_assert!(gap >= floor && gap >= interval / 2, "{gap:?}");
        }
    }
}
