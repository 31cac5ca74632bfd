//! The store through the other Redis topologies its URL can name, each a real
//! `redis-server` (`BROKER_SESSION_REDIS_SERVER`; without it each test prints SKIPPED
//! and returns) started by the test on loopback ports:
//! - a Redis Cluster (`redis+cluster://`): one node owning every slot;
//! - a master with a replica watched by a Sentinel (`redis+sentinel://`), failed over
//!   in the middle of the test.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker_session_redis::{
    Error, GenerationStore, Lease, Notice, RecoveryRequests, Redis, Sealing, SealingKey,
};

mod own_server;
use own_server::OwnServer;

const SERVER_VAR: &str = "BROKER_SESSION_REDIS_SERVER";
const PATIENCE: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(60);

fn server_binary(test: &str) -> Option<PathBuf> {
    match std::env::var(SERVER_VAR) {
        Ok(path) if !path.is_empty() => Some(path.into()),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!! {test}: SKIPPED (no redis-server binary): set {SERVER_VAR} to its path \
                 (bash .ci/run does) !!!!\n"
            );
            None
        }
    }
}

fn name(what: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    format!("topology-{what}-{:016x}", u64::from_le_bytes(bytes))
}

fn key() -> Sealing {
    Sealing::Sealed(SealingKey::from_bytes([0x42; 32]))
}

/// A plain connection to one server, for setting it up.
fn admin(port: u16) -> redis::Connection {
    eventually("the server accepts connections", || {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .ok()?
            .get_connection()
            .ok()
    })
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lease, fenced publication, reading, announcement and recovery requests through
/// `redis`.
fn the_store_works_through(redis: &Redis, ns: &str) {
    let mut conn = redis.connect().unwrap();
    conn.ping().unwrap();
    let store = GenerationStore::new(ns, key()).unwrap();
    let subscriber = store.subscribe(redis).unwrap();
    let lease = Lease::try_acquire(&mut conn, ns, "owner", LONG)
        .unwrap()
        .expect("the lease is free");
    assert!(
        Lease::try_acquire(&mut conn, ns, "other", LONG)
            .unwrap()
            .is_none(),
        "one owner at a time"
    );
    store.publish(&mut conn, &lease, 1, b"tokens").unwrap();
    assert!(matches!(
        store.publish(&mut conn, &lease, 1, b"again"),
        Err(Error::StaleGeneration { .. })
    ));
    let read = store.read(&mut conn).unwrap().expect("stored");
    assert_eq!((read.generation(), read.bytes()), (1, &b"tokens"[..]));
    assert_eq!(
        eventually("the announcement", || {
            match subscriber.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(Notice::Generation(g))) => Some(g),
                _ => None,
            }
        }),
        1
    );
    let requests = RecoveryRequests::new(ns).unwrap();
    assert!(requests.request(&mut conn, 1).unwrap(), "the first request");
    assert!(!requests.request(&mut conn, 1).unwrap(), "collapsed");
    assert_eq!(requests.latest(&mut conn).unwrap(), Some(1));
}

#[test]
fn the_store_works_through_a_redis_cluster() {
    let test = "the_store_works_through_a_redis_cluster";
    let Some(binary) = server_binary(test) else {
        return;
    };
    let node = OwnServer::start_with(
        binary,
        &name("cluster"),
        None,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes-{port}.conf",
        ],
    );
    // One node that owns every slot: a cluster as far as any client can tell.
    let mut conn = admin(node.port());
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut conn)
        .unwrap();
    eventually("the cluster is up", || {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
        info.contains("cluster_state:ok").then_some(())
    });
    let redis = Redis::open(format!("redis+cluster://127.0.0.1:{}", node.port())).unwrap();
    the_store_works_through(&redis, &name("ns"));
    // A plain connection to a cluster node works too (one slot owner here); a bad
    // cluster URL is a typed error.
    assert!(matches!(
        Redis::open("redis+cluster://"),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        Redis::open(format!("redis+cluster://127.0.0.1:{}/3", node.port())),
        Err(Error::InvalidUrl { .. })
    ));
}

#[test]
fn the_store_follows_a_sentinel_failover() {
    let test = "the_store_follows_a_sentinel_failover";
    let Some(binary) = server_binary(test) else {
        return;
    };
    let master = OwnServer::start(binary.clone(), &name("master"));
    let replica_of = master.port().to_string();
    let replica = OwnServer::start_with(
        binary.clone(),
        &name("replica"),
        None,
        &["--replicaof", "127.0.0.1", &replica_of],
    );
    let sentinel_conf = format!(
        "sentinel monitor main 127.0.0.1 {} 1\n\
         sentinel down-after-milliseconds main 1000\n\
         sentinel failover-timeout main 3000\n",
        master.port()
    );
    let sentinel = OwnServer::start_with(
        binary,
        &name("sentinel"),
        Some(&sentinel_conf),
        &["--sentinel"],
    );
    let mut to_sentinel = admin(sentinel.port());
    let master_port = |c: &mut redis::Connection| -> Option<u16> {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("main")
            .query(c)
            .ok()?;
        addr.get(1)?.parse().ok()
    };
    assert_eq!(master_port(&mut to_sentinel), Some(master.port()));
    // The replica is in sync before the test goes on.
    let mut to_replica = admin(replica.port());
    eventually("the replica is in sync", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut to_replica)
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    });
    eventually("the Sentinel knows the replica", || {
        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg("main")
            .query(&mut to_sentinel)
            .ok()?;
        (!replicas.is_empty()).then_some(())
    });

    let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port());
    let redis = Redis::open(url.as_str())
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    assert!(
        !format!("{redis:?}").is_empty(),
        "a Sentinel URL opens and shows itself"
    );
    let ns = name("ns");
    the_store_works_through(&redis, &ns);

    // One connection, kept across a failover.
    let ns = name("ns-failover");
    let mut conn = redis.connect().unwrap();
    let store = GenerationStore::new(&ns, key()).unwrap();
    let mut lease = Lease::try_acquire(&mut conn, &ns, "owner", LONG)
        .unwrap()
        .unwrap();
    store.publish(&mut conn, &lease, 1, b"before").unwrap();
    let mut to_master = admin(master.port());
    let replicated: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut to_master)
        .unwrap();
    assert_eq!(replicated, 1, "the replica has the lease and the snapshot");
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("main")
        .query(&mut to_sentinel)
        .unwrap();
    eventually("the Sentinel names the replica as master", || {
        (master_port(&mut to_sentinel)? == replica.port()).then_some(())
    });
    // The Sentinel turns the old master into a replica once it sees it again (up to
    // 10 s later, at its next look); do it now, as it would.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(replica.port())
        .query(&mut to_master)
        .unwrap();
    eventually("the old master is a replica", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut to_master)
            .ok()?;
        info.contains("role:slave").then_some(())
    });
    // The old master is a replica now: a write there is refused (READONLY), the
    // connection is dropped, and the next call asks the Sentinel again.
    eventually("the store writes to the new master", || {
        match lease.renew(&mut conn) {
            Ok(()) => Some(()),
            Err(Error::Redis { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    });
    store.publish(&mut conn, &lease, 2, b"after").unwrap();
    let mut on_new_master = admin(replica.port());
    let stored: String = redis::cmd("HGET")
        .arg(format!("broker-session:{{{ns}}}:snapshot"))
        .arg("generation")
        .query(&mut on_new_master)
        .unwrap();
    assert_eq!(stored, "2", "written to the new master");
    assert_eq!(store.read(&mut conn).unwrap().unwrap().bytes(), b"after");
}
