//! The bookkeeping every transport keeps around a [`Machine`], written once.
//!
//! A transport has to poll the machine until it waits, run its timer when the
//! deadline passes, hand the requests it asks for to the network, route each
//! operation's result to whoever awaits it and buffer the other events for the
//! application. None of that needs IO or a clock, so it lives here as [`Driver`]:
//! the transport keeps only what is truly its own (locks, wake-ups, threads or
//! tasks, HTTP) and calls [`Driver::pump`] whenever the machine may have work.
//!
//! A driver keeps nothing nobody asked for: events only once the application
//! subscribed to them ([`Driver::subscribe`], or its first
//! [`drain_events`](Driver::drain_events) / [`next_event`](Driver::next_event)), an
//! operation's result only while a caller awaits or has joined it. An idle session
//! whose events nobody reads holds no buffer at all.
//!
//! # Example: an IG login through a `Driver`
//!
//! Canned responses stand in for IG; a transport would send each transmit instead.
//!
//! ```
//! use broker_session::driver::Driver;
//! use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgOutcome, IgSession};
//! use broker_session::{Input, Machine, Now, RngSeed, http};
//! use std::time::{Duration, Instant, SystemTime};
//!
//! let config = IgConfig::new(IgEnvironment::Demo, "api-key", "user", "password");
//! let mut now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
//! let mut driver = Driver::new(IgSession::new(config, RngSeed::from_u64(1), now).unwrap(), 64);
//! // Keep the events from now on (without a subscriber none are kept).
//! driver.subscribe();
//!
//! // Submit the login and say that its result is awaited (it will not reach the
//! // event buffer).
//! let login = driver.submit(IgIntent::Login, now).unwrap();
//! driver.await_op(login);
//!
//! // One pump: the machine asks for `POST /session`, now in flight.
//! let pump = driver.pump(now);
//! assert!(pump.changed);
//! let [t] = <[_; 1]>::try_from(pump.transmits.into_vec()).unwrap();
//! assert_eq!(t.request.uri(), "https://demo-api.ig.com/gateway/deal/session");
//! assert_eq!(driver.in_flight(), 1);
//!
//! // IG answers; the response settles the transmit.
//! let response = http::Response::builder()
//!     .status(200)
//!     .header("CST", "cst-token")
//!     .header("X-SECURITY-TOKEN", "xst-token")
//!     .body(br#"{"currentAccountId":"ABC123","lightstreamerEndpoint":"https://demo-apd.marketdatasystems.com"}"#.to_vec())
//!     .unwrap();
//! now = now + Duration::from_millis(80);
//! driver.handle_input(Input::Response { id: t.id, response }, now);
//! assert_eq!(driver.in_flight(), 0);
//!
//! // The next pump records the outcome for the awaiting caller, buffers the state
//! // change and tracks the machine's timer: none, as v2 tokens have no expiry to
//! // refresh ahead of.
//! let pump = driver.pump(now);
//! assert!(pump.transmits.is_empty());
//! match driver.take_result(login) {
//!     Some(Ok(IgOutcome::LoggedIn(info))) => assert_eq!(info.account_id, "ABC123"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! assert_eq!(driver.deadline(), None);
//! assert!(!driver.drain_events().is_empty());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::error::{Error, UsageError};
use crate::machine::{Event, Input, Machine, OpId, Output};
use crate::time::Now;

mod few;

use few::InFlight;
pub use few::{IntoIter as TransmitsIntoIter, Transmits};

/// An event of machine `M`.
pub type SessionEvent<M> = Event<<M as Machine>::State, <M as Machine>::Outcome>;

/// The typed result of one of `M`'s operations.
pub type OpResult<M> = Result<<M as Machine>::Outcome, Error>;

/// What one [`Driver::pump`] produced.
#[derive(Debug)]
#[non_exhaustive]
#[must_use = "the transmits must be sent and their results fed back"]
pub struct Pump {
    /// Requests to send; hand each response or failure to [`Driver::handle_input`].
    /// Usually none or one, held without an allocation.
    pub transmits: Transmits,
    /// Whether anything observable changed (an event, a transmit, a new deadline),
    /// so a transport wakes its waiters only then.
    pub changed: bool,
}

/// A [`Machine`] with the bookkeeping a transport needs around it: the deadline of
/// its timer, the requests in flight, the results of awaited and joined operations
/// and, for a subscriber, a bounded buffer of events.
///
/// Pure like the machine: no IO, no clock reads (every call that may run the
/// machine takes [`Now`]), no panics. See the [module documentation](self) for an
/// example.
pub struct Driver<M: Machine> {
    machine: M,
    /// The deadline of the machine's last `Wait`.
    deadline: Option<Instant>,
    /// Transmits handed out by `pump` whose response or failure has not come back:
    /// a machine sends one at a time, so one is kept inline (no allocation per
    /// request) and more in a vector searched in order.
    in_flight: InFlight,
    /// Operations a caller awaits, with their result once it arrives. A few at most
    /// (one per caller blocked in a typed method), so a vector searched in order; its
    /// buffer is freed when it empties, so an idle session keeps none.
    awaited: Vec<(OpId, Option<OpResult<M>>)>,
    /// Operations joined by callers that wait for another party's operation (a
    /// recovery), with how many joined and, once finished, whether it succeeded (an
    /// error boxed). Freed when the last of them leaves.
    joined: Vec<Joined>,
    /// The event buffer, from [`subscribe`](Self::subscribe) or the first read of it
    /// on (`None` before: events are not kept). Boxed, so a session whose events
    /// nobody reads carries a pointer, not the buffer's room.
    events: Option<Box<Events<M>>>,
    event_capacity: usize,
}

/// A subscriber's events: see [`Driver::subscribe`].
struct Events<M: Machine> {
    queue: VecDeque<SessionEvent<M>>,
    dropped: u64,
}

/// One joined operation: see [`Driver::join`].
struct Joined {
    op: OpId,
    joiners: usize,
    finished: Option<Result<(), Box<Error>>>,
}

impl<M: Machine> fmt::Debug for Driver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: events and results are the application's, printed (redacted)
        // when it takes them.
        f.debug_struct("Driver")
            .field("state", &self.machine.state())
            .field("deadline", &self.deadline)
            .field("in_flight", &self.in_flight.len())
            .field("awaited", &self.awaited.len())
            .field("joined", &self.joined.len())
            .field("subscribed", &self.subscribed())
            .field("events", &self.events.as_ref().map_or(0, |e| e.queue.len()))
            .field("dropped_events", &self.dropped_events())
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Driver<M> {
    /// Wraps `machine`. Events are kept only for a subscriber: from
    /// [`subscribe`](Self::subscribe), or the first
    /// [`drain_events`](Self::drain_events) / [`next_event`](Self::next_event), on;
    /// before that they are not kept (nor counted as dropped). A subscriber's buffer
    /// holds at most `event_capacity` events; when it is full the oldest event is
    /// dropped and counted in [`dropped_events`](Self::dropped_events). With a
    /// capacity of 0 every event is dropped. Results of awaited and joined operations
    /// arrive either way.
    pub fn new(machine: M, event_capacity: usize) -> Self {
        Self {
            machine,
            deadline: None,
            in_flight: InFlight::None,
            awaited: Vec::new(),
            joined: Vec::new(),
            events: None,
            event_capacity,
        }
    }

    /// Runs the machine's timer if its deadline has passed at `now`, then polls the
    /// machine until it waits: events are recorded, the new deadline is tracked and
    /// the requests to send are returned (and counted in flight).
    pub fn pump(&mut self, now: Now) -> Pump {
        let mut changed = false;
        if self.deadline.is_some_and(|d| d <= now.mono) {
            self.deadline = None;
            self.machine.handle_input(Input::Timeout, now);
            changed = true;
        }
        let mut transmits = Transmits::new();
        loop {
            match self.machine.poll_output(now) {
                Output::Send(t) => {
                    self.in_flight.push(t.id);
                    transmits.push(t);
                }
                Output::Event(e) => {
                    self.record(e);
                    changed = true;
                }
                Output::Wait(w) => {
                    changed |= w != self.deadline;
                    self.deadline = w;
                    break;
                }
            }
        }
        changed |= !transmits.is_empty();
        Pump { transmits, changed }
    }

    /// Feeds `input` to the machine. A response or failure for a transmit handed out
    /// by [`pump`](Self::pump) settles it (it no longer counts in
    /// [`in_flight`](Self::in_flight)). Call [`pump`](Self::pump) afterwards.
    ///
    /// Timers are run by `pump`; there is no need to pass [`Input::Timeout`].
    pub fn handle_input(&mut self, input: Input, now: Now) {
        if let Input::Response { id, .. } | Input::Failed { id, .. } = &input {
            self.in_flight.remove(*id);
        }
        self.machine.handle_input(input, now);
    }

    /// Submits `intent` to the machine; call [`await_op`](Self::await_op) with the
    /// id to receive its result through [`take_result`](Self::take_result), then
    /// [`pump`](Self::pump).
    pub fn submit(&mut self, intent: M::Intent, now: Now) -> Result<OpId, UsageError> {
        self.machine.submit(intent, now)
    }

    /// Marks `op` as awaited: its result is kept for
    /// [`take_result`](Self::take_result) instead of going to the event buffer. Call
    /// it before the next [`pump`](Self::pump) after submitting, so the result cannot
    /// be missed.
    pub fn await_op(&mut self, op: OpId) {
        if !self.awaited.iter().any(|(o, _)| *o == op) {
            self.awaited.push((op, None));
        }
    }

    /// Removes `op` from the awaited operations, with its result if it arrived.
    fn unawait(&mut self, op: OpId) -> Option<Option<OpResult<M>>> {
        let i = self.awaited.iter().position(|(o, _)| *o == op)?;
        let (_, result) = self.awaited.swap_remove(i);
        if self.awaited.is_empty() {
            self.awaited = Vec::new();
        }
        Some(result)
    }

    /// The result of awaited operation `op` once it has completed; the operation is
    /// then no longer awaited. `None` while it runs (or if it is not awaited).
    pub fn take_result(&mut self, op: OpId) -> Option<OpResult<M>> {
        let arrived = self
            .awaited
            .iter()
            .any(|(o, result)| *o == op && result.is_some());
        if arrived {
            self.unawait(op).flatten()
        } else {
            None
        }
    }

    /// Stops awaiting `op` (its caller gave up): a result that arrives later goes to
    /// the event buffer; one that already arrived is discarded.
    pub fn forget_op(&mut self, op: OpId) {
        self.unawait(op);
    }

    /// Joins operation `op`, which another party started (a recovery, a login
    /// under way): whether it succeeded is kept for [`finished`](Self::finished)
    /// until every joiner [`leave`](Self::leave)s. Any number of callers can join one
    /// operation; each leaves once. Join under the same lock as the call that named
    /// `op` (a [`Call`](crate::transport::Call)'s `WaitFor`), before the next
    /// [`pump`](Self::pump), so its end cannot be missed: the driver keeps no record
    /// of operations nobody joined.
    pub fn join(&mut self, op: OpId) {
        match self.joined.iter_mut().find(|j| j.op == op) {
            Some(j) => j.joiners += 1,
            None => self.joined.push(Joined {
                op,
                joiners: 1,
                finished: None,
            }),
        }
    }

    /// Leaves joined operation `op` (once per [`join`](Self::join)); its record is
    /// freed when the last joiner left.
    pub fn leave(&mut self, op: OpId) {
        let Some(i) = self.joined.iter().position(|j| j.op == op) else {
            return;
        };
        self.joined[i].joiners -= 1;
        if self.joined[i].joiners == 0 {
            self.joined.swap_remove(i);
            if self.joined.is_empty() {
                self.joined = Vec::new();
            }
        }
    }

    /// Whether joined operation `op` succeeded, once it finished; `None` while it
    /// runs, or if it is not joined. Every joiner can ask, any number of times.
    pub fn finished(&self, op: OpId) -> Option<Result<(), Error>> {
        let j = self.joined.iter().find(|j| j.op == op)?;
        j.finished.as_ref().map(|r| match r {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::clone(e)),
        })
    }

    /// Keeps events from now on, for [`drain_events`](Self::drain_events) and
    /// [`next_event`](Self::next_event) (which subscribe too, from their first
    /// call). Until then, events are not kept: nobody would read them.
    pub fn subscribe(&mut self) {
        self.subscribed_events();
    }

    /// The event buffer, made on first use.
    fn subscribed_events(&mut self) -> &mut Events<M> {
        self.events.get_or_insert_with(|| {
            Box::new(Events {
                queue: VecDeque::new(),
                dropped: 0,
            })
        })
    }

    /// Whether events are kept (see [`subscribe`](Self::subscribe)).
    pub fn subscribed(&self) -> bool {
        self.events.is_some()
    }

    /// Takes every buffered event (state changes, session loss, completions of
    /// operations nobody awaited), oldest first. Subscribes: events from now on are
    /// kept for the next call.
    pub fn drain_events(&mut self) -> Vec<SessionEvent<M>> {
        self.subscribed_events().queue.drain(..).collect()
    }

    /// Takes the oldest buffered event. Subscribes, like
    /// [`drain_events`](Self::drain_events).
    pub fn next_event(&mut self) -> Option<SessionEvent<M>> {
        self.subscribed_events().queue.pop_front()
    }

    /// How many events were dropped because the buffer was full.
    pub fn dropped_events(&self) -> u64 {
        self.events.as_ref().map_or(0, |e| e.dropped)
    }

    /// The deadline of the machine's timer as of the last [`pump`](Self::pump):
    /// pump again at (or soon after) that instant. `None`: no timer is set.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// How many transmits handed out by [`pump`](Self::pump) await their response
    /// or failure.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, to authorize and observe application requests or call its own
    /// methods. Call [`pump`](Self::pump) afterwards: the machine may have work.
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    fn record(&mut self, e: SessionEvent<M>) {
        let e = match e {
            Event::Completed { op, result } => {
                if let Some(j) = self.joined.iter_mut().find(|j| j.op == op) {
                    j.finished = Some(result.as_ref().map(drop).map_err(|e| Box::new(e.clone())));
                }
                match self.awaited.iter_mut().find(|(o, _)| *o == op) {
                    Some((_, slot)) => {
                        *slot = Some(result);
                        return;
                    }
                    None => Event::Completed { op, result },
                }
            }
            other => other,
        };
        let capacity = self.event_capacity;
        let Some(events) = self.events.as_deref_mut() else {
            return;
        };
        if capacity == 0 {
            events.dropped += 1;
            return;
        }
        if events.queue.len() >= capacity {
            events.queue.pop_front();
            events.dropped += 1;
        }
        events.queue.push_back(e);
    }
}

#[cfg(test)]
mod tests;
