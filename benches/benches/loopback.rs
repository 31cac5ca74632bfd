//! The loopback floor: a session cycle through each transport against a loopback
//! server, next to bare ureq and bare hyper clients sending byte-identical requests
//! with no session logic, all in one run.
//!
//! - IG v3: login, read session, refresh, logout (4 requests).
//! - IBKR gateway: status, tickle, validate (3 requests; a new machine per cycle, as
//!   `/sso/validate` is paced to once a minute per session; every machine built from
//!   one shared `Arc<IbkrConfig>`, `BENCH_LOOPBACK_IBKR_OWN_CONFIG=1` for one copy each).
//!
//! The server (testkit `server.rs`, its own thread) answers with the fake brokers'
//! answers recorded beforehand, so its work is identical for every client. Figures:
//! wall time and CPU (getrusage of the process, and of the client thread alone) per
//! cycle, median of interleaved rounds, and the ratio to the bare client.
//!
//! Run: `cargo bench -p broker-session-benches --bench loopback`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::Now;
use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession};
use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgSession, LoginFlow};
use broker_session_benches::replay::{Script, clone_response};
use broker_session_benches::sys;
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock, clone_request};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// Cycles per round, rounds per variant (interleaved).
const CYCLES: usize = 300;
const ROUNDS: usize = 7;

/// Answers every request with the recorded answer for its `METHOD /path`.
#[derive(Default)]
struct Canned(HashMap<String, http::Response<Vec<u8>>>);

impl FakeBroker for Canned {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, _now: Now) -> Reply {
        let key = format!("{} {}", request.method(), request.uri().path());
        match self.0.get(&key) {
            Some(r) => Reply::Response(clone_response(r)),
            None => Reply::Response(
                http::Response::builder()
                    .status(404)
                    .body(Vec::new())
                    .unwrap_or_default(),
            ),
        }
    }
}

fn ig_config(base: &str) -> IgConfig {
    let f = FakeIgConfig::default();
    let mut c = IgConfig::new(
        IgEnvironment::Custom(format!("{base}{}", f.prefix)),
        f.api_key.as_str(),
        f.identifier.as_str(),
        f.password.as_str(),
    );
    c.login_flow = LoginFlow::V3;
    c
}

fn ibkr_config(base: &str) -> IbkrConfig {
    let mut c = FakeIbkr::gateway_config();
    c.base_url = format!("{base}/v1/api");
    c
}

fn ig_intents() -> Vec<IgIntent> {
    vec![
        IgIntent::Login,
        IgIntent::ReadSession {
            fetch_tokens: false,
        },
        IgIntent::Refresh,
        IgIntent::Logout,
    ]
}

fn ibkr_intents() -> Vec<IbkrIntent> {
    vec![
        IbkrIntent::CheckStatus,
        IbkrIntent::Tickle,
        IbkrIntent::Validate,
    ]
}

/// The requests as the transports put them on the wire: the machine's request plus
/// the `User-Agent` and `Content-Length` the transports add.
fn wire_requests(script: &Script) -> Vec<http::Request<Vec<u8>>> {
    let ua = broker_session_ureq::Config::default().user_agent;
    script
        .sent
        .iter()
        .map(|r| {
            let mut r = clone_request(r);
            let len = r.body().len();
            let post = *r.method() == http::Method::POST;
            let h = r.headers_mut();
            h.insert(
                http::header::USER_AGENT,
                http::HeaderValue::from_str(&ua).expect("valid user agent"),
            );
            if len > 0 || post {
                h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            }
            r
        })
        .collect()
}

#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    thread_cpu: Duration,
}

fn measure(mut f: impl FnMut()) -> Sample {
    let (w, c, t) = (Instant::now(), sys::cpu_time(), sys::thread_cpu_time());
    for _ in 0..CYCLES {
        f();
    }
    let n = CYCLES as u32;
    Sample {
        wall: w.elapsed() / n,
        cpu: (sys::cpu_time() - c) / n,
        thread_cpu: (sys::thread_cpu_time() - t) / n,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    samples: Vec<Sample>,
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}: per cycle, median of {ROUNDS} rounds × {CYCLES} cycles");
    println!(
        "  {:<34} {:>10} {:>8} {:>12} {:>8} {:>12} {:>8}",
        "client", "wall", "ratio", "process CPU", "ratio", "client CPU", "ratio"
    );
    let med = |r: &Row| {
        (
            median(r.samples.iter().map(|s| s.wall).collect()),
            median(r.samples.iter().map(|s| s.cpu).collect()),
            median(r.samples.iter().map(|s| s.thread_cpu).collect()),
        )
    };
    // Ratios are against the bare client of the same library: rows come in pairs
    // (bare, then the transport's HttpClient, then the session).
    let mut floor = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for r in rows {
        let m = med(r);
        if r.name.contains("bare") {
            floor = m;
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
        println!(
            "  {:<34} {:>10.1?} {:>7.3}× {:>12.1?} {:>7.3}× {:>12.1?} {:>7.3}×",
            r.name,
            m.0,
            ratio(m.0, floor.0),
            m.1,
            ratio(m.1, floor.1),
            m.2,
            ratio(m.2, floor.2)
        );
    }
}

fn main() {
    println!("machine: {}", sys::machine_line());
    let canned = Arc::new(Mutex::new(Canned::default()));
    let server = Server::start_shared(Arc::clone(&canned), ServerOptions::default())
        .expect("loopback server");
    let base = server.http_url();

    // Record both cycles in memory against the real fakes, with the loopback URLs.
    let clock = VirtualClock::new();
    let mut ig_fake = FakeIg::default();
    let mut m = IgSession::new(
        ig_config(&base),
        broker_session::RngSeed::from_u64(5),
        clock.now(),
    )
    .expect("valid");
    let ig_script = Script::record(&mut m, &mut ig_fake, clock.now(), ig_intents());
    let mut ibkr_fake = FakeIbkr::gateway();
    ibkr_fake.authenticated = true;
    let mut m = IbkrSession::new(
        ibkr_config(&base),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .expect("valid");
    let ibkr_script = Script::record(&mut m, &mut ibkr_fake, clock.now(), ibkr_intents());
    {
        let mut c = canned.lock().expect("not poisoned");
        for script in [&ig_script, &ibkr_script] {
            for (req, resp) in script.requests.iter().zip(script.recorded_responses()) {
                c.0.insert(req.clone(), clone_response(resp));
            }
        }
    }
    println!("IG cycle:   {}", ig_script.requests.join(", "));
    println!("IBKR cycle: {}", ibkr_script.requests.join(", "));
    let ig_wire = wire_requests(&ig_script);
    let ibkr_wire = wire_requests(&ibkr_script);

    let mut ig_rows = vec![
        Row {
            name: "ureq bare Agent::run",
            samples: vec![],
        },
        Row {
            name: "ureq transport HttpClient::execute",
            samples: vec![],
        },
        Row {
            name: "ureq transport Client (session)",
            samples: vec![],
        },
        Row {
            name: "hyper bare legacy Client",
            samples: vec![],
        },
        Row {
            name: "hyper transport HttpClient::execute",
            samples: vec![],
        },
        Row {
            name: "hyper transport Session",
            samples: vec![],
        },
    ];
    let mut ibkr_rows: Vec<Row> = ig_rows
        .iter()
        .map(|r| Row {
            name: r.name,
            samples: vec![],
        })
        .collect();

    // Blocking side.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .accept_encoding("")
        .build()
        .new_agent();
    let ureq_bare = |wire: &[http::Request<Vec<u8>>]| {
        for r in wire {
            let resp = agent.run(clone_request(r)).expect("bare ureq");
            let body = resp.into_body().read_to_vec().expect("body");
            std::hint::black_box(body);
        }
    };
    let ucfg = broker_session_ureq::Config::default();
    let uhttp = broker_session_ureq::HttpClient::new(&ucfg).expect("client");
    let ureq_exec = |wire: &[http::Request<Vec<u8>>]| {
        for r in wire {
            let resp = uhttp.execute(clone_request(r)).expect("execute");
            assert!(resp.status().is_success());
        }
    };
    let ig_client = broker_session_ureq::Client::ig(ig_config(&base), &ucfg).expect("client");
    let ureq_ig_session = || {
        ig_client.login().expect("login");
        ig_client.read_session(false).expect("read");
        ig_client.refresh().expect("refresh");
        ig_client.logout().expect("logout");
    };
    // The IBKR cycle's machines are built from one `Arc<IbkrConfig>` made once, as a
    // program making many sessions from one template does: they share its request
    // parts (parsed base URL, endpoint URIs) instead of each parsing its own.
    // `BENCH_LOOPBACK_IBKR_OWN_CONFIG=1` gives each machine its own copy instead (a
    // separate user's configuration per session).
    let ibkr_own_config = std::env::var_os("BENCH_LOOPBACK_IBKR_OWN_CONFIG").is_some();
    let ibkr_shared = Arc::new(ibkr_config(&base));
    let ibkr_cfg = || {
        if ibkr_own_config {
            Arc::new(ibkr_config(&base))
        } else {
            Arc::clone(&ibkr_shared)
        }
    };
    let ureq_ibkr_session = || {
        let m = IbkrSession::new(
            ibkr_cfg(),
            broker_session::RngSeed::from_u64(1),
            broker_session_ureq::now(),
        )
        .expect("valid");
        let c = broker_session_ureq::Client::with_http(m, uhttp.clone());
        c.status().expect("status");
        c.tickle().expect("tickle");
        c.validate().expect("validate");
    };

    // Async side: one current-thread runtime on this thread, so the client thread's CPU
    // is the client's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hyper_bare =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
    let hcfg = broker_session_hyper::Config::default();
    let (hhttp, ig_session) = rt.block_on(async {
        let http = broker_session_hyper::HttpClient::new(&hcfg).expect("client");
        let m = IgSession::new(
            ig_config(&base),
            broker_session::RngSeed::from_u64(1),
            broker_session_hyper::now(),
        )
        .expect("valid");
        let s = broker_session_hyper::Client::with_http(m, http.clone()).expect("session");
        (http, s)
    });
    let hyper_bare_run = |wire: &[http::Request<Vec<u8>>]| {
        rt.block_on(async {
            for r in wire {
                let (parts, body) = clone_request(r).into_parts();
                let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
                let resp = hyper_bare.request(req).await.expect("bare hyper");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                std::hint::black_box(body);
            }
        });
    };
    let hyper_exec = |wire: &[http::Request<Vec<u8>>]| {
        rt.block_on(async {
            for r in wire {
                let resp = hhttp.execute(clone_request(r)).await.expect("execute");
                assert!(resp.status().is_success());
            }
        });
    };
    let hyper_ig_session = || {
        rt.block_on(async {
            ig_session.login().await.expect("login");
            ig_session.read_session(false).await.expect("read");
            ig_session.refresh().await.expect("refresh");
            ig_session.logout().await.expect("logout");
        });
    };
    let hyper_ibkr_session = || {
        rt.block_on(async {
            let m = IbkrSession::new(
                ibkr_cfg(),
                broker_session::RngSeed::from_u64(1),
                broker_session_hyper::now(),
            )
            .expect("valid");
            let s = broker_session_hyper::Client::with_http(m, hhttp.clone()).expect("session");
            s.status().await.expect("status");
            s.tickle().await.expect("tickle");
            s.validate().await.expect("validate");
        });
    };

    // For a profiler: `BENCH_LOOPBACK_ONLY=<client> BENCH_LOOPBACK_CYCLES=n` runs one
    // client's cycle n times and nothing else (clients: ureq-bare, ureq-exec,
    // ureq-session, hyper-bare, hyper-exec, hyper-session: IG cycles; ureq-ibkr-bare,
    // ureq-ibkr, hyper-ibkr-bare, hyper-ibkr: IBKR cycles, bare and through a session).
    if let Ok(only) = std::env::var("BENCH_LOOPBACK_ONLY") {
        let cycles: usize = std::env::var("BENCH_LOOPBACK_CYCLES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        for _ in 0..cycles {
            match only.as_str() {
                "ureq-bare" => ureq_bare(&ig_wire),
                "ureq-exec" => ureq_exec(&ig_wire),
                "ureq-session" => ureq_ig_session(),
                "hyper-bare" => hyper_bare_run(&ig_wire),
                "hyper-exec" => hyper_exec(&ig_wire),
                "hyper-session" => hyper_ig_session(),
                "ureq-ibkr-bare" => ureq_bare(&ibkr_wire),
                "ureq-ibkr" => ureq_ibkr_session(),
                "hyper-ibkr-bare" => hyper_bare_run(&ibkr_wire),
                "hyper-ibkr" => hyper_ibkr_session(),
                other => panic!("BENCH_LOOPBACK_ONLY: no client {other:?}"),
            }
        }
        return;
    }

    // Warm up every path once (connections, pools, lazy statics), then interleave.
    ureq_bare(&ig_wire);
    ureq_exec(&ig_wire);
    ureq_ig_session();
    ureq_ibkr_session();
    hyper_bare_run(&ig_wire);
    hyper_exec(&ig_wire);
    hyper_ig_session();
    hyper_ibkr_session();
    for _ in 0..ROUNDS {
        ig_rows[0].samples.push(measure(|| ureq_bare(&ig_wire)));
        ig_rows[1].samples.push(measure(|| ureq_exec(&ig_wire)));
        ig_rows[2].samples.push(measure(ureq_ig_session));
        ig_rows[3]
            .samples
            .push(measure(|| hyper_bare_run(&ig_wire)));
        ig_rows[4].samples.push(measure(|| hyper_exec(&ig_wire)));
        ig_rows[5].samples.push(measure(hyper_ig_session));
        ibkr_rows[0].samples.push(measure(|| ureq_bare(&ibkr_wire)));
        ibkr_rows[1].samples.push(measure(|| ureq_exec(&ibkr_wire)));
        ibkr_rows[2].samples.push(measure(ureq_ibkr_session));
        ibkr_rows[3]
            .samples
            .push(measure(|| hyper_bare_run(&ibkr_wire)));
        ibkr_rows[4]
            .samples
            .push(measure(|| hyper_exec(&ibkr_wire)));
        ibkr_rows[5].samples.push(measure(hyper_ibkr_session));
    }
    print_table(
        "IG v3 login, read, refresh, logout over loopback HTTP",
        &ig_rows,
    );
    print_table(
        "IBKR gateway status, tickle, validate over loopback HTTP",
        &ibkr_rows,
    );
    drop(server);
}
