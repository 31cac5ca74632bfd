//! One IG login shared by a fleet: what a follower's application call costs, how
//! long a fleet is without an owner after the owner dies, and how many session
//! requests the broker gets from a fleet against as many independent sessions.
//!
//! - `authorize`: a follower holding adopted credentials against a plain session
//!   (both v3), the per-request path (divan). No IO.
//! - failover (needs `BROKER_SESSION_REDIS_URL`): an owner process (this binary again,
//!   `FLEET_BENCH_OWNER` set) is SIGKILLed; the time until a follower in this process
//!   owns, and until its first call after that succeeds; with a blocking follower
//!   (`SharedIgSession`) and an async one (`AsyncSharedIgSession` on a tokio runtime).
//! - broker load (needs `BROKER_SESSION_REDIS_URL`): 16 shared sessions against 16
//!   independent ones, each calling 10 times a second, for `BENCH_FLEET_SECS` (default
//!   6) with 2 s tokens; session requests (logins, refreshes, session reads) counted by
//!   the fake IG and extrapolated to IG's timing (60 s tokens, a refresh every 50 s);
//!   the shared fleet once blocking and once async.
//! - idle cost (needs `BROKER_SESSION_REDIS_URL`): CPU of the sharing threads of 4
//!   sessions making no calls for 10 s.
//! - IBKR broker load (needs `BROKER_SESSION_REDIS_URL`): 16 `SharedIbkrSession`s
//!   against 16 independent IBKR sessions (OAuth 1.0a, then the gateway), each
//!   calling 10 times a second for `BENCH_FLEET_SECS`, with the keep-alive compressed
//!   to a tickle a second (IBKR's pacing floor; 60 s by default); tickles, live
//!   session token requests and `ssodh/init`s counted by the fake IBKR and
//!   extrapolated to the default interval. `BENCH_FLEET_ONLY=ibkr` runs these alone.
//!
//! Run: `cargo bench -p broker-session-benches --bench fleet`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use broker_session::ibkr::IbkrSession;
use broker_session::ig::{IgIntent, IgSession, LoginFlow};
use broker_session::{Machine, Now, RngSeed};
use broker_session_benches::sys;
use broker_session_redis::{
    AsyncSharedIgSession, Redis, Sealing, SealingKey, SharedConfig, SharedIbkrSession,
    SharedIgSession,
};
use broker_session_testkit::ibkr::{BASE_PATH, FakeIbkr};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig, accounts_request, session_config};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_testkit::sim::{Sim, VirtualClock};
use broker_session_ureq::{
    Client, Config, HttpClient, IbkrConfig, IgConfig, IgEnvironment, Tls, http,
};
use divan::Bencher;

const URL_VAR: &str = "BROKER_SESSION_REDIS_URL";
const OWNER_VAR: &str = "FLEET_BENCH_OWNER";
const KEY: [u8; 32] = [0x33; 32];

/// A logged-in plain session and a follower holding its credentials, at a time the
/// token is valid, with the request they stamp.
fn sessions() -> (IgSession, IgSession, http::Request<Vec<u8>>, Now) {
    let fake = FakeIg::default();
    let config = session_config(&fake, LoginFlow::V3);
    let clock = VirtualClock::new();
    let request = accounts_request(&fake);
    let mut sim = Sim::with_clock(
        IgSession::new(config.clone(), RngSeed::from_u64(1), clock.now()).expect("config"),
        fake,
        clock,
    );
    sim.run(IgIntent::Login).expect("login");
    let now = sim.now();
    let snapshot = sim.machine.snapshot().expect("logged in");
    let mut follower = IgSession::follower(config, RngSeed::from_u64(2), now).expect("config");
    follower
        .submit(
            IgIntent::Adopt {
                generation: 1,
                snapshot,
            },
            now,
        )
        .expect("adopt");
    while let broker_session::Output::Event(_) = follower.poll_output(now) {}
    (sim.machine, follower, request, now)
}

#[divan::bench]
fn authorize_plain_session(b: Bencher<'_, '_>) {
    let (mut plain, _, mut request, now) = sessions();
    b.bench_local(|| plain.authorize(&mut request, now).expect("stamped"));
}

#[divan::bench]
fn authorize_follower(b: Bencher<'_, '_>) {
    let (_, mut follower, mut request, now) = sessions();
    b.bench_local(|| follower.authorize(&mut request, now).expect("stamped"));
}

fn ig_config(base_url: &str) -> IgConfig {
    let f = FakeIgConfig::default();
    let mut ig = IgConfig::new(
        IgEnvironment::Custom(base_url.to_owned()),
        f.api_key,
        f.identifier,
        f.password,
    );
    ig.login_flow = LoginFlow::V3;
    ig
}

fn transport(pem: &[u8]) -> Config {
    let mut t = Config::default();
    t.tls = Tls::Pem(pem.to_vec());
    t
}

fn shared_config(namespace: &str, ttl: Duration) -> SharedConfig {
    let mut c = SharedConfig::new(namespace, Sealing::Sealed(SealingKey::from_bytes(KEY)));
    c.lease_ttl = ttl;
    c.poll_interval = Duration::from_millis(500);
    c
}

fn accounts() -> http::Request<Vec<u8>> {
    http::Request::get("/accounts")
        .header("Version", "1")
        .body(Vec::new())
        .expect("a valid request")
}

/// The owner process of the failover measurement: joins, says so, waits to be killed.
fn owner_process() {
    let env = |n: &str| std::env::var(n).expect("set by the parent");
    let pem = std::fs::read(env("FLEET_BENCH_CA")).expect("CA file");
    let redis = Redis::open(env(URL_VAR)).expect("Redis URL");
    let ttl = Duration::from_millis(env("FLEET_BENCH_TTL_MS").parse().expect("ms"));
    let shared = SharedIgSession::start(
        ig_config(&env("FLEET_BENCH_BASE")),
        &HttpClient::new(&transport(&pem)).expect("http"),
        &redis,
        shared_config(&env(OWNER_VAR), ttl),
    )
    .expect("joins");
    println!("READY {}", u8::from(shared.is_owner()));
    let _ = std::io::stdout().flush();
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

fn fake_ig(access_ttl: Duration) -> (Server, Arc<Mutex<FakeIg>>, String) {
    let fake = Arc::new(Mutex::new(FakeIg::new(FakeIgConfig {
        access_ttl,
        ..FakeIgConfig::default()
    })));
    let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).expect("server");
    let base = format!("{}/gateway/deal", server.https_url());
    (server, fake, base)
}

fn namespace(what: &str, n: usize) -> String {
    format!("bench-{what}-{}-{n}", std::process::id())
}

/// A follower in this process, blocking or async, seen from a plain thread.
trait Follower {
    fn call(&self) -> bool;
    fn is_owner(&self) -> bool;
    fn leave(&self);
}

impl Follower for SharedIgSession {
    fn call(&self) -> bool {
        self.send(accounts()).is_ok_and(|r| r.status() == 200)
    }
    fn is_owner(&self) -> bool {
        Self::is_owner(self)
    }
    fn leave(&self) {
        self.shutdown();
    }
}

/// An async shared session, driven from a plain thread through its runtime's handle.
struct OnRuntime(AsyncSharedIgSession, tokio::runtime::Handle);

impl Follower for OnRuntime {
    fn call(&self) -> bool {
        self.1
            .block_on(self.0.send(accounts()))
            .is_ok_and(|r| r.status() == 200)
    }
    fn is_owner(&self) -> bool {
        self.0.is_owner()
    }
    fn leave(&self) {
        self.1.block_on(self.0.shutdown());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Joins `ns` with an async session on `rt`.
fn async_follower(
    rt: &tokio::runtime::Runtime,
    base: &str,
    pem: &[u8],
    redis: &Redis,
    ns: &str,
    ttl: Duration,
) -> OnRuntime {
    let http = broker_session_hyper::HttpClient::new(&transport(pem)).expect("http");
    let shared = rt
        .block_on(AsyncSharedIgSession::start(
            ig_config(base),
            &http,
            redis,
            shared_config(ns, ttl),
        ))
        .expect("joins");
    OnRuntime(shared, rt.handle().clone())
}

/// Kills an owner process and times the hand-over to a follower in this process
/// (async on a tokio runtime if `on_tokio`).
fn failover(url: &str, ttl: Duration, runs: usize, on_tokio: bool) {
    let (server, fake, base) = fake_ig(Duration::from_secs(30));
    let dir = std::env::temp_dir().join(namespace("ca", 0));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.trust_pem()).expect("CA file");
    let redis = Redis::open(url).expect("Redis URL");
    let http_client = HttpClient::new(&transport(server.trust_pem().as_bytes())).expect("http");
    let mut owned = Vec::new();
    let mut served = Vec::new();
    for run in 0..runs {
        let ns = namespace(&format!("failover{}", ttl.as_millis()), run);
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(OWNER_VAR, &ns)
            .env(URL_VAR, url)
            .env("FLEET_BENCH_CA", &ca)
            .env("FLEET_BENCH_BASE", &base)
            .env("FLEET_BENCH_TTL_MS", ttl.as_millis().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("owner process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("READY");
        assert_eq!(line.trim(), "READY 1", "the child owns");
        let rt = runtime();
        let follower: Box<dyn Follower> = if on_tokio {
            let pem = server.trust_pem();
            Box::new(async_follower(&rt, &base, pem.as_bytes(), &redis, &ns, ttl))
        } else {
            Box::new(
                SharedIgSession::start(
                    ig_config(&base),
                    &http_client,
                    &redis,
                    shared_config(&ns, ttl),
                )
                .expect("joins"),
            )
        };
        assert!(follower.call(), "a call before the failover");
        // Kill it at a random point of its renewal period, as a crash would.
        thread::sleep(ttl / 7 * (run as u32 % 7));
        let killed = Instant::now();
        let _ = child.kill();
        let _ = child.wait();
        while !follower.is_owner() {
            thread::sleep(Duration::from_millis(1));
        }
        owned.push(killed.elapsed());
        assert!(follower.call(), "a call after the failover");
        served.push(killed.elapsed());
        follower.leave();
    }
    let logins = fake.lock().map(|f| f.stats.logins).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    owned.sort();
    served.sort();
    println!(
        "failover, {} follower, lease TTL {:?}, {runs} runs: owner after median {:?} (max {:?}); \
         first call served after median {:?} (max {:?}); {logins} logins for {runs} fleets \
         (one per fleet: no take-over logged in)",
        if on_tokio { "async" } else { "blocking" },
        ttl,
        owned[runs / 2],
        owned[runs - 1],
        served[runs / 2],
        served[runs - 1]
    );
}

/// Session requests the broker gets from `n` processes, shared or independent.
fn broker_load(url: &str, n: usize, secs: u64) {
    let token = Duration::from_secs(2);
    let run = Duration::from_secs(secs);
    let session_requests = |fake: &Arc<Mutex<FakeIg>>| {
        let f = fake.lock().expect("fake");
        (
            f.stats.count("POST /session"),
            f.stats.count("POST /session/refresh-token"),
            f.stats.count("GET /session"),
            f.stats.count("GET /accounts"),
        )
    };
    let drive = |send: &(dyn Fn() -> bool + Sync)| {
        let end = Instant::now() + run;
        thread::scope(|s| {
            for _ in 0..n {
                s.spawn(|| {
                    while Instant::now() < end {
                        assert!(send(), "a call failed");
                        thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
    };
    // A fleet.
    let (server, fake, base) = fake_ig(token);
    let redis = Redis::open(url).expect("Redis URL");
    let ns = namespace("load", n);
    let fleet: Vec<SharedIgSession> = (0..n)
        .map(|_| {
            let http = HttpClient::new(&transport(server.trust_pem().as_bytes())).expect("http");
            SharedIgSession::start(
                ig_config(&base),
                &http,
                &redis,
                shared_config(&ns, Duration::from_secs(5)),
            )
            .expect("joins")
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    drive(&|| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        fleet[i].send(accounts()).is_ok_and(|r| r.status() == 200)
    });
    let shared = session_requests(&fake);
    drop(fleet);
    drop(server);
    // The same fleet, async: one runtime for the 16 sessions, as one process would
    // have one per process; calls from plain threads through its handle.
    let (server, fake, base) = fake_ig(token);
    let rt = runtime();
    let ns = namespace("load-async", n);
    let fleet: Vec<OnRuntime> = (0..n)
        .map(|_| {
            let pem = server.trust_pem();
            async_follower(
                &rt,
                &base,
                pem.as_bytes(),
                &redis,
                &ns,
                Duration::from_secs(5),
            )
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    drive(&|| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        fleet[i].call()
    });
    let shared_async = session_requests(&fake);
    for f in &fleet {
        f.leave();
    }
    drop(fleet);
    drop(rt);
    drop(server);
    // As many independent sessions.
    let (server, fake, base) = fake_ig(token);
    let clients: Vec<Client<IgSession>> = (0..n)
        .map(|_| {
            let c = Client::ig(ig_config(&base), &transport(server.trust_pem().as_bytes()))
                .expect("client");
            c.login().expect("login");
            c
        })
        .collect();
    let keep: Vec<_> = clients
        .iter()
        .map(|c| c.keep_alive().expect("keep alive"))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    drive(&|| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        clients[i].send(accounts()).is_ok_and(|r| r.status() == 200)
    });
    drop(keep);
    let independent = session_requests(&fake);
    drop(server);
    // At IG's timing a refresh comes every 50 s instead of every 1 s here.
    let per_hour = |(logins, refreshes, _, _): (usize, usize, usize, usize)| {
        let _ = logins;
        refreshes as f64 / secs as f64 * (1.0 / 50.0) * 3600.0
    };
    println!(
        "broker load, {n} processes calling 10/s each for {secs} s, 2 s tokens \
         (logins / refreshes / session reads / app calls):"
    );
    println!(
        "  shared:      {} / {} / {} / {}  → at IG's timing about {:.0} refreshes an hour (+1 login)",
        shared.0,
        shared.1,
        shared.2,
        shared.3,
        per_hour(shared)
    );
    println!(
        "  shared, async: {} / {} / {} / {}  → at IG's timing about {:.0} refreshes an hour (+1 login)",
        shared_async.0,
        shared_async.1,
        shared_async.2,
        shared_async.3,
        per_hour(shared_async)
    );
    println!(
        "  independent: {} / {} / {} / {}  → at IG's timing about {:.0} refreshes an hour (+{n} logins)",
        independent.0,
        independent.1,
        independent.2,
        independent.3,
        per_hour(independent)
    );
}

/// Session requests the fake IBKR gets from `n` processes sharing one login through
/// Redis, then from `n` independent sessions of the same login, each calling
/// `GET /iserver/accounts` 10 times a second for `secs`, tickling every second.
fn broker_load_ibkr(url: &str, n: usize, secs: u64, oauth: bool) {
    let run = Duration::from_secs(secs);
    let start_fake = || {
        let fake = if oauth {
            FakeIbkr::oauth(false).0
        } else {
            FakeIbkr::gateway()
        };
        let fake = Arc::new(Mutex::new(fake));
        let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default())
            .expect("fake IBKR on loopback");
        let base = format!("{}{BASE_PATH}", server.https_url());
        (server, fake, base)
    };
    let config = |base: &str| {
        let mut c = if oauth {
            IbkrConfig::oauth(FakeIbkr::oauth(false).1)
        } else {
            IbkrConfig::gateway()
        };
        c.base_url = base.to_owned();
        c.tickle_interval = Duration::from_secs(1);
        c
    };
    let counts = |fake: &Arc<Mutex<FakeIbkr>>| {
        let f = fake.lock().expect("fake");
        (
            f.requests_to("/tickle").count(),
            f.requests_to("/oauth/live_session_token").count(),
            f.requests_to("/iserver/auth/ssodh/init").count(),
            f.requests_to("/iserver/accounts").count(),
        )
    };
    let accounts = || {
        http::Request::get("/iserver/accounts")
            .body(Vec::new())
            .expect("a valid request")
    };
    let drive = |send: &(dyn Fn() -> bool + Sync)| {
        let end = Instant::now() + run;
        let failed = std::sync::atomic::AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..n {
                s.spawn(|| {
                    while Instant::now() < end {
                        if !send() {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        failed.into_inner()
    };
    // A fleet.
    let (server, fake, base) = start_fake();
    let redis = Redis::open(url).expect("Redis URL");
    let ns = namespace(if oauth { "ibkr-oauth" } else { "ibkr-gw" }, n);
    let fleet: Vec<SharedIbkrSession> = (0..n)
        .map(|_| {
            let http = HttpClient::new(&transport(server.trust_pem().as_bytes())).expect("http");
            SharedIbkrSession::start(
                config(&base),
                &http,
                &redis,
                shared_config(&ns, Duration::from_secs(5)),
            )
            .expect("joins")
        })
        .collect();
    let started = counts(&fake);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let shared_failed = drive(&|| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        fleet[i].send(accounts()).is_ok_and(|r| r.status() == 200)
    });
    let shared = counts(&fake);
    drop(fleet);
    drop(server);
    // As many independent sessions of the same login.
    let (server, fake, base) = start_fake();
    let clients: Vec<Client<IbkrSession>> = (0..n)
        .map(|_| {
            let c = Client::ibkr(config(&base), &transport(server.trust_pem().as_bytes()))
                .expect("client");
            let _ = c.connect();
            c
        })
        .collect();
    let keep: Vec<_> = clients
        .iter()
        .map(|c| c.keep_alive().expect("keep alive"))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let independent_failed = drive(&|| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        clients[i].send(accounts()).is_ok_and(|r| r.status() == 200)
    });
    drop(keep);
    let independent = counts(&fake);
    drop(server);
    // At IBKR's default keep-alive a tickle comes every 60 s instead of every 1 s.
    let per_hour = |tickles: usize| tickles as f64 / secs as f64 * 60.0;
    let mode = if oauth { "OAuth 1.0a" } else { "gateway" };
    println!(
        "IBKR {mode} broker load, {n} processes calling 10/s each for {secs} s, a tickle a \
         second (tickles / live session token requests / ssodh inits / app calls / failed calls):"
    );
    println!(
        "  shared:      {} / {} / {} / {} / {shared_failed} (at start: {} / {} / {})  → at the \
         default 60 s keep-alive about {:.0} tickles an hour",
        shared.0,
        shared.1,
        shared.2,
        shared.3,
        started.0,
        started.1,
        started.2,
        per_hour(shared.0)
    );
    println!(
        "  independent: {} / {} / {} / {} / {independent_failed}  → at the default 60 s \
         keep-alive about {:.0} tickles an hour",
        independent.0,
        independent.1,
        independent.2,
        independent.3,
        per_hour(independent.0)
    );
}

/// CPU the sharing threads (coordinator, lease, subscribers) of idle sessions use.
fn idle_cpu(url: &str, sessions: usize, secs: u64) {
    let (server, _fake, base) = fake_ig(Duration::from_secs(3600));
    let redis = Redis::open(url).expect("Redis URL");
    let ns = namespace("idle", sessions);
    let fleet: Vec<SharedIgSession> = (0..sessions)
        .map(|_| {
            let http = HttpClient::new(&transport(server.trust_pem().as_bytes())).expect("http");
            SharedIgSession::start(
                ig_config(&base),
                &http,
                &redis,
                shared_config(&ns, Duration::from_secs(15)),
            )
            .expect("joins")
        })
        .collect();
    // Thread names are cut to 15 bytes by Linux: "broker-session-".
    let before = sys::threads_cpu_time("broker-session-");
    thread::sleep(Duration::from_secs(secs));
    let used = sys::threads_cpu_time("broker-session-").saturating_sub(before);
    println!(
        "idle: {sessions} shared sessions (1 owner), no calls, for {secs} s: {:?} CPU in their \
         threads, {:.2} % of one core per session",
        used,
        used.as_secs_f64() / secs as f64 / sessions as f64 * 100.0
    );
    drop(fleet);
}

fn main() {
    if std::env::var(OWNER_VAR).is_ok() {
        owner_process();
        return;
    }
    println!("machine: {}", sys::machine_line());
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => {
            let secs = std::env::var("BENCH_FLEET_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(6);
            if std::env::var("BENCH_FLEET_ONLY").as_deref() == Ok("ibkr") {
                // The IBKR broker-load figures alone.
                broker_load_ibkr(&url, 16, secs, true);
                broker_load_ibkr(&url, 16, secs, false);
                return;
            }
            for on_tokio in [false, true] {
                failover(&url, Duration::from_secs(1), 7, on_tokio);
                failover(&url, Duration::from_secs(3), 7, on_tokio);
            }
            broker_load(&url, 16, secs);
            broker_load_ibkr(&url, 16, secs, true);
            broker_load_ibkr(&url, 16, secs, false);
            idle_cpu(&url, 4, 10);
        }
        _ => println!("failover and broker load: SKIPPED (set {URL_VAR})"),
    }
    divan::main();
}
