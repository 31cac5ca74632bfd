//! A fleet of processes sharing one IG login, against a real Redis
//! (`BROKER_SESSION_REDIS_URL`; without it each test prints SKIPPED and returns) and
//! the test kit's fake IG, served by the test process over HTTPS on loopback.
//!
//! Each test starts worker processes: this test binary again, running only
//! `worker_process` with `FLEET_WORKER` set. A worker joins the fleet with a
//! `SharedIgSession`, makes application calls from several threads for a while, and
//! reports on stdout (`READY`, one `EVENT` line per fleet event, `DONE ok=… err=…`).
//! The fake counts what IG saw. Token lifetimes are compressed to a second or two.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use broker_session_redis::{
    Error, FleetEvent, GenerationStore, Lease, Notice, Redis, Sealing, SealingKey, SharedConfig,
    SharedIgSession,
};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_ureq::{Config, HttpClient, IgConfig, IgEnvironment, LoginFlow, Tls, http};

mod own_server;
use own_server::OwnServer;

mod workers;
use workers::Worker;

const URL_VAR: &str = "BROKER_SESSION_REDIS_URL";
const SERVER_VAR: &str = "BROKER_SESSION_REDIS_SERVER";
const WORKER_VAR: &str = "FLEET_WORKER";
/// How long any "eventually" may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(15);
const KEY: [u8; 32] = [0x5a; 32];

fn skipped(test: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!! {test}: SKIPPED (no Redis): set {URL_VAR} (bash .ci/run starts a redis-server) !!!!\n"
    );
}

fn redis_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skipped(test);
            None
        }
    }
}

fn namespace(test: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    format!("fleet-{test}-{:016x}", u64::from_le_bytes(bytes))
}

/// The fake IG on loopback, with `access_ttl` tokens.
struct Broker {
    server: Server,
    fake: Arc<Mutex<FakeIg>>,
    pem_path: std::path::PathBuf,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Broker {
    fn start(access_ttl: Duration) -> Self {
        let fake = Arc::new(Mutex::new(FakeIg::new(FakeIgConfig {
            access_ttl,
            ..FakeIgConfig::default()
        })));
        let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).unwrap();
        let dir = std::env::temp_dir().join(namespace("pem"));
        std::fs::create_dir_all(&dir).unwrap();
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, server.trust_pem()).unwrap();
        Self {
            server,
            fake,
            pem_path,
            _dir: TempDir(dir),
        }
    }

    fn base_url(&self) -> String {
        format!("{}/gateway/deal", self.server.https_url())
    }

    /// An IG configuration for this broker's test account.
    fn ig(&self, flow: LoginFlow) -> IgConfig {
        let fake = FakeIgConfig::default();
        let mut ig = IgConfig::new(
            IgEnvironment::Custom(self.base_url()),
            fake.api_key,
            fake.identifier,
            fake.password,
        );
        ig.login_flow = flow;
        ig
    }

    /// A transport configuration that trusts this broker's certificate.
    fn transport(&self) -> Config {
        let mut transport = Config::default();
        transport.tls = Tls::Pem(self.server.trust_pem().as_bytes().to_vec());
        transport
    }

    fn logins(&self) -> usize {
        self.fake.lock().unwrap().stats.logins
    }

    fn refreshes(&self) -> usize {
        self.fake.lock().unwrap().stats.refreshes
    }

    fn stats(&self) -> broker_session_testkit::ig::FakeIgStats {
        self.fake.lock().unwrap().stats.clone()
    }
}

/// What a worker does.
#[derive(Clone)]
struct Plan {
    namespace: String,
    threads: usize,
    call_for: Duration,
    lease_ttl: Duration,
}

/// Starts a worker process for `plan` against `broker` and the Redis at `redis`.
fn spawn_worker(broker: &Broker, redis: &str, plan: &Plan) -> Worker {
    Worker::spawn(
        "worker_process",
        &[
            (WORKER_VAR, "1".to_owned()),
            (URL_VAR, redis.to_owned()),
            ("FLEET_BASE_URL", broker.base_url()),
            ("FLEET_CA", broker.pem_path.display().to_string()),
            ("FLEET_NAMESPACE", plan.namespace.clone()),
            ("FLEET_THREADS", plan.threads.to_string()),
            ("FLEET_CALL_MS", plan.call_for.as_millis().to_string()),
            ("FLEET_LEASE_MS", plan.lease_ttl.as_millis().to_string()),
        ],
    )
}

/// Every generation announced on the namespace's channel, in order.
fn watch_generations(redis: &Redis, namespace: &str) -> Arc<Mutex<Vec<u64>>> {
    let store =
        GenerationStore::new(namespace, Sealing::Sealed(SealingKey::from_bytes(KEY))).unwrap();
    let subscriber = store.subscribe(redis).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    thread::spawn(move || {
        while let Ok(notice) = subscriber.recv_timeout(Duration::from_secs(60)) {
            match notice {
                Some(Notice::Generation(g)) => out.lock().unwrap().push(g),
                Some(_) => {}
                None => return,
            }
        }
    });
    seen
}

/// What a fleet's run over several token lifetimes must have cost the broker: one
/// login, and one refresh per generation published after the login's (none failed,
/// no refresh token used twice), at least 3 and, refreshed at half their life over
/// the run, at most 8.
fn one_login_and_one_refresh_per_generation(broker: &Broker, redis: &Redis, namespace: &str) {
    let stats = broker.stats();
    assert_eq!(stats.logins, 1, "one login for the fleet: {stats:?}");
    assert_eq!(stats.failed_refreshes, 0, "{stats:?}");
    assert_eq!(stats.reused_refresh_tokens, 0, "{stats:?}");
    let stored = stored_generation(redis, namespace);
    assert_eq!(stats.refreshes as u64, stored - 1, "{stats:?}");
    assert!(
        stats.refreshes >= 3,
        "the run spans several token lifetimes: {stats:?}"
    );
    assert!(stats.refreshes <= 8, "{stats:?}");
}

fn stored_generation(redis: &Redis, namespace: &str) -> u64 {
    let store =
        GenerationStore::new(namespace, Sealing::Sealed(SealingKey::from_bytes(KEY))).unwrap();
    store
        .current_generation(&mut redis.connect().unwrap())
        .unwrap()
}

/// The worker: joins the fleet, calls from several threads, reports.
#[test]
fn worker_process() {
    if std::env::var(WORKER_VAR).is_err() {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap();
    let ms = |name: &str| Duration::from_millis(env(name).parse().unwrap());
    let mut ig = IgConfig::new(
        IgEnvironment::Custom(env("FLEET_BASE_URL")),
        FakeIgConfig::default().api_key,
        FakeIgConfig::default().identifier,
        FakeIgConfig::default().password,
    );
    ig.login_flow = LoginFlow::V3;
    ig.request_deadline = Duration::from_secs(10);
    let mut transport = Config::default();
    transport.tls = Tls::Pem(std::fs::read(env("FLEET_CA")).unwrap());
    let http_client = HttpClient::new(&transport).unwrap();
    let redis = Redis::open(env(URL_VAR)).unwrap();
    let mut config = SharedConfig::new(
        env("FLEET_NAMESPACE"),
        Sealing::Sealed(SealingKey::from_bytes(KEY)),
    );
    config.lease_ttl = ms("FLEET_LEASE_MS");
    config.poll_interval = Duration::from_millis(500);
    let shared = Arc::new(SharedIgSession::start(ig, &http_client, &redis, config).unwrap());
    let print = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let report = |shared: &SharedIgSession| {
        for event in shared.drain_events() {
            if let FleetEvent::Session(_) = event {
                continue;
            }
            print(format!("EVENT {event}"));
        }
    };
    report(&shared);
    print(format!(
        "READY owner={} gen={}",
        u8::from(shared.is_owner()),
        shared.generation()
    ));
    let (ok, err) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let end = Instant::now() + ms("FLEET_CALL_MS");
    let threads: Vec<_> = (0..env("FLEET_THREADS").parse::<usize>().unwrap())
        .map(|_| {
            let (shared, ok, err) = (Arc::clone(&shared), Arc::clone(&ok), Arc::clone(&err));
            thread::spawn(move || {
                while Instant::now() < end {
                    let request = http::Request::get("/accounts")
                        .header("Version", "1")
                        .body(Vec::new())
                        .unwrap();
                    match shared.send(request) {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("worker {}: HTTP {}", std::process::id(), r.status());
                            err.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("worker {}: {e}", std::process::id());
                            err.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
        report(&shared);
    }
    for t in threads {
        t.join().unwrap();
    }
    report(&shared);
    print(format!(
        "DONE ok={} err={} owner={} gen={}",
        ok.load(Ordering::Relaxed),
        err.load(Ordering::Relaxed),
        u8::from(shared.is_owner()),
        shared.generation()
    ));
    // Leave without a lease release (as a crash would) only when told; else cleanly.
    drop(shared);
    std::process::exit(0);
}

#[test]
fn a_fleet_logs_in_once_and_refreshes_once_per_token_lifetime() {
    let Some(url) = redis_url("a_fleet_logs_in_once_and_refreshes_once_per_token_lifetime") else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    // Tokens live 1 s and are refreshed at half their life.
    let broker = Broker::start(Duration::from_secs(1));
    let plan = Plan {
        namespace: namespace("expiry"),
        threads: 8,
        call_for: Duration::from_millis(3000),
        lease_ttl: Duration::from_secs(5),
    };
    let announced = watch_generations(&redis, &plan.namespace);
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut fleet: Vec<Worker> = (0..7).map(|_| spawn_worker(&broker, &url, &plan)).collect();
    for w in &mut fleet {
        assert!(w.expect("READY").starts_with("READY owner=0"));
    }
    let mut calls = 0;
    for w in std::iter::once(&mut owner).chain(fleet.iter_mut()) {
        let (ok, err) = w.done();
        assert_eq!(err, 0, "a call failed: {:#?}", w.seen);
        calls += ok;
    }
    // 64 threads calling through each expiry never cause a second refresh.
    one_login_and_one_refresh_per_generation(&broker, &redis, &plan.namespace);
    let announced = announced.lock().unwrap().clone();
    assert!(announced.windows(2).all(|w| w[0] < w[1]), "{announced:?}");
    assert!(calls > 64, "the fleet made calls");
}

#[test]
fn followers_refused_together_cost_one_refresh() {
    let Some(url) = redis_url("followers_refused_together_cost_one_refresh") else {
        return;
    };
    // Tokens that would live a minute: every refresh here is a recovery.
    let broker = Broker::start(Duration::from_secs(60));
    let plan = Plan {
        namespace: namespace("refused"),
        threads: 4,
        call_for: Duration::from_millis(2000),
        lease_ttl: Duration::from_secs(5),
    };
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut fleet: Vec<Worker> = (0..4).map(|_| spawn_worker(&broker, &url, &plan)).collect();
    for w in &mut fleet {
        assert!(w.expect("READY").starts_with("READY owner=0"));
    }
    thread::sleep(Duration::from_millis(300));
    // IG drops the access token under everyone's feet.
    broker.fake.lock().unwrap().revoke_access_tokens();
    let mut asked_first = 0;
    for w in std::iter::once(&mut owner).chain(fleet.iter_mut()) {
        let (_, err) = w.done();
        assert_eq!(err, 0, "a call failed: {:#?}", w.seen);
        asked_first += w
            .seen
            .iter()
            .filter(|l| {
                l.starts_with("EVENT asked for a recovery of generation 1")
                    && !l.contains("already")
            })
            .count();
    }
    let stats = broker.stats();
    let refused = stats
        .rejections
        .iter()
        .filter(|(path, status, _)| path == "GET /accounts" && *status == 401)
        .count();
    assert!(
        refused >= 5,
        "several processes were refused together: {stats:?}"
    );
    assert_eq!(
        stats.refreshes, 1,
        "one refresh for the whole fleet: {stats:?}"
    );
    assert_eq!(stats.logins, 1);
    assert!(asked_first <= 1, "requests for one generation collapse");
}

#[test]
fn killing_the_owner_hands_the_session_over_without_a_login() {
    let Some(url) = redis_url("killing_the_owner_hands_the_session_over_without_a_login") else {
        return;
    };
    let broker = Broker::start(Duration::from_secs(2));
    let lease_ttl = Duration::from_secs(1);
    let plan = Plan {
        namespace: namespace("failover"),
        threads: 2,
        call_for: Duration::from_millis(4000),
        lease_ttl,
    };
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut followers: Vec<Worker> = (0..3).map(|_| spawn_worker(&broker, &url, &plan)).collect();
    for w in &mut followers {
        assert!(w.expect("READY").starts_with("READY owner=0"));
    }
    thread::sleep(Duration::from_millis(500));
    owner.signal("-KILL");
    let killed = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut waiting = Vec::new();
    for (i, mut w) in followers.into_iter().enumerate() {
        let tx = tx.clone();
        waiting.push(thread::spawn(move || {
            // The first follower to own says so; every follower ends its calls.
            let mut owned = None;
            loop {
                let line = w.expect("");
                if line.starts_with("EVENT owner") && owned.is_none() {
                    owned = Some(Instant::now());
                    let _ = tx.send((i, Instant::now()));
                }
                if line.starts_with("DONE") {
                    let line2 = line.clone();
                    w.seen.push(line2);
                    let _ = w.child.wait();
                    let err: usize = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("err="))
                        .and_then(|v| v.parse().ok())
                        .unwrap();
                    return (err, w.seen.clone());
                }
            }
        }));
    }
    drop(tx);
    let (_, owned_at) = rx.recv_timeout(PATIENCE).expect("a follower took over");
    let took = owned_at - killed;
    assert!(
        took <= lease_ttl + Duration::from_secs(1),
        "take-over after {took:?}"
    );
    for t in waiting {
        let (err, seen) = t.join().unwrap();
        assert_eq!(err, 0, "a call was lost: {seen:#?}");
    }
    let stats = broker.stats();
    assert_eq!(stats.logins, 1, "the new owner resumed: {stats:?}");
    assert!(stats.refreshes >= 1, "the new owner kept the session alive");
    assert_eq!(stats.failed_refreshes, 0);
}

#[test]
fn a_paused_owner_cannot_publish_an_older_generation() {
    let Some(url) = redis_url("a_paused_owner_cannot_publish_an_older_generation") else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    let broker = Broker::start(Duration::from_secs(2));
    let plan = Plan {
        namespace: namespace("paused"),
        threads: 1,
        call_for: Duration::from_millis(4500),
        lease_ttl: Duration::from_millis(600),
    };
    let announced = watch_generations(&redis, &plan.namespace);
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut follower = spawn_worker(&broker, &url, &plan);
    assert!(follower.expect("READY").starts_with("READY owner=0"));
    owner.signal("-STOP");
    // The follower owns once the lease lapsed, and refreshes past the paused
    // owner's generation.
    follower.expect("EVENT owner");
    let before = stored_generation(&redis, &plan.namespace);
    let end = Instant::now() + PATIENCE;
    while stored_generation(&redis, &plan.namespace) <= before + 1 {
        assert!(Instant::now() < end, "no refresh by the new owner");
        thread::sleep(Duration::from_millis(50));
    }
    owner.signal("-CONT");
    owner.expect("EVENT following");
    let (_, follower_err) = follower.done();
    let _ = owner.done();
    assert_eq!(follower_err, 0);
    let announced = announced.lock().unwrap().clone();
    assert!(
        announced.windows(2).all(|w| w[0] < w[1]),
        "generations went back: {announced:?}"
    );
    assert_eq!(
        stored_generation(&redis, &plan.namespace),
        *announced.last().unwrap()
    );
    // Nor does it refresh on its own once running again, though its refresh was
    // overdue: a refresh by the ex-owner would spend the refresh token the new owner
    // holds, and the new owner's next refresh would fail (or turn into a login).
    let stats = broker.stats();
    assert_eq!(stats.logins, 1, "{stats:?}");
    assert_eq!(stats.failed_refreshes, 0, "{stats:?}");
    assert_eq!(stats.reused_refresh_tokens, 0, "{stats:?}");
    assert_eq!(
        stats.refreshes as u64,
        stored_generation(&redis, &plan.namespace) - 1,
        "every refresh was the owner's, and published: {stats:?}"
    );
}

/// The `gen=` field of a `READY` or `DONE` line.
fn generation_in(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("gen="))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_fleet_rides_out_a_redis_restart_and_syncs_again() {
    let test = "a_fleet_rides_out_a_redis_restart_and_syncs_again";
    let Ok(binary) = std::env::var(SERVER_VAR) else {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!! {test}: SKIPPED (no redis-server binary): set {SERVER_VAR} to its path \
             (bash .ci/run does) !!!!\n"
        );
        return;
    };
    // A server of this test's own, which keeps nothing across the restart (no RDB, no
    // AOF): the lease, the stored snapshot and the counters are lost with it.
    let mut server = OwnServer::start(binary.into(), &namespace("restart-server"));
    let url = server.url();
    let end = Instant::now() + PATIENCE;
    while Redis::open(url.as_str()).and_then(|r| r.connect()).is_err() {
        assert!(
            Instant::now() < end,
            "the test's redis-server did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // 2 s tokens (a refresh about every second); the lease outlives the outage.
    let broker = Broker::start(Duration::from_secs(2));
    let plan = Plan {
        namespace: namespace("restart"),
        threads: 2,
        call_for: Duration::from_millis(7000),
        lease_ttl: Duration::from_secs(3),
    };
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut followers: Vec<Worker> = (0..2).map(|_| spawn_worker(&broker, &url, &plan)).collect();
    for w in &mut followers {
        assert!(w.expect("READY").starts_with("READY owner=0"));
    }
    let announced = watch_generations(&Redis::open(url.as_str()).unwrap(), &plan.namespace);
    thread::sleep(Duration::from_millis(1500));
    let before = stored_generation(&Redis::open(url.as_str()).unwrap(), &plan.namespace);
    let heard_before = announced.lock().unwrap().len();
    // Redis dies for a second and a half (the owner refreshes meanwhile, and cannot
    // publish), and comes back empty.
    server.kill();
    thread::sleep(Duration::from_millis(1500));
    server.run();
    let (owner_ok, owner_err) = owner.done();
    let mut ends = vec![(owner_ok, owner_err, owner.seen.last().cloned().unwrap())];
    for w in &mut followers {
        let (ok, err) = w.done();
        ends.push((ok, err, w.seen.last().cloned().unwrap()));
    }
    let redis = Redis::open(url.as_str()).unwrap();
    let stored = stored_generation(&redis, &plan.namespace);
    let stats = broker.stats();
    // Calls went on, with the generations held in memory, and none was lost.
    for (ok, err, line) in &ends {
        assert_eq!(*err, 0, "a call failed: {line}; {ends:?}");
        assert!(*ok > 100, "{line}");
    }
    // The fleet synced again: generations were announced on the new server (the
    // subscriber came back), each past the one stored before the restart, and every
    // process ended on one of them.
    let announced = announced.lock().unwrap().clone();
    let after = &announced[heard_before..];
    assert!(
        after.first().is_some_and(|g| *g > before),
        "announced {announced:?}, {heard_before} before the restart, stored then {before}"
    );
    assert!(after.windows(2).all(|w| w[0] < w[1]), "{announced:?}");
    for (_, _, line) in &ends {
        let g = generation_in(line);
        assert!(
            g >= after[0] && g <= stored,
            "{line}; announced {announced:?}"
        );
    }
    // The broker saw one login, and no refresh token spent twice.
    assert_eq!(stats.logins, 1, "{stats:?}");
    assert_eq!(stats.failed_refreshes, 0, "{stats:?}");
    assert_eq!(stats.reused_refresh_tokens, 0, "{stats:?}");
}

#[test]
fn a_snapshot_stored_in_clear_is_refused_unless_opted_in() {
    let Some(url) = redis_url("a_snapshot_stored_in_clear_is_refused_unless_opted_in") else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    let broker = Broker::start(Duration::from_secs(30));
    let ns = namespace("clear");
    // An owner that stores in clear, holding the lease so nobody else leads.
    let mut conn = redis.connect().unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "test", Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let clear = || Sealing::Unsealed {
        i_understand_tokens_are_stored_in_clear: (),
    };
    let ig = || {
        let mut ig = broker.ig(LoginFlow::V3);
        ig.request_deadline = Duration::from_secs(2);
        ig
    };
    let transport = broker.transport();
    let http_client = HttpClient::new(&transport).unwrap();
    let plain = broker_session_ureq::Client::ig(ig(), &transport).unwrap();
    plain.login().unwrap();
    let snapshot = plain
        .with_machine(|m| m.snapshot())
        .unwrap()
        .expose_secrets();
    GenerationStore::new(&ns, clear())
        .unwrap()
        .publish(
            &mut conn,
            &lease,
            1,
            &serde_json::to_vec(&snapshot).unwrap(),
        )
        .unwrap();

    // A follower with a key refuses it, and its calls are not sent with it.
    let sealed = SharedIgSession::start(
        ig(),
        &http_client,
        &redis,
        SharedConfig::new(ns.as_str(), Sealing::Sealed(SealingKey::from_bytes(KEY))),
    )
    .unwrap();
    assert_eq!(sealed.generation(), 0);
    assert!(
        sealed
            .drain_events()
            .iter()
            .any(|e| matches!(e, FleetEvent::Failed(Error::UnsealedSnapshotRefused { .. })))
    );
    let request = || {
        http::Request::get("/accounts")
            .header("Version", "1")
            .body(Vec::new())
            .unwrap()
    };
    assert!(sealed.send(request()).is_err());
    // Opted in, it adopts and calls.
    let opted = SharedIgSession::start(
        ig(),
        &http_client,
        &redis,
        SharedConfig::new(ns.as_str(), clear()),
    )
    .unwrap();
    assert_eq!(opted.generation(), 1);
    assert_eq!(opted.send(request()).unwrap().status(), 200);
    assert_eq!(broker.logins(), 1);
    assert_eq!(broker.refreshes(), 0);
}

#[test]
fn fleet_events_and_stored_snapshots_show_no_secret() {
    let Some(url) = redis_url("fleet_events_and_stored_snapshots_show_no_secret") else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    let broker = Broker::start(Duration::from_secs(1));
    let ns = namespace("secrets");
    let transport = broker.transport();
    let http_client = HttpClient::new(&transport).unwrap();
    let ig = || broker.ig(LoginFlow::V3);
    let config = |n: &str| {
        let mut c = SharedConfig::new(ns.as_str(), Sealing::Sealed(SealingKey::from_bytes(KEY)));
        c.process = n.to_owned();
        c.lease_ttl = Duration::from_millis(500);
        c
    };
    let owner = SharedIgSession::start(ig(), &http_client, &redis, config("a")).unwrap();
    let follower = SharedIgSession::start(ig(), &http_client, &redis, config("b")).unwrap();
    let mut scan = broker_session_testkit::secret_scan::SecretScan::new();
    scan.add("password", FakeIgConfig::default().password);
    scan.add("sealing key", KEY);
    let add_tokens =
        |s: &SharedIgSession, scan: &mut broker_session_testkit::secret_scan::SecretScan| {
            if let Some(snapshot) = s.client().with_machine(|m| m.snapshot()) {
                let json = serde_json::to_value(snapshot.expose_secrets()).unwrap();
                for field in ["access_token", "refresh_token"] {
                    scan.add(field, json["tokens"][field].as_str().unwrap());
                }
            }
        };
    let mut printed = String::new();
    let end = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < end {
        for s in [&owner, &follower] {
            let request = http::Request::get("/accounts")
                .header("Version", "1")
                .body(Vec::new())
                .unwrap();
            assert_eq!(s.send(request).unwrap().status(), 200);
            add_tokens(s, &mut scan);
            for e in s.drain_events() {
                printed.push_str(&format!("{e}\n{e:?}\n"));
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    // The owner leaves: the follower takes over (more events, another lease).
    owner.shutdown();
    thread::sleep(Duration::from_millis(300));
    for e in follower.drain_events() {
        printed.push_str(&format!("{e}\n{e:?}\n"));
    }
    printed.push_str(&format!("{follower:?}\n{owner:?}\n"));
    assert!(printed.contains("published generation"), "{printed}");
    assert!(broker.refreshes() >= 2);
    assert_eq!(scan.find(&printed), None, "a secret in the fleet's output");
    // What Redis holds is sealed: no token in it, in any encoding.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Vec<u8> = redis::cmd("HGET")
        .arg(format!("broker-session:{{{ns}}}:snapshot"))
        .arg("blob")
        .query(&mut conn)
        .unwrap();
    assert!(!stored.is_empty());
    assert_eq!(scan.find(&String::from_utf8_lossy(&stored)), None);
}

#[test]
fn a_new_owner_stores_again_what_redis_lost() {
    let Some(url) = redis_url("a_new_owner_stores_again_what_redis_lost") else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    let broker = Broker::start(Duration::from_secs(60));
    let ns = namespace("lost");
    let transport = broker.transport();
    let http_client = HttpClient::new(&transport).unwrap();
    let ig = || broker.ig(LoginFlow::V2);
    let config = || {
        let mut c = SharedConfig::new(ns.as_str(), Sealing::Sealed(SealingKey::from_bytes(KEY)));
        c.lease_ttl = Duration::from_millis(500);
        c
    };
    let first = SharedIgSession::start(ig(), &http_client, &redis, config()).unwrap();
    let second = SharedIgSession::start(ig(), &http_client, &redis, config()).unwrap();
    assert!(first.is_owner() && !second.is_owner());
    assert_eq!(second.generation(), 1);
    // Redis loses the snapshot (restarted without persistence), then the owner leaves.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("broker-session:{{{ns}}}:snapshot"))
        .query(&mut conn)
        .unwrap();
    first.shutdown();
    let end = Instant::now() + PATIENCE;
    while stored_generation(&redis, &ns) == 0 {
        assert!(
            Instant::now() < end,
            "the new owner did not store the session"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(second.is_owner());
    // A process joining now adopts it and calls without a login.
    let third = SharedIgSession::start(ig(), &http_client, &redis, config()).unwrap();
    assert!(!third.is_owner());
    let request = http::Request::get("/accounts")
        .header("Version", "1")
        .body(Vec::new())
        .unwrap();
    assert_eq!(third.send(request).unwrap().status(), 200);
    assert_eq!(broker.logins(), 1);
}

/// The async form, `AsyncSharedIgSession`, in fleets with blocking processes.
#[cfg(feature = "async")]
mod on_tokio {
    use super::*;
    use broker_session_redis::AsyncSharedIgSession;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn config(plan: &Plan) -> SharedConfig {
        let mut config = SharedConfig::new(
            plan.namespace.clone(),
            Sealing::Sealed(SealingKey::from_bytes(KEY)),
        );
        config.lease_ttl = plan.lease_ttl;
        config.poll_interval = Duration::from_millis(500);
        config
    }

    fn ig(broker: &Broker) -> IgConfig {
        let mut ig = broker.ig(LoginFlow::V3);
        ig.request_deadline = Duration::from_secs(10);
        ig
    }

    fn accounts() -> http::Request<Vec<u8>> {
        http::Request::get("/accounts")
            .header("Version", "1")
            .body(Vec::new())
            .unwrap()
    }

    /// Calls from `tasks` tasks until `end`; returns (ok, failed).
    async fn call_until(
        shared: Arc<AsyncSharedIgSession>,
        tasks: usize,
        end: Instant,
    ) -> (usize, usize) {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let (mut ok, mut err) = (0, 0);
                    while Instant::now() < end {
                        match shared.send(accounts()).await {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) => {
                                eprintln!("async session: HTTP {}", r.status());
                                err += 1;
                            }
                            Err(e) => {
                                eprintln!("async session: {e}");
                                err += 1;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (ok, err)
                })
            })
            .collect();
        let mut total = (0, 0);
        for h in handles {
            let (ok, err) = h.await.unwrap();
            total = (total.0 + ok, total.1 + err);
        }
        total
    }

    #[test]
    fn async_sessions_and_a_blocking_process_share_one_login() {
        let Some(url) = redis_url("async_sessions_and_a_blocking_process_share_one_login") else {
            return;
        };
        let redis = Redis::open(url.as_str()).unwrap();
        // Tokens live 1 s: the async owner must refresh them on its own timers.
        let broker = Broker::start(Duration::from_secs(1));
        let plan = Plan {
            namespace: namespace("async-mixed"),
            threads: 4,
            call_for: Duration::from_millis(3000),
            lease_ttl: Duration::from_secs(5),
        };
        let rt = runtime();
        let http_client = rt.block_on(async {
            broker_session_hyper::HttpClient::new(&broker.transport()).unwrap()
        });
        let owner = rt
            .block_on(AsyncSharedIgSession::start(
                ig(&broker),
                &http_client,
                &redis,
                config(&plan),
            ))
            .unwrap();
        assert!(owner.is_owner(), "the first session leads");
        assert_eq!(owner.generation(), 1);
        let mut worker = spawn_worker(&broker, &url, &plan);
        assert_eq!(worker.expect("READY"), "READY owner=0 gen=1");
        let follower = rt
            .block_on(AsyncSharedIgSession::start(
                ig(&broker),
                &http_client,
                &redis,
                config(&plan),
            ))
            .unwrap();
        assert!(!follower.is_owner());
        assert_eq!(follower.generation(), 1);
        let (owner, follower) = (Arc::new(owner), Arc::new(follower));
        let end = Instant::now() + Duration::from_millis(3000);
        let ((owner_ok, owner_err), (follower_ok, follower_err)) = rt.block_on(async {
            tokio::join!(
                call_until(Arc::clone(&owner), 4, end),
                call_until(Arc::clone(&follower), 4, end)
            )
        });
        let (worker_ok, worker_err) = worker.done();
        assert_eq!(worker_err, 0, "a blocking call failed: {:#?}", worker.seen);
        assert_eq!((owner_err, follower_err), (0, 0), "an async call failed");
        assert!(owner_ok > 0 && follower_ok > 0 && worker_ok > 0);
        let events: Vec<String> = follower
            .drain_events()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            events.iter().any(|e| e.starts_with("adopted generation")),
            "{events:?}"
        );
        rt.block_on(owner.shutdown());
        rt.block_on(follower.shutdown());
        // The async owner's timers refreshed the tokens, once per generation.
        one_login_and_one_refresh_per_generation(&broker, &redis, &plan.namespace);
        assert!(follower.generation() >= 3, "the follower kept up");
    }

    #[test]
    fn a_refused_async_follower_gets_newer_credentials_and_replays_once() {
        let Some(url) =
            redis_url("a_refused_async_follower_gets_newer_credentials_and_replays_once")
        else {
            return;
        };
        let redis = Redis::open(url.as_str()).unwrap();
        // Tokens that would live a minute: the refresh here is the recovery.
        let broker = Broker::start(Duration::from_secs(60));
        let plan = Plan {
            namespace: namespace("async-refused"),
            threads: 0,
            call_for: Duration::from_millis(4000),
            lease_ttl: Duration::from_secs(5),
        };
        let mut owner = spawn_worker(&broker, &url, &plan);
        assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
        let rt = runtime();
        let follower = rt.block_on(async {
            let http_client = broker_session_hyper::HttpClient::new(&broker.transport()).unwrap();
            AsyncSharedIgSession::start(ig(&broker), &http_client, &redis, config(&plan)).await
        });
        let follower = follower.unwrap();
        assert!(!follower.is_owner());
        assert_eq!(follower.generation(), 1);
        let before = rt.block_on(follower.send(accounts())).unwrap();
        assert_eq!(before.status(), 200);
        // IG drops the access token the follower holds.
        broker.fake.lock().unwrap().revoke_access_tokens();
        let after = rt.block_on(follower.send(accounts())).unwrap();
        assert_eq!(after.status(), 200, "replayed with the newer credentials");
        assert_eq!(follower.generation(), 2);
        let stats = broker.stats();
        assert_eq!(stats.refreshes, 1, "one refresh for the fleet: {stats:?}");
        assert_eq!(stats.logins, 1);
        // The first call, the refused one and one replay.
        assert_eq!(stats.count("GET /accounts"), 3, "{stats:?}");
        let refused = stats
            .rejections
            .iter()
            .filter(|(path, status, _)| path == "GET /accounts" && *status == 401)
            .count();
        assert_eq!(refused, 1, "{stats:?}");
        // The adoption is reported once the coordinator has handed it to the session,
        // which may be after the replayed call it let through.
        let mut events: Vec<String> = Vec::new();
        let end = Instant::now() + PATIENCE;
        while !events.iter().any(|e| e == "adopted generation 2") && Instant::now() < end {
            events.extend(follower.drain_events().iter().map(ToString::to_string));
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            events.contains(&"asked for a recovery of generation 1".to_owned()),
            "{events:?}"
        );
        assert!(
            events.contains(&"adopted generation 2".to_owned()),
            "{events:?}"
        );
        let (_, err) = owner.done();
        assert_eq!(err, 0);
        assert!(
            owner
                .seen
                .iter()
                .any(|l| l == "EVENT recovering generation 1"),
            "the blocking owner ran the recovery: {:#?}",
            owner.seen
        );
        rt.block_on(follower.shutdown());
        assert!(!follower.is_owner());
    }

    /// A current-thread runtime (what `#[tokio::test]` gives): the coordinator never
    /// blocks on it, so the owner's refreshes and a takeover still run while the one
    /// runtime thread awaits.
    #[test]
    fn async_sessions_hand_over_on_a_current_thread_runtime_and_show_no_secret() {
        let Some(url) =
            redis_url("async_sessions_hand_over_on_a_current_thread_runtime_and_show_no_secret")
        else {
            return;
        };
        let redis = Redis::open(url.as_str()).unwrap();
        let broker = Broker::start(Duration::from_secs(1));
        let plan = Plan {
            namespace: namespace("async-handover"),
            threads: 0,
            call_for: Duration::ZERO,
            lease_ttl: Duration::from_millis(500),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut scan = broker_session_testkit::secret_scan::SecretScan::new();
        scan.add("password", FakeIgConfig::default().password);
        scan.add("sealing key", KEY);
        let printed = rt.block_on(async {
            let http_client = broker_session_hyper::HttpClient::new(&broker.transport()).unwrap();
            let mut config = config(&plan);
            config.process = "a".to_owned();
            let owner = AsyncSharedIgSession::start(ig(&broker), &http_client, &redis, config)
                .await
                .unwrap();
            let mut config = self::config(&plan);
            config.process = "b".to_owned();
            let follower = AsyncSharedIgSession::start(ig(&broker), &http_client, &redis, config)
                .await
                .unwrap();
            assert!(owner.is_owner() && !follower.is_owner());
            let mut printed = String::new();
            let end = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < end {
                for s in [&owner, &follower] {
                    assert_eq!(s.send(accounts()).await.unwrap().status(), 200);
                    if let Some(snapshot) = s.client().with_machine(|m| m.snapshot()) {
                        let json = serde_json::to_value(snapshot.expose_secrets()).unwrap();
                        for field in ["access_token", "refresh_token"] {
                            scan.add(field, json["tokens"][field].as_str().unwrap());
                        }
                    }
                    for e in s.drain_events() {
                        printed.push_str(&format!("{e}\n{e:?}\n"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(broker.refreshes() >= 2, "the owner refreshed on its timers");
            // The owner leaves: the follower resumes the session, without a login.
            owner.shutdown().await;
            let end = Instant::now() + PATIENCE;
            while !follower.is_owner() {
                assert!(Instant::now() < end, "no takeover");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(follower.send(accounts()).await.unwrap().status(), 200);
            // The role changes when the take-over starts; the resume is reported
            // when it has ended, which may come after the call it let through.
            let end = Instant::now() + PATIENCE;
            while !printed.contains("resumed generation") && Instant::now() < end {
                for e in follower.drain_events() {
                    printed.push_str(&format!("{e}\n{e:?}\n"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            printed.push_str(&format!("{follower:?}\n{owner:?}\n"));
            follower.shutdown().await;
            printed
        });
        assert!(printed.contains("published generation"), "{printed}");
        assert!(printed.contains("resumed generation"), "{printed}");
        assert_eq!(broker.logins(), 1, "the takeover resumed: {printed}");
        assert_eq!(scan.find(&printed), None, "a secret in the fleet's output");
    }

    /// A start cut short (its future dropped, here by a timeout) still leaves the
    /// fleet once it has joined: it holds no lease for ever.
    #[test]
    fn a_start_cut_short_leaves_the_lease_to_others() {
        let Some(url) = redis_url("a_start_cut_short_leaves_the_lease_to_others") else {
            return;
        };
        let redis = Redis::open(url.as_str()).unwrap();
        let broker = Broker::start(Duration::from_secs(60));
        let plan = Plan {
            namespace: namespace("async-cut-short"),
            threads: 0,
            call_for: Duration::ZERO,
            lease_ttl: Duration::from_millis(500),
        };
        let rt = runtime();
        let http_client = rt.block_on(async {
            broker_session_hyper::HttpClient::new(&broker.transport()).unwrap()
        });
        let cut = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(1),
                AsyncSharedIgSession::start(ig(&broker), &http_client, &redis, config(&plan)),
            )
            .await
        });
        assert!(
            cut.is_err(),
            "a start (Redis, a TLS login) takes longer than 1 ms"
        );
        let second = rt
            .block_on(AsyncSharedIgSession::start(
                ig(&broker),
                &http_client,
                &redis,
                config(&plan),
            ))
            .unwrap();
        let end = Instant::now() + PATIENCE;
        while !second.is_owner() {
            assert!(Instant::now() < end, "the cut-short start kept the lease");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rt.block_on(second.send(accounts())).unwrap().status(), 200);
        rt.block_on(second.shutdown());
    }

    #[test]
    fn starting_outside_a_runtime_is_a_typed_error() {
        // Refused before Redis is reached: no server needed.
        let redis = Redis::open("redis://127.0.0.1:1/").unwrap();
        let broker = Broker::start(Duration::from_secs(60));
        let rt = runtime();
        let http_client = rt.block_on(async {
            broker_session_hyper::HttpClient::new(&broker.transport()).unwrap()
        });
        let plan = Plan {
            namespace: namespace("async-no-runtime"),
            threads: 0,
            call_for: Duration::ZERO,
            lease_ttl: Duration::from_secs(5),
        };
        // Polled by hand, outside any runtime.
        let start = AsyncSharedIgSession::start(ig(&broker), &http_client, &redis, config(&plan));
        let mut start = std::pin::pin!(start);
        let waker = std::task::Waker::noop();
        let polled = start
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        match polled {
            std::task::Poll::Ready(Err(Error::Session(broker_session_hyper::Error::NoRuntime))) => {
            }
            other => panic!("expected NoRuntime, got {:?}", other.map(|r| r.map(drop))),
        }
        assert_eq!(broker.logins(), 0);
    }
}
