//! IG sessions over real loopback sockets: the real IG machine, the fake IG broker
//! behind the loopback server, and both transports.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use broker_session::ig::{AuthMode, IgConfig, IgEnvironment, IgSession, IgState, LoginFlow};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{Server, ServerOptions};

fn ig_server(config: FakeIgConfig) -> (Server, Arc<Mutex<FakeIg>>) {
    let fake = Arc::new(Mutex::new(FakeIg::new(config)));
    let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default()).expect("server");
    (server, fake)
}

fn base(server: &Server, fake: &Mutex<FakeIg>) -> String {
    format!(
        "{}{}",
        server.https_url(),
        fake.lock().expect("fake").config.prefix
    )
}

fn ig_config(server: &Server, fake: &Mutex<FakeIg>, flow: LoginFlow) -> IgConfig {
    let f = fake.lock().expect("fake");
    let mut c = IgConfig::new(
        IgEnvironment::Custom(format!("{}{}", server.https_url(), f.config.prefix)),
        f.config.api_key.as_str(),
        f.config.identifier.as_str(),
        f.config.password.as_str(),
    );
    c.login_flow = flow;
    c
}

fn accounts(base: &str) -> http::Request<Vec<u8>> {
    http::Request::get(format!("{base}/accounts"))
        .header("Version", "1")
        .header("Accept", "application/json; charset=UTF-8")
        .body(Vec::new())
        .expect("request")
}

mod blocking {
    use super::*;
    use broker_session_ureq::{Client, Config, Tls};

    fn client(server: &Server, fake: &Mutex<FakeIg>, flow: LoginFlow) -> Client<IgSession> {
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        Client::ig(ig_config(server, fake, flow), &config).expect("client")
    }

    #[test]
    fn v2_login_read_switch_logout_over_https() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let c = client(&server, &fake, LoginFlow::V2);
        let info = c.login().expect("login");
        assert_eq!(info.account_id, "ACC-DEFAULT");
        assert_eq!(info.mode, AuthMode::Cst);
        let r = c.send(accounts(&base(&server, &fake))).expect("accounts");
        assert_eq!(r.status(), 200);
        let details = c.read_session(false).expect("read");
        let _ = details;
        assert!(
            !c.switch_account("ACC-OTHER", false)
                .expect("switch")
                .already_active
        );
        let r = c.send(accounts(&base(&server, &fake))).expect("accounts");
        assert_eq!(r.status(), 200);
        assert_eq!(
            fake.lock().expect("f").stats.last_account_seen.as_deref(),
            Some("ACC-OTHER")
        );
        assert!(c.logout().expect("logout").server_confirmed);
        assert_eq!(c.state(), IgState::LoggedOut);
        let f = fake.lock().expect("f");
        assert!(f.stats.rejections.is_empty(), "{:?}", f.stats.rejections);
        // Every request went over TLS, with a User-Agent.
        assert!(
            server
                .requests()
                .iter()
                .all(|r| r.tls && r.headers.contains_key("user-agent"))
        );
    }

    #[test]
    fn v3_login_then_32_threads_while_the_access_token_expires() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let c = client(&server, &fake, LoginFlow::V3);
        assert_eq!(c.login().expect("login").mode, AuthMode::OAuth);
        let url = base(&server, &fake);
        // The broker forgets every access token, as when one expires early.
        fake.lock().expect("f").revoke_access_tokens();
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (c, url, barrier) = (c.clone(), url.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    c.send(accounts(&url)).expect("send").status()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), 200);
        }
        let f = fake.lock().expect("f");
        assert_eq!(f.stats.refreshes, 1, "exactly one refresh for one expiry");
        assert_eq!(f.stats.logins, 1);
        assert_eq!(f.stats.reused_refresh_tokens, 0);
    }

    #[test]
    fn v3_proactive_refresh_with_keep_alive_and_busy_threads() {
        let (server, fake) = ig_server(FakeIgConfig {
            access_ttl: Duration::from_secs(2),
            ..FakeIgConfig::default()
        });
        let mut cfg = ig_config(&server, &fake, LoginFlow::V3);
        cfg.refresh_margin = Duration::from_millis(1500);
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        let c = Client::ig(cfg, &config).expect("client");
        c.login().expect("login");
        let _keep_alive = c.keep_alive().expect("keep-alive");
        let url = base(&server, &fake);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        assert_eq!(c.send(accounts(&url)).expect("send").status(), 200);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let f = fake.lock().expect("f");
        // The token lives 2 s and is refreshed 1.5 s early: at least one proactive
        // refresh in the second the threads ran, never a refused request.
        assert!(f.stats.refreshes >= 1, "{}", f.stats.refreshes);
        assert_eq!(f.stats.reused_refresh_tokens, 0);
        assert!(
            f.stats
                .rejections
                .iter()
                .all(|(_, status, _)| *status != 401),
            "{:?}",
            f.stats.rejections
        );
    }

    #[test]
    fn v3_refresh_snapshot_and_resume_in_another_client() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let c = client(&server, &fake, LoginFlow::V3);
        c.login().expect("login");
        let expires_at = c.refresh().expect("refresh");
        assert!(expires_at > std::time::Instant::now());
        let snapshot = c.snapshot().expect("snapshot");
        // A v3 session fetches CST/XST for streaming on request.
        c.read_session(true).expect("read with streaming tokens");
        assert!(c.lightstreamer_credentials().is_some());
        // "Another process" takes the tokens over without logging in.
        let other = client(&server, &fake, LoginFlow::V3);
        let info = other.resume(snapshot).expect("resume");
        assert_eq!(info.account_id, "ACC-DEFAULT");
        let url = base(&server, &fake);
        assert_eq!(other.send(accounts(&url)).expect("send").status(), 200);
        let f = fake.lock().expect("f");
        assert_eq!(f.stats.logins, 1);
        assert_eq!(f.stats.refreshes, 1);
    }

    #[test]
    fn v2_401_storm_relogs_in_exactly_once() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let c = client(&server, &fake, LoginFlow::V2);
        c.login().expect("login");
        fake.lock().expect("f").expire_cst_sessions();
        let url = base(&server, &fake);
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (c, url, barrier) = (c.clone(), url.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    c.send(accounts(&url)).expect("send").status()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), 200);
        }
        assert_eq!(
            fake.lock().expect("f").stats.logins,
            2,
            "one login, one re-login"
        );
    }

    #[test]
    fn rejected_credentials_are_not_retried_over_sockets() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let mut cfg = ig_config(&server, &fake, LoginFlow::V2);
        cfg.password = "wrong-password".into();
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        let c = Client::ig(cfg, &config).expect("client");
        match c.login() {
            Err(broker_session_ureq::Error::Session(
                broker_session::Error::CredentialsRejected(_),
            )) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.lock().expect("f").stats.login_attempts, 1);
    }
}

mod nonblocking {
    use super::*;
    use broker_session_hyper::{Client, Config, HttpClient, Tls};

    fn http(server: &Server) -> (HttpClient, Config) {
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        (HttpClient::new(&config).expect("http"), config)
    }

    #[tokio::test]
    async fn v2_login_read_switch_logout_over_https() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let (http, _config) = http(&server);
        let machine = IgSession::new(
            ig_config(&server, &fake, LoginFlow::V2),
            broker_session::RngSeed::from_u64(1),
            broker_session_hyper::now(),
        )
        .expect("machine");
        let s = Client::with_http(machine, http).expect("session");
        assert_eq!(s.login().await.expect("login").account_id, "ACC-DEFAULT");
        let url = base(&server, &fake);
        assert_eq!(
            s.send(accounts(&url)).await.expect("accounts").status(),
            200
        );
        s.read_session(false).await.expect("read");
        assert!(
            !s.switch_account("ACC-OTHER", false)
                .await
                .expect("switch")
                .already_active
        );
        assert!(s.logout().await.expect("logout").server_confirmed);
        assert!(fake.lock().expect("f").stats.rejections.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn v3_32_tasks_while_the_access_token_expires() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let (http, _config) = http(&server);
        let machine = IgSession::new(
            ig_config(&server, &fake, LoginFlow::V3),
            broker_session::RngSeed::from_u64(1),
            broker_session_hyper::now(),
        )
        .expect("machine");
        let s = Client::with_http(machine, http).expect("session");
        s.login().await.expect("login");
        fake.lock().expect("f").revoke_access_tokens();
        let url = base(&server, &fake);
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (s, url, barrier) = (s.clone(), url.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.send(accounts(&url)).await.expect("send").status()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
        let f = fake.lock().expect("f");
        assert_eq!(f.stats.refreshes, 1, "exactly one refresh for one expiry");
        assert_eq!(f.stats.reused_refresh_tokens, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn v2_401_storm_relogs_in_exactly_once() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let (http, config) = http(&server);
        let s = Client::ig(ig_config(&server, &fake, LoginFlow::V2), &config).expect("session");
        let _ = http;
        s.login().await.expect("login");
        fake.lock().expect("f").expire_cst_sessions();
        let url = base(&server, &fake);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (s, url) = (s.clone(), url.clone());
                tokio::spawn(async move { s.send(accounts(&url)).await.expect("send").status() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
        assert_eq!(
            fake.lock().expect("f").stats.logins,
            2,
            "one login, one re-login"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn v3_keep_alive_task_refreshes_before_expiry() {
        let (server, fake) = ig_server(FakeIgConfig {
            access_ttl: Duration::from_secs(2),
            ..FakeIgConfig::default()
        });
        let (http, _config) = http(&server);
        let mut cfg = ig_config(&server, &fake, LoginFlow::V3);
        cfg.refresh_margin = Duration::from_millis(1500);
        let machine = IgSession::new(
            cfg,
            broker_session::RngSeed::from_u64(1),
            broker_session_hyper::now(),
        )
        .expect("machine");
        let s = Client::with_http(machine, http).expect("session");
        s.login().await.expect("login");
        let keep_alive = s.keep_alive();
        let url = base(&server, &fake);
        for _ in 0..24 {
            assert_eq!(s.send(accounts(&url)).await.expect("send").status(), 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(keep_alive);
        let f = fake.lock().expect("f");
        assert!(f.stats.refreshes >= 1, "{}", f.stats.refreshes);
        assert_eq!(f.stats.reused_refresh_tokens, 0);
        assert!(
            f.stats
                .rejections
                .iter()
                .all(|(_, status, _)| *status != 401),
            "{:?}",
            f.stats.rejections
        );
    }

    #[tokio::test]
    async fn sessions_share_one_pool() {
        let (server, fake) = ig_server(FakeIgConfig::default());
        let (http, _config) = http(&server);
        let mut sessions = Vec::new();
        for _ in 0..4 {
            let m = IgSession::new(
                ig_config(&server, &fake, LoginFlow::V3),
                broker_session::RngSeed::from_u64(1),
                broker_session_hyper::now(),
            )
            .expect("machine");
            sessions.push(Client::with_http(m, http.clone()).expect("session"));
        }
        for s in &sessions {
            s.login().await.expect("login");
        }
        assert_eq!(fake.lock().expect("f").stats.logins, 4);
        // Sessions built by hand know their base URL too: a relative path works.
        for s in &sessions {
            let r = s.send(relative_accounts()).await.expect("accounts");
            assert_eq!(r.status(), 200);
        }
    }
}

/// `GET /accounts` relative to the session's base URL.
fn relative_accounts() -> http::Request<Vec<u8>> {
    http::Request::get("/accounts")
        .header("Version", "1")
        .body(Vec::new())
        .expect("request")
}

#[test]
fn relative_paths_resolve_under_the_session_base_url() {
    use broker_session_ureq::{Client, Config, Tls};
    let (server, fake) = ig_server(FakeIgConfig::default());
    let mut config = Config::default();
    config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
    let c = Client::ig(ig_config(&server, &fake, LoginFlow::V2), &config).expect("client");
    assert_eq!(c.base_url(), Some(base(&server, &fake).as_str()));
    c.login().expect("login");
    let r = c.send(relative_accounts()).expect("accounts");
    assert_eq!(r.status(), 200);
    let last = server.requests().pop().expect("a request");
    assert_eq!(
        last.path,
        format!("{}/accounts", fake.lock().expect("f").config.prefix)
    );
}

/// Every string the transports show (Debug and Display of clients, configs, events,
/// errors) is free of the password, the API key and every token the fake issued (all
/// of which contain `secret`).
mod secrets {
    use super::*;

    fn assert_clean(what: &str, text: &str) {
        assert!(!text.contains("secret"), "{what} leaks a secret: {text}");
    }

    #[test]
    fn blocking_client_never_shows_secrets() {
        use broker_session_ureq::{Client, Config, Tls};
        for flow in [LoginFlow::V2, LoginFlow::V3] {
            let (server, fake) = ig_server(FakeIgConfig::default());
            let mut config = Config::default();
            config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
            assert_clean("config", &format!("{config:?}"));
            let c = Client::ig(ig_config(&server, &fake, flow), &config).expect("client");
            // Every event from the start, the login's included, is checked below.
            c.subscribe();
            c.login().expect("login");
            c.send(accounts(&base(&server, &fake))).expect("send");
            fake.lock().expect("f").revoke_access_tokens();
            fake.lock().expect("f").expire_cst_sessions();
            c.send(accounts(&base(&server, &fake))).expect("send");
            assert_clean("client", &format!("{c:?} {:?}", c.http()));
            assert_clean("events", &format!("{:?}", c.drain_events()));
            // Errors: another host, a refused connection, a failed operation.
            let e = c
                .send(accounts("https://127.0.0.2:1/x"))
                .expect_err("refused");
            assert_clean("authorize error", &format!("{e:?} {e}"));
            let dead = Client::ig(
                {
                    let mut cfg = ig_config(&server, &fake, flow);
                    cfg.environment =
                        IgEnvironment::Custom("https://127.0.0.1:1/gateway/deal".into());
                    cfg.max_attempts = 1;
                    cfg
                },
                &config,
            )
            .expect("client");
            let e = dead.login().expect_err("no server");
            assert_clean("transport error", &format!("{e:?} {e}"));
        }
    }

    #[tokio::test]
    async fn async_session_never_shows_secrets() {
        use broker_session_hyper::{Client, Config, Tls};
        let (server, fake) = ig_server(FakeIgConfig::default());
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        let s = Client::ig(ig_config(&server, &fake, LoginFlow::V3), &config).expect("session");
        s.subscribe();
        s.login().await.expect("login");
        fake.lock().expect("f").revoke_access_tokens();
        s.send(accounts(&base(&server, &fake))).await.expect("send");
        assert_clean("session", &format!("{s:?} {:?} {config:?}", s.http()));
        assert_clean("events", &format!("{:?}", s.drain_events()));
        let e = s
            .send(accounts("https://127.0.0.2:1/x"))
            .await
            .expect_err("refused");
        assert_clean("error", &format!("{e:?} {e}"));
    }
}
