//! Scale of the blocking transport: N IG v3 sessions sharing one `HttpClient`, their
//! timers run either by one `keep_alive` thread per session or by one `Scheduler`,
//! against the fake IG behind the loopback server.
//!
//! `BENCH_BLOCKING_N` sessions (default 1,000), IG tokens of `BENCH_BLOCKING_TTL`
//! seconds (default 10, so a refresh every 5 s), a window of `BENCH_BLOCKING_SECS`
//! seconds (default 12) after every session is up; `BENCH_BLOCKING_MODE` is
//! `scheduler` (default), `keep-alive` or `both` (one after the other, each in a
//! fresh set of sessions); `BENCH_BLOCKING_CAP` sets
//! `Config::max_connections_per_host` (default 256).
//!
//! Figures: threads of the process, resident memory growth per session, CPU of the
//! process over the window, refreshes done in it.
//!
//! Run: `cargo bench -p broker-session-benches --bench scale_blocking`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::ig::{IgConfig, IgEnvironment, IgSession, LoginFlow};
use broker_session_benches::sys;
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_ureq::{Client, Config, HttpClient, Scheduler};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

fn run(mode: &str, n: usize, ttl: Duration, secs: u64) {
    let fake = Arc::new(Mutex::new(FakeIg::new(FakeIgConfig {
        access_ttl: ttl,
        ..FakeIgConfig::default()
    })));
    let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).expect("server");
    let mut config = Config::default();
    let cap = env_u64("BENCH_BLOCKING_CAP", 256);
    config.max_connections_per_host = usize::try_from(cap).unwrap_or(256);
    let http = HttpClient::new(&config).expect("http");
    let f = fake.lock().expect("fake").config.clone();
    let (threads0, rss0) = (threads(), sys::status_kib("VmRSS"));
    let started = Instant::now();
    let clients: Vec<Client<IgSession>> = (0..n)
        .map(|_| {
            let mut config = IgConfig::new(
                IgEnvironment::Custom(format!("{}{}", server.http_url(), f.prefix)),
                f.api_key.as_str(),
                f.identifier.as_str(),
                f.password.as_str(),
            );
            config.login_flow = LoginFlow::V3;
            let c = Client::open(config, &http).expect("client");
            c.login().expect("login");
            c
        })
        .collect();
    let scheduler = (mode == "scheduler").then(|| Scheduler::spawn().expect("scheduler"));
    let mut keepers = Vec::new();
    let mut registrations = Vec::new();
    for c in &clients {
        match &scheduler {
            Some(s) => registrations.push(s.add(c)),
            None => keepers.push(c.keep_alive().expect("keep-alive")),
        }
    }
    println!("{mode}: {n} sessions up in {:.1?}", started.elapsed());
    let refreshes0 = fake.lock().expect("fake").stats.refreshes;
    let (cpu0, w0) = (sys::cpu_time(), Instant::now());
    let mut rss_max = 0;
    while w0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        // Nobody reads the events here, so the sessions keep none.
        rss_max = rss_max.max(sys::status_kib("VmRSS"));
    }
    let (wall, cpu) = (w0.elapsed(), sys::cpu_time().saturating_sub(cpu0));
    let refreshes = fake.lock().expect("fake").stats.refreshes - refreshes0;
    let rss = sys::status_kib("VmRSS");
    println!(
        "{mode}: threads {threads0} before the sessions, {} with them running (+{}); \
         RSS +{:.1} KiB per session now, +{:.1} KiB at the highest sample ({} MiB in all)",
        threads(),
        threads() - threads0,
        rss.saturating_sub(rss0) as f64 / n as f64,
        rss_max.saturating_sub(rss0) as f64 / n as f64,
        rss / 1024
    );
    println!(
        "{mode}: window {wall:.1?}: {refreshes} refreshes ({:.0}/s), CPU {:.0}% of one core \
         (process, loopback server included)",
        refreshes as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    drop(registrations);
    drop(scheduler);
    drop(keepers);
}

fn main() {
    println!("{}", sys::machine_line());
    let n = usize::try_from(env_u64("BENCH_BLOCKING_N", 1_000)).unwrap_or(1_000);
    let ttl = Duration::from_secs(env_u64("BENCH_BLOCKING_TTL", 10));
    let secs = env_u64("BENCH_BLOCKING_SECS", 12);
    let mode = std::env::var("BENCH_BLOCKING_MODE").unwrap_or_else(|_| "scheduler".into());
    let modes: &[&str] = match mode.as_str() {
        "both" => &["keep-alive", "scheduler"],
        "keep-alive" => &["keep-alive"],
        _ => &["scheduler"],
    };
    for m in modes {
        run(m, n, ttl, secs);
    }
}
