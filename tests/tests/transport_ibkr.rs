//! IBKR sessions over real loopback sockets: the gateway behind its self-signed
//! certificate, and OAuth 1.0a behind a CA-signed one, on both transports.

use std::sync::{Arc, Mutex};

use broker_session::ibkr::{IbkrConfig, IbkrSession, IbkrState};
use broker_session::{Error as CoreError, FailureKind};
use broker_session_testkit::ibkr::{BASE_PATH, FakeIbkr};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};

fn serve(fake: FakeIbkr, cert: CertMode) -> (Server, Arc<Mutex<FakeIbkr>>) {
    let fake = Arc::new(Mutex::new(fake));
    let mut options = ServerOptions::default();
    options.cert = cert;
    let server = Server::start_shared(Arc::clone(&fake), options).expect("server");
    (server, fake)
}

fn gateway_config(server: &Server) -> IbkrConfig {
    let mut c = IbkrConfig::gateway();
    c.base_url = format!("{}{BASE_PATH}", server.https_url());
    c
}

fn oauth_setup() -> (Server, Arc<Mutex<FakeIbkr>>, IbkrConfig) {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let (server, fake) = serve(fake, CertMode::CaSigned);
    let mut c = IbkrConfig::oauth(oauth);
    c.base_url = format!("{}{BASE_PATH}", server.https_url());
    (server, fake, c)
}

fn accounts(server: &Server) -> http::Request<Vec<u8>> {
    http::Request::get(format!(
        "{}{BASE_PATH}/iserver/accounts",
        server.https_url()
    ))
    .body(Vec::new())
    .expect("request")
}

mod blocking {
    use super::*;
    use broker_session_ureq::{Client, Config, Error, Tls};

    fn trusting(server: &Server) -> Config {
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        config
    }

    #[test]
    fn gateway_over_https_with_its_self_signed_certificate() {
        let (server, fake) = serve(FakeIbkr::gateway(), CertMode::SelfSignedLeaf);
        let c = Client::ibkr(gateway_config(&server), &trusting(&server)).expect("client");
        let status = c.connect().expect("connect");
        assert_eq!(status.authenticated, Some(true));
        assert_eq!(c.state(), IbkrState::Ready);
        c.tickle().expect("tickle");
        assert_eq!(c.status().expect("status").authenticated, Some(true));
        c.validate().expect("validate");
        let r = c.send(accounts(&server)).expect("accounts");
        assert_eq!(r.status(), 200);
        c.logout().expect("logout");
        assert!(server.requests().iter().all(|r| r.tls));
        assert!(
            fake.lock()
                .expect("f")
                .requests
                .iter()
                .all(|r| !r.authorized)
        );
    }

    #[test]
    fn gateway_certificate_is_refused_unless_trusted() {
        let (server, _) = serve(FakeIbkr::gateway(), CertMode::SelfSignedLeaf);
        let c = Client::ibkr(gateway_config(&server), &Config::default()).expect("client");
        match c.connect() {
            Err(Error::Session(CoreError::Transport(f))) => assert_eq!(f.kind, FailureKind::Tls),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oauth_flow_over_https() {
        let (server, fake, config) = oauth_setup();
        let c = Client::ibkr(config, &trusting(&server)).expect("client");
        c.connect().expect("connect");
        assert_eq!(c.state(), IbkrState::Ready);
        let r = c.send(accounts(&server)).expect("accounts");
        assert_eq!(r.status(), 200);
        c.tickle().expect("tickle");
        let mut f = fake.lock().expect("f");
        assert!(f.requests.iter().all(|r| r.authorized));
        let oauth = f.oauth_server().expect("oauth");
        assert_eq!(oauth.tokens_issued, 1);
        assert_eq!(oauth.bad_signatures, 0);
    }

    /// Sessions built by the transports from one configuration draw their
    /// randomness from the OS: different Diffie-Hellman challenges and nonces, so a
    /// broker that remembers nonces accepts every one of them. (With one shared
    /// default seed, the second session repeated the first one's challenge and nonce
    /// and its live session token request was refused.)
    #[test]
    fn sessions_from_one_configuration_never_share_randomness() {
        let (server, fake, config) = oauth_setup();
        let trust = trusting(&server);
        let a = Client::ibkr(config.clone(), &trust).expect("client a");
        let b = Client::ibkr(config.clone(), &trust).expect("client b");
        let c = broker_session_hyper_session(config, &server);
        a.connect().expect("a connects");
        b.connect().expect("b connects");
        c.expect("c connects");
        let challenges = dh_challenges(&server);
        assert_eq!(challenges.len(), 3, "{challenges:?}");
        assert!(
            challenges[0] != challenges[1]
                && challenges[1] != challenges[2]
                && challenges[0] != challenges[2],
            "a DH challenge was repeated"
        );
        let mut f = fake.lock().expect("f");
        let oauth = f.oauth_server().expect("oauth");
        assert_eq!(oauth.tokens_issued, 3);
        assert_eq!(oauth.bad_signatures, 0);
    }

    /// A third session on the async transport, built the same way.
    fn broker_session_hyper_session(config: IbkrConfig, server: &Server) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut transport = Config::default();
            transport.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
            let s = broker_session_hyper::Client::ibkr(config, &transport)
                .map_err(|e| e.to_string())?;
            s.connect().await.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// The `diffie_hellman_challenge` of every live session token request the
    /// server saw, in order.
    fn dh_challenges(server: &Server) -> Vec<String> {
        server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/oauth/live_session_token"))
            .filter_map(|r| {
                let auth = r.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
                let start = auth.find("diffie_hellman_challenge=\"")? + 26;
                let rest = &auth[start..];
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect()
    }
}

mod nonblocking {
    use super::*;
    use broker_session_hyper::{Client, Config, Tls};

    fn trusting(server: &Server) -> Config {
        let mut config = Config::default();
        config.tls = Tls::Pem(server.trust_pem().as_bytes().to_vec());
        config
    }

    #[tokio::test]
    async fn gateway_over_https_with_its_self_signed_certificate() {
        let (server, _) = serve(FakeIbkr::gateway(), CertMode::SelfSignedLeaf);
        let s = Client::ibkr(gateway_config(&server), &trusting(&server)).expect("session");
        assert_eq!(
            s.connect().await.expect("connect").authenticated,
            Some(true)
        );
        s.tickle().await.expect("tickle");
        assert_eq!(
            s.send(accounts(&server)).await.expect("accounts").status(),
            200
        );
        s.logout().await.expect("logout");
    }

    #[tokio::test]
    async fn oauth_flow_over_https() {
        let (server, fake, config) = oauth_setup();
        let machine = IbkrSession::new(
            config,
            broker_session::RngSeed::from_u64(1),
            broker_session_hyper::now(),
        )
        .expect("machine");
        let s = Client::new(machine, &trusting(&server)).expect("session");
        s.connect().await.expect("connect");
        assert_eq!(s.state(), IbkrState::Ready);
        assert_eq!(
            s.send(accounts(&server)).await.expect("accounts").status(),
            200
        );
        let mut f = fake.lock().expect("f");
        assert_eq!(f.oauth_server().expect("oauth").bad_signatures, 0);
    }
}

/// Both clients can be shared across threads and their futures spawned, for both
/// broker machines.
#[test]
fn clients_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<broker_session_ureq::Client<IbkrSession>>();
    send_sync::<broker_session_ureq::Client<broker_session::ig::IgSession>>();
    send_sync::<broker_session_hyper::Client<IbkrSession>>();
    send_sync::<broker_session_hyper::Client<broker_session::ig::IgSession>>();
    send_sync::<broker_session_ureq::HttpClient>();
    send_sync::<broker_session_hyper::HttpClient>();
    send_sync::<broker_session_ureq::KeepAlive>();
    send_sync::<broker_session_hyper::KeepAlive>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let s = broker_session_hyper::Client::ibkr(
        IbkrConfig::gateway(),
        &broker_session_hyper::Config::default(),
    )
    .expect("session");
    send(&s.connect());
    send(&s.send(http::Request::new(Vec::new())));
}
