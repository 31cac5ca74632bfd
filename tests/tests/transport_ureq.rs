//! The blocking transport over real loopback sockets, with a small test machine.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use broker_session::{AuthorizeError, Error as CoreError, FailureKind, ProtocolError};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};
use broker_session_ureq::{Client, Config, Error, Scheduler, Tls};
use common::{Intent, Outcome, TestBroker, TestMachine, get, start_server};

fn client(base: &str, config: &Config) -> Client<TestMachine> {
    Client::new(TestMachine::new(base), config).expect("client")
}

fn transport_kind(r: Result<Outcome, Error>) -> FailureKind {
    match r {
        Err(Error::Session(CoreError::Transport(f))) => f.kind,
        other => panic!("expected a transport failure, got {other:?}"),
    }
}

#[test]
fn redirect_is_not_followed() {
    let (server, _) = start_server();
    let c = client(&server.http_url(), &Config::default());
    match c.run(Intent::Get("/redirect".into())) {
        Err(Error::Session(CoreError::Protocol(ProtocolError::Redirect { status, .. }))) => {
            assert_eq!(status, 302)
        }
        other => panic!("{other:?}"),
    }
    // Application requests get the 3xx as it is.
    c.run(Intent::Login).expect("login");
    let r = c
        .send(get(&format!("{}/redirect", server.http_url())))
        .expect("send");
    assert_eq!(r.status(), 302);
    let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/redirect", "/login", "/redirect"]);
}

#[test]
fn oversized_body_is_rejected() {
    let (server, _) = start_server();
    let c = client(&server.http_url(), &Config::default());
    assert_eq!(
        transport_kind(c.run(Intent::Get("/big".into()))),
        FailureKind::BodyTooLarge
    );
    let mut small = Config::default();
    small.max_body = 1;
    let c = client(&server.http_url(), &small);
    assert_eq!(
        transport_kind(c.run(Intent::Get("/echo".into()))),
        FailureKind::BodyTooLarge
    );
}

#[test]
fn timeout_is_classified() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.request_timeout = Duration::from_millis(300);
    let c = client(&server.http_url(), &config);
    assert_eq!(
        transport_kind(c.run(Intent::Get("/slow".into()))),
        FailureKind::Timeout
    );
}

#[test]
fn empty_post_has_content_length_and_user_agent() {
    let (server, _) = start_server();
    let c = client(&server.http_url(), &Config::default());
    c.run(Intent::PostEmpty("/empty".into())).expect("post");
    c.run(Intent::Get("/get".into())).expect("get");
    let reqs = server.requests();
    assert_eq!(reqs[0].method, http::Method::POST);
    assert_eq!(reqs[0].headers["content-length"], "0");
    for r in &reqs {
        let ua = r.headers["user-agent"].to_str().expect("ua");
        assert!(ua.starts_with("broker-session/"), "{ua}");
    }
    let mut config = Config::default();
    config.user_agent = "my-app/1.0".into();
    let c = client(&server.http_url(), &config);
    c.run(Intent::Get("/get".into())).expect("get");
    assert_eq!(
        server.requests().last().expect("req").headers["user-agent"],
        "my-app/1.0"
    );
}

#[test]
fn https_with_custom_ca_works_and_fails_without_it() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
    let c = client(&server.https_url(), &config);
    let out = c
        .run(Intent::Get("/echo".into()))
        .expect("https with the CA");
    assert_eq!(out.status, 200);
    assert!(server.requests()[0].tls);

    let c = client(&server.https_url(), &Config::default());
    assert_eq!(
        transport_kind(c.run(Intent::Get("/echo".into()))),
        FailureKind::Tls
    );
}

#[test]
fn https_with_self_signed_leaf() {
    let mut options = ServerOptions::default();
    options.cert = CertMode::SelfSignedLeaf;
    let server = Server::start_shared(
        Arc::new(std::sync::Mutex::new(TestBroker::default())),
        options,
    )
    .expect("server");
    let mut config = Config::default();
    config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
    let c = client(&server.https_url(), &config);
    assert_eq!(c.run(Intent::Get("/echo".into())).expect("ok").status, 200);
}

#[test]
fn bad_pem_is_a_config_error() {
    let mut config = Config::default();
    config.tls = Tls::Pem(b"not a certificate".to_vec());
    assert!(matches!(
        Client::new(TestMachine::new("https://127.0.0.1:1"), &config),
        Err(Error::Config(_))
    ));
}

#[test]
fn insecure_mode_works_on_loopback_and_is_refused_elsewhere() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.tls = Tls::InsecureLoopbackOnly;
    let c = client(&server.https_url(), &config);
    assert_eq!(c.run(Intent::Get("/echo".into())).expect("ok").status, 200);

    // Refused before any connection is attempted.
    let c = client("https://broker.invalid", &config);
    assert_eq!(
        transport_kind(c.run(Intent::Get("/echo".into()))),
        FailureKind::Tls
    );
}

#[test]
fn plain_http_is_refused_for_non_loopback_hosts() {
    let c = client("http://broker.invalid", &Config::default());
    match c.run(Intent::Get("/echo".into())) {
        Err(Error::Session(CoreError::Transport(f))) => {
            assert_eq!(f.kind, FailureKind::Other);
            assert!(f.detail.contains("plain http"), "{}", f.detail);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn send_refuses_other_hosts_and_requires_login() {
    let (server, _) = start_server();
    let c = client(&server.http_url(), &Config::default());
    assert!(matches!(
        c.send(get(&format!("{}/data", server.http_url()))),
        Err(Error::Authorize(AuthorizeError::NotLoggedIn))
    ));
    c.run(Intent::Login).expect("login");
    assert!(matches!(
        c.send(get("http://127.0.0.2:1/data")),
        Err(Error::Authorize(AuthorizeError::Refused(_)))
    ));
    assert_eq!(
        c.send(get(&format!("{}/data", server.http_url())))
            .expect("data")
            .status(),
        200
    );
}

#[test]
fn concurrent_401_storm_recovers_exactly_once() {
    let (server, broker) = start_server();
    let c = client(&server.http_url(), &Config::default());
    c.run(Intent::Login).expect("login");
    // The broker forgets the session: every request now gets a 401.
    broker.lock().expect("broker").token = Some("revoked".into());
    let url = format!("{}/data", server.http_url());
    let barrier = Arc::new(Barrier::new(32));
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let (c, url, barrier) = (c.clone(), url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                c.send(get(&url)).expect("send").status()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), 200);
    }
    let b = broker.lock().expect("broker");
    assert_eq!(
        b.logins.load(Ordering::SeqCst),
        2,
        "one login, one recovery"
    );
    assert_eq!(b.data_ok, 32);
}

#[test]
fn keep_alive_runs_timers_until_dropped() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(40));
    let c = Client::new(m, &Config::default()).expect("client");
    c.subscribe();
    c.run(Intent::Login).expect("login");
    let ticks = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/tick")
            .count()
    };
    let guard = c.keep_alive().expect("keep-alive");
    let start = Instant::now();
    while ticks() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ticks");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(guard);
    let after = ticks();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(ticks(), after, "ticks after the guard dropped");
    // The tick completions were buffered as events.
    assert!(c.drain_events().len() >= 3);
}

#[test]
fn service_runs_due_timers_and_returns_the_deadline() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(30));
    let c = Client::new(m, &Config::default()).expect("client");
    c.run(Intent::Login).expect("login");
    let deadline = c.service().expect("a tick is scheduled");
    assert!(deadline > Instant::now() - Duration::from_millis(1));
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let next = c.service().expect("next tick");
    assert!(next > deadline);
    assert!(server.requests().iter().any(|r| r.path == "/tick"));
}

#[test]
fn event_buffer_is_bounded() {
    let (server, _) = start_server();
    let mut config = Config::default();
    config.event_capacity = 2;
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(5));
    let c = Client::new(m, &config).expect("client");
    c.subscribe();
    c.run(Intent::Login).expect("login");
    let start = Instant::now();
    while c.dropped_events() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        c.service();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(c.drain_events().len() <= 2);
}

#[test]
fn debug_output_holds_no_token() {
    let (server, broker) = start_server();
    let c = client(&server.http_url(), &Config::default());
    c.run(Intent::Login).expect("login");
    let token = broker.lock().expect("b").token.clone().expect("token");
    let dbg = format!("{c:?} {:?} {:?}", c.http(), Config::default());
    assert!(!dbg.contains(&token), "{dbg}");
    let err = c.send(get("http://127.0.0.2:1/x")).expect_err("refused");
    assert!(!format!("{err:?} {err}").contains(&token));
}

#[test]
fn submit_then_service_delivers_the_result_as_an_event() {
    let (server, _) = start_server();
    let c = client(&server.http_url(), &Config::default());
    let op = c.submit(Intent::Get("/echo".into())).expect("submit");
    assert!(server.requests().is_empty(), "submit sends nothing");
    c.service();
    let events = c.drain_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            broker_session::Event::Completed { op: o, result: Ok(out) } if *o == op && out.status == 200
        )),
        "{events:?}"
    );
    // Debug does not deadlock while the lock is held.
    c.with_machine(|_| format!("{c:?}"));
}

#[test]
fn a_scheduler_runs_a_submitted_operation_and_timers_moved_earlier() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(40));
    let c = Client::new(m, &Config::default()).expect("client");
    let scheduler = Scheduler::spawn().expect("scheduler");
    let registration = scheduler.add(&c);
    // Let the scheduler's first run find nothing scheduled and go to sleep: the
    // submit, then the login's first tick, must wake it.
    std::thread::sleep(Duration::from_millis(100));
    let op = c.submit(Intent::Get("/echo".into())).expect("submit");
    let start = Instant::now();
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e| matches!(e, broker_session::Event::Completed { op: o, result: Ok(_) } if *o == op))
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not run: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
        events.extend(c.drain_events());
    }
    c.run(Intent::Login).expect("login");
    let ticks = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/tick")
            .count()
    };
    while ticks() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ticks");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(registration);
    assert!(scheduler.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    let after = ticks();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(ticks(), after, "ticks after the registration dropped");
}

/// A one-shot HTTP/1.1 server: reads one request (head and `content-length` body),
/// answers with a head carrying `header_bytes` of padding and a `body_bytes` body.
/// Returns its URL and, on join, the request body length it read.
fn raw_server(header_bytes: usize, body_bytes: usize) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("head");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        let head = format!(
            "HTTP/1.1 200 OK\r\nx-padding: {}\r\ncontent-length: {body_bytes}\r\n\r\n",
            "p".repeat(header_bytes)
        );
        let mut writer = stream;
        // The client may give up on a head too large: ignore write errors.
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b'b'; body_bytes]);
        length
    });
    (url, server)
}

#[test]
fn connection_buffers_still_carry_large_heads_and_bodies() {
    let http = broker_session_ureq::HttpClient::new(&Config::default()).expect("client");
    // A request body much larger than the output buffer, a response head larger
    // than the old 16 KiB guesses and a body larger than the input buffer.
    let (url, server) = raw_server(40 * 1024, 512 * 1024);
    let request = http::Request::post(format!("{url}/upload"))
        .body(vec![b'x'; 300 * 1024])
        .expect("request");
    let response = http.execute(request).expect("exchange");
    assert_eq!(server.join().expect("server"), 300 * 1024);
    assert_eq!(response.headers()["x-padding"].len(), 40 * 1024);
    assert_eq!(response.body().len(), 512 * 1024);
    // A head over the 64 KiB limit is a typed failure, not a panic or a hang.
    let (url, server) = raw_server(100 * 1024, 0);
    let failure = http
        .execute(get(&format!("{url}/big-head")))
        .expect_err("too large");
    assert!(!failure.detail.is_empty(), "{failure}");
    server.join().expect("server");
}

#[test]
fn refused_connection_is_a_connect_failure() {
    // Nothing listens on port 1 of loopback.
    let c = client("http://127.0.0.1:1", &Config::default());
    assert_eq!(
        transport_kind(c.run(Intent::Get("/echo".into()))),
        FailureKind::Connect
    );
}

#[test]
fn stalled_tls_handshake_hits_the_connect_timeout() {
    // A listener that never answers: TCP connects (the kernel accepts), TLS stalls.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", silent.local_addr().expect("addr"));
    let mut config = Config::default();
    config.connect_timeout = Duration::from_millis(200);
    let c = client(&url, &config);
    match c.run(Intent::Get("/echo".into())) {
        Err(Error::Session(CoreError::Transport(f))) => {
            assert_eq!(f.kind, FailureKind::Timeout);
            // The connect timeout fired, not the 30 s request timeout.
            assert!(f.detail.to_lowercase().contains("connect"), "{}", f.detail);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn events_are_kept_only_once_the_application_reads_them() {
    let (server, _) = start_server();
    let mut m = TestMachine::new(&server.http_url());
    m.tick_every = Some(Duration::from_millis(10));
    let c = Client::new(m, &Config::default()).expect("client");
    c.run(Intent::Login).expect("login");
    let ticks = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/tick")
            .count()
    };
    let start = Instant::now();
    while ticks() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ticks");
        c.service();
        std::thread::sleep(Duration::from_millis(5));
    }
    // Nobody read events yet: the ticks' completions were not kept, nor counted as
    // dropped. This first read subscribes.
    assert!(c.drain_events().is_empty());
    assert_eq!(c.dropped_events(), 0);
    let start = Instant::now();
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e| matches!(e, broker_session::Event::Completed { result: Ok(_), .. }))
    {
        assert!(start.elapsed() < Duration::from_secs(5), "{events:?}");
        c.service();
        std::thread::sleep(Duration::from_millis(5));
        events.extend(c.drain_events());
    }
}
