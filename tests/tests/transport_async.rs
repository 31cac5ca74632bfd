//! The async transport over real loopback sockets, with a small test machine.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use broker_session::{AuthorizeError, Error as CoreError, FailureKind, ProtocolError};
use broker_session_hyper::{Client, Config, Error, HttpClient, Tls};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};
use common::{Intent, Outcome, TestBroker, TestMachine, get, start_server};

fn session(base: &str, config: &Config) -> Client<TestMachine> {
    Client::new(TestMachine::new(base), config).expect("session")
}

fn transport_kind(r: Result<Outcome, Error>) -> FailureKind {
    match r {
        Err(Error::Session(CoreError::Transport(f))) => f.kind,
        other => panic!("expected a transport failure, got {other:?}"),
    }
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (server, _) = start_server();
    let s = session(&server.http_url(), &Config::default());
    match s.run(Intent::Get("/redirect".into())).await {
        Err(Error::Session(CoreError::Protocol(ProtocolError::Redirect { status, .. }))) => {
            assert_eq!(status, 302)
        }
        other => panic!("{other:?}"),
    }
    s.run(Intent::Login).await.expect("login");
    let r = s
        .send(get(&format!("{}/redirect", server.http_url())))
        .await
        .expect("send");
    assert_eq!(r.status(), 302);
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/redirect", "/login", "/redirect"]);
}

#[tokio::test]
async fn oversized_body_is_rejected() {
    let (server, _) = start_server();
    let s = session(&server.http_url(), &Config::default());
    assert_eq!(
        transport_kind(s.run(Intent::Get("/big".into())).await),
        FailureKind::BodyTooLarge
    );
    let mut small = Config::default();
    small.max_body = 1;
    let s = session(&server.http_url(), &small);
    assert_eq!(
        transport_kind(s.run(Intent::Get("/echo".into())).await),
        FailureKind::BodyTooLarge
    );
}

#[tokio::test]
async fn timeout_is_classified() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.request_timeout = Duration::from_millis(300);
    let s = session(&server.http_url(), &config);
    assert_eq!(
        transport_kind(s.run(Intent::Get("/slow".into())).await),
        FailureKind::Timeout
    );
}

#[tokio::test]
async fn empty_post_has_content_length_and_user_agent() {
    let (server, _) = start_server();
    let s = session(&server.http_url(), &Config::default());
    s.run(Intent::PostEmpty("/empty".into()))
        .await
        .expect("post");
    s.run(Intent::Get("/get".into())).await.expect("get");
    let reqs = server.requests();
    assert_eq!(reqs[0].method, http::Method::POST);
    assert_eq!(reqs[0].headers["content-length"], "0");
    for r in &reqs {
        let ua = r.headers["user-agent"].to_str().expect("ua");
        assert!(ua.starts_with("broker-session/"), "{ua}");
    }
}

#[tokio::test]
async fn https_with_custom_ca_works_and_fails_without_it() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
    let s = session(&server.https_url(), &config);
    let out = s.run(Intent::Get("/echo".into())).await.expect("https");
    assert_eq!(out.status, 200);
    assert!(server.requests()[0].tls);

    let s = session(&server.https_url(), &Config::default());
    assert_eq!(
        transport_kind(s.run(Intent::Get("/echo".into())).await),
        FailureKind::Tls
    );
}

#[tokio::test]
async fn https_with_self_signed_leaf() {
    let mut options = ServerOptions::default();
    options.cert = CertMode::SelfSignedLeaf;
    let server = Server::start_shared(
        Arc::new(std::sync::Mutex::new(TestBroker::default())),
        options,
    )
    .expect("server");
    let mut config = Config::default();
    config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
    let s = session(&server.https_url(), &config);
    assert_eq!(
        s.run(Intent::Get("/echo".into())).await.expect("ok").status,
        200
    );
}

#[tokio::test]
async fn insecure_mode_works_on_loopback_and_is_refused_elsewhere() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.tls = Tls::InsecureLoopbackOnly;
    let s = session(&server.https_url(), &config);
    assert_eq!(
        s.run(Intent::Get("/echo".into())).await.expect("ok").status,
        200
    );
    let s = session("https://broker.invalid", &config);
    assert_eq!(
        transport_kind(s.run(Intent::Get("/echo".into())).await),
        FailureKind::Tls
    );
}

#[tokio::test]
async fn plain_http_is_refused_for_non_loopback_hosts() {
    let s = session("http://broker.invalid", &Config::default());
    // The client keeps its verdict on an origin: the second request, judged by the
    // kept verdict, is refused as the first was.
    for _ in 0..2 {
        match s.run(Intent::Get("/echo".into())).await {
            Err(Error::Session(CoreError::Transport(f))) => {
                assert_eq!(f.kind, FailureKind::Other);
                assert!(f.detail.contains("plain http"), "{}", f.detail);
            }
            other => panic!("{other:?}"),
        }
    }
    let http = HttpClient::new(&Config::default()).expect("client");
    for _ in 0..2 {
        let request = http::Request::get("http://BROKER.invalid:80/x")
            .body(Vec::new())
            .expect("request");
        let f = http.execute(request).await.expect_err("refused");
        assert_eq!(f.kind, FailureKind::Other);
        assert!(f.detail.contains("plain http"), "{}", f.detail);
    }
}

#[tokio::test]
async fn send_refuses_other_hosts_and_requires_login() {
    let (server, _) = start_server();
    let s = session(&server.http_url(), &Config::default());
    assert!(matches!(
        s.send(get(&format!("{}/data", server.http_url()))).await,
        Err(Error::Authorize(AuthorizeError::NotLoggedIn))
    ));
    s.run(Intent::Login).await.expect("login");
    assert!(matches!(
        s.send(get("http://127.0.0.2:1/data")).await,
        Err(Error::Authorize(AuthorizeError::Refused(_)))
    ));
}

#[tokio::test]
async fn dropped_future_does_not_wedge_the_machine() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.request_timeout = Duration::from_millis(500);
    let s = session(&server.http_url(), &config);
    s.subscribe();
    // The machine's own deadline (10 s) is far away: only the exchange, handed to a
    // task when the future was dropped, can unblock it in time.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        s.run(Intent::Get("/slow".into())),
    )
    .await;
    assert!(dropped.is_err(), "the slow request should still be running");
    let out = tokio::time::timeout(Duration::from_secs(5), s.run(Intent::Get("/echo".into())))
        .await
        .expect("the machine is not wedged")
        .expect("echo");
    assert_eq!(out.status, 200);
    // The dropped operation's result went to the event buffer.
    let events = s.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { result: Err(CoreError::Transport(f)), .. } if f.kind == FailureKind::Timeout
        )),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_401_storm_recovers_exactly_once() {
    let (server, broker) = start_server();
    let config = Config::default();
    let http = HttpClient::new(&config).expect("http");
    let s = Client::with_http(TestMachine::new(&server.http_url()), http).expect("s");
    s.run(Intent::Login).await.expect("login");
    broker.lock().expect("broker").token = Some("revoked".into());
    let url = format!("{}/data", server.http_url());
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (s, url, barrier) = (s.clone(), url.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                s.send(get(&url)).await.expect("send").status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let b = broker.lock().expect("broker");
    assert_eq!(
        b.logins.load(Ordering::SeqCst),
        2,
        "one login, one recovery"
    );
    assert_eq!(b.data_ok, 32);
}

#[tokio::test]
async fn keep_alive_runs_timers_until_dropped() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(40));
    let s = Client::new(m, &Config::default()).expect("session");
    s.run(Intent::Login).await.expect("login");
    let ticks = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/tick")
            .count()
    };
    let guard = s.keep_alive();
    let start = Instant::now();
    while ticks() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ticks");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(guard);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = ticks();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(ticks(), after, "ticks after the handle dropped");
}

#[tokio::test]
async fn sessions_share_one_pool() {
    let (server, _) = start_server();
    let config = Config::default();
    let http = HttpClient::new(&config).expect("http");
    let a = Client::with_http(TestMachine::new(&server.http_url()), http.clone()).expect("a");
    let b = Client::with_http(TestMachine::new(&server.http_url()), http).expect("b");
    a.run(Intent::Login).await.expect("a");
    b.run(Intent::Login).await.expect("b");
    assert_eq!(a.state(), common::State::Active);
    assert_eq!(b.state(), common::State::Active);
}

#[test]
fn session_needs_a_runtime() {
    assert!(matches!(
        Client::new(TestMachine::new("http://127.0.0.1:1"), &Config::default()),
        Err(Error::NoRuntime)
    ));
}

#[test]
fn exchange_dropped_with_its_runtime_reports_cancelled() {
    let (server, _) = start_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = runtime.block_on(async {
        let s = session(&server.http_url(), &Config::default());
        s.subscribe();
        // Submitting on the machine, then servicing, spawns the exchange of /slow.
        s.with_machine(|m| {
            broker_session::Machine::submit(
                m,
                Intent::Get("/slow".into()),
                broker_session_hyper::now(),
            )
        })
        .expect("submit");
        s.service();
        tokio::task::yield_now().await;
        s
    });
    drop(runtime);
    // The dropped exchange was reported as cancelled; the machine is not left waiting.
    s.service();
    let events = s.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { result: Err(CoreError::Transport(f)), .. }
                if f.kind == FailureKind::Cancelled
        )),
        "{events:?}"
    );
    // A transmit spawned on the dead runtime is dropped at once, while the session
    // is locked: it must be reported, not deadlock.
    s.with_machine(|m| {
        broker_session::Machine::submit(m, Intent::Get("/echo".into()), broker_session_hyper::now())
    })
    .expect("submit");
    // The first service spawns it (and it is dropped under the lock); the next one
    // feeds its failure to the machine.
    s.service();
    s.service();
    let events = s.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { result: Err(CoreError::Transport(f)), .. }
                if f.kind == FailureKind::Cancelled
        )),
        "{events:?}"
    );
}

#[tokio::test]
async fn submit_then_next_event() {
    let (server, _) = start_server();
    let s = session(&server.http_url(), &Config::default());
    let op = s.submit(Intent::Get("/echo".into())).expect("submit");
    let event = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), s.next_event())
            .await
            .expect("an event");
        if matches!(e, broker_session::Event::Completed { .. }) {
            break e;
        }
    };
    assert!(
        matches!(&event, broker_session::Event::Completed { op: o, result: Ok(out) } if *o == op && out.status == 200),
        "{event:?}"
    );
    s.with_machine(|_| format!("{s:?}"));
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let s = session("http://127.0.0.1:1", &Config::default());
    assert_eq!(
        transport_kind(s.run(Intent::Get("/echo".into())).await),
        FailureKind::Connect
    );
}

#[tokio::test]
async fn stalled_tls_handshake_times_out() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", silent.local_addr().expect("addr"));
    let mut config = Config::default();
    config.connect_timeout = Duration::from_millis(200);
    config.request_timeout = Duration::from_millis(400);
    let s = session(&url, &config);
    assert_eq!(
        transport_kind(s.run(Intent::Get("/echo".into())).await),
        FailureKind::Timeout
    );
}

/// A plain HTTP/1.1 server on a loopback socket that answers every request `200 ok`,
/// a request for `/late` only after `delay`. Counts the requests per path.
fn late_ok_server(delay: Duration) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    // Request line and headers; the requests here have no body.
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => head.push(line),
                        }
                    }
                    let path = head
                        .first()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().expect("paths").push(path.clone());
                    if path == "/late" {
                        std::thread::sleep(delay);
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, paths)
}

#[tokio::test]
async fn a_future_dropped_mid_exchange_hands_the_exchange_on_and_the_session_goes_on() {
    let (url, paths) = late_ok_server(Duration::from_millis(300));
    let s = session(&url, &Config::default());
    s.subscribe();
    // The exchange of /late runs inside this future, which is dropped while the
    // request is on the socket and its answer 250 ms away.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        s.run(Intent::Get("/late".into())),
    )
    .await;
    assert!(dropped.is_err(), "the late request should still be running");
    // The session is usable at once; its next operation waits for the machine's
    // request in flight, which the session completed on a task of its own.
    let out = tokio::time::timeout(Duration::from_secs(5), s.run(Intent::Get("/echo".into())))
        .await
        .expect("the machine is not wedged")
        .expect("echo");
    assert_eq!(out.status, 200);
    // The machine heard the real answer to the dropped future's request (not a
    // cancellation), and nothing was sent twice.
    let events = s.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { result: Ok(out), .. } if out.status == 200
        )),
        "{events:?}"
    );
    assert_eq!(*paths.lock().expect("paths"), ["/late", "/echo"]);
    // And again, inside a future that is not dropped.
    let out = s.run(Intent::Get("/late".into())).await.expect("late");
    assert_eq!(out.status, 200);
}

#[test]
fn a_future_dropped_mid_exchange_with_its_runtime_reports_cancelled() {
    let (url, paths) = late_ok_server(Duration::from_secs(2));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = runtime.block_on(async { session(&url, &Config::default()) });
    s.subscribe();
    let running = s.clone();
    runtime.spawn(async move { running.run(Intent::Get("/late".into())).await });
    // Let the task send the request, then drop the runtime with the exchange in the
    // task's future: the task the exchange is handed to is dropped at once too.
    runtime.block_on(async {
        while paths.lock().expect("paths").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    drop(runtime);
    s.service();
    let events = s.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { result: Err(CoreError::Transport(f)), .. }
                if f.kind == FailureKind::Cancelled
        )),
        "{events:?}"
    );
}

#[tokio::test]
async fn events_are_kept_only_once_the_application_reads_them() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(10));
    let s = Client::new(m, &Config::default()).expect("session");
    s.run(Intent::Login).await.expect("login");
    let ticks = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/tick")
            .count()
    };
    let keep_alive = s.keep_alive();
    let start = Instant::now();
    while ticks() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ticks");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nobody read events yet: the ticks' completions were not kept, nor counted as
    // dropped. The first wait for an event subscribes, and sees the next tick.
    assert!(s.drain_events().is_empty());
    assert_eq!(s.dropped_events(), 0);
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let broker_session::Event::Completed { result, .. } = s.next_event().await {
                break result;
            }
        }
    })
    .await
    .expect("a tick after subscribing");
    drop(keep_alive);
    assert!(matches!(&event, Ok(out) if out.status == 200), "{event:?}");
}
