//! `sim-server`: the fake IG and IBKR brokers on loopback, for pointing any client at.
//!
//! ```text
//! cargo run -p broker-session-testkit --bin sim-server -- [options]
//!
//!   --http-port N          plain HTTP port (default: ephemeral)
//!   --https-port N         HTTPS port (default: ephemeral)
//!   --ibkr MODE            gateway (default) or oauth
//!   --self-signed          HTTPS presents a self-signed leaf, as the IBKR gateway
//!                          does (default: a leaf signed by a generated CA)
//!   --ca-out FILE          write the PEM certificate to trust to FILE
//!   --ig-access-ttl S      IG v3 access-token lifetime in seconds (default 60)
//!   --ig-min-login-gap S   IG: logins closer than S seconds are throttled (default 0)
//!   --ibkr-competing       IBKR: another brokerage session competes at start
//!   --ibkr-idle-timeout S  IBKR: the brokerage session drops after S idle seconds
//!                          (default 300)
//!   --stall S              how long an injected timeout stalls (default 3)
//!   --for S                stop after S seconds (default: run until killed)
//! ```
//!
//! It prints the base URLs and the credentials the fakes accept. Everything listens
//! on 127.0.0.1 only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::Now;
use broker_session_testkit::ibkr::{ACCESS_TOKEN, BASE_PATH, CONSUMER_KEY, FakeIbkr};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};
use broker_session_testkit::sim::{FakeBroker, Reply};

/// Routes requests to the IG fake or the IBKR fake by path.
struct Brokers {
    ig: FakeIg,
    ig_paths: [String; 2],
    ibkr: FakeIbkr,
}

/// How many IBKR request records the server keeps; older ones are dropped so a
/// long-running server does not grow without bound.
const IBKR_RECORDS: usize = 10_000;

impl FakeBroker for Brokers {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        let path = request.uri().path();
        if self.ig_paths.iter().any(|p| path.starts_with(p.as_str())) {
            let reply = self.ig.handle(request, now);
            let rejections = &mut self.ig.stats.rejections;
            if rejections.len() > IBKR_RECORDS {
                rejections.drain(..rejections.len() - IBKR_RECORDS);
            }
            reply
        } else {
            let reply = self.ibkr.handle(request, now);
            let records = &mut self.ibkr.requests;
            if records.len() > IBKR_RECORDS {
                records.drain(..records.len() - IBKR_RECORDS);
            }
            reply
        }
    }
}

struct Args {
    options: ServerOptions,
    oauth: bool,
    ca_out: Option<String>,
    ig: FakeIgConfig,
    competing: bool,
    idle_timeout: Option<Duration>,
    run_for: Option<Duration>,
}

fn usage(msg: &str) -> ! {
    eprintln!("sim-server: {msg}\nrun with --help for the options");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        options: ServerOptions::default(),
        oauth: false,
        ca_out: None,
        ig: FakeIgConfig::default(),
        competing: false,
        idle_timeout: None,
        run_for: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let secs = |v: String| -> Duration {
            Duration::from_secs(
                v.parse()
                    .unwrap_or_else(|_| usage("expected whole seconds")),
            )
        };
        match flag.as_str() {
            "--help" | "-h" => {
                println!(
                    "sim-server [--http-port N] [--https-port N] [--ibkr gateway|oauth] [--self-signed]\n           [--ca-out FILE] [--ig-access-ttl S] [--ig-min-login-gap S] [--ibkr-competing]\n           [--ibkr-idle-timeout S] [--stall S] [--for S]"
                );
                std::process::exit(0);
            }
            "--http-port" => {
                a.options.http_port = value().parse().unwrap_or_else(|_| usage("bad port"))
            }
            "--https-port" => {
                a.options.https_port = value().parse().unwrap_or_else(|_| usage("bad port"))
            }
            "--ibkr" => match value().as_str() {
                "gateway" => a.oauth = false,
                "oauth" => a.oauth = true,
                _ => usage("--ibkr takes gateway or oauth"),
            },
            "--self-signed" => a.options.cert = CertMode::SelfSignedLeaf,
            "--ca-out" => a.ca_out = Some(value()),
            "--ig-access-ttl" => a.ig.access_ttl = secs(value()),
            "--ig-min-login-gap" => a.ig.min_login_interval = secs(value()),
            "--ibkr-competing" => a.competing = true,
            "--ibkr-idle-timeout" => a.idle_timeout = Some(secs(value())),
            "--stall" => a.options.stall = secs(value()),
            "--for" => a.run_for = Some(secs(value())),
            other => usage(&format!("unknown option {other}")),
        }
    }
    a
}

fn main() {
    let args = parse();
    let ig = FakeIg::new(args.ig.clone());
    let (mut ibkr, oauth) = if args.oauth {
        let (fake, oauth) = FakeIbkr::oauth(false);
        (fake, Some(oauth))
    } else {
        (FakeIbkr::gateway(), None)
    };
    ibkr.competing = args.competing;
    if let Some(t) = args.idle_timeout {
        ibkr.idle_timeout = t;
    }
    let ig_paths = [args.ig.prefix.clone(), args.ig.web_platform_path.clone()];
    let brokers = Arc::new(Mutex::new(Brokers { ig, ig_paths, ibkr }));
    let server = Server::start_shared(brokers, args.options.clone())
        .unwrap_or_else(|e| usage(&format!("cannot start: {e}")));

    let ig = &args.ig;
    println!("IG REST (Custom environment base URL):");
    println!("  {}{}", server.http_url(), ig.prefix);
    println!("  {}{}", server.https_url(), ig.prefix);
    println!("  api key:    {}", ig.api_key);
    println!("  identifier: {}", ig.identifier);
    println!("  password:   {}", ig.password);
    println!("  accounts:   {}", ig.accounts.join(", "));
    println!(
        "  web-platform login: {}{}",
        server.https_url(),
        ig.web_platform_path
    );
    match &oauth {
        None => println!("IBKR Client Portal Gateway (browser login already done):"),
        Some(_) => println!("IBKR OAuth 1.0a:"),
    }
    println!("  {}{BASE_PATH}", server.http_url());
    println!("  {}{BASE_PATH}", server.https_url());
    if let Some(o) = &oauth {
        println!("  consumer key:        {CONSUMER_KEY}");
        println!("  access token:        {ACCESS_TOKEN}");
        println!(
            "  access token secret: {}",
            o.access_token_secret.expose_secret()
        );
        println!(
            "  DH prime, encryption and signature keys: tests/fixtures/ibkr-oauth1-vectors.json"
        );
    }
    match &args.ca_out {
        Some(path) => match std::fs::write(path, server.trust_pem()) {
            Ok(()) => println!("Certificate to trust (PEM) written to {path}"),
            Err(e) => usage(&format!("cannot write {path}: {e}")),
        },
        None => print!("Certificate to trust (PEM):\n{}", server.trust_pem()),
    }
    println!("Listening on 127.0.0.1 only. Stop with Ctrl-C.");

    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if args.run_for.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    drop(server);
}
