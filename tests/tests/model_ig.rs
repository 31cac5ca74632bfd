//! Model-based test of the IG machine: an abstract session (logged out, active,
//! backing off, lost, closed) predicts what the real machine, driven against the fake
//! IG on the virtual clock, must become after each generated step: intents,
//! application calls, injected faults (each relevant 401 code, allowance 403, 429,
//! 5xx, malformed and truncated bodies, transport failures and timeouts), server-side
//! token expiry and clock jumps. After every step the loop contract and the safety
//! properties are checked as well.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64).

use std::collections::HashSet;
use std::time::Duration;

use broker_session::ig::{AuthMode, IgIntent, IgSession, IgState, LoginFlow, PersistedTokens};
use broker_session::{AuthorizeError, Event, FailureKind, Machine, Observation, OpId};
use broker_session_testkit::faults::{Failure, FaultPlan, Faulty, Target, credentials_hash};
use broker_session_testkit::ig::{FakeIg, LOGIN_THROTTLED, accounts_request, session_config};
use broker_session_testkit::sim::{Sim, VirtualClock};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const S: u64 = 1000;
const ALLOWANCE_MS: u64 = 60 * S;
const LOGIN_THROTTLE_MS: u64 = 180 * S;
const CST_IDLE_MS: u64 = 6 * 3600 * S;
/// A v3 token lives 60 s and is refreshed 10 s before it expires.
const REFRESH_AFTER_MS: u64 = 50 * S;

/// A fault, named by what it is rather than by its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    S500,
    S503Html,
    Timeout,
    Reset,
    Malformed,
    Truncated,
    S429,
    Allowance,
    LoginThrottled,
    BadCredentials,
    ApiKeyInvalid,
    ClientToken,
    AccountToken,
    OAuthToken,
    NoCode401,
}

impl F {
    fn failure(self) -> Failure {
        match self {
            Self::S500 => Failure::ig_error(500, Some("system.error")),
            Self::S503Html => Failure::malformed(503),
            Self::Timeout => Failure::timeout(),
            Self::Reset => Failure::transport(FailureKind::Io),
            Self::Malformed => Failure::malformed(200),
            Self::Truncated => Failure::truncated(200),
            Self::S429 => Failure::ig_error(429, None),
            Self::Allowance => {
                Failure::ig_error(403, Some("error.public-api.exceeded-api-key-allowance"))
            }
            Self::LoginThrottled => Failure::ig_error(401, Some(LOGIN_THROTTLED)),
            Self::BadCredentials => Failure::ig_error(401, Some("error.security.invalid-details")),
            Self::ApiKeyInvalid => Failure::ig_error(403, Some("error.security.api-key-invalid")),
            Self::ClientToken => {
                Failure::ig_error(401, Some("error.security.client-token-invalid"))
            }
            Self::AccountToken => {
                Failure::ig_error(401, Some("error.security.account-token-invalid"))
            }
            Self::OAuthToken => Failure::ig_error(401, Some("error.security.oauth-token-invalid")),
            Self::NoCode401 => Failure::ig_error(401, None),
        }
    }

    fn transient(self) -> bool {
        matches!(
            self,
            Self::S500 | Self::S503Html | Self::Timeout | Self::Reset
        )
    }

    fn token_401(self) -> bool {
        matches!(
            self,
            Self::ClientToken | Self::AccountToken | Self::OAuthToken | Self::NoCode401
        )
    }

    fn garbage(self) -> bool {
        matches!(self, Self::Malformed | Self::Truncated)
    }

    fn backoff_ms(self, on_login: bool) -> Option<u64> {
        match self {
            Self::S429 | Self::Allowance => Some(ALLOWANCE_MS),
            Self::LoginThrottled if on_login => Some(LOGIN_THROTTLE_MS),
            _ => None,
        }
    }

    fn fatal(self) -> bool {
        matches!(self, Self::BadCredentials | Self::ApiKeyInvalid)
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
        Just(S429),
        Just(Allowance),
        Just(LoginThrottled),
        Just(BadCredentials),
        Just(ApiKeyInvalid),
        Just(ClientToken),
        Just(AccountToken),
        Just(OAuthToken),
        Just(NoCode401),
    ]
}

fn transient_f() -> impl Strategy<Value = F> {
    prop_oneof![
        Just(F::S500),
        Just(F::S503Html),
        Just(F::Timeout),
        Just(F::Reset)
    ]
}

#[derive(Clone, Debug)]
enum T {
    /// `Login`, its `POST /session` answered by these faults first.
    Login(Vec<F>),
    /// `GET /accounts` through `Sim::app_request`; `app` answers the first send (twice
    /// with `twice`), `recovery` the recovery's first session request.
    App {
        app: Option<F>,
        twice: bool,
        recovery: Option<F>,
    },
    /// `ReadSession`, its `GET /session` answered by this fault first.
    Read(Option<F>),
    /// `SwitchAccount` to the other account (or back to the default), its
    /// `PUT /session` (v2) answered by this fault first.
    Switch { other: bool, fault: Option<F> },
    /// `Logout`, its `DELETE /session` answered by this fault first.
    Logout(Option<F>),
    /// IG drops the session's tokens (maintenance, login elsewhere).
    ExpireServer,
    /// Virtual time passes.
    Advance(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    LoggedOut,
    Active,
    Lost,
    Closed,
}

#[derive(Clone, Debug)]
struct Model {
    flow: LoginFlow,
    v3: bool,
    phase: Phase,
    now: u64,
    backoff_until: Option<u64>,
    /// The server still accepts the session's tokens (revocation aside, see
    /// `cst_expires`).
    server_ok: bool,
    /// v2: when the CST expires at the server without use.
    cst_expires: u64,
    /// v3: when the proactive refresh is due.
    refresh_due: u64,
    /// The user switched to the other account.
    other_account: bool,
}

impl Model {
    fn has_tokens(&self) -> bool {
        self.phase == Phase::Active
    }

    fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|u| u > self.now)
    }

    fn server_accepts(&self) -> bool {
        self.server_ok && (self.v3 || self.now < self.cst_expires)
    }

    fn backoff(&mut self, ms: u64) {
        let until = self.now + ms;
        self.backoff_until = Some(self.backoff_until.map_or(until, |u| u.max(until)));
    }

    fn new_tokens(&mut self) {
        self.phase = Phase::Active;
        self.server_ok = true;
        self.cst_expires = self.now + CST_IDLE_MS;
        self.refresh_due = self.now + REFRESH_AFTER_MS;
    }

    fn used(&mut self) {
        self.cst_expires = self.now + CST_IDLE_MS;
    }

    /// Lets time run to `end`: a back-off ends, v3 refreshes fall due.
    fn run_until(&mut self, end: u64) {
        loop {
            let backoff = self.backoff_until.filter(|u| *u > self.now);
            if let Some(u) = backoff {
                // A refresh falling due during the back-off runs when it ends.
                if u > end {
                    break;
                }
                self.now = u;
                self.backoff_until = None;
                if self.v3 && self.has_tokens() && self.refresh_due <= u {
                    self.refresh_now();
                }
                continue;
            }
            self.backoff_until = None;
            if self.v3 && self.has_tokens() && self.refresh_due <= end {
                self.now = self.now.max(self.refresh_due);
                self.refresh_now();
                continue;
            }
            break;
        }
        self.now = self.now.max(end);
    }

    fn refresh_now(&mut self) {
        self.server_ok = true;
        self.refresh_due = self.now + REFRESH_AFTER_MS;
    }

    /// An intent waits for a back-off to end.
    fn wait_backoff(&mut self) {
        if let Some(u) = self.backoff_until.filter(|u| *u > self.now) {
            self.run_until(u);
        }
        self.backoff_until = None;
    }

    /// A refresh the timer queued during an operation runs right after it.
    fn settle(&mut self) {
        if self.v3 && self.has_tokens() && !self.backing_off() && self.refresh_due <= self.now {
            self.refresh_now();
        }
    }

    /// A login with these faults on its `POST /session`.
    fn login(&mut self, faults: &[F]) {
        let mut attempts = 0;
        for f in faults {
            if f.transient() {
                attempts += 1;
                if attempts >= 3 {
                    self.phase = Phase::LoggedOut;
                    return;
                }
                self.now += S << (attempts - 1);
                continue;
            }
            if f.garbage() {
                self.phase = Phase::LoggedOut;
            } else if let Some(ms) = f.backoff_ms(true) {
                if self.phase == Phase::Lost {
                    self.phase = Phase::LoggedOut;
                }
                self.backoff(ms);
            } else {
                // Every other refusal of a login is final.
                self.phase = Phase::Closed;
            }
            return;
        }
        self.new_tokens();
    }

    /// A reactive recovery whose first session request meets `f`. `true` when the
    /// session has fresh credentials afterwards.
    fn recover(&mut self, f: Option<F>) -> bool {
        let Some(f) = f else {
            self.new_tokens();
            return true;
        };
        if f.transient() {
            self.now += S;
            self.new_tokens();
            return true;
        }
        if f.fatal() {
            self.phase = Phase::Closed;
            return false;
        }
        if let Some(ms) = f.backoff_ms(!self.v3) {
            self.backoff(ms);
            return false;
        }
        if self.v3 {
            // Any other refused or unusable refresh falls back to one login.
            self.new_tokens();
            return true;
        }
        // v2 re-login: garbage loses the session; every other 401 closes it.
        if f.garbage() {
            self.phase = Phase::Lost;
        } else {
            self.phase = Phase::Closed;
        }
        false
    }

    fn app(&mut self, app: Option<F>, twice: bool, recovery: Option<F>) {
        if self.phase != Phase::Active || self.backing_off() {
            return;
        }
        let answer = match app {
            Some(f) => f,
            None if self.server_accepts() => {
                self.used();
                return;
            }
            None => F::ClientToken,
        };
        if answer.fatal() {
            self.phase = Phase::Closed;
            return;
        }
        if let Some(ms) = answer.backoff_ms(false) {
            self.backoff(ms);
            return;
        }
        if (answer.token_401() || answer == F::LoginThrottled) && self.recover(recovery) {
            if twice && app.is_some() {
                // Refused again right after the recovery: lost, not a loop.
                self.phase = Phase::Lost;
            } else {
                self.used();
            }
        }
        // 5xx, garbage with 200, transport failures: the application's problem.
    }

    fn read(&mut self, f: Option<F>) {
        self.wait_backoff();
        self.settle();
        if self.phase != Phase::Active {
            return;
        }
        let mut answer = f;
        if let Some(x) = answer
            && x.transient()
        {
            self.now += S;
            answer = None;
        }
        let answer = match answer {
            Some(x) => x,
            None if self.server_accepts() => {
                self.used();
                return;
            }
            None => F::ClientToken,
        };
        if answer.fatal() {
            self.phase = Phase::Closed;
        } else if let Some(ms) = answer.backoff_ms(false) {
            self.backoff(ms);
        } else if answer.token_401() || answer == F::LoginThrottled {
            // One recovery inside the operation, then the read again.
            self.new_tokens();
        }
    }

    fn switch(&mut self, other: bool, f: Option<F>) {
        self.wait_backoff();
        self.settle();
        if self.phase != Phase::Active {
            return;
        }
        if self.v3 {
            // Local: the account travels in IG-ACCOUNT-ID.
            self.other_account = other;
            return;
        }
        let mut answer = f;
        if let Some(x) = answer
            && x.transient()
        {
            self.now += S;
            answer = None;
        }
        match answer {
            None => {
                if !self.server_accepts() {
                    // One re-login inside the operation (re-selecting the account),
                    // then the switch again.
                    self.new_tokens();
                }
                self.other_account = other;
                self.used();
            }
            Some(x) if x.fatal() => self.phase = Phase::Closed,
            Some(x) if x.backoff_ms(false).is_some() => {
                self.backoff(x.backoff_ms(false).unwrap_or_default());
            }
            // A 200 without new tokens keeps the old ones: switched.
            Some(x) if x.garbage() => self.other_account = other,
            Some(_) => {
                self.new_tokens();
                self.other_account = other;
                self.used();
            }
        }
    }

    fn logout(&mut self) {
        self.wait_backoff();
        self.settle();
        self.phase = Phase::LoggedOut;
    }
}

struct IgModel;

impl ReferenceStateMachine for IgModel {
    type State = Model;
    type Transition = T;

    fn init_state() -> BoxedStrategy<Model> {
        prop_oneof![
            3 => Just(LoginFlow::V2),
            3 => Just(LoginFlow::V3),
            1 => Just(LoginFlow::V1),
            1 => Just(LoginFlow::EncryptedV2),
            1 => Just(LoginFlow::WebPlatform),
        ]
        .prop_map(|flow| Model {
            flow,
            v3: flow == LoginFlow::V3,
            phase: Phase::LoggedOut,
            now: 0,
            backoff_until: None,
            server_ok: false,
            cst_expires: 0,
            refresh_due: 0,
            other_account: false,
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<T> {
        let login = prop_oneof![
            2 => Just(Vec::new()),
            2 => proptest::collection::vec(transient_f(), 1..=4),
            2 => any_f().prop_map(|f| vec![f]),
        ];
        let advance = prop_oneof![
            4 => prop_oneof![Just(S), Just(5 * S), Just(30 * S), Just(59 * S), Just(61 * S), Just(600 * S)],
            1 => prop_oneof![Just(2 * 3600 * S), Just(7 * 3600 * S), Just(26 * 3600 * S)],
        ];
        prop_oneof![
            3 => login.prop_map(T::Login),
            6 => (proptest::option::weighted(0.6, any_f()), proptest::bool::weighted(0.15), proptest::option::weighted(0.5, any_f()))
                .prop_map(|(app, twice, recovery)| T::App { app, twice, recovery }),
            2 => proptest::option::of(any_f()).prop_map(T::Read),
            2 => (any::<bool>(), proptest::option::of(any_f())).prop_map(|(other, fault)| T::Switch { other, fault }),
            1 => proptest::option::of(any_f()).prop_map(T::Logout),
            1 => Just(T::ExpireServer),
            4 => advance.prop_map(T::Advance),
        ]
        .boxed()
    }

    fn apply(mut m: Model, t: &T) -> Model {
        if m.phase == Phase::Closed {
            if let T::Advance(d) = t {
                m.now += d;
            }
            return m;
        }
        match t {
            T::Login(faults) => {
                m.wait_backoff();
                m.settle();
                m.login(faults);
            }
            T::App {
                app,
                twice,
                recovery,
            } => m.app(*app, *twice, *recovery),
            T::Read(f) => m.read(*f),
            T::Switch { other, fault } => m.switch(*other, *fault),
            T::Logout(_) => m.logout(),
            T::ExpireServer => m.server_ok = false,
            T::Advance(d) => {
                let end = m.now + d;
                m.run_until(end);
            }
        }
        if m.phase != Phase::Active {
            m.server_ok = false;
            m.other_account = false;
        }
        m.settle();
        m
    }
}

struct Harness {
    sim: Sim<IgSession, Faulty<FakeIg>>,
    v3: bool,
    /// Credential hashes the machine held once and replaced or forgot.
    retired: HashSet<u64>,
    /// Ops the machine told us about (submitted, recovery, pending).
    ops: Vec<OpId>,
    step: usize,
}

impl Harness {
    fn held_credentials(&self) -> Option<u64> {
        let snap = self.sim.machine.snapshot()?;
        let mut headers = http::HeaderMap::new();
        let persisted = snap.expose_secrets();
        match &persisted.tokens {
            PersistedTokens::Cst { cst, xst } => {
                headers.insert("cst", cst.parse().ok()?);
                headers.insert("x-security-token", xst.parse().ok()?);
            }
            PersistedTokens::OAuth { access_token, .. } => {
                headers.insert(
                    "authorization",
                    format!("Bearer {access_token}").parse().ok()?,
                );
            }
            _ => return None,
        }
        // The hash must match what the machine stamps; checked in `credentials_seen`.
        credentials_hash(&headers)
    }

    fn run_intent(&mut self, intent: IgIntent) {
        match self.sim.submit(intent) {
            Ok(op) => {
                self.ops.push(op);
                let _ = self.sim.wait_for(op);
            }
            Err(e) => assert_eq!(e, broker_session::UsageError::SessionClosed),
        }
    }
}

fn elapsed_ms(sim: &Sim<IgSession, Faulty<FakeIg>>) -> u64 {
    u64::try_from(sim.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

struct IgMachineTest;

impl StateMachineTest for IgMachineTest {
    type SystemUnderTest = Harness;
    type Reference = IgModel;

    fn init_test(m: &Model) -> Harness {
        let fake = FakeIg::default();
        let clock = VirtualClock::new();
        let machine = IgSession::new(
            session_config(&fake, m.flow),
            broker_session::RngSeed::from_u64(1),
            clock.now(),
        )
        .unwrap();
        let broker = Faulty::new(fake, FaultPlan::default(), clock.now());
        let mut sim = Sim::with_clock(machine, broker, clock);
        // Exchanges take no virtual time, so the model can predict every instant.
        sim.latency = Duration::ZERO;
        Harness {
            sim,
            v3: m.v3,
            retired: HashSet::new(),
            ops: Vec::new(),
            step: 0,
        }
    }

    fn apply(mut h: Harness, model: &Model, t: T) -> Harness {
        h.step += 1;
        let before_seen = h.sim.broker.seen.len();
        let before_creds = h.held_credentials();
        let was_closed = matches!(h.sim.machine.state(), IgState::Closed { .. });
        let had_tokens = h.sim.machine.snapshot().is_some();
        let session_path = |v3: bool| {
            if v3 {
                Target::Path("/session/refresh-token".into())
            } else {
                Target::MethodPath(http::Method::POST, "/session".into())
            }
        };
        match &t {
            T::Login(faults) => {
                for f in faults.iter().rev() {
                    h.sim.broker.fail_next(
                        Target::MethodPath(http::Method::POST, "/session".into()),
                        f.failure(),
                    );
                }
                h.run_intent(IgIntent::Login);
            }
            T::App {
                app,
                twice,
                recovery,
            } => {
                if let Some(r) = recovery {
                    h.sim.broker.fail_next(session_path(h.v3), r.failure());
                }
                if let Some(a) = app {
                    h.sim
                        .broker
                        .fail_next(Target::Path("/accounts".into()), a.failure());
                    if *twice {
                        h.sim
                            .broker
                            .fail_next(Target::Path("/accounts".into()), a.failure());
                    }
                }
                let request = accounts_request(&h.sim.broker.inner);
                match h.sim.app_request(&request) {
                    Ok(out) => {
                        assert!(
                            out.sends <= 2,
                            "an application request sent {} times",
                            out.sends
                        );
                        if let Some(Observation::Recover { op }) = out.observation {
                            h.ops.push(op);
                        }
                        if let Some(Observation::BackOff { until }) = out.observation {
                            assert!(until > h.sim.now().mono);
                        }
                    }
                    Err(AuthorizeError::Pending { op }) => h.ops.push(op),
                    Err(_) => {}
                }
            }
            T::Read(f) => {
                if let Some(f) = f {
                    h.sim.broker.fail_next(
                        Target::MethodPath(http::Method::GET, "/session".into()),
                        f.failure(),
                    );
                }
                h.run_intent(IgIntent::ReadSession {
                    fetch_tokens: false,
                });
            }
            T::Switch { other, fault } => {
                if let Some(f) = fault {
                    h.sim.broker.fail_next(
                        Target::MethodPath(http::Method::PUT, "/session".into()),
                        f.failure(),
                    );
                }
                let account_id = if *other { "ACC-OTHER" } else { "ACC-DEFAULT" };
                h.run_intent(IgIntent::SwitchAccount {
                    account_id: account_id.into(),
                    make_default: false,
                });
            }
            T::Logout(f) => {
                if let Some(f) = f {
                    h.sim.broker.fail_next(
                        Target::MethodPath(http::Method::DELETE, "/session".into()),
                        f.failure(),
                    );
                }
                h.run_intent(IgIntent::Logout);
            }
            T::ExpireServer => {
                if h.v3 {
                    h.sim.broker.inner.revoke_access_tokens();
                } else {
                    h.sim.broker.inner.expire_cst_sessions();
                }
            }
            T::Advance(ms) => h.sim.advance(Duration::from_millis(*ms)),
        }
        h.sim.pump();
        // Faults the step did not use do not leak into the next one.
        h.sim.broker.clear();

        let seen = &h.sim.broker.seen[before_seen..];
        let ctx = format!("step {} {t:?}; requests {seen:?}", h.step);
        // Closed: silence.
        if was_closed {
            assert!(seen.is_empty(), "requests after the session closed: {ctx}");
        }
        // No credentials: nothing authenticated goes out.
        if !had_tokens {
            assert!(
                seen.iter().all(|s| s.credentials.is_none()),
                "authenticated request without credentials: {ctx}"
            );
        }
        // Replaced or forgotten credentials are never sent again.
        for s in seen {
            if let Some(c) = s.credentials {
                assert!(!h.retired.contains(&c), "retired credentials sent: {ctx}");
            }
        }
        let after_creds = h.held_credentials();
        if let Some(c) = before_creds
            && after_creds != Some(c)
        {
            h.retired.insert(c);
        }
        // Bounded retries.
        let session_requests = seen
            .iter()
            .filter(|s| !s.path.ends_with("/accounts"))
            .count();
        let bound = match t {
            T::Advance(ms) => 2 + usize::try_from(ms / (40 * S)).unwrap_or(usize::MAX),
            _ => 8,
        };
        assert!(
            session_requests <= bound,
            "{session_requests} session requests: {ctx}"
        );
        // Every operation completed exactly once.
        let mut done = HashSet::new();
        for e in &h.sim.events {
            if let Event::Completed { op, .. } = e {
                assert!(done.insert(*op), "{op} completed twice: {ctx}");
            }
        }
        for op in &h.ops {
            assert!(done.contains(op), "{op} never completed: {ctx}");
        }
        // The machine's state is the model's.
        assert_eq!(
            project(&h),
            expect(model),
            "state differs from the model: {ctx}"
        );
        assert_eq!(elapsed_ms(&h.sim), model.now, "virtual time differs: {ctx}");
        h
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Proj {
    LoggedOut,
    Active(AuthMode, String),
    BackingOff(u64),
    Lost,
    Closed,
}

fn project(h: &Harness) -> Proj {
    let now = h.sim.now().mono;
    match h.sim.machine.state() {
        IgState::LoggedOut => Proj::LoggedOut,
        IgState::Active { account_id, mode } => Proj::Active(mode, account_id),
        IgState::BackingOff { until } => {
            let left = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX);
            Proj::BackingOff(elapsed_ms(&h.sim) + left)
        }
        IgState::Lost { .. } => Proj::Lost,
        IgState::Closed { .. } => Proj::Closed,
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
        Phase::LoggedOut => Proj::LoggedOut,
        Phase::Active => Proj::Active(
            if m.v3 { AuthMode::OAuth } else { AuthMode::Cst },
            if m.other_account {
                "ACC-OTHER"
            } else {
                "ACC-DEFAULT"
            }
            .into(),
        ),
        Phase::Lost => Proj::Lost,
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
    fn ig_machine_follows_the_model(sequential 1..40 => IgMachineTest);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A saved session resumed in a fresh machine (another process) is checked, never
    /// replaced by a login: valid tokens resume the session, stale ones end the resume
    /// with an error and leave it logged out.
    #[test]
    fn resume_checks_tokens_and_never_logs_in(
        v3 in any::<bool>(),
        idle_s in prop_oneof![Just(1u64), Just(55), Just(65), Just(700), Just(5 * 3600), Just(7 * 3600)],
        expire in any::<bool>(),
        fault in proptest::option::of(prop_oneof![Just(F::S500), Just(F::Timeout), Just(F::Malformed), Just(F::S429), Just(F::ClientToken)]),
    ) {
        let fake = FakeIg::default();
        let clock = VirtualClock::new();
        let flow = if v3 { LoginFlow::V3 } else { LoginFlow::V2 };
        let config = session_config(&fake, flow);
        let machine = IgSession::new(config.clone(), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut first = Sim::with_clock(machine, fake, clock);
        first.latency = Duration::ZERO;
        first.run(IgIntent::Login).unwrap();
        let snapshot = first.machine.snapshot().unwrap();
        // The first process stops; time passes; IG may drop the tokens.
        let mut fake = first.broker;
        let mut clock = first.clock;
        clock.advance(Duration::from_secs(idle_s));
        if expire {
            fake.expire_cst_sessions();
            fake.revoke_access_tokens();
        }
        let logins_before = fake.stats.count("POST /session");
        let machine = IgSession::new(config, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
        let mut broker = Faulty::new(fake, FaultPlan::default(), clock.now());
        if let Some(f) = fault {
            broker.fail_next(Target::Any, f.failure());
        }
        let mut second = Sim::with_clock(machine, broker, clock);
        second.latency = Duration::ZERO;
        let result = second.run(IgIntent::Resume(snapshot));
        prop_assert_eq!(second.broker.inner.stats.count("POST /session"), logins_before, "a resume logged in");
        match result {
            Ok(_) => {
                let active = matches!(second.machine.state(), IgState::Active { .. });
                prop_assert!(active, "resumed but {:?}", second.machine.state());
                // And the resumed credentials work.
                let request = accounts_request(&second.broker.inner);
                let out = second.app_request(&request).unwrap();
                prop_assert_eq!(out.response.map(|r| r.status().as_u16()), Some(200));
            }
            Err(_) => {
                let state = second.machine.state();
                let settled = matches!(state, IgState::LoggedOut | IgState::BackingOff { .. });
                prop_assert!(settled, "failed resume left {:?}", state);
                prop_assert!(second.machine.snapshot().is_none(), "failed resume kept tokens");
            }
        }
    }
}
