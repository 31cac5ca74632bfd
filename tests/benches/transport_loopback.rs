//! Loopback comparison: an application request through a session (`authorize`,
//! exchange, `observe`, locking) against the same request through the bare HTTP
//! client (the IO library call with the transport's limits), on both transports,
//! against the fake IG broker over plain HTTP on 127.0.0.1.
//!
//! `cargo bench -p broker-session-testkit --bench transport_loopback`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::Machine;
use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};

const ROUNDS: usize = 2_000;

fn setup() -> (Server, String, IgConfig) {
    let fake_config = FakeIgConfig::default();
    let fake = Arc::new(Mutex::new(FakeIg::new(fake_config.clone())));
    let server = Server::start_shared(fake, ServerOptions::default()).expect("server");
    let base = format!("{}{}", server.http_url(), fake_config.prefix);
    let mut config = IgConfig::new(
        IgEnvironment::Custom(base.clone()),
        fake_config.api_key.as_str(),
        fake_config.identifier.as_str(),
        fake_config.password.as_str(),
    );
    config.login_flow = LoginFlow::V2;
    (server, base, config)
}

fn accounts(base: &str) -> http::Request<Vec<u8>> {
    http::Request::get(format!("{base}/accounts"))
        .header("Version", "1")
        .body(Vec::new())
        .expect("request")
}

fn report(name: &str, elapsed: Duration) {
    let per = elapsed / u32::try_from(ROUNDS).unwrap_or(u32::MAX);
    println!("{name:<40} {per:>10.1?} per request ({ROUNDS} requests)");
}

fn blocking() {
    use broker_session_ureq::{Client, Config};
    let (_server, base, config) = setup();
    let client = Client::ig(config, &Config::default()).expect("client");
    client.login().expect("login");
    // The bare baseline sends a request stamped once, so the broker accepts it.
    let mut stamped = accounts(&base);
    let _stamp = client
        .with_machine(|m| m.authorize(&mut stamped, broker_session_ureq::now()))
        .expect("authorize");
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let r = client.http().execute(clone(&stamped)).expect("bare");
        assert_eq!(r.status(), 200);
    }
    report("ureq: bare HttpClient::execute", start.elapsed());
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let r = client.send(accounts(&base)).expect("send");
        assert_eq!(r.status(), 200);
    }
    report("ureq: Client::send (session)", start.elapsed());
}

fn nonblocking() {
    use broker_session_hyper::{Client, Config};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (_server, base, config) = setup();
        let session = Client::ig(config, &Config::default()).expect("session");
        session.login().await.expect("login");
        let mut stamped = accounts(&base);
        let _stamp = session
            .with_machine(|m| m.authorize(&mut stamped, broker_session_hyper::now()))
            .expect("authorize");
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let r = session.http().execute(clone(&stamped)).await.expect("bare");
            assert_eq!(r.status(), 200);
        }
        report("hyper: bare HttpClient::execute", start.elapsed());
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let r = session.send(accounts(&base)).await.expect("send");
            assert_eq!(r.status(), 200);
        }
        report("hyper: Session::send (session)", start.elapsed());
    });
}

fn clone(r: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    broker_session_testkit::sim::clone_request(r)
}

fn main() {
    blocking();
    nonblocking();
}
