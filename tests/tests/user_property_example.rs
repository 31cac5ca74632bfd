//! How to property-test your own program against generated broker faults.
//!
//! The "program" here is a small loop an application might run: every virtual
//! minute it calls `GET /accounts` through the session (as a transport would:
//! authorize, send, observe, replay once after a recovery), and logs in again when it
//! finds the session logged out or lost. The properties:
//!
//! 1. it never logs in more than once per fault (plus the first login): recoveries are
//!    bounded, never a loop;
//! 2. once the faults stop (and any back-off has passed), it works again: the next call
//!    gets a 200.
//!
//! The faults come from `broker_session_testkit::faults`: which request fails (the
//! application call or the session's own login), how (401 with each IG code, 403
//! allowance, 429, 5xx, malformed or truncated bodies, transport failures, timeouts),
//! and when (an offset in virtual time). Twenty virtual minutes run in microseconds.

use std::time::Duration;

use broker_session::Machine;
use broker_session::ibkr::{IbkrIntent, IbkrSession, IbkrState};
use broker_session::ig::{IgIntent, IgSession, IgState, LoginFlow};
use broker_session_testkit::faults::{self, FaultPlan, Faulty, Target};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::ig::{FakeIg, accounts_request, session_config};
use broker_session_testkit::sim::{Sim, VirtualClock};
use proptest::prelude::*;

/// Faults for the application's own calls (any IG failure) and for the session's
/// logins (transient ones: a 401 on a login closes the session by design), armed
/// within the first ten virtual minutes.
fn plans() -> impl Strategy<Value = FaultPlan> {
    let horizon = Duration::from_secs(600);
    let app = faults::fault_plan(
        faults::ig_failure(),
        Just(Target::Path("/accounts".into())),
        0..6,
        horizon,
    );
    let login = faults::fault_plan(
        faults::ig_transient_failure(),
        Just(Target::MethodPath(http::Method::POST, "/session".into())),
        0..4,
        horizon,
    );
    (app, login).prop_map(|(a, l)| a.and(l))
}

/// The program under test: one iteration of its loop.
fn call_accounts(sim: &mut Sim<IgSession, Faulty<FakeIg>>) -> Option<u16> {
    if matches!(
        sim.machine.state(),
        IgState::LoggedOut | IgState::Lost { .. }
    ) {
        let _ = sim.run(IgIntent::Login);
    }
    let request = accounts_request(&sim.broker.inner);
    let out = sim.app_request(&request).ok()?;
    out.response.map(|r| r.status().as_u16())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn my_loop_survives_generated_faults(plan in plans(), v3 in any::<bool>()) {
        let fake = FakeIg::default();
        let clock = VirtualClock::new();
        let flow = if v3 { LoginFlow::V3 } else { LoginFlow::V2 };
        let machine = IgSession::new(session_config(&fake, flow), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut sim = Sim::with_clock(machine, Faulty::new(fake, plan, clock.now()), clock);

        for _minute in 0..20 {
            let _ = call_accounts(&mut sim);
            sim.advance(Duration::from_secs(60));
        }
        // Faults whose target never came up are dropped: the faults have stopped.
        sim.broker.clear();
        let fired = sim.broker.fired.len();

        // 1. At most one login per fault, plus the first.
        let logins = sim.broker.count("POST", "/session");
        prop_assert!(logins <= 1 + fired, "{logins} logins for {fired} faults");

        // 2. Working again once the faults stopped and any back-off has passed.
        sim.advance(Duration::from_secs(5 * 60));
        prop_assert_eq!(call_accounts(&mut sim), Some(200), "state {:?}", sim.machine.state());
    }
}

/// The same kind of program on an IBKR gateway: every minute an `/iserver` call,
/// reconnecting when the session is not ready. Faults hit any request (keep-alive
/// tickles, status probes, `ssodh/init`, the application call). Once they stop and any
/// back-off (15 minutes) has passed, one Connect brings the session back.
fn call_iserver(sim: &mut Sim<IbkrSession, Faulty<FakeIbkr>>) -> Option<u16> {
    if !matches!(
        sim.machine.state(),
        IbkrState::Ready | IbkrState::BackingOff { .. }
    ) {
        let _ = sim.run(IbkrIntent::Connect);
    }
    let request = http::Request::get("https://localhost:5000/v1/api/iserver/accounts")
        .body(Vec::new())
        .ok()?;
    let out = sim.app_request(&request).ok()?;
    out.response.map(|r| r.status().as_u16())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn my_ibkr_loop_survives_generated_faults(
        plan in faults::fault_plan(faults::ibkr_failure(), faults::ibkr_target(), 0..8, Duration::from_secs(600)),
    ) {
        let clock = VirtualClock::new();
        let machine = IbkrSession::new(FakeIbkr::gateway_config(), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut sim = Faulty::sim(machine, FakeIbkr::gateway(), plan, clock);
        for _minute in 0..20 {
            let _ = call_iserver(&mut sim);
            sim.advance(Duration::from_secs(60));
        }
        sim.broker.clear();
        let fired = sim.broker.fired.len();
        // Bounded: brokerage initialisations at most one per fault plus the first,
        // each with at most `init_attempts` (3) tries.
        let inits = sim.broker.count("POST", "/iserver/auth/ssodh/init");
        prop_assert!(inits <= 3 * (1 + fired), "{inits} inits for {fired} faults");

        sim.advance(Duration::from_secs(16 * 60));
        prop_assert_eq!(call_iserver(&mut sim), Some(200), "state {:?}", sim.machine.state());
        prop_assert_eq!(sim.machine.state(), IbkrState::Ready);
    }
}
