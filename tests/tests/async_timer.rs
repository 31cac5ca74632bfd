//! The async transport's shared timer: every kept-alive session of one
//! `HttpClient` runs its timers on one tokio task, over real loopback sockets.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::{FailureKind, Now, TransportFailure};
use broker_session_hyper::{Client, Config, HttpClient, KeepAlive};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_testkit::sim::{FakeBroker, Reply};
use common::{Intent, TestMachine};

/// A broker that hands each login its own token and counts the ticks of each
/// session by its token; the ticks of the `slow` token stall (the server holds them
/// for its `stall`, then drops the connection).
#[derive(Default)]
struct Ticks {
    logins: u32,
    ticks: HashMap<String, u32>,
    slow: Option<String>,
}

impl FakeBroker for Ticks {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, _now: Now) -> Reply {
        let ok = |body: Vec<u8>| Reply::Response(http::Response::new(body));
        match request.uri().path() {
            "/login" => {
                self.logins += 1;
                ok(format!("s{}", self.logins).into_bytes())
            }
            "/tick" => {
                let token = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_owned();
                *self.ticks.entry(token.clone()).or_default() += 1;
                if self.slow.as_deref() == Some(token.as_str()) {
                    Reply::Fail(TransportFailure::new(FailureKind::Timeout, "stall"))
                } else {
                    ok(b"ok".to_vec())
                }
            }
            _ => ok(b"ok".to_vec()),
        }
    }
}

struct Fixture {
    server: Server,
    broker: Arc<Mutex<Ticks>>,
    http: HttpClient,
}

impl Fixture {
    fn new(stall: Duration) -> Self {
        let broker = Arc::new(Mutex::new(Ticks::default()));
        let mut options = ServerOptions::default();
        options.stall = stall;
        // Hundreds of sessions tick for seconds: the counts are all the test needs.
        options.record_limit = 0;
        let server = Server::start_shared(Arc::clone(&broker), options).expect("server");
        let http = HttpClient::new(&Config::default()).expect("http");
        Self {
            server,
            broker,
            http,
        }
    }

    /// A session on the shared client, logged in; returns it with its token.
    async fn session(&self, tick_every: Duration) -> (Client<TestMachine>, String) {
        let mut m = TestMachine::new(&self.server.http_url());
        m.tick_every = Some(tick_every);
        let s = Client::with_http(m, self.http.clone()).expect("session");
        s.run(Intent::Login).await.expect("login");
        let token = format!("s{}", self.broker.lock().expect("broker").logins);
        (s, token)
    }

    fn ticks(&self, token: &str) -> u32 {
        let b = self.broker.lock().expect("broker");
        b.ticks.get(token).copied().unwrap_or(0)
    }
}

/// Waits (at most 20 s) until `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn two_hundred_kept_alive_sessions_run_on_one_task_that_ends_with_them() {
    let f = Fixture::new(Duration::from_secs(3));
    let mut sessions = Vec::new();
    for _ in 0..200 {
        // No tick due during the test: only the timer task itself is counted.
        sessions.push(f.session(Duration::from_secs(3600)).await.0);
    }
    // The pool's connection task(s) and whatever else runs besides the sessions.
    let before = alive_tasks();
    let keep: Vec<KeepAlive> = sessions.iter().map(|s| s.keep_alive()).collect();
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), before + 1, "one timer task for 200 sessions");
    // A second handle on a kept-alive session shares its registration.
    let again = sessions[0].keep_alive();
    assert_eq!(alive_tasks(), before + 1);
    drop(keep);
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), before + 1, "session 0 is still kept alive");
    drop(again);
    until("the timer task ends with its last session", || {
        alive_tasks() == before
    })
    .await;

    // It starts again with the next session kept alive, and ends when the sessions
    // and their handles are dropped.
    let keep: Vec<KeepAlive> = sessions.iter().map(|s| s.keep_alive()).collect();
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), before + 1);
    drop(sessions);
    tokio::task::yield_now().await;
    assert_eq!(
        alive_tasks(),
        before + 1,
        "the handles hold their sessions, as a task per session did"
    );
    drop(keep);
    until("the timer task ends", || alive_tasks() == before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_two_hundred_sessions_gets_its_ticks() {
    let f = Fixture::new(Duration::from_secs(3));
    let mut sessions = Vec::new();
    for _ in 0..200 {
        sessions.push(f.session(Duration::from_millis(100)).await);
    }
    let keep: Vec<KeepAlive> = sessions.iter().map(|(s, _)| s.keep_alive()).collect();
    until("three ticks for every session", || {
        sessions.iter().all(|(_, token)| f.ticks(token) >= 3)
    })
    .await;
    drop(keep);
}

#[tokio::test]
async fn a_deadline_moved_earlier_by_a_call_is_served_at_the_new_deadline() {
    let f = Fixture::new(Duration::from_secs(3));
    let (s, _) = f.session(Duration::from_secs(3600)).await;
    let _keep = s.keep_alive();
    // The timer learns the tick an hour away.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A call moves the next tick 100 ms after it: a new login restarts the tick
    // interval, now short.
    s.with_machine(|m| m.tick_every = Some(Duration::from_millis(100)));
    s.run(Intent::Login).await.expect("login");
    let token = format!("s{}", f.broker.lock().expect("broker").logins);
    // Well before both the old deadline and the login's request deadline (10 s),
    // which the timer also saw go by.
    let start = Instant::now();
    while f.ticks(&token) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the timer did not learn the earlier deadline"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn dropping_a_keep_alive_stops_that_sessions_timers_and_no_others() {
    let f = Fixture::new(Duration::from_secs(3));
    let (a, ta) = f.session(Duration::from_millis(30)).await;
    let (b, tb) = f.session(Duration::from_millis(30)).await;
    let keep_a = a.keep_alive();
    let _keep_b = b.keep_alive();
    until("both tick", || f.ticks(&ta) >= 3 && f.ticks(&tb) >= 3).await;
    drop(keep_a);
    // A tick sent before the drop may still arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (a_after, b_after) = (f.ticks(&ta), f.ticks(&tb));
    until("b goes on ticking", || f.ticks(&tb) >= b_after + 5).await;
    assert_eq!(f.ticks(&ta), a_after, "a ticked after its handle dropped");
    // The application can still drive `a` itself.
    assert!(a.service().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_exchange_of_one_session_does_not_delay_the_others_timers() {
    // The slow session's tick is held for 10 s: far longer than the wait below.
    let f = Fixture::new(Duration::from_secs(10));
    let (slow, slow_token) = f.session(Duration::from_millis(50)).await;
    f.broker.lock().expect("broker").slow = Some(slow_token.clone());
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(f.session(Duration::from_millis(50)).await);
    }
    let _keep_slow = slow.keep_alive();
    until("the slow tick is in flight", || f.ticks(&slow_token) == 1).await;
    let _keep: Vec<KeepAlive> = others.iter().map(|(s, _)| s.keep_alive()).collect();
    let start = Instant::now();
    until("the others tick while the slow tick hangs", || {
        others.iter().all(|(_, token)| f.ticks(token) >= 5)
    })
    .await;
    // Still in flight: the slow exchange was not over when the others ticked.
    assert!(start.elapsed() < Duration::from_secs(9));
    assert_eq!(f.ticks(&slow_token), 1);
}

#[test]
fn the_handle_can_move_between_threads_and_tasks() {
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    send_sync_unpin::<KeepAlive>();
}
