//! One IBKR OAuth 1.0a login shared by a small fleet, on Redis: four "processes"
//! (threads here, each with its own HTTP client, Redis connections and session, as
//! separate processes would have) call IBKR through one session. One owns it (asks
//! for the live session token, initialises the brokerage session, tickles, publishes
//! the token, sealed); the others sign their calls with the published token and never
//! ask for one. Then the owner leaves, and another takes over with the stored token:
//! a status check, no new token, no competing take-over of the brokerage session.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example shared_ibkr_session
//! ```
//!
//! It runs against a fake api.ibkr.com served in-process over HTTPS on 127.0.0.1
//! (a real OAuth 1.0a server side, with throwaway test keys), and prints who owns,
//! each generation, and what the broker saw. Never a secret.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use broker_session_examples::embedded::EmbeddedIbkrOAuth;
use broker_session_redis::{
    FleetEvent, Redis, Sealing, SealingKey, SharedConfig, SharedIbkrSession,
};
use broker_session_ureq::{Config, HttpClient, IbkrConfig, Tls, http};

type Res<T = ()> = Result<T, Box<dyn Error>>;
/// The fleet's processes; `None` once one has left.
type Fleet = [Option<Arc<SharedIbkrSession>>];

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
            eprintln!("shared_ibkr_session failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(url: &str) -> Res {
    let ibkr = EmbeddedIbkrOAuth::start()?;
    let redis = Redis::open(url)?;
    // Every process needs the same key; load yours from a secret store.
    let key = SealingKey::generate()?;
    let namespace = format!("example-ibkr-{}", std::process::id());
    println!(
        "fake IBKR {}; Redis {}; namespace {namespace}",
        ibkr.base_url,
        redis.url()
    );
    let mut fleet = Vec::new();
    for n in 0..PROCESSES {
        let mut config = SharedConfig::new(namespace.as_str(), Sealing::Sealed(key.clone()));
        config.process = format!("process-{n}");
        config.lease_ttl = Duration::from_secs(2);
        config.poll_interval = Duration::from_secs(1);
        let mut transport = Config::default();
        transport.tls = Tls::Pem(ibkr.trust_pem().as_bytes().to_vec());
        let mut ibkr_config = IbkrConfig::oauth(ibkr.oauth.clone());
        ibkr_config.base_url = ibkr.base_url.clone();
        let session =
            SharedIbkrSession::start(ibkr_config, &HttpClient::new(&transport)?, &redis, config)?;
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
    let call_all = |fleet: &Fleet| {
        for s in fleet.iter().flatten() {
            let request = http::Request::get("/iserver/accounts")
                .body(Vec::new())
                .expect("a valid request");
            match s.send(request) {
                Ok(r) if r.status().is_success() => calls.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    };
    watch(&fleet, Duration::from_secs(2), &call_all);
    let owner = fleet
        .iter()
        .position(|s| s.as_ref().is_some_and(|s| s.is_owner()))
        .ok_or("nobody owns the session")?;
    println!("-- p{owner} leaves the fleet (its lease is released; nothing is logged out)");
    let started = Instant::now();
    if let Some(leaving) = fleet[owner].take() {
        leaving.shutdown();
    }
    while !fleet.iter().flatten().any(|s| s.is_owner()) {
        thread::sleep(Duration::from_millis(10));
    }
    println!("-- a new owner after {:?}", started.elapsed());
    watch(&fleet, Duration::from_secs(2), &call_all);

    let (tokens, bad_signatures) = ibkr.token_counts();
    println!();
    println!(
        "{} application calls from {PROCESSES} processes ({} failed)",
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "fake IBKR issued {tokens} live session token(s) and refused {bad_signatures} \
         signature(s); {PROCESSES} independent sessions would each have asked for one"
    );
    Ok(())
}

/// Calls from every process and prints their fleet events for `d`.
fn watch(fleet: &Fleet, d: Duration, call_all: &dyn Fn(&Fleet)) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        call_all(fleet);
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
