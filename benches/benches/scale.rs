//! Scale: one tokio runtime keeping N sessions alive against a loopback server (in
//! phases 1 and 2 half IBKR gateway sessions tickling, half IG v3 sessions refreshing).
//!
//! Three phases, each on a fresh runtime:
//! 1. compressed time (tickle every 1 s, IG tokens of 10 s, so a refresh every 5 s):
//!    `BENCH_SCALE_N` sessions (default 5,000);
//! 2. the brokers' real timing (tickle every 60 s, IG tokens of 60 s, a refresh every
//!    50 s): `BENCH_SCALE_BIG_N` sessions (default 100,000);
//! 3. the fleet: `BENCH_SCALE_FLEET_N` IG v3 sessions only (default 100,000), tokens
//!    of `BENCH_SCALE_TOKEN_SECS` (default 20 s, a refresh every 10 s), through at
//!    least three refresh waves, on the default fd limit and per-host cap: logins/s,
//!    refreshes/s, most connections to the broker and open files, lateness, memory
//!    (`BENCH_SCALE_SHARED_CONFIG=1`: one `Arc<IgConfig>` for all the sessions);
//! 4. the same fleet on the blocking transport: `BENCH_SCALE_BLOCKING_N` IG v3
//!    sessions (default 0: skipped; 100,000 is the comparison with phase 3), one
//!    `HttpClient`, their timers run by one `Scheduler` with
//!    `BENCH_SCALE_SCHEDULER_THREADS` threads (default 1); the same figures.
//!
//! Phases 1 and 2 run `BENCH_SCALE_SECS` seconds (default 30; at least one keep-alive
//! period plus 5 s) after every session is up; N = 0 skips a phase.
//! The server answers with the fake brokers' answers recorded beforehand (the fakes
//! themselves keep per-request records that grow without bound at these rates). All
//! sessions share one HttpClient (one connection pool).
//!
//! Figures: machine state per session (`size_of` and heap, counting allocator), heap
//! and resident memory per session with the transport, CPU per keep-alive action
//! (client threads only, and the whole process), p99 timer lateness (time between a
//! machine's deadline and the first call that sees it passed).
//!
//! Run: `cargo bench -p broker-session-benches --bench scale`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession};
use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgSession, LoginFlow};
use broker_session::{
    AuthStamp, AuthorizeError, Input, Machine, Now, Observation, OpId, Output, UsageError,
};
use broker_session_benches::alloc::{self, CountingAlloc};
use broker_session_benches::replay::{Script, clone_response};
use broker_session_benches::sys;
use broker_session_hyper::{Client, Config, HttpClient};
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_testkit::sim::{FakeBroker, Reply, VirtualClock};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// ------------------------------------------------------------------ lateness probe

/// Lateness histogram: 100 µs buckets up to 10 s, the last bucket holds the rest.
const BUCKET_US: u64 = 100;
const BUCKETS: usize = 100_000;
static LATENESS: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];

fn record_lateness(d: Duration) {
    let i = (d.as_micros() as u64 / BUCKET_US).min(BUCKETS as u64 - 1) as usize;
    LATENESS[i].fetch_add(1, Relaxed);
}

fn reset_lateness() {
    for b in &LATENESS {
        b.store(0, Relaxed);
    }
}

/// (count, p50, p99, max) of the lateness histogram.
fn lateness_stats() -> (u64, Duration, Duration, Duration) {
    let counts: Vec<u64> = LATENESS.iter().map(|b| b.load(Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    let at = |q: f64| {
        let target = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return Duration::from_micros((i as u64 + 1) * BUCKET_US);
            }
        }
        Duration::ZERO
    };
    let max = counts
        .iter()
        .rposition(|c| *c > 0)
        .map_or(Duration::ZERO, |i| {
            Duration::from_micros((i as u64 + 1) * BUCKET_US)
        });
    (total, at(0.5), at(0.99), max)
}

/// A machine that measures how late its timers are served: the time between the
/// deadline of its last `Wait` and the first call at or after it.
struct Probe<M> {
    inner: M,
    deadline: Option<Instant>,
}

impl<M> Probe<M> {
    fn new(inner: M) -> Self {
        Self {
            inner,
            deadline: None,
        }
    }

    fn check(&mut self, now: Now) {
        if let Some(d) = self.deadline
            && now.mono >= d
        {
            record_lateness(now.mono - d);
            self.deadline = None;
        }
    }
}

impl<M: Machine> Machine for Probe<M> {
    type Intent = M::Intent;
    type State = M::State;
    type Outcome = M::Outcome;

    fn submit(&mut self, intent: M::Intent, now: Now) -> Result<OpId, UsageError> {
        self.inner.submit(intent, now)
    }

    fn handle_input(&mut self, input: Input, now: Now) {
        if matches!(input, Input::Timeout) {
            self.check(now);
        }
        self.inner.handle_input(input, now);
    }

    fn poll_output(&mut self, now: Now) -> Output<M::State, M::Outcome> {
        self.check(now);
        let out = self.inner.poll_output(now);
        if let Output::Wait(w) = &out {
            self.deadline = *w;
        }
        out
    }

    fn authorize<B>(
        &mut self,
        request: &mut http::Request<B>,
        now: Now,
    ) -> Result<AuthStamp, AuthorizeError> {
        self.inner.authorize(request, now)
    }

    fn observe<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
        stamp: AuthStamp,
        now: Now,
    ) -> Observation {
        self.inner.observe(response, stamp, now)
    }

    fn state(&self) -> M::State {
        self.inner.state()
    }
}

// ------------------------------------------------------------------ canned server

/// Answers each `METHOD /path` with the recorded answer; counts requests.
struct Canned {
    answers: HashMap<String, http::Response<Vec<u8>>>,
    served: Arc<AtomicU64>,
    /// IG token refreshes served (a subset of `served`).
    refreshed: Arc<AtomicU64>,
}

impl FakeBroker for Canned {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, _now: Now) -> Reply {
        self.served.fetch_add(1, Relaxed);
        if request.uri().path().ends_with("/refresh-token") {
            self.refreshed.fetch_add(1, Relaxed);
        }
        let key = format!("{} {}", request.method(), request.uri().path());
        let r = self
            .answers
            .get(&key)
            .map(clone_response)
            .unwrap_or_else(|| {
                let mut r = http::Response::new(Vec::new());
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            });
        Reply::Response(r)
    }
}

/// Server options for a canned server that keeps no record of the requests: a
/// record holds the request's headers, which share the connection's read buffer, so
/// 10,000 records would keep megabytes of the server's buffers alive and be counted
/// as the sessions' memory.
fn unrecorded() -> ServerOptions {
    let mut options = ServerOptions::default();
    options.record_limit = 0;
    options
}

struct Timing {
    name: &'static str,
    tickle: Duration,
    token: Duration,
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

fn ibkr_config(base: &str, tickle: Duration) -> IbkrConfig {
    let mut c = FakeIbkr::gateway_config();
    c.base_url = format!("{base}/v1/api");
    c.tickle_interval = tickle;
    c
}

/// Records the answers of the IG login and refresh (tokens of `token`) and of the
/// IBKR connect and tickle, against the fakes in memory.
fn record_answers(
    base: &str,
    t: &Timing,
) -> (HashMap<String, http::Response<Vec<u8>>>, Script, Script) {
    let clock = VirtualClock::new();
    let mut ig_fake = FakeIg::new(FakeIgConfig {
        access_ttl: t.token,
        ..FakeIgConfig::default()
    });
    let mut m = IgSession::new(
        ig_config(base),
        broker_session::RngSeed::from_u64(9),
        clock.now(),
    )
    .expect("valid");
    let ig = Script::record(
        &mut m,
        &mut ig_fake,
        clock.now(),
        vec![IgIntent::Login, IgIntent::Refresh],
    );
    let mut ibkr_fake = FakeIbkr::gateway();
    ibkr_fake.authenticated = true;
    let mut m = IbkrSession::new(
        ibkr_config(base, t.tickle),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    )
    .expect("valid");
    let ibkr = Script::record(
        &mut m,
        &mut ibkr_fake,
        clock.now(),
        vec![IbkrIntent::Connect, IbkrIntent::Tickle],
    );
    let mut answers = HashMap::new();
    for s in [&ig, &ibkr] {
        for (k, r) in s.requests.iter().zip(s.recorded_responses()) {
            answers.insert(k.clone(), clone_response(r));
        }
    }
    (answers, ig, ibkr)
}

/// Heap of one machine in the core alone, after its login (IG) or connect (IBKR).
fn machine_heap(ig: &Script, ibkr: &Script, base: &str, t: &Timing) -> (f64, f64) {
    const K: usize = 1000;
    let clock = VirtualClock::new();
    let before = alloc::snapshot();
    let mut igs = Vec::with_capacity(K);
    let vec_bytes = alloc::snapshot().since(before).live;
    for _ in 0..K {
        let mut m = IgSession::new(
            ig_config(base),
            broker_session::RngSeed::from_u64(1),
            clock.now(),
        )
        .expect("valid");
        let responses = vec![ig.response(0)];
        ig.replay(&mut m, vec![IgIntent::Login], responses);
        igs.push(m);
    }
    let ig_heap = (alloc::snapshot().since(before).live - vec_bytes) as f64 / K as f64
        - size_of::<IgSession>() as f64;
    let before = alloc::snapshot();
    let mut ibkrs = Vec::with_capacity(K);
    for _ in 0..K {
        let mut m = IbkrSession::new(
            ibkr_config(base, t.tickle),
            broker_session::RngSeed::from_u64(1),
            clock.now(),
        )
        .expect("valid");
        let n = ibkr
            .requests
            .iter()
            .filter(|r| !r.ends_with("/tickle"))
            .count();
        let responses = (0..n).map(|i| ibkr.response(i)).collect();
        ibkr.replay(&mut m, vec![IbkrIntent::Connect], responses);
        ibkrs.push(m);
    }
    let ibkr_heap =
        alloc::snapshot().since(before).live as f64 / K as f64 - size_of::<IbkrSession>() as f64;
    drop((igs, ibkrs));
    (ig_heap, ibkr_heap)
}

/// Open file descriptors of this process (`None` if even that cannot be opened).
fn open_fds() -> String {
    std::fs::read_dir("/proc/self/fd")
        .map_or_else(|e| format!("unknown ({e})"), |d| d.count().to_string())
}

fn fd_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn phase(t: &Timing, n: usize, secs: u64) {
    if n == 0 {
        return;
    }
    println!(
        "\n== {} (tickle every {:?}, IG tokens of {:?}), N = {n}",
        t.name, t.tickle, t.token
    );
    let served = Arc::new(AtomicU64::new(0));
    let canned = Arc::new(Mutex::new(Canned {
        answers: HashMap::new(),
        served: Arc::clone(&served),
        refreshed: Arc::default(),
    }));
    let server = Server::start_shared(Arc::clone(&canned), unrecorded()).expect("server");
    let base = server.http_url();
    let (answers, ig_script, ibkr_script) = record_answers(&base, t);
    canned.lock().expect("not poisoned").answers = answers;

    let (ig_heap, ibkr_heap) = machine_heap(&ig_script, &ibkr_script, &base, t);
    println!(
        "core machine state: IgSession size_of {} B + heap {:.0} B after login; IbkrSession size_of {} B + heap {:.0} B after connect",
        size_of::<IgSession>(),
        ig_heap,
        size_of::<IbkrSession>(),
        ibkr_heap
    );

    println!(
        "transport bookkeeping: one remembered finished operation (OpId, Option<Box<Error>>) is {} B; one event {} B",
        size_of::<(OpId, Option<Box<broker_session::Error>>)>(),
        size_of::<broker_session::Event<broker_session::ig::IgState, broker_session::ig::IgOutcome>>(
        )
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = Config::default();
    // Keep-alive events are not read here; a small buffer bounds them per session.
    config.event_capacity = 4;
    let rss0 = sys::status_kib("VmRSS");
    let live0 = alloc::snapshot().live;
    let started = Instant::now();
    let (sessions_ig, sessions_ibkr, keepers, http) = rt.block_on(async {
        let http = HttpClient::new(&config).expect("client");
        let mut ig = Vec::with_capacity(n / 2);
        let mut ibkr = Vec::with_capacity(n - n / 2);
        for _ in 0..n / 2 {
            let m = Probe::new(
                IgSession::new(
                    ig_config(&base),
                    broker_session::RngSeed::from_u64(1),
                    broker_session_hyper::now(),
                )
                .expect("valid"),
            );
            ig.push(Arc::new(
                Client::with_http(m, http.clone()).expect("session"),
            ));
        }
        for _ in 0..n - n / 2 {
            let m = Probe::new(
                IbkrSession::new(
                    ibkr_config(&base, t.tickle),
                    broker_session::RngSeed::from_u64(1),
                    broker_session_hyper::now(),
                )
                .expect("valid"),
            );
            ibkr.push(Arc::new(
                Client::with_http(m, http.clone()).expect("session"),
            ));
        }
        let created = alloc::snapshot().live;
        println!(
            "heap after creating the sessions: {:.0} B per session",
            (created - live0.min(created)) as f64 / n as f64
        );
        // Log in / connect with at most 256 operations in flight.
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::with_capacity(n);
        for s in &ig {
            let (s, sem) = (Arc::clone(s), Arc::clone(&sem));
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                s.run(IgIntent::Login).await.map(|_| ())
            }));
        }
        for s in &ibkr {
            let (s, sem) = (Arc::clone(s), Arc::clone(&sem));
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                s.run(IbkrIntent::Connect).await.map(|_| ())
            }));
        }
        let mut failed = 0;
        for task in tasks {
            if !matches!(task.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        assert_eq!(failed, 0, "sessions failed to start");
        let up = alloc::snapshot().live;
        println!(
            "heap after login/connect: {:.0} B per session",
            (up - live0.min(up)) as f64 / n as f64
        );
        let keepers: Vec<_> = ig
            .iter()
            .map(|s| s.keep_alive())
            .chain(ibkr.iter().map(|s| s.keep_alive()))
            .collect();
        (ig, ibkr, keepers, http)
    });
    println!(
        "all {n} sessions up in {:.1?} ({} requests)",
        started.elapsed(),
        served.load(Relaxed)
    );

    // Let the start-up burst settle before measuring; the window must hold at least
    // one keep-alive action of every session.
    std::thread::sleep(Duration::from_secs(2));
    let secs = secs.max(t.tickle.as_secs() + 5);
    reset_lateness();
    let fds0 = open_fds();
    let (cpu0, srv0, req0, w0) = (
        sys::cpu_time(),
        sys::threads_cpu_time("fake-broker-ser"),
        served.load(Relaxed),
        Instant::now(),
    );
    let mut live_max = 0usize;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        live_max = live_max.max(alloc::snapshot().live);
    }
    let wall = w0.elapsed();
    let cpu = sys::cpu_time().saturating_sub(cpu0);
    let srv = sys::threads_cpu_time("fake-broker-ser").saturating_sub(srv0);
    let actions = served.load(Relaxed) - req0;
    let live1 = alloc::snapshot().live;
    let (rss, hwm) = (sys::status_kib("VmRSS"), sys::status_kib("VmHWM"));
    let (count, p50, p99, max) = lateness_stats();
    println!(
        "open file descriptors: {fds0} at the start of the window, {} at its end (limit {})",
        open_fds(),
        fd_limit()
    );

    let per_action = |d: Duration| d.as_secs_f64() * 1e6 / actions.max(1) as f64;
    println!(
        "steady {wall:.1?}: {actions} keep-alive requests ({:.0}/s); CPU {:.0}% of one core ({:.0}% client, {:.0}% server thread)",
        actions as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        cpu.saturating_sub(srv).as_secs_f64() / wall.as_secs_f64() * 100.0,
        srv.as_secs_f64() / wall.as_secs_f64() * 100.0,
    );
    println!(
        "CPU per keep-alive action: {:.1} µs client, {:.1} µs with the server",
        per_action(cpu.saturating_sub(srv)),
        per_action(cpu)
    );
    println!(
        "timer lateness over {count} deadlines: p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?} (100 µs buckets)"
    );
    println!(
        "heap with transport: {:.0} B per session now, {:.0} B at the highest sample; RSS {} MiB (+{:.0} B per session), VmHWM {} MiB",
        (live1 - live0.min(live1)) as f64 / n as f64,
        (live_max.max(live1) - live0.min(live1)) as f64 / n as f64,
        rss / 1024,
        (rss.saturating_sub(rss0) * 1024) as f64 / n as f64,
        hwm / 1024
    );
    drop(keepers);
    drop((sessions_ig, sessions_ibkr, http));
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(server);
}

/// Established TCP connections of this process to `port` on loopback (the client
/// side of the connections to the loopback broker), from `/proc/self/net/tcp`.
fn connections_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/self/net/tcp") else {
        return 0;
    };
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            // sl, local address, remote address, state ("01": established)
            f.nth(2) == Some(remote.as_str()) && f.next() == Some("01")
        })
        .count()
}

/// Highest values seen by a sampler thread: connections to the broker, open file
/// descriptors, live heap.
#[derive(Default)]
struct Peaks {
    stop: std::sync::atomic::AtomicBool,
    connections: AtomicU64,
    fds: AtomicU64,
    heap: AtomicU64,
}

impl Peaks {
    fn reset(&self) {
        self.connections.store(0, Relaxed);
        self.fds.store(0, Relaxed);
        self.heap.store(0, Relaxed);
    }

    /// Samples every 50 ms until stopped.
    fn sample(self: Arc<Self>, port: u16) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while !self.stop.load(Relaxed) {
                self.connections
                    .fetch_max(connections_to(port) as u64, Relaxed);
                let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
                self.fds.fetch_max(fds as u64, Relaxed);
                self.heap.fetch_max(alloc::snapshot().live as u64, Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }
}

/// The canned server of a fleet phase (IG answers recorded with tokens of `token`,
/// no request record): the server, its base URL and port, and its count of refreshes.
fn fleet_server(name: &'static str, token: Duration) -> (Server, String, u16, Arc<AtomicU64>) {
    let t = Timing {
        name,
        tickle: Duration::from_secs(60),
        token,
    };
    let refreshed = Arc::new(AtomicU64::new(0));
    let canned = Arc::new(Mutex::new(Canned {
        answers: HashMap::new(),
        served: Arc::new(AtomicU64::new(0)),
        refreshed: Arc::clone(&refreshed),
    }));
    let server = Server::start_shared(Arc::clone(&canned), unrecorded()).expect("server");
    let base = server.http_url();
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (answers, _, _) = record_answers(&base, &t);
    canned.lock().expect("not poisoned").answers = answers;
    (server, base, port, refreshed)
}

/// What a fleet phase measures over its window of refresh waves.
struct Window {
    wall: Duration,
    cpu: Duration,
    server_cpu: Duration,
    refreshes: u64,
    live: usize,
    rss_kib: u64,
    active: usize,
}

impl Window {
    /// Lets `secs` pass with the sessions running, from fresh lateness and peaks.
    fn measure(
        secs: u64,
        peaks: &Peaks,
        refreshed: &AtomicU64,
        active: impl Fn() -> usize,
    ) -> Self {
        reset_lateness();
        peaks.reset();
        let (cpu0, srv0, ref0, w0) = (
            sys::cpu_time(),
            sys::threads_cpu_time("fake-broker-ser"),
            refreshed.load(Relaxed),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(secs));
        Self {
            wall: w0.elapsed(),
            cpu: sys::cpu_time().saturating_sub(cpu0),
            server_cpu: sys::threads_cpu_time("fake-broker-ser").saturating_sub(srv0),
            refreshes: refreshed.load(Relaxed) - ref0,
            live: alloc::snapshot().live,
            rss_kib: sys::status_kib("VmRSS"),
            active: active(),
        }
    }

    /// Prints the window's figures for `n` sessions; `before` is the live heap and
    /// the RSS (KiB) from before the sessions were created.
    fn print(
        &self,
        n: usize,
        peaks: &Peaks,
        connections: &str,
        heap_has: &str,
        before: (usize, u64),
    ) {
        let (live0, rss0) = before;
        let per = |bytes: usize| (bytes.saturating_sub(live0)) as f64 / n as f64;
        let (wall, cpu, srv, refreshes) = (self.wall, self.cpu, self.server_cpu, self.refreshes);
        let (count, p50, p99, max) = lateness_stats();
        println!(
            "window {wall:.1?}: {refreshes} refreshes ({:.0}/s, {:.2} per session); {} of {n} sessions active at its end",
            refreshes as f64 / wall.as_secs_f64(),
            refreshes as f64 / n as f64,
            self.active,
        );
        println!("{connections}");
        println!(
            "CPU {:.0}% of one core ({:.0}% client, {:.0}% server thread); {:.1} µs client CPU per refresh",
            cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
            cpu.saturating_sub(srv).as_secs_f64() / wall.as_secs_f64() * 100.0,
            srv.as_secs_f64() / wall.as_secs_f64() * 100.0,
            cpu.saturating_sub(srv).as_secs_f64() * 1e6 / refreshes.max(1) as f64,
        );
        println!(
            "timer lateness over {count} deadlines: p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?} (100 µs buckets)"
        );
        println!(
            "heap per session, all in ({heap_has}): {:.0} B now, {:.0} B at the highest sample; RSS {} MiB (+{:.0} B per session)",
            per(self.live),
            per((peaks.heap.load(Relaxed) as usize).max(self.live)),
            self.rss_kib / 1024,
            (self.rss_kib.saturating_sub(rss0) * 1024) as f64 / n as f64,
        );
    }
}

/// The fleet: `n` IG v3 sessions only, tokens of `token` (a refresh `margin` before
/// expiry, at most half-way), one `HttpClient` with the default per-host cap (256),
/// the default fd limit; logins with at most 1,024 in flight, then keep-alive tasks
/// through at least three refresh waves.
fn fleet(n: usize, token: Duration, secs: u64) {
    if n == 0 {
        return;
    }
    let share_config = env_usize("BENCH_SCALE_SHARED_CONFIG", 0) != 0;
    let defaults = IgConfig::new(IgEnvironment::Demo, "k", "i", "p");
    let margin = defaults.refresh_margin.min(token / 2);
    let spread = defaults.refresh_spread.min(token / 2 - margin);
    let period = token - margin;
    println!(
        "\n== fleet: {n} IG v3 sessions, tokens of {token:?} (a refresh every {:?} to {period:?}), async, fd limit {}, {} configuration",
        period - spread,
        fd_limit(),
        if share_config {
            "one shared"
        } else {
            "one per session's"
        }
    );
    println!(
        "one event {} B, one remembered finished operation {} B, one awaited operation's slot {} B",
        size_of::<broker_session::Event<broker_session::ig::IgState, broker_session::ig::IgOutcome>>(
        ),
        size_of::<(OpId, Option<Box<broker_session::Error>>)>(),
        size_of::<(OpId, Option<broker_session::driver::OpResult<IgSession>>)>(),
    );
    let (server, base, port, refreshed) = fleet_server("fleet", token);

    println!(
        "size_of: IgSession {} B, Driver<IgSession> {} B, Client<IgSession> {} B (an Arc), KeepAlive {} B",
        size_of::<IgSession>(),
        size_of::<broker_session::driver::Driver<IgSession>>(),
        size_of::<Client<IgSession>>(),
        size_of::<broker_session_hyper::KeepAlive>(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = Config::default();
    // Events nobody reads: at most this many per session (default 4).
    config.event_capacity = env_usize("BENCH_SCALE_EVENTS", 4);
    // The per-host cap (default the transport's, 256); a huge value shows the pool
    // without one.
    config.max_connections_per_host = env_usize("BENCH_SCALE_CAP", config.max_connections_per_host);
    let peaks = Arc::new(Peaks::default());
    let sampler = Arc::clone(&peaks).sample(port);
    let rss0 = sys::status_kib("VmRSS");
    let live0 = alloc::snapshot().live;
    let per = |bytes: usize| (bytes.saturating_sub(live0)) as f64 / n as f64;
    let (sessions, keepers, http, login_time) = rt.block_on(async {
        let http = HttpClient::new(&config).expect("client");
        // One configuration per session, as a fleet of distinct accounts has, or
        // one shared by all (`BENCH_SCALE_SHARED_CONFIG=1`).
        let shared = Arc::new(ig_config(&base));
        let sessions: Vec<_> = (0..n)
            .map(|i| {
                let config = if share_config {
                    Arc::clone(&shared)
                } else {
                    Arc::new(ig_config(&base))
                };
                // A seed per session, as the OS would give: it also draws the
                // session's refresh jitter.
                let m = Probe::new(
                    IgSession::new(
                        config,
                        broker_session::RngSeed::from_u64(i as u64),
                        broker_session_hyper::now(),
                    )
                    .expect("valid"),
                );
                Client::with_http(m, http.clone()).expect("session")
            })
            .collect();
        println!(
            "heap after creating the sessions: {:.0} B per session",
            per(alloc::snapshot().live)
        );
        let start = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(1024));
        let mut tasks = Vec::with_capacity(n);
        for s in &sessions {
            let (s, sem) = (s.clone(), Arc::clone(&sem));
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                s.run(IgIntent::Login).await.map(|_| ())
            }));
        }
        let mut failed = 0;
        for task in tasks {
            if !matches!(task.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        let login_time = start.elapsed();
        assert_eq!(failed, 0, "sessions failed to log in");
        let logged_in = alloc::snapshot().live;
        println!("heap after login: {:.0} B per session", per(logged_in));
        let keepers: Vec<_> = sessions.iter().map(|s| s.keep_alive()).collect();
        // What keeping them alive costs, before any timer is due (the handles'
        // vector included).
        let kept = alloc::snapshot().live;
        println!(
            "heap with the keep-alives started: {:.0} B per session (+{:.0} B)",
            per(kept),
            kept.saturating_sub(logged_in) as f64 / n as f64
        );
        (sessions, keepers, http, login_time)
    });
    println!(
        "all {n} logged in in {login_time:.1?}: {:.0} logins/s; so far at most {} connections to the broker, {} open files, {:.0} B heap per session",
        n as f64 / login_time.as_secs_f64(),
        peaks.connections.load(Relaxed),
        peaks.fds.load(Relaxed),
        per(peaks.heap.load(Relaxed) as usize),
    );

    let secs = secs.max(3 * period.as_secs() + 5);
    let window = Window::measure(secs, &peaks, &refreshed, || {
        sessions
            .iter()
            .filter(|s| matches!(s.state(), broker_session::ig::IgState::Active { .. }))
            .count()
    });
    window.print(
        n,
        &peaks,
        &format!(
            "connections to the broker: at most {} (cap {}); open files at most {}",
            peaks.connections.load(Relaxed),
            http.policy().max_connections_per_host,
            peaks.fds.load(Relaxed),
        ),
        "pool, runtime tasks, server buffers included",
        (live0, rss0),
    );
    peaks.stop.store(true, Relaxed);
    let _ = sampler.join();
    drop(keepers);
    drop((sessions, http));
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(server);
}

/// Phase 4: the fleet of phase 3 on the blocking transport, every session's timers
/// run by one `Scheduler` (`BENCH_SCALE_SCHEDULER_THREADS` threads); logins from 8
/// threads.
fn fleet_blocking(n: usize, token: Duration, secs: u64) {
    use broker_session_ureq::{Client as BlockingClient, HttpClient as BlockingHttp, Scheduler};
    if n == 0 {
        return;
    }
    let defaults = IgConfig::new(IgEnvironment::Demo, "k", "i", "p");
    let period = token - defaults.refresh_margin.min(token / 2);
    let threads = env_usize("BENCH_SCALE_SCHEDULER_THREADS", 1);
    println!(
        "\n== fleet, blocking: {n} IG v3 sessions, tokens of {token:?}, one Scheduler with {threads} thread(s), fd limit {}",
        fd_limit()
    );
    let (server, base, port, refreshed) = fleet_server("fleet, blocking", token);
    println!(
        "size_of: broker_session_ureq::Client<IgSession> {} B (an Arc)",
        size_of::<BlockingClient<IgSession>>()
    );
    let mut config = Config::default();
    config.event_capacity = env_usize("BENCH_SCALE_EVENTS", 4);
    let peaks = Arc::new(Peaks::default());
    let sampler = Arc::clone(&peaks).sample(port);
    let rss0 = sys::status_kib("VmRSS");
    let live0 = alloc::snapshot().live;
    let per = |bytes: usize| (bytes.saturating_sub(live0)) as f64 / n as f64;
    let http = BlockingHttp::new(&config).expect("client");
    let shared = Arc::new(ig_config(&base));
    let sessions: Vec<BlockingClient<Probe<IgSession>>> = (0..n)
        .map(|i| {
            let m = Probe::new(
                IgSession::new(
                    Arc::clone(&shared),
                    broker_session::RngSeed::from_u64(i as u64),
                    broker_session_ureq::now(),
                )
                .expect("valid"),
            );
            BlockingClient::with_http(m, http.clone())
        })
        .collect();
    println!(
        "heap after creating the sessions: {:.0} B per session",
        per(alloc::snapshot().live)
    );
    let start = Instant::now();
    std::thread::scope(|scope| {
        for chunk in sessions.chunks(n.div_ceil(8)) {
            scope.spawn(move || {
                for s in chunk {
                    s.run(IgIntent::Login).expect("login");
                }
            });
        }
    });
    let login_time = start.elapsed();
    println!(
        "heap after login: {:.0} B per session",
        per(alloc::snapshot().live)
    );
    let scheduler = Scheduler::spawn_threads(threads).expect("scheduler");
    let registrations: Vec<_> = sessions.iter().map(|s| scheduler.add(s)).collect();
    println!(
        "all {n} logged in in {login_time:.1?}: {:.0} logins/s; {:.0} B heap per session with the scheduler",
        n as f64 / login_time.as_secs_f64(),
        per(alloc::snapshot().live)
    );
    let secs = secs.max(3 * period.as_secs() + 5);
    let window = Window::measure(secs, &peaks, &refreshed, || {
        sessions
            .iter()
            .filter(|s| matches!(s.state(), broker_session::ig::IgState::Active { .. }))
            .count()
    });
    window.print(
        n,
        &peaks,
        &format!(
            "connections to the broker: at most {}; open files at most {}; threads {}",
            peaks.connections.load(Relaxed),
            peaks.fds.load(Relaxed),
            std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count),
        ),
        "pool, scheduler, server buffers included",
        (live0, rss0),
    );
    peaks.stop.store(true, Relaxed);
    let _ = sampler.join();
    drop(registrations);
    drop(scheduler);
    drop((sessions, http));
    drop(server);
}

fn main() {
    println!("machine: {}", sys::machine_line());
    alloc::set_counting(true);
    let secs = env_usize("BENCH_SCALE_SECS", 30) as u64;
    phase(
        &Timing {
            name: "compressed time",
            tickle: Duration::from_secs(1),
            token: Duration::from_secs(10),
        },
        env_usize("BENCH_SCALE_N", 5_000),
        secs,
    );
    phase(
        &Timing {
            name: "real timing",
            tickle: Duration::from_secs(60),
            token: Duration::from_secs(60),
        },
        env_usize("BENCH_SCALE_BIG_N", 100_000),
        secs,
    );
    fleet(
        env_usize("BENCH_SCALE_FLEET_N", 100_000),
        Duration::from_secs(env_usize("BENCH_SCALE_TOKEN_SECS", 20) as u64),
        secs,
    );
    fleet_blocking(
        env_usize("BENCH_SCALE_BLOCKING_N", 0),
        Duration::from_secs(env_usize("BENCH_SCALE_TOKEN_SECS", 20) as u64),
        secs,
    );
}
