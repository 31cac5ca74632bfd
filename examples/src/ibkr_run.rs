//! The life both IBKR examples share, gateway or OAuth: connect, one application
//! call (`GET /iserver/accounts`), keep alive for a while, log out.

use std::error::Error;
use std::time::Duration;

use broker_session::ibkr::{IbkrOutcome, IbkrSession};

use crate::{hold, lines};

type Res = Result<(), Box<dyn Error>>;

fn accounts(base_url: &str) -> Result<http::Request<Vec<u8>>, Box<dyn Error>> {
    Ok(http::Request::get(format!("{base_url}/iserver/accounts")).body(Vec::new())?)
}

/// The session's life on the blocking transport, printing one line per event.
pub fn blocking(
    client: &broker_session_ureq::Client<IbkrSession>,
    hold: Duration,
    base_url: &str,
) -> Res {
    let print = || {
        for e in client.drain_events() {
            println!("  {}", lines::ibkr(&e));
        }
    };
    let connected = client.connect();
    print();
    let status = connected?;
    println!("  {}", lines::ibkr_outcome(&IbkrOutcome::Connected(status)));
    let response = client.send(accounts(base_url)?)?;
    println!("  GET /iserver/accounts -> {}", response.status());
    hold::blocking(client, hold, lines::ibkr)?;
    let status = client.logout()?;
    print();
    println!(
        "  {}",
        lines::ibkr_outcome(&IbkrOutcome::LoggedOut { status })
    );
    Ok(())
}

/// The session's life on the async transport, printing one line per event.
pub async fn nonblocking(
    session: &broker_session_hyper::Session<IbkrSession>,
    hold: Duration,
    base_url: &str,
) -> Res {
    let print = || {
        for e in session.drain_events() {
            println!("  {}", lines::ibkr(&e));
        }
    };
    let connected = session.connect().await;
    print();
    let status = connected?;
    println!("  {}", lines::ibkr_outcome(&IbkrOutcome::Connected(status)));
    let response = session.send(accounts(base_url)?).await?;
    println!("  GET /iserver/accounts -> {}", response.status());
    hold::nonblocking(session, hold, lines::ibkr).await;
    let status = session.logout().await?;
    print();
    println!(
        "  {}",
        lines::ibkr_outcome(&IbkrOutcome::LoggedOut { status })
    );
    Ok(())
}
