//! Model-based test of the IBKR machine (gateway and OAuth 1.0a): an abstract session
//! (disconnected, ready, browser login required, backing off, closed) predicts what
//! the real machine, driven against the fake IBKR on the virtual clock, must become
//! after each generated step: intents, application calls, injected faults (401, 429,
//! 5xx, redirects, malformed and truncated bodies, transport failures and timeouts),
//! server-side session loss, a browser login, and clock jumps. After every step the
//! loop contract and the safety properties are checked as well.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64).

use std::collections::HashSet;
use std::time::Duration;

use broker_session::ibkr::{IbkrIntent, IbkrSession, IbkrState};
use broker_session::{AuthorizeError, Event, FailureKind, Machine, Observation, OpId};
use broker_session_testkit::faults::{Failure, FaultPlan, Faulty, Target};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::sim::{Sim, VirtualClock};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const S: u64 = 1000;
const THROTTLE_MS: u64 = 15 * 60 * S;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    S500,
    S503Html,
    Timeout,
    Reset,
    Malformed,
    Truncated,
    Redirect,
    S429,
    S401,
}

impl F {
    fn failure(self) -> Failure {
        match self {
            Self::S500 => Failure::ibkr_error(500, "Internal Server Error"),
            Self::S503Html => Failure::malformed(503),
            Self::Timeout => Failure::timeout(),
            Self::Reset => Failure::transport(FailureKind::Io),
            Self::Malformed => Failure::malformed(200),
            Self::Truncated => Failure::Respond {
                status: 200,
                body: br#"{"authenticated":tr"#.to_vec(),
            },
            Self::Redirect => Failure::Respond {
                status: 302,
                body: Vec::new(),
            },
            Self::S429 => Failure::Respond {
                status: 429,
                body: Vec::new(),
            },
            Self::S401 => Failure::ibkr_error(401, "not authenticated"),
        }
    }
}

fn any_f() -> impl Strategy<Value = F> {
    use F::*;
    prop_oneof![
        Just(S500),
        Just(S503Html),
        Just(Timeout),
        Just(Reset),
        Just(Malformed),
        Just(Truncated),
        Just(Redirect),
        Just(S429),
        Just(S401),
    ]
}

#[derive(Clone, Debug)]
enum T {
    /// `Connect`; its first request answered by this fault.
    Connect(Option<F>),
    /// `GET /iserver/accounts` through `Sim::app_request`, answered by this fault (on
    /// both sends with `twice`).
    App { fault: Option<F>, twice: bool },
    /// `Logout`.
    Logout,
    /// Gateway: the user logs in through the browser.
    BrowserLogin,
    /// IBKR drops the brokerage session (gateway) or the live session token (OAuth).
    ServerDrop,
    /// Virtual time passes.
    Advance(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Disconnected,
    Ready,
    BrowserLoginRequired,
    Closed,
}

#[derive(Clone, Debug)]
struct Model {
    oauth: bool,
    phase: Phase,
    now: u64,
    backoff_until: Option<u64>,
    /// Gateway: the browser login is done at the fake.
    browser: bool,
}

impl Model {
    fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|u| u > self.now)
    }

    fn wait_backoff(&mut self) {
        if let Some(u) = self.backoff_until.filter(|u| *u > self.now) {
            self.now = u;
        }
        self.backoff_until = None;
    }

    fn backoff(&mut self) {
        self.backoff_until = Some(self.now + THROTTLE_MS);
    }

    fn connect(&mut self, f: Option<F>) {
        self.wait_backoff();
        let had_token = self.oauth && self.phase == Phase::Ready;
        let Some(f) = f else {
            self.phase = if self.oauth || self.browser {
                Phase::Ready
            } else {
                Phase::BrowserLoginRequired
            };
            return;
        };
        match f {
            F::S401 if self.oauth && !had_token => self.phase = Phase::Closed,
            // A refused signed status renews the token, then goes on.
            F::S401 if self.oauth => self.phase = Phase::Ready,
            F::S401 => self.phase = Phase::BrowserLoginRequired,
            F::S429 => {
                if self.phase != Phase::Ready {
                    self.phase = Phase::Disconnected;
                }
                self.backoff();
            }
            _ => {
                if self.phase != Phase::Ready {
                    self.phase = Phase::Disconnected;
                }
            }
        }
    }

    fn app(&mut self, fault: Option<F>, twice: bool) {
        if self.backing_off() || self.phase == Phase::Closed {
            return;
        }
        if self.oauth && self.phase != Phase::Ready {
            return;
        }
        if !self.oauth && self.phase == Phase::BrowserLoginRequired {
            return;
        }
        match fault {
            None if !self.oauth && !self.browser => self.phase = Phase::BrowserLoginRequired,
            // A dropped brokerage session or token is recovered on the way.
            None => self.phase = Phase::Ready,
            Some(F::S429) => self.backoff(),
            Some(F::S401) if self.oauth => {
                if twice {
                    self.phase = Phase::Disconnected;
                }
            }
            Some(F::S401) => self.phase = Phase::BrowserLoginRequired,
            Some(_) => {}
        }
    }

    fn logout(&mut self) {
        self.wait_backoff();
        if self.oauth || self.browser {
            self.phase = Phase::Disconnected;
            self.browser = false;
        } else {
            self.phase = Phase::BrowserLoginRequired;
        }
    }
}

struct IbkrModel;

impl ReferenceStateMachine for IbkrModel {
    type State = Model;
    type Transition = T;

    fn init_state() -> BoxedStrategy<Model> {
        any::<bool>()
            .prop_map(|oauth| Model {
                oauth,
                phase: Phase::Disconnected,
                now: 0,
                backoff_until: None,
                browser: !oauth,
            })
            .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<T> {
        // Odd milliseconds: no sum of them is a whole number of seconds, so a step
        // never ends on the instant a timer (tickle, back-off end) fires and the
        // machine is always settled when the step is checked.
        let advance = prop_oneof![
            4 => prop_oneof![Just(1_003), Just(30_011), Just(61_007), Just(300_013), Just(960_017)],
            1 => prop_oneof![Just(7_200_019), Just(90_000_023)],
        ];
        prop_oneof![
            4 => proptest::option::weighted(0.6, any_f()).prop_map(T::Connect),
            6 => (proptest::option::weighted(0.6, any_f()), proptest::bool::weighted(0.2))
                .prop_map(|(fault, twice)| T::App { fault, twice }),
            1 => Just(T::Logout),
            1 => Just(T::BrowserLogin),
            1 => Just(T::ServerDrop),
            4 => advance.prop_map(T::Advance),
        ]
        .boxed()
    }

    fn preconditions(m: &Model, t: &T) -> bool {
        match t {
            // A gateway session that never connected sends application calls into a
            // brokerage session whose state the model does not track.
            T::App { .. } => m.oauth || m.phase != Phase::Disconnected,
            T::BrowserLogin => !m.oauth,
            _ => true,
        }
    }

    fn apply(mut m: Model, t: &T) -> Model {
        if m.phase == Phase::Closed {
            if let T::Advance(d) = t {
                m.now += d;
            }
            return m;
        }
        match t {
            T::Connect(f) => m.connect(*f),
            T::App { fault, twice } => m.app(*fault, *twice),
            T::Logout => m.logout(),
            T::BrowserLogin => m.browser = true,
            T::ServerDrop => {}
            T::Advance(d) => {
                m.now += d;
                if !m.backing_off() {
                    m.backoff_until = None;
                }
            }
        }
        m
    }
}

struct Harness {
    sim: Sim<IbkrSession, Faulty<FakeIbkr>>,
    oauth: bool,
    ops: Vec<OpId>,
    step: usize,
    /// Virtual time spent letting an operation that a step left running finish; the
    /// model does not know it.
    drift_ms: u64,
}

impl Harness {
    fn run_intent(&mut self, intent: IbkrIntent) {
        match self.sim.submit(intent) {
            Ok(op) => {
                self.ops.push(op);
                let _ = self.sim.wait_for(op);
            }
            Err(e) => assert_eq!(e, broker_session::UsageError::SessionClosed),
        }
    }
}

fn elapsed_ms(sim: &Sim<IbkrSession, Faulty<FakeIbkr>>) -> u64 {
    u64::try_from(sim.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn is_signed(seen: &broker_session_testkit::faults::Seen) -> bool {
    seen.credentials.is_some() && !seen.path.ends_with("/oauth/live_session_token")
}

struct IbkrMachineTest;

impl StateMachineTest for IbkrMachineTest {
    type SystemUnderTest = Harness;
    type Reference = IbkrModel;

    fn init_test(m: &Model) -> Harness {
        let clock = VirtualClock::new();
        let (fake, config) = if m.oauth {
            let (fake, oauth) = FakeIbkr::oauth(false);
            let mut config = FakeIbkr::oauth_config(oauth);
            config.base_url = "https://api.ibkr.com/v1/api".into();
            (fake, config)
        } else {
            (FakeIbkr::gateway(), FakeIbkr::gateway_config())
        };
        let machine =
            IbkrSession::new(config, broker_session::RngSeed::from_u64(7), clock.now()).unwrap();
        let broker = Faulty::new(fake, FaultPlan::default(), clock.now());
        let mut sim = Sim::with_clock(machine, broker, clock);
        sim.latency = Duration::ZERO;
        Harness {
            sim,
            oauth: m.oauth,
            ops: Vec::new(),
            step: 0,
            drift_ms: 0,
        }
    }

    fn apply(mut h: Harness, model: &Model, t: T) -> Harness {
        h.step += 1;
        let before_seen = h.sim.broker.seen.len();
        let state_before = h.sim.machine.state();
        match &t {
            T::Connect(f) => {
                if let Some(f) = f {
                    h.sim.broker.fail_next(Target::Any, f.failure());
                }
                h.run_intent(IbkrIntent::Connect);
            }
            T::App { fault, twice } => {
                if let Some(f) = fault {
                    let target = Target::Path("/iserver/accounts".into());
                    h.sim.broker.fail_next(target.clone(), f.failure());
                    if *twice {
                        h.sim.broker.fail_next(target, f.failure());
                    }
                }
                let url = if h.oauth {
                    "https://api.ibkr.com/v1/api/iserver/accounts"
                } else {
                    "https://localhost:5000/v1/api/iserver/accounts"
                };
                let request = http::Request::get(url).body(Vec::new()).unwrap();
                match h.sim.app_request(&request) {
                    Ok(out) => {
                        assert!(out.sends <= 2);
                        if let Some(Observation::Recover { op }) = out.observation {
                            h.ops.push(op);
                        }
                    }
                    Err(AuthorizeError::Pending { op }) => h.ops.push(op),
                    Err(_) => {}
                }
            }
            T::Logout => h.run_intent(IbkrIntent::Logout),
            T::BrowserLogin => h.sim.broker.inner.browser_login_done = true,
            T::ServerDrop => {
                if h.oauth {
                    if let Some(s) = h.sim.broker.inner.oauth_server() {
                        s.revoke();
                    }
                } else {
                    h.sim.broker.inner.drop_brokerage_session();
                }
            }
            T::Advance(ms) => h.sim.advance(Duration::from_millis(*ms)),
        }
        h.sim.pump();
        // An Advance can end while an operation waits out IBKR's pacing (a keep-alive
        // tickle that renewed the token tickles again a second later): let it finish.
        let mut settle_ms = 0;
        while !matches!(
            h.sim.machine.state(),
            IbkrState::Disconnected
                | IbkrState::Ready
                | IbkrState::BrowserLoginRequired
                | IbkrState::BackingOff { .. }
                | IbkrState::Closed
        ) && settle_ms <= 2 * S
        {
            let before = elapsed_ms(&h.sim);
            let next = h
                .sim
                .pump()
                .map_or(Duration::from_millis(1), |at| at - h.sim.now().mono);
            h.sim.advance(next);
            settle_ms += elapsed_ms(&h.sim) - before;
        }
        h.drift_ms += settle_ms;
        h.sim.broker.clear();

        let seen = &h.sim.broker.seen[before_seen..];
        let ctx = format!(
            "step {} {t:?} from {state_before:?}; requests {seen:?}",
            h.step
        );
        if state_before == IbkrState::Closed {
            assert!(seen.is_empty(), "requests after the session closed: {ctx}");
        }
        if !h.oauth {
            assert!(
                seen.iter().all(|s| s.credentials.is_none()),
                "a gateway request carried credentials: {ctx}"
            );
        } else if matches!(state_before, IbkrState::Disconnected | IbkrState::Closed) {
            // Without a live session token nothing is signed before one is obtained.
            let first_token = seen
                .iter()
                .position(|s| s.path.ends_with("/oauth/live_session_token"))
                .unwrap_or(seen.len());
            assert!(
                seen[..first_token].iter().all(|s| !is_signed(s)),
                "signed request without a live session token: {ctx}"
            );
        }
        if let Some(server) = h.sim.broker.inner.oauth_server() {
            assert_eq!(
                server.bad_signatures, 0,
                "a request was signed wrongly: {ctx}"
            );
        }
        let bound = match t {
            T::Advance(ms) => 8 + usize::try_from(ms / (20 * S)).unwrap_or(usize::MAX),
            _ => 12,
        };
        assert!(seen.len() <= bound, "{} requests: {ctx}", seen.len());
        let mut done = HashSet::new();
        for e in &h.sim.events {
            if let Event::Completed { op, .. } = e {
                assert!(done.insert(*op), "{op} completed twice: {ctx}");
            }
        }
        for op in &h.ops {
            assert!(done.contains(op), "{op} never completed: {ctx}");
        }
        assert_eq!(
            project(&h),
            expect(model),
            "state differs from the model: {ctx}"
        );
        assert_eq!(
            elapsed_ms(&h.sim),
            model.now + h.drift_ms,
            "virtual time differs: {ctx}"
        );
        h
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Proj {
    Disconnected,
    Ready,
    BrowserLoginRequired,
    BackingOff(u64),
    Closed,
}

fn project(h: &Harness) -> Proj {
    let now = h.sim.now().mono;
    match h.sim.machine.state() {
        IbkrState::Disconnected => Proj::Disconnected,
        IbkrState::Ready => Proj::Ready,
        IbkrState::BrowserLoginRequired => Proj::BrowserLoginRequired,
        IbkrState::BackingOff { until } => {
            let left = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX);
            Proj::BackingOff(elapsed_ms(&h.sim) + left - h.drift_ms)
        }
        IbkrState::Closed => Proj::Closed,
        other => panic!("machine not settled: {other:?}"),
    }
}

fn expect(m: &Model) -> Proj {
    if m.phase == Phase::Closed {
        return Proj::Closed;
    }
    if let Some(u) = m.backoff_until.filter(|u| *u > m.now) {
        return Proj::BackingOff(u);
    }
    match m.phase {
        Phase::Disconnected => Proj::Disconnected,
        Phase::Ready => Proj::Ready,
        Phase::BrowserLoginRequired => Proj::BrowserLoginRequired,
        Phase::Closed => Proj::Closed,
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ibkr_machine_follows_the_model(sequential 1..40 => IbkrMachineTest);
}
