//! Model-based test of the IBKR machine (gateway and OAuth 1.0a), driven against the
//! fake IBKR on the virtual clock.
//!
//! Generated sequences interleave, at any point: lifecycle intents (connect, logout,
//! reauthenticate, init, renew token, check status, tickle, validate), timers that
//! fall due while nobody drives the machine (keep-alive, token renewal, back-off end)
//! right before a logout, application calls answered 401 (also while a logout is in
//! flight), answers that arrive after the machine's own deadline, server values at the
//! edges (token expiry zero, in the past, in seconds, huge), a rejected token request,
//! competing sessions, the daily reset, server-side session loss and clock jumps.
//!
//! An abstract session predicts the machine's state exactly while it can ("certain"
//! steps: connect, logout, application calls, browser login, server drop, renew token
//! with an edge expiry, a rejected or late token request, time passing); after a step
//! whose outcome it does not model it is "uncertain" until a logout brings both back
//! to a known state. Time is predicted from the steps alone: certain steps take what
//! the model says, the others a fixed budget, and the clock must match exactly.
//!
//! After every step, whatever the model's certainty:
//! - after a logout is submitted no request leaves but the logout, until a Connect;
//! - a rejected token request is never followed by another token request;
//! - at most one token request per operation; at most one session request in flight
//!   and `Wait` always in the future (the harness panics otherwise);
//! - a bounded number of requests per step and per unit of virtual time;
//! - no request is signed with a retired live session token, or signed wrongly;
//! - every operation completes exactly once; nothing panics.
//!
//! The test prints the step coverage by machine state (before → after) at the end
//! (`cargo test --test model_ibkr -- --nocapture`). `PROPTEST_CASES` sets the number
//! of cases (default 64).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_session::ibkr::oauth::base_string::{base_string, parse_authorization_header};
use broker_session::ibkr::oauth::percent;
use broker_session::ibkr::oauth::sign::hmac_sha256_signature;
use broker_session::ibkr::{IbkrIntent, IbkrSession, IbkrState};
use broker_session::{
    AuthorizeError, Event, FailureKind, Input, Machine, Now, Observation, OpId, Output,
};
use broker_session_testkit::faults::{Failure, FaultPlan, Faulty, Target};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::sim::{FakeBroker, Reply, Sim, VirtualClock, clone_request};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use serde_json::Value;

const S: u64 = 1000;
const THROTTLE_MS: u64 = 15 * 60 * S;
/// The machine's deadline for a session request (the config's default).
const REQUEST_TIMEOUT_MS: u64 = 30 * S;
/// Virtual time given to a step whose outcome the model does not predict: more than a
/// back-off, so that whatever the step started has finished or settled. Odd
/// milliseconds: no sum of step durations is a whole second, so a step never ends on
/// the instant a timer fires.
const BUDGET_MS: u64 = 20 * 60 * S + 7;
/// Virtual time given to an application call: enough for a recovery.
const APP_BUDGET_MS: u64 = 5 * S + 3;
/// Virtual time given to an intent after its predicted start: an operation the
/// previous step left waiting out IBKR's one-second pacing may run first.
const SETTLE_MS: u64 = 2 * S + 1;
/// Virtual time given to a token request answered after the machine's deadline.
const LATE_BUDGET_MS: u64 = REQUEST_TIMEOUT_MS + 2 * S + 9;

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

/// A `live_session_token_expiration` at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    Zero,
    /// Epoch seconds, a day ahead.
    Seconds,
    /// An hour ago.
    Past,
    /// `i64::MAX`.
    Huge,
}

impl Expiry {
    fn value(self, now_ms: i64) -> Value {
        match self {
            Self::Zero => Value::from(0),
            Self::Seconds => Value::from(now_ms / 1000 + 86_400),
            Self::Past => Value::from(now_ms - 3_600_000),
            Self::Huge => Value::from(i64::MAX),
        }
    }

    fn usable(self) -> bool {
        self == Self::Huge
    }
}

/// Intents the model does not predict (they make it uncertain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Other {
    CheckStatus,
    Tickle,
    Validate,
    Reauthenticate,
    Init(Option<bool>),
}

impl Other {
    fn intent(self) -> IbkrIntent {
        match self {
            Self::CheckStatus => IbkrIntent::CheckStatus,
            Self::Tickle => IbkrIntent::Tickle,
            Self::Validate => IbkrIntent::Validate,
            Self::Reauthenticate => IbkrIntent::Reauthenticate,
            Self::Init(compete) => IbkrIntent::InitBrokerage { compete },
        }
    }
}

#[derive(Clone, Debug)]
enum T {
    /// `Connect`; its first request answered by this fault.
    Connect(Option<F>),
    /// `GET /iserver/accounts` as a transport sends it, answered by this fault (on
    /// both sends with `twice`).
    App { fault: Option<F>, twice: bool },
    /// `Logout`.
    Logout,
    /// Time passes without anyone driving the machine (timers fall due), then `Logout`.
    DueThenLogout(u64),
    /// An application call is stamped, `Logout` is submitted, and the call's 401
    /// arrives while the logout is in flight.
    LogoutRacingApp401,
    /// Gateway: the user logs in through the browser.
    BrowserLogin,
    /// IBKR drops the brokerage session (gateway) or the live session token (OAuth).
    ServerDrop,
    /// OAuth: the next token answer carries this expiry; then `RenewToken`.
    RenewWithExpiry(Expiry),
    /// OAuth: the next token request is rejected (401 invalid consumer); then
    /// `RenewToken`.
    RenewRejected,
    /// OAuth: `RenewToken`, its token request answered after the machine's deadline,
    /// with a rejection or with the broker's own answer.
    RenewLate { reject: bool },
    /// Another session for the username takes the brokerage session over.
    Competing,
    /// IBKR's daily reset happens a second from now.
    DailyReset,
    /// An intent the model does not predict.
    Other(Other),
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
    /// The predicted phase; `None` while uncertain.
    phase: Option<Phase>,
    now: u64,
    backoff_until: Option<u64>,
    /// Gateway: the browser login is done at the fake.
    browser: bool,
    /// A logout was submitted and no Connect (or RenewToken) since.
    logged_out: bool,
    /// The server dropped the session and nothing recovered it yet (`None`: unknown).
    dropped: Option<bool>,
    /// The session may have closed while the model was uncertain.
    closed_possible: bool,
    /// Predicted sends of the last application call.
    app_sends: Option<usize>,
    /// The machine holds a token whose expiry is far beyond the server's own: the
    /// server may refuse it at any time (then it is renewed on the way).
    server_may_expire: bool,
}

impl Model {
    fn certain(&self) -> bool {
        self.phase.is_some()
    }

    fn phase(&self) -> Phase {
        self.phase.unwrap_or(Phase::Disconnected)
    }

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
        // No keep-alive during a back-off: the fake drops an idle brokerage session.
        self.dropped = None;
    }

    fn uncertain(&mut self, budget: u64) {
        self.phase = None;
        self.backoff_until = None;
        self.dropped = None;
        self.now += budget;
    }

    fn connect(&mut self, f: Option<F>) {
        self.wait_backoff();
        self.logged_out = false;
        let had_token = self.oauth && self.phase() == Phase::Ready;
        let Some(f) = f else {
            self.phase = Some(if self.oauth || self.browser {
                self.dropped = Some(false);
                Phase::Ready
            } else {
                Phase::BrowserLoginRequired
            });
            return;
        };
        match f {
            F::S401 if self.oauth && !had_token => self.phase = Some(Phase::Closed),
            // A refused signed status renews the token, then goes on.
            F::S401 if self.oauth => {
                self.phase = Some(Phase::Ready);
                self.dropped = Some(false);
            }
            F::S401 => self.phase = Some(Phase::BrowserLoginRequired),
            F::S429 => {
                if self.phase() != Phase::Ready {
                    self.phase = Some(Phase::Disconnected);
                }
                self.backoff();
            }
            _ => {
                if self.phase() != Phase::Ready {
                    self.phase = Some(Phase::Disconnected);
                }
            }
        }
    }

    fn app(&mut self, fault: Option<F>, twice: bool) {
        self.app_sends = Some(0);
        if self.logged_out || self.backing_off() || self.phase() == Phase::Closed {
            return;
        }
        if self.oauth && self.phase() != Phase::Ready {
            return;
        }
        if !self.oauth && self.phase() == Phase::BrowserLoginRequired {
            return;
        }
        // Behind a disconnected gateway session the brokerage session may or may not
        // be initialised (answered "no bridge" and recovered, or served as is).
        if !self.oauth && self.phase() == Phase::Disconnected && self.dropped.is_none() {
            self.uncertain(0);
            self.app_sends = None;
            return;
        }
        let dropped = self.dropped;
        match fault {
            None if !self.oauth && !self.browser => {
                self.app_sends = Some(1);
                self.phase = Some(Phase::BrowserLoginRequired);
            }
            None if !self.oauth
                && self.phase() == Phase::Disconnected
                && dropped == Some(false) =>
            {
                // Served as is: the machine learns nothing.
                self.app_sends = Some(1);
            }
            None => {
                // A dropped brokerage session or token is recovered on the way: the
                // call is sent twice.
                self.app_sends = dropped
                    .filter(|_| !self.server_may_expire)
                    .map(|d| if d { 2 } else { 1 });
                self.phase = Some(Phase::Ready);
                self.dropped = Some(false);
            }
            Some(F::S429) => {
                self.app_sends = Some(1);
                self.backoff();
            }
            Some(F::S401) if self.oauth => {
                // The recovery's own accounts preflight (due after a renewal that
                // left the ready state) may take the second 401 instead of the call.
                self.app_sends = (!twice).then_some(2);
                self.dropped = Some(false);
                if twice {
                    self.phase = Some(Phase::Disconnected);
                }
            }
            Some(F::S401) => {
                self.app_sends = Some(1);
                self.phase = Some(Phase::BrowserLoginRequired);
            }
            Some(_) => self.app_sends = Some(1),
        }
    }

    fn logout(&mut self) {
        self.wait_backoff();
        self.logged_out = true;
        self.browser = false;
        self.dropped = None;
        self.server_may_expire = false;
        if self.phase() != Phase::Closed {
            self.phase = Some(Phase::Disconnected);
        }
    }

    fn advance(&mut self, d: u64) {
        let start = self.now;
        self.now += d;
        // The keep-alive runs while the session is ready and not backing off.
        let alive_from = self.backoff_until.map_or(start, |u| u.max(start));
        if !self.backing_off() {
            self.backoff_until = None;
        }
        if self.phase() == Phase::Ready && self.now.saturating_sub(alive_from) > 61 * S {
            // A keep-alive tickle within the step recovered a dropped session.
            self.dropped = self.dropped.map(|_| false);
        } else if self.dropped == Some(true) {
            // Maybe recovered, maybe not.
            self.dropped = None;
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
                phase: Some(Phase::Disconnected),
                now: 0,
                backoff_until: None,
                browser: !oauth,
                logged_out: false,
                dropped: Some(!oauth),
                closed_possible: false,
                app_sends: None,
                server_may_expire: false,
            })
            .boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<T> {
        let advance = prop_oneof![
            4 => prop_oneof![Just(1_003), Just(30_011), Just(61_007), Just(300_013), Just(960_017)],
            1 => prop_oneof![Just(7_200_019), Just(90_000_023)],
        ];
        let other = prop_oneof![
            Just(Other::CheckStatus),
            Just(Other::Tickle),
            Just(Other::Validate),
            Just(Other::Reauthenticate),
            Just(Other::Init(None)),
            Just(Other::Init(Some(true))),
            Just(Other::Init(Some(false))),
        ];
        let expiry = prop_oneof![
            Just(Expiry::Zero),
            Just(Expiry::Seconds),
            Just(Expiry::Past),
            Just(Expiry::Huge),
        ];
        // State-aware weights: connect when not connected, use the session when it is,
        // log in at the browser when the gateway needs it; faults that end the session
        // for good are rare, so sessions live long enough to matter.
        let ready = m.certain() && m.phase() == Phase::Ready;
        let connect_w = if ready { 6 } else { 20 };
        let app_w = if ready { 30 } else { 6 };
        let browser_w = if m.oauth || m.browser { 1 } else { 12 };
        // Logging out of a session that is not up, or asking it things, is rarer.
        let (logout_w, other_w) = if ready { (3, 10) } else { (1, 3) };
        let connect_fault = proptest::option::weighted(0.4, any_f())
            .prop_map(|f| if f == Some(F::S401) { None } else { f });
        let fatal = prop_oneof![
            Just(T::Connect(Some(F::S401))),
            Just(T::RenewRejected),
            Just(T::RenewLate { reject: true }),
        ];
        prop_oneof![
            connect_w => connect_fault.prop_map(T::Connect),
            app_w => (proptest::option::weighted(0.5, any_f()), proptest::bool::weighted(0.2))
                .prop_map(|(fault, twice)| T::App { fault, twice }),
            logout_w => Just(T::Logout),
            2 * logout_w => prop_oneof![Just(61_007u64), Just(3_599_011), Just(86_400_013)]
                .prop_map(T::DueThenLogout),
            logout_w + 1 => Just(T::LogoutRacingApp401),
            browser_w => Just(T::BrowserLogin),
            6 => Just(T::ServerDrop),
            8 => expiry.prop_map(T::RenewWithExpiry),
            1 => fatal,
            3 => Just(T::RenewLate { reject: false }),
            3 => Just(T::Competing),
            3 => Just(T::DailyReset),
            other_w => other.prop_map(T::Other),
            16 => advance.prop_map(T::Advance),
        ]
        .boxed()
    }

    fn preconditions(m: &Model, t: &T) -> bool {
        match t {
            T::BrowserLogin => !m.oauth,
            T::RenewWithExpiry(_) | T::RenewRejected | T::RenewLate { .. } => m.oauth,
            // Validate is for gateway sessions (OAuth 1.0a refuses it at submit).
            T::Other(Other::Validate) => !m.oauth,
            _ => true,
        }
    }

    fn apply(mut m: Model, t: &T) -> Model {
        m.app_sends = None;
        if m.phase == Some(Phase::Closed) {
            m.now += match t {
                T::Advance(d) => *d,
                T::DueThenLogout(d) => *d,
                T::App { .. } => APP_BUDGET_MS,
                _ => 0,
            };
            return m;
        }
        if !m.certain() {
            // Every step takes a fixed budget until a logout makes the model certain.
            let budget = match t {
                T::Advance(d) => *d,
                T::DueThenLogout(d) => d + BUDGET_MS,
                T::App { .. } => APP_BUDGET_MS,
                T::BrowserLogin | T::ServerDrop | T::Competing => 0,
                _ => BUDGET_MS,
            };
            m.now += budget;
            match t {
                T::Connect(Some(F::S401)) if m.oauth => m.closed_possible = true,
                T::Connect(_) | T::RenewWithExpiry(_) => m.logged_out = false,
                T::RenewRejected | T::RenewLate { reject: true } => {
                    m.logged_out = false;
                    m.closed_possible = true;
                }
                T::RenewLate { reject: false } => m.logged_out = false,
                T::Logout | T::DueThenLogout(_) | T::LogoutRacingApp401 => {
                    // A logout after a back-off's worth of time: known again.
                    m.logged_out = true;
                    m.browser = false;
                    m.backoff_until = None;
                    m.dropped = None;
                    if !m.closed_possible {
                        m.phase = Some(Phase::Disconnected);
                    }
                }
                T::BrowserLogin => m.browser = true,
                T::DailyReset => m.browser = false,
                _ => {}
            }
            return m;
        }
        let settle = matches!(
            t,
            T::Connect(_)
                | T::Logout
                | T::DueThenLogout(_)
                | T::LogoutRacingApp401
                | T::RenewWithExpiry(_)
                | T::RenewRejected
        );
        match t {
            T::Connect(f) => m.connect(*f),
            T::App { fault, twice } => {
                m.app(*fault, *twice);
                m.now += APP_BUDGET_MS;
                if !m.backing_off() {
                    m.backoff_until = None;
                }
            }
            T::Logout => m.logout(),
            T::DueThenLogout(d) => {
                m.now += d;
                m.logout();
            }
            T::LogoutRacingApp401 => {
                m.logout();
            }
            T::BrowserLogin => m.browser = true,
            T::ServerDrop => {
                m.dropped = if m.phase() == Phase::Ready {
                    m.dropped.map(|_| true)
                } else {
                    None
                };
            }
            T::RenewWithExpiry(e) => {
                m.wait_backoff();
                m.logged_out = false;
                if e.usable() {
                    m.phase = Some(Phase::Ready);
                    m.dropped = Some(false);
                    m.server_may_expire = true;
                } else if m.phase() != Phase::Ready {
                    m.phase = Some(Phase::Disconnected);
                } else {
                    // The old token is kept; the renewal is tried again in 30 s.
                    m.dropped = None;
                }
            }
            T::RenewRejected => {
                m.wait_backoff();
                m.phase = Some(Phase::Closed);
            }
            T::RenewLate { reject: true } if !m.backing_off() => {
                m.logged_out = false;
                m.now += LATE_BUDGET_MS;
                m.phase = Some(Phase::Closed);
            }
            T::RenewLate { .. } | T::Competing | T::DailyReset | T::Other(_) => {
                let budget = match t {
                    T::Competing => 0,
                    _ => BUDGET_MS,
                };
                if matches!(t, T::RenewLate { .. }) {
                    m.logged_out = false;
                }
                if *t == T::DailyReset {
                    m.browser = false;
                }
                m.uncertain(budget);
            }
            T::Advance(d) => m.advance(*d),
        }
        if settle {
            m.now += SETTLE_MS;
        }
        if !m.oauth && m.phase != Some(Phase::Ready) && m.dropped == Some(false) {
            // Without the keep-alive the gateway drops an idle brokerage session.
            m.dropped = None;
        }
        m
    }
}

impl PartialEq for T {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

// ---- the system under test -------------------------------------------------------

/// The fake IBKR behind the fault injector, with two more powers: it rewrites the
/// next token answer's expiry, and it checks which live session token signed each
/// request (none retired, none wrong).
struct Edge {
    inner: Faulty<FakeIbkr>,
    expiry: Option<Expiry>,
    /// Every token the server issued, in order (decoded key bytes).
    issued: Vec<Vec<u8>>,
    /// The newest issued token a request was signed with.
    newest_used: Option<usize>,
    /// Violations of the signing rules.
    violations: Vec<String>,
    /// Token requests, with whether the answer was a credentials rejection.
    lst: Vec<(usize, bool)>,
    requests: usize,
}

impl Edge {
    fn signed_with(&self, req: &http::Request<Vec<u8>>) -> Option<Option<usize>> {
        let h = req
            .headers()
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (_, params) = parse_authorization_header(h)?;
        let sig = params
            .iter()
            .find(|(k, _)| k == "oauth_signature")
            .map(|(_, v)| v.clone())?;
        let rest: Vec<(String, String)> = params
            .into_iter()
            .filter(|(k, _)| k != "oauth_signature")
            .collect();
        let uri = req.uri();
        let url = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.host().unwrap_or(""),
            uri.path()
        );
        let base = base_string("", req.method().as_str(), &url, &rest);
        Some(
            self.issued
                .iter()
                .rposition(|k| percent::encode(&hmac_sha256_signature(k, &base)) == sig),
        )
    }
}

impl FakeBroker for Edge {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        self.requests += 1;
        let is_lst = request.uri().path().ends_with("/oauth/live_session_token");
        if !is_lst && let Some(used) = self.signed_with(request) {
            match used {
                None => self
                    .violations
                    .push(format!("{} signed with no issued token", request.uri())),
                Some(i) => {
                    // Once a newer token was used, an older one is retired.
                    if self.newest_used.is_some_and(|n| i < n) {
                        self.violations.push(format!(
                            "{} signed with retired token #{i} of {}",
                            request.uri(),
                            self.issued.len()
                        ));
                    }
                    self.newest_used = Some(self.newest_used.map_or(i, |n| n.max(i)));
                }
            }
        }
        let reply = self.inner.handle(request, now);
        let Reply::Response(resp) = reply else {
            return reply;
        };
        if !is_lst {
            return Reply::Response(resp);
        }
        self.lst.push((
            self.requests,
            resp.status() == http::StatusCode::UNAUTHORIZED,
        ));
        let faulted = self.inner.seen.last().is_some_and(|s| s.faulted);
        if resp.status() != http::StatusCode::OK || faulted {
            return Reply::Response(resp);
        }
        if let Some(k) = self
            .inner
            .inner
            .oauth_server()
            .and_then(|s| s.current_lst())
            .and_then(|b| STANDARD.decode(b).ok())
        {
            self.issued.push(k);
        }
        let Some(e) = self.expiry.take() else {
            return Reply::Response(resp);
        };
        let (parts, body) = resp.into_parts();
        let mut v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        v["live_session_token_expiration"] = e.value(now.unix_millis());
        Reply::Response(http::Response::from_parts(
            parts,
            v.to_string().into_bytes(),
        ))
    }
}

struct Harness {
    sim: Sim<IbkrSession, Edge>,
    oauth: bool,
    ops: Vec<OpId>,
    step: usize,
    /// A logout was submitted and no Connect or RenewToken since.
    logged_out: bool,
}

fn elapsed_ms(sim: &Sim<IbkrSession, Edge>) -> u64 {
    u64::try_from(sim.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Harness {
    fn submit(&mut self, intent: IbkrIntent) -> Option<OpId> {
        let connects = matches!(intent, IbkrIntent::Connect | IbkrIntent::RenewToken);
        let logout = intent == IbkrIntent::Logout;
        match self.sim.submit(intent) {
            Ok(op) => {
                self.ops.push(op);
                if connects {
                    self.logged_out = false;
                }
                if logout {
                    self.logged_out = true;
                }
                Some(op)
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        broker_session::UsageError::SessionClosed
                            | broker_session::UsageError::Unsupported { .. }
                    ),
                    "{e}"
                );
                None
            }
        }
    }

    fn run(&mut self, intent: IbkrIntent) {
        if let Some(op) = self.submit(intent) {
            let _ = self.sim.wait_for(op);
        }
    }

    /// Lets virtual time run to `until_ms` (since the start), running every timer.
    fn run_to(&mut self, until_ms: u64) {
        let now = elapsed_ms(&self.sim);
        assert!(
            now <= until_ms,
            "step {}: the machine took {now} ms, the model allows {until_ms}",
            self.step
        );
        self.sim.advance(Duration::from_millis(until_ms - now));
    }

    fn poll_send(&mut self) -> Option<broker_session::Transmit> {
        loop {
            let now = self.sim.now();
            match self.sim.machine.poll_output(now) {
                Output::Send(t) => return Some(t),
                Output::Event(e) => self.sim.events.push(e),
                _ => return None,
            }
        }
    }

    /// Drives the machine (answering its requests) until it sends a token request,
    /// `op` completes, or virtual time reaches `until_ms`.
    fn next_lst_send(&mut self, op: OpId, until_ms: u64) -> Option<broker_session::Transmit> {
        loop {
            if let Some(t) = self.poll_send() {
                if t.request.uri().path().ends_with("/live_session_token") {
                    return Some(t);
                }
                let reply = self.sim.broker.handle(&t.request, self.sim.now());
                let input = match reply {
                    Reply::Response(response) => Input::Response { id: t.id, response },
                    Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                };
                let now = self.sim.now();
                self.sim.machine.handle_input(input, now);
                continue;
            }
            if self.sim.completions().any(|(o, _)| o == op) {
                return None;
            }
            let now = self.sim.now();
            let Output::Wait(Some(at)) = self.sim.machine.poll_output(now) else {
                return None;
            };
            let at_ms = elapsed_ms(&self.sim)
                + u64::try_from((at - now.mono).as_millis()).unwrap_or(u64::MAX);
            if at_ms > until_ms {
                return None;
            }
            self.sim.clock.advance_to(at);
            let now = self.sim.now();
            self.sim.machine.handle_input(Input::Timeout, now);
        }
    }

    /// An application call as a transport makes it: authorize, send, observe; after
    /// a replay or a recovery, once more. Never more than two sends; waits for a
    /// recovery only within the step's budget.
    fn app_call(&mut self, budget_end: u64) -> usize {
        let url = if self.oauth {
            "https://api.ibkr.com/v1/api/iserver/accounts"
        } else {
            "https://localhost:5000/v1/api/iserver/accounts"
        };
        let request = http::Request::get(url).body(Vec::new()).unwrap();
        let mut sends = 0;
        let mut waited = false;
        while sends < 2 {
            let mut req = clone_request(&request);
            let now = self.sim.now();
            let stamp = match self.sim.machine.authorize(&mut req, now) {
                Ok(s) => s,
                Err(AuthorizeError::Pending { op }) if !waited => {
                    waited = true;
                    self.ops.push(op);
                    self.wait_within(op, budget_end);
                    continue;
                }
                Err(_) => return sends,
            };
            sends += 1;
            let reply = self.sim.broker.handle(&req, self.sim.now());
            let Reply::Response(resp) = reply else {
                return sends;
            };
            let now = self.sim.now();
            match self.sim.machine.observe(&resp, stamp, now) {
                Observation::Replay => {}
                Observation::Recover { op } => {
                    self.ops.push(op);
                    if !self.wait_within(op, budget_end) {
                        return sends;
                    }
                }
                _ => return sends,
            }
        }
        sends
    }

    /// Runs until `op` completes or the budget ends; whether it succeeded in time.
    fn wait_within(&mut self, op: OpId, budget_end: u64) -> bool {
        loop {
            let wait = self.sim.pump();
            if let Some(ok) = self
                .sim
                .completions()
                .find(|(o, _)| *o == op)
                .map(|(_, r)| r.is_ok())
            {
                return ok;
            }
            let Some(at) = wait else { return false };
            let at_ms = elapsed_ms(&self.sim)
                + u64::try_from((at - self.sim.now().mono).as_millis()).unwrap_or(u64::MAX);
            if at_ms > budget_end {
                return false;
            }
            self.sim.clock.advance_to(at);
            let now = self.sim.now();
            self.sim.machine.handle_input(Input::Timeout, now);
        }
    }
}

static COVERAGE: Mutex<BTreeMap<(String, String), usize>> = Mutex::new(BTreeMap::new());
static KINDS: Mutex<BTreeMap<(String, String), usize>> = Mutex::new(BTreeMap::new());

fn state_name(s: &IbkrState) -> String {
    let d = format!("{s:?}");
    d.split([' ', '{', '(']).next().unwrap_or("").to_owned()
}

fn step_name(t: &T) -> String {
    let d = format!("{t:?}");
    d.split([' ', '{', '(']).next().unwrap_or("").to_owned()
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
        let broker = Edge {
            inner: Faulty::new(fake, FaultPlan::default(), clock.now()),
            expiry: None,
            issued: Vec::new(),
            newest_used: None,
            violations: Vec::new(),
            lst: Vec::new(),
            requests: 0,
        };
        let mut sim = Sim::with_clock(machine, broker, clock);
        sim.latency = Duration::ZERO;
        Harness {
            sim,
            oauth: m.oauth,
            ops: Vec::new(),
            step: 0,
            logged_out: false,
        }
    }

    fn apply(mut h: Harness, model: &Model, t: T) -> Harness {
        h.step += 1;
        let start_ms = elapsed_ms(&h.sim);
        let before_seen = h.sim.broker.inner.seen.len();
        let before_events = h.sim.events.len();
        let state_before = h.sim.machine.state();
        let logged_out_before = h.logged_out;
        let end = model.now;
        // Requests from this index on must be the logout's alone (until a connect).
        let mut logout_from: Option<usize> = logged_out_before.then_some(before_seen);
        let mut app_sends = None;
        match &t {
            T::Connect(f) => {
                if let Some(f) = f {
                    h.sim.broker.inner.fail_next(Target::Any, f.failure());
                }
                logout_from = None;
                h.run(IbkrIntent::Connect);
            }
            T::App { fault, twice } => {
                if let Some(f) = fault {
                    let target = Target::Path("/iserver/accounts".into());
                    h.sim.broker.inner.fail_next(target.clone(), f.failure());
                    if *twice {
                        h.sim.broker.inner.fail_next(target, f.failure());
                    }
                }
                let sends = h.app_call(end);
                assert!(sends <= 2);
                app_sends = Some(sends);
            }
            T::Logout => {
                logout_from = Some(h.sim.broker.inner.seen.len());
                h.run(IbkrIntent::Logout);
            }
            T::DueThenLogout(ms) => {
                // Nobody drives the machine while its timers fall due.
                h.sim.clock.advance(Duration::from_millis(*ms));
                logout_from = Some(h.sim.broker.inner.seen.len());
                h.run(IbkrIntent::Logout);
            }
            T::LogoutRacingApp401 => {
                let url = if h.oauth {
                    "https://api.ibkr.com/v1/api/iserver/accounts"
                } else {
                    "https://localhost:5000/v1/api/iserver/accounts"
                };
                let mut req = http::Request::get(url).body(Vec::<u8>::new()).unwrap();
                let stamp = h.sim.machine.authorize(&mut req, h.sim.now());
                h.sim.pump();
                logout_from = Some(h.sim.broker.inner.seen.len());
                if let Some(op) = h.submit(IbkrIntent::Logout) {
                    let transmit = h.poll_send();
                    if let Ok(stamp) = stamp {
                        let resp = http::Response::builder()
                            .status(401)
                            .body(br#"{"error":"not authenticated","statusCode":401}"#.to_vec())
                            .unwrap();
                        let obs = h.sim.machine.observe(&resp, stamp, h.sim.now());
                        assert!(
                            !matches!(obs, Observation::Recover { .. }),
                            "step {}: a 401 during a logout started a recovery",
                            h.step
                        );
                    }
                    if let Some(tr) = transmit {
                        let reply = h.sim.broker.handle(&tr.request, h.sim.now());
                        let input = match reply {
                            Reply::Response(response) => Input::Response {
                                id: tr.id,
                                response,
                            },
                            Reply::Fail(failure) => Input::Failed { id: tr.id, failure },
                        };
                        let now = h.sim.now();
                        h.sim.machine.handle_input(input, now);
                    }
                    let _ = h.sim.wait_for(op);
                }
            }
            T::BrowserLogin => h.sim.broker.inner.inner.browser_login_done = true,
            T::ServerDrop => {
                if h.oauth {
                    if let Some(s) = h.sim.broker.inner.inner.oauth_server() {
                        s.revoke();
                    }
                } else {
                    h.sim.broker.inner.inner.drop_brokerage_session();
                }
            }
            T::RenewWithExpiry(e) => {
                h.sim.broker.expiry = Some(*e);
                logout_from = None;
                h.run(IbkrIntent::RenewToken);
                h.sim.broker.expiry = None;
            }
            T::RenewRejected => {
                if let Some(s) = h.sim.broker.inner.inner.oauth_server() {
                    s.reject_consumer = true;
                }
                logout_from = None;
                h.run(IbkrIntent::RenewToken);
                if let Some(s) = h.sim.broker.inner.inner.oauth_server() {
                    s.reject_consumer = false;
                }
            }
            T::RenewLate { reject } => {
                logout_from = None;
                h.sim.pump();
                if let Some(op) = h.submit(IbkrIntent::RenewToken) {
                    let transmit =
                        h.next_lst_send(op, start_ms + LATE_BUDGET_MS - REQUEST_TIMEOUT_MS);
                    match transmit {
                        Some(tr) if tr.request.uri().path().ends_with("/live_session_token") => {
                            h.sim.clock.advance_to(tr.deadline);
                            let now = h.sim.now();
                            h.sim.machine.handle_input(Input::Timeout, now);
                            h.sim.pump();
                            let response = if *reject {
                                h.sim.broker.requests += 1;
                                h.sim.broker.lst.push((h.sim.broker.requests, true));
                                http::Response::builder()
                                    .status(401)
                                    .body(br#"{"error":"id: 3931, error: invalid consumer","statusCode":401}"#.to_vec())
                                    .unwrap()
                            } else {
                                match h.sim.broker.handle(&tr.request, h.sim.now()) {
                                    Reply::Response(r) => r,
                                    Reply::Fail(_) => http::Response::new(Vec::new()),
                                }
                            };
                            let now = h.sim.now();
                            h.sim.machine.handle_input(
                                Input::Response {
                                    id: tr.id,
                                    response,
                                },
                                now,
                            );
                        }
                        Some(tr) => {
                            // Not a token request: answer it at once.
                            let reply = h.sim.broker.handle(&tr.request, h.sim.now());
                            let input = match reply {
                                Reply::Response(response) => Input::Response {
                                    id: tr.id,
                                    response,
                                },
                                Reply::Fail(failure) => Input::Failed { id: tr.id, failure },
                            };
                            let now = h.sim.now();
                            h.sim.machine.handle_input(input, now);
                        }
                        None => {}
                    }
                    let _ = op;
                }
            }
            T::Competing => {
                h.sim.broker.inner.inner.competing = true;
                h.sim.broker.inner.inner.authenticated = false;
            }
            T::DailyReset => {
                let tod = h.sim.now().unix_seconds() % 86_400;
                h.sim.broker.inner.inner.daily_reset =
                    Some(Duration::from_secs((tod + 1) % 86_400));
                // Arm the reset's day counter now.
                let probe = http::Request::get("https://x/v1/api/none")
                    .body(Vec::new())
                    .unwrap();
                let _ = h.sim.broker.inner.inner.handle(&probe, h.sim.now());
            }
            T::Other(o) => {
                h.submit(o.intent());
            }
            T::Advance(_) => {}
        }
        if matches!(t, T::Logout | T::DueThenLogout(_) | T::LogoutRacingApp401) {
            // A daily reset belongs to the session it was armed in: the logout's
            // request (if any) let it happen, and the model knows the state again.
            h.sim.broker.inner.inner.daily_reset = None;
        }
        // Let the model's time run out: timers fire on the way.
        h.run_to(end);
        h.sim.broker.inner.clear();
        assert_eq!(
            elapsed_ms(&h.sim),
            end,
            "step {}: virtual time differs",
            h.step
        );

        let seen = &h.sim.broker.inner.seen[before_seen..];
        let ctx = format!(
            "step {} {t:?} from {state_before:?} (model {:?}); requests {seen:?}",
            h.step, model.phase
        );
        // Coverage.
        let mode = if h.oauth { "oauth" } else { "gateway" };
        let after = h.sim.machine.state();
        *COVERAGE
            .lock()
            .unwrap()
            .entry((
                format!("{mode} {}", state_name(&state_before)),
                state_name(&after),
            ))
            .or_default() += 1;
        *KINDS
            .lock()
            .unwrap()
            .entry((
                format!("{mode} {}", state_name(&state_before)),
                step_name(&t),
            ))
            .or_default() += 1;

        // Logout is final: nothing but the logout until a connect.
        if let Some(from) = logout_from {
            let rest = &h.sim.broker.inner.seen[from..];
            assert!(
                rest.iter().all(|s| s.path.ends_with("/logout")),
                "a request after the logout: {ctx}"
            );
        }
        if state_before == IbkrState::Closed {
            assert!(seen.is_empty(), "requests after the session closed: {ctx}");
        }
        // A rejected token request is never followed by another one.
        if let Some(first) = h.sim.broker.lst.iter().position(|(_, rejected)| *rejected) {
            assert_eq!(
                h.sim.broker.lst.len(),
                first + 1,
                "a token request after a rejected one: {ctx}"
            );
        }
        // Credentials: none on the gateway; OAuth signed with the newest token only.
        if !h.oauth {
            assert!(
                seen.iter().all(|s| s.credentials.is_none()),
                "a gateway request carried credentials: {ctx}"
            );
        }
        assert!(
            h.sim.broker.violations.is_empty(),
            "{:?}: {ctx}",
            h.sim.broker.violations
        );
        // Operations: each completes exactly once; at most one token request each.
        let mut done = HashSet::new();
        for e in &h.sim.events {
            if let Event::Completed { op, .. } = e {
                assert!(done.insert(*op), "{op} completed twice: {ctx}");
            }
        }
        let completed_now = h.sim.events[before_events..]
            .iter()
            .filter(|e| matches!(e, Event::Completed { .. }))
            .count();
        let pending = h.ops.iter().filter(|op| !done.contains(op)).count();
        let lst_now = seen
            .iter()
            .filter(|s| s.path.ends_with("/live_session_token"))
            .count();
        // (one more for the operation still running at the step's end, which may be
        // one the machine started itself)
        assert!(
            lst_now <= completed_now + pending + 1,
            "{lst_now} token requests for {completed_now} operations: {ctx}"
        );
        // No loop: requests bounded by virtual time (a keep-alive a minute, a token
        // renewal a day, retries and recoveries a few per step).
        let step_ms = end - start_ms;
        let bound = 16 + usize::try_from(step_ms / (20 * S)).unwrap_or(usize::MAX);
        assert!(seen.len() <= bound, "{} requests: {ctx}", seen.len());
        // The model's prediction, while it has one.
        let projected = project(&h);
        if model.certain() && !matches!(projected, Proj::Busy(_)) {
            // A step can end while an operation waits out IBKR's pacing (a keep-alive
            // tickle that renewed the token tickles again a second later): busy.
            assert_eq!(
                projected,
                expect(model),
                "state differs from the model: {ctx}"
            );
            if let (Some(want), Some(got)) = (model.app_sends, app_sends) {
                assert_eq!(got, want, "application call sends: {ctx}");
            }
        } else {
            if !model.closed_possible {
                assert_ne!(after, IbkrState::Closed, "closed unexpectedly: {ctx}");
            }
        }
        if h.logged_out {
            assert!(
                matches!(
                    after,
                    IbkrState::Disconnected | IbkrState::BackingOff { .. } | IbkrState::Closed
                ),
                "live after a logout: {after:?}: {ctx}"
            );
        }
        h
    }

    fn teardown(mut h: Harness, _: Model) {
        // Whatever was left running finishes; nothing runs away afterwards.
        let before = h.sim.broker.inner.seen.len();
        h.sim.advance(Duration::from_secs(2 * 24 * 3600));
        let done: HashSet<OpId> = h.sim.completions().map(|(op, _)| op).collect();
        for op in &h.ops {
            assert!(done.contains(op), "{op} never completed");
        }
        let n = h.sim.broker.inner.seen.len() - before;
        assert!(n <= 4 * 24 * 60 + 64, "{n} requests in two idle days");
        if h.logged_out {
            assert_eq!(n, 0, "requests after the final logout");
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Proj {
    Disconnected,
    Ready,
    BrowserLoginRequired,
    BackingOff(u64),
    Closed,
    Busy(String),
}

fn project(h: &Harness) -> Proj {
    let now = h.sim.now().mono;
    match h.sim.machine.state() {
        IbkrState::Disconnected => Proj::Disconnected,
        IbkrState::Ready => Proj::Ready,
        IbkrState::BrowserLoginRequired => Proj::BrowserLoginRequired,
        IbkrState::BackingOff { until } => {
            let left = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX);
            Proj::BackingOff(elapsed_ms(&h.sim) + left)
        }
        IbkrState::Closed => Proj::Closed,
        other => Proj::Busy(format!("{other:?}")),
    }
}

fn expect(m: &Model) -> Proj {
    if m.phase == Some(Phase::Closed) {
        return Proj::Closed;
    }
    if let Some(u) = m.backoff_until.filter(|u| *u > m.now) {
        return Proj::BackingOff(u);
    }
    match m.phase() {
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

proptest_state_machine::prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    fn ibkr_machine_follows_the_model(sequential 1..40 => IbkrMachineTest);
}

#[test]
fn ibkr_model() {
    ibkr_machine_follows_the_model();
    print_coverage();
}

fn print_coverage() {
    let cov = COVERAGE.lock().unwrap();
    let total: usize = cov.values().sum();
    println!("\nIBKR model: {total} steps; by state before -> after:");
    for ((before, after), n) in cov.iter() {
        println!("  {before:32} -> {after:22} {n:6} {:5.1}%", pct(*n, total));
    }
    let kinds = KINDS.lock().unwrap();
    println!("by state before and step:");
    for ((before, step), n) in kinds.iter() {
        println!("  {before:32} {step:22} {n:6} {:5.1}%", pct(*n, total));
    }
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let r = 100.0 * n as f64 / total as f64;
    r
}
