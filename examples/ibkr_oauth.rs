//! An IBKR OAuth 1.0a session (direct access, no gateway): obtain a live session
//! token, initialise the brokerage session, one signed application call
//! (`GET /iserver/accounts`), keep it alive with tickles, log out.
//!
//! With no configuration it runs against the fake api.ibkr.com of the test kit (a
//! real OAuth 1.0a server side with throwaway keys), served in-process over HTTPS on
//! 127.0.0.1:
//!
//! ```text
//! cargo run --example ibkr_oauth
//! ```
//!
//! Point it at IBKR (or any fake) with:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IBKR_BASE_URL` | API base, e.g. `https://api.ibkr.com/v1/api` | the embedded fake |
//! | `IBKR_CONSUMER_KEY`, `IBKR_ACCESS_TOKEN`, `IBKR_ACCESS_TOKEN_SECRET` | OAuth credentials (required with `IBKR_BASE_URL`) | the fake's |
//! | `IBKR_ENCRYPTION_KEY_FILE`, `IBKR_SIGNATURE_KEY_FILE` | private keys, PEM (PKCS#1 or PKCS#8) | the fake's |
//! | `IBKR_DH_PRIME` | Diffie-Hellman prime, hex | the fake's |
//! | `IBKR_REALM` | `limited_poa`, or `test_realm` for the test consumer | `limited_poa` |
//! | `IBKR_TICKLE_SECS` | keep-alive interval (never under 1 s) | `60` |
//! | `IBKR_HOLD_SECS` | keep the session alive this long | `0` |
//! | `IBKR_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; a refused live session token request is never retried.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use broker_session::ibkr::{IbkrConfig, OAuthConfig};
use broker_session::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};
use broker_session_examples::embedded::EmbeddedIbkrOAuth;
use broker_session_examples::env::{self, Transport};
use broker_session_examples::ibkr_run;

type Res = Result<(), Box<dyn Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ibkr_oauth failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res {
    let embedded;
    let (base_url, oauth, trust) = match env::var("IBKR_BASE_URL") {
        Some(url) => {
            let read_key = |name: &str| -> Result<PrivateKeyPem, String> {
                env::file(name)?
                    .map(PrivateKeyPem::new)
                    .ok_or_else(|| format!("{name} is not set"))
            };
            let mut oauth = OAuthConfig::new(
                env::required("IBKR_CONSUMER_KEY")?,
                AccessToken::new(env::required("IBKR_ACCESS_TOKEN")?),
                AccessTokenSecret::new(env::required("IBKR_ACCESS_TOKEN_SECRET")?),
                read_key("IBKR_ENCRYPTION_KEY_FILE")?,
                read_key("IBKR_SIGNATURE_KEY_FILE")?,
                env::required("IBKR_DH_PRIME")?,
            );
            if let Some(realm) = env::var("IBKR_REALM") {
                oauth.realm = realm;
            }
            (url, oauth, None)
        }
        None => {
            embedded = EmbeddedIbkrOAuth::start()?;
            println!(
                "no IBKR_BASE_URL: using the embedded fake IBKR at {}",
                embedded.base_url
            );
            (
                embedded.base_url.clone(),
                embedded.oauth.clone(),
                Some(embedded.trust_pem().as_bytes().to_vec()),
            )
        }
    };
    let mut config = IbkrConfig::oauth(oauth);
    config.base_url = base_url.clone();
    config.tickle_interval = env::seconds("IBKR_TICKLE_SECS", 60)?;
    let hold = env::seconds("IBKR_HOLD_SECS", 0)?;
    let transport = env::transport("IBKR_TRANSPORT")?;
    println!("IBKR OAuth 1.0a at {base_url} ({transport:?} transport)");
    match transport {
        Transport::Ureq => blocking(config, trust, hold, &base_url),
        Transport::Hyper => {
            tokio::runtime::Runtime::new()?.block_on(nonblocking(config, trust, hold, &base_url))
        }
    }
}

fn blocking(config: IbkrConfig, trust: Option<Vec<u8>>, hold: Duration, base_url: &str) -> Res {
    use broker_session_ureq::{Client, Config, Tls};
    let mut transport = Config::default();
    if let Some(pem) = trust {
        transport.tls = Tls::Pem(pem);
    }
    let client = Client::ibkr(config, &transport)?;
    ibkr_run::blocking(&client, hold, base_url)
}

async fn nonblocking(
    config: IbkrConfig,
    trust: Option<Vec<u8>>,
    hold: Duration,
    base_url: &str,
) -> Res {
    use broker_session_hyper::{Config, Session, Tls};
    let mut transport = Config::default();
    if let Some(pem) = trust {
        transport.tls = Tls::Pem(pem);
    }
    let session = Session::ibkr(config, &transport)?;
    ibkr_run::nonblocking(&session, hold, base_url).await
}
