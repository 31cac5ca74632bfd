use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::*;
use crate::machine::{
    AuthStamp, AuthorizeError, FailureKind, Observation, RequestId, Transmit, TransportFailure,
};

/// A scripted machine: each intent is one request; its response completes the
/// operation with the intent as outcome, a failure completes it with an error.
/// Timer ticks are counted and reported as state changes.
#[derive(Default)]
struct Fake {
    queue: VecDeque<Output<u32, u32>>,
    pending: HashMap<RequestId, (OpId, u32)>,
    wait: Option<Instant>,
    ticks: u32,
    next: u64,
}

impl Fake {
    fn emit(&mut self, e: Event<u32, u32>) {
        self.queue.push_back(Output::Event(e));
    }
}

impl Machine for Fake {
    type Intent = u32;
    type State = u32;
    type Outcome = u32;

    fn submit(&mut self, intent: u32, now: Now) -> Result<OpId, UsageError> {
        if intent == 0 {
            return Err(UsageError::QueueFull);
        }
        self.next += 1;
        let (op, id) = (OpId(self.next), RequestId(self.next));
        self.pending.insert(id, (op, intent));
        let request = http::Request::get("https://broker.test/session")
            .body(Vec::new())
            .unwrap();
        self.queue.push_back(Output::Send(Transmit {
            id,
            request,
            deadline: now.mono + Duration::from_secs(30),
        }));
        Ok(op)
    }

    fn handle_input(&mut self, input: Input, _now: Now) {
        match input {
            Input::Response { id, .. } => {
                if let Some((op, intent)) = self.pending.remove(&id) {
                    self.emit(Event::Completed {
                        op,
                        result: Ok(intent),
                    });
                }
            }
            Input::Failed { id, failure } => {
                if let Some((op, _)) = self.pending.remove(&id) {
                    self.emit(Event::Completed {
                        op,
                        result: Err(Error::Transport(failure)),
                    });
                }
            }
            Input::Timeout => {
                self.ticks += 1;
                self.wait = None;
                self.emit(Event::StateChanged(self.ticks));
            }
        }
    }

    fn poll_output(&mut self, _now: Now) -> Output<u32, u32> {
        self.queue.pop_front().unwrap_or(Output::Wait(self.wait))
    }

    fn authorize<B>(
        &mut self,
        _: &mut http::Request<B>,
        _: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        Err(AuthorizeError::NotLoggedIn)
    }

    fn observe<B: AsRef<[u8]>>(
        &mut self,
        _: &http::Response<B>,
        _: AuthStamp,
        _: Now,
    ) -> Observation {
        Observation::Accepted
    }

    fn state(&self) -> u32 {
        self.ticks
    }
}

#[allow(clippy::disallowed_methods)] // a test needs some instant to start from
fn start() -> Now {
    Now::new(
        Instant::now(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
    )
}

fn ok(id: RequestId) -> Input {
    Input::Response {
        id,
        response: http::Response::new(Vec::new()),
    }
}

#[test]
fn event_buffer_keeps_the_newest_and_counts_the_dropped() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 3);
    d.subscribe();
    for i in 1..=5 {
        d.machine_mut().emit(Event::StateChanged(i));
    }
    assert!(d.pump(now).changed);
    assert_eq!(d.dropped_events(), 2);
    assert_eq!(d.next_event(), Some(Event::StateChanged(3)));
    assert_eq!(
        d.drain_events(),
        vec![Event::StateChanged(4), Event::StateChanged(5)]
    );
    assert_eq!(d.next_event(), None);

    // With no room at all every event is dropped, but awaited results still arrive.
    let mut d = Driver::new(Fake::default(), 0);
    d.subscribe();
    let op = d.submit(7, now).unwrap();
    d.await_op(op);
    let t = d.pump(now).transmits;
    d.handle_input(ok(t[0].id), now);
    d.machine_mut().emit(Event::StateChanged(1));
    let _ = d.pump(now);
    assert_eq!(d.dropped_events(), 1);
    assert!(d.drain_events().is_empty());
    assert_eq!(d.take_result(op).unwrap().unwrap(), 7);
}

#[test]
fn awaited_results_go_to_their_caller_others_to_the_buffer() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 16);
    d.subscribe();
    let mine = d.submit(10, now).unwrap();
    let theirs = d.submit(20, now).unwrap();
    d.await_op(mine);
    let pump = d.pump(now);
    assert_eq!(pump.transmits.len(), 2);
    assert_eq!(d.take_result(mine).map(|_| ()), None, "still running");

    for t in pump.transmits {
        d.handle_input(ok(t.id), now);
    }
    assert!(d.pump(now).changed);
    assert_eq!(d.take_result(mine).unwrap().unwrap(), 10);
    // Taken once: the operation is no longer awaited.
    assert!(d.take_result(mine).is_none());
    assert_eq!(
        d.drain_events(),
        vec![Event::Completed {
            op: theirs,
            result: Ok(20)
        }]
    );
    // Not awaited, never awaited: nothing to take.
    assert!(d.take_result(theirs).is_none());
    // Nothing awaited any more: the session keeps no buffer for it (memory per idle
    // session is measured in the scale benchmark).
    assert_eq!(d.awaited.capacity(), 0);
}

#[test]
fn awaiting_twice_keeps_one_slot_and_forgetting_frees_it() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 16);
    let op = d.submit(7, now).unwrap();
    d.await_op(op);
    d.await_op(op);
    assert_eq!(d.awaited.len(), 1);
    d.forget_op(op);
    assert_eq!(d.awaited.capacity(), 0);
    // Forgetting what is not awaited changes nothing.
    d.forget_op(op);
    assert!(d.take_result(op).is_none());
}

#[test]
fn a_forgotten_operation_reports_to_the_buffer() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 16);
    d.subscribe();
    let op = d.submit(5, now).unwrap();
    d.await_op(op);
    let t = d.pump(now).transmits;
    d.forget_op(op);
    d.handle_input(ok(t[0].id), now);
    let _ = d.pump(now);
    assert!(d.take_result(op).is_none());
    assert_eq!(
        d.drain_events(),
        vec![Event::Completed { op, result: Ok(5) }]
    );
}

#[test]
fn events_are_kept_only_from_the_first_read_or_subscribe_on() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 16);
    assert!(!d.subscribed());
    // Nobody reads events yet: a finished operation nobody awaited and a state
    // change are not kept, and not counted as dropped either.
    d.submit(1, now).unwrap();
    let t = d.pump(now).transmits;
    d.handle_input(ok(t[0].id), now);
    d.machine_mut().emit(Event::StateChanged(1));
    assert!(d.pump(now).changed, "still a change for waiters");
    assert!(d.events.is_none(), "no buffer allocated");
    assert_eq!(d.dropped_events(), 0);

    // The first read subscribes: it finds nothing, the next one what came since.
    assert_eq!(d.next_event(), None);
    assert!(d.subscribed());
    d.machine_mut().emit(Event::StateChanged(2));
    let _ = d.pump(now);
    assert_eq!(d.drain_events(), vec![Event::StateChanged(2)]);

    // `subscribe` keeps them before any read.
    let mut d = Driver::new(Fake::default(), 16);
    d.subscribe();
    d.machine_mut().emit(Event::StateChanged(3));
    let _ = d.pump(now);
    assert_eq!(d.drain_events(), vec![Event::StateChanged(3)]);
}

#[test]
fn joined_operations_report_to_every_joiner_until_the_last_leaves() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 0);
    let op = d.submit(1, now).unwrap();
    let failing = d.submit(2, now).unwrap();
    let unjoined = d.submit(3, now).unwrap();
    d.join(op);
    d.join(op);
    d.join(failing);
    assert_eq!(d.finished(op), None, "still running");
    let t = d.pump(now).transmits;
    d.handle_input(ok(t[0].id), now);
    let failure = TransportFailure::new(FailureKind::Other, "reset");
    d.handle_input(
        Input::Failed {
            id: t[1].id,
            failure: failure.clone(),
        },
        now,
    );
    d.handle_input(ok(t[2].id), now);
    let _ = d.pump(now);
    assert_eq!(d.finished(op), Some(Ok(())));
    assert_eq!(d.finished(op), Some(Ok(())), "asked twice");
    assert_eq!(d.finished(failing), Some(Err(Error::Transport(failure))));
    // Nobody joined it: nothing kept.
    assert_eq!(d.finished(unjoined), None);
    assert_eq!(d.joined.len(), 2);

    // The first joiner leaves; the second still sees the result.
    d.leave(op);
    assert_eq!(d.finished(op), Some(Ok(())));
    d.leave(op);
    assert_eq!(d.finished(op), None);
    d.leave(failing);
    // Leaving what is not joined changes nothing; nothing joined, no buffer kept.
    d.leave(op);
    assert_eq!(d.joined.capacity(), 0);
}

#[test]
fn in_flight_counts_only_transmits_handed_out_and_not_yet_answered() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 16);
    d.submit(1, now).unwrap();
    d.submit(2, now).unwrap();
    assert_eq!(d.in_flight(), 0);
    let t = d.pump(now).transmits;
    assert_eq!(d.in_flight(), 2);
    // An answer for a request never handed out changes nothing.
    d.handle_input(ok(RequestId(99)), now);
    assert_eq!(d.in_flight(), 2);
    d.handle_input(ok(t[0].id), now);
    assert_eq!(d.in_flight(), 1);
    // A second answer for the same request is not counted twice.
    d.handle_input(ok(t[0].id), now);
    assert_eq!(d.in_flight(), 1);
    d.handle_input(
        Input::Failed {
            id: t[1].id,
            failure: TransportFailure::new(FailureKind::Cancelled, "dropped"),
        },
        now,
    );
    assert_eq!(d.in_flight(), 0);
    assert!(
        matches!(d.in_flight, InFlight::None),
        "no buffer kept once empty"
    );
}

#[test]
fn the_timer_runs_once_its_deadline_has_passed() {
    let now = start();
    let due = now.mono + Duration::from_secs(10);
    let mut d = Driver::new(Fake::default(), 16);
    d.subscribe();
    assert!(!d.pump(now).changed, "nothing happened");
    assert_eq!(d.deadline(), None);

    d.machine_mut().wait = Some(due);
    assert!(d.pump(now).changed, "a new deadline is a change");
    assert_eq!(d.deadline(), Some(due));
    assert!(!d.pump(now).changed, "the same deadline is not");

    // Not yet due: the machine hears no timeout.
    let _ = d.pump(now + Duration::from_secs(9));
    assert_eq!(d.machine().ticks, 0);

    let later = now + Duration::from_secs(10);
    assert!(d.pump(later).changed);
    assert_eq!(d.machine().ticks, 1);
    assert_eq!(d.deadline(), None, "the fake set no new timer");
    assert_eq!(d.drain_events(), vec![Event::StateChanged(1)]);
    let _ = d.pump(later + Duration::from_secs(60));
    assert_eq!(d.machine().ticks, 1, "no timer, no timeout");
}

#[test]
fn usage_errors_pass_through_and_debug_shows_counts_only() {
    let now = start();
    let mut d = Driver::new(Fake::default(), 4);
    assert_eq!(d.submit(0, now), Err(UsageError::QueueFull));
    d.submit(3, now).unwrap();
    let pump = d.pump(now);
    assert!(format!("{pump:?}").contains("broker.test"));
    let debug = format!("{d:?}");
    assert!(debug.contains("in_flight: 1"), "{debug}");
    assert!(debug.contains("state: 0"), "{debug}");
}
