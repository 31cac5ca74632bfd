//! The quickstart: every session flow of the library, on both transports, against
//! fake brokers served in-process over HTTPS on 127.0.0.1. No account, no network,
//! no configuration; done in about ten seconds.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It shows, with the blocking (ureq) and the async (hyper) transport:
//! - IG: a v3 login kept alive across token refreshes, an encrypted-password v2 login,
//!   an account switch, an authorized application call, logout;
//! - IBKR Client Portal Gateway: a session behind a self-signed certificate, kept
//!   alive with tickles, an application call, logout;
//! - IBKR OAuth 1.0a: a live session token (Diffie-Hellman, RSA, HMAC), the brokerage
//!   session initialised, a signed application call, logout.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use std::fmt::Display;

use broker_session_examples::embedded::{EmbeddedGateway, EmbeddedIbkrOAuth, EmbeddedIg};
use broker_session_ureq::http;
use broker_session_ureq::{IbkrConfig, IgConfig, IgEnvironment, LoginFlow};

type Res = Result<(), Box<dyn Error>>;

/// How long each demo keeps its session alive with the timers running.
const HOLD: Duration = Duration::from_millis(2500);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res {
    // IG access tokens live 2 s here (60 s at IG) so refreshes show within seconds.
    let ig = EmbeddedIg::start(Duration::from_secs(2))?;
    let gateway = EmbeddedGateway::start()?;
    let oauth = EmbeddedIbkrOAuth::start()?;
    println!("fake IG            {}", ig.base_url);
    println!("fake IBKR gateway  {}", gateway.base_url);
    println!("fake IBKR OAuth    {}", oauth.base_url);

    blocking::ig_v3(&ig)?;
    blocking::ig_encrypted_v2_switch(&ig)?;
    blocking::ibkr_gateway(&gateway)?;
    blocking::ibkr_oauth(&oauth)?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        nonblocking::ig_v3(&ig).await?;
        nonblocking::ig_encrypted_v2_switch(&ig).await?;
        nonblocking::ibkr_gateway(&gateway).await?;
        nonblocking::ibkr_oauth(&oauth).await
    })?;

    let (logins, refreshes) = ig.counts();
    let (tokens, refused) = oauth.token_counts();
    println!();
    println!("fake IG saw {logins} logins and {refreshes} token refreshes");
    println!(
        "fake gateway answered {} tickles; fake IBKR issued {tokens} live session tokens and refused {refused} signatures",
        gateway.tickles()
    );
    Ok(())
}

/// Prints what a call returned.
fn said(what: &str, line: impl Display) {
    println!("  {what}: {line}");
}

/// IBKR's answer to a logout, in words.
fn logged_out(status: Option<bool>) -> &'static str {
    match status {
        Some(false) => "done (IBKR answered status false)",
        _ => "done",
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn ig_config(ig: &EmbeddedIg, flow: LoginFlow) -> Result<IgConfig, Box<dyn Error>> {
    let mut config = IgConfig::builder(IgEnvironment::Custom(ig.base_url.clone()))
        .api_key(ig.api_key.as_str())
        .identifier(ig.identifier.as_str())
        .password(ig.password.as_str())
        .login_flow(flow)
        .build()?;
    // Refresh 1 s before the 2 s tokens expire.
    config.refresh_margin = Duration::from_secs(1);
    Ok(config)
}

fn ig_accounts(ig: &EmbeddedIg) -> http::Request<Vec<u8>> {
    let mut r = http::Request::new(Vec::new());
    *r.uri_mut() = format!("{}/accounts", ig.base_url)
        .parse()
        .unwrap_or_default();
    r.headers_mut()
        .insert("Version", http::HeaderValue::from_static("1"));
    r
}

fn ibkr_accounts(base_url: &str) -> http::Request<Vec<u8>> {
    let mut r = http::Request::new(Vec::new());
    *r.uri_mut() = format!("{base_url}/iserver/accounts")
        .parse()
        .unwrap_or_default();
    r
}

fn gateway_config(gateway: &EmbeddedGateway) -> Result<IbkrConfig, Box<dyn Error>> {
    let mut config = IbkrConfig::gateway();
    config.base_url = gateway.base_url.clone();
    config.tickle_interval = Duration::from_secs(1);
    Ok(config)
}

fn oauth_config(oauth: &EmbeddedIbkrOAuth) -> Result<IbkrConfig, Box<dyn Error>> {
    let mut config = IbkrConfig::oauth(oauth.oauth.clone());
    config.base_url = oauth.base_url.clone();
    config.tickle_interval = Duration::from_secs(1);
    Ok(config)
}

mod blocking {
    use super::*;
    use broker_session_ureq::{Client, Config, IbkrSession, IgSession, Tls};

    fn trusting(pem: &str) -> Config {
        let mut config = Config::default();
        config.tls = Tls::Pem(pem.as_bytes().to_vec());
        config
    }

    fn print_ig(client: &Client<IgSession>) {
        for e in client.drain_events() {
            println!("  {e}");
        }
    }

    fn print_ibkr(client: &Client<IbkrSession>) {
        for e in client.drain_events() {
            println!("  {e}");
        }
    }

    pub(super) fn ig_v3(ig: &EmbeddedIg) -> Res {
        section("IG v3 login kept alive across token refreshes (ureq, blocking)");
        let client = Client::ig(ig_config(ig, LoginFlow::V3)?, &trusting(ig.trust_pem()))?;
        client.subscribe(); // events are printed, the login's included
        let info = client.login()?;
        print_ig(&client);
        said("login", info);
        {
            let _keep_alive = client.keep_alive()?;
            std::thread::sleep(HOLD);
        }
        print_ig(&client);
        let response = client.send(ig_accounts(ig))?;
        println!("  app call: GET /accounts -> {}", response.status());
        let confirmed = client.logout()?.server_confirmed;
        print_ig(&client);
        said("logout", format!("IG confirmed: {confirmed}"));
        Ok(())
    }

    pub(super) fn ig_encrypted_v2_switch(ig: &EmbeddedIg) -> Res {
        section("IG encrypted-password v2 login, account switch (ureq, blocking)");
        let client = Client::ig(
            ig_config(ig, LoginFlow::EncryptedV2)?,
            &trusting(ig.trust_pem()),
        )?;
        client.subscribe(); // events are printed, the login's included
        let info = client.login()?;
        print_ig(&client);
        said("login", info);
        let already = client
            .switch_account(ig.accounts[1].as_str(), false)?
            .already_active;
        print_ig(&client);
        said(
            "switch",
            format!("now on {} (already active: {already})", ig.accounts[1]),
        );
        let response = client.send(ig_accounts(ig))?;
        println!("  app call: GET /accounts -> {}", response.status());
        let confirmed = client.logout()?.server_confirmed;
        print_ig(&client);
        said("logout", format!("IG confirmed: {confirmed}"));
        Ok(())
    }

    pub(super) fn ibkr_gateway(gateway: &EmbeddedGateway) -> Res {
        section("IBKR Client Portal Gateway with tickles (ureq, blocking)");
        let client = Client::ibkr(gateway_config(gateway)?, &trusting(gateway.trust_pem()))?;
        client.subscribe(); // events are printed, the login's included
        let status = client.connect()?;
        print_ibkr(&client);
        said("connect", format_args!("brokerage session {status}"));
        {
            let _keep_alive = client.keep_alive()?;
            std::thread::sleep(HOLD);
        }
        print_ibkr(&client);
        let response = client.send(ibkr_accounts(&gateway.base_url))?;
        println!("  app call: GET /iserver/accounts -> {}", response.status());
        let status = client.logout()?.confirmed;
        print_ibkr(&client);
        said("logout", logged_out(status));
        Ok(())
    }

    pub(super) fn ibkr_oauth(oauth: &EmbeddedIbkrOAuth) -> Res {
        section("IBKR OAuth 1.0a: live session token, init, signed call (ureq, blocking)");
        let client = Client::ibkr(oauth_config(oauth)?, &trusting(oauth.trust_pem()))?;
        client.subscribe(); // events are printed, the login's included
        let status = client.connect()?;
        print_ibkr(&client);
        said("connect", format_args!("brokerage session {status}"));
        let response = client.send(ibkr_accounts(&oauth.base_url))?;
        println!(
            "  app call: GET /iserver/accounts (HMAC-SHA256 signed) -> {}",
            response.status()
        );
        let status = client.logout()?.confirmed;
        print_ibkr(&client);
        said("logout", logged_out(status));
        Ok(())
    }
}

mod nonblocking {
    use super::*;
    use broker_session_hyper::{Client, Config, IbkrSession, IgSession, Tls};

    fn trusting(pem: &str) -> Config {
        let mut config = Config::default();
        config.tls = Tls::Pem(pem.as_bytes().to_vec());
        config
    }

    fn print_ig(session: &Client<IgSession>) {
        for e in session.drain_events() {
            println!("  {e}");
        }
    }

    fn print_ibkr(session: &Client<IbkrSession>) {
        for e in session.drain_events() {
            println!("  {e}");
        }
    }

    pub(super) async fn ig_v3(ig: &EmbeddedIg) -> Res {
        section("IG v3 login kept alive across token refreshes (hyper, async)");
        let session = Client::ig(ig_config(ig, LoginFlow::V3)?, &trusting(ig.trust_pem()))?;
        session.subscribe(); // events are printed, the login's included
        let info = session.login().await?;
        print_ig(&session);
        said("login", info);
        {
            let _keep_alive = session.keep_alive();
            tokio::time::sleep(HOLD).await;
        }
        print_ig(&session);
        let response = session.send(ig_accounts(ig)).await?;
        println!("  app call: GET /accounts -> {}", response.status());
        let confirmed = session.logout().await?.server_confirmed;
        print_ig(&session);
        said("logout", format!("IG confirmed: {confirmed}"));
        Ok(())
    }

    pub(super) async fn ig_encrypted_v2_switch(ig: &EmbeddedIg) -> Res {
        section("IG encrypted-password v2 login, account switch (hyper, async)");
        let session = Client::ig(
            ig_config(ig, LoginFlow::EncryptedV2)?,
            &trusting(ig.trust_pem()),
        )?;
        session.subscribe(); // events are printed, the login's included
        let info = session.login().await?;
        print_ig(&session);
        said("login", info);
        let already = session
            .switch_account(ig.accounts[1].as_str(), false)
            .await?
            .already_active;
        print_ig(&session);
        said(
            "switch",
            format!("now on {} (already active: {already})", ig.accounts[1]),
        );
        let response = session.send(ig_accounts(ig)).await?;
        println!("  app call: GET /accounts -> {}", response.status());
        let confirmed = session.logout().await?.server_confirmed;
        print_ig(&session);
        said("logout", format!("IG confirmed: {confirmed}"));
        Ok(())
    }

    pub(super) async fn ibkr_gateway(gateway: &EmbeddedGateway) -> Res {
        section("IBKR Client Portal Gateway with tickles (hyper, async)");
        // The logout above ended the gateway's session, as with the real gateway.
        println!("  (the user logs in again on the gateway's web page)");
        gateway.browser_login();
        let session = Client::ibkr(gateway_config(gateway)?, &trusting(gateway.trust_pem()))?;
        session.subscribe(); // events are printed, the login's included
        let status = session.connect().await?;
        print_ibkr(&session);
        said("connect", format_args!("brokerage session {status}"));
        {
            let _keep_alive = session.keep_alive();
            tokio::time::sleep(HOLD).await;
        }
        print_ibkr(&session);
        let response = session.send(ibkr_accounts(&gateway.base_url)).await?;
        println!("  app call: GET /iserver/accounts -> {}", response.status());
        let status = session.logout().await?.confirmed;
        print_ibkr(&session);
        said("logout", logged_out(status));
        Ok(())
    }

    pub(super) async fn ibkr_oauth(oauth: &EmbeddedIbkrOAuth) -> Res {
        section("IBKR OAuth 1.0a: live session token, init, signed call (hyper, async)");
        let session = Client::ibkr(oauth_config(oauth)?, &trusting(oauth.trust_pem()))?;
        session.subscribe(); // events are printed, the login's included
        let status = session.connect().await?;
        print_ibkr(&session);
        said("connect", format_args!("brokerage session {status}"));
        let response = session.send(ibkr_accounts(&oauth.base_url)).await?;
        println!(
            "  app call: GET /iserver/accounts (HMAC-SHA256 signed) -> {}",
            response.status()
        );
        let status = session.logout().await?.confirmed;
        print_ibkr(&session);
        said("logout", logged_out(status));
        Ok(())
    }
}
