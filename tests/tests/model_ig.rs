//! Model-based test of the IG machine: an abstract session (logged out, active,
//! backing off, lost, closed) predicts what the real machine, driven against the fake
//! IG on the virtual clock, must become after each generated step.
//!
//! Steps are chosen by the model's state (log in when logged out, use the session when
//! active) and interleave, at any point: lifecycle intents (login, logout, resume, a
//! logout while another operation is queued or in flight, a logout right after a
//! refresh fell due unattended, a 401 observed while the logout is in flight),
//! application calls with injected faults (each relevant 401 code, allowance 403, 429,
//! 5xx, malformed and truncated bodies, transport failures, refused connections),
//! login answers that arrive after the machine's own deadline, `expires_in` at the
//! edges (zero, negative, huge, not a number), server-side token expiry, and time that
//! passes with or without the machine being driven.
//!
//! After every step the state is compared with the model, and these hold (checked as
//! each request leaves, not after the step):
//! - after a logout is submitted, no request leaves but that logout until the next
//!   login or resume;
//! - once IG rejected the credentials, no login request leaves, whatever the timing of
//!   the rejection;
//! - at most one session request in flight; replaced or forgotten credentials are
//!   never sent again (recorded the moment the machine drops them);
//! - requests per unit of virtual time are bounded (no loop);
//! - `Wait` is always in the future; every operation completes exactly once.
//!
//! The roles of a shared session (owner and followers, adoption, refusals, fleet-wide
//! recovery, take-over, demotion, and an owner paused past its lease that wakes up)
//! are modelled over a whole fleet in `shared_ig.rs`
//! (`a_fleet_keeps_its_promises_whatever_happens`).
//!
//! `PROPTEST_CASES` sets the number of cases (default 64). The step coverage by state
//! is printed at the end: `cargo test -p broker-session-testkit --test model_ig --
//! --nocapture`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use broker_session::ig::{
    AuthMode, IgIntent, IgOutcome, IgSession, IgState, LoginFlow, PersistedTokens, SessionSnapshot,
};
use broker_session::{
    AuthorizeError, Event, FailureKind, Input, Machine, Observation, OpId, Output, Transmit,
};
use broker_session_testkit::faults::{Failure, FaultPlan, Faulty, Target, credentials_hash};
use broker_session_testkit::ig::{FakeIg, LOGIN_THROTTLED, accounts_request, session_config};
use broker_session_testkit::sim::{FakeBroker as _, Reply, VirtualClock};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::TestRunner;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

const S: u64 = 1000;
const ALLOWANCE_MS: u64 = 60 * S;
const LOGIN_THROTTLE_MS: u64 = 180 * S;
const CST_IDLE_MS: u64 = 6 * 3600 * S;
/// The machine's request deadline (the default, 30 s).
const DEADLINE_MS: u64 = 30 * S;
/// A v3 token lives 60 s and is refreshed 10 s before it expires.
const REFRESH_AFTER_MS: u64 = 50 * S;
/// `expires_in` values no session can use.
const EXPIRES_EDGES: [&str; 7] = [
    "0",
    "\"0\"",
    "-5",
    "\"-60\"",
    "99999999999999999999",
    "\"99999999\"",
    "\"sixty\"",
];

/// A fault, named by what it is rather than by its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    S500,
    S503Html,
    Timeout,
    Reset,
    Refused,
    Malformed,
    Truncated,
    /// A 200 token answer whose `expires_in` is `EXPIRES_EDGES[i]`.
    Expires(usize),
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
            Self::Refused => Failure::transport(FailureKind::Connect),
            Self::Malformed => Failure::malformed(200),
            Self::Truncated => Failure::truncated(200),
            Self::Expires(i) => Failure::Respond {
                status: 200,
                body: format!(
                    r#"{{"clientId":"100001","accountId":"ACC-DEFAULT","oauthToken":{{"access_token":"edge-access","refresh_token":"edge-refresh","scope":"profile","token_type":"Bearer","expires_in":{}}},"access_token":"edge-access","refresh_token":"edge-refresh","expires_in":{}}}"#,
                    EXPIRES_EDGES[i % EXPIRES_EDGES.len()],
                    EXPIRES_EDGES[i % EXPIRES_EDGES.len()]
                )
                .into_bytes(),
            },
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

    /// Retried by any session request but a login (see `login_retried`).
    fn transient(self) -> bool {
        matches!(
            self,
            Self::S500 | Self::S503Html | Self::Timeout | Self::Reset | Self::Refused
        )
    }

    /// A login is repeated only when IG answered with a server error or the
    /// connection never opened.
    fn login_retried(self) -> bool {
        matches!(self, Self::S500 | Self::S503Html | Self::Refused)
    }

    fn token_401(self) -> bool {
        matches!(
            self,
            Self::ClientToken | Self::AccountToken | Self::OAuthToken | Self::NoCode401
        )
    }

    fn garbage(self) -> bool {
        matches!(self, Self::Malformed | Self::Truncated | Self::Expires(_))
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

/// Any fault; the two fatal ones (they end the test's useful life) are rare.
fn any_f() -> BoxedStrategy<F> {
    use F::*;
    prop_oneof![
        4 => Just(S500),
        3 => Just(S503Html),
        4 => Just(Timeout),
        3 => Just(Reset),
        3 => Just(Refused),
        3 => Just(Malformed),
        2 => Just(Truncated),
        3 => (0..EXPIRES_EDGES.len()).prop_map(Expires),
        3 => Just(S429),
        3 => Just(Allowance),
        3 => Just(LoginThrottled),
        1 => Just(BadCredentials),
        1 => Just(ApiKeyInvalid),
        4 => Just(ClientToken),
        3 => Just(AccountToken),
        4 => Just(OAuthToken),
        3 => Just(NoCode401),
    ]
    .boxed()
}

/// Faults on a login (or a recovery): the ones that close the session are rare.
fn login_f() -> BoxedStrategy<F> {
    use F::*;
    prop_oneof![
        3 => Just(S500),
        2 => Just(S503Html),
        3 => Just(Timeout),
        2 => Just(Reset),
        2 => Just(Refused),
        2 => Just(Malformed),
        1 => Just(Truncated),
        3 => (0..EXPIRES_EDGES.len()).prop_map(Expires),
        2 => Just(S429),
        1 => Just(Allowance),
        2 => Just(LoginThrottled),
        1 => Just(BadCredentials),
        1 => Just(ApiKeyInvalid),
        1 => Just(NoCode401),
    ]
    .boxed()
}

fn transient_f() -> impl Strategy<Value = F> {
    prop_oneof![
        Just(F::S500),
        Just(F::S503Html),
        Just(F::Timeout),
        Just(F::Reset),
        Just(F::Refused),
    ]
}

/// How a login's late answer (after the machine's deadline) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    Success,
    BadCredentials,
    Throttled,
    S500,
}

/// What runs when the user logs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Busy {
    /// A v3 refresh fell due while nobody drove the machine (55 s unattended).
    RefreshDue,
    /// A read session, queued.
    QueuedRead,
    /// A login, queued.
    QueuedLogin,
    /// A read session, its request in flight.
    InFlightRead,
    /// A refresh (v3), its request in flight.
    InFlightRefresh,
    /// A switch to the other account (a `PUT /session` in flight for v2).
    InFlightSwitch,
    /// An application request stamped before the logout is refused with a 401 while
    /// the logout's request is in flight.
    App401,
}

#[derive(Clone, Debug)]
enum T {
    /// `Login`, its `POST /session` answered by these faults first.
    Login(Vec<F>),
    /// `Login` whose answer arrives after the machine's deadline for it.
    LateLogin(Late),
    /// `GET /accounts`; `app` answers the first send (twice with `twice`), `recovery`
    /// the recovery's first session request.
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
    /// `Logout` submitted while something else is going on.
    LogoutWhile(Busy),
    /// `Logout` and at once a new `Login`.
    LogoutThenLogin,
    /// `Resume` with the last session's snapshot (checked, perhaps refreshed), then
    /// `Logout`.
    ResumeThenLogout,
    /// IG drops the session's tokens (maintenance, login elsewhere).
    ExpireServer,
    /// Virtual time passes; the machine runs every timer at its deadline.
    Advance(u64),
    /// Virtual time passes unattended; the machine is driven only afterwards.
    Idle(u64),
    /// The application builds a new session (same configuration, same IG).
    Restart,
}

impl T {
    fn kind(&self) -> &'static str {
        match self {
            Self::Login(_) => "Login",
            Self::LateLogin(_) => "LateLogin",
            Self::App { app: None, .. } => "App",
            Self::App { .. } => "App+fault",
            Self::Read(_) => "Read",
            Self::Switch { .. } => "Switch",
            Self::Logout(_) => "Logout",
            Self::LogoutWhile(_) => "LogoutWhile",
            Self::LogoutThenLogin => "LogoutLogin",
            Self::ResumeThenLogout => "Resume",
            Self::ExpireServer => "Expire",
            Self::Advance(_) => "Advance",
            Self::Idle(_) => "Idle",
            Self::Restart => "Restart",
        }
    }
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
    /// The session was active once: a snapshot exists to resume.
    had_session: bool,
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

    /// Time passes without the machine being driven: whatever fell due runs once,
    /// at the end.
    fn idle(&mut self, ms: u64) {
        self.now += ms;
        if self.backoff_until.is_some_and(|u| u <= self.now) {
            self.backoff_until = None;
        }
    }

    fn refresh_now(&mut self) {
        // A refresh (or, when the refresh token is gone, its fallback login) gives new
        // tokens.
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
            if f.login_retried() {
                attempts += 1;
                if attempts >= 3 {
                    self.phase = Phase::LoggedOut;
                    return;
                }
                self.now += S << (attempts - 1);
                continue;
            }
            if f.transient() || f.garbage() {
                // No answer (never sent again), or one that cannot be used.
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

    /// A login whose answer comes only after the machine gave up on it.
    fn late_login(&mut self, late: Late) {
        self.now += DEADLINE_MS;
        // The login failed (unanswered): the old tokens, if any, are gone.
        self.phase = Phase::LoggedOut;
        match late {
            Late::BadCredentials => self.phase = Phase::Closed,
            Late::Throttled => self.backoff(LOGIN_THROTTLE_MS),
            // A late success is ignored, as is a late server error.
            Late::Success | Late::S500 => {}
        }
    }

    /// A reactive recovery whose first session request meets `f`. `true` when the
    /// session has fresh credentials afterwards.
    fn recover(&mut self, f: Option<F>) -> bool {
        let Some(f) = f else {
            self.new_tokens();
            return true;
        };
        if f.transient() {
            if !self.v3 && !f.login_retried() {
                // A re-login without an answer is not sent again: lost.
                self.phase = Phase::Lost;
                return false;
            }
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

    /// A logout submitted while something else was going on: that is cancelled, no
    /// timer runs any more; the logout waits only for a back-off to end.
    fn logout_while(&mut self, busy: Busy) {
        if busy == Busy::RefreshDue {
            self.idle(55 * S);
        }
        if let Some(u) = self.backoff_until.filter(|u| *u > self.now) {
            self.now = u;
        }
        self.backoff_until = None;
        self.phase = Phase::LoggedOut;
        self.other_account = false;
    }
}

struct IgModel;

fn weighted(arms: Vec<(u32, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    Union::new_weighted(arms.into_iter().filter(|(w, _)| *w > 0).collect()).boxed()
}

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
            had_session: false,
        })
        .boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<T> {
        let login = prop_oneof![
            5 => Just(Vec::new()),
            2 => proptest::collection::vec(transient_f(), 1..=4),
            2 => login_f().prop_map(|f| vec![f]),
        ]
        .prop_map(T::Login)
        .boxed();
        let late = prop_oneof![
            3 => Just(Late::Success),
            1 => Just(Late::BadCredentials),
            2 => Just(Late::Throttled),
            1 => Just(Late::S500),
        ]
        .prop_map(T::LateLogin)
        .boxed();
        let app = (
            proptest::option::weighted(0.6, any_f()),
            proptest::bool::weighted(0.15),
            proptest::option::weighted(0.5, login_f()),
        )
            .prop_map(|(app, twice, recovery)| T::App {
                app,
                twice,
                recovery,
            })
            .boxed();
        let read = proptest::option::weighted(0.5, any_f())
            .prop_map(T::Read)
            .boxed();
        let switch = (any::<bool>(), proptest::option::weighted(0.5, any_f()))
            .prop_map(|(other, fault)| T::Switch { other, fault })
            .boxed();
        let logout = proptest::option::weighted(0.3, any_f())
            .prop_map(T::Logout)
            .boxed();
        let busy = prop_oneof![
            Just(Busy::RefreshDue),
            Just(Busy::QueuedRead),
            Just(Busy::QueuedLogin),
            Just(Busy::InFlightRead),
            Just(Busy::InFlightRefresh),
            Just(Busy::InFlightSwitch),
            Just(Busy::App401),
        ]
        .prop_map(T::LogoutWhile)
        .boxed();
        let advance = prop_oneof![
            4 => prop_oneof![Just(S), Just(5 * S), Just(30 * S), Just(59 * S), Just(61 * S), Just(600 * S)],
            1 => prop_oneof![Just(2 * 3600 * S), Just(7 * 3600 * S), Just(26 * 3600 * S)],
        ]
        .prop_map(T::Advance)
        .boxed();
        let idle = prop_oneof![
            Just(5 * S),
            Just(55 * S),
            Just(70 * S),
            Just(700 * S),
            Just(7 * 3600 * S)
        ]
        .prop_map(T::Idle)
        .boxed();
        let expire = Just(T::ExpireServer).boxed();
        let resume = Just(T::ResumeThenLogout).boxed();
        let relogin = Just(T::LogoutThenLogin).boxed();
        match m.phase {
            // Closed sends nothing more: a step confirms it, then a new session.
            Phase::Closed => weighted(vec![
                (6, Just(T::Restart).boxed()),
                (1, advance),
                (1, login),
                (1, app),
                (1, logout),
            ]),
            Phase::LoggedOut | Phase::Lost => weighted(vec![
                (10, login),
                (3, late),
                (
                    if m.had_session && !m.backing_off() {
                        2
                    } else {
                        0
                    },
                    resume,
                ),
                (1, app),
                (1, read),
                (1, logout),
                (1, busy),
                (2, advance),
                (1, idle),
            ]),
            Phase::Active => weighted(vec![
                (12, app),
                (3, read),
                (3, switch),
                (2, logout),
                (4, busy),
                (1, relogin),
                (2, expire),
                (4, advance),
                (3, idle),
                (1, login),
                (1, late),
            ]),
        }
    }

    fn preconditions(m: &Model, t: &T) -> bool {
        match t {
            // Resume needs a logged-out machine and a snapshot to resume.
            T::ResumeThenLogout => {
                m.had_session
                    && !m.backing_off()
                    && matches!(m.phase, Phase::LoggedOut | Phase::Lost)
            }
            _ => true,
        }
    }

    fn apply(mut m: Model, t: &T) -> Model {
        if let T::Restart = t {
            return Model {
                phase: Phase::LoggedOut,
                backoff_until: None,
                server_ok: false,
                other_account: false,
                had_session: false,
                ..m
            };
        }
        if m.phase == Phase::Closed {
            match t {
                T::Advance(d) | T::Idle(d) => m.now += d,
                _ => {}
            }
            return m;
        }
        match t {
            T::Login(faults) => {
                m.wait_backoff();
                m.settle();
                m.login(faults);
            }
            T::LateLogin(late) => {
                m.wait_backoff();
                m.settle();
                m.late_login(*late);
            }
            T::App {
                app,
                twice,
                recovery,
            } => m.app(*app, *twice, *recovery),
            T::Read(f) => m.read(*f),
            T::Switch { other, fault } => m.switch(*other, *fault),
            T::Logout(_) => m.logout(),
            T::LogoutWhile(busy) => m.logout_while(*busy),
            T::LogoutThenLogin => {
                m.logout_while(Busy::QueuedRead);
                m.login(&[]);
            }
            T::ResumeThenLogout => {
                // The snapshot is used up; the session ends logged out either way.
                m.phase = Phase::LoggedOut;
                m.had_session = false;
            }
            T::ExpireServer => m.server_ok = false,
            T::Advance(d) => {
                let end = m.now + d;
                m.run_until(end);
            }
            T::Idle(d) => m.idle(*d),
            T::Restart => {}
        }
        if m.phase != Phase::Active {
            m.server_ok = false;
            m.other_account = false;
        }
        m.settle();
        if m.phase == Phase::Active {
            m.had_session = true;
        }
        m
    }
}

/// Steps run, by the machine's state at the step's start and the step's kind.
static COVERAGE: Mutex<BTreeMap<(&'static str, &'static str), usize>> = Mutex::new(BTreeMap::new());

fn state_name(s: &IgState) -> &'static str {
    match s {
        IgState::LoggedOut => "LoggedOut",
        IgState::Active { .. } => "Active",
        IgState::BackingOff { .. } => "BackingOff",
        IgState::Lost { .. } => "Lost",
        IgState::Closed { .. } => "Closed",
        _ => "other",
    }
}

fn print_coverage() {
    let c = COVERAGE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let total: usize = c.values().sum();
    if total == 0 {
        return;
    }
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kinds: Vec<&str> = Vec::new();
    for ((s, k), n) in c.iter() {
        *states.entry(s).or_default() += n;
        if !kinds.contains(k) {
            kinds.push(k);
        }
    }
    kinds.sort_unstable();
    let pct = |n: usize| 100.0 * n as f64 / total as f64;
    eprintln!("\nIG model: step coverage by state at the step's start ({total} steps)");
    eprint!("{:<11} {:>6} {:>6}", "state", "steps", "%");
    for k in &kinds {
        eprint!(" {k:>11}");
    }
    eprintln!();
    for (s, n) in &states {
        eprint!("{s:<11} {n:>6} {:>5.1}%", pct(*n));
        for k in &kinds {
            eprint!(" {:>11}", c.get(&(*s, *k)).copied().unwrap_or(0));
        }
        eprintln!();
    }
}

/// The transport's part, done by hand so every request can be checked as it leaves
/// and an answer can be held back past the machine's deadline.
struct Harness {
    machine: IgSession,
    broker: Faulty<FakeIg>,
    clock: VirtualClock,
    events: Vec<Event<IgState, IgOutcome>>,
    v3: bool,
    flow: LoginFlow,
    /// The next session request matching this is answered only after its deadline.
    late: Option<Target>,
    /// Credentials the machine holds now.
    held: Option<u64>,
    /// Credential hashes the machine held once and replaced or forgot.
    retired: HashSet<u64>,
    /// A logout was submitted and no login or resume since; how many logouts.
    logouts_pending: Option<usize>,
    /// `DELETE /session` requests since the first of those logouts.
    deletes_since_logout: usize,
    /// IG rejected the credentials (answer delivered in time or late).
    rejected: bool,
    /// Virtual time (ms) of every session request, for the rate bound.
    sent_at: Vec<u64>,
    /// Index in `sent_at` of the current step's first request.
    step_sends: usize,
    /// The last snapshot of an active session, for `Resume`.
    snapshot: Option<SessionSnapshot>,
    /// Ops the machine told us about (submitted, recovery, pending).
    ops: Vec<OpId>,
    step: usize,
    ctx: String,
}

/// Exchanges after which the harness declares a loop.
const EXCHANGE_LIMIT: usize = 10_000;

impl Harness {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn held_credentials(&self) -> Option<u64> {
        let snap = self.machine.snapshot()?;
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
        credentials_hash(&headers)
    }

    /// Records a change of credentials the moment it happens.
    fn track(&mut self) {
        let now = self.held_credentials();
        if now != self.held {
            if let Some(old) = self.held {
                self.retired.insert(old);
            }
            self.held = now;
        }
    }

    fn submit(&mut self, intent: IgIntent) -> Option<OpId> {
        let (login, logout) = match &intent {
            IgIntent::Login | IgIntent::Resume(_) => (true, false),
            IgIntent::Logout => (false, true),
            _ => (false, false),
        };
        let now = self.clock.now();
        match self.machine.submit(intent, now) {
            Ok(op) => {
                self.ops.push(op);
                if login {
                    self.logouts_pending = None;
                    // Resumed credentials are the user's explicit choice.
                    if let Some(c) = self.held_credentials() {
                        self.retired.remove(&c);
                    }
                }
                if logout {
                    if self.logouts_pending.is_none() {
                        self.deletes_since_logout = 0;
                    }
                    *self.logouts_pending.get_or_insert(0) += 1;
                }
                self.track();
                Some(op)
            }
            Err(e) => {
                assert_eq!(e, broker_session::UsageError::SessionClosed, "{}", self.ctx);
                None
            }
        }
    }

    /// Checks a session request as it leaves.
    fn check_send(&mut self, t: &Transmit) {
        let method = t.request.method().clone();
        let path = t.request.uri().path().to_owned();
        let ctx = &self.ctx;
        assert!(
            !matches!(self.machine.state(), IgState::Closed { .. }),
            "request after the session closed: {method} {path}; {ctx}"
        );
        if let Some(logouts) = self.logouts_pending {
            let delete = method == http::Method::DELETE && path.ends_with("/session");
            assert!(
                delete && self.deletes_since_logout < logouts,
                "{method} {path} left after a logout: {ctx}"
            );
            self.deletes_since_logout += 1;
        }
        let login = method == http::Method::POST && path.ends_with("/session");
        assert!(
            !(login && self.rejected),
            "a login after IG rejected the credentials: {ctx}"
        );
        if let Some(c) = credentials_hash(t.request.headers()) {
            assert!(
                !self.retired.contains(&c),
                "retired credentials sent ({method} {path}): {ctx}"
            );
            assert!(
                self.held.is_some(),
                "credentials sent while none are held: {ctx}"
            );
        }
        let now = self.elapsed_ms();
        self.sent_at.push(now);
        // Within one step (one user action, or time passing): user actions take no
        // virtual time here, so only requests the machine sends on its own count.
        let recent = self.sent_at[self.step_sends..]
            .iter()
            .filter(|at| **at + S > now)
            .count();
        assert!(recent <= 12, "{recent} session requests within 1 s: {ctx}");
        assert!(
            t.deadline > self.clock.now().mono,
            "deadline not in the future: {ctx}"
        );
    }

    fn note_rejection(&mut self, t: &Transmit, reply: &Reply) {
        let login = t.request.method() == http::Method::POST
            && t.request.uri().path().ends_with("/session");
        if let Reply::Response(r) = reply
            && login
            && r.status() == 401
            && String::from_utf8_lossy(r.body()).contains("error.security.invalid-details")
        {
            self.rejected = true;
        }
    }

    /// Drains the machine's output, answering each request, until it waits.
    fn pump(&mut self) -> Option<std::time::Instant> {
        for _ in 0..EXCHANGE_LIMIT {
            let now = self.clock.now();
            match self.machine.poll_output(now) {
                Output::Send(t) => self.exchange(t),
                Output::Event(e) => self.events.push(e),
                Output::Wait(w) => {
                    if let Some(at) = w {
                        assert!(at > now.mono, "Wait not in the future: {}", self.ctx);
                    }
                    return w;
                }
                _ => panic!("unknown output"),
            }
        }
        panic!("no rest after {EXCHANGE_LIMIT} outputs: {}", self.ctx);
    }

    /// Polls until the machine wants to send (returned, not answered) or waits.
    fn poll_send(&mut self) -> Option<Transmit> {
        loop {
            let now = self.clock.now();
            match self.machine.poll_output(now) {
                Output::Send(t) => {
                    self.check_send(&t);
                    return Some(t);
                }
                Output::Event(e) => self.events.push(e),
                Output::Wait(w) => {
                    if let Some(at) = w {
                        assert!(at > now.mono, "Wait not in the future: {}", self.ctx);
                    }
                    return None;
                }
                _ => panic!("unknown output"),
            }
        }
    }

    fn exchange(&mut self, t: Transmit) {
        self.check_send(&t);
        let method = t.request.method().clone();
        let path = t.request.uri().path().to_owned();
        let late = self
            .late
            .as_ref()
            .is_some_and(|target| target.matches(&method, &path));
        let now = self.clock.now();
        let reply = self.broker.handle(&t.request, now);
        if late {
            self.late = None;
            // The machine's deadline passes first; then the answer arrives.
            self.clock.advance_to(t.deadline);
            let now = self.clock.now();
            self.machine.handle_input(Input::Timeout, now);
            self.track();
            if let Some(sent) = self.poll_send() {
                panic!(
                    "{} {} sent while the login's answer may come: {}",
                    sent.request.method(),
                    sent.request.uri().path(),
                    self.ctx
                );
            }
        }
        self.deliver(&t, reply);
    }

    fn deliver(&mut self, t: &Transmit, reply: Reply) {
        self.note_rejection(t, &reply);
        let input = match reply {
            Reply::Response(response) => Input::Response { id: t.id, response },
            Reply::Fail(failure) => Input::Failed { id: t.id, failure },
        };
        let now = self.clock.now();
        self.machine.handle_input(input, now);
        self.track();
    }

    fn wait_for(&mut self, op: OpId) {
        for _ in 0..EXCHANGE_LIMIT {
            let wait = self.pump();
            if self.completed(op) {
                return;
            }
            match wait {
                Some(at) => {
                    self.clock.advance_to(at);
                    let now = self.clock.now();
                    self.machine.handle_input(Input::Timeout, now);
                    self.track();
                }
                None => panic!("machine idle while {op} is incomplete: {}", self.ctx),
            }
        }
        panic!("{op} did not complete: {}", self.ctx);
    }

    fn completed(&self, op: OpId) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Completed { op: o, .. } if *o == op))
    }

    fn run(&mut self, intent: IgIntent) {
        if let Some(op) = self.submit(intent) {
            self.wait_for(op);
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.clock.now().mono + d;
        loop {
            match self.pump() {
                Some(at) if at <= end => {
                    self.clock.advance_to(at);
                    let now = self.clock.now();
                    self.machine.handle_input(Input::Timeout, now);
                    self.track();
                }
                _ => break,
            }
        }
        self.clock.advance_to(end);
        self.pump();
    }

    /// Stamps an application request, checking what leaves.
    fn authorize(
        &mut self,
        req: &mut http::Request<Vec<u8>>,
    ) -> Result<broker_session::AuthStamp, AuthorizeError> {
        let now = self.clock.now();
        let r = self.machine.authorize(req, now);
        self.track();
        if r.is_ok() {
            assert!(
                self.logouts_pending.is_none(),
                "credentials handed out after a logout: {}",
                self.ctx
            );
            if let Some(c) = credentials_hash(req.headers()) {
                assert!(
                    !self.retired.contains(&c),
                    "retired credentials stamped: {}",
                    self.ctx
                );
            }
        }
        r
    }

    /// An application request the way a transport sends it: authorize, send, observe;
    /// after a `Replay` or a successful `Recover`, once more.
    fn app_request(&mut self) {
        let request = accounts_request(&self.broker.inner);
        let mut sends = 0;
        let mut waited = 0;
        while sends < 2 {
            let mut req = broker_session_testkit::sim::clone_request(&request);
            let stamp = match self.authorize(&mut req) {
                Ok(s) => s,
                Err(AuthorizeError::Pending { op }) if waited < 2 => {
                    waited += 1;
                    self.ops.push(op);
                    self.wait_for(op);
                    continue;
                }
                Err(_) => return,
            };
            sends += 1;
            let now = self.clock.now();
            let Reply::Response(resp) = self.broker.handle(&req, now) else {
                return;
            };
            let now = self.clock.now();
            let obs = self.machine.observe(&resp, stamp, now);
            self.track();
            match obs {
                Observation::Replay => {}
                Observation::Recover { op } => {
                    self.ops.push(op);
                    self.wait_for(op);
                    let ok = self.events.iter().any(
                        |e| matches!(e, Event::Completed { op: o, result: Ok(_) } if *o == op),
                    );
                    if !ok {
                        return;
                    }
                }
                Observation::BackOff { until } => {
                    assert!(until > self.clock.now().mono, "{}", self.ctx);
                    return;
                }
                _ => return,
            }
        }
    }

    /// Submits `Logout` while `busy` goes on, then runs it to the end.
    fn logout_while(&mut self, busy: Busy) {
        let mut held: Option<(Transmit, Reply)> = None;
        let mut stamp = None;
        match busy {
            Busy::RefreshDue => self.clock.advance(Duration::from_secs(55)),
            Busy::QueuedRead => {
                self.submit(IgIntent::ReadSession {
                    fetch_tokens: false,
                });
            }
            Busy::QueuedLogin => {
                self.submit(IgIntent::Login);
            }
            Busy::InFlightRead | Busy::InFlightRefresh | Busy::InFlightSwitch => {
                let intent = match busy {
                    Busy::InFlightRead => IgIntent::ReadSession {
                        fetch_tokens: false,
                    },
                    Busy::InFlightRefresh => IgIntent::Refresh,
                    _ => IgIntent::SwitchAccount {
                        account_id: "ACC-OTHER".into(),
                        make_default: false,
                    },
                };
                self.submit(intent);
                if let Some(t) = self.poll_send() {
                    let now = self.clock.now();
                    let reply = self.broker.handle(&t.request, now);
                    held = Some((t, reply));
                }
            }
            Busy::App401 => {
                let mut req = accounts_request(&self.broker.inner);
                stamp = self.authorize(&mut req).ok();
            }
        }
        let Some(logout) = self.submit(IgIntent::Logout) else {
            return;
        };
        if let Some((t, reply)) = held {
            self.deliver(&t, reply);
        }
        if let Some(stamp) = stamp {
            // The logout's request is on its way when the 401 is observed.
            let delete = self.poll_send();
            let code = if self.v3 {
                "error.security.oauth-token-invalid"
            } else {
                "error.security.client-token-invalid"
            };
            let refused = http::Response::builder()
                .status(401)
                .body(format!(r#"{{"errorCode":"{code}"}}"#).into_bytes())
                .unwrap_or_default();
            let now = self.clock.now();
            let obs = self.machine.observe(&refused, stamp, now);
            assert!(
                !matches!(obs, Observation::Recover { .. } | Observation::Replay),
                "observe during a logout started {obs:?}: {}",
                self.ctx
            );
            if let Some(t) = delete {
                let now = self.clock.now();
                let reply = self.broker.handle(&t.request, now);
                self.deliver(&t, reply);
            }
        }
        self.wait_for(logout);
    }
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
        Harness {
            machine,
            broker,
            clock,
            events: Vec::new(),
            v3: m.v3,
            flow: m.flow,
            late: None,
            held: None,
            retired: HashSet::new(),
            logouts_pending: None,
            deletes_since_logout: 0,
            rejected: false,
            sent_at: Vec::new(),
            step_sends: 0,
            snapshot: None,
            ops: Vec::new(),
            step: 0,
            ctx: String::new(),
        }
    }

    fn apply(mut h: Harness, model: &Model, t: T) -> Harness {
        h.step += 1;
        h.ctx = format!("step {} {t:?}", h.step);
        h.step_sends = h.sent_at.len();
        if let Ok(mut c) = COVERAGE.lock() {
            *c.entry((state_name(&h.machine.state()), t.kind()))
                .or_default() += 1;
        }
        let before_seen = h.broker.seen.len();
        let session_path = |v3: bool| {
            if v3 {
                Target::Path("/session/refresh-token".into())
            } else {
                Target::MethodPath(http::Method::POST, "/session".into())
            }
        };
        let login_target = Target::MethodPath(http::Method::POST, "/session".into());
        match &t {
            T::Login(faults) => {
                for f in faults.iter().rev() {
                    h.broker.fail_next(login_target.clone(), f.failure());
                }
                h.run(IgIntent::Login);
            }
            T::LateLogin(late) => {
                match late {
                    Late::Success => {}
                    Late::BadCredentials => h
                        .broker
                        .fail_next(login_target.clone(), F::BadCredentials.failure()),
                    Late::Throttled => h
                        .broker
                        .fail_next(login_target.clone(), F::LoginThrottled.failure()),
                    Late::S500 => h.broker.fail_next(login_target.clone(), F::S500.failure()),
                }
                h.late = Some(login_target);
                h.run(IgIntent::Login);
            }
            T::App {
                app,
                twice,
                recovery,
            } => {
                if let Some(r) = recovery {
                    h.broker.fail_next(session_path(h.v3), r.failure());
                }
                if let Some(a) = app {
                    h.broker
                        .fail_next(Target::Path("/accounts".into()), a.failure());
                    if *twice {
                        h.broker
                            .fail_next(Target::Path("/accounts".into()), a.failure());
                    }
                }
                h.app_request();
            }
            T::Read(f) => {
                if let Some(f) = f {
                    h.broker.fail_next(
                        Target::MethodPath(http::Method::GET, "/session".into()),
                        f.failure(),
                    );
                }
                h.run(IgIntent::ReadSession {
                    fetch_tokens: false,
                });
            }
            T::Switch { other, fault } => {
                if let Some(f) = fault {
                    h.broker.fail_next(
                        Target::MethodPath(http::Method::PUT, "/session".into()),
                        f.failure(),
                    );
                }
                let account_id = if *other { "ACC-OTHER" } else { "ACC-DEFAULT" };
                h.run(IgIntent::SwitchAccount {
                    account_id: account_id.into(),
                    make_default: false,
                });
            }
            T::Logout(f) => {
                if let Some(f) = f {
                    h.broker.fail_next(
                        Target::MethodPath(http::Method::DELETE, "/session".into()),
                        f.failure(),
                    );
                }
                h.run(IgIntent::Logout);
            }
            T::LogoutWhile(busy) => h.logout_while(*busy),
            T::LogoutThenLogin => {
                let logout = h.submit(IgIntent::Logout);
                let login = h.submit(IgIntent::Login);
                for op in [logout, login].into_iter().flatten() {
                    h.wait_for(op);
                }
            }
            T::ResumeThenLogout => {
                let snapshot = h.snapshot.take().expect("a snapshot of the last session");
                let resume = h.submit(IgIntent::Resume(snapshot));
                assert!(resume.is_some(), "resume refused: {}", h.ctx);
                if let Some(op) = resume {
                    h.wait_for(op);
                }
                h.run(IgIntent::Logout);
            }
            T::ExpireServer => {
                if h.v3 {
                    h.broker.inner.revoke_access_tokens();
                } else {
                    h.broker.inner.expire_cst_sessions();
                }
            }
            T::Advance(ms) => h.advance(Duration::from_millis(*ms)),
            T::Idle(ms) => h.clock.advance(Duration::from_millis(*ms)),
            T::Restart => {
                let config = session_config(&h.broker.inner, h.flow);
                let seed = broker_session::RngSeed::from_u64(h.step as u64);
                h.machine = IgSession::new(config, seed, h.clock.now()).unwrap();
                // Operation ids start again with the new machine.
                h.events.clear();
                h.ops.clear();
                h.held = None;
                h.logouts_pending = None;
                h.rejected = false;
                h.snapshot = None;
            }
        }
        h.pump();
        // Faults the step did not use do not leak into the next one.
        h.broker.clear();
        h.late = None;
        if let Some(s) = h.machine.snapshot() {
            h.snapshot = Some(s);
        }

        let seen = &h.broker.seen[before_seen..];
        let ctx = format!("{}; requests {seen:?}", h.ctx);
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
        for e in &h.events {
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
        assert_eq!(h.elapsed_ms(), model.now, "virtual time differs: {ctx}");
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
    let now = h.clock.now().mono;
    match h.machine.state() {
        IgState::LoggedOut => Proj::LoggedOut,
        IgState::Active { account_id, mode } => Proj::Active(mode, account_id),
        IgState::BackingOff { until } => {
            let left = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX);
            Proj::BackingOff(h.elapsed_ms() + left)
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

/// Runs the model (as `prop_state_machine!` would) and prints the step coverage by
/// state at the end, pass or fail.
#[test]
fn ig_machine_follows_the_model() {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &IgModel::sequential_strategy(1..40),
        |(initial, transitions, seen)| {
            IgMachineTest::test_sequential(config.clone(), initial, transitions, seen);
            Ok(())
        },
    );
    print_coverage();
    if let Err(e) = result {
        panic!("{e}");
    }
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
        use broker_session_testkit::sim::Sim;
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
