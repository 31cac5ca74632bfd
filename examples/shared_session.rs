//! One IG login shared by a small fleet, on Redis: four "processes" (threads here,
//! each with its own HTTP client, Redis connections and session, exactly as separate
//! processes would have) call IG through one session. One owns it (logs in,
//! refreshes, publishes each credential generation, sealed); the others adopt every
//! generation and never log in. Then the owner leaves, and another takes over by
//! resuming, without a login.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example shared_session
//! ```
//!
//! It runs against a fake IG served in-process over HTTPS on 127.0.0.1, whose access
//! tokens live 2 s (60 s at IG) so that refreshes show within seconds, and prints who
//! owns, each generation, and what the broker saw. Never a secret.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use broker_session_examples::embedded::EmbeddedIg;
use broker_session_redis::{FleetEvent, Redis, Sealing, SealingKey, SharedConfig, SharedIgSession};
use broker_session_ureq::{Config, HttpClient, IgConfig, IgEnvironment, LoginFlow, Tls, http};

type Res<T = ()> = Result<T, Box<dyn Error>>;

const PROCESSES: usize = 4;

fn main() -> ExitCode {
    let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!(
            "set REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379/ (a throwaway redis-server will do)"
        );
        return ExitCode::from(2);
    };
    match run(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shared_session failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(url: &str) -> Res {
    let ig = EmbeddedIg::start(Duration::from_secs(2))?;
    let redis = Redis::open(url)?;
    // Every process needs the same key; load yours from a secret store.
    let key = SealingKey::generate()?;
    let namespace = format!("example-{}", std::process::id());
    println!(
        "fake IG {}; Redis {}; namespace {namespace}",
        ig.base_url,
        redis.url()
    );

    let mut fleet = Vec::new();
    for n in 0..PROCESSES {
        let mut config = SharedConfig::new(namespace.as_str(), Sealing::Sealed(key.clone()));
        config.process = format!("process-{n}");
        config.lease_ttl = Duration::from_secs(2);
        config.poll_interval = Duration::from_secs(1);
        let mut transport = Config::default();
        transport.tls = Tls::Pem(ig.trust_pem().as_bytes().to_vec());
        let session = SharedIgSession::start(
            ig_config(&ig),
            &HttpClient::new(&transport)?,
            &redis,
            config,
        )?;
        println!(
            "[p{n}] joined as {} at generation {}",
            if session.is_owner() {
                "owner"
            } else {
                "follower"
            },
            session.generation()
        );
        fleet.push(Some(Arc::new(session)));
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // One flag per process: a process that leaves stops calling first.
    let stops: Vec<_> = (0..PROCESSES)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let callers: Vec<_> = fleet
        .iter()
        .flatten()
        .zip(&stops)
        .map(|(s, stop)| {
            let (s, calls, failed, stop) = (
                Arc::clone(s),
                Arc::clone(&calls),
                Arc::clone(&failed),
                Arc::clone(stop),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let request = http::Request::get("/accounts")
                        .header("Version", "1")
                        .body(Vec::new())
                        .expect("a valid request");
                    match s.send(request) {
                        Ok(r) if r.status().is_success() => calls.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();

    watch(&fleet, Duration::from_secs(5));
    let owner = fleet
        .iter()
        .position(|s| s.as_ref().is_some_and(|s| s.is_owner()))
        .ok_or("nobody owns the session")?;
    println!("-- p{owner} leaves the fleet (its lease is released; nothing is logged out)");
    stops[owner].store(true, Ordering::Relaxed);
    let started = Instant::now();
    if let Some(leaving) = fleet[owner].take() {
        leaving.shutdown();
    }
    while !fleet.iter().flatten().any(|s| s.is_owner()) {
        thread::sleep(Duration::from_millis(10));
    }
    println!("-- a new owner after {:?}", started.elapsed());
    watch(&fleet, Duration::from_secs(3));

    for stop in &stops {
        stop.store(true, Ordering::Relaxed);
    }
    for c in callers {
        let _ = c.join();
    }
    let (logins, refreshes) = ig.counts();
    println!();
    println!(
        "{} application calls from {PROCESSES} processes ({} failed)",
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "fake IG saw {logins} login(s) and {refreshes} refreshes; {PROCESSES} independent sessions \
         would have logged in {PROCESSES} times and refreshed about {PROCESSES} times as often"
    );
    Ok(())
}

/// Prints every process's fleet events for `d`.
fn watch(fleet: &[Option<Arc<SharedIgSession>>], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for (n, s) in fleet.iter().enumerate() {
            let Some(s) = s else { continue };
            for event in s.drain_events() {
                match event {
                    // The session's own events (state changes …): left out here.
                    FleetEvent::Session(_) => {}
                    e => println!("[p{n}] {e}"),
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn ig_config(ig: &EmbeddedIg) -> IgConfig {
    let mut config = IgConfig::new(
        IgEnvironment::Custom(ig.base_url.clone()),
        ig.api_key.as_str(),
        ig.identifier.as_str(),
        ig.password.as_str(),
    );
    config.login_flow = LoginFlow::V3;
    config
}
