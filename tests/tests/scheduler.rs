//! The blocking transport's shared scheduler over real loopback sockets: many IG v3
//! sessions with short-lived tokens, their timers on one thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::Event;
use broker_session::ig::{IgConfig, IgEnvironment, IgOutcome, IgSession, LoginFlow};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};
use broker_session_ureq::{Client, Config, HttpClient, Scheduler};

const SESSIONS: usize = 50;
/// The fake's access-token lifetime: the session refreshes half-way through it.
const TOKEN_TTL: Duration = Duration::from_secs(1);

/// The threads of this process whose name starts with `prefix` (Linux).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

fn refreshes(client: &Client<IgSession>) -> usize {
    client
        .drain_events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Completed {
                    result: Ok(IgOutcome::Refreshed { .. }),
                    ..
                }
            )
        })
        .count()
}

fn sessions(n: usize) -> (Server, Vec<Client<IgSession>>) {
    let fake = Arc::new(Mutex::new(FakeIg::new(FakeIgConfig {
        access_ttl: TOKEN_TTL,
        ..FakeIgConfig::default()
    })));
    let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).expect("server");
    let http = HttpClient::new(&Config::default()).expect("http");
    let f = fake.lock().expect("fake").config.clone();
    let clients = (0..n)
        .map(|_| {
            let mut config = IgConfig::new(
                IgEnvironment::Custom(format!("{}{}", server.http_url(), f.prefix)),
                f.api_key.as_str(),
                f.identifier.as_str(),
                f.password.as_str(),
            );
            config.login_flow = LoginFlow::V3;
            let c = Client::open(config, &http).expect("client");
            // Refreshes are counted from the events: keep them from the start.
            c.subscribe();
            c
        })
        .collect();
    (server, clients)
}

/// Waits until `done` holds, for 20 s at most.
fn eventually(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_thread_keeps_fifty_sessions_refreshed_until_their_registrations_drop() {
    let (_server, clients) = sessions(SESSIONS);
    let before = threads_named("bs-scheduler");
    let scheduler = Scheduler::spawn().expect("scheduler");
    // Registered before the login: the login's deadline wakes the scheduler.
    let mut registrations: Vec<_> = clients.iter().map(|c| Some(scheduler.add(c))).collect();
    for c in &clients {
        c.login().expect("login");
    }
    assert_eq!(scheduler.len(), SESSIONS);
    // A new thread names itself once it runs: wait for that, then count.
    eventually(
        || threads_named("bs-scheduler") > before,
        "the scheduler thread runs",
    );
    assert_eq!(
        threads_named("bs-scheduler"),
        before + 1,
        "one scheduler thread"
    );
    assert_eq!(threads_named("broker-session-"), 0, "no keep-alive thread");

    let mut counts = vec![0; SESSIONS];
    eventually(
        || {
            for (n, c) in counts.iter_mut().zip(&clients) {
                *n += refreshes(c);
            }
            counts.iter().all(|&n| n >= 2)
        },
        "every session refreshed at least twice",
    );
    assert_eq!(
        threads_named("bs-scheduler"),
        before + 1,
        "still one thread"
    );

    // The first session leaves the scheduler: its refreshes stop, the others go on.
    registrations[0] = None;
    assert_eq!(scheduler.len(), SESSIONS - 1);
    // A refresh the scheduler had already started ends within a loopback round trip.
    std::thread::sleep(Duration::from_millis(200));
    let _ = refreshes(&clients[0]);
    let mut later = vec![0; SESSIONS];
    eventually(
        || {
            for (n, c) in later.iter_mut().zip(&clients).skip(1) {
                *n += refreshes(c);
            }
            later.iter().skip(1).all(|&n| n >= 2)
        },
        "the others refreshed twice more",
    );
    assert_eq!(refreshes(&clients[0]), 0, "refreshed after leaving");
    drop(registrations);
    drop(scheduler);
    assert_eq!(threads_named("bs-scheduler"), before, "the thread ended");
}

#[test]
fn run_due_from_a_loop_of_ones_own() {
    let (_server, clients) = sessions(3);
    let scheduler = Scheduler::new();
    let _registrations: Vec<_> = clients.iter().map(|c| scheduler.add(c)).collect();
    for c in &clients {
        c.login().expect("login");
    }
    let mut counts = [0; 3];
    eventually(
        || {
            let next = scheduler.run_due().expect("a refresh is scheduled");
            scheduler.wait_due(next.saturating_duration_since(Instant::now()));
            for (n, c) in counts.iter_mut().zip(&clients) {
                *n += refreshes(c);
            }
            counts.iter().all(|&n| n >= 2)
        },
        "every session refreshed at least twice",
    );
}
