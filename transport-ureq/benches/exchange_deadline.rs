//! What an overall deadline per exchange costs with ureq 3, over loopback.
//!
//! Each variant sends the same `GET` to a tiny keep-alive server on 127.0.0.1 (a std
//! thread answering `200 ok` with a fixed body), on one pooled connection. Variants:
//!
//! - `floor`: an agent with no timeout at all;
//! - `floor-localhost`: the floor agent to `localhost` (a system lookup per request);
//! - `per-phase`: connect, send-request, send-body, recv-response and recv-body
//!   timeouts on the agent (what the transport set before it had one deadline);
//! - `global`: ureq's `timeout_global` alone;
//! - `per-call`: ureq's `timeout_per_call` alone;
//! - `per-request`: per-phase on the agent, overridden on every request through
//!   `Agent::configure_request` (a copy of the agent's configuration per request);
//! - `transport`: the transport's `HttpClient::execute_before` (one per-call budget,
//!   its own resolver) with a machine deadline 30 s ahead (the 25 s timeout holds);
//! - `transport-localhost`: the same to `localhost` (a host name: resolved once, then
//!   from the resolver's cache);
//! - `transport-short`: a machine deadline 10 s ahead, so a per-request budget.
//!
//! Wall time per request, minimum and median of interleaved rounds (the minimum is
//! the least disturbed by other load). The box is shared: compare variants within
//! one run only.
//!
//! `cargo bench -j2 -p broker-session-ureq --bench exchange_deadline`

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const REQUESTS: u32 = 1_000;
const ROUNDS: usize = 15;
const T: Duration = Duration::from_secs(25);

fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    // Request head only: the benchmark sends GETs without a body.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if writer.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/x")
}

fn agent(
    configure: impl FnOnce(
        ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    ) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
) -> ureq::Agent {
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None);
    configure(builder).build().new_agent()
}

fn per_phase(
    b: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    b.timeout_connect(Some(T))
        .timeout_send_request(Some(T))
        .timeout_send_body(Some(T))
        .timeout_recv_response(Some(T))
        .timeout_recv_body(Some(T))
}

fn request(url: &str) -> http::Request<Vec<u8>> {
    http::Request::get(url).body(Vec::new()).expect("request")
}

fn run_agent(agent: &ureq::Agent, url: &str, per_request: bool) {
    for _ in 0..REQUESTS {
        let mut req = request(url);
        if per_request {
            req = agent
                .configure_request(req)
                .timeout_recv_response(Some(T))
                .timeout_recv_body(Some(T))
                .build();
        }
        let r = agent.run(req).expect("exchange");
        let body = r.into_body().read_to_vec().expect("body");
        assert_eq!(body, b"ok");
    }
}

/// Through the transport, with a machine deadline `ahead` of now: 30 s leaves the
/// configured 25 s timeout in force, 10 s makes a per-request timeout.
fn run_transport(transport: &broker_session_ureq::HttpClient, url: &str, ahead: Duration) {
    for _ in 0..REQUESTS {
        let deadline = broker_session::deadline_after(Instant::now(), ahead);
        let r = transport
            .execute_before(request(url), deadline)
            .expect("exchange");
        assert_eq!(r.body(), b"ok");
    }
}

fn main() {
    let url = serve();
    let localhost = url.replace("127.0.0.1", "localhost");
    let floor = agent(|b| b);
    let phases = agent(per_phase);
    let global = agent(|b| b.timeout_global(Some(T)));
    let per_call = agent(|b| b.timeout_per_call(Some(T)));
    let mut config = broker_session_ureq::Config::default();
    config.allow_plain_http = true;
    let transport = broker_session_ureq::HttpClient::new(&config).expect("client");

    type Variant<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let variants: Vec<Variant<'_>> = vec![
        ("floor", Box::new(|| run_agent(&floor, &url, false))),
        ("per-phase", Box::new(|| run_agent(&phases, &url, false))),
        (
            "floor-localhost",
            Box::new(|| run_agent(&floor, &localhost, false)),
        ),
        ("global", Box::new(|| run_agent(&global, &url, false))),
        ("per-call", Box::new(|| run_agent(&per_call, &url, false))),
        ("per-request", Box::new(|| run_agent(&phases, &url, true))),
        (
            "transport",
            Box::new(|| run_transport(&transport, &url, Duration::from_secs(30))),
        ),
        (
            "transport-localhost",
            Box::new(|| run_transport(&transport, &localhost, Duration::from_secs(30))),
        ),
        (
            "transport-short",
            Box::new(|| run_transport(&transport, &url, Duration::from_secs(10))),
        ),
    ];
    // Warm up (connections, pools), then interleave rounds.
    for (_, run) in &variants {
        run();
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in variants.iter().enumerate() {
            let start = Instant::now();
            run();
            times[i].push(start.elapsed() / REQUESTS);
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[0], v[v.len() / 2])
    };
    let (floor_min, floor_median) = stats(&mut times[0].clone());
    println!(
        "{:<20} {:>10} {:>8} {:>10} {:>8}",
        "variant", "min", "ratio", "median", "ratio"
    );
    for ((name, _), t) in variants.iter().zip(times.iter_mut()) {
        let (min, median) = stats(t);
        println!(
            "{name:<20} {:>10} {:>7.2}x {:>10} {:>7.2}x",
            format!("{min:.1?}"),
            min.as_secs_f64() / floor_min.as_secs_f64(),
            format!("{median:.1?}"),
            median.as_secs_f64() / floor_median.as_secs_f64(),
        );
    }
}
