//! An IG Markets session, start to finish: log in, switch account if asked, one
//! authorized application call (`GET /accounts`), keep the session alive, log out.
//!
//! With no configuration it runs against the fake IG broker of the test kit, served
//! in-process over HTTPS on 127.0.0.1:
//!
//! ```text
//! cargo run --example ig_session
//! ```
//!
//! Point it at IG (or at `sim-server`, or any fake) with environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `IG_BASE_URL` | REST base URL, e.g. `https://demo-api.ig.com/gateway/deal` or `https://api.ig.com/gateway/deal` | the embedded fake |
//! | `IG_API_KEY`, `IG_IDENTIFIER`, `IG_PASSWORD` | credentials (required with `IG_BASE_URL`) | the fake's |
//! | `IG_FLOW` | `v2`, `v3` or `encrypted` (v2 with an RSA-encrypted password) | `v2` |
//! | `IG_SWITCH_ACCOUNT` | account id to switch to after login | none |
//! | `IG_HOLD_SECS` | keep the session alive this long, timers running | `0` |
//! | `IG_TRANSPORT` | `ureq` (blocking) or `hyper` (async) | `ureq` |
//!
//! Prints one line per event, never a secret. Exits non-zero with a message on
//! failure; rejected credentials are tried once, never again.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use broker_session::ig::{IgConfig, IgEnvironment, IgOutcome, LoginFlow};
use broker_session_examples::embedded::EmbeddedIg;
use broker_session_examples::env::{self, Transport};
use broker_session_examples::{hold, lines};

type Res = Result<(), Box<dyn Error>>;

struct Settings {
    config: IgConfig,
    /// PEM to trust (the embedded fake's certificate); public roots otherwise.
    trust: Option<String>,
    switch_to: Option<String>,
    hold: Duration,
    transport: Transport,
    base_url: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ig_session failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res {
    let flow = match env::var("IG_FLOW").as_deref().map(str::trim) {
        None | Some("v2") => LoginFlow::V2,
        Some("v3") => LoginFlow::V3,
        Some("encrypted") => LoginFlow::EncryptedV2,
        Some(other) => {
            return Err(format!("IG_FLOW must be v2, v3 or encrypted, not {other:?}").into());
        }
    };
    // Keep the fake alive for the whole run.
    let embedded;
    let (base_url, api_key, identifier, password, trust) = match env::var("IG_BASE_URL") {
        Some(url) => (
            url,
            env::required("IG_API_KEY")?,
            env::required("IG_IDENTIFIER")?,
            env::required("IG_PASSWORD")?,
            None,
        ),
        None => {
            embedded = EmbeddedIg::start(Duration::from_secs(60))?;
            println!(
                "no IG_BASE_URL: using the embedded fake IG at {}",
                embedded.base_url
            );
            (
                embedded.base_url.clone(),
                embedded.api_key.clone(),
                embedded.identifier.clone(),
                embedded.password.clone(),
                Some(embedded.trust_pem().to_owned()),
            )
        }
    };
    let mut config = IgConfig::new(
        IgEnvironment::Custom(base_url.clone()),
        api_key,
        identifier,
        password,
    );
    config.login_flow = flow;
    let settings = Settings {
        config,
        trust,
        switch_to: env::var("IG_SWITCH_ACCOUNT"),
        hold: env::seconds("IG_HOLD_SECS", 0)?,
        transport: env::transport("IG_TRANSPORT")?,
        base_url,
    };
    println!(
        "IG session at {} ({:?} login, {:?} transport)",
        settings.base_url, flow, settings.transport
    );
    match settings.transport {
        Transport::Ureq => blocking(settings),
        Transport::Hyper => tokio::runtime::Runtime::new()?.block_on(nonblocking(settings)),
    }
}

fn accounts(base_url: &str) -> Result<http::Request<Vec<u8>>, Box<dyn Error>> {
    Ok(http::Request::get(format!("{base_url}/accounts"))
        .header("Version", "1")
        .header("Accept", "application/json; charset=UTF-8")
        .body(Vec::new())?)
}

fn blocking(s: Settings) -> Res {
    use broker_session_ureq::{Client, Config, Tls};
    let mut transport = Config::default();
    if let Some(pem) = &s.trust {
        transport.tls = Tls::Pem(pem.as_bytes().to_vec());
    }
    let client = Client::ig(s.config, &transport)?;
    let print = |c: &Client<_>| {
        for e in c.drain_events() {
            println!("  {}", lines::ig(&e));
        }
    };
    let login = client.login();
    print(&client);
    let info = login?;
    println!("  {}", lines::ig_outcome(&IgOutcome::LoggedIn(info)));
    if let Some(account) = &s.switch_to {
        let already = client.switch_account(account.as_str(), false)?;
        print(&client);
        println!("  switched to {account} (already active: {already})");
    }
    let response = client.send(accounts(&s.base_url)?)?;
    println!("  GET /accounts -> {}", response.status());
    hold::blocking(&client, s.hold, lines::ig)?;
    let confirmed = client.logout()?;
    print(&client);
    println!("  logged out (server confirmed: {confirmed})");
    Ok(())
}

async fn nonblocking(s: Settings) -> Res {
    use broker_session_hyper::{Config, Session, Tls};
    let mut transport = Config::default();
    if let Some(pem) = &s.trust {
        transport.tls = Tls::Pem(pem.as_bytes().to_vec());
    }
    let session = Session::ig(s.config, &transport)?;
    let print = |c: &Session<_>| {
        for e in c.drain_events() {
            println!("  {}", lines::ig(&e));
        }
    };
    let login = session.login().await;
    print(&session);
    let info = login?;
    println!("  {}", lines::ig_outcome(&IgOutcome::LoggedIn(info)));
    if let Some(account) = &s.switch_to {
        let already = session.switch_account(account.as_str(), false).await?;
        print(&session);
        println!("  switched to {account} (already active: {already})");
    }
    let response = session.send(accounts(&s.base_url)?).await?;
    println!("  GET /accounts -> {}", response.status());
    hold::nonblocking(&session, s.hold, lines::ig).await;
    let confirmed = session.logout().await?;
    print(&session);
    println!("  logged out (server confirmed: {confirmed})");
    Ok(())
}
