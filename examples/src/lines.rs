//! One printable line per session event. Built from typed fields only: no secret
//! can reach the output (secret types print as `***` anyway).

use std::time::Instant;

use broker_session::Event;
use broker_session::ibkr::{IbkrOutcome, IbkrState};
use broker_session::ig::{IgOutcome, IgState};

/// A line for an IG session event.
pub fn ig(event: &Event<IgState, IgOutcome>) -> String {
    match event {
        Event::StateChanged(state) => format!("state       {}", ig_state(state)),
        Event::Completed { op, result } => match result {
            Ok(outcome) => format!("{:<11} {}", op.to_string(), ig_outcome(outcome)),
            Err(e) => format!("{:<11} failed: {e}", op.to_string()),
        },
        Event::SessionLost { reason } => format!("LOST        {reason}"),
        other => format!("event       {other:?}"),
    }
}

fn ig_state(state: &IgState) -> String {
    match state {
        IgState::Active { account_id, mode } => format!("active on {account_id} ({mode:?})"),
        IgState::BackingOff { until } => format!("backing off for {}", in_secs(*until)),
        other => format!("{other:?}"),
    }
}

/// A line for an IG operation's result.
pub fn ig_outcome(outcome: &IgOutcome) -> String {
    match outcome {
        IgOutcome::LoggedIn(info) if info.accounts.is_empty() => {
            format!("logged in: account {} ({:?})", info.account_id, info.mode)
        }
        IgOutcome::LoggedIn(info) => format!(
            "logged in: account {} ({:?}), {} accounts",
            info.account_id,
            info.mode,
            info.accounts.len()
        ),
        IgOutcome::Resumed(info) => format!("resumed: account {}", info.account_id),
        IgOutcome::Refreshed { .. } => "access token refreshed (refresh token rotated)".to_owned(),
        IgOutcome::Recovered { generation } => format!("credentials recovered (gen {generation})"),
        IgOutcome::Session {
            streaming_tokens, ..
        } => format!("session read (streaming tokens: {streaming_tokens})"),
        IgOutcome::Switched {
            account_id,
            already_active,
        } => format!("switched to {account_id} (already active: {already_active})"),
        IgOutcome::LoggedOut { server_confirmed } => {
            format!("logged out (server confirmed: {server_confirmed})")
        }
        other => format!("{other:?}"),
    }
}

/// A line for an IBKR session event.
pub fn ibkr(event: &Event<IbkrState, IbkrOutcome>) -> String {
    match event {
        Event::StateChanged(state) => format!("state       {}", ibkr_state(state)),
        Event::Completed { op, result } => match result {
            Ok(outcome) => format!("{:<11} {}", op.to_string(), ibkr_outcome(outcome)),
            Err(e) => format!("{:<11} failed: {e}", op.to_string()),
        },
        Event::SessionLost { reason } => format!("LOST        {reason}"),
        other => format!("event       {other:?}"),
    }
}

fn ibkr_state(state: &IbkrState) -> String {
    match state {
        IbkrState::BackingOff { until } => format!("backing off for {}", in_secs(*until)),
        other => format!("{other:?}"),
    }
}

/// A line for an IBKR operation's result.
pub fn ibkr_outcome(outcome: &IbkrOutcome) -> String {
    match outcome {
        IbkrOutcome::Connected(s) => format!(
            "brokerage session ready (authenticated {:?}, connected {:?}, competing {:?})",
            s.authenticated, s.connected, s.competing
        ),
        IbkrOutcome::Status(s) => format!(
            "status: authenticated {:?}, connected {:?}, competing {:?}",
            s.authenticated, s.connected, s.competing
        ),
        IbkrOutcome::Tickled(t) => format!(
            "tickle: authenticated {:?}, sso expires in {}",
            t.auth_status.as_ref().and_then(|s| s.authenticated),
            t.sso_expires
                .map_or_else(|| "?".to_owned(), |ms| format!("{} s", ms / 1000))
        ),
        IbkrOutcome::Validated(v) => format!("sso validated: result {:?}", v.result),
        IbkrOutcome::LoggedOut { status } => format!("logged out (status {status:?})"),
        other => format!("{other:?}"),
    }
}

fn in_secs(at: Instant) -> String {
    let left = at.saturating_duration_since(Instant::now());
    format!("{:.1} s", left.as_secs_f64())
}
