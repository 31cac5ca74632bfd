//! An IBKR OAuth 1.0a session (direct access, no gateway): obtain a live session
//! token, initialise the brokerage session, one signed application call
//! (`GET /iserver/accounts`), keep it alive with tickles, log out.
//!
//! ```text
//! cargo run --example ibkr_oauth
//! ```
//!
//! The session is configured by the OAuth variables of `IbkrConfig::from_env()` (the
//! table in `broker_session::env`): `IBKR_BASE_URL` (default
//! `https://api.ibkr.com/v1/api`), `IBKR_CONSUMER_KEY`, `IBKR_ACCESS_TOKEN`,
//! `IBKR_ACCESS_TOKEN_SECRET`, the private keys in `IBKR_ENCRYPTION_KEY_FILE` and
//! `IBKR_SIGNATURE_KEY_FILE` (PEM, PKCS#1 or PKCS#8), `IBKR_DH_PRIME` (hex), and
//! optionally `IBKR_REALM` (`test_realm` for IBKR's test consumer) and
//! `IBKR_TICKLE_SECS`. Without `IBKR_BASE_URL` it runs against a fake api.ibkr.com (a
//! real OAuth 1.0a server side with throwaway keys) served in-process over HTTPS on
//! 127.0.0.1 (the `fake_ibkr` function at the bottom; your program does not need it).
//! This example also reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IBKR_HOLD_SECS` | keep the session alive this long | `0` |
//! | `IBKR_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; a refused live session token request is never retried.

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use broker_session_ureq::http;
use broker_session_ureq::{FromEnv, IbkrConfig};

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

/// A variable's value, if set and not blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Which server certificates to trust, whichever the transport.
enum Trust {
    PublicRoots,
    Pem(Vec<u8>),
}

fn run() -> Res {
    // Without IBKR_BASE_URL: a fake IBKR (kept alive by `_fake`) and its certificate.
    let (config, trust, _fake) = match var("IBKR_BASE_URL") {
        Some(_) => (IbkrConfig::from_env()?, Trust::PublicRoots, None),
        None => fake_ibkr()?,
    };
    let hold = Duration::from_secs(match var("IBKR_HOLD_SECS") {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| "IBKR_HOLD_SECS: whole seconds")?,
        None => 0,
    });
    println!("IBKR OAuth 1.0a at {}", config.base_url);
    match var("IBKR_TRANSPORT").as_deref().map(str::trim) {
        None | Some("ureq") => blocking(config, trust, hold),
        Some("hyper") => tokio::runtime::Runtime::new()?.block_on(nonblocking(config, trust, hold)),
        Some(other) => Err(format!("IBKR_TRANSPORT must be ureq or hyper, not {other:?}").into()),
    }
}

/// `GET /iserver/accounts`: an application call (IBKR wants it before other
/// `/iserver` calls).
fn accounts(config: &IbkrConfig) -> Result<http::Request<Vec<u8>>, http::Error> {
    http::Request::get(format!("{}/iserver/accounts", config.base_url)).body(Vec::new())
}

fn blocking(config: IbkrConfig, trust: Trust, hold: Duration) -> Res {
    use broker_session_ureq::{Client, Config, Tls};
    let mut transport = Config::default();
    transport.tls = match trust {
        Trust::PublicRoots => Tls::WebPkiRoots,
        Trust::Pem(pem) => Tls::Pem(pem),
    };
    let request = accounts(&config)?;
    let client = Client::ibkr(config, &transport)?;
    client.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in client.drain_events() {
            println!("  {event}");
        }
    };

    let connected = client.connect(); // live session token, ssodh/init, poll until ready
    print_events();
    println!("  brokerage session: {}", connected?);
    let response = client.send(request)?;
    println!(
        "  GET /iserver/accounts (HMAC-SHA256 signed) -> {}",
        response.status()
    );

    // Keep the session alive with tickles for `hold`, printing events.
    let keep_alive = client.keep_alive()?;
    let start = Instant::now();
    while let Some(left) = hold.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) {
        if let Some(event) = client.next_event(left) {
            println!("  {event}");
        }
    }
    drop(keep_alive);

    let status = client.logout()?.confirmed;
    print_events();
    match status {
        Some(false) => println!("  logged out (IBKR answered status false)"),
        _ => println!("  logged out"),
    }
    Ok(())
}

async fn nonblocking(config: IbkrConfig, trust: Trust, hold: Duration) -> Res {
    use broker_session_hyper::{Client, Config, Tls};
    let mut transport = Config::default();
    transport.tls = match trust {
        Trust::PublicRoots => Tls::WebPkiRoots,
        Trust::Pem(pem) => Tls::Pem(pem),
    };
    let request = accounts(&config)?;
    let session = Client::ibkr(config, &transport)?;
    session.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in session.drain_events() {
            println!("  {event}");
        }
    };

    let connected = session.connect().await; // live session token, ssodh/init, poll until ready
    print_events();
    println!("  brokerage session: {}", connected?);
    let response = session.send(request).await?;
    println!(
        "  GET /iserver/accounts (HMAC-SHA256 signed) -> {}",
        response.status()
    );

    // Keep the session alive with tickles for `hold`, printing events.
    let keep_alive = session.keep_alive();
    let _ = tokio::time::timeout(hold, async {
        loop {
            println!("  {}", session.next_event().await);
        }
    })
    .await;
    drop(keep_alive);

    let status = session.logout().await?.confirmed;
    print_events();
    match status {
        Some(false) => println!("  logged out (IBKR answered status false)"),
        _ => println!("  logged out"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Not needed in your program: a fake IBKR for running this example with no account.

use broker_session_examples::embedded::EmbeddedIbkrOAuth;

/// Starts the test kit's fake api.ibkr.com on 127.0.0.1 and returns the configuration
/// for it (read through the same variables, filled with the fake's throwaway
/// credentials; `IBKR_TICKLE_SECS` still applies), its certificate to trust, and the
/// fake, which stops when dropped.
fn fake_ibkr() -> Result<(IbkrConfig, Trust, Option<EmbeddedIbkrOAuth>), Box<dyn Error>> {
    let fake = EmbeddedIbkrOAuth::start()?;
    println!("no IBKR_BASE_URL: using a fake IBKR at {}", fake.base_url);
    let o = &fake.oauth;
    let config = IbkrConfig::from_lookup(|name| match name {
        "IBKR_BASE_URL" => Some(fake.base_url.clone()),
        "IBKR_CONSUMER_KEY" => Some(o.consumer_key.clone()),
        "IBKR_ACCESS_TOKEN" => Some(o.access_token.expose_secret().to_owned()),
        "IBKR_ACCESS_TOKEN_SECRET" => Some(o.access_token_secret.expose_secret().to_owned()),
        "IBKR_ENCRYPTION_KEY" => Some(o.encryption_key.expose_secret().to_owned()),
        "IBKR_SIGNATURE_KEY" => Some(o.signature_key.expose_secret().to_owned()),
        "IBKR_DH_PRIME" => Some(o.dh_prime.clone()),
        "IBKR_REALM" => Some(o.realm.clone()),
        "IBKR_TICKLE_SECS" => var(name),
        _ => None,
    })?;
    let trust = Trust::Pem(fake.trust_pem().as_bytes().to_vec());
    Ok((config, trust, Some(fake)))
}
