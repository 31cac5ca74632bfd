//! An IG Markets session, start to finish: log in, switch account if asked, one
//! authorized application call (`GET /accounts`), keep the session alive, log out.
//!
//! ```text
//! cargo run --example ig_session
//! ```
//!
//! The session is configured by the `IG_*` variables of `IgConfig::from_env()` (the
//! table in `broker_session::env`): `IG_BASE_URL` (`demo`, `live` or a URL),
//! `IG_API_KEY`, `IG_IDENTIFIER`, `IG_PASSWORD`, and optionally `IG_FLOW` (`v2`,
//! `v3`, `encrypted` …) and `IG_ACCOUNT_ID`. Without `IG_BASE_URL` it runs against a
//! fake IG served in-process over HTTPS on 127.0.0.1 (the `fake_ig` function at the
//! bottom; your program does not need it). This example also reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IG_SWITCH_ACCOUNT` | account id to switch to after login | none |
//! | `IG_HOLD_SECS` | keep the session alive this long, timers running | `0` |
//! | `IG_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; rejected credentials are tried once, never again.

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use broker_session_ureq::http;
use broker_session_ureq::{FromEnv, IgConfig};

type Res = Result<(), Box<dyn Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ig_session failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A variable's value, if set and not blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn run() -> Res {
    // Without IG_BASE_URL: a fake IG (kept alive by `_fake`), and its certificate.
    let (config, trust_pem, _fake) = match var("IG_BASE_URL") {
        Some(_) => (IgConfig::from_env()?, None, None),
        None => {
            let (config, pem, fake) = fake_ig()?;
            (config, Some(pem), Some(fake))
        }
    };
    let switch_to = var("IG_SWITCH_ACCOUNT");
    let hold = Duration::from_secs(match var("IG_HOLD_SECS") {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| "IG_HOLD_SECS: whole seconds")?,
        None => 0,
    });
    println!(
        "IG session at {} ({:?} login)",
        config.environment.base_url(),
        config.login_flow
    );
    match var("IG_TRANSPORT").as_deref().map(str::trim) {
        None | Some("ureq") => blocking(config, trust_pem, switch_to, hold),
        Some("hyper") => tokio::runtime::Runtime::new()?
            .block_on(nonblocking(config, trust_pem, switch_to, hold)),
        Some(other) => Err(format!("IG_TRANSPORT must be ureq or hyper, not {other:?}").into()),
    }
}

/// `GET /accounts`: an application call, stamped with the session's credentials.
fn accounts(config: &IgConfig) -> Result<http::Request<Vec<u8>>, http::Error> {
    http::Request::get(format!("{}/accounts", config.environment.base_url()))
        .header("Version", "1")
        .header("Accept", "application/json; charset=UTF-8")
        .body(Vec::new())
}

fn blocking(
    config: IgConfig,
    trust_pem: Option<Vec<u8>>,
    switch_to: Option<String>,
    hold: Duration,
) -> Res {
    use broker_session_ureq::{Client, Config, Tls};
    let mut transport = Config::default();
    if let Some(pem) = trust_pem {
        transport.tls = Tls::Pem(pem);
    }
    let request = accounts(&config)?;
    let client = Client::ig(config, &transport)?;
    client.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in client.drain_events() {
            println!("  {event}");
        }
    };

    let login = client.login();
    print_events();
    println!("  logged in: {}", login?);
    if let Some(account) = switch_to {
        let already = client
            .switch_account(account.as_str(), false)?
            .already_active;
        print_events();
        println!("  switched to {account} (already active: {already})");
    }
    let response = client.send(request)?;
    println!("  GET /accounts -> {}", response.status());

    // Keep the session alive (v3 tokens are refreshed) for `hold`, printing events.
    let keep_alive = client.keep_alive()?;
    let start = Instant::now();
    while let Some(left) = hold.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) {
        if let Some(event) = client.next_event(left) {
            println!("  {event}");
        }
    }
    drop(keep_alive);

    let confirmed = client.logout()?.server_confirmed;
    print_events();
    println!("  logged out (IG confirmed: {confirmed})");
    Ok(())
}

async fn nonblocking(
    config: IgConfig,
    trust_pem: Option<Vec<u8>>,
    switch_to: Option<String>,
    hold: Duration,
) -> Res {
    use broker_session_hyper::{Client, Config, Tls};
    let mut transport = Config::default();
    if let Some(pem) = trust_pem {
        transport.tls = Tls::Pem(pem);
    }
    let request = accounts(&config)?;
    let session = Client::ig(config, &transport)?;
    session.subscribe(); // events are printed, the login's included
    let print_events = || {
        for event in session.drain_events() {
            println!("  {event}");
        }
    };

    let login = session.login().await;
    print_events();
    println!("  logged in: {}", login?);
    if let Some(account) = switch_to {
        let already = session
            .switch_account(account.as_str(), false)
            .await?
            .already_active;
        print_events();
        println!("  switched to {account} (already active: {already})");
    }
    let response = session.send(request).await?;
    println!("  GET /accounts -> {}", response.status());

    // Keep the session alive (v3 tokens are refreshed) for `hold`, printing events.
    let keep_alive = session.keep_alive();
    let _ = tokio::time::timeout(hold, async {
        loop {
            println!("  {}", session.next_event().await);
        }
    })
    .await;
    drop(keep_alive);

    let confirmed = session.logout().await?.server_confirmed;
    print_events();
    println!("  logged out (IG confirmed: {confirmed})");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Not needed in your program: a fake IG for running this example with no account.

use broker_session_examples::embedded::EmbeddedIg;

/// Starts the test kit's fake IG on 127.0.0.1 and returns the configuration for it
/// (the connection variables are the fake's; `IG_FLOW` and `IG_ACCOUNT_ID` still
/// apply), the certificate to trust, and the fake, which stops when dropped.
fn fake_ig() -> Result<(IgConfig, Vec<u8>, EmbeddedIg), Box<dyn Error>> {
    let fake = EmbeddedIg::start(Duration::from_secs(60))?;
    println!("no IG_BASE_URL: using a fake IG at {}", fake.base_url);
    let config = IgConfig::from_lookup(|name| match name {
        "IG_BASE_URL" => Some(fake.base_url.clone()),
        "IG_API_KEY" => Some(fake.api_key.clone()),
        "IG_IDENTIFIER" => Some(fake.identifier.clone()),
        "IG_PASSWORD" => Some(fake.password.clone()),
        other => var(other),
    })?;
    let pem = fake.trust_pem().as_bytes().to_vec();
    Ok((config, pem, fake))
}
