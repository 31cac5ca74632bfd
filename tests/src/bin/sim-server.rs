//! `sim-server`: the fake IG and IBKR brokers on loopback, for pointing any client at.
//!
//! `cargo run -p broker-session-testkit --bin sim-server -- --help` lists every option
//! with its meaning and default ([`HELP`]). At start-up it prints which base URL to
//! give to which client library, the credentials the fakes accept, the certificate to
//! trust and a curl example. Everything listens on 127.0.0.1 only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_session::Now;
use broker_session_testkit::ibkr::{
    ACCESS_TOKEN, BASE_PATH, CONSUMER_KEY, FakeIbkr, PUBLIC_BASE_URL, realm_for,
};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig};
use broker_session_testkit::server::{CertMode, Server, ServerOptions};
use broker_session_testkit::sim::{FakeBroker, Reply};

/// The text of `--help`.
const HELP: &str = "\
sim-server: the fake IG and IBKR brokers on 127.0.0.1, for pointing any client at.

Usage: sim-server [OPTIONS]

Paths under /v1/api go to the IBKR fake; every other path goes to the IG fake (its
REST API is under /gateway/deal; anything else there answers 404).

Options:
  --http-port N          plain HTTP port (default: 0, an ephemeral port)
  --https-port N         HTTPS port (default: 0, an ephemeral port)
  --ibkr MODE            IBKR mode: `gateway`, a Client Portal Gateway whose browser
                         login is done, or `oauth`, OAuth 1.0a with the test consumer
                         TESTCONS and realm test_realm (default: gateway)
  --oauth-public-url URL with --ibkr oauth: signatures computed for this base URL are
                         accepted besides the URL the client connected to and the
                         one its Host header names, as for a client that believes it
                         talks to the real host (default: https://api.ibkr.com/v1/api)
  --self-signed          HTTPS presents a self-signed leaf, as the IBKR gateway does
                         (default: a leaf for 127.0.0.1 and localhost signed by a CA
                         generated at start-up)
  --ca-out FILE          write the PEM certificate to trust to FILE (default: print
                         it to standard output)
  --request-log FILE     append one JSON line per request to FILE: time, method, path
                         and query, headers with credentials redacted, body size,
                         status and error code of the answer (default: no log)
  --ig-access-ttl S      IG v3 access-token lifetime in seconds (default: 60)
  --ig-min-login-gap S   IG: logins closer than S seconds are throttled (default: 0)
  --ibkr-competing       IBKR: another brokerage session competes at start
                         (default: none)
  --ibkr-idle-timeout S  IBKR: the brokerage session drops after S idle seconds
                         (default: 300)
  --body-timeout S       seconds to wait for a request's headers, then for its body,
                         before answering 408 or closing (default: 10)
  --stall S              seconds an injected timeout stalls before the connection
                         drops (default: 3)
  --for S                stop after S seconds (default: run until killed)
  -h, --help             print this help
";

/// Routes requests to the IBKR fake (paths under `/v1/api`) or the IG fake
/// (everything else, so that a wrong IG base URL gets the IG fake's 404).
struct Brokers {
    ig: FakeIg,
    ibkr: FakeIbkr,
}

/// How many request records each fake keeps; older ones are dropped so a
/// long-running server does not grow without bound.
const RECORDS: usize = 10_000;

impl FakeBroker for Brokers {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: Now) -> Reply {
        let path = request.uri().path();
        let ibkr = path == BASE_PATH || path.starts_with(&format!("{BASE_PATH}/"));
        if ibkr {
            let reply = self.ibkr.handle(request, now);
            let records = &mut self.ibkr.requests;
            if records.len() > RECORDS {
                records.drain(..records.len() - RECORDS);
            }
            reply
        } else {
            let reply = self.ig.handle(request, now);
            let rejections = &mut self.ig.stats.rejections;
            if rejections.len() > RECORDS {
                rejections.drain(..rejections.len() - RECORDS);
            }
            reply
        }
    }
}

struct Args {
    options: ServerOptions,
    oauth: bool,
    oauth_public_url: String,
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
        oauth_public_url: PUBLIC_BASE_URL.to_owned(),
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
                print!("{HELP}");
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
            "--oauth-public-url" => {
                let url = value();
                if !url.starts_with("https://") && !url.starts_with("http://") {
                    usage("--oauth-public-url takes an http(s) URL");
                }
                a.oauth_public_url = url;
            }
            "--request-log" => a.options.request_log = Some(value().into()),
            "--body-timeout" => a.options.body_timeout = secs(value()),
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
        let (mut fake, oauth) = FakeIbkr::oauth(false);
        if let Some(server) = fake.oauth_server() {
            server.public_base_url = args.oauth_public_url.clone();
        }
        (fake, Some(oauth))
    } else {
        (FakeIbkr::gateway(), None)
    };
    ibkr.competing = args.competing;
    if let Some(t) = args.idle_timeout {
        ibkr.idle_timeout = t;
    }
    let brokers = Arc::new(Mutex::new(Brokers { ig, ibkr }));
    let server = Server::start_shared(brokers, args.options.clone())
        .unwrap_or_else(|e| usage(&format!("cannot start: {e}")));
    let (http, https) = (server.http_url(), server.https_url());

    let ig = &args.ig;
    println!("IG REST: the base URL for IG clients (trading-ig: IGService.BASE_URL;");
    println!("  ig-trading-api: new APIClient(base); broker-session: IgEnvironment::Custom):");
    println!("  {http}{}", ig.prefix);
    println!("  {https}{}", ig.prefix);
    println!("  api key:    {}", ig.api_key);
    println!("  identifier: {}", ig.identifier);
    println!("  password:   {}", ig.password);
    println!("  accounts:   {}", ig.accounts.join(", "));
    println!("  web-platform login: {https}{}", ig.web_platform_path);
    match &oauth {
        None => {
            println!("IBKR Client Portal Gateway (browser login already done): the base URL");
            println!("  for gateway clients (ibind: IbkrClient(url=...); broker-session:");
            println!("  IbkrConfig::gateway() with base_url):");
        }
        Some(_) => {
            println!("IBKR OAuth 1.0a: the base URL for OAuth clients (ibind:");
            println!("  OAuth1aConfig(oauth_rest_url=...); broker-session: IbkrConfig::oauth");
            println!("  with base_url):");
        }
    }
    println!("  {http}{BASE_PATH}/");
    println!("  {https}{BASE_PATH}/");
    if let Some(o) = &oauth {
        println!("  consumer key:        {CONSUMER_KEY}");
        println!("  realm:               {}", realm_for(CONSUMER_KEY));
        println!("  access token:        {ACCESS_TOKEN}");
        println!(
            "  access token secret: {}",
            o.access_token_secret.expose_secret()
        );
        println!(
            "  DH prime, encryption and signature keys: tests/fixtures/ibkr-oauth1-vectors.json"
        );
        println!(
            "  signatures accepted for this address, the Host header's, and {}",
            args.oauth_public_url
        );
    }
    let curl_login = format!(
        "-H 'X-IG-API-KEY: {}' -H 'Version: 2' -H 'Content-Type: application/json' -d '{{\"identifier\":\"{}\",\"password\":\"{}\"}}'",
        ig.api_key, ig.identifier, ig.password
    );
    match &args.ca_out {
        Some(path) => {
            match std::fs::write(path, server.trust_pem()) {
                Ok(()) => println!("Certificate to trust (PEM) written to {path}"),
                Err(e) => usage(&format!("cannot write {path}: {e}")),
            }
            println!(
                "  (Python requests, trading-ig, ibind: REQUESTS_CA_BUNDLE={path}; ibind gateway: cacert={path}; Node: NODE_EXTRA_CA_CERTS={path})"
            );
            println!(
                "Example: curl -i --cacert {path} {curl_login} {https}{}/session",
                ig.prefix
            );
        }
        None => {
            print!("Certificate to trust (PEM):\n{}", server.trust_pem());
            println!("Example: curl -i {curl_login} {http}{}/session", ig.prefix);
        }
    }
    if let Some(path) = &args.options.request_log {
        println!("Request log (JSON lines): {}", path.display());
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
