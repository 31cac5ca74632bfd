//! `Display` of IBKR states, outcomes and answers: one short line each, for a person
//! reading a log. Built from typed fields only; the tickle's session id (a secret) is
//! never printed, and neither are user names.

use std::fmt;

use super::{AuthStatus, IbkrOutcome, IbkrState, Pacing, TickleDetails, TickleInfo, ValidateInfo};
use crate::machine::Clipped;

/// ```
/// use broker_session::ibkr::IbkrState;
/// assert_eq!(IbkrState::Ready.to_string(), "ready");
/// assert_eq!(
///     IbkrState::BrowserLoginRequired.to_string(),
///     "browser login required: log in on the gateway's web page"
/// );
/// ```
impl fmt::Display for IbkrState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
            Self::AcquiringToken => "obtaining a live session token",
            Self::BrowserLoginRequired => {
                "browser login required: log in on the gateway's web page"
            }
            Self::NotConnected => "not connected to the IBKR backend",
            Self::NotAuthenticated => "brokerage session not authenticated",
            Self::Competing => "competing: another brokerage session is open for this user",
            Self::Ready => "ready",
            Self::BackingOff { .. } => {
                "backing off: IBKR throttled (429), nothing is sent until the pause ends"
            }
            Self::Closed => "closed: credentials rejected or keys that do not match",
        })
    }
}

/// `ready` when [`AuthStatus::is_ready`], otherwise the three flags IBKR sent
/// (`not authenticated, connected, not competing`) and its message, if any.
///
/// ```
/// use broker_session::ibkr::responses::auth_status;
/// let s = auth_status(br#"{"authenticated":true,"connected":true,"competing":false}"#).unwrap();
/// assert_eq!(s.to_string(), "ready");
/// let s = auth_status(br#"{"authenticated":false,"connected":true,"competing":false,"message":"timed out"}"#).unwrap();
/// assert_eq!(s.to_string(), "not authenticated, connected, not competing: \"timed out\"");
/// ```
impl fmt::Display for AuthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ready() {
            return f.write_str("ready");
        }
        flags(f, self)?;
        if let Some(message) = self.message.as_deref().filter(|m| !m.trim().is_empty()) {
            write!(f, ": \"{}\"", Clipped(message, 40))?;
        }
        Ok(())
    }
}

/// The three flags of a status, comma-separated; unknown ones are left out.
fn flags(f: &mut fmt::Formatter<'_>, s: &AuthStatus) -> fmt::Result {
    let parts = [
        (s.authenticated, "authenticated"),
        (s.connected, "connected"),
        (s.competing, "competing"),
    ];
    let mut first = true;
    for (value, name) in parts {
        let Some(value) = value else { continue };
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        if !value {
            f.write_str("not ")?;
        }
        f.write_str(name)?;
    }
    if first {
        f.write_str("status unknown")?;
    }
    Ok(())
}

/// At most 120 characters: when the SSO session expires, the brokerage session's
/// state, the `hmds` error when set, and how long pacing held the tickle back when
/// it did (`, paced 0.4 s`). The session id is never shown.
///
/// ```
/// use broker_session::ibkr::responses::{tickle, TickleResponse};
/// let body = br#"{"session":"0123456789abcdef","ssoExpires":570000,"collission":false,
///   "userId":1,"iserver":{"authStatus":{"authenticated":true,"connected":true,"competing":false}}}"#;
/// let TickleResponse::Ok(t) = tickle(body).unwrap() else { panic!() };
/// assert_eq!(t.to_string(), "SSO expires in 570 s, brokerage ready");
/// ```
impl fmt::Display for TickleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.details() {
            Ok(d) => write!(f, "{d}")?,
            Err(_) => f.write_str("details unreadable")?,
        }
        paced_suffix(f, self.pacing)
    }
}

/// The SSO expiry, the brokerage session's status and the `hmds` error, if any; never
/// the session id.
///
/// ```
/// use broker_session::ibkr::responses::{tickle, TickleResponse};
/// let body = br#"{"ssoExpires":570000,"hmds":{"error":"no bridge"},
///   "iserver":{"authStatus":{"authenticated":false,"connected":true,"competing":false}}}"#;
/// let TickleResponse::Ok(t) = tickle(body).unwrap() else { panic!() };
/// assert_eq!(
///     t.details().unwrap().to_string(),
///     "SSO expires in 570 s, brokerage not authenticated, connected, not competing, hmds: no bridge"
/// );
/// ```
impl fmt::Display for TickleDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sso_expires.map(|ms| ms / 1000) {
            Some(secs @ 0..=99_999) => write!(f, "SSO expires in {secs} s")?,
            Some(secs) if secs < 0 => f.write_str("SSO expired")?,
            Some(_) => f.write_str("SSO expires in > 99999 s")?,
            None => f.write_str("SSO expiry unknown")?,
        }
        match &self.auth_status {
            Some(s) if s.is_ready() => f.write_str(", brokerage ready")?,
            Some(s) => {
                f.write_str(", brokerage ")?;
                flags(f, s)?;
            }
            None => {}
        }
        if let Some(e) = self.hmds_error.as_deref().filter(|e| !e.trim().is_empty()) {
            write!(f, ", hmds: {}", Clipped(e, 12))?;
        }
        Ok(())
    }
}

/// `, paced 0.4 s` when pacing held the request back; nothing otherwise.
fn paced_suffix(f: &mut fmt::Formatter<'_>, p: Pacing) -> fmt::Result {
    match p.delayed_by {
        Some(d) => write!(f, ", paced {}", Secs(d)),
        None => Ok(()),
    }
}

/// A delay in seconds with one decimal, capped (`> 99999 s`).
struct Secs(std::time::Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0.as_millis() / 100;
        if tenths > 999_990 {
            f.write_str("> 99999 s")
        } else {
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        }
    }
}

/// `sent at once`, or `held 59.6 s by pacing`.
///
/// ```
/// use broker_session::ibkr::Pacing;
/// assert_eq!(Pacing::default().to_string(), "sent at once");
/// ```
impl fmt::Display for Pacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.delayed_by {
            Some(d) => write!(f, "held {} by pacing", Secs(d)),
            None => f.write_str("sent at once"),
        }
    }
}

/// `SSO valid (paper), expires in 570 s`, or `SSO not valid`; with `, paced 59.6 s`
/// when pacing held the validate back.
///
/// ```
/// use broker_session::ibkr::responses::validate;
/// let v = validate(br#"{"RESULT":true,"USER_NAME":"someone","LOGIN_TYPE":2,"EXPIRES":570000}"#).unwrap();
/// assert_eq!(v.to_string(), "SSO valid (paper), expires in 570 s");
/// ```
impl fmt::Display for ValidateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Some(true) => f.write_str("SSO valid")?,
            Some(false) => f.write_str("SSO not valid")?,
            None => f.write_str("SSO validation answered")?,
        }
        match self.login_type {
            Some(1) => f.write_str(" (live)")?,
            Some(2) => f.write_str(" (paper)")?,
            _ => {}
        }
        if let Some(ms) = self.expires {
            write!(f, ", expires in {} s", ms / 1000)?;
        }
        paced_suffix(f, self.pacing)
    }
}

/// ```
/// use broker_session::ibkr::IbkrOutcome;
/// assert_eq!(IbkrOutcome::LoggedOut { status: Some(true) }.to_string(), "logged out");
/// ```
impl fmt::Display for IbkrOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected(s) if s.is_ready() => f.write_str("brokerage session ready"),
            Self::Connected(s) => write!(f, "connected: {s}"),
            Self::Status(s) => write!(f, "status: {s}"),
            Self::Tickled(t) => write!(f, "tickled: {t}"),
            Self::Validated(v) => write!(f, "validated: {v}"),
            Self::LoggedOut {
                status: Some(false),
            } => f.write_str("logged out (IBKR answered status false)"),
            Self::LoggedOut { .. } => f.write_str("logged out"),
            Self::Recovered { generation } => write!(f, "recovered: generation {generation}"),
            Self::Adopted {
                generation,
                installed: true,
            } => write!(f, "adopted generation {generation}"),
            Self::Adopted { generation, .. } => {
                write!(f, "generation {generation} already held")
            }
            Self::Following => f.write_str("following"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(a: Option<bool>, c: Option<bool>, comp: Option<bool>) -> AuthStatus {
        AuthStatus {
            authenticated: a,
            connected: c,
            competing: comp,
            ..AuthStatus::default()
        }
    }

    #[test]
    fn a_tickle_is_one_short_line_without_its_session_id() {
        let body = format!(
            r#"{{"session":"deadbeefcafebabe0123456789","ssoExpires":{},"collission":true,
            "userId":{},"hmds":{{"error":"{}"}},"iserver":{{"authStatus":{{"authenticated":false,
            "connected":false,"competing":true,"message":"{}"}}}}}}"#,
            i64::MAX,
            i64::MAX,
            "no bridge ".repeat(50),
            "x".repeat(500)
        );
        let crate::ibkr::decode::TickleResponse::Ok(mut t) =
            crate::ibkr::decode::tickle(body.as_bytes()).unwrap()
        else {
            panic!("a tickle")
        };
        t.pacing = Pacing {
            delayed_by: Some(std::time::Duration::MAX),
        };
        let s = t.to_string();
        assert!(s.chars().count() <= 120, "{} chars: {s}", s.chars().count());
        assert!(s.ends_with(", paced > 99999 s"), "{s}");
        assert!(!s.contains("deadbeef"), "{s}");
        assert!(
            s.contains("not authenticated, not connected, competing"),
            "{s}"
        );
        assert!(!format!("{t:?}").contains("deadbeef"));
    }

    #[test]
    fn a_tickle_whose_details_do_not_parse_still_prints() {
        let crate::ibkr::decode::TickleResponse::Ok(t) =
            crate::ibkr::decode::tickle(br#"{"session":5,"ssoExpires":"soon"}"#).unwrap()
        else {
            panic!("a tickle")
        };
        assert!(t.details().is_err());
        assert_eq!(t.to_string(), "details unreadable");
    }

    #[test]
    fn statuses_and_outcomes() {
        assert_eq!(AuthStatus::default().to_string(), "status unknown");
        assert_eq!(
            status(Some(true), Some(true), Some(true)).to_string(),
            "authenticated, connected, competing"
        );
        assert_eq!(
            IbkrOutcome::Connected(status(Some(true), Some(true), Some(false))).to_string(),
            "brokerage session ready"
        );
        assert_eq!(
            IbkrOutcome::Status(status(Some(false), None, Some(false))).to_string(),
            "status: not authenticated, not competing"
        );
        assert_eq!(
            IbkrOutcome::Validated(ValidateInfo {
                result: Some(false),
                user_name: Some("secret-user".into()),
                ..ValidateInfo::default()
            })
            .to_string(),
            "validated: SSO not valid"
        );
        assert_eq!(
            IbkrOutcome::LoggedOut { status: None }.to_string(),
            "logged out"
        );
    }
}
