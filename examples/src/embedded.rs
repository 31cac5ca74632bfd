//! The fake brokers of the test kit, served in-process over HTTPS on 127.0.0.1, so
//! every example runs with no account and no network.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_session::ibkr::OAuthConfig;
use broker_session_testkit::ibkr::{BASE_PATH, FakeIbkr};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};

/// A fake IG broker on loopback.
pub struct EmbeddedIg {
    /// The HTTPS server; the broker stops when this drops.
    pub server: Server,
    /// The fake itself, for counters.
    pub fake: Arc<Mutex<FakeIg>>,
    /// The REST base URL (`https://127.0.0.1:PORT/gateway/deal`).
    pub base_url: String,
    /// The API key the fake accepts.
    pub api_key: String,
    /// The identifier the fake accepts.
    pub identifier: String,
    /// The password the fake accepts.
    pub password: String,
    /// The accounts of the fake's client (the first is the default).
    pub accounts: Vec<String>,
}

impl EmbeddedIg {
    /// Starts a fake IG whose v3 access tokens live `access_ttl`.
    pub fn start(access_ttl: Duration) -> io::Result<Self> {
        let config = FakeIgConfig {
            access_ttl,
            ..FakeIgConfig::default()
        };
        let (api_key, identifier, password, accounts, prefix) = (
            config.api_key.clone(),
            config.identifier.clone(),
            config.password.clone(),
            config.accounts.clone(),
            config.prefix.clone(),
        );
        let fake = Arc::new(Mutex::new(FakeIg::new(config)));
        let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default())?;
        let base_url = format!("{}{prefix}", server.https_url());
        Ok(Self {
            server,
            fake,
            base_url,
            api_key,
            identifier,
            password,
            accounts,
        })
    }

    /// The certificate (PEM) to trust for this server.
    pub fn trust_pem(&self) -> &str {
        self.server.trust_pem()
    }

    /// How many logins and refreshes the fake has seen.
    pub fn counts(&self) -> (u64, u64) {
        let f = self.fake.lock().unwrap_or_else(|e| e.into_inner());
        (f.stats.logins as u64, f.stats.refreshes as u64)
    }
}

/// A fake Client Portal Gateway on loopback, behind a self-signed certificate as the
/// real gateway is, with the browser login already done.
pub struct EmbeddedGateway {
    /// The HTTPS server.
    pub server: Server,
    /// The fake itself.
    pub fake: Arc<Mutex<FakeIbkr>>,
    /// The API base URL (`https://127.0.0.1:PORT/v1/api`).
    pub base_url: String,
}

impl EmbeddedGateway {
    /// Starts the fake gateway.
    pub fn start() -> io::Result<Self> {
        let fake = Arc::new(Mutex::new(FakeIbkr::gateway()));
        let mut options = ServerOptions::default();
        options.cert = CertMode::SelfSignedLeaf;
        let server = Server::start_shared(Arc::clone(&fake), options)?;
        let base_url = format!("{}{BASE_PATH}", server.https_url());
        Ok(Self {
            server,
            fake,
            base_url,
        })
    }

    /// The gateway's self-signed certificate (PEM), to trust it explicitly.
    pub fn trust_pem(&self) -> &str {
        self.server.trust_pem()
    }

    /// Plays the user's part: logs in through the gateway's web page again (needed
    /// after a logout, as with the real gateway).
    pub fn browser_login(&self) {
        let mut f = self.fake.lock().unwrap_or_else(|e| e.into_inner());
        f.browser_login_done = true;
    }

    /// How many tickles the fake has answered.
    pub fn tickles(&self) -> usize {
        let f = self.fake.lock().unwrap_or_else(|e| e.into_inner());
        f.requests
            .iter()
            .filter(|r| r.path.ends_with("/tickle"))
            .count()
    }
}

/// A fake api.ibkr.com with a real OAuth 1.0a server side, on loopback.
pub struct EmbeddedIbkrOAuth {
    /// The HTTPS server.
    pub server: Server,
    /// The fake itself.
    pub fake: Arc<Mutex<FakeIbkr>>,
    /// The API base URL (`https://127.0.0.1:PORT/v1/api`).
    pub base_url: String,
    /// Consumer credentials and keys the fake accepts (throwaway test keys).
    pub oauth: OAuthConfig,
}

impl EmbeddedIbkrOAuth {
    /// Starts the fake.
    pub fn start() -> io::Result<Self> {
        let (fake, oauth) = FakeIbkr::oauth(false);
        let fake = Arc::new(Mutex::new(fake));
        let server = Server::start_shared(Arc::clone(&fake), ServerOptions::default())?;
        let base_url = format!("{}{BASE_PATH}", server.https_url());
        Ok(Self {
            server,
            fake,
            base_url,
            oauth,
        })
    }

    /// The certificate (PEM) to trust for this server.
    pub fn trust_pem(&self) -> &str {
        self.server.trust_pem()
    }

    /// How many live session tokens the fake issued and how many signatures it refused.
    pub fn token_counts(&self) -> (u64, u64) {
        let mut f = self.fake.lock().unwrap_or_else(|e| e.into_inner());
        f.oauth_server().map_or((0, 0), |s| {
            (s.tokens_issued as u64, s.bad_signatures as u64)
        })
    }
}
