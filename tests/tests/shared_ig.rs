//! One IG login shared by a fleet of sessions, in memory: one owner, followers that
//! adopt its credentials, single-flight recovery across the fleet, take-over by
//! resuming, and demotion of an owner that lost its ownership.
//!
//! [`Fleet`] plays the part of the sharing layer (in production `broker-session-redis`)
//! without IO: what an owner announces with `Event::CredentialsChanged` is stored with
//! its generation and adopted by every follower; what a follower asks for with
//! `Event::CredentialsWanted` is handed to the owner as `IgIntent::Recover`, once per
//! refused generation. Every session talks to the same fake IG on one virtual clock.
//!
//! `a_fleet_keeps_its_promises_whatever_happens` interleaves calls, refusals, time,
//! deaths, demotions, pauses past the lease and take-overs at random (proptest) and
//! checks after every step that generations only go up, followers never send a
//! request, an owner woken after its lease's end follows before it sends anything, no
//! refresh token is spent twice, logins and refreshes stay bounded by what forced
//! them, and calls get through while an owner lives.

use std::collections::BTreeSet;
use std::time::Duration;

use broker_session::ig::{
    IgConfig, IgIntent, IgOutcome, IgRole, IgSession, IgState, LoginFlow, SessionSnapshot,
};
use broker_session::{
    AuthorizeError, Error, Event, Input, Machine, Observation, OpId, Output, RngSeed, UsageError,
};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig, accounts_request, session_config};
use broker_session_testkit::sim::{FakeBroker as _, Reply, VirtualClock};

type IgEvent = Event<IgState, IgOutcome>;

const LATENCY: Duration = Duration::from_millis(10);

/// Sessions sharing one login through an in-memory store.
struct Fleet {
    fake: FakeIg,
    clock: VirtualClock,
    config: IgConfig,
    nodes: Vec<IgSession>,
    events: Vec<Vec<IgEvent>>,
    /// The published snapshot and its generation.
    store: Option<(u64, SessionSnapshot)>,
    /// Every generation published, in order.
    published: Vec<u64>,
    /// Recovery requests by refused generation (each handed to the owner once).
    wanted: BTreeSet<u64>,
    /// Refused generations not yet handed to the owner.
    wanted_new: Vec<u64>,
    /// Requests each session sent on its own behalf (not application calls).
    session_requests: Vec<usize>,
    /// Sessions whose process died (never driven again) or is paused.
    dead: Vec<bool>,
    /// The lease's TTL, when the owner's authority is bounded by it: the live owner's
    /// lease deadline is renewed whenever the fleet settles, as a lease thread would.
    lease_ttl: Option<Duration>,
}

impl Fleet {
    fn new(flow: LoginFlow, followers: usize) -> Self {
        Self::with_fake(FakeIg::default(), flow, followers)
    }

    fn with_fake(fake: FakeIg, flow: LoginFlow, followers: usize) -> Self {
        let clock = VirtualClock::new();
        let config = session_config(&fake, flow);
        let mut fleet = Self {
            fake,
            clock,
            config,
            nodes: Vec::new(),
            events: Vec::new(),
            store: None,
            published: Vec::new(),
            wanted: BTreeSet::new(),
            wanted_new: Vec::new(),
            session_requests: Vec::new(),
            dead: Vec::new(),
            lease_ttl: None,
        };
        for _ in 0..=followers {
            fleet.add_follower();
        }
        fleet
    }

    fn add_follower(&mut self) -> usize {
        let n = self.nodes.len() as u64;
        let node = IgSession::follower(
            self.config.clone(),
            RngSeed::from_u64(n + 1),
            self.clock.now(),
        )
        .unwrap();
        self.nodes.push(node);
        self.events.push(Vec::new());
        self.session_requests.push(0);
        self.dead.push(false);
        self.nodes.len() - 1
    }

    /// Node 0 takes the lead (nothing to resume) and logs in; the others adopt.
    fn start(flow: LoginFlow, followers: usize) -> Self {
        let mut fleet = Self::new(flow, followers);
        let lead = fleet.submit(
            0,
            IgIntent::Lead {
                generation_floor: 0,
            },
        );
        assert_eq!(
            fleet.result(0, lead),
            Some(Err(Error::Usage(UsageError::NotLoggedIn)))
        );
        fleet.run(0, IgIntent::Login).unwrap();
        fleet.settle();
        fleet
    }

    fn submit(&mut self, i: usize, intent: IgIntent) -> OpId {
        let now = self.clock.now();
        let op = self.nodes[i].submit(intent, now).unwrap();
        self.pump(i);
        op
    }

    /// Drains node `i`, answering its requests through the fake, and plays the
    /// sharing layer's part for the events it emits.
    fn pump(&mut self, i: usize) -> Option<std::time::Instant> {
        if self.dead[i] {
            return None;
        }
        loop {
            let now = self.clock.now();
            match self.nodes[i].poll_output(now) {
                Output::Send(t) => {
                    self.session_requests[i] += 1;
                    let reply = self.fake.handle(&t.request, now);
                    self.clock.advance(LATENCY);
                    let input = match reply {
                        Reply::Response(response) => Input::Response { id: t.id, response },
                        Reply::Fail(failure) => Input::Failed { id: t.id, failure },
                    };
                    let now = self.clock.now();
                    self.nodes[i].handle_input(input, now);
                }
                Output::Event(e) => {
                    match &e {
                        Event::CredentialsChanged { generation } => {
                            let snapshot = self.nodes[i].snapshot().expect("credentials to share");
                            assert!(
                                self.store.as_ref().is_none_or(|(g, _)| g < generation),
                                "generations only go up"
                            );
                            self.store = Some((*generation, snapshot));
                            self.published.push(*generation);
                        }
                        // The store collapses requests for one generation.
                        Event::CredentialsWanted { refused } if self.wanted.insert(*refused) => {
                            self.wanted_new.push(*refused);
                        }
                        _ => {}
                    }
                    self.events[i].push(e);
                }
                Output::Wait(w) => return w,
                _ => panic!("unknown output"),
            }
        }
    }

    fn owner(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| !self.dead[i] && self.nodes[i].role() == IgRole::Owner)
    }

    /// Delivers what the store holds: recovery requests to the owner, the latest
    /// snapshot to every follower. Returns whether anything was delivered.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        if let Some(owner) = self.owner() {
            for refused in std::mem::take(&mut self.wanted_new) {
                let now = self.clock.now();
                self.nodes[owner]
                    .submit(IgIntent::Recover { refused }, now)
                    .unwrap();
                any = true;
            }
        }
        for i in 0..self.nodes.len() {
            self.pump(i);
            if self.dead[i] || self.nodes[i].role() != IgRole::Follower {
                continue;
            }
            // A follower holding nothing (after demotion) adopts the current one too.
            if let Some((generation, snapshot)) = &self.store
                && (*generation > self.nodes[i].generation() || self.nodes[i].snapshot().is_none())
            {
                let intent = IgIntent::Adopt {
                    generation: *generation,
                    snapshot: snapshot.clone(),
                };
                let now = self.clock.now();
                self.nodes[i].submit(intent, now).unwrap();
                any = true;
            }
        }
        any
    }

    /// Delivers and pumps until nothing moves.
    fn settle(&mut self) {
        if let (Some(ttl), Some(owner)) = (self.lease_ttl, self.owner()) {
            let until = self.clock.now().mono + ttl;
            self.nodes[owner].set_lease_deadline(Some(until));
        }
        for _ in 0..100 {
            let moved = self.deliver();
            for i in 0..self.nodes.len() {
                self.pump(i);
            }
            // Recovery requests wait in the store while no process owns the session.
            if !moved && (self.wanted_new.is_empty() || self.owner().is_none()) {
                return;
            }
        }
        panic!("the fleet did not settle");
    }

    /// Lets `d` pass, running every session's due timers and delivering between them.
    fn advance(&mut self, d: Duration) {
        let end = self.clock.now().mono + d;
        loop {
            self.settle();
            let next = (0..self.nodes.len())
                .filter_map(|i| self.pump(i))
                .min()
                .filter(|t| *t <= end);
            let Some(at) = next else { break };
            self.clock.advance_to(at);
            let now = self.clock.now();
            for (node, dead) in self.nodes.iter_mut().zip(&self.dead) {
                if !dead {
                    node.handle_input(Input::Timeout, now);
                }
            }
        }
        self.clock.advance_to(end);
        self.settle();
    }

    fn result(&self, i: usize, op: OpId) -> Option<Result<IgOutcome, Error>> {
        self.events[i].iter().find_map(|e| match e {
            Event::Completed { op: o, result } if *o == op => Some(result.clone()),
            _ => None,
        })
    }

    fn run(&mut self, i: usize, intent: IgIntent) -> Result<IgOutcome, Error> {
        let op = self.submit(i, intent);
        self.wait(i, op)
    }

    /// Settles the fleet (and lets timers run) until `op` of node `i` completed.
    fn wait(&mut self, i: usize, op: OpId) -> Result<IgOutcome, Error> {
        for _ in 0..1000 {
            self.settle();
            if let Some(r) = self.result(i, op) {
                return r;
            }
            let next = (0..self.nodes.len()).filter_map(|n| self.pump(n)).min();
            let Some(at) = next else {
                panic!("fleet idle while {op} of node {i} is incomplete")
            };
            self.clock.advance_to(at);
            let now = self.clock.now();
            for (node, dead) in self.nodes.iter_mut().zip(&self.dead) {
                if !dead {
                    node.handle_input(Input::Timeout, now);
                }
            }
        }
        panic!("{op} of node {i} did not complete");
    }

    /// An application call from node `i`, the way a transport makes it: authorize
    /// (waiting for credentials at most twice), send, observe, and after a replay or
    /// a recovery send once more. Returns the last status and the number of sends.
    fn call(&mut self, i: usize) -> Result<(u16, usize), Error> {
        let request = accounts_request(&self.fake);
        let mut sends = 0;
        let mut waits = 0;
        loop {
            let mut req = request.clone();
            let now = self.clock.now();
            let stamp = match self.nodes[i].authorize(&mut req, now) {
                Ok(stamp) => stamp,
                Err(AuthorizeError::Pending { op }) if waits < 2 => {
                    waits += 1;
                    self.pump(i);
                    self.wait(i, op)?;
                    continue;
                }
                Err(e) => panic!("node {i} cannot authorize: {e}"),
            };
            sends += 1;
            let Reply::Response(response) = self.fake.handle(&req, now) else {
                panic!("transport failure")
            };
            self.clock.advance(LATENCY);
            let now = self.clock.now();
            let status = response.status().as_u16();
            match self.nodes[i].observe(&response, stamp, now) {
                Observation::Replay if sends < 2 => {}
                Observation::Recover { op } if sends < 2 => {
                    self.pump(i);
                    self.wait(i, op)?;
                }
                Observation::Lost(e) => return Err(e),
                _ => return Ok((status, sends)),
            }
        }
    }

    fn announced(&self, i: usize) -> Vec<u64> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::CredentialsChanged { generation } => Some(*generation),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_fleet_logs_in_once_and_every_follower_calls_with_the_owners_credentials() {
    let mut fleet = Fleet::start(LoginFlow::V3, 4);
    assert_eq!(fleet.published, vec![1]);
    for i in 0..fleet.nodes.len() {
        assert_eq!(fleet.call(i).unwrap(), (200, 1), "node {i}");
        assert_eq!(fleet.nodes[i].generation(), 1);
    }
    assert_eq!(fleet.fake.stats.logins, 1);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
        assert!(matches!(fleet.nodes[i].state(), IgState::Active { .. }));
    }
}

#[test]
fn followers_refused_together_cause_one_refresh_and_one_replay_each() {
    let mut fleet = Fleet::start(LoginFlow::V3, 6);
    fleet.fake.revoke_access_tokens();
    // Every follower's call is refused with generation 1 before any recovery ends.
    let request = accounts_request(&fleet.fake);
    let mut waits = Vec::new();
    for i in 1..fleet.nodes.len() {
        let mut req = request.clone();
        let now = fleet.clock.now();
        let stamp = fleet.nodes[i].authorize(&mut req, now).unwrap();
        let Reply::Response(response) = fleet.fake.handle(&req, now) else {
            panic!()
        };
        assert_eq!(response.status(), 401);
        match fleet.nodes[i].observe(&response, stamp, now) {
            Observation::Recover { op } => waits.push((i, op)),
            other => panic!("follower {i}: {other:?}"),
        }
        fleet.pump(i);
    }
    assert_eq!(fleet.wanted, BTreeSet::from([1]));
    for (i, op) in waits {
        assert_eq!(
            fleet.wait(i, op),
            Ok(IgOutcome::Recovered { generation: 2 })
        );
        assert_eq!(fleet.call(i).unwrap(), (200, 1));
    }
    assert_eq!(fleet.fake.stats.refreshes, 1);
    assert_eq!(fleet.fake.stats.logins, 1);
    assert_eq!(fleet.published, vec![1, 2]);
}

#[test]
fn a_follower_call_refused_recovers_through_the_owner_and_replays_once() {
    let mut fleet = Fleet::start(LoginFlow::V3, 2);
    fleet.fake.revoke_access_tokens();
    assert_eq!(fleet.call(2).unwrap(), (200, 2));
    assert!(fleet.events[2].contains(&Event::CredentialsWanted { refused: 1 }));
    // The other follower adopted the new generation without asking.
    assert_eq!(fleet.call(1).unwrap(), (200, 1));
    assert_eq!(fleet.fake.stats.refreshes, 1);
}

#[test]
fn cst_credentials_refused_in_a_fleet_cost_one_login() {
    let mut fleet = Fleet::start(LoginFlow::V2, 3);
    fleet.fake.expire_cst_sessions();
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.call(i).unwrap().0, 200, "follower {i}");
    }
    assert_eq!(fleet.fake.stats.logins, 2);
    assert_eq!(fleet.published, vec![1, 2]);
}

#[test]
fn a_recovery_for_a_follower_does_not_doom_the_owners_own_next_refusal() {
    // Found by `a_fleet_keeps_its_promises_whatever_happens`: the owner re-logged in
    // for a follower, IG dropped the session again, and the owner's own call was
    // taken for "refused right after its own recovery" and lost the session.
    let mut fleet = Fleet::start(LoginFlow::V2, 1);
    fleet.fake.expire_cst_sessions();
    assert_eq!(fleet.call(1).unwrap(), (200, 2));
    fleet.fake.expire_cst_sessions();
    assert_eq!(fleet.call(0).unwrap(), (200, 2));
    assert_eq!(fleet.fake.stats.logins, 3);
    assert_eq!(fleet.published, vec![1, 2, 3]);
}

#[test]
fn the_owner_recovers_a_generation_only_while_it_is_the_current_one() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    let sent = fleet.session_requests[0];
    // Generation 0 is older than the owner's: nothing to do.
    let op = fleet.submit(0, IgIntent::Recover { refused: 0 });
    assert_eq!(
        fleet.result(0, op),
        Some(Ok(IgOutcome::Recovered { generation: 1 }))
    );
    assert_eq!(fleet.session_requests[0], sent);
    // Two requests for the current generation: one recovery, joined.
    let now = fleet.clock.now();
    let a = fleet.nodes[0]
        .submit(IgIntent::Recover { refused: 1 }, now)
        .unwrap();
    let b = fleet.nodes[0]
        .submit(IgIntent::Recover { refused: 1 }, now)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(fleet.wait(0, a), Ok(IgOutcome::Recovered { generation: 2 }));
    assert_eq!(fleet.fake.stats.refreshes, 1);
}

#[test]
fn token_expiry_in_a_fleet_costs_one_refresh_by_the_owner() {
    let mut fleet = Fleet::start(LoginFlow::V3, 3);
    // Six token lifetimes, with calls from every process all along.
    for _ in 0..36 {
        fleet.advance(Duration::from_secs(10));
        for i in 0..fleet.nodes.len() {
            assert_eq!(fleet.call(i).unwrap().0, 200);
        }
    }
    assert_eq!(fleet.fake.stats.logins, 1);
    // One refresh every 50 s (60 s tokens refreshed 10 s early), by the owner only.
    assert_eq!(fleet.fake.stats.refreshes, 7);
    assert_eq!(fleet.fake.stats.failed_refreshes, 0);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
    assert_eq!(fleet.published, (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_follower_never_acts_on_the_session_by_itself() {
    let mut fleet = Fleet::new(LoginFlow::V3, 0);
    let now = fleet.clock.now();
    for intent in [
        IgIntent::Login,
        IgIntent::Refresh,
        IgIntent::Logout,
        IgIntent::ReadSession {
            fetch_tokens: false,
        },
        IgIntent::Recover { refused: 0 },
    ] {
        assert!(matches!(
            fleet.nodes[0].submit(intent, now),
            Err(UsageError::Unsupported { .. })
        ));
    }
    // Credentials adopted from elsewhere: no refresh timer, even past their expiry.
    let mut owner = Fleet::start(LoginFlow::V3, 0);
    let (generation, snapshot) = owner.store.clone().unwrap();
    let op = fleet.submit(
        0,
        IgIntent::Adopt {
            generation,
            snapshot,
        },
    );
    assert_eq!(
        fleet.result(0, op),
        Some(Ok(IgOutcome::Adopted {
            generation: 1,
            installed: true
        }))
    );
    assert_eq!(fleet.pump(0), None, "a follower sets no timer");
    fleet.clock.advance(Duration::from_secs(3600));
    assert_eq!(fleet.pump(0), None);
    assert_eq!(fleet.session_requests[0], 0);
    // An expired token is not sent: the call waits for a newer generation.
    let mut req = accounts_request(&fleet.fake);
    let now = fleet.clock.now();
    assert!(matches!(
        fleet.nodes[0].authorize(&mut req, now),
        Err(AuthorizeError::Pending { .. })
    ));
    fleet.pump(0);
    assert!(fleet.events[0].contains(&Event::CredentialsWanted { refused: 1 }));
    assert_eq!(fleet.nodes[0].state(), IgState::Recovering);
    owner.advance(Duration::ZERO);
}

#[test]
fn a_wait_for_newer_credentials_ends_at_the_deadline_with_a_typed_error() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    let owner = fleet.nodes.remove(0);
    fleet.events.remove(0);
    fleet.session_requests.remove(0);
    fleet.dead.remove(0);
    drop(owner); // nobody will recover
    fleet.fake.revoke_access_tokens();
    let started = fleet.clock.now().mono;
    let err = fleet.call(0).unwrap_err();
    assert_eq!(err, Error::NoNewerCredentials { refused: 1 });
    assert!(err.is_retryable());
    assert!(fleet.clock.now().mono - started >= Duration::from_secs(30));
    // The session is intact: newer credentials are still adopted.
    assert!(matches!(fleet.nodes[0].state(), IgState::Active { .. }));
}

#[test]
fn adoption_ignores_generations_not_newer_than_the_one_held() {
    let mut owner = Fleet::start(LoginFlow::V3, 0);
    let (_, snapshot) = owner.store.clone().unwrap();
    let mut fleet = Fleet::new(LoginFlow::V3, 0);
    let adopt = |g: u64| IgIntent::Adopt {
        generation: g,
        snapshot: snapshot.clone(),
    };
    let op = fleet.submit(0, adopt(3));
    assert_eq!(
        fleet.result(0, op),
        Some(Ok(IgOutcome::Adopted {
            generation: 3,
            installed: true
        }))
    );
    for g in [3, 2, 1] {
        let op = fleet.submit(0, adopt(g));
        assert_eq!(
            fleet.result(0, op),
            Some(Ok(IgOutcome::Adopted {
                generation: g,
                installed: false
            }))
        );
    }
    assert_eq!(fleet.nodes[0].generation(), 3);
    // Another base URL is refused.
    let mut other = FakeIg::new(FakeIgConfig {
        prefix: "/elsewhere".into(),
        ..FakeIgConfig::default()
    });
    let mut foreign = IgSession::new(
        session_config(&other, LoginFlow::V3),
        RngSeed::from_u64(9),
        fleet.clock.now(),
    )
    .unwrap();
    let now = fleet.clock.now();
    foreign.submit(IgIntent::Login, now).unwrap();
    while let Output::Send(t) = foreign.poll_output(now) {
        let Reply::Response(response) = other.handle(&t.request, now) else {
            panic!()
        };
        foreign.handle_input(Input::Response { id: t.id, response }, now);
    }
    let foreign_snapshot = foreign.snapshot().unwrap();
    assert!(matches!(
        fleet.nodes[0].submit(
            IgIntent::Adopt {
                generation: 9,
                snapshot: foreign_snapshot
            },
            now
        ),
        Err(UsageError::InvalidArgument { .. })
    ));
    owner.advance(Duration::ZERO);
}

#[test]
fn a_follower_takes_over_by_resuming_without_a_new_login() {
    let mut fleet = Fleet::start(LoginFlow::V3, 2);
    // The owner dies.
    let dead = fleet.nodes.remove(0);
    fleet.events.remove(0);
    fleet.session_requests.remove(0);
    fleet.dead.remove(0);
    drop(dead);
    let stored = fleet.store.as_ref().map(|(g, _)| *g).unwrap();
    let outcome = fleet
        .run(
            0,
            IgIntent::Lead {
                generation_floor: stored,
            },
        )
        .unwrap();
    assert!(matches!(outcome, IgOutcome::Resumed(_)));
    assert_eq!(fleet.nodes[0].role(), IgRole::Owner);
    assert_eq!(fleet.fake.stats.logins, 1, "take-over without a login");
    assert_eq!(fleet.fake.stats.count("GET /session"), 1);
    // Same credentials, same generation: nothing new to publish.
    assert_eq!(fleet.published, vec![1]);
    // The new owner keeps the session alive; the remaining follower adopts.
    fleet.advance(Duration::from_secs(60));
    assert_eq!(fleet.fake.stats.refreshes, 1);
    assert_eq!(fleet.published, vec![1, 2]);
    assert_eq!(fleet.announced(0), vec![2]);
    assert_eq!(fleet.nodes[1].generation(), 2);
    assert_eq!(fleet.call(1).unwrap(), (200, 1));
}

#[test]
fn a_take_over_after_the_token_expired_refreshes_and_publishes_a_new_generation() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    let dead = fleet.nodes.remove(0);
    fleet.events.remove(0);
    fleet.session_requests.remove(0);
    fleet.dead.remove(0);
    drop(dead);
    fleet.clock.advance(Duration::from_secs(61));
    let outcome = fleet.run(
        0,
        IgIntent::Lead {
            generation_floor: 1,
        },
    );
    assert!(matches!(outcome, Ok(IgOutcome::Resumed(_))), "{outcome:?}");
    assert_eq!(fleet.fake.stats.logins, 1);
    assert_eq!(fleet.fake.stats.refreshes, 1);
    assert_eq!(fleet.published, vec![1, 2]);
}

#[test]
fn a_take_over_numbers_its_credentials_above_generations_it_never_saw() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    fleet.nodes.remove(0);
    fleet.events.remove(0);
    fleet.session_requests.remove(0);
    fleet.dead.remove(0);
    // The store says generation 7 was published (this follower could not read it).
    fleet.store = None;
    let outcome = fleet.run(
        0,
        IgIntent::Lead {
            generation_floor: 7,
        },
    );
    assert!(matches!(outcome, Ok(IgOutcome::Resumed(_))));
    assert_eq!(fleet.nodes[0].generation(), 8);
    assert_eq!(fleet.announced(0), vec![8]);
}

#[test]
fn a_take_over_with_refused_credentials_leaves_the_new_owner_to_log_in() {
    let mut fleet = Fleet::start(LoginFlow::V2, 1);
    fleet.nodes.remove(0);
    fleet.events.remove(0);
    fleet.session_requests.remove(0);
    fleet.dead.remove(0);
    fleet.fake.expire_cst_sessions();
    let outcome = fleet.run(
        0,
        IgIntent::Lead {
            generation_floor: 1,
        },
    );
    assert!(
        matches!(outcome, Err(Error::Unauthorized(_))),
        "{outcome:?}"
    );
    assert_eq!(fleet.fake.stats.logins, 1);
    fleet.run(0, IgIntent::Login).unwrap();
    assert_eq!(fleet.announced(0), vec![2]);
}

#[test]
fn an_owner_that_lost_its_ownership_stops_acting_at_once() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    // A refresh is queued, then the ownership is lost.
    let now = fleet.clock.now();
    let refresh = fleet.nodes[0].submit(IgIntent::Refresh, now).unwrap();
    let sent = fleet.session_requests[0];
    let op = fleet.submit(0, IgIntent::Follow { generation: 1 });
    assert_eq!(fleet.result(0, op), Some(Ok(IgOutcome::Following)));
    assert_eq!(fleet.result(0, refresh), Some(Err(Error::Cancelled)));
    assert_eq!(fleet.nodes[0].role(), IgRole::Follower);
    // Past the token's expiry and its refresh time (within the refresh token's grace).
    fleet.clock.advance(Duration::from_secs(300));
    assert_eq!(fleet.pump(0), None);
    assert_eq!(fleet.session_requests[0], sent, "no request after demotion");
    assert_eq!(fleet.announced(0), vec![1]);
    // It adopts what the new owner publishes.
    fleet.nodes[1]
        .submit(
            IgIntent::Lead {
                generation_floor: 1,
            },
            fleet.clock.now(),
        )
        .unwrap();
    fleet.settle();
    // The new owner refreshed the expired token first, as generation 2.
    assert_eq!(fleet.published, vec![1, 2]);
    assert_eq!(fleet.nodes[0].generation(), 2);
    assert_eq!(fleet.call(0).unwrap(), (200, 1));
}

#[test]
fn an_owner_driven_after_its_lease_deadline_steps_down_before_refreshing() {
    let mut fleet = Fleet::start(LoginFlow::V3, 1);
    let lease_end = fleet.clock.now().mono + Duration::from_secs(15);
    fleet.nodes[0].set_lease_deadline(Some(lease_end));
    let sent = fleet.session_requests[0];
    // The process is paused past its lease, its refresh time (60 s tokens, refreshed
    // 10 s early) and the token's expiry; meanwhile node 1 takes over and refreshes.
    fleet.clock.advance(Duration::from_secs(61));
    fleet.nodes[1]
        .submit(
            IgIntent::Lead {
                generation_floor: 1,
            },
            fleet.clock.now(),
        )
        .unwrap();
    fleet.pump(1);
    assert_eq!(fleet.published, vec![1, 2], "the new owner refreshed");
    // Running again, the ex-owner's first step is to follow, whether an application
    // call or its overdue timer drives it: no refresh with the refresh token the new
    // owner now holds.
    assert!(fleet.pump(0).is_none(), "no timer left");
    assert_eq!(fleet.nodes[0].role(), IgRole::Follower);
    assert_eq!(
        fleet.session_requests[0], sent,
        "no request after the lease's end"
    );
    assert_eq!(fleet.fake.stats.refreshes, 1);
    assert_eq!(fleet.fake.stats.failed_refreshes, 0);
    assert_eq!(fleet.fake.stats.reused_refresh_tokens, 0);
    // It adopts the new generation and calls with it.
    fleet.settle();
    assert_eq!(fleet.nodes[0].generation(), 2);
    assert_eq!(fleet.call(0).unwrap(), (200, 1));
    // A deadline renewed in time keeps the owner leading.
    let now = fleet.clock.now().mono;
    fleet.nodes[1].set_lease_deadline(Some(now + Duration::from_secs(15)));
    fleet.clock.advance(Duration::from_secs(10));
    fleet.nodes[1].set_lease_deadline(Some(now + Duration::from_secs(25)));
    assert_eq!(fleet.call(1).unwrap(), (200, 1));
    assert_eq!(fleet.nodes[1].role(), IgRole::Owner);
}

#[test]
fn sessions_that_share_nothing_announce_nothing() {
    let fake = FakeIg::default();
    let clock = VirtualClock::new();
    let mut s = broker_session_testkit::sim::Sim::with_clock(
        IgSession::new(
            session_config(&fake, LoginFlow::V3),
            RngSeed::from_u64(1),
            clock.now(),
        )
        .unwrap(),
        fake,
        clock,
    );
    s.run(IgIntent::Login).unwrap();
    s.advance(Duration::from_secs(200));
    assert!(s.broker.stats.refreshes >= 3);
    assert!(!s.events.iter().any(|e| matches!(
        e,
        Event::CredentialsChanged { .. } | Event::CredentialsWanted { .. }
    )));
    assert_eq!(s.machine.role(), IgRole::Owner);
}

/// What may happen to a fleet, in any order.
#[derive(Clone, Debug)]
enum Step {
    /// An application call from this session (index taken modulo the fleet's size).
    Call(usize),
    /// IG drops every access token (v3) or CST (v2) at once.
    Refuse,
    /// Virtual time passes, every live session's timers running.
    Advance(u64),
    /// The owner's process dies.
    KillOwner,
    /// The owner loses its lease and steps down; nobody owns until a take-over.
    Demote,
    /// The owner's process stops (its lease is no longer renewed); it runs again at
    /// `Wake`.
    PauseOwner,
    /// The paused process runs again: its overdue timers fire first.
    Wake,
    /// This session takes the lease if nobody owns.
    TakeOver(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0usize..8).prop_map(Step::Call),
        1 => Just(Step::Refuse),
        3 => (0u64..90).prop_map(Step::Advance),
        1 => Just(Step::KillOwner),
        1 => Just(Step::Demote),
        1 => Just(Step::PauseOwner),
        1 => Just(Step::Wake),
        2 => (0usize..8).prop_map(Step::TakeOver),
    ]
}

/// Cases of the fleet property: `PROPTEST_CASES`, 64 by default.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

    /// Interleavings of adoption, refusals, recoveries, deaths, demotions and
    /// take-overs: generations only go up, followers never act on the session,
    /// logins and refreshes stay bounded by what forced them, and a call made while
    /// an owner lives gets through.
    #[test]
    fn a_fleet_keeps_its_promises_whatever_happens(
        v3 in proptest::prelude::any::<bool>(),
        steps in proptest::collection::vec(step(), 1..30),
    ) {
        let flow = if v3 { LoginFlow::V3 } else { LoginFlow::V2 };
        let mut fleet = Fleet::start(flow, 3);
        let lease_ttl = Duration::from_secs(15);
        fleet.lease_ttl = Some(lease_ttl);
        fleet.settle();
        let n = fleet.nodes.len();
        // The paused process and when its lease ends.
        let mut paused: Option<(usize, std::time::Instant)> = None;
        let mut ever_owner = vec![false; n];
        ever_owner[0] = true;
        let (mut refusals, mut takeovers, mut seconds) = (0usize, 0usize, 0u64);
        let mut held = vec![0u64; n];
        for step in steps {
            match step {
                Step::Call(i) => {
                    let i = i % n;
                    if fleet.dead[i] {
                        continue;
                    }
                    let owned_before = fleet.owner().is_some();
                    let result = fleet.call(i);
                    if owned_before && fleet.owner().is_some() {
                        proptest::prop_assert_eq!(result.map(|r| r.0), Ok(200), "call from {}", i);
                    } else {
                        proptest::prop_assert!(
                            matches!(result, Ok((200, _)) | Err(Error::NoNewerCredentials { .. })),
                            "{:?}", result
                        );
                    }
                }
                Step::Refuse => {
                    refusals += 1;
                    if v3 {
                        fleet.fake.revoke_access_tokens();
                    } else {
                        fleet.fake.expire_cst_sessions();
                    }
                }
                Step::Advance(s) => {
                    seconds += s;
                    fleet.advance(Duration::from_secs(s));
                }
                Step::KillOwner => {
                    let live = fleet.dead.iter().filter(|d| !**d).count();
                    if let Some(o) = fleet.owner().filter(|_| live > 1) {
                        fleet.dead[o] = true;
                    }
                }
                Step::PauseOwner => {
                    let live = fleet.dead.iter().filter(|d| !**d).count();
                    if paused.is_none()
                        && let Some(o) = fleet.owner().filter(|_| live > 1)
                    {
                        fleet.dead[o] = true;
                        paused = Some((o, fleet.clock.now().mono + lease_ttl));
                    }
                }
                Step::Wake => {
                    if let Some((p, until)) = paused.take() {
                        fleet.dead[p] = false;
                        let sent = fleet.session_requests[p];
                        fleet.pump(p);
                        if fleet.clock.now().mono >= until {
                            // Past its lease: it follows before it acts.
                            proptest::prop_assert_eq!(fleet.nodes[p].role(), IgRole::Follower);
                            proptest::prop_assert_eq!(fleet.session_requests[p], sent, "a woken ex-owner sent a request");
                        }
                        fleet.settle();
                    }
                }
                Step::Demote => {
                    if let Some(o) = fleet.owner() {
                        let generation = fleet.store.as_ref().map_or(0, |(g, _)| *g);
                        fleet.submit(o, IgIntent::Follow { generation });
                        fleet.settle();
                    }
                }
                Step::TakeOver(i) => {
                    let i = i % n;
                    if fleet.dead[i] || fleet.owner().is_some() {
                        continue;
                    }
                    if let Some((_, until)) = paused {
                        // A paused owner's lease must lapse before anyone takes it.
                        let left = until.saturating_duration_since(fleet.clock.now().mono);
                        seconds += left.as_secs() + 1;
                        fleet.advance(left);
                    }
                    takeovers += 1;
                    ever_owner[i] = true;
                    fleet.settle();
                    let floor = fleet.store.as_ref().map_or(0, |(g, _)| *g);
                    if fleet.run(i, IgIntent::Lead { generation_floor: floor }).is_err() {
                        fleet.run(i, IgIntent::Login).unwrap();
                    }
                    fleet.settle();
                }
            }
            let stored = fleet.store.as_ref().map_or(0, |(g, _)| *g);
            for i in 0..n {
                if !ever_owner[i] {
                    proptest::prop_assert_eq!(fleet.session_requests[i], 0, "follower {} sent a request", i);
                }
                if fleet.nodes[i].role() == IgRole::Follower {
                    let g = fleet.nodes[i].generation();
                    proptest::prop_assert!(g <= stored, "follower {} at {} above the store's {}", i, g, stored);
                    proptest::prop_assert!(g >= held[i] || fleet.nodes[i].snapshot().is_none());
                    held[i] = g;
                }
            }
            let stats = &fleet.fake.stats;
            // Never two owners acting on one refresh token.
            proptest::prop_assert_eq!(stats.reused_refresh_tokens, 0, "{:?}", stats);
            proptest::prop_assert!(
                stats.logins <= 1 + refusals + takeovers,
                "{} logins after {} refusals and {} take-overs", stats.logins, refusals, takeovers
            );
            proptest::prop_assert!(
                stats.refreshes as u64 <= 2 + seconds / 40 + (refusals + takeovers) as u64,
                "{} refreshes in {} s", stats.refreshes, seconds
            );
        }
    }
}
