//! A small machine and fake broker for testing the transports generically: just
//! enough protocol (a bearer-token login, one recovery per refusal, a tick timer) to
//! exercise every transport path, independent of the real broker machines.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::{
    ApiError, AuthStamp, AuthorizeError, Error, Event, Input, Machine, Now, Observation, OpId,
    Output, ProtocolError, RequestId, Transmit, UsageError,
};
use broker_session_testkit::server::Server;
use broker_session_testkit::sim::{FakeBroker, Reply};

/// What the test machine can be asked for.
#[derive(Clone, Debug)]
pub enum Intent {
    Login,
    Get(String),
    PostEmpty(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    LoggedOut,
    Active,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub body_len: usize,
}

pub struct TestMachine {
    base: String,
    next_id: u64,
    queue: VecDeque<(OpId, Intent)>,
    current: Option<(OpId, RequestId, Intent, Instant)>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event<State, Outcome>>,
    token: Option<String>,
    generation: u64,
    recovery: Option<OpId>,
    state: State,
    pub tick_every: Option<Duration>,
    next_tick: Option<Instant>,
    pub request_deadline: Duration,
}

impl TestMachine {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            next_id: 0,
            queue: VecDeque::new(),
            current: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            token: None,
            generation: 0,
            recovery: None,
            state: State::LoggedOut,
            tick_every: None,
            next_tick: None,
            request_deadline: Duration::from_secs(10),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn request(&self, intent: &Intent) -> http::Request<Vec<u8>> {
        let (method, path) = match intent {
            Intent::Login => (http::Method::POST, "/login".to_owned()),
            Intent::Get(p) => (http::Method::GET, p.clone()),
            Intent::PostEmpty(p) => (http::Method::POST, p.clone()),
        };
        let mut r = http::Request::new(Vec::new());
        *r.method_mut() = method;
        *r.uri_mut() = format!("{}{}", self.base, path).parse().expect("uri");
        r
    }

    fn complete(&mut self, op: OpId, result: Result<Outcome, Error>) {
        self.events.push_back(Event::Completed { op, result });
    }

    fn set_state(&mut self, s: State) {
        if self.state != s {
            self.state = s.clone();
            self.events.push_back(Event::StateChanged(s));
        }
    }

    fn finish(
        &mut self,
        op: OpId,
        intent: Intent,
        input: Result<http::Response<Vec<u8>>, Error>,
        now: Now,
    ) {
        let was_recovery = self.recovery == Some(op);
        if was_recovery {
            self.recovery = None;
        }
        let result = input.and_then(|resp| {
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                return Err(Error::Protocol(ProtocolError::Redirect {
                    endpoint: "test",
                    status,
                }));
            }
            if let Intent::Login = intent {
                if status != 200 {
                    return Err(Error::Rejected(ApiError::new(status, None)));
                }
                self.token = Some(String::from_utf8_lossy(resp.body()).into_owned());
                self.generation += 1;
            }
            Ok(Outcome {
                status,
                body_len: resp.body().len(),
            })
        });
        match (&intent, &result) {
            (Intent::Login, Ok(_)) => {
                self.set_state(State::Active);
                if let Some(every) = self.tick_every {
                    self.next_tick = Some(now.mono + every);
                }
            }
            (Intent::Login, Err(e)) if was_recovery => {
                self.set_state(State::Lost);
                self.events
                    .push_back(Event::SessionLost { reason: e.clone() });
            }
            _ => {}
        }
        self.complete(op, result);
    }
}

impl Machine for TestMachine {
    type Intent = Intent;
    type State = State;
    type Outcome = Outcome;

    fn submit(&mut self, intent: Intent, _now: Now) -> Result<OpId, UsageError> {
        let op = OpId(self.id());
        self.queue.push_back((op, intent));
        Ok(op)
    }

    fn handle_input(&mut self, input: Input, now: Now) {
        let (id, result) = match input {
            Input::Response { id, response } => (id, Ok(response)),
            Input::Failed { id, failure } => (id, Err(Error::Transport(failure))),
            _ => return,
        };
        match self.current.take() {
            Some((op, rid, intent, _)) if rid == id => self.finish(op, intent, result, now),
            other => self.current = other,
        }
    }

    fn poll_output(&mut self, now: Now) -> Output<State, Outcome> {
        if let Some((op, rid, intent, deadline)) = self.current.take() {
            if deadline <= now.mono {
                let e = Error::Protocol(ProtocolError::NoResponse { endpoint: "test" });
                self.finish(op, intent, Err(e), now);
            } else {
                self.current = Some((op, rid, intent, deadline));
            }
        }
        if self.next_tick.is_some_and(|t| t <= now.mono) {
            self.next_tick = self.tick_every.map(|e| now.mono + e);
            let op = OpId(self.id());
            self.queue.push_back((op, Intent::Get("/tick".into())));
        }
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        if let Some(t) = self.outbox.pop_front() {
            return Output::Send(t);
        }
        if self.current.is_none()
            && let Some((op, intent)) = self.queue.pop_front()
        {
            {
                let mut request = self.request(&intent);
                if !matches!(intent, Intent::Login)
                    && let Some(tok) = &self.token
                {
                    {
                        let mut v =
                            http::HeaderValue::from_str(&format!("Bearer {tok}")).expect("hv");
                        v.set_sensitive(true);
                        request.headers_mut().insert(http::header::AUTHORIZATION, v);
                    }
                }
                let rid = RequestId(self.id());
                let deadline = now.mono + self.request_deadline;
                self.current = Some((op, rid, intent, deadline));
                return Output::Send(Transmit {
                    id: rid,
                    request,
                    deadline,
                });
            }
        }
        let deadlines = [self.current.as_ref().map(|c| c.3), self.next_tick];
        Output::Wait(deadlines.into_iter().flatten().min())
    }

    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        _now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        let target = format!(
            "{}://{}",
            request.uri().scheme_str().unwrap_or(""),
            request.uri().authority().map_or("", |a| a.as_str())
        );
        if target != self.base {
            return Err(AuthorizeError::Refused(UsageError::InvalidArgument {
                what: "request",
                reason: "not under the session's base URL",
            }));
        }
        if let Some(op) = self.recovery {
            return Err(AuthorizeError::Pending { op });
        }
        if self.state == State::Lost {
            return Err(AuthorizeError::Lost(Error::Unauthorized(ApiError::new(
                401, None,
            ))));
        }
        let Some(tok) = &self.token else {
            return Err(AuthorizeError::NotLoggedIn);
        };
        let mut v = http::HeaderValue::from_str(&format!("Bearer {tok}")).expect("hv");
        v.set_sensitive(true);
        request.headers_mut().insert(http::header::AUTHORIZATION, v);
        Ok(AuthStamp {
            generation: self.generation,
        })
    }

    fn observe<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
        stamp: AuthStamp,
        _now: Now,
    ) -> Observation {
        if response.status() != http::StatusCode::UNAUTHORIZED {
            return Observation::Accepted;
        }
        if stamp.generation < self.generation {
            return Observation::Replay;
        }
        if let Some(op) = self.recovery {
            return Observation::Recover { op };
        }
        let op = OpId(self.id());
        self.queue.push_front((op, Intent::Login));
        self.recovery = Some(op);
        Observation::Recover { op }
    }

    fn state(&self) -> State {
        self.state.clone()
    }
}

/// The test broker: a bearer-token API with fault paths.
#[derive(Default)]
pub struct TestBroker {
    pub logins: Arc<AtomicU32>,
    pub token: Option<String>,
    pub data_ok: u32,
    pub data_401: u32,
}

impl FakeBroker for TestBroker {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, _now: Now) -> Reply {
        let path = request.uri().path();
        let respond = |status: u16, body: Vec<u8>| {
            let mut r = http::Response::new(body);
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            Reply::Response(r)
        };
        match path {
            "/login" => {
                let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
                let tok = format!("token-{n}");
                self.token = Some(tok.clone());
                respond(200, tok.into_bytes())
            }
            "/redirect" => {
                let mut r = http::Response::new(Vec::new());
                *r.status_mut() = http::StatusCode::FOUND;
                r.headers_mut().insert(
                    http::header::LOCATION,
                    http::HeaderValue::from_static("http://127.0.0.1:9/elsewhere"),
                );
                Reply::Response(r)
            }
            "/big" => respond(200, vec![b'x'; (1 << 20) + 10]),
            "/slow" => Reply::Fail(broker_session::TransportFailure::new(
                broker_session::FailureKind::Timeout,
                "stall",
            )),
            "/data" => {
                let expected = self.token.as_ref().map(|t| format!("Bearer {t}"));
                let got = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if expected.is_some() && got == expected.as_deref() {
                    self.data_ok += 1;
                    respond(200, b"data".to_vec())
                } else {
                    self.data_401 += 1;
                    respond(401, Vec::new())
                }
            }
            _ => respond(200, b"ok".to_vec()),
        }
    }
}

pub fn start_server() -> (Server, Arc<Mutex<TestBroker>>) {
    let broker = Arc::new(Mutex::new(TestBroker::default()));
    let server = Server::start_shared(
        Arc::clone(&broker),
        broker_session_testkit::server::ServerOptions::default(),
    )
    .expect("server");
    (server, broker)
}

pub fn get(url: &str) -> http::Request<Vec<u8>> {
    http::Request::get(url).body(Vec::new()).expect("request")
}
