//! A fleet of processes sharing one IBKR login, against a real Redis
//! (`BROKER_SESSION_REDIS_URL`; without it each test prints SKIPPED and returns) and
//! the test kit's fake IBKR (OAuth 1.0a with its real server side, or a Client Portal
//! Gateway), served by the test process over HTTPS on loopback.
//!
//! As in `fleet.rs`, each test starts worker processes: this test binary again,
//! running only `ibkr_worker_process` with `FLEET_IBKR_WORKER` set. A worker joins the
//! fleet with a `SharedIbkrSession`, calls `GET /iserver/accounts` from several threads
//! for a while, and reports on stdout (`READY`, one `EVENT` line per fleet event,
//! `DONE ok=… err=…`). The fake records every request it answered, so the tests count
//! what IBKR saw: live session token requests, tickles, `ssodh/init`s.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use broker_session_redis::{
    FleetEvent, Redis, Sealing, SealingKey, SharedConfig, SharedIbkrSession,
};
use broker_session_testkit::ibkr::{BASE_PATH, FakeIbkr};
use broker_session_testkit::secret_scan::SecretScan;
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_ureq::{Config, HttpClient, IbkrConfig, Tls, http};

mod workers;
use workers::Worker;

const URL_VAR: &str = "BROKER_SESSION_REDIS_URL";
const WORKER_VAR: &str = "FLEET_IBKR_WORKER";
/// How long any "eventually" may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(20);
const KEY: [u8; 32] = [0x3c; 32];
const LST_PATH: &str = "/oauth/live_session_token";

fn redis_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!! {test}: SKIPPED (no Redis): set {URL_VAR} (bash .ci/run starts a redis-server) !!!!\n"
            );
            None
        }
    }
}

fn namespace(test: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    format!("fleet-ibkr-{test}-{:016x}", u64::from_le_bytes(bytes))
}

/// The fake IBKR on loopback.
struct Broker {
    server: Server,
    fake: Arc<Mutex<FakeIbkr>>,
    pem_path: std::path::PathBuf,
    oauth: bool,
    dir: std::path::PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Broker {
    fn start(oauth: bool) -> Self {
        let fake = if oauth {
            FakeIbkr::oauth(false).0
        } else {
            FakeIbkr::gateway()
        };
        let fake = Arc::new(Mutex::new(fake));
        let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).unwrap();
        let dir = std::env::temp_dir().join(namespace("pem"));
        std::fs::create_dir_all(&dir).unwrap();
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, server.trust_pem()).unwrap();
        Self {
            server,
            fake,
            pem_path,
            oauth,
            dir,
        }
    }

    fn base_url(&self) -> String {
        format!("{}{BASE_PATH}", self.server.https_url())
    }

    fn count(&self, path: &str) -> usize {
        self.fake.lock().unwrap().requests_to(path).count()
    }

    fn token_requests(&self) -> usize {
        self.count(LST_PATH)
    }

    /// The secrets no worker may print: the live session token and the access token
    /// secret.
    fn secrets(&self) -> SecretScan {
        let mut scan = SecretScan::new();
        let mut fake = self.fake.lock().unwrap();
        if let Some(lst) = fake.oauth_server().and_then(|s| s.current_lst()) {
            scan.add("live session token", lst);
        }
        let (_, oauth) = FakeIbkr::oauth(false);
        scan.add(
            "access token secret",
            oauth.access_token_secret.expose_secret(),
        );
        scan
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
        "ibkr_worker_process",
        &[
            (WORKER_VAR, "1".to_owned()),
            (URL_VAR, redis.to_owned()),
            ("FLEET_BASE_URL", broker.base_url()),
            ("FLEET_OAUTH", u8::from(broker.oauth).to_string()),
            ("FLEET_CA", broker.pem_path.display().to_string()),
            ("FLEET_NAMESPACE", plan.namespace.clone()),
            ("FLEET_THREADS", plan.threads.to_string()),
            ("FLEET_CALL_MS", plan.call_for.as_millis().to_string()),
            ("FLEET_LEASE_MS", plan.lease_ttl.as_millis().to_string()),
        ],
    )
}

/// The worker: joins the fleet, calls from several threads, reports.
#[test]
fn ibkr_worker_process() {
    if std::env::var(WORKER_VAR).is_err() {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap();
    let ms = |name: &str| Duration::from_millis(env(name).parse().unwrap());
    let mut ibkr = if env("FLEET_OAUTH") == "1" {
        IbkrConfig::oauth(FakeIbkr::oauth(false).1)
    } else {
        IbkrConfig::gateway()
    };
    ibkr.base_url = env("FLEET_BASE_URL");
    ibkr.request_deadline = Duration::from_secs(10);
    // Compressed time: the keep-alive tickles every second (IBKR's pacing floor).
    ibkr.tickle_interval = Duration::from_secs(1);
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
    let shared = Arc::new(SharedIbkrSession::start(ibkr, &http_client, &redis, config).unwrap());
    let print = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let report = |shared: &SharedIbkrSession| {
        for event in shared.drain_events() {
            match event {
                FleetEvent::Session(e) => print(format!("SESSION {e} {e:?}")),
                other => print(format!("EVENT {other} {other:?}")),
            }
        }
        print(format!("CLIENT {:?}", shared));
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
                    let request = http::Request::get("/iserver/accounts")
                        .body(Vec::new())
                        .unwrap();
                    match shared.send(request) {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("worker {}: HTTP {}", std::process::id(), r.status());
                            err.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("worker {}: {e} {e:?}", std::process::id());
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
    drop(shared);
    std::process::exit(0);
}

/// Waits for every worker's `DONE`; asserts no call failed and nothing secret was
/// printed. Returns the calls made.
fn finish(broker: &Broker, workers: &mut [Worker]) -> usize {
    let scan = broker.secrets();
    let mut calls = 0;
    for w in workers.iter_mut() {
        let (ok, err) = w.done();
        assert_eq!(err, 0, "a call failed: {:#?}", w.seen);
        for line in &w.seen {
            scan.assert_clean("a worker's output", line);
        }
        calls += ok;
    }
    calls
}

fn spawn_fleet(broker: &Broker, url: &str, plan: &Plan, followers: usize) -> Vec<Worker> {
    let mut owner = spawn_worker(broker, url, plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let mut fleet = vec![owner];
    for _ in 0..followers {
        let mut w = spawn_worker(broker, url, plan);
        assert_eq!(w.expect("READY"), "READY owner=0 gen=1");
        fleet.push(w);
    }
    fleet
}

#[test]
fn an_oauth_fleet_asks_for_one_live_session_token() {
    let Some(url) = redis_url("an_oauth_fleet_asks_for_one_live_session_token") else {
        return;
    };
    let broker = Broker::start(true);
    let plan = Plan {
        namespace: namespace("one-lst"),
        threads: 4,
        call_for: Duration::from_millis(2500),
        lease_ttl: Duration::from_secs(5),
    };
    let mut fleet = spawn_fleet(&broker, &url, &plan, 7);
    let calls = finish(&broker, &mut fleet);
    assert!(calls > 32, "the fleet made calls: {calls}");
    assert_eq!(broker.token_requests(), 1, "one token for eight processes");
    let mut fake = broker.fake.lock().unwrap();
    assert_eq!(fake.oauth_server().unwrap().bad_signatures, 0);
    // One process's tickles (every second, a bit over the run), not eight.
    let tickles = fake.requests_to("/tickle").count();
    assert!(tickles <= 10, "{tickles} tickles in a few seconds");
    assert_eq!(fake.requests_to("/iserver/auth/ssodh/init").count(), 1);
}

#[test]
fn followers_refused_together_cost_one_token_renewal() {
    let Some(url) = redis_url("followers_refused_together_cost_one_token_renewal") else {
        return;
    };
    let broker = Broker::start(true);
    let plan = Plan {
        namespace: namespace("refused"),
        threads: 4,
        call_for: Duration::from_millis(2500),
        lease_ttl: Duration::from_secs(5),
    };
    let mut fleet = spawn_fleet(&broker, &url, &plan, 4);
    thread::sleep(Duration::from_millis(400));
    let refused_before = broker.fake.lock().unwrap().requests.len();
    // IBKR forgets the live session token under everyone's feet.
    broker.fake.lock().unwrap().oauth_server().unwrap().revoke();
    finish(&broker, &mut fleet);
    assert_eq!(
        broker.token_requests(),
        2,
        "one renewal for the whole fleet"
    );
    let asked_first: usize = fleet
        .iter()
        .flat_map(|w| &w.seen)
        .filter(|l| {
            l.starts_with("EVENT asked for a recovery of generation 1") && !l.contains("already")
        })
        .count();
    assert!(asked_first <= 1, "requests for one generation collapse");
    let fake = broker.fake.lock().unwrap();
    let after: Vec<_> = fake.requests[refused_before..].iter().collect();
    assert!(
        after.iter().any(|r| r.path == "/iserver/accounts"),
        "calls went on after the refusal"
    );
}

#[test]
fn killing_the_oauth_owner_hands_the_session_over_without_a_token_request() {
    let Some(url) =
        redis_url("killing_the_oauth_owner_hands_the_session_over_without_a_token_request")
    else {
        return;
    };
    let broker = Broker::start(true);
    let lease_ttl = Duration::from_secs(1);
    let plan = Plan {
        namespace: namespace("failover"),
        threads: 2,
        call_for: Duration::from_millis(4000),
        lease_ttl,
    };
    let mut fleet = spawn_fleet(&broker, &url, &plan, 3);
    let owner = fleet.remove(0);
    thread::sleep(Duration::from_millis(500));
    let tickles_before = broker.count("/tickle");
    owner.signal("-KILL");
    let killed = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut waiting = Vec::new();
    for mut w in fleet {
        let tx = tx.clone();
        waiting.push(thread::spawn(move || {
            let mut owned = false;
            loop {
                let line = w.expect("");
                if line.starts_with("EVENT owner") && !owned {
                    owned = true;
                    let _ = tx.send(Instant::now());
                }
                if line.starts_with("DONE") {
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
    let owned_at = rx.recv_timeout(PATIENCE).expect("a follower took over");
    let took = owned_at - killed;
    assert!(
        took <= lease_ttl + Duration::from_secs(1),
        "take-over after {took:?}"
    );
    let scan = broker.secrets();
    for t in waiting {
        let (err, seen) = t.join().unwrap();
        assert_eq!(err, 0, "a call was lost: {seen:#?}");
        for line in &seen {
            scan.assert_clean("a worker's output", line);
        }
    }
    assert_eq!(
        broker.token_requests(),
        1,
        "take-over with the stored token"
    );
    assert!(
        broker.count("/tickle") > tickles_before,
        "the new owner keeps the session alive"
    );
    assert_eq!(broker.count("/iserver/auth/ssodh/init"), 1);
}

#[test]
fn a_gateway_fleet_tickles_from_one_process_and_recovers_once_without_competing() {
    let Some(url) =
        redis_url("a_gateway_fleet_tickles_from_one_process_and_recovers_once_without_competing")
    else {
        return;
    };
    let broker = Broker::start(false);
    let lease_ttl = Duration::from_secs(1);
    let plan = Plan {
        namespace: namespace("gateway"),
        threads: 3,
        call_for: Duration::from_millis(6000),
        lease_ttl,
    };
    let mut fleet = spawn_fleet(&broker, &url, &plan, 4);
    thread::sleep(Duration::from_millis(800));
    // The brokerage session drops: every process sees "no bridge" at once.
    broker.fake.lock().unwrap().drop_brokerage_session();
    thread::sleep(Duration::from_millis(800));
    // The owner dies; another platform holds the username meanwhile.
    let owner = fleet.remove(0);
    owner.signal("-KILL");
    let killed_at = {
        let mut fake = broker.fake.lock().unwrap();
        fake.competing = true;
        fake.requests.len()
    };
    // The new owner's take-over is a status check; then it keeps tickling, and every
    // tickle reports the competing session. Nobody takes it over.
    let end = Instant::now() + PATIENCE;
    loop {
        let checked = broker.fake.lock().unwrap().requests[killed_at..]
            .iter()
            .any(|r| r.path == "/iserver/auth/status");
        if checked {
            break;
        }
        assert!(Instant::now() < end, "no take-over after the owner died");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1500));
    {
        let mut fake = broker.fake.lock().unwrap();
        assert!(
            fake.requests[killed_at..]
                .iter()
                .any(|r| r.path == "/tickle"),
            "the new owner tickles"
        );
        assert!(
            fake.competing,
            "the other platform's session was taken over"
        );
        fake.competing = false;
    }
    finish(&broker, &mut fleet);
    let fake = broker.fake.lock().unwrap();
    // The first owner's init and one recovery; the take-over was a status check.
    assert_eq!(fake.requests_to("/iserver/auth/ssodh/init").count(), 2);
    // About one tickle a second for the whole fleet over ~8 s, not one per process
    // (five processes tickling on their own would send about 40).
    let tickles = fake.requests_to("/tickle").count();
    assert!(
        tickles <= 12,
        "{tickles} tickles in about 8 s from 5 processes"
    );
    assert!(tickles >= 2, "the fleet was kept alive: {tickles}");
}

#[cfg(feature = "async")]
#[test]
fn a_refused_async_ibkr_follower_gets_a_newer_token_and_replays_once() {
    use broker_session_redis::AsyncSharedIbkrSession;

    let Some(url) = redis_url("a_refused_async_ibkr_follower_gets_a_newer_token_and_replays_once")
    else {
        return;
    };
    let redis = Redis::open(url.as_str()).unwrap();
    let broker = Broker::start(true);
    let plan = Plan {
        namespace: namespace("async-refused"),
        threads: 0,
        call_for: Duration::from_millis(4000),
        lease_ttl: Duration::from_secs(5),
    };
    // A blocking owner process, an async follower in this one.
    let mut owner = spawn_worker(&broker, &url, &plan);
    assert_eq!(owner.expect("READY"), "READY owner=1 gen=1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let follower = rt
        .block_on(async {
            let mut transport = Config::default();
            transport.tls = Tls::Pem(broker.server.trust_pem().as_bytes().to_vec());
            let http_client = broker_session_hyper::HttpClient::new(&transport).unwrap();
            let mut ibkr = IbkrConfig::oauth(FakeIbkr::oauth(false).1);
            ibkr.base_url = broker.base_url();
            let mut config = SharedConfig::new(
                plan.namespace.as_str(),
                Sealing::Sealed(SealingKey::from_bytes(KEY)),
            );
            config.lease_ttl = plan.lease_ttl;
            config.poll_interval = Duration::from_millis(500);
            AsyncSharedIbkrSession::start(ibkr, &http_client, &redis, config).await
        })
        .unwrap();
    assert!(!follower.is_owner());
    assert_eq!(follower.generation(), 1);
    let accounts = || {
        http::Request::get("/iserver/accounts")
            .body(Vec::new())
            .unwrap()
    };
    let before = rt.block_on(follower.send(accounts())).unwrap();
    assert_eq!(before.status(), 200);
    let calls_before = broker.count("/iserver/accounts");
    // IBKR forgets the token the follower holds.
    broker.fake.lock().unwrap().oauth_server().unwrap().revoke();
    let after = rt.block_on(follower.send(accounts())).unwrap();
    assert_eq!(after.status(), 200, "replayed with the newer token");
    assert_eq!(follower.generation(), 2);
    assert_eq!(broker.token_requests(), 2, "one renewal for the fleet");
    // The refused call and one replay.
    assert_eq!(broker.count("/iserver/accounts") - calls_before, 2);
    // The coordinator reports the adoption once it has handed it to the session,
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
    rt.block_on(follower.shutdown());
    let (_, err) = owner.done();
    assert_eq!(err, 0);
    assert!(
        owner
            .seen
            .iter()
            .any(|l| l.starts_with("EVENT recovering generation 1")),
        "the blocking owner ran the recovery: {:#?}",
        owner.seen
    );
}

#[test]
fn a_paused_oauth_owner_steps_down_without_asking_for_a_token() {
    let Some(url) = redis_url("a_paused_oauth_owner_steps_down_without_asking_for_a_token") else {
        return;
    };
    let broker = Broker::start(true);
    let plan = Plan {
        namespace: namespace("paused"),
        threads: 1,
        call_for: Duration::from_millis(4500),
        lease_ttl: Duration::from_millis(600),
    };
    let mut fleet = spawn_fleet(&broker, &url, &plan, 1);
    let mut follower = fleet.pop().unwrap();
    let mut owner = fleet.pop().unwrap();
    owner.signal("-STOP");
    // The follower owns once the lease lapsed, with the stored token.
    follower.expect("EVENT owner");
    thread::sleep(Duration::from_millis(500));
    owner.signal("-CONT");
    // The paused owner, running again, follows: its overdue timers asked for nothing.
    owner.expect("EVENT following");
    let scan = broker.secrets();
    for w in [&mut follower, &mut owner] {
        let (_, err) = w.done();
        assert_eq!(err, 0, "a call failed: {:#?}", w.seen);
        for line in &w.seen {
            scan.assert_clean("a worker's output", line);
        }
    }
    assert_eq!(broker.token_requests(), 1, "one token for the fleet, ever");
    assert_eq!(broker.count("/iserver/auth/ssodh/init"), 1);
}
