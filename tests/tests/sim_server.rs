//! The `sim-server` binary: starts, prints its URLs and credentials, serves an IG
//! login to the blocking transport, and stops by itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use broker_session::ig::{IgConfig, IgEnvironment, LoginFlow};
use broker_session_ureq::{Client, Config};

#[test]
fn sim_server_serves_an_ig_login() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim-server"))
        .args(["--for", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sim-server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let done = line.starts_with("Listening on 127.0.0.1");
        lines.push(line);
        if done {
            break;
        }
    }
    let find = |prefix: &str| {
        lines
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    let base = find("http://127.0.0.1:").expect("IG http base URL");
    assert!(base.ends_with("/gateway/deal"), "{base}");
    let field = |name: &str| {
        find(name)
            .and_then(|l| l.split_whitespace().last().map(str::to_owned))
            .expect(name)
    };
    let mut cfg = IgConfig::new(
        IgEnvironment::Custom(base),
        field("api key:").as_str(),
        field("identifier:").as_str(),
        field("password:").as_str(),
    );
    cfg.login_flow = LoginFlow::V3;
    let client = Client::ig(cfg, &Config::default()).expect("client");
    let result = client.login();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result.expect("login").account_id, "ACC-DEFAULT");
}
