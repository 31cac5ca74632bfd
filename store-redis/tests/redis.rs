//! Against a real Redis: `BROKER_SESSION_REDIS_URL` (`.ci/run` starts one). Without it,
//! each test says SKIPPED on stderr and returns. Every test works in its own random
//! namespace, so they run in parallel against one server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_session_redis::{
    Connection, Error, GenerationStore, Lease, Notice, Redis, Sealing, SealingKey,
};

mod own_server;
use own_server::OwnServer;

const URL_VAR: &str = "BROKER_SESSION_REDIS_URL";
const SERVER_VAR: &str = "BROKER_SESSION_REDIS_SERVER";
/// Set in the child processes of `one_owner_among_processes`.
const CHILD_VAR: &str = "BROKER_SESSION_REDIS_TEST_CHILD";
/// How long any "eventually" in these tests may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// Says a test was skipped, on the process's stderr: the test harness captures `eprintln!`
/// of passing tests, and a skip must never pass unseen.
fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "\n!!!! {test}: SKIPPED {why} !!!!\n");
}

fn redis_or_skip(test: &str) -> Option<Redis> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => {
            Some(Redis::open(url).expect("BROKER_SESSION_REDIS_URL opens"))
        }
        _ => {
            skipped(
                test,
                &format!("(no Redis): set {URL_VAR} (bash .ci/run starts a redis-server)"),
            );
            None
        }
    }
}

/// A fresh namespace: the test's name and 64 random bits.
fn namespace(test: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    format!("test-{test}-{:016x}", u64::from_le_bytes(bytes))
}

fn key(byte: u8) -> Sealing {
    Sealing::Sealed(SealingKey::from_bytes([byte; 32]))
}

fn clear() -> Sealing {
    Sealing::Unsealed {
        i_understand_tokens_are_stored_in_clear: (),
    }
}

/// Calls `f` until it returns `Some`, for at most [`PATIENCE`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits out `lease` (never renewed): another contender takes it once it has expired.
fn take_over(conn: &mut Connection, ns: &str, owner: &str, ttl: Duration) -> Lease {
    eventually("the lease expires and another owner takes it", || {
        Lease::try_acquire(conn, ns, owner, ttl).unwrap()
    })
}

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(30);

#[test]
fn one_owner_among_racing_threads() {
    let Some(redis) = redis_or_skip("one_owner_among_racing_threads") else {
        return;
    };
    let ns = namespace("threads");
    let barrier = Arc::new(Barrier::new(8));
    let winners: Vec<_> = (0..8)
        .map(|i| {
            let (redis, ns, barrier) = (redis.clone(), ns.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let mut conn = redis.connect().unwrap();
                barrier.wait();
                Lease::try_acquire(&mut conn, &ns, &format!("thread-{i}"), LONG)
                    .unwrap()
                    .map(|lease| lease.token())
            })
        })
        .collect::<Vec<_>>() // all spawned before any is joined
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one thread owns: {winners:?}");
}

#[test]
fn renewal_extends_for_the_owner_only() {
    let Some(redis) = redis_or_skip("renewal_extends_for_the_owner_only") else {
        return;
    };
    let ns = namespace("renew");
    let mut conn = redis.connect().unwrap();
    let mut first = Lease::try_acquire(&mut conn, &ns, "first", SHORT)
        .unwrap()
        .unwrap();
    first.renew(&mut conn).expect("the owner renews");
    assert_eq!(first.renew_after(), SHORT / 3);

    let mut second = take_over(&mut conn, &ns, "second", LONG);
    assert_eq!(
        first.renew(&mut conn),
        Err(Error::LeaseLost {
            namespace: ns.clone()
        }),
        "the ex-owner's renewal fails"
    );
    second
        .renew(&mut conn)
        .expect("and left the new owner's lease alone");
    assert!(
        !first.release(&mut conn).unwrap(),
        "the ex-owner cannot release it either"
    );
    assert!(
        Lease::try_acquire(&mut conn, &ns, "third", LONG)
            .unwrap()
            .is_none(),
        "the new owner still holds it"
    );
    assert!(second.release(&mut conn).unwrap());
    assert!(
        Lease::try_acquire(&mut conn, &ns, "third", LONG)
            .unwrap()
            .is_some()
    );
}

#[test]
fn an_expired_lease_goes_to_the_next_with_a_higher_token() {
    let Some(redis) = redis_or_skip("an_expired_lease_goes_to_the_next_with_a_higher_token") else {
        return;
    };
    let ns = namespace("expiry");
    let mut conn = redis.connect().unwrap();
    let first = Lease::try_acquire(&mut conn, &ns, "first", SHORT)
        .unwrap()
        .unwrap();
    let second = take_over(&mut conn, &ns, "second", LONG);
    assert!(
        second.token() > first.token(),
        "{:?} then {:?}",
        first,
        second
    );
}

#[test]
fn a_paused_ex_owner_cannot_publish_after_a_new_owner() {
    let Some(redis) = redis_or_skip("a_paused_ex_owner_cannot_publish_after_a_new_owner") else {
        return;
    };
    let ns = namespace("fencing");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let mut conn = redis.connect().unwrap();

    let paused = Lease::try_acquire(&mut conn, &ns, "paused", SHORT)
        .unwrap()
        .unwrap();
    store
        .publish(&mut conn, &paused, 1, b"from the first owner")
        .unwrap();
    // The first owner stops (a GC pause, a stopped VM) and misses its renewals.
    let current = take_over(&mut conn, &ns, "current", LONG);
    store
        .publish(&mut conn, &current, 2, b"from the second owner")
        .unwrap();

    // It resumes, unaware, and publishes: even a higher generation is fenced off.
    for generation in [2, 3, 100] {
        assert_eq!(
            store.publish(&mut conn, &paused, generation, b"stale"),
            Err(Error::NotOwner {
                namespace: ns.clone()
            })
        );
    }
    let snapshot = store.read(&mut conn).unwrap().unwrap();
    assert_eq!(
        (snapshot.generation(), snapshot.bytes()),
        (2, &b"from the second owner"[..])
    );

    // Nobody owns after the current owner releases: still fenced.
    assert!(current.release(&mut conn).unwrap());
    assert!(matches!(
        store.publish(&mut conn, &paused, 101, b"stale"),
        Err(Error::NotOwner { .. })
    ));
    assert_eq!(store.current_generation(&mut conn).unwrap(), 2);
}

#[test]
fn generations_only_go_up() {
    let Some(redis) = redis_or_skip("generations_only_go_up") else {
        return;
    };
    let ns = namespace("generations");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let mut conn = redis.connect().unwrap();
    assert_eq!(store.current_generation(&mut conn).unwrap(), 0);
    assert!(store.read(&mut conn).unwrap().is_none());

    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    store.publish(&mut conn, &lease, 1, b"one").unwrap();
    store.publish(&mut conn, &lease, 2, b"two").unwrap();
    for stale in [2, 1] {
        assert_eq!(
            store.publish(&mut conn, &lease, stale, b"stale"),
            Err(Error::StaleGeneration {
                stored: 2,
                attempted: stale
            })
        );
    }
    assert_eq!(
        store.publish(&mut conn, &lease, 0, b"zero"),
        Err(Error::GenerationOutOfRange { generation: 0 })
    );
    store.publish(&mut conn, &lease, 10, b"ten").unwrap();
    assert_eq!(store.current_generation(&mut conn).unwrap(), 10);

    assert!(
        store.poll_latest(&mut conn, 10).unwrap().is_none(),
        "nothing newer than 10"
    );
    let latest = store.poll_latest(&mut conn, 2).unwrap().unwrap();
    assert_eq!((latest.generation(), latest.bytes()), (10, &b"ten"[..]));
}

#[test]
fn subscribers_hear_each_new_generation() {
    let Some(redis) = redis_or_skip("subscribers_hear_each_new_generation") else {
        return;
    };
    let ns = namespace("pubsub");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let subscribers = [
        store.subscribe(&redis).unwrap(),
        store.subscribe(&redis).unwrap(),
    ];
    let other = GenerationStore::new(&namespace("pubsub-other"), key(1)).unwrap();
    let other_subscriber = other.subscribe(&redis).unwrap();

    let mut conn = redis.connect().unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    for generation in 1..=3 {
        store
            .publish(&mut conn, &lease, generation, b"tokens")
            .unwrap();
    }
    assert!(store.publish(&mut conn, &lease, 3, b"refused").is_err());
    store.publish(&mut conn, &lease, 4, b"tokens").unwrap();
    for subscriber in &subscribers {
        for generation in 1..=4 {
            assert_eq!(
                subscriber.recv_timeout(PATIENCE).unwrap(),
                Some(Notice::Generation(generation)),
                "refused writes are not announced"
            );
        }
    }
    assert_eq!(
        other_subscriber
            .recv_timeout(Duration::from_millis(200))
            .unwrap(),
        None,
        "another namespace hears nothing"
    );
}

#[test]
fn sealed_snapshots_round_trip_and_refuse_other_keys_and_tampering() {
    let Some(redis) =
        redis_or_skip("sealed_snapshots_round_trip_and_refuse_other_keys_and_tampering")
    else {
        return;
    };
    let ns = namespace("sealing");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let mut conn = redis.connect().unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    let secret = b"CST=abc; X-SECURITY-TOKEN=def";
    store.publish(&mut conn, &lease, 1, secret).unwrap();
    assert_eq!(store.read(&mut conn).unwrap().unwrap().bytes(), secret);

    // What Redis holds is not the plaintext.
    let snapshot_key = format!("broker-session:{{{ns}}}:snapshot");
    let mut raw = redis::Client::open(std::env::var(URL_VAR).unwrap())
        .unwrap()
        .get_connection()
        .unwrap();
    let blob: Vec<u8> = redis::cmd("HGET")
        .arg(&snapshot_key)
        .arg("blob")
        .query(&mut raw)
        .unwrap();
    assert!(!blob.windows(3).any(|w| w == b"abc"), "sealed at rest");

    // Another key.
    let wrong = GenerationStore::new(&ns, key(2)).unwrap();
    assert_eq!(
        wrong.read(&mut conn).unwrap_err(),
        Error::SnapshotUnopenable {
            namespace: ns.clone(),
            generation: 1
        }
    );
    // A modified blob.
    let mut tampered = blob.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let _: () = redis::cmd("HSET")
        .arg(&snapshot_key)
        .arg("blob")
        .arg(&tampered)
        .query(&mut raw)
        .unwrap();
    assert!(matches!(
        store.read(&mut conn),
        Err(Error::SnapshotUnopenable { .. })
    ));
    // The genuine blob replayed under a higher generation.
    let _: () = redis::cmd("HSET")
        .arg(&snapshot_key)
        .arg("generation")
        .arg(5)
        .arg("blob")
        .arg(&blob)
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        store.read(&mut conn).unwrap_err(),
        Error::SnapshotUnopenable {
            namespace: ns.clone(),
            generation: 5
        }
    );
}

#[test]
fn snapshots_in_clear_need_the_opt_in_on_both_sides() {
    let Some(redis) = redis_or_skip("snapshots_in_clear_need_the_opt_in_on_both_sides") else {
        return;
    };
    let mut conn = redis.connect().unwrap();

    let ns = namespace("clear");
    let writer = GenerationStore::new(&ns, clear()).unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    writer.publish(&mut conn, &lease, 1, b"tokens").unwrap();
    assert_eq!(writer.read(&mut conn).unwrap().unwrap().bytes(), b"tokens");
    let sealed_reader = GenerationStore::new(&ns, key(1)).unwrap();
    assert_eq!(
        sealed_reader.read(&mut conn).unwrap_err(),
        Error::UnsealedSnapshotRefused {
            namespace: ns.clone()
        }
    );

    let ns = namespace("sealed");
    let writer = GenerationStore::new(&ns, key(1)).unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    writer.publish(&mut conn, &lease, 1, b"tokens").unwrap();
    let clear_reader = GenerationStore::new(&ns, clear()).unwrap();
    assert_eq!(
        clear_reader.read(&mut conn).unwrap_err(),
        Error::SealedSnapshotWithoutKey {
            namespace: ns.clone()
        }
    );
}

#[test]
fn secrets_stay_out_of_debug_display_and_errors() {
    let Some(redis) = redis_or_skip("secrets_stay_out_of_debug_display_and_errors") else {
        return;
    };
    let password = "hunter2-redis-password";
    let url = std::env::var(URL_VAR)
        .unwrap()
        .replacen("://", &format!("://app:{password}@"), 1);
    let with_password = Redis::open(url.as_str()).unwrap();
    let refused = with_password
        .connect()
        .expect_err("the test server has no user 'app'");
    let ns = namespace("secrets");
    let store = GenerationStore::new(&ns, key(0x5A)).unwrap();
    let mut conn = redis.connect().unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    store
        .publish(&mut conn, &lease, 1, b"CST=super-secret-token")
        .unwrap();
    let snapshot = store.read(&mut conn).unwrap().unwrap();

    let shown = format!(
        "{with_password:?} {url} {refused} {refused:?} {store:?} {snapshot:?} {lease:?} {conn:?}",
        url = with_password.url(),
    );
    assert!(!shown.contains(password), "{shown}");
    assert!(!shown.contains("super-secret-token"), "{shown}");
    assert!(
        !shown.contains("5a5a") && !shown.contains("90, 90"),
        "no key bytes: {shown}"
    );
    assert!(
        shown.contains("app:***@"),
        "the user and host still show: {shown}"
    );
}

#[test]
fn connections_and_subscribers_come_back_after_a_redis_restart() {
    let Ok(binary) = std::env::var(SERVER_VAR) else {
        skipped(
            "connections_and_subscribers_come_back_after_a_redis_restart",
            &format!("(no redis-server binary): set {SERVER_VAR} to its path (bash .ci/run does)"),
        );
        return;
    };
    let mut server = OwnServer::start(binary.into(), &namespace("redis-restart"));
    let redis = Redis::open(server.url())
        .unwrap()
        .with_timeout(Duration::from_secs(1));
    let mut conn = eventually("the server accepts connections", || redis.connect().ok());
    let ns = namespace("restart");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let subscriber = store.subscribe(&redis).unwrap();
    let lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    store.publish(&mut conn, &lease, 1, b"tokens").unwrap();
    assert_eq!(
        subscriber.recv_timeout(PATIENCE).unwrap(),
        Some(Notice::Generation(1))
    );

    server.kill();
    assert!(
        matches!(conn.ping(), Err(Error::Redis { .. })),
        "the dead server is reported"
    );
    server.run();
    eventually("the same connection reconnects on its next use", || {
        conn.ping().ok()
    });
    assert_eq!(
        eventually("the subscriber resubscribes", || subscriber
            .recv_timeout(PATIENCE)
            .unwrap()),
        Notice::Resubscribed
    );

    // This server keeps nothing: the old lease, the fence counter and the generation are
    // gone, and a new owner starts over; the subscriber hears it.
    assert!(store.read(&mut conn).unwrap().is_none());
    let new_lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    assert_eq!(
        new_lease.token(),
        lease.token(),
        "the counter started again"
    );
    store.publish(&mut conn, &new_lease, 2, b"tokens").unwrap();
    assert_eq!(
        subscriber.recv_timeout(PATIENCE).unwrap(),
        Some(Notice::Generation(2))
    );
    // The lease from before the restart, same owner text and same token number, is
    // still told apart (a random part of the lease value) and fenced off.
    assert!(matches!(
        store.publish(&mut conn, &lease, 3, b"stale"),
        Err(Error::NotOwner { .. })
    ));
}

/// Deletes the lease key behind its holder's back: what a Redis restart without
/// persistence (or a failover to a replica that had not seen it) does to it.
fn lose_lease_key(ns: &str) {
    let mut raw = redis::Client::open(std::env::var(URL_VAR).unwrap())
        .unwrap()
        .get_connection()
        .unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("broker-session:{{{ns}}}:lease"))
        .query(&mut raw)
        .unwrap();
    assert_eq!(deleted, 1);
}

#[test]
fn a_lease_lost_with_redis_data_is_taken_again_by_its_holder_while_it_lasts() {
    let Some(redis) =
        redis_or_skip("a_lease_lost_with_redis_data_is_taken_again_by_its_holder_while_it_lasts")
    else {
        return;
    };
    let mut conn = redis.connect().unwrap();
    let ns = namespace("lease-data-loss");
    let store = GenerationStore::new(&ns, key(1)).unwrap();
    let mut lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    // Renewing takes it again: nobody else can have held it in between.
    lose_lease_key(&ns);
    lease.renew(&mut conn).unwrap();
    assert!(
        Lease::try_acquire(&mut conn, &ns, "other", LONG)
            .unwrap()
            .is_none(),
        "the holder has it again"
    );
    // So does publishing.
    lose_lease_key(&ns);
    store.publish(&mut conn, &lease, 1, b"tokens").unwrap();
    assert!(
        Lease::try_acquire(&mut conn, &ns, "other", LONG)
            .unwrap()
            .is_none()
    );
    // A lease whose time is up by its holder's clock is not taken again: another
    // process may have held it meanwhile.
    assert!(lease.release(&mut conn).unwrap());
    let short = Duration::from_millis(150);
    let mut lease = Lease::try_acquire(&mut conn, &ns, "owner", short)
        .unwrap()
        .unwrap();
    thread::sleep(short + Duration::from_millis(50));
    assert!(matches!(
        lease.renew(&mut conn),
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        store.publish(&mut conn, &lease, 2, b"stale"),
        Err(Error::NotOwner { .. })
    ));
    // Nor is a lease another process holds.
    let mut lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    lose_lease_key(&ns);
    let _other = Lease::try_acquire(&mut conn, &ns, "other", LONG)
        .unwrap()
        .unwrap();
    assert!(matches!(
        lease.renew(&mut conn),
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        store.publish(&mut conn, &lease, 2, b"stale"),
        Err(Error::NotOwner { .. })
    ));
}

/// Run by `one_owner_among_processes` in each child process; returns at once otherwise.
#[test]
fn child_process_racing_for_the_lease() {
    let Ok(ns) = std::env::var(CHILD_VAR) else {
        return;
    };
    let redis = Redis::open(std::env::var(URL_VAR).unwrap()).unwrap();
    let mut conn = redis.connect().unwrap();
    let start_at: u128 = std::env::var("BROKER_SESSION_REDIS_TEST_START_MS")
        .unwrap()
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    thread::sleep(Duration::from_millis(start_at.saturating_sub(now) as u64));
    let owner = format!("pid-{}", std::process::id());
    match Lease::try_acquire(&mut conn, &ns, &owner, LONG).unwrap() {
        Some(lease) => println!("RACE-RESULT owner {}", lease.token()),
        None => println!("RACE-RESULT follower"),
    }
}

#[test]
fn one_owner_among_processes() {
    let Some(_) = redis_or_skip("one_owner_among_processes") else {
        return;
    };
    let ns = namespace("processes");
    let exe = std::env::current_exe().unwrap();
    let start_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1500;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_racing_for_the_lease",
                    "--nocapture",
                ])
                .args(["--test-threads", "1"])
                .env(CHILD_VAR, &ns)
                .env("BROKER_SESSION_REDIS_TEST_START_MS", start_at.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut results = Vec::new();
    for mut child in children {
        let stdout = child.stdout.take().unwrap();
        results.extend(
            BufReader::new(stdout)
                .lines()
                .map(Result::unwrap)
                .filter_map(|line| line.split_once("RACE-RESULT ").map(|(_, r)| r.to_owned())),
        );
        assert!(child.wait().unwrap().success());
    }
    let owners = results.iter().filter(|r| r.starts_with("owner")).count();
    assert_eq!(
        (results.len(), owners),
        (4, 1),
        "one owner among 4 processes: {results:?}"
    );
}
