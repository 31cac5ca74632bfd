//! What IBKR's answers mean: which state of the two-tier session a status shows, and
//! which answers say "no session" or "no brokerage session". No IO, no state: the
//! machine (`machine/answers.rs`) decides what to do with these meanings.
//!
//! Sources: `/work/shared/spec/ibkr-session.md` (BrokerageSessionStatus, the 401 and
//! `/sso/Login` redirect of a gateway without a session, `{"error":"no session"}`,
//! 400 `no bridge`).

use super::decode::{self, AuthStatus};

/// What an answer says about the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionClass {
    /// The gateway or API could not be reached.
    Unreachable,
    /// No (SSO / read-only) session: 401, a redirect to `/sso/Login` or
    /// `/sso/Dispatcher`, or `{"error":"no session"}`.
    NoSession,
    /// A session exists, but it is not connected to the IBKR backend.
    NotConnected,
    /// Another brokerage session for the same username is active elsewhere.
    Competing,
    /// Connected, but the brokerage session is not (or no longer) authenticated:
    /// `ssodh/init` or `reauthenticate` is needed.
    NotAuthenticated,
    /// `authenticated && connected && !competing`, and `established` not `false`.
    Ready,
}

/// Which session state a BrokerageSessionStatus shows.
///
/// ```
/// use broker_session::ibkr::responses::auth_status;
/// use broker_session::ibkr::{session_class, SessionClass};
/// let s = auth_status(br#"{"authenticated":true,"connected":true,"competing":false}"#).unwrap();
/// assert_eq!(session_class(&s), SessionClass::Ready);
/// ```
#[must_use]
pub fn session_class(s: &AuthStatus) -> SessionClass {
    let authenticated = s.authenticated == Some(true);
    let connected = s.connected == Some(true);
    let competing = s.competing == Some(true);
    if competing {
        SessionClass::Competing
    } else if authenticated && connected && s.established != Some(false) {
        SessionClass::Ready
    } else if !connected && !authenticated {
        SessionClass::NotConnected
    } else {
        SessionClass::NotAuthenticated
    }
}

/// Whether a response means "no session": 401, a redirect to IBKR's SSO login pages,
/// or a body `{"error":"no session"}` (any status).
pub fn is_no_session<B: AsRef<[u8]>>(response: &http::Response<B>) -> bool {
    let status = response.status();
    if status == http::StatusCode::UNAUTHORIZED {
        return true;
    }
    if status.is_redirection() {
        return is_sso_redirect(response);
    }
    let body = response.body().as_ref();
    // Every answer passes here, so a body that cannot hold the words is not parsed.
    may_say_no_session(body)
        && matches!(decode::error_text(body), Some(e) if e.trim().eq_ignore_ascii_case("no session"))
}

/// Whether `body` may hold the JSON string `no session` in any case: the words
/// themselves, or an escape (`\u…`) that could spell them. Without either, no `error`
/// field of the body can read "no session". Searches for the space between the words
/// (rare in compact JSON) rather than comparing at every byte.
fn may_say_no_session(body: &[u8]) -> bool {
    const WORDS: &[u8] = b"no session";
    memchr::memchr(b'\\', body).is_some()
        || memchr::memchr_iter(b' ', body).any(|space| {
            space
                .checked_sub(2)
                .and_then(|start| body.get(start..start + WORDS.len()))
                .is_some_and(|w| w.eq_ignore_ascii_case(WORDS))
        })
}

/// Whether a redirect points at `/sso/Login` or `/sso/Dispatcher`.
pub fn is_sso_redirect<B>(response: &http::Response<B>) -> bool {
    crate::wire::header_str(response.headers(), "location").is_some_and(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("/sso/login") || l.contains("/sso/dispatcher")
    })
}

/// Whether a response says the brokerage session is not initialised (400 `no bridge`).
pub fn is_no_bridge<B: AsRef<[u8]>>(response: &http::Response<B>) -> bool {
    response.status() == http::StatusCode::BAD_REQUEST
        && decode::error_text(response.body().as_ref())
            .is_some_and(|e| e.to_ascii_lowercase().contains("no bridge"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(a: Option<bool>, c: Option<bool>, comp: Option<bool>, e: Option<bool>) -> AuthStatus {
        AuthStatus {
            authenticated: a,
            connected: c,
            competing: comp,
            established: e,
            ..AuthStatus::default()
        }
    }

    #[test]
    fn classification_rules() {
        let t = Some(true);
        let f = Some(false);
        assert_eq!(session_class(&st(t, t, f, None)), SessionClass::Ready);
        assert_eq!(session_class(&st(t, t, f, t)), SessionClass::Ready);
        assert_eq!(
            session_class(&st(t, t, f, f)),
            SessionClass::NotAuthenticated
        );
        assert_eq!(session_class(&st(t, t, t, None)), SessionClass::Competing);
        assert_eq!(
            session_class(&st(f, t, f, None)),
            SessionClass::NotAuthenticated
        );
        assert_eq!(
            session_class(&st(f, f, f, None)),
            SessionClass::NotConnected
        );
        assert_eq!(
            session_class(&AuthStatus::default()),
            SessionClass::NotConnected
        );
    }

    #[test]
    fn no_session_shapes() {
        let r = http::Response::builder()
            .status(401)
            .body(Vec::new())
            .unwrap();
        assert!(is_no_session(&r));
        let r = http::Response::builder()
            .status(302)
            .header("location", "https://localhost:5000/sso/Login?forwardTo=22")
            .body(Vec::new())
            .unwrap();
        assert!(is_no_session(&r));
        let r = http::Response::builder()
            .status(200)
            .body(br#"{"error":"no session"}"#.to_vec())
            .unwrap();
        assert!(is_no_session(&r));
        let r = http::Response::builder()
            .status(302)
            .header("location", "/elsewhere")
            .body(Vec::new())
            .unwrap();
        assert!(!is_no_session(&r));
        let r = http::Response::builder()
            .status(400)
            .body(br#"{"error":"Bad Request: no bridge","statusCode":400}"#.to_vec())
            .unwrap();
        assert!(is_no_bridge(&r));
    }

    /// The quick filter never hides a "no session": any case, padding, or the words
    /// spelled with escapes still parse; other bodies are not.
    #[test]
    fn no_session_in_any_spelling_is_found_and_others_are_not() {
        let answer = |body: &str| {
            let r = http::Response::builder()
                .status(200)
                .body(body.as_bytes().to_vec())
                .unwrap();
            is_no_session(&r)
        };
        for yes in [
            r#"{"error":"No Session"}"#,
            r#"{"error":"  NO SESSION "}"#,
            r#"{"error":"no\u0020session"}"#,
            r#"{"\u0065rror":"\u006eo session"}"#,
        ] {
            assert!(answer(yes), "{yes}");
        }
        for no in [
            r#"{"error":"no sessions"}"#,
            r#"{"message":"no session"}"#,
            r#"{"session":"abc","hmds":{"error":"no bridge"}}"#,
            r#"{"error":{"text":"no session"}}"#,
            "no session",
        ] {
            assert!(!answer(no), "{no}");
        }
        assert!(!may_say_no_session(
            br#"{"session":"abc","hmds":{"error":"no bridge"}}"#
        ));
    }
}
