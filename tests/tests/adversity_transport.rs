//! The transports under adversity, over real loopback sockets: servers that answer
//! after the machine gave up, proxies from the environment and from the
//! configuration, and durations at their limits.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
use broker_session::{Error as CoreError, FailureKind, TransportFailure};
use common::{Intent, TestMachine, start_server};

// ---------------------------------------------------------------------------------
// A server that answers late.

/// Accepts connections, records each request line, and answers `reply` only `delay`
/// after the request arrived, unless the client hangs up first.
struct LateServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    answered: Arc<AtomicBool>,
    abandoned: Arc<AtomicBool>,
}

impl LateServer {
    fn start(delay: Duration, reply: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (r, a, gone) = (
            Arc::clone(&requests),
            Arc::clone(&answered),
            Arc::clone(&abandoned),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (r, a, gone) = (Arc::clone(&r), Arc::clone(&a), Arc::clone(&gone));
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let Some((head, _)) = read_head(&mut reader) else {
                        return;
                    };
                    let length = content_length(&head);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    lock(&r).push(line);
                    // Wait for the delay, watching for the client hanging up.
                    stream.set_read_timeout(Some(delay)).expect("read timeout");
                    let mut byte = [0];
                    if let Ok(0) = reader.read(&mut byte) {
                        gone.store(true, Ordering::SeqCst);
                        return;
                    }
                    a.store(true, Ordering::SeqCst);
                    let mut stream = stream;
                    // The client may have gone: that is what the tests expect.
                    let _ = stream.write_all(reply.as_bytes());
                });
            }
        });
        Self {
            url,
            requests,
            answered,
            abandoned,
        }
    }

    /// Waits until the client hung up or the server answered (after the delay); true
    /// if the client hung up first.
    fn client_hung_up_first(&self) -> bool {
        while !self.answered() && !self.abandoned.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abandoned.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }

    fn answered(&self) -> bool {
        self.answered.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads a request or response head (up to the blank line); returns it as text and
/// its raw bytes.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        raw.extend_from_slice(&line);
        if line == b"\r\n" {
            return Some((String::from_utf8_lossy(&raw).into_owned(), raw));
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

const REJECTED_LATE: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
    content-length: 47\r\nconnection: close\r\n\r\n{\"errorCode\":\"error.security.invalid-details\"}";

/// A complete answer with no body.
const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";

/// The server answers this long after the request: well after the machine's deadline
/// below, so a client that returns before the answer gave up on its own.
const LATE: Duration = Duration::from_secs(8);

/// An IG v2 login to `base` whose machine gives up on each request after 2 s, with
/// one attempt (so the count of logins the server sees depends on the transport
/// alone).
fn ig_config(base: &str) -> IgConfig {
    let mut c = IgConfig::new(
        IgEnvironment::Custom(base.to_owned()),
        "api-key",
        "identifier",
        "wrong-password",
    );
    c.login_flow = LoginFlow::V2;
    c.request_deadline = Duration::from_secs(2);
    c
}

/// The transport itself gave up on the exchange (closed the connection) before the
/// late answer, and the server saw exactly one login.
fn assert_one_abandoned_login(server: &LateServer, outcome: &dyn std::fmt::Debug) {
    assert!(
        !server.answered(),
        "the client waited for an answer the machine no longer expected: {outcome:?}"
    );
    assert!(
        server.client_hung_up_first(),
        "the exchange outlived the machine's deadline: {outcome:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].starts_with("POST /session "), "{requests:?}");
}

#[test]
fn ureq_gives_up_on_a_late_login_before_the_machine_does() {
    use broker_session_ureq::{Client, Config};
    let server = LateServer::start(LATE, REJECTED_LATE);
    let client = Client::ig(ig_config(&server.url), &Config::default()).expect("client");
    let outcome = client.login();
    assert_one_abandoned_login(&server, &outcome);
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn hyper_gives_up_on_a_late_login_before_the_machine_does() {
    use broker_session_hyper::{Client, Config};
    let server = LateServer::start(LATE, REJECTED_LATE);
    let session = Client::ig(ig_config(&server.url), &Config::default()).expect("session");
    let outcome = session.login().await;
    assert!(outcome.is_err(), "{outcome:?}");
    // Checked off the runtime's thread: the abandoned connection is closed by its
    // connection task, which runs on this (current-thread) runtime.
    let outcome = format!("{outcome:?}");
    tokio::task::spawn_blocking(move || assert_one_abandoned_login(&server, &outcome))
        .await
        .expect("checked");
}

/// The machine hears the transport's own timeout (a `Transport` error of kind
/// `Timeout`), not silence until its deadline.
#[test]
fn ureq_reports_an_abandoned_exchange_as_a_timeout() {
    use broker_session_ureq::{Client, Config, Error};
    let server = LateServer::start(LATE, REJECTED_LATE);
    let mut machine = TestMachine::new(&server.url);
    machine.request_deadline = Duration::from_secs(2);
    let client = Client::new(machine, &Config::default()).expect("client");
    let outcome = client.run(Intent::Login);
    assert!(!server.answered(), "{outcome:?}");
    assert_eq!(server.requests().len(), 1);
    match outcome {
        Err(Error::Session(CoreError::Transport(f))) => assert_eq!(f.kind, FailureKind::Timeout),
        other => panic!("expected a transport timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn hyper_reports_an_abandoned_exchange_as_a_timeout() {
    use broker_session_hyper::{Client, Config, Error};
    let server = LateServer::start(LATE, REJECTED_LATE);
    let mut machine = TestMachine::new(&server.url);
    machine.request_deadline = Duration::from_secs(2);
    let session = Client::new(machine, &Config::default()).expect("session");
    let outcome = session.run(Intent::Login).await;
    assert!(!server.answered(), "{outcome:?}");
    assert_eq!(server.requests().len(), 1);
    match outcome {
        Err(Error::Session(CoreError::Transport(f))) => assert_eq!(f.kind, FailureKind::Timeout),
        other => panic!("expected a transport timeout, got {other:?}"),
    }
}

/// A blocking client whose exchanges have 2.9 s (rounded to 2 s for the socket, then
/// 0.9 s), and a request to `base`.
fn with_budget_of_2_9_s(base: &str) -> (broker_session_ureq::HttpClient, http::Request<Vec<u8>>) {
    let mut config = broker_session_ureq::Config::default();
    config.request_timeout = Duration::from_millis(2_900);
    let http = broker_session_ureq::HttpClient::new(&config).expect("client");
    let request = http::Request::post(format!("{base}/session"))
        .body(b"{}".to_vec())
        .expect("request");
    (http, request)
}

/// The blocking transport hands the socket its exchange's time left rounded down to
/// whole seconds (so the socket's timeout is set once per connection, not before each
/// read). An answer that comes after the rounded time but before the deadline is
/// still read: 2.4 s into a 2.9 s budget, the socket's 2 s has run out.
#[test]
fn ureq_reads_an_answer_that_comes_after_the_rounded_socket_timeout() {
    let server = LateServer::start(Duration::from_millis(2_400), NO_CONTENT);
    let (http, request) = with_budget_of_2_9_s(&server.url);
    let started = std::time::Instant::now();
    let response = http.execute(request).expect("answered within the budget");
    assert_eq!(response.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(2_400));
    assert!(server.answered());
}

/// ... and one that comes after the deadline is not waited for (the rounding never
/// lengthens a read).
#[test]
fn ureq_gives_up_at_the_deadline_not_the_next_whole_second() {
    let server = LateServer::start(Duration::from_millis(3_800), REJECTED_LATE);
    let (http, request) = with_budget_of_2_9_s(&server.url);
    let failure = http
        .execute(request)
        .expect_err("the answer comes too late");
    assert_eq!(failure.kind, FailureKind::Timeout, "{failure:?}");
    assert!(server.client_hung_up_first());
}

// ---------------------------------------------------------------------------------
// A proxy on loopback that records every connection and forwards it.

struct RecordingProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    /// Records the first line of every connection; opens `CONNECT` tunnels and
    /// forwards absolute-form requests to their target.
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let s = Arc::clone(&s);
                std::thread::spawn(move || forward(client, &s));
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }
}

fn forward(client: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let Some((head, raw)) = read_head(&mut reader) else {
        lock(seen).push("<no request>".into());
        return;
    };
    let line = head.lines().next().unwrap_or_default().to_owned();
    lock(seen).push(line.clone());
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut client_out = client;
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(target);
        rest.split('/').next().unwrap_or("").to_owned()
    };
    let Ok(mut upstream) = TcpStream::connect(&authority) else {
        let _ = client_out.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    if method == "CONNECT" {
        let _ = client_out.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    } else if upstream.write_all(&raw).is_err() {
        return;
    }
    let mut upstream_in = upstream.try_clone().expect("clone");
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut upstream_in, &mut client_out);
        let _ = client_out.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut reader, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = back.join();
}

/// Set in the child process that runs [`environment_proxy_child`].
const CHILD: &str = "BROKER_SESSION_TEST_ENV_PROXY_CHILD";

/// With every proxy variable pointing at a recording proxy, loopback sessions (plain
/// http and unverified TLS) on both transports go straight to the server. The
/// variables are set on a child process running [`environment_proxy_child`]: the
/// environment is process-wide, and setting it here would race other tests.
#[test]
fn proxy_variables_in_the_environment_are_ignored() {
    let proxy = RecordingProxy::start();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe);
    child
        .args([
            "environment_proxy_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        child.env(var, &proxy.url);
    }
    let out = child.output().expect("run the child test");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the child test did not run: {text}"
    );
    assert_eq!(proxy.seen(), Vec::<String>::new(), "{text}");
}

#[test]
#[ignore = "run in a child process by proxy_variables_in_the_environment_are_ignored"]
fn environment_proxy_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (server, _) = start_server();
    {
        use broker_session_ureq::{Client, Config, Tls};
        let c =
            Client::new(TestMachine::new(&server.http_url()), &Config::default()).expect("client");
        c.run(Intent::Login).expect("plain http login on loopback");
        let mut insecure = Config::default();
        insecure.tls = Tls::InsecureLoopbackOnly;
        let c = Client::new(TestMachine::new(&server.https_url()), &insecure).expect("client");
        c.run(Intent::Login)
            .expect("unverified TLS login on loopback");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use broker_session_hyper::{Client, Config, Tls};
        let s =
            Client::new(TestMachine::new(&server.http_url()), &Config::default()).expect("session");
        s.run(Intent::Login)
            .await
            .expect("plain http login on loopback");
        let mut insecure = Config::default();
        insecure.tls = Tls::InsecureLoopbackOnly;
        let s = Client::new(TestMachine::new(&server.https_url()), &insecure).expect("session");
        s.run(Intent::Login)
            .await
            .expect("unverified TLS login on loopback");
    });
    assert_eq!(server.requests().len(), 4);
}

/// What the tests below need of a transport, so each runs on both alike.
trait Transport {
    fn login(base: &str, proxy: &str, trust: bool, insecure: bool) -> Result<(), TransportFailure>;
    fn config_error(proxy: Option<&str>, trust: bool) -> bool;
}

struct Ureq;
struct Hyper;

impl Transport for Ureq {
    fn login(base: &str, proxy: &str, trust: bool, insecure: bool) -> Result<(), TransportFailure> {
        use broker_session_ureq::{Client, Config, Error, Tls};
        let mut config = Config::default();
        config.proxy = Some(proxy.to_owned());
        config.trust_loopback_proxy = trust;
        if insecure {
            config.tls = Tls::InsecureLoopbackOnly;
        }
        let c = Client::new(TestMachine::new(base), &config).expect("client");
        match c.run(Intent::Login) {
            Ok(_) => Ok(()),
            Err(Error::Session(CoreError::Transport(f))) => Err(f),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn config_error(proxy: Option<&str>, trust: bool) -> bool {
        let mut config = broker_session_ureq::Config::default();
        config.proxy = proxy.map(str::to_owned);
        config.trust_loopback_proxy = trust;
        matches!(
            broker_session_ureq::HttpClient::new(&config),
            Err(broker_session_ureq::Error::Config(_))
        )
    }
}

impl Transport for Hyper {
    fn login(base: &str, proxy: &str, trust: bool, insecure: bool) -> Result<(), TransportFailure> {
        use broker_session_hyper::{Client, Config, Error, Tls};
        let mut config = Config::default();
        config.proxy = Some(proxy.to_owned());
        config.trust_loopback_proxy = trust;
        if insecure {
            config.tls = Tls::InsecureLoopbackOnly;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let s = Client::new(TestMachine::new(base), &config).expect("session");
            match s.run(Intent::Login).await {
                Ok(_) => Ok(()),
                Err(Error::Session(CoreError::Transport(f))) => Err(f),
                Err(e) => panic!("{e:?}"),
            }
        })
    }

    fn config_error(proxy: Option<&str>, trust: bool) -> bool {
        let mut config = broker_session_hyper::Config::default();
        config.proxy = proxy.map(str::to_owned);
        config.trust_loopback_proxy = trust;
        matches!(
            broker_session_hyper::HttpClient::new(&config),
            Err(broker_session_hyper::Error::Config(_))
        )
    }
}

/// Through a configured proxy, a loopback URL is not loopback: plain http and
/// unverified TLS are refused before anything is sent, with a reason that names the
/// proxy.
fn configured_proxy_refuses_loopback_shortcuts<T: Transport>() {
    let (server, _) = start_server();
    let proxy = RecordingProxy::start();
    let f = T::login(&server.http_url(), &proxy.url, false, false).expect_err("plain http");
    assert_eq!(f.kind, FailureKind::Other, "{f}");
    assert!(f.detail.contains("proxy"), "{f}");
    let f = T::login(&server.https_url(), &proxy.url, false, true).expect_err("insecure TLS");
    assert_eq!(f.kind, FailureKind::Tls, "{f}");
    assert!(f.detail.contains("proxy"), "{f}");
    assert_eq!(proxy.seen(), Vec::<String>::new());
    assert!(server.requests().is_empty());
}

/// With a loopback proxy the user trusts, loopback sessions go through it.
fn trusted_loopback_proxy_carries_loopback_sessions<T: Transport>(plain_http_line: &str) {
    let (server, _) = start_server();
    let proxy = RecordingProxy::start();
    T::login(&server.http_url(), &proxy.url, true, false).expect("plain http through the proxy");
    T::login(&server.https_url(), &proxy.url, true, true).expect("insecure TLS through the proxy");
    let http = server.http_url();
    let https = server.https_url();
    let http_authority = http.trim_start_matches("http://");
    let https_authority = https.trim_start_matches("https://");
    assert_eq!(
        proxy.seen(),
        [
            plain_http_line.replace("{http}", http_authority),
            format!("CONNECT {https_authority} HTTP/1.1"),
        ],
    );
    assert_eq!(server.requests().len(), 2);
}

/// Proxy settings that cannot be honoured are refused when the client is built.
fn unusable_proxy_settings_are_config_errors<T: Transport>() {
    assert!(T::config_error(None, true), "trust without a proxy");
    assert!(
        T::config_error(Some("http://192.0.2.1:3128"), true),
        "trust of a proxy that is not on loopback"
    );
    assert!(
        T::config_error(Some("http://user:secret@127.0.0.1:3128"), false),
        "proxy credentials"
    );
    assert!(T::config_error(Some("socks5://127.0.0.1:1080"), false));
    assert!(!T::config_error(Some("http://127.0.0.1:3128"), true));
    assert!(!T::config_error(Some("http://proxy.example:3128"), false));
}

#[test]
fn ureq_configured_proxy_refuses_loopback_shortcuts() {
    configured_proxy_refuses_loopback_shortcuts::<Ureq>();
}

#[test]
fn hyper_configured_proxy_refuses_loopback_shortcuts() {
    configured_proxy_refuses_loopback_shortcuts::<Hyper>();
}

#[test]
fn ureq_trusted_loopback_proxy_carries_loopback_sessions() {
    // ureq tunnels plain http too.
    trusted_loopback_proxy_carries_loopback_sessions::<Ureq>("CONNECT {http} HTTP/1.1");
}

#[test]
fn hyper_trusted_loopback_proxy_carries_loopback_sessions() {
    // hyper sends plain http to the proxy in absolute form.
    trusted_loopback_proxy_carries_loopback_sessions::<Hyper>("POST http://{http}/login HTTP/1.1");
}

#[test]
fn ureq_unusable_proxy_settings_are_config_errors() {
    unusable_proxy_settings_are_config_errors::<Ureq>();
}

#[test]
fn hyper_unusable_proxy_settings_are_config_errors() {
    unusable_proxy_settings_are_config_errors::<Hyper>();
}

// ---------------------------------------------------------------------------------
// Durations at their limits.

#[test]
fn ureq_accepts_duration_max_everywhere() {
    use broker_session_ureq::{Client, Config};
    let (server, _) = start_server();
    let mut config = Config::default();
    config.request_timeout = Duration::MAX;
    config.connect_timeout = Duration::MAX;
    let c = Client::new(TestMachine::new(&server.http_url()), &config).expect("client");
    c.run(Intent::Get("/echo".into())).expect("exchange");
    c.submit(Intent::Get("/echo".into())).expect("submit");
    // Returns at the first event (the queued operation's completion).
    assert!(c.next_event(Duration::MAX).is_some());
}

#[tokio::test]
async fn hyper_accepts_duration_max_everywhere() {
    use broker_session_hyper::{Client, Config};
    let (server, _) = start_server();
    let mut config = Config::default();
    config.request_timeout = Duration::MAX;
    config.connect_timeout = Duration::MAX;
    let s = Client::new(TestMachine::new(&server.http_url()), &config).expect("session");
    s.run(Intent::Get("/echo".into())).await.expect("exchange");
    s.submit(Intent::Get("/echo".into())).expect("submit");
    tokio::time::timeout(Duration::MAX, s.next_event())
        .await
        .expect("an event");
}

#[test]
fn zero_timeouts_are_config_errors() {
    let mut config = broker_session_ureq::Config::default();
    config.request_timeout = Duration::ZERO;
    assert!(matches!(
        broker_session_ureq::HttpClient::new(&config),
        Err(broker_session_ureq::Error::Config(_))
    ));
    let mut config = broker_session_hyper::Config::default();
    config.connect_timeout = Duration::ZERO;
    assert!(matches!(
        broker_session_hyper::HttpClient::new(&config),
        Err(broker_session_hyper::Error::Config(_))
    ));
}
