//! An IBKR Client Portal Gateway session: check the status, initialise the brokerage
//! session if needed, one application call (`GET /iserver/accounts`), keep it alive
//! with tickles, log out.
//!
//! With no configuration it runs against the fake gateway of the test kit, served
//! in-process over HTTPS (self-signed certificate, like the real gateway) on
//! 127.0.0.1:
//!
//! ```text
//! cargo run --example ibkr_gateway
//! ```
//!
//! Point it at your gateway (log in through its web page first) with:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IBKR_GATEWAY_URL` | the gateway's API base, e.g. `https://localhost:5000/v1/api` | the embedded fake |
//! | `IBKR_CA_CERT` | path to a PEM certificate to trust (the gateway's own, or its CA) | public roots |
//! | `IBKR_INSECURE_LOOPBACK` | `1` skips certificate verification; refused for non-loopback hosts | `0` |
//! | `IBKR_COMPETE` | `true` takes over a brokerage session open elsewhere | `true` |
//! | `IBKR_TICKLE_SECS` | keep-alive interval (never under 1 s) | `60` |
//! | `IBKR_HOLD_SECS` | keep the session alive this long | `0` |
//! | `IBKR_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; a gateway with nobody logged in is reported once, not polled in a loop.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use broker_session::ibkr::IbkrConfig;
use broker_session_examples::embedded::EmbeddedGateway;
use broker_session_examples::env::{self, Transport};
use broker_session_examples::ibkr_run;

type Res = Result<(), Box<dyn Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ibkr_gateway failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS trust the example uses, independent of the transport.
enum Trust {
    PublicRoots,
    Pem(Vec<u8>),
    InsecureLoopback,
}

fn run() -> Res {
    let embedded;
    let (base_url, mut trust) = match env::var("IBKR_GATEWAY_URL") {
        Some(url) => (url, Trust::PublicRoots),
        None => {
            embedded = EmbeddedGateway::start()?;
            println!(
                "no IBKR_GATEWAY_URL: using the embedded fake gateway at {}",
                embedded.base_url
            );
            (
                embedded.base_url.clone(),
                Trust::Pem(embedded.trust_pem().as_bytes().to_vec()),
            )
        }
    };
    if let Some(pem) = env::file("IBKR_CA_CERT")? {
        trust = Trust::Pem(pem.into_bytes());
    }
    if env::flag("IBKR_INSECURE_LOOPBACK", false)? {
        trust = Trust::InsecureLoopback;
    }
    let mut config = IbkrConfig::gateway();
    config.base_url = base_url.clone();
    config.compete = env::flag("IBKR_COMPETE", true)?;
    config.tickle_interval = env::seconds("IBKR_TICKLE_SECS", 60)?;
    let hold = env::seconds("IBKR_HOLD_SECS", 0)?;
    let transport = env::transport("IBKR_TRANSPORT")?;
    println!("IBKR gateway at {base_url} ({transport:?} transport)");
    match transport {
        Transport::Ureq => blocking(config, trust, hold, &base_url),
        Transport::Hyper => {
            tokio::runtime::Runtime::new()?.block_on(nonblocking(config, trust, hold, &base_url))
        }
    }
}

fn blocking(config: IbkrConfig, trust: Trust, hold: Duration, base_url: &str) -> Res {
    use broker_session_ureq::{Client, Config, Tls};
    let mut transport = Config::default();
    transport.tls = match trust {
        Trust::PublicRoots => Tls::WebPkiRoots,
        Trust::Pem(pem) => Tls::Pem(pem),
        Trust::InsecureLoopback => Tls::InsecureLoopbackOnly,
    };
    let client = Client::ibkr(config, &transport)?;
    ibkr_run::blocking(&client, hold, base_url)
}

async fn nonblocking(config: IbkrConfig, trust: Trust, hold: Duration, base_url: &str) -> Res {
    use broker_session_hyper::{Config, Session, Tls};
    let mut transport = Config::default();
    transport.tls = match trust {
        Trust::PublicRoots => Tls::WebPkiRoots,
        Trust::Pem(pem) => Tls::Pem(pem),
        Trust::InsecureLoopback => Tls::InsecureLoopbackOnly,
    };
    let session = Session::ibkr(config, &transport)?;
    ibkr_run::nonblocking(&session, hold, base_url).await
}
