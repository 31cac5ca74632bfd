//! Record a session against a fake broker once, then replay it against fresh machines
//! with the answers prepared in advance, so a timed loop runs the machine alone
//! (encode, decode, transitions) with no broker logic and no IO.
//!
//! The machines are deterministic (seeded RNG, time as an argument), so a fresh
//! machine given the same intents at the same instants sends the same requests and
//! accepts the recorded answers.

use std::time::Duration;

use broker_session::{Event, Input, Machine, Now, Output, RequestId};
use broker_session_testkit::sim::{FakeBroker, Reply, clone_request};

use crate::alloc::{self, AllocDelta};

/// One step of a recorded session.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Submit the next intent.
    Submit,
    /// Answer the request in flight with the next response.
    Respond,
    /// Move time to this offset from the start and feed `Input::Timeout`.
    Timeout(Duration),
}

/// A recorded session: intents, answers and timer ticks in the order they happened.
pub struct Script {
    start: Now,
    steps: Vec<Step>,
    responses: Vec<http::Response<Vec<u8>>>,
    /// `METHOD /path` of each request, in order.
    pub requests: Vec<String>,
    /// Each request as the machine built it, in order.
    pub sent: Vec<http::Request<Vec<u8>>>,
    /// Operations the session completed successfully.
    pub ops: usize,
}

/// A copy of a response (status, version, headers, body).
pub fn clone_response(r: &http::Response<Vec<u8>>) -> http::Response<Vec<u8>> {
    let mut out = http::Response::new(r.body().clone());
    *out.status_mut() = r.status();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}

impl Script {
    /// Runs `intents` one after the other against `fake`, at `start` (time moves only
    /// when the machine waits for a timer while an operation is open), and records it.
    ///
    /// # Panics
    /// If an intent is refused, an operation fails, or the machine waits for input
    /// with an operation open: the script would not be a fair benchmark.
    pub fn record<M: Machine, F: FakeBroker>(
        machine: &mut M,
        fake: &mut F,
        start: Now,
        intents: Vec<M::Intent>,
    ) -> Self {
        let mut s = Self {
            start,
            steps: Vec::new(),
            responses: Vec::new(),
            requests: Vec::new(),
            sent: Vec::new(),
            ops: 0,
        };
        let mut now = start;
        for intent in intents {
            let op = machine.submit(intent, now).expect("intent accepted");
            s.steps.push(Step::Submit);
            let mut done = false;
            loop {
                match machine.poll_output(now) {
                    Output::Send(t) => {
                        let Reply::Response(r) = fake.handle(&t.request, now) else {
                            panic!("the fake failed a request");
                        };
                        s.requests.push(format!(
                            "{} {}",
                            t.request.method(),
                            t.request.uri().path()
                        ));
                        s.responses.push(clone_response(&r));
                        s.sent.push(clone_request(&t.request));
                        s.steps.push(Step::Respond);
                        machine.handle_input(
                            Input::Response {
                                id: t.id,
                                response: r,
                            },
                            now,
                        );
                    }
                    Output::Event(Event::Completed { op: o, result }) => {
                        if let Err(e) = &result {
                            panic!("operation {o} failed: {e}");
                        }
                        s.ops += 1;
                        done |= o == op;
                    }
                    Output::Event(_) => {}
                    Output::Wait(Some(at)) if !done => {
                        let offset = at - start.mono;
                        now = start + offset;
                        s.steps.push(Step::Timeout(offset));
                        machine.handle_input(Input::Timeout, now);
                    }
                    Output::Wait(None) if !done => panic!("machine idle with {op} open"),
                    Output::Wait(_) => break,
                    _ => panic!("unknown output"),
                }
            }
        }
        s
    }

    /// Fresh copies of the recorded answers, for one replay.
    pub fn responses(&self) -> Vec<http::Response<Vec<u8>>> {
        self.responses.iter().map(clone_response).collect()
    }

    /// The recorded answers, in order.
    pub fn recorded_responses(&self) -> &[http::Response<Vec<u8>>] {
        &self.responses
    }

    /// A fresh copy of the `i`-th recorded answer.
    ///
    /// # Panics
    /// If there is no such answer.
    pub fn response(&self, i: usize) -> http::Response<Vec<u8>> {
        clone_response(&self.responses[i])
    }

    /// Replays the script on a fresh machine; returns the operations that completed
    /// successfully (equal to [`ops`](Self::ops) when the replay was faithful). Given
    /// fewer answers than recorded, it stops where they run out.
    pub fn replay<M: Machine>(
        &self,
        machine: &mut M,
        intents: Vec<M::Intent>,
        responses: Vec<http::Response<Vec<u8>>>,
    ) -> usize {
        self.run::<M, false>(machine, intents, responses, &mut Vec::new())
    }

    /// Replays the script once, measuring the allocations of each request: the
    /// `poll_output` call that built it (with the `submit` before it, for the first
    /// request of an operation), and the `handle_input` of its answer with the
    /// `poll_output` calls that followed until the next request or wait.
    pub fn profile<M: Machine>(
        &self,
        machine: &mut M,
        intents: Vec<M::Intent>,
        responses: Vec<http::Response<Vec<u8>>>,
    ) -> Vec<RequestAllocs> {
        let mut out: Vec<RequestAllocs> = self
            .requests
            .iter()
            .map(|r| RequestAllocs {
                request: r.clone(),
                ..RequestAllocs::default()
            })
            .collect();
        let ok = self.run::<M, true>(machine, intents, responses, &mut out);
        assert_eq!(ok, self.ops, "replay diverged from the recording");
        out
    }

    fn run<M: Machine, const PROFILE: bool>(
        &self,
        machine: &mut M,
        intents: Vec<M::Intent>,
        responses: Vec<http::Response<Vec<u8>>>,
        profile: &mut [RequestAllocs],
    ) -> usize {
        let mut intents = intents.into_iter();
        let mut responses = responses.into_iter();
        let mut now = self.start;
        let mut in_flight: Option<RequestId> = None;
        let mut ok = 0;
        // Index of the request whose answer is being processed (profiling only), and
        // the counters at the start of the current interval.
        let mut current: Option<usize> = None;
        let mut sent = 0usize;
        let mut mark = if PROFILE {
            alloc::snapshot()
        } else {
            Default::default()
        };
        for step in &self.steps {
            match *step {
                Step::Submit => {
                    if let Some(intent) = intents.next() {
                        let _ = machine.submit(intent, now);
                    }
                }
                Step::Respond => match (in_flight.take(), responses.next()) {
                    (Some(id), Some(response)) => {
                        machine.handle_input(Input::Response { id, response }, now);
                    }
                    // Fewer answers than recorded: replay only that prefix.
                    _ => break,
                },
                Step::Timeout(offset) => {
                    now = self.start + offset;
                    machine.handle_input(Input::Timeout, now);
                }
            }
            loop {
                let before = if PROFILE {
                    alloc::snapshot()
                } else {
                    Default::default()
                };
                let out = machine.poll_output(now);
                match out {
                    Output::Send(t) => {
                        in_flight = Some(t.id);
                        if PROFILE {
                            let after = alloc::snapshot();
                            // The interval up to this call belongs to the previous
                            // answer (or to the submit, when there was none).
                            let pre = before.since(mark);
                            match current {
                                Some(i) => profile[i].decode += pre,
                                None => profile[sent].encode += pre,
                            }
                            profile[sent].encode += after.since(before);
                            current = Some(sent);
                            sent += 1;
                            drop(t);
                            mark = alloc::snapshot();
                        }
                        break;
                    }
                    Output::Event(Event::Completed { result: Ok(_), .. }) => ok += 1,
                    Output::Event(_) => {}
                    _ => {
                        if PROFILE {
                            let after = alloc::snapshot();
                            if let Some(i) = current.take() {
                                profile[i].decode += after.since(mark);
                                mark = after;
                            }
                        }
                        break;
                    }
                }
            }
        }
        ok
    }
}

/// Allocations attributed to one request of a replay.
#[derive(Clone, Debug, Default)]
pub struct RequestAllocs {
    /// `METHOD /path`.
    pub request: String,
    /// Building the request (and the `submit` that started it, if any).
    pub encode: AllocDelta,
    /// Decoding its answer, the transitions and the events that followed.
    pub decode: AllocDelta,
}
