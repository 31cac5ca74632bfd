use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use super::*;
use crate::error::UsageError;
use crate::machine::{Input, Output};

/// A machine whose `authorize` and `observe` answers are scripted; it records the
/// URIs it stamped.
#[derive(Default)]
struct Script {
    authorize: VecDeque<Result<u64, AuthorizeError>>,
    observe: VecDeque<Observation>,
    stamped: Vec<String>,
}

impl Machine for Script {
    type Intent = ();
    type State = ();
    type Outcome = ();

    fn submit(&mut self, (): (), _now: Now) -> Result<OpId, UsageError> {
        Err(UsageError::QueueFull)
    }
    fn handle_input(&mut self, _input: Input, _now: Now) {}
    fn poll_output(&mut self, _now: Now) -> Output<(), ()> {
        Output::Wait(None)
    }
    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        _now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        self.stamped.push(request.uri().to_string());
        let generation = self.authorize.pop_front().expect("scripted authorize")?;
        Ok(AuthStamp { generation })
    }
    fn observe<B: AsRef<[u8]>>(
        &mut self,
        _response: &http::Response<B>,
        _stamp: AuthStamp,
        _now: Now,
    ) -> Observation {
        self.observe.pop_front().expect("scripted observe")
    }
    fn state(&self) {}
}

#[allow(clippy::disallowed_methods)] // a test needs some instant to start from
fn now() -> Now {
    Now::new(Instant::now(), SystemTime::UNIX_EPOCH)
}

fn ok() -> CallInput {
    CallInput::Sent(Ok(http::Response::new(Vec::new())))
}

fn call(path: &str) -> Call {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    Call::new(request, Some("https://broker.test/api/"))
}

#[test]
fn accepted_response_is_done_after_one_send() {
    let mut m = Script {
        authorize: [Ok(1)].into(),
        observe: [Observation::Accepted].into(),
        ..Script::default()
    };
    let mut c = call("/accounts");
    let CallStep::Send(r) = c.next(&mut m, CallInput::Start, now()) else {
        panic!()
    };
    assert_eq!(r.uri(), "https://broker.test/api/accounts");
    assert!(matches!(c.next(&mut m, ok(), now()), CallStep::Done(Ok(_))));
}

#[test]
fn refused_credentials_wait_for_the_recovery_and_replay_once() {
    let op = OpId(7);
    let mut m = Script {
        authorize: [Ok(1), Ok(2)].into(),
        observe: [Observation::Recover { op }, Observation::Recover { op }].into(),
        ..Script::default()
    };
    let mut c = call("https://broker.test/api/x");
    assert!(matches!(
        c.next(&mut m, CallInput::Start, now()),
        CallStep::Send(_)
    ));
    assert!(matches!(c.next(&mut m, ok(), now()), CallStep::WaitFor(o) if o == op));
    let step = c.next(&mut m, CallInput::Finished(Ok(())), now());
    assert!(matches!(step, CallStep::Send(_)));
    // A second refusal is the caller's: no second recovery, no third send.
    assert!(matches!(c.next(&mut m, ok(), now()), CallStep::Done(Ok(_))));
    assert_eq!(m.stamped.len(), 2);
}

#[test]
fn replay_resends_at_once_and_only_once() {
    let mut m = Script {
        authorize: [Ok(1), Ok(2)].into(),
        observe: [Observation::Replay, Observation::Replay].into(),
        ..Script::default()
    };
    let mut c = call("/x");
    assert!(matches!(
        c.next(&mut m, CallInput::Start, now()),
        CallStep::Send(_)
    ));
    assert!(matches!(c.next(&mut m, ok(), now()), CallStep::Send(_)));
    assert!(matches!(c.next(&mut m, ok(), now()), CallStep::Done(Ok(_))));
}

#[test]
fn pending_credentials_are_waited_for_twice_at_most() {
    let op = OpId(3);
    let pending = || Err(AuthorizeError::Pending { op });
    let mut m = Script {
        authorize: [pending(), pending(), pending()].into(),
        ..Script::default()
    };
    let mut c = call("/x");
    assert!(matches!(
        c.next(&mut m, CallInput::Start, now()),
        CallStep::WaitFor(_)
    ));
    let finished = || CallInput::Finished(Ok(()));
    assert!(matches!(
        c.next(&mut m, finished(), now()),
        CallStep::WaitFor(_)
    ));
    assert!(matches!(
        c.next(&mut m, finished(), now()),
        CallStep::Done(Err(Error::Authorize(AuthorizeError::Pending { .. })))
    ));
}

#[test]
fn failures_end_the_call() {
    let mut m = Script {
        authorize: [Ok(1), Ok(1)].into(),
        observe: [Observation::Lost(crate::Error::Cancelled)].into(),
        ..Script::default()
    };
    let mut c = call("/x");
    let _ = c.next(&mut m, CallInput::Start, now());
    let failure = TransportFailure::new(crate::FailureKind::Io, "reset");
    assert!(matches!(
        c.next(&mut m, CallInput::Sent(Err(failure)), now()),
        CallStep::Done(Err(Error::Transport(_)))
    ));
    let mut c = call("/x");
    let _ = c.next(&mut m, CallInput::Start, now());
    assert!(matches!(
        c.next(&mut m, ok(), now()),
        CallStep::Done(Err(Error::Session(crate::Error::Cancelled)))
    ));
    // A recovery that failed with a usage error reports it as one.
    let lost = CallInput::Finished(Err(crate::Error::Usage(UsageError::NotLoggedIn)));
    assert!(matches!(
        call("/x").next(&mut m, lost, now()),
        CallStep::Done(Err(Error::Usage(UsageError::NotLoggedIn)))
    ));
}
