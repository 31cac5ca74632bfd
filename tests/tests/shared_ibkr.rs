//! One IBKR login shared by a fleet of sessions, in memory: one owner, followers that
//! sign with its live session token (OAuth) or send through its gateway session,
//! single-flight recovery across the fleet, take-over without a new token and without
//! a competing take-over, and demotion of an owner that lost its ownership.
//!
//! [`Fleet`] plays the part of the sharing layer (in production `broker-session-redis`)
//! without IO, as in `shared_ig.rs`: what an owner announces with
//! `Event::CredentialsChanged` is stored with its generation and adopted by every
//! follower; what a follower asks for with `Event::CredentialsWanted` is handed to the
//! owner as `IbkrIntent::Recover`, once per refused generation. Every session talks
//! to the same fake IBKR on one virtual clock.
//!
//! `an_ibkr_fleet_keeps_its_promises_whatever_happens` interleaves calls, refusals,
//! time, deaths, demotions and take-overs at random (proptest) and checks after every
//! step that generations only go up, followers never send a request of their own,
//! token requests stay bounded by what forced them, nothing ever asks to compete, and
//! calls get through while an owner lives.

use std::collections::BTreeSet;
use std::time::Duration;

use broker_session::ibkr::{
    IbkrConfig, IbkrIntent, IbkrOutcome, IbkrRole, IbkrSession, IbkrSnapshot, IbkrState,
};
use broker_session::{
    AuthorizeError, Error, Event, Input, Machine, Observation, OpId, Output, RngSeed, UsageError,
};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::secret_scan;
use broker_session_testkit::sim::{FakeBroker as _, Reply, VirtualClock};

type IbkrEvent = Event<IbkrState, IbkrOutcome>;

const LATENCY: Duration = Duration::from_millis(10);
const ACCOUNTS: &str = "/iserver/accounts";

/// The way in a fleet uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    OAuth,
    Gateway,
}

/// Sessions sharing one login through an in-memory store.
struct Fleet {
    fake: FakeIbkr,
    clock: VirtualClock,
    config: IbkrConfig,
    nodes: Vec<IbkrSession>,
    events: Vec<Vec<IbkrEvent>>,
    /// The published snapshot and its generation.
    store: Option<(u64, IbkrSnapshot)>,
    /// Every generation published, in order.
    published: Vec<u64>,
    /// Recovery requests by refused generation (each handed to the owner once).
    wanted: BTreeSet<u64>,
    /// Refused generations not yet handed to the owner.
    wanted_new: Vec<u64>,
    /// Requests each session sent on its own behalf (not application calls).
    session_requests: Vec<usize>,
    /// Sessions whose process died: never driven again.
    dead: Vec<bool>,
    /// A connect the test asked for is running: its `ssodh/init` follows the
    /// configuration (`compete=true` by default). Nothing else may compete.
    user_connect: bool,
}

impl Fleet {
    fn new(mode: Mode, followers: usize) -> Self {
        Self::with_lifetime(mode, followers, Duration::from_secs(24 * 3600))
    }

    /// A fleet whose fake issues live session tokens living `lst_lifetime`.
    fn with_lifetime(mode: Mode, followers: usize, lst_lifetime: Duration) -> Self {
        let (fake, config) = match mode {
            Mode::OAuth => {
                let (mut fake, oauth) = FakeIbkr::oauth(false);
                if let Some(server) = fake.oauth_server() {
                    server.lst_lifetime = lst_lifetime;
                }
                (fake, FakeIbkr::oauth_config(oauth))
            }
            Mode::Gateway => (FakeIbkr::gateway(), FakeIbkr::gateway_config()),
        };
        let mut fleet = Self {
            fake,
            clock: VirtualClock::new(),
            config,
            nodes: Vec::new(),
            events: Vec::new(),
            store: None,
            published: Vec::new(),
            wanted: BTreeSet::new(),
            wanted_new: Vec::new(),
            session_requests: Vec::new(),
            dead: Vec::new(),
            user_connect: false,
        };
        for _ in 0..=followers {
            fleet.add_follower();
        }
        fleet
    }

    fn add_follower(&mut self) -> usize {
        let n = self.nodes.len() as u64;
        let node = IbkrSession::follower(
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

    /// Node 0 takes the lead and connects (OAuth: nothing to take over, so the lead
    /// asks for a connect); the others adopt.
    fn start(mode: Mode, followers: usize) -> Self {
        Self::start_with(Self::new(mode, followers))
    }

    fn start_with(mut fleet: Self) -> Self {
        let lead = fleet.submit(
            0,
            IbkrIntent::Lead {
                generation_floor: 0,
            },
        );
        if fleet.fake.oauth_server().is_some() {
            assert_eq!(
                fleet.result(0, lead),
                Some(Err(Error::Usage(UsageError::NotLoggedIn)))
            );
            fleet.run(0, IbkrIntent::Connect).unwrap();
        } else {
            let out = fleet.wait(0, lead).unwrap();
            assert!(matches!(out, IbkrOutcome::Connected(_)), "{out:?}");
        }
        fleet.settle();
        fleet
    }

    fn token_requests(&mut self) -> usize {
        self.fake.requests_to("/oauth/live_session_token").count()
    }

    fn tickles(&self) -> usize {
        self.fake.requests_to("/tickle").count()
    }

    fn submit(&mut self, i: usize, intent: IbkrIntent) -> OpId {
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
                    if t.request.uri().path().ends_with("/ssodh/init") {
                        let body = String::from_utf8_lossy(t.request.body()).into_owned();
                        assert!(
                            self.user_connect || !body.contains("\"compete\":true"),
                            "node {i} asked to compete: {body}"
                        );
                    }
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
                            let snapshot = self.nodes[i].snapshot().expect("a session to share");
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
        (0..self.nodes.len()).find(|&i| !self.dead[i] && self.nodes[i].role() == IbkrRole::Owner)
    }

    /// Delivers what the store holds: recovery requests to the owner, the latest
    /// snapshot to every follower. Returns whether anything was delivered.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        if let Some(owner) = self.owner() {
            for refused in std::mem::take(&mut self.wanted_new) {
                let now = self.clock.now();
                self.nodes[owner]
                    .submit(IbkrIntent::Recover { refused }, now)
                    .unwrap();
                any = true;
            }
        }
        for i in 0..self.nodes.len() {
            self.pump(i);
            if self.dead[i] || self.nodes[i].role() != IbkrRole::Follower {
                continue;
            }
            if let Some((generation, snapshot)) = &self.store
                && (*generation > self.nodes[i].generation() || !self.nodes[i].holds_credentials())
            {
                let intent = IbkrIntent::Adopt {
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
        for _ in 0..100 {
            let moved = self.deliver();
            for i in 0..self.nodes.len() {
                self.pump(i);
            }
            if !moved && (self.wanted_new.is_empty() || self.owner().is_none()) {
                return;
            }
        }
        panic!("the fleet did not settle");
    }

    fn tick(&mut self, at: std::time::Instant) {
        self.clock.advance_to(at);
        let now = self.clock.now();
        for (node, dead) in self.nodes.iter_mut().zip(&self.dead) {
            if !dead {
                node.handle_input(Input::Timeout, now);
            }
        }
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
            self.tick(at);
        }
        self.clock.advance_to(end);
        self.settle();
    }

    fn result(&self, i: usize, op: OpId) -> Option<Result<IbkrOutcome, Error>> {
        self.events[i].iter().find_map(|e| match e {
            Event::Completed { op: o, result } if *o == op => Some(result.clone()),
            _ => None,
        })
    }

    fn run(&mut self, i: usize, intent: IbkrIntent) -> Result<IbkrOutcome, Error> {
        self.user_connect = intent == IbkrIntent::Connect;
        let op = self.submit(i, intent);
        let result = self.wait(i, op);
        self.user_connect = false;
        result
    }

    /// Settles the fleet (and lets timers run) until `op` of node `i` completed.
    fn wait(&mut self, i: usize, op: OpId) -> Result<IbkrOutcome, Error> {
        for _ in 0..1000 {
            self.settle();
            if let Some(r) = self.result(i, op) {
                return r;
            }
            let next = (0..self.nodes.len()).filter_map(|n| self.pump(n)).min();
            let Some(at) = next else {
                panic!("fleet idle while {op} of node {i} is incomplete")
            };
            self.tick(at);
        }
        panic!("{op} of node {i} did not complete");
    }

    fn request(&self) -> http::Request<Vec<u8>> {
        let base = self.config.base_url.trim_end_matches('/');
        http::Request::get(format!("{base}{ACCOUNTS}"))
            .body(Vec::new())
            .unwrap()
    }

    /// An application call from node `i`, the way a transport makes it: authorize
    /// (waiting for a generation at most twice), send, observe, and after a replay or
    /// a recovery send once more. Returns the last status and the number of sends.
    fn call(&mut self, i: usize) -> Result<(u16, usize), Error> {
        let request = self.request();
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
                Err(AuthorizeError::Lost(e)) => return Err(e),
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

    /// Removes node `i` as if its process died.
    fn kill(&mut self, i: usize) {
        self.dead[i] = true;
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
fn an_oauth_fleet_asks_for_one_token_and_every_follower_signs_with_it() {
    let mut fleet = Fleet::start(Mode::OAuth, 4);
    assert_eq!(fleet.published, vec![1]);
    for i in 0..fleet.nodes.len() {
        assert_eq!(fleet.call(i).unwrap(), (200, 1), "node {i}");
        assert_eq!(fleet.nodes[i].generation(), 1);
        assert_eq!(fleet.nodes[i].state(), IbkrState::Ready);
    }
    assert_eq!(fleet.token_requests(), 1);
    assert_eq!(fleet.fake.oauth_server().unwrap().bad_signatures, 0);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
}

#[test]
fn followers_refused_together_cause_one_token_renewal_and_one_replay_each() {
    let mut fleet = Fleet::start(Mode::OAuth, 6);
    fleet.fake.oauth_server().unwrap().revoke();
    let request = fleet.request();
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
            Ok(IbkrOutcome::Recovered { generation: 2 })
        );
        assert_eq!(fleet.call(i).unwrap(), (200, 1));
    }
    assert_eq!(fleet.token_requests(), 2);
    assert_eq!(fleet.published, vec![1, 2]);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
}

#[test]
fn a_follower_call_refused_recovers_through_the_owner_and_replays_once() {
    let mut fleet = Fleet::start(Mode::OAuth, 2);
    fleet.fake.oauth_server().unwrap().revoke();
    assert_eq!(fleet.call(2).unwrap(), (200, 2));
    assert!(fleet.events[2].contains(&Event::CredentialsWanted { refused: 1 }));
    // The other follower adopted the new generation without asking.
    assert_eq!(fleet.call(1).unwrap(), (200, 1));
    assert_eq!(fleet.token_requests(), 2);
}

#[test]
fn the_owner_recovers_a_generation_only_while_it_is_the_current_one() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    let sent = fleet.session_requests[0];
    let op = fleet.submit(0, IbkrIntent::Recover { refused: 0 });
    assert_eq!(
        fleet.result(0, op),
        Some(Ok(IbkrOutcome::Recovered { generation: 1 }))
    );
    assert_eq!(fleet.session_requests[0], sent);
    let now = fleet.clock.now();
    let a = fleet.nodes[0]
        .submit(IbkrIntent::Recover { refused: 1 }, now)
        .unwrap();
    let b = fleet.nodes[0]
        .submit(IbkrIntent::Recover { refused: 1 }, now)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        fleet.wait(0, a),
        Ok(IbkrOutcome::Recovered { generation: 2 })
    );
    assert_eq!(fleet.token_requests(), 2);
}

#[test]
fn token_expiry_in_a_fleet_costs_one_renewal_by_the_owner_per_lifetime() {
    // Tokens of 20 minutes, renewed 5 minutes early (the default margin): one renewal
    // every 15 minutes, by the owner alone.
    let mut fleet = Fleet::start_with(Fleet::with_lifetime(
        Mode::OAuth,
        3,
        Duration::from_secs(20 * 60),
    ));
    for _ in 0..36 {
        fleet.advance(Duration::from_secs(100));
        for i in 0..fleet.nodes.len() {
            assert_eq!(fleet.call(i).unwrap().0, 200, "node {i}");
        }
    }
    // An hour (and the calls' latency): the first token and four renewals.
    assert_eq!(fleet.token_requests(), 5);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
    assert_eq!(fleet.published, (1..=5).collect::<Vec<_>>());
    // The keep-alive is the owner's alone: one process's tickles.
    let tickles = fleet.tickles();
    assert!((55..=65).contains(&tickles), "{tickles} tickles in an hour");
}

#[test]
fn a_follower_never_acts_on_the_session_by_itself() {
    for mode in [Mode::OAuth, Mode::Gateway] {
        let mut fleet = Fleet::new(mode, 0);
        let now = fleet.clock.now();
        for intent in [
            IbkrIntent::Connect,
            IbkrIntent::CheckStatus,
            IbkrIntent::InitBrokerage {
                compete: Some(false),
            },
            IbkrIntent::Tickle,
            IbkrIntent::Reauthenticate,
            IbkrIntent::Validate,
            IbkrIntent::RenewToken,
            IbkrIntent::Logout,
            IbkrIntent::Recover { refused: 0 },
        ] {
            assert!(
                matches!(
                    fleet.nodes[0].submit(intent.clone(), now),
                    Err(UsageError::Unsupported { .. })
                ),
                "{mode:?} {intent:?}"
            );
        }
        // Adopted from elsewhere: no renewal, no tickle, even past the token's expiry.
        let mut owner = Fleet::start(mode, 0);
        let (generation, snapshot) = owner.store.clone().unwrap();
        let op = fleet.submit(
            0,
            IbkrIntent::Adopt {
                generation,
                snapshot,
            },
        );
        assert_eq!(
            fleet.result(0, op),
            Some(Ok(IbkrOutcome::Adopted {
                generation,
                installed: true
            }))
        );
        assert_eq!(fleet.pump(0), None, "a follower sets no timer");
        fleet.clock.advance(Duration::from_secs(48 * 3600));
        assert_eq!(fleet.pump(0), None);
        assert_eq!(fleet.session_requests[0], 0);
        if mode == Mode::OAuth {
            // An expired token is not used: the call waits for a newer generation.
            let mut req = fleet.request();
            let now = fleet.clock.now();
            assert!(matches!(
                fleet.nodes[0].authorize(&mut req, now),
                Err(AuthorizeError::Pending { .. })
            ));
            fleet.pump(0);
            assert!(fleet.events[0].contains(&Event::CredentialsWanted { refused: 1 }));
        }
        owner.advance(Duration::ZERO);
    }
}

#[test]
fn a_wait_for_a_newer_generation_ends_at_the_deadline_with_a_typed_error() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    fleet.kill(0); // nobody will recover
    fleet.fake.oauth_server().unwrap().revoke();
    let started = fleet.clock.now().mono;
    let err = fleet.call(1).unwrap_err();
    assert_eq!(err, Error::NoNewerCredentials { refused: 1 });
    assert!(err.is_retryable());
    assert!(fleet.clock.now().mono - started >= Duration::from_secs(30));
    // The session is intact: a newer generation is still adopted.
    assert_eq!(fleet.nodes[1].role(), IbkrRole::Follower);
    assert!(fleet.nodes[1].holds_credentials());
}

#[test]
fn adoption_ignores_generations_not_newer_than_the_one_held_and_foreign_snapshots() {
    let mut owner = Fleet::start(Mode::OAuth, 0);
    let (_, snapshot) = owner.store.clone().unwrap();
    let mut fleet = Fleet::new(Mode::OAuth, 0);
    let adopt = |g: u64| IbkrIntent::Adopt {
        generation: g,
        snapshot: snapshot.clone(),
    };
    let op = fleet.submit(0, adopt(3));
    assert_eq!(
        fleet.result(0, op),
        Some(Ok(IbkrOutcome::Adopted {
            generation: 3,
            installed: true
        }))
    );
    for g in [3, 2, 1] {
        let op = fleet.submit(0, adopt(g));
        assert_eq!(
            fleet.result(0, op),
            Some(Ok(IbkrOutcome::Adopted {
                generation: g,
                installed: false
            }))
        );
    }
    assert_eq!(fleet.nodes[0].generation(), 3);
    // A gateway's snapshot, or another base URL, is refused.
    let now = fleet.clock.now();
    let gateway = Fleet::start(Mode::Gateway, 0);
    let (_, gateway_snapshot) = gateway.store.clone().unwrap();
    let mut persisted = snapshot.expose_secrets();
    persisted.base_url = "https://elsewhere.example/v1/api".into();
    for foreign in [gateway_snapshot, IbkrSnapshot::from_persisted(persisted)] {
        assert!(matches!(
            fleet.nodes[0].submit(
                IbkrIntent::Adopt {
                    generation: 9,
                    snapshot: foreign
                },
                now
            ),
            Err(UsageError::InvalidArgument { .. })
        ));
    }
    owner.advance(Duration::ZERO);
}

#[test]
fn a_follower_takes_over_with_the_adopted_token_and_no_token_request() {
    let mut fleet = Fleet::start(Mode::OAuth, 2);
    fleet.kill(0);
    let tokens = fleet.token_requests();
    let tickles = fleet.tickles();
    let stored = fleet.store.as_ref().map(|(g, _)| *g).unwrap();
    let outcome = fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: stored,
            },
        )
        .unwrap();
    assert!(matches!(outcome, IbkrOutcome::Connected(_)), "{outcome:?}");
    assert_eq!(fleet.nodes[1].role(), IbkrRole::Owner);
    assert_eq!(
        fleet.token_requests(),
        tokens,
        "take-over without a token request"
    );
    assert_eq!(fleet.published, vec![1], "same token, same generation");
    // The new owner keeps the session alive: its tickles, the fleet's only ones.
    fleet.advance(Duration::from_secs(600));
    let more = fleet.tickles() - tickles;
    assert!((9..=11).contains(&more), "{more} tickles in 10 minutes");
    assert_eq!(fleet.token_requests(), tokens);
    assert_eq!(fleet.call(2).unwrap(), (200, 1));
    assert_eq!(fleet.session_requests[2], 0);
}

#[test]
fn a_take_over_renews_the_adopted_token_ahead_of_its_expiry() {
    let mut fleet = Fleet::start_with(Fleet::with_lifetime(
        Mode::OAuth,
        1,
        Duration::from_secs(20 * 60),
    ));
    fleet.kill(0);
    fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: 1,
            },
        )
        .unwrap();
    assert_eq!(fleet.token_requests(), 1);
    // Renewed the margin (5 minutes) before its expiry, once.
    fleet.advance(Duration::from_secs(14 * 60));
    assert_eq!(fleet.token_requests(), 1);
    fleet.advance(Duration::from_secs(2 * 60));
    assert_eq!(fleet.token_requests(), 2);
    assert_eq!(fleet.announced(1), vec![2]);
}

#[test]
fn a_take_over_after_the_token_expired_leaves_the_new_owner_to_connect() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    fleet.kill(0);
    fleet.clock.advance(Duration::from_secs(25 * 3600));
    let outcome = fleet.run(
        1,
        IbkrIntent::Lead {
            generation_floor: 1,
        },
    );
    assert_eq!(outcome, Err(Error::Usage(UsageError::NotLoggedIn)));
    assert_eq!(fleet.token_requests(), 1);
    fleet.run(1, IbkrIntent::Connect).unwrap();
    assert_eq!(fleet.token_requests(), 2);
    assert_eq!(fleet.announced(1), vec![2]);
}

#[test]
fn a_take_over_numbers_its_generations_above_ones_it_never_saw() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    fleet.kill(0);
    fleet.store = None;
    let outcome = fleet.run(
        1,
        IbkrIntent::Lead {
            generation_floor: 7,
        },
    );
    assert!(matches!(outcome, Ok(IbkrOutcome::Connected(_))));
    assert_eq!(fleet.nodes[1].generation(), 8);
    assert_eq!(fleet.announced(1), vec![8]);
}

#[test]
fn an_owner_that_lost_its_ownership_stops_acting_at_once() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    let now = fleet.clock.now();
    let renew = fleet.nodes[0].submit(IbkrIntent::RenewToken, now).unwrap();
    let op = fleet.submit(0, IbkrIntent::Follow { generation: 1 });
    assert_eq!(fleet.result(0, op), Some(Ok(IbkrOutcome::Following)));
    assert!(matches!(
        fleet.result(0, renew),
        Some(Err(Error::Cancelled))
    ));
    assert_eq!(fleet.nodes[0].role(), IbkrRole::Follower);
    let sent = fleet.session_requests[0];
    // Hours pass: no tickle, no renewal.
    fleet.clock.advance(Duration::from_secs(3 * 3600));
    fleet.pump(0);
    assert_eq!(fleet.session_requests[0], sent, "no request after demotion");
    // It adopts what the new owner publishes.
    fleet.settle();
    let floor = fleet.store.as_ref().map_or(0, |(g, _)| *g);
    fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: floor,
            },
        )
        .unwrap();
    fleet.settle();
    assert!(fleet.nodes[0].holds_credentials());
    assert_eq!(fleet.call(0).unwrap().0, 200);
}

#[test]
fn an_owner_driven_after_its_lease_ended_steps_down_before_renewing() {
    let mut fleet = Fleet::start_with(Fleet::with_lifetime(
        Mode::OAuth,
        1,
        Duration::from_secs(20 * 60),
    ));
    // The brokerage session outlives the pause (IBKR drops it after ~5 idle minutes).
    fleet.fake.idle_timeout = Duration::from_secs(3600);
    let start = fleet.clock.now().mono;
    fleet.nodes[0].set_lease_deadline(Some(start + Duration::from_secs(60)));
    let sent = fleet.session_requests[0];
    // The process is paused past its lease and past its token's renewal time.
    fleet.clock.advance(Duration::from_secs(16 * 60));
    fleet.pump(0);
    assert_eq!(fleet.nodes[0].role(), IbkrRole::Follower);
    assert_eq!(fleet.session_requests[0], sent, "no tickle, no renewal");
    assert_eq!(fleet.token_requests(), 1);
    // The token it holds still serves its calls until it expires.
    assert_eq!(fleet.call(0).unwrap(), (200, 1));
    // Renewed with each lease renewal, the bound lets a live owner act.
    let now = fleet.clock.now().mono;
    fleet.nodes[1].set_lease_deadline(Some(now + Duration::from_secs(3600)));
    fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: 1,
            },
        )
        .unwrap();
    assert_eq!(fleet.nodes[1].role(), IbkrRole::Owner);
    fleet.advance(Duration::from_secs(60));
    assert_eq!(fleet.nodes[1].role(), IbkrRole::Owner);
}

#[test]
fn a_gateway_fleet_tickles_from_one_process_and_followers_only_send_calls() {
    let mut fleet = Fleet::start(Mode::Gateway, 3);
    assert_eq!(fleet.published, vec![1]);
    fleet.advance(Duration::from_secs(3600));
    for i in 0..fleet.nodes.len() {
        assert_eq!(fleet.call(i).unwrap(), (200, 1), "node {i}");
    }
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
    let tickles = fleet.tickles();
    assert!((55..=65).contains(&tickles), "{tickles} tickles in an hour");
    assert_eq!(
        fleet.fake.requests_to("/iserver/auth/ssodh/init").count(),
        1
    );
}

#[test]
fn a_gateway_followers_no_bridge_is_one_recovery_without_competing() {
    let mut fleet = Fleet::start(Mode::Gateway, 4);
    fleet.fake.drop_brokerage_session();
    let inits = fleet.fake.requests_to("/iserver/auth/ssodh/init").count();
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.call(i).unwrap().0, 200, "follower {i}");
    }
    assert_eq!(fleet.wanted, BTreeSet::from([1]));
    assert_eq!(
        fleet.fake.requests_to("/iserver/auth/ssodh/init").count(),
        inits + 1
    );
    assert_eq!(fleet.published, vec![1, 2]);
    for i in 1..fleet.nodes.len() {
        assert_eq!(fleet.session_requests[i], 0, "follower {i} sent a request");
    }
}

#[test]
fn a_gateway_take_over_is_a_status_check_that_never_competes() {
    let mut fleet = Fleet::start(Mode::Gateway, 1);
    fleet.kill(0);
    // Another platform took the brokerage session meanwhile: the new owner reports it
    // rather than taking it over.
    fleet.fake.competing = true;
    let before = fleet.fake.requests.len();
    let out = fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: 1,
            },
        )
        .unwrap();
    assert!(matches!(out, IbkrOutcome::Status(_)), "{out:?}");
    let paths: Vec<_> = fleet.fake.requests[before..]
        .iter()
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(paths, ["/iserver/auth/status"]);
    assert!(fleet.fake.competing, "the other session was not taken over");
    // Without competition the take-over is the same status check, then the tickles.
    let mut fleet = Fleet::start(Mode::Gateway, 1);
    fleet.kill(0);
    let before = fleet.fake.requests.len();
    let out = fleet
        .run(
            1,
            IbkrIntent::Lead {
                generation_floor: 1,
            },
        )
        .unwrap();
    assert!(matches!(out, IbkrOutcome::Connected(_)), "{out:?}");
    assert_eq!(fleet.fake.requests[before].path, "/iserver/auth/status");
    assert_eq!(
        fleet.fake.requests_to("/iserver/auth/ssodh/init").count(),
        1
    );
}

#[test]
fn sessions_that_share_nothing_announce_nothing() {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let clock = VirtualClock::new();
    let mut s = broker_session_testkit::sim::Sim::with_clock(
        IbkrSession::new(
            FakeIbkr::oauth_config(oauth),
            RngSeed::from_u64(1),
            clock.now(),
        )
        .unwrap(),
        fake,
        clock,
    );
    s.run(IbkrIntent::Connect).unwrap();
    s.run(IbkrIntent::RenewToken).unwrap();
    assert!(!s.events.iter().any(|e| matches!(
        e,
        Event::CredentialsChanged { .. } | Event::CredentialsWanted { .. }
    )));
    assert_eq!(s.machine.role(), IbkrRole::Owner);
}

#[test]
fn snapshots_and_shared_sessions_never_show_the_token() {
    let mut fleet = Fleet::start(Mode::OAuth, 1);
    let token = fleet
        .fake
        .oauth_server()
        .unwrap()
        .current_lst()
        .expect("a token");
    let (_, snapshot) = fleet.store.clone().unwrap();
    let persisted = snapshot.expose_secrets();
    let printed = [
        format!("{snapshot:?}"),
        format!("{persisted:?}"),
        format!("{:?}", fleet.nodes[0]),
        format!("{:?}", fleet.nodes[1]),
        format!("{:?}", fleet.events),
    ];
    let mut scan = secret_scan::SecretScan::new();
    scan.add("live session token", &token);
    for p in &printed {
        scan.assert_clean("shared session output", p);
    }
    // The persisted form holds it, for storage the user asked for.
    assert_eq!(
        persisted.live_session_token.as_deref(),
        Some(token.as_str())
    );
}

/// What may happen to a fleet, in any order.
#[derive(Clone, Debug)]
enum Step {
    /// An application call from this session (index taken modulo the fleet's size).
    Call(usize),
    /// OAuth: IBKR forgets the live session token. Gateway: the brokerage session drops.
    Refuse,
    /// Virtual time passes (minutes), every live session's timers running.
    Advance(u64),
    /// The owner's process dies.
    KillOwner,
    /// The owner loses its lease and steps down; nobody owns until a take-over.
    Demote,
    /// This session takes the lease if nobody owns.
    TakeOver(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0usize..8).prop_map(Step::Call),
        1 => Just(Step::Refuse),
        3 => (0u64..30).prop_map(Step::Advance),
        1 => Just(Step::KillOwner),
        1 => Just(Step::Demote),
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
    /// take-overs: generations only go up, followers never act on the session, token
    /// requests stay bounded by what forced them, no request ever competes (checked
    /// in `pump`), and a call made while an owner lives gets through.
    #[test]
    fn an_ibkr_fleet_keeps_its_promises_whatever_happens(
        oauth in proptest::prelude::any::<bool>(),
        steps in proptest::collection::vec(step(), 1..30),
    ) {
        let mode = if oauth { Mode::OAuth } else { Mode::Gateway };
        // Tokens of 20 minutes, so that renewals happen within a case.
        let mut fleet = Fleet::start_with(Fleet::with_lifetime(mode, 3, Duration::from_secs(1200)));
        let n = fleet.nodes.len();
        let mut ever_owner = vec![false; n];
        ever_owner[0] = true;
        let (mut refusals, mut takeovers, mut minutes) = (0usize, 0usize, 0u64);
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
                    match fleet.fake.oauth_server() {
                        Some(server) => server.revoke(),
                        None => fleet.fake.drop_brokerage_session(),
                    }
                }
                Step::Advance(m) => {
                    minutes += m;
                    fleet.advance(Duration::from_secs(60 * m));
                }
                Step::KillOwner => {
                    let live = fleet.dead.iter().filter(|d| !**d).count();
                    if let Some(o) = fleet.owner().filter(|_| live > 1) {
                        fleet.kill(o);
                    }
                }
                Step::Demote => {
                    if let Some(o) = fleet.owner() {
                        let generation = fleet.store.as_ref().map_or(0, |(g, _)| *g);
                        fleet.submit(o, IbkrIntent::Follow { generation });
                        fleet.settle();
                    }
                }
                Step::TakeOver(i) => {
                    let i = i % n;
                    if fleet.dead[i] || fleet.owner().is_some() {
                        continue;
                    }
                    takeovers += 1;
                    ever_owner[i] = true;
                    fleet.settle();
                    let floor = fleet.store.as_ref().map_or(0, |(g, _)| *g);
                    if fleet.run(i, IbkrIntent::Lead { generation_floor: floor }).is_err() {
                        fleet.run(i, IbkrIntent::Connect).unwrap();
                    }
                    fleet.settle();
                }
            }
            let stored = fleet.store.as_ref().map_or(0, |(g, _)| *g);
            for i in 0..n {
                if !ever_owner[i] {
                    proptest::prop_assert_eq!(fleet.session_requests[i], 0, "follower {} sent a request", i);
                }
                if fleet.nodes[i].role() == IbkrRole::Follower {
                    let g = fleet.nodes[i].generation();
                    proptest::prop_assert!(g <= stored, "follower {} at {} above the store's {}", i, g, stored);
                    proptest::prop_assert!(g >= held[i] || !fleet.nodes[i].holds_credentials());
                    held[i] = g;
                }
            }
            let tokens = fleet.token_requests() as u64;
            proptest::prop_assert!(
                tokens <= 1 + minutes / 10 + 2 * (refusals + takeovers) as u64,
                "{} token requests in {} minutes", tokens, minutes
            );
        }
    }
}
