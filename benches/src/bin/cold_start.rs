//! Cold start: process start to the first authorized application call, on loopback.
//!
//! Start the fake brokers first (`cargo run --release -p broker-session-testkit --bin
//! sim-server -- --http-port 18080`), then time this binary with hyperfine:
//!
//! ```text
//! cold-start ig http://127.0.0.1:18080          # ureq: IG v2 login, GET /accounts
//! cold-start ig-v3 http://127.0.0.1:18080       # ureq: IG v3 login, GET /accounts
//! cold-start ig-async http://127.0.0.1:18080    # hyper/tokio: IG v2 login, GET /accounts
//! cold-start ibkr http://127.0.0.1:18080        # ureq: IBKR gateway connect, GET /iserver/accounts
//! ```
//!
//! With `--print` it prints the time from `main` to the answer of the first
//! authorized call (the part hyperfine cannot split from process start-up).

use std::process::ExitCode;
use std::time::Instant;

use broker_session::ibkr::IbkrConfig;
use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
use broker_session_testkit::ig::FakeIgConfig;

fn ig_config(base: &str, flow: LoginFlow) -> Result<IgConfig, String> {
    let f = FakeIgConfig::default();
    let mut c = IgConfig::new(
        IgEnvironment::Custom(format!("{base}{}", f.prefix)),
        f.api_key.as_str(),
        f.identifier.as_str(),
        f.password.as_str(),
    );
    c.login_flow = flow;
    Ok(c)
}

fn get(url: String, version: Option<&str>) -> Result<http::Request<Vec<u8>>, String> {
    let mut b = http::Request::get(url);
    if let Some(v) = version {
        b = b.header("Version", v);
    }
    b.body(Vec::new()).map_err(|e| e.to_string())
}

fn run(mode: &str, base: &str) -> Result<u16, String> {
    let config = broker_session_ureq::Config::default();
    match mode {
        "ig" | "ig-v3" => {
            let flow = if mode == "ig" {
                LoginFlow::V2
            } else {
                LoginFlow::V3
            };
            let cfg = ig_config(base, flow)?;
            let accounts = format!("{}/accounts", cfg.environment.base_url());
            let client =
                broker_session_ureq::Client::ig(cfg, &config).map_err(|e| e.to_string())?;
            client.login().map_err(|e| e.to_string())?;
            let r = client
                .send(get(accounts, Some("1"))?)
                .map_err(|e| e.to_string())?;
            Ok(r.status().as_u16())
        }
        "ig-async" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let cfg = ig_config(base, LoginFlow::V2)?;
                let accounts = format!("{}/accounts", cfg.environment.base_url());
                let hcfg = broker_session_hyper::Config::default();
                let s = broker_session_hyper::Client::ig(cfg, &hcfg).map_err(|e| e.to_string())?;
                s.login().await.map_err(|e| e.to_string())?;
                let r = s
                    .send(get(accounts, Some("1"))?)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.status().as_u16())
            })
        }
        "ibkr" => {
            let mut cfg = IbkrConfig::gateway();
            cfg.base_url = format!("{base}/v1/api");
            let accounts = format!("{}/iserver/accounts", cfg.base_url);
            let client =
                broker_session_ureq::Client::ibkr(cfg, &config).map_err(|e| e.to_string())?;
            client.connect().map_err(|e| e.to_string())?;
            let r = client
                .send(get(accounts, None)?)
                .map_err(|e| e.to_string())?;
            Ok(r.status().as_u16())
        }
        other => Err(format!("unknown mode {other}: ig, ig-v3, ig-async or ibkr")),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let print = args.iter().any(|a| a == "--print");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(mode), Some(base)) = (pos.first(), pos.get(1)) else {
        eprintln!("usage: cold-start ig|ig-v3|ig-async|ibkr BASE_URL [--print]");
        return ExitCode::from(2);
    };
    match run(mode, base.trim_end_matches('/')) {
        Ok(200) => {
            if print {
                println!(
                    "{mode}: first authorized call answered after {:.2?}",
                    start.elapsed()
                );
            }
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{mode}: the authorized call got {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{mode}: {e}");
            ExitCode::FAILURE
        }
    }
}
