//! An IBKR Client Portal Gateway session: check the status, initialise the brokerage
//! session if needed, one application call (`GET /iserver/accounts`), keep it alive
//! with tickles, log out.
//!
//! ```text
//! cargo run --example ibkr_gateway
//! ```
//!
//! The session is configured by the variables of `IbkrConfig::from_env()` (the table
//! in `broker_session::env`): `IBKR_GATEWAY_URL` (e.g.
//! `https://localhost:5000/v1/api`; log in through the gateway's web page first), and
//! optionally `IBKR_COMPETE` and `IBKR_TICKLE_SECS`. Without `IBKR_GATEWAY_URL` it
//! runs against a fake gateway served in-process over HTTPS on 127.0.0.1, behind a
//! self-signed certificate like the real one (the `fake_gateway` function at the
//! bottom; your program does not need it). This example also reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IBKR_CA_CERT` | path to a PEM certificate to trust (the gateway's own, or its CA) | public roots |
//! | `IBKR_INSECURE_LOOPBACK` | `1` skips certificate verification; refused for non-loopback hosts | `0` |
//! | `IBKR_HOLD_SECS` | keep the session alive this long | `0` |
//! | `IBKR_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; a gateway with nobody logged in is reported once, not polled in a loop.

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
            eprintln!("ibkr_gateway failed: {e}");
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
    InsecureLoopback,
}

fn run() -> Res {
    // Without IBKR_GATEWAY_URL: a fake gateway (kept alive by `_fake`) and its certificate.
    let (config, mut trust, _fake) = match var("IBKR_GATEWAY_URL") {
        Some(_) => (IbkrConfig::from_env()?, Trust::PublicRoots, None),
        None => fake_gateway()?,
    };
    if let Some(path) = var("IBKR_CA_CERT") {
        let pem = std::fs::read(&path).map_err(|e| format!("IBKR_CA_CERT: {path}: {e}"))?;
        trust = Trust::Pem(pem);
    }
    if matches!(var("IBKR_INSECURE_LOOPBACK").as_deref(), Some("1" | "true")) {
        trust = Trust::InsecureLoopback;
    }
    let hold = Duration::from_secs(match var("IBKR_HOLD_SECS") {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| "IBKR_HOLD_SECS: whole seconds")?,
        None => 0,
    });
    println!("IBKR gateway at {}", config.base_url);
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
        Trust::InsecureLoopback => Tls::InsecureLoopbackOnly,
    };
    let request = accounts(&config)?;
    let client = Client::ibkr(config, &transport)?;
    client.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in client.drain_events() {
            println!("  {event}");
        }
    };

    let connected = client.connect(); // status, ssodh/init if needed, poll until ready
    print_events();
    println!("  brokerage session: {}", connected?);
    let response = client.send(request)?;
    println!("  GET /iserver/accounts -> {}", response.status());

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
        Trust::InsecureLoopback => Tls::InsecureLoopbackOnly,
    };
    let request = accounts(&config)?;
    let session = Client::ibkr(config, &transport)?;
    session.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in session.drain_events() {
            println!("  {event}");
        }
    };

    let connected = session.connect().await; // status, ssodh/init if needed, poll until ready
    print_events();
    println!("  brokerage session: {}", connected?);
    let response = session.send(request).await?;
    println!("  GET /iserver/accounts -> {}", response.status());

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
// Not needed in your program: a fake gateway for running this example with no account.

use broker_session_examples::embedded::EmbeddedGateway;

/// Starts the test kit's fake gateway on 127.0.0.1 (the browser login already done)
/// and returns the configuration for it (`IBKR_COMPETE` and `IBKR_TICKLE_SECS` still
/// apply), its self-signed certificate to trust, and the fake, which stops when
/// dropped.
fn fake_gateway() -> Result<(IbkrConfig, Trust, Option<EmbeddedGateway>), Box<dyn Error>> {
    let fake = EmbeddedGateway::start()?;
    println!(
        "no IBKR_GATEWAY_URL: using a fake gateway at {}",
        fake.base_url
    );
    let config = IbkrConfig::from_lookup(|name| match name {
        "IBKR_GATEWAY_URL" => Some(fake.base_url.clone()),
        "IBKR_COMPETE" | "IBKR_TICKLE_SECS" => var(name),
        _ => None,
    })?;
    let trust = Trust::Pem(fake.trust_pem().as_bytes().to_vec());
    Ok((config, trust, Some(fake)))
}
