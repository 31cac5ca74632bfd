//! Generated fault plans for your own property tests.
//!
//! A [`FaultPlan`] says which requests fail, how (a status with an IG or IBKR error
//! code, a malformed or truncated body, a transport failure, a timeout) and when (an
//! offset in virtual time). [`Faulty`] wraps any [`FakeBroker`] and answers with the
//! planned failures instead of the fake's own answers; it also records every request
//! it saw ([`Seen`]), so a test can count requests per endpoint or check that nothing
//! was sent after the session was closed. The strategies ([`ig_failure`],
//! [`ibkr_failure`], [`fault_plan`] …) generate plans with proptest.
//!
//! `Faulty` works with any fake ([`FakeIg`](crate::ig::FakeIg),
//! [`FakeIbkr`](crate::ibkr::FakeIbkr), your own [`FakeBroker`]); [`Faulty::sim`]
//! builds the [`Sim`](crate::sim::Sim). A plan can also be queued on a `FakeIg`'s own
//! fault injection with [`FaultPlan::inject_into_ig`] (times are then ignored).
//!
//! # Example
//!
//! A user-level loop ("every virtual minute, call `GET /accounts`") driven through
//! generated faults: it never logs in more than once per fault, and once the faults
//! stop it works again.
//!
//! ```
//! use std::time::Duration;
//! use broker_session::Machine;
//! use broker_session::ig::{IgIntent, IgSession, LoginFlow};
//! use broker_session_testkit::faults::{self, Faulty};
//! use broker_session_testkit::ig::{FakeIg, accounts_request, session_config};
//! use broker_session_testkit::sim::VirtualClock;
//! use proptest::prelude::*;
//! use proptest::test_runner::{Config, TestRunner};
//!
//! let plans = faults::fault_plan(faults::ig_failure(), faults::ig_target(), 0..6, Duration::from_secs(600));
//! let mut runner = TestRunner::new(Config { cases: 16, ..Config::default() });
//! runner.run(&plans, |plan| {
//!     let fake = FakeIg::default();
//!     let clock = VirtualClock::new();
//!     let machine = IgSession::new(session_config(&fake, LoginFlow::V2), broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
//!     let request = accounts_request(&fake);
//!     let n_faults = plan.faults.len();
//!     let mut sim = Faulty::sim(machine, fake, plan, clock);
//!     let _ = sim.run(IgIntent::Login);
//!     for _minute in 0..15 {
//!         sim.advance(Duration::from_secs(60));
//!         if sim.machine.state() == broker_session::ig::IgState::LoggedOut {
//!             let _ = sim.run(IgIntent::Login);
//!         }
//!         let _ = sim.app_request(&request);
//!     }
//!     let logins = sim.broker.count("POST", "/session");
//!     prop_assert!(logins <= 1 + n_faults, "{logins} logins for {n_faults} faults");
//!     Ok(())
//! }).unwrap();
//! ```

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::ops::Range;
use std::time::Duration;

use broker_session::{FailureKind, Now, TransportFailure};
use proptest::prelude::*;
use serde_json::json;

use crate::sim::{FakeBroker, Reply};

/// How a request fails.
#[derive(Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker answers with this status and body.
    Respond {
        /// The HTTP status.
        status: u16,
        /// The body (an error document, garbage, a truncated document …).
        body: Vec<u8>,
    },
    /// The exchange fails in the transport (reset, refused, timeout …).
    Transport(FailureKind),
}

impl Failure {
    /// An IG error answer: `{"errorCode": code}`, or an empty body without a code.
    pub fn ig_error(status: u16, code: Option<&str>) -> Self {
        let body = code
            .map(|c| json!({ "errorCode": c }).to_string().into_bytes())
            .unwrap_or_default();
        Self::Respond { status, body }
    }

    /// An IBKR error answer: `{"error": text, "statusCode": status}`.
    pub fn ibkr_error(status: u16, text: &str) -> Self {
        Self::Respond {
            status,
            body: json!({ "error": text, "statusCode": status })
                .to_string()
                .into_bytes(),
        }
    }

    /// A body that is not JSON at all, with this status.
    pub fn malformed(status: u16) -> Self {
        Self::Respond {
            status,
            body: b"<html><body>Service Unavailable</body></html>".to_vec(),
        }
    }

    /// A JSON document cut short, with this status.
    pub fn truncated(status: u16) -> Self {
        Self::Respond {
            status,
            body: br#"{"currentAccountId":"ACC-DEF"#.to_vec(),
        }
    }

    /// A transport failure of this kind.
    pub fn transport(kind: FailureKind) -> Self {
        Self::Transport(kind)
    }

    /// The request timed out in the transport.
    pub fn timeout() -> Self {
        Self::Transport(FailureKind::Timeout)
    }

    /// The reply a broker gives for this failure.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Respond { status, body } => {
                let mut r = http::Response::new(body.clone());
                *r.status_mut() =
                    http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                Reply::Response(r)
            }
            Self::Transport(kind) => Reply::Fail(TransportFailure::new(*kind, "injected fault")),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Respond { status, body } => {
                write!(f, "Respond({status}, {:?})", String::from_utf8_lossy(body))
            }
            Self::Transport(k) => write!(f, "Transport({k:?})"),
        }
    }
}

/// Which requests a planned fault may hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Any request.
    Any,
    /// Requests whose path ends with this (e.g. `/session`, `/accounts`, `/tickle`).
    Path(String),
    /// Requests with this method whose path ends with this.
    MethodPath(http::Method, String),
}

impl Target {
    /// Whether a request matches.
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Path(p) => path.ends_with(p.as_str()),
            Self::MethodPath(m, p) => m == method && path.ends_with(p.as_str()),
        }
    }
}

/// One planned fault: the first request matching `target` at or after `after` (virtual
/// time since the plan started) fails with `failure`. Each fault fires once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// From when the fault is armed.
    pub after: Duration,
    /// Which requests it may hit.
    pub target: Target,
    /// How the request fails.
    pub failure: Failure,
}

/// A list of planned faults, sorted by [`PlannedFault::after`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The faults, in firing order.
    pub faults: Vec<PlannedFault>,
}

impl FaultPlan {
    /// A plan with these faults (sorted by time).
    pub fn new(mut faults: Vec<PlannedFault>) -> Self {
        faults.sort_by_key(|f| f.after);
        Self { faults }
    }

    /// When the last fault is armed (zero for an empty plan). After this, and once
    /// every fault fired, the broker answers normally.
    pub fn last_armed(&self) -> Duration {
        self.faults.last().map_or(Duration::ZERO, |f| f.after)
    }

    /// This plan's faults and `other`'s, in one plan.
    pub fn and(mut self, other: Self) -> Self {
        self.faults.extend(other.faults);
        Self::new(self.faults)
    }

    /// Queues every fault on a [`FakeIg`](crate::ig::FakeIg) with its own injection
    /// (ignoring the times: they fire on the next matching request). Only
    /// [`Target::Path`] and [`Target::MethodPath`] faults can be queued there; others
    /// are returned.
    pub fn inject_into_ig(self, fake: &mut crate::ig::FakeIg) -> Vec<PlannedFault> {
        use crate::ig::Fault;
        let mut rest = Vec::new();
        for f in self.faults {
            let fault = match &f.failure {
                Failure::Respond { status, body } => Fault::Respond {
                    status: *status,
                    headers: Vec::new(),
                    body: body.clone(),
                },
                Failure::Transport(k) => Fault::Fail(*k),
            };
            match &f.target {
                Target::Path(p) => fake.inject(p, None, fault),
                Target::MethodPath(m, p) => fake.inject(p, Some(m.clone()), fault),
                Target::Any => rest.push(f),
            }
        }
        rest
    }
}

/// A request a [`Faulty`] broker saw.
#[derive(Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: http::Method,
    /// The path (no query).
    pub path: String,
    /// Virtual time since the plan started.
    pub at: Duration,
    /// A hash of the credential headers it carried (`CST`, `X-SECURITY-TOKEN`,
    /// `Authorization`), `None` without any. Compare hashes to check that retired
    /// credentials are never sent again, without keeping the secrets.
    pub credentials: Option<u64>,
    /// Whether a planned fault answered it.
    pub faulted: bool,
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} at {:?}{}{}",
            self.method,
            self.path,
            self.at,
            if self.credentials.is_some() {
                " [credentials]"
            } else {
                ""
            },
            if self.faulted { " [fault]" } else { "" }
        )
    }
}

/// A hash of a request's credential headers, `None` when it carries none.
pub fn credentials_hash(headers: &http::HeaderMap) -> Option<u64> {
    let mut h = DefaultHasher::new();
    let mut any = false;
    for name in ["cst", "x-security-token", "authorization"] {
        if let Some(v) = headers.get(name) {
            any = true;
            name.hash(&mut h);
            v.as_bytes().hash(&mut h);
        }
    }
    any.then(|| h.finish())
}

/// A broker that answers with a [`FaultPlan`]'s failures and otherwise delegates to
/// `inner`; it records every request.
pub struct Faulty<F> {
    /// The wrapped fake.
    pub inner: F,
    /// Faults not fired yet.
    pub pending: Vec<PlannedFault>,
    /// Faults fired, with the request index they hit.
    pub fired: Vec<(usize, PlannedFault)>,
    /// Every request, in order.
    pub seen: Vec<Seen>,
    start: Now,
}

impl<F> Faulty<F> {
    /// Wraps `inner`; plan times count from `start` (use the simulation clock's now).
    pub fn new(inner: F, plan: FaultPlan, start: Now) -> Self {
        Self {
            inner,
            pending: plan.faults,
            fired: Vec::new(),
            seen: Vec::new(),
            start,
        }
    }

    /// A [`Sim`](crate::sim::Sim) of `machine` against `inner` with `plan`'s faults,
    /// on `clock` (plan times count from its current time). Build the machine with
    /// `clock.now()`.
    pub fn sim<M: broker_session::Machine>(
        machine: M,
        inner: F,
        plan: FaultPlan,
        clock: crate::sim::VirtualClock,
    ) -> crate::sim::Sim<M, Self>
    where
        F: FakeBroker,
    {
        crate::sim::Sim::with_clock(machine, Self::new(inner, plan, clock.now()), clock)
    }

    /// Adds a fault that fires on the next matching request.
    pub fn fail_next(&mut self, target: Target, failure: Failure) {
        self.pending.insert(
            0,
            PlannedFault {
                after: Duration::ZERO,
                target,
                failure,
            },
        );
    }

    /// Drops every fault not fired yet.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Requests seen with this method and a path ending with `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen
            .iter()
            .filter(|s| s.method == method && s.path.ends_with(path))
            .count()
    }
}

impl<F> fmt::Debug for Faulty<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("pending", &self.pending)
            .field("fired", &self.fired.len())
            .field("seen", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl<F: FakeBroker> FakeBroker for Faulty<F> {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        let at = now.mono.saturating_duration_since(self.start.mono);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let hit = self
            .pending
            .iter()
            .position(|f| f.after <= at && f.target.matches(&method, &path));
        self.seen.push(Seen {
            method,
            path,
            at,
            credentials: credentials_hash(request.headers()),
            faulted: hit.is_some(),
        });
        match hit {
            Some(i) => {
                let fault = self.pending.remove(i);
                let reply = fault.failure.reply();
                self.fired.push((self.seen.len() - 1, fault));
                reply
            }
            None => self.inner.handle(request, now),
        }
    }
}

/// IG's answers to fail with: a 401 with each code that matters (refused CST/XST,
/// refused access token, bad credentials, login throttling, no code), the allowance
/// 403, 429, 5xx, malformed and truncated bodies, transport failures and timeouts.
pub fn ig_failure() -> impl Strategy<Value = Failure> + Clone {
    prop_oneof![
        Just(Failure::ig_error(
            401,
            Some("error.security.client-token-invalid")
        )),
        Just(Failure::ig_error(
            401,
            Some("error.security.account-token-invalid")
        )),
        Just(Failure::ig_error(
            401,
            Some("error.security.oauth-token-invalid")
        )),
        Just(Failure::ig_error(401, None)),
        Just(Failure::ig_error(401, Some(crate::ig::LOGIN_THROTTLED))),
        Just(Failure::ig_error(
            403,
            Some("error.public-api.exceeded-api-key-allowance")
        )),
        Just(Failure::ig_error(
            403,
            Some("error.public-api.exceeded-account-allowance")
        )),
        Just(Failure::ig_error(429, None)),
        Just(Failure::ig_error(500, Some("system.error"))),
        Just(Failure::malformed(503)),
        Just(Failure::malformed(200)),
        Just(Failure::truncated(200)),
        Just(Failure::transport(FailureKind::Io)),
        Just(Failure::transport(FailureKind::Connect)),
        Just(Failure::timeout()),
    ]
}

/// IG's transient answers: what a session retries or waits out (5xx, 429, the
/// allowance 403, malformed and truncated bodies, transport failures, timeouts). Aim
/// these at the login when the test expects the session to survive: any 401 on a
/// login closes an IG session by design (repeated refused logins lock the account).
pub fn ig_transient_failure() -> impl Strategy<Value = Failure> + Clone {
    prop_oneof![
        Just(Failure::ig_error(
            403,
            Some("error.public-api.exceeded-api-key-allowance")
        )),
        Just(Failure::ig_error(429, None)),
        Just(Failure::ig_error(500, Some("system.error"))),
        Just(Failure::malformed(503)),
        Just(Failure::malformed(200)),
        Just(Failure::truncated(200)),
        Just(Failure::transport(FailureKind::Io)),
        Just(Failure::timeout()),
    ]
}

/// IG's fatal answers: rejected credentials or API key. A session closes on them and
/// must send nothing afterwards.
pub fn ig_fatal_failure() -> impl Strategy<Value = Failure> + Clone {
    prop_oneof![
        Just(Failure::ig_error(
            401,
            Some("error.security.invalid-details")
        )),
        Just(Failure::ig_error(
            403,
            Some("error.security.api-key-invalid")
        )),
    ]
}

/// IG endpoints to aim faults at: the session's own (`/session`,
/// `/session/refresh-token`), the application's (`/accounts`), or any.
pub fn ig_target() -> impl Strategy<Value = Target> + Clone {
    prop_oneof![
        Just(Target::Any),
        Just(Target::MethodPath(http::Method::POST, "/session".into())),
        Just(Target::Path("/session/refresh-token".into())),
        Just(Target::MethodPath(http::Method::GET, "/session".into())),
        Just(Target::Path("/accounts".into())),
    ]
}

/// IBKR's answers to fail with: 401 without a session, 429, 5xx, a 302 to the SSO
/// login, malformed and truncated bodies, transport failures and timeouts.
pub fn ibkr_failure() -> impl Strategy<Value = Failure> + Clone {
    prop_oneof![
        Just(Failure::ibkr_error(401, "not authenticated")),
        Just(Failure::Respond {
            status: 429,
            body: Vec::new()
        }),
        Just(Failure::ibkr_error(500, "Internal Server Error")),
        Just(Failure::malformed(503)),
        Just(Failure::malformed(200)),
        Just(Failure::Respond {
            status: 200,
            body: br#"{"authenticated":tr"#.to_vec()
        }),
        Just(Failure::transport(FailureKind::Io)),
        Just(Failure::transport(FailureKind::Connect)),
        Just(Failure::timeout()),
    ]
}

/// IBKR endpoints to aim faults at.
pub fn ibkr_target() -> impl Strategy<Value = Target> + Clone {
    prop_oneof![
        Just(Target::Any),
        Just(Target::Path("/tickle".into())),
        Just(Target::Path("/iserver/auth/status".into())),
        Just(Target::Path("/iserver/auth/ssodh/init".into())),
        Just(Target::Path("/oauth/live_session_token".into())),
        Just(Target::Path("/iserver/accounts".into())),
    ]
}

/// Plans of `count` faults from `failures` aimed at `targets`, armed at offsets within
/// `horizon`.
pub fn fault_plan(
    failures: impl Strategy<Value = Failure> + Clone,
    targets: impl Strategy<Value = Target> + Clone,
    count: Range<usize>,
    horizon: Duration,
) -> impl Strategy<Value = FaultPlan> {
    let max_ms = u64::try_from(horizon.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    proptest::collection::vec(
        (0..max_ms, targets, failures).prop_map(|(ms, target, failure)| PlannedFault {
            after: Duration::from_millis(ms),
            target,
            failure,
        }),
        count,
    )
    .prop_map(FaultPlan::new)
}
