//! The per-host connection cap of both transports' pools, over real loopback
//! sockets: a plain std TCP server counts the connections open at once.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::{FailureKind, deadline_after};

/// A keep-alive HTTP/1.1 server that answers every request after `delay` (`/slow`
/// after a long one), and records the connections open at once and the paths seen.
struct Counting {
    url: String,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

fn counting_server(delay: Duration) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let open = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let (o, m, p) = (
        Arc::clone(&open),
        Arc::clone(&most_open),
        Arc::clone(&paths),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(n, Ordering::SeqCst);
            let (o, p) = (Arc::clone(&o), Arc::clone(&p));
            std::thread::spawn(move || {
                serve(stream, delay, &p);
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        url,
        open,
        most_open,
        paths,
    }
}

/// Answers requests (no bodies) on one connection until the client closes it.
fn serve(stream: TcpStream, delay: Duration, paths: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        paths.lock().expect("paths").push(path.clone());
        std::thread::sleep(if path == "/slow" {
            Duration::from_millis(1500)
        } else {
            delay
        });
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

fn get(url: &str, path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(format!("{url}{path}"))
        .body(Vec::new())
        .expect("request")
}

const REQUESTS: usize = 16;

mod blocking {
    use super::*;
    use broker_session_ureq::{Config, HttpClient};

    fn http(cap: usize) -> HttpClient {
        let mut config = Config::default();
        config.max_connections_per_host = cap;
        HttpClient::new(&config).expect("client")
    }

    #[test]
    fn sixteen_requests_share_two_connections() {
        let server = counting_server(Duration::from_millis(20));
        let http = http(2);
        let threads: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let (http, url) = (http.clone(), server.url.clone());
                std::thread::spawn(move || http.execute(get(&url, "/x")))
            })
            .collect();
        for t in threads {
            let r = t.join().expect("thread").expect("exchange");
            assert_eq!(r.status(), 200);
        }
        assert_eq!(server.paths.lock().expect("paths").len(), REQUESTS);
        let most = server.most_open.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} connections open at once");
        assert!(server.open.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_request_whose_deadline_passes_in_line_is_never_sent() {
        let server = counting_server(Duration::ZERO);
        let http = http(1);
        let slow = {
            let (http, url) = (http.clone(), server.url.clone());
            std::thread::spawn(move || http.execute(get(&url, "/slow")))
        };
        while server.paths.lock().expect("paths").is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = deadline_after(Instant::now(), Duration::from_millis(200));
        let failure = http
            .execute_before(get(&server.url, "/queued"), deadline)
            .expect_err("no slot came free");
        assert_eq!(failure.kind, FailureKind::Connect, "{failure}");
        assert!(failure.detail.contains("no connection slot"), "{failure}");
        slow.join().expect("thread").expect("the slow exchange");
        assert_eq!(*server.paths.lock().expect("paths"), ["/slow"]);
    }
}

mod nonblocking {
    use super::*;
    use broker_session_hyper::{Config, HttpClient};

    fn http(cap: usize) -> HttpClient {
        let mut config = Config::default();
        config.max_connections_per_host = cap;
        HttpClient::new(&config).expect("client")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_requests_share_two_connections() {
        let server = counting_server(Duration::from_millis(20));
        let http = http(2);
        let tasks: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let (http, url) = (http.clone(), server.url.clone());
                tokio::spawn(async move { http.execute(get(&url, "/x")).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("task").expect("exchange");
            assert_eq!(r.status(), 200);
        }
        assert_eq!(server.paths.lock().expect("paths").len(), REQUESTS);
        let most = server.most_open.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} connections open at once");
    }

    /// A burst far larger than the cap, answered at once: each exchange ends while
    /// the next in line starts, the moment hyper's pool has not yet got the
    /// connection back. Still no more sockets than the cap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_never_opens_more_sockets_than_the_cap() {
        let server = counting_server(Duration::ZERO);
        let http = http(3);
        let tasks: Vec<_> = (0..400)
            .map(|_| {
                let (http, url) = (http.clone(), server.url.clone());
                tokio::spawn(async move { http.execute(get(&url, "/x")).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("task").expect("exchange");
            assert_eq!(r.status(), 200);
        }
        let most = server.most_open.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} connections open at once");
    }

    /// After such a burst nothing of it stays behind. An exchange that found no idle
    /// connection starts a connect, which waits for a socket (all are open); when the
    /// pool then serves the exchange, hyper's client moves that connect to a task of
    /// its own. Without a bound, those tasks waited for a socket as long as the pool
    /// kept its connections (90 s idle), one per such race: thousands of tasks and
    /// kilobytes each in a fleet's refresh waves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_leaves_no_connect_waiting_for_a_socket() {
        let server = counting_server(Duration::ZERO);
        let http = http(8);
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for _ in 0..3 {
            let tasks: Vec<_> = (0..2000)
                .map(|_| {
                    let (http, url) = (http.clone(), server.url.clone());
                    tokio::spawn(async move { http.execute(get(&url, "/x")).await })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.expect("task").expect("exchange").status(), 200);
            }
        }
        // What may stay: the pool's connections (one task each) and its idle reaper.
        let allowed = before + 8 + 1;
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut alive = metrics.num_alive_tasks();
        while alive > allowed && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
            alive = metrics.num_alive_tasks();
        }
        assert!(
            alive <= allowed,
            "{alive} tasks alive after the burst (at most {allowed} expected)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_whose_deadline_passes_in_line_is_never_sent() {
        let server = counting_server(Duration::ZERO);
        let http = http(1);
        let slow = {
            let (http, url) = (http.clone(), server.url.clone());
            tokio::spawn(async move { http.execute(get(&url, "/slow")).await })
        };
        while server.paths.lock().expect("paths").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let deadline = deadline_after(Instant::now(), Duration::from_millis(200));
        let failure = http
            .execute_before(get(&server.url, "/queued"), deadline)
            .await
            .expect_err("no slot came free");
        assert_eq!(failure.kind, FailureKind::Connect, "{failure}");
        assert!(failure.detail.contains("no connection slot"), "{failure}");
        slow.await.expect("task").expect("the slow exchange");
        assert_eq!(*server.paths.lock().expect("paths"), ["/slow"]);
    }
}
