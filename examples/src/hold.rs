//! Keeping a session alive for a while with its timers running, printing each event
//! as it happens.

use std::time::{Duration, Instant};

use broker_session::{Event, Machine};

/// One printable line per event (see [`crate::lines`]).
pub type Describe<M> = fn(&Event<<M as Machine>::State, <M as Machine>::Outcome>) -> String;

/// Runs the blocking client's keep-alive for `hold`, printing each event.
pub fn blocking<M>(
    client: &broker_session_ureq::Client<M>,
    hold: Duration,
    describe: Describe<M>,
) -> Result<(), broker_session_ureq::Error>
where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    let end = Instant::now() + hold;
    let _keep_alive = client.keep_alive()?;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        if let Some(e) = client.next_event(left) {
            println!("  {}", describe(&e));
        }
    }
}

/// Runs the async session's keep-alive task for `hold`, printing each event.
pub async fn nonblocking<M>(
    session: &broker_session_hyper::Session<M>,
    hold: Duration,
    describe: Describe<M>,
) where
    M: Machine + Send + 'static,
    M::State: Send,
    M::Outcome: Send,
{
    let end = tokio::time::Instant::now() + hold;
    let _keep_alive = session.keep_alive();
    while let Ok(e) = tokio::time::timeout_at(end, session.next_event()).await {
        println!("  {}", describe(&e));
    }
}
