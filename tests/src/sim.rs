//! An in-memory harness: a machine, a fake broker and a virtual clock.
//!
//! [`Sim`] plays the transport's part without sockets: it sends each
//! [`Transmit`] to a [`FakeBroker`], advances the virtual
//! clock by a fixed latency per exchange, jumps the clock to the machine's timer
//! deadlines, and checks the loop contract on every step (at most one session request
//! in flight, `Wait` always in the future).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_session::{
    AuthorizeError, Error, Event, Input, Machine, Now, Observation, OpId, Output, Transmit,
    TransportFailure,
};

/// A broker that answers requests: a pure function of the request, its own state
/// and the virtual time.
pub trait FakeBroker {
    /// Answers one request at `now`.
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply;
}

/// A fake broker's answer.
#[derive(Debug)]
pub enum Reply {
    /// An HTTP response.
    Response(http::Response<Vec<u8>>),
    /// The exchange fails at the transport level (timeout, reset …).
    Fail(TransportFailure),
}

impl From<http::Response<Vec<u8>>> for Reply {
    fn from(r: http::Response<Vec<u8>>) -> Self {
        Self::Response(r)
    }
}

/// A virtual clock: monotonic and wall time that only move when told to.
#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    start: Now,
    elapsed: Duration,
}

impl VirtualClock {
    /// Wall time at which every virtual clock starts: 2026-11-23T12:00:00Z.
    pub const START_UNIX_SECONDS: u64 = 1_795_435_200;

    /// A clock at [`START_UNIX_SECONDS`](Self::START_UNIX_SECONDS).
    pub fn new() -> Self {
        Self::starting_at(UNIX_EPOCH + Duration::from_secs(Self::START_UNIX_SECONDS))
    }

    /// A clock whose wall time starts at `wall`.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            start: Now::new(Instant::now(), wall),
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Now {
        self.start + self.elapsed
    }

    /// Virtual time elapsed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }

    /// Moves the clock to `at` if it is later than now.
    pub fn advance_to(&mut self, at: Instant) {
        let now = self.now().mono;
        if at > now {
            self.elapsed += at - now;
        }
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One request the harness delivered, for assertions on pacing and order.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The method.
    pub method: http::Method,
    /// The path (no query).
    pub path: String,
    /// Virtual time elapsed when it was sent.
    pub at: Duration,
}

/// What [`Sim::app_request`] ended with.
#[derive(Debug)]
pub struct AppOutcome {
    /// The last response, if one arrived.
    pub response: Option<http::Response<Vec<u8>>>,
    /// The machine's observation of the last response.
    pub observation: Option<Observation>,
    /// How many times the request was sent (1, or 2 after a recovery or replay).
    pub sends: usize,
}

/// The harness. Fields are public so tests can reach into the broker and the clock.
pub struct Sim<M: Machine, F: FakeBroker> {
    /// The machine under test.
    pub machine: M,
    /// The fake broker.
    pub broker: F,
    /// The virtual clock.
    pub clock: VirtualClock,
    /// Virtual time each exchange takes (default 10 ms).
    pub latency: Duration,
    /// Every event the machine emitted, in order.
    pub events: Vec<Event<M::State, M::Outcome>>,
    /// Every session-management request delivered to the broker.
    pub delivered: Vec<Delivered>,
    pending: VecDeque<Transmit>,
}

/// Steps after which the harness declares a machine stuck (a livelock guard).
const STEP_LIMIT: usize = 1_000_000;

impl<M: Machine, F: FakeBroker> Sim<M, F> {
    /// A harness with a fresh [`VirtualClock`].
    pub fn new(machine: M, broker: F) -> Self {
        Self::with_clock(machine, broker, VirtualClock::new())
    }

    /// A harness on the given clock (build the machine with `clock.now()`).
    pub fn with_clock(machine: M, broker: F, clock: VirtualClock) -> Self {
        Self {
            machine,
            broker,
            clock,
            latency: Duration::from_millis(10),
            events: Vec::new(),
            delivered: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Drains the machine's output, answering each request through the broker, until
    /// it waits. Returns the wait deadline.
    ///
    /// # Panics
    /// If the machine breaks the loop contract: two session requests in flight, or a
    /// `Wait` deadline not in the future.
    pub fn pump(&mut self) -> Option<Instant> {
        for _ in 0..STEP_LIMIT {
            let now = self.now();
            match self.machine.poll_output(now) {
                Output::Send(t) => {
                    self.pending.push_back(t);
                    assert!(
                        self.pending.len() <= 1,
                        "machine has two session requests in flight"
                    );
                }
                Output::Event(e) => self.events.push(e),
                Output::Wait(w) => {
                    if let Some(at) = w {
                        assert!(at > now.mono, "Wait deadline not in the future");
                    }
                    match self.pending.pop_front() {
                        Some(t) => self.exchange(t),
                        None => return w,
                    }
                }
                _ => panic!("unknown output"),
            }
        }
        panic!("machine did not settle within {STEP_LIMIT} steps");
    }

    fn exchange(&mut self, t: Transmit) {
        self.delivered.push(Delivered {
            method: t.request.method().clone(),
            path: t.request.uri().path().to_owned(),
            at: self.clock.elapsed(),
        });
        let reply = self.broker.handle(&t.request, self.now());
        self.clock.advance(self.latency);
        let input = match reply {
            Reply::Response(response) => Input::Response { id: t.id, response },
            Reply::Fail(failure) => Input::Failed { id: t.id, failure },
        };
        let now = self.now();
        self.machine.handle_input(input, now);
    }

    /// Submits an intent and runs until its operation completes, jumping the clock to
    /// timer deadlines on the way (back-off, retries). Returns the typed result.
    ///
    /// # Panics
    /// If the intent is refused with a usage error (use [`Sim::submit`] to test
    /// those), or if the operation never completes.
    pub fn run(&mut self, intent: M::Intent) -> Result<M::Outcome, Error>
    where
        M::Outcome: Clone,
        M::State: Clone,
    {
        let now = self.now();
        let op = match self.machine.submit(intent, now) {
            Ok(op) => op,
            Err(e) => panic!("intent refused: {e}"),
        };
        self.wait_for(op)
    }

    /// Submits an intent without running it.
    pub fn submit(&mut self, intent: M::Intent) -> Result<OpId, broker_session::UsageError> {
        let now = self.now();
        self.machine.submit(intent, now)
    }

    /// Runs until `op` completes and returns its result.
    ///
    /// # Panics
    /// If the machine goes idle (`Wait(None)`) before the operation completes.
    pub fn wait_for(&mut self, op: OpId) -> Result<M::Outcome, Error>
    where
        M::Outcome: Clone,
    {
        // From the start: the operation may have completed while an earlier one was awaited.
        let mut seen = 0;
        for _ in 0..STEP_LIMIT {
            let wait = self.pump();
            for e in &self.events[seen..] {
                if let Event::Completed { op: done, result } = e
                    && *done == op
                {
                    return result.clone();
                }
            }
            seen = self.events.len();
            match wait {
                Some(at) => {
                    self.clock.advance_to(at);
                    let now = self.now();
                    self.machine.handle_input(Input::Timeout, now);
                }
                None => panic!("machine idle while {op} is incomplete"),
            }
        }
        panic!("{op} did not complete within {STEP_LIMIT} steps");
    }

    /// Lets `d` of virtual time pass, running every timer that falls due (keep-alive,
    /// proactive refresh) at its deadline.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now().mono + d;
        loop {
            match self.pump() {
                Some(at) if at <= end => {
                    self.clock.advance_to(at);
                    let now = self.now();
                    self.machine.handle_input(Input::Timeout, now);
                }
                _ => break,
            }
        }
        self.clock.advance_to(end);
        self.pump();
    }

    /// Sends an application request the way a transport does: authorize, send,
    /// observe; after a `Replay` or a successful `Recover`, authorize and send once
    /// more. Never more than two sends.
    pub fn app_request(
        &mut self,
        request: &http::Request<Vec<u8>>,
    ) -> Result<AppOutcome, AuthorizeError>
    where
        M::Outcome: Clone,
    {
        let mut out = AppOutcome {
            response: None,
            observation: None,
            sends: 0,
        };
        let mut waited = 0;
        while out.sends < 2 {
            let mut req = clone_request(request);
            let now = self.now();
            let stamp = match self.machine.authorize(&mut req, now) {
                Ok(s) => s,
                Err(AuthorizeError::Pending { op }) if waited < 2 => {
                    waited += 1;
                    if self.wait_for(op).is_err() {
                        continue;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            out.sends += 1;
            let reply = self.broker.handle(&req, self.now());
            self.clock.advance(self.latency);
            let Reply::Response(resp) = reply else {
                return Ok(out);
            };
            let now = self.now();
            let obs = self.machine.observe(&resp, stamp, now);
            out.response = Some(resp);
            out.observation = Some(obs.clone());
            match obs {
                Observation::Replay => {}
                Observation::Recover { op } => {
                    if self.wait_for(op).is_err() {
                        return Ok(out);
                    }
                }
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// Completed results of every operation so far, in order.
    pub fn completions(&self) -> impl Iterator<Item = (OpId, &Result<M::Outcome, Error>)> {
        self.events.iter().filter_map(|e| match e {
            Event::Completed { op, result } => Some((*op, result)),
            _ => None,
        })
    }
}

/// A copy of a request (method, URI, headers, body), for replays.
pub fn clone_request(r: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut b = http::Request::builder()
        .method(r.method().clone())
        .uri(r.uri().clone())
        .version(r.version());
    if let Some(h) = b.headers_mut() {
        *h = r.headers().clone();
    }
    b.body(r.body().clone())
        .unwrap_or_else(|_| http::Request::new(r.body().clone()))
}
