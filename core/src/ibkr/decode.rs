//! Lenient response models and pure parsers for the IBKR session endpoints.
//!
//! Every field is optional and unknown fields are ignored: IBKR's OpenAPI files and
//! its live answers disagree (`LOGIN_TYPE` vs `loginType`, `env` vs `envs`, i32 vs
//! epoch milliseconds). Epoch milliseconds are `i64` and accepted as numbers or
//! strings. Errors never quote the body.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::config::ReauthenticateMethod;
use super::endpoint::Endpoint;
use super::policy::{SessionClass, session_class};
use crate::error::ProtocolError;
use crate::plain_json::{Plain, first};
use crate::secret::SessionId;
use crate::wire::{check_body, opt_int_or_string, parse_json};

/// Brokerage session status, from `/iserver/auth/status`, `ssodh/init` and the tickle's
/// `iserver.authStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct AuthStatus {
    /// The brokerage session is authenticated (needed for `/iserver/*`).
    pub authenticated: Option<bool>,
    /// Another brokerage session for the same username exists elsewhere.
    pub competing: Option<bool>,
    /// Connected to the IBKR backend.
    pub connected: Option<bool>,
    /// The brokerage session is fully established (newer API versions only).
    pub established: Option<bool>,
    /// Status message (`""` when authenticated).
    pub message: Option<String>,
    /// Why the status could not be retrieved (`""` normally).
    pub fail: Option<String>,
    /// Internal IBKR MAC information.
    #[serde(rename = "MAC")]
    pub mac: Option<String>,
    /// Internal hardware information.
    pub hardware_info: Option<String>,
    /// Server name and version (absent when unauthenticated).
    #[serde(rename = "serverInfo")]
    pub server_info: Option<ServerInfo>,
}

/// `serverInfo` of an [`AuthStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// e.g. `JifN19053`.
    #[serde(rename = "serverName")]
    pub server_name: Option<String>,
    /// e.g. `Build 10.25.0p, Dec 5, 2023 5:48:12 PM`.
    #[serde(rename = "serverVersion")]
    pub server_version: Option<String>,
}

/// A successful `/tickle` answer.
///
/// The keep-alive acts on one thing in it, what `iserver.authStatus` says of the
/// brokerage session ([`session_class`](Self::session_class)), so only that is read
/// when the answer arrives; the rest of the body is kept and read when asked for
/// ([`details`](Self::details)). A keep-alive every minute for hours need not parse
/// a session id, six status strings and the server's name each time for nobody.
///
/// `Debug` shows the class, the pacing and the body's length, never the body (it
/// holds the session id). The kept body is zeroized on drop.
///
/// ```
/// use broker_session::ibkr::SessionClass;
/// use broker_session::ibkr::responses::{tickle, TickleResponse};
/// let body = br#"{"session":"0123456789abcdef","ssoExpires":570000,
///   "iserver":{"authStatus":{"authenticated":true,"connected":true,"competing":false}}}"#;
/// let TickleResponse::Ok(t) = tickle(body).unwrap() else { panic!() };
/// assert_eq!(t.session_class, Some(SessionClass::Ready));
/// let details = t.details().unwrap();
/// assert_eq!(details.sso_expires, Some(570_000));
/// assert_eq!(details.session.unwrap().expose_secret(), "0123456789abcdef");
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct TickleInfo {
    /// What `iserver.authStatus` says of the brokerage session; `None` when the
    /// answer has no status.
    pub session_class: Option<SessionClass>,
    /// Whether the session held this tickle back to keep IBKR's pacing
    /// ([`IbkrConfig::tickle_min_interval`](super::IbkrConfig::tickle_min_interval)).
    /// Not part of IBKR's answer: the parser leaves it at "not delayed".
    pub pacing: Pacing,
    /// The answer as IBKR sent it, read by [`details`](Self::details).
    body: Zeroizing<Vec<u8>>,
}

impl TickleInfo {
    /// Everything else the answer says, read from the kept body.
    ///
    /// # Errors
    /// [`ProtocolError::MalformedBody`] when a field other than the status flags
    /// has the wrong type (the flags and the JSON itself were checked when the
    /// answer arrived).
    pub fn details(&self) -> Result<TickleDetails, ProtocolError> {
        tickle_details(&self.body)
    }
}

impl fmt::Debug for TickleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TickleInfo")
            .field("session_class", &self.session_class)
            .field("pacing", &self.pacing)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The fields of a `/tickle` answer ([`TickleInfo::details`]).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TickleDetails {
    /// Session id; the WebSocket needs it as cookie `api=<session>`.
    pub session: Option<SessionId>,
    /// Milliseconds until the SSO session expires.
    pub sso_expires: Option<i64>,
    /// IBKR's `collission` (sic) flag.
    pub collision: Option<bool>,
    /// Internal user id.
    pub user_id: Option<i64>,
    /// `iserver.authStatus`: the brokerage session status.
    pub auth_status: Option<AuthStatus>,
    /// `hmds.error` (typically `no bridge`), if any.
    pub hmds_error: Option<String>,
}

/// How the session's pacing treated a request: whether it was held back, and how
/// long, before it was sent (IBKR limits `/tickle` to one a second and
/// `/sso/validate` to one a minute; see
/// [`IbkrConfig::tickle_min_interval`](super::IbkrConfig::tickle_min_interval) and
/// [`IbkrConfig::validate_min_interval`](super::IbkrConfig::validate_min_interval)).
///
/// The answer itself is always fresh: the session never serves a paced call from an
/// earlier answer.
///
/// ```
/// use std::time::Duration;
/// use broker_session::ibkr::Pacing;
///
/// let p = Pacing::default();
/// assert_eq!(p.delayed_by, None);
/// assert!(!p.was_delayed());
/// assert_eq!(p.to_string(), "sent at once");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Pacing {
    /// How long the request waited for its pacing slot; `None` when it was sent as
    /// soon as it was due.
    pub delayed_by: Option<Duration>,
}

impl Pacing {
    /// Whether the request waited for its pacing slot.
    #[must_use]
    pub fn was_delayed(&self) -> bool {
        self.delayed_by.is_some()
    }
}

/// A `/tickle` answer: IBKR's two shapes, the failure one (`{"error": …}`) checked first.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TickleResponse {
    /// The session answered.
    Ok(TickleInfo),
    /// `{"error": "…"}`: e.g. `no session`, or `failed to process request`.
    Failed {
        /// The error text.
        error: String,
    },
}

/// `/sso/validate` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValidateInfo {
    /// `RESULT`: validation succeeded.
    pub result: Option<bool>,
    /// `USER_ID`.
    pub user_id: Option<i64>,
    /// `USER_NAME`.
    pub user_name: Option<String>,
    /// `AUTH_TIME`, epoch milliseconds.
    pub auth_time: Option<i64>,
    /// `EXPIRES`, milliseconds until the SSO session expires.
    pub expires: Option<i64>,
    /// `lastAccessed`, epoch milliseconds.
    pub last_accessed: Option<i64>,
    /// `LOGIN_TYPE` (or `loginType`): 1 live, 2 paper.
    pub login_type: Option<i64>,
    /// `PAPER_USER_NAME`.
    pub paper_user_name: Option<String>,
    /// `IS_MASTER`.
    pub is_master: Option<bool>,
    /// `IS_FREE_TRIAL`.
    pub is_free_trial: Option<bool>,
    /// `SF_ENABLED`.
    pub sf_enabled: Option<bool>,
    /// `QUALIFIED_FOR_MOBILE_AUTH`.
    pub qualified_for_mobile_auth: Option<bool>,
    /// `LANDING_APP`.
    pub landing_app: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `features.env` (or `features.envs`), e.g. `PROD`.
    pub env: Option<String>,
    /// Whether the session held this validate back to keep IBKR's pacing
    /// ([`IbkrConfig::validate_min_interval`](super::IbkrConfig::validate_min_interval)).
    /// Not part of IBKR's answer: the parser leaves it at "not delayed".
    pub pacing: Pacing,
}

/// `/oauth/live_session_token` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LstResponse {
    /// `diffie_hellman_response`: the broker's DH public value, hex.
    pub diffie_hellman_response: String,
    /// `live_session_token_signature`: hex HMAC-SHA1 of the consumer key under the LST.
    pub live_session_token_signature: String,
    /// `live_session_token_expiration`: epoch milliseconds.
    pub live_session_token_expiration: Option<i64>,
}

/// Parses a BrokerageSessionStatus body from [`Endpoint::Status`].
///
/// # Errors
/// [`ProtocolError::MalformedBody`] (or `BodyTooLarge`) for anything but a JSON object
/// of the right field types.
pub fn auth_status(body: &[u8]) -> Result<AuthStatus, ProtocolError> {
    status_answer(Endpoint::Status, body)
}

/// Parses an [`Endpoint::SsodhInit`] answer: a BrokerageSessionStatus.
///
/// # Errors
/// As [`auth_status`].
pub fn ssodh_init(body: &[u8]) -> Result<AuthStatus, ProtocolError> {
    status_answer(Endpoint::SsodhInit, body)
}

/// A BrokerageSessionStatus, read by hand when the body is plain JSON (a session
/// polls for it while the brokerage session comes up), by serde_json otherwise.
fn status_answer(endpoint: Endpoint, body: &[u8]) -> Result<AuthStatus, ProtocolError> {
    check_body(endpoint.name(), body)?;
    let plain = Plain::new(body).and_then(|mut r| {
        let status = AuthStatus::read_plain(&mut r, 0)?;
        r.end()?;
        Some(status)
    });
    match plain {
        Some(status) => Ok(status),
        None => parse_json(endpoint.name(), body),
    }
}

impl AuthStatus {
    /// The object at `r` (see `crate::plain_json`), nested `depth` deep.
    fn read_plain(r: &mut Plain<'_>, depth: u32) -> Option<Self> {
        enum Slot<'s> {
            Flag(&'s mut Option<bool>),
            Text(&'s mut Option<String>),
            Server(&'s mut Option<ServerInfo>),
        }
        let mut s = Self::default();
        let mut seen = [false; 9];
        r.object(depth, |r, key| {
            let (slot, seen) = match key {
                "authenticated" => (Slot::Flag(&mut s.authenticated), &mut seen[0]),
                "competing" => (Slot::Flag(&mut s.competing), &mut seen[1]),
                "connected" => (Slot::Flag(&mut s.connected), &mut seen[2]),
                "established" => (Slot::Flag(&mut s.established), &mut seen[3]),
                "message" => (Slot::Text(&mut s.message), &mut seen[4]),
                "fail" => (Slot::Text(&mut s.fail), &mut seen[5]),
                "MAC" => (Slot::Text(&mut s.mac), &mut seen[6]),
                "hardware_info" => (Slot::Text(&mut s.hardware_info), &mut seen[7]),
                "serverInfo" => (Slot::Server(&mut s.server_info), &mut seen[8]),
                _ => return r.skip(depth + 1),
            };
            first(seen)?;
            match slot {
                Slot::Flag(v) => *v = r.bool_or_null()?,
                Slot::Text(v) => *v = r.string_or_null()?.map(str::to_owned),
                Slot::Server(v) => {
                    *v = if r.null()? {
                        None
                    } else {
                        Some(ServerInfo::read_plain(r, depth + 1)?)
                    };
                }
            }
            Some(())
        })?;
        Some(s)
    }
}

impl ServerInfo {
    fn read_plain(r: &mut Plain<'_>, depth: u32) -> Option<Self> {
        let mut s = Self::default();
        let mut seen = [false; 2];
        r.object(depth, |r, key| {
            let (slot, seen) = match key {
                "serverName" => (&mut s.server_name, &mut seen[0]),
                "serverVersion" => (&mut s.server_version, &mut seen[1]),
                _ => return r.skip(depth + 1),
            };
            first(seen)?;
            *slot = r.string_or_null()?.map(str::to_owned);
            Some(())
        })?;
        Some(s)
    }
}

/// Parses a `/tickle` body, detecting the `{"error": …}` variant first.
///
/// Reads what the keep-alive acts on (the failure shape's `error`, the status
/// flags) and keeps the body for [`TickleInfo::details`]; the rest is checked to be
/// JSON, not read.
///
/// # Errors
/// As [`auth_status`].
pub fn tickle(body: &[u8]) -> Result<TickleResponse, ProtocolError> {
    const EP: &str = Endpoint::Tickle.name();
    check_body(EP, body)?;
    let flags = match Flags::read_plain_tickle(body) {
        Some(flags) => flags,
        None => {
            let k: KeepAlive = parse_json(EP, body)?;
            if let Some(err) = k.error {
                // Only the failure shape has a top-level `error`.
                return Ok(TickleResponse::Failed {
                    error: value_text(err),
                });
            }
            k.iserver.and_then(|i| i.auth_status)
        }
    };
    Ok(TickleResponse::Ok(TickleInfo {
        session_class: flags.map(|f| f.session_class()),
        pacing: Pacing::default(),
        body: Zeroizing::new(body.to_vec()),
    }))
}

/// What the keep-alive reads of a `/tickle` answer (serde_json's reading; see
/// `Flags::read_plain_tickle` for the fast one).
#[derive(Deserialize)]
struct KeepAlive {
    error: Option<serde_json::Value>,
    iserver: Option<KeepAliveIserver>,
}

#[derive(Deserialize)]
struct KeepAliveIserver {
    #[serde(rename = "authStatus")]
    auth_status: Option<Flags>,
}

/// The flags of a tickle's `iserver.authStatus`: what the keep-alive acts on.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct Flags {
    authenticated: Option<bool>,
    competing: Option<bool>,
    connected: Option<bool>,
    established: Option<bool>,
}

impl Flags {
    fn session_class(self) -> SessionClass {
        session_class(&AuthStatus {
            authenticated: self.authenticated,
            competing: self.competing,
            connected: self.connected,
            established: self.established,
            ..AuthStatus::default()
        })
    }

    /// `iserver.authStatus` of a successful tickle, read by hand when the body is
    /// plain JSON (every keep-alive answer); `None` hands the body to serde_json,
    /// as does the failure shape (see `crate::plain_json`).
    fn read_plain_tickle(body: &[u8]) -> Option<Option<Self>> {
        let mut r = Plain::new(body)?;
        let mut flags = None;
        let mut seen_iserver = false;
        r.object(0, |r, key| match key {
            "error" => None,
            "iserver" => {
                first(&mut seen_iserver)?;
                if r.null()? {
                    return Some(());
                }
                let mut seen_status = false;
                r.object(1, |r, key| match key {
                    "authStatus" => {
                        first(&mut seen_status)?;
                        if r.null()? {
                            return Some(());
                        }
                        flags = Some(Self::read_plain(r)?);
                        Some(())
                    }
                    _ => r.skip(2),
                })
            }
            _ => r.skip(1),
        })?;
        r.end()?;
        Some(flags)
    }

    fn read_plain(r: &mut Plain<'_>) -> Option<Self> {
        let mut f = Self::default();
        let mut seen = [false; 4];
        r.object(2, |r, key| {
            let (slot, seen) = match key {
                "authenticated" => (&mut f.authenticated, &mut seen[0]),
                "competing" => (&mut f.competing, &mut seen[1]),
                "connected" => (&mut f.connected, &mut seen[2]),
                "established" => (&mut f.established, &mut seen[3]),
                _ => return r.skip(3),
            };
            first(seen)?;
            *slot = r.bool_or_null()?;
            Some(())
        })?;
        Some(f)
    }
}

/// Every field of a successful `/tickle` body ([`TickleInfo::details`]).
fn tickle_details(body: &[u8]) -> Result<TickleDetails, ProtocolError> {
    #[derive(Deserialize)]
    struct Hmds {
        error: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Iserver {
        #[serde(rename = "authStatus")]
        auth_status: Option<AuthStatus>,
    }
    #[derive(Deserialize)]
    struct Raw {
        session: Option<String>,
        #[serde(rename = "ssoExpires", default, deserialize_with = "opt_int_or_string")]
        sso_expires: Option<i64>,
        collission: Option<bool>,
        #[serde(rename = "userId", default, deserialize_with = "opt_int_or_string")]
        user_id: Option<i64>,
        hmds: Option<Hmds>,
        iserver: Option<Iserver>,
    }
    let raw: Raw = parse_json(Endpoint::Tickle.name(), body)?;
    Ok(TickleDetails {
        session: raw.session.map(SessionId::new),
        sso_expires: raw.sso_expires,
        collision: raw.collission,
        user_id: raw.user_id,
        auth_status: raw.iserver.and_then(|i| i.auth_status),
        hmds_error: raw.hmds.and_then(|h| h.error).map(value_text),
    })
}

/// Parses a `/sso/validate` body: read by hand when it is plain JSON (the gateway's
/// answers are), by serde_json otherwise.
///
/// # Errors
/// As [`auth_status`].
pub fn validate(body: &[u8]) -> Result<ValidateInfo, ProtocolError> {
    check_body(Endpoint::Validate.name(), body)?;
    match ValidateInfo::read_plain(body) {
        Some(info) => Ok(info),
        None => validate_serde(body),
    }
}

impl ValidateInfo {
    /// A `/sso/validate` body read by hand (see `crate::plain_json`); `None` hands it
    /// to serde_json, which then gives the answer or the error.
    fn read_plain(body: &[u8]) -> Option<Self> {
        enum Slot<'s> {
            Flag(&'s mut Option<bool>),
            Int(&'s mut Option<i64>),
            Text(&'s mut Option<String>),
            Features,
        }
        let mut v = Self::default();
        // `LOGIN_TYPE` wins over `loginType` whatever their order, as in serde's reading.
        let mut login_type_camel = None;
        let (mut env, mut envs) = (None, None);
        let mut seen = [false; 17];
        let mut r = Plain::new(body)?;
        r.object(0, |r, key| {
            let (slot, seen) = match key {
                "RESULT" => (Slot::Flag(&mut v.result), &mut seen[0]),
                "USER_ID" => (Slot::Int(&mut v.user_id), &mut seen[1]),
                "USER_NAME" => (Slot::Text(&mut v.user_name), &mut seen[2]),
                "AUTH_TIME" => (Slot::Int(&mut v.auth_time), &mut seen[3]),
                "EXPIRES" => (Slot::Int(&mut v.expires), &mut seen[4]),
                "lastAccessed" => (Slot::Int(&mut v.last_accessed), &mut seen[5]),
                "LOGIN_TYPE" => (Slot::Int(&mut v.login_type), &mut seen[6]),
                "loginType" => (Slot::Int(&mut login_type_camel), &mut seen[7]),
                "PAPER_USER_NAME" => (Slot::Text(&mut v.paper_user_name), &mut seen[8]),
                "IS_MASTER" => (Slot::Flag(&mut v.is_master), &mut seen[9]),
                "IS_FREE_TRIAL" => (Slot::Flag(&mut v.is_free_trial), &mut seen[10]),
                "SF_ENABLED" => (Slot::Flag(&mut v.sf_enabled), &mut seen[11]),
                "QUALIFIED_FOR_MOBILE_AUTH" => {
                    (Slot::Flag(&mut v.qualified_for_mobile_auth), &mut seen[12])
                }
                "LANDING_APP" => (Slot::Text(&mut v.landing_app), &mut seen[13]),
                "region" => (Slot::Text(&mut v.region), &mut seen[14]),
                "features" => (Slot::Features, &mut seen[15]),
                _ => return r.skip(1),
            };
            first(seen)?;
            match slot {
                Slot::Flag(f) => *f = r.bool_or_null()?,
                Slot::Int(i) => *i = r.int_or_string_or_null()?,
                Slot::Text(t) => *t = r.string_or_null()?.map(str::to_owned),
                Slot::Features => {
                    if r.null()? {
                        return Some(());
                    }
                    let mut seen = [false; 2];
                    r.object(1, |r, key| {
                        let (slot, seen) = match key {
                            "env" => (&mut env, &mut seen[0]),
                            "envs" => (&mut envs, &mut seen[1]),
                            _ => return r.skip(2),
                        };
                        first(seen)?;
                        *slot = r.string_or_null()?;
                        Some(())
                    })?;
                }
            }
            Some(())
        })?;
        r.end()?;
        v.login_type = v.login_type.or(login_type_camel);
        v.env = env.or(envs).map(str::to_owned);
        Some(v)
    }
}

/// serde_json's reading of a `/sso/validate` body: what the hand reading gives up to.
fn validate_serde(body: &[u8]) -> Result<ValidateInfo, ProtocolError> {
    #[derive(Deserialize)]
    struct Features {
        env: Option<String>,
        envs: Option<String>,
    }
    #[derive(Deserialize)]
    #[allow(non_snake_case)]
    struct Raw {
        RESULT: Option<bool>,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        USER_ID: Option<i64>,
        USER_NAME: Option<String>,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        AUTH_TIME: Option<i64>,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        EXPIRES: Option<i64>,
        #[serde(
            rename = "lastAccessed",
            default,
            deserialize_with = "opt_int_or_string"
        )]
        last_accessed: Option<i64>,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        LOGIN_TYPE: Option<i64>,
        #[serde(rename = "loginType", default, deserialize_with = "opt_int_or_string")]
        login_type: Option<i64>,
        PAPER_USER_NAME: Option<String>,
        IS_MASTER: Option<bool>,
        IS_FREE_TRIAL: Option<bool>,
        SF_ENABLED: Option<bool>,
        QUALIFIED_FOR_MOBILE_AUTH: Option<bool>,
        LANDING_APP: Option<String>,
        region: Option<String>,
        features: Option<Features>,
    }
    let r: Raw = parse_json(Endpoint::Validate.name(), body)?;
    let env = r.features.and_then(|f| f.env.or(f.envs));
    Ok(ValidateInfo {
        result: r.RESULT,
        user_id: r.USER_ID,
        user_name: r.USER_NAME,
        auth_time: r.AUTH_TIME,
        expires: r.EXPIRES,
        last_accessed: r.last_accessed,
        login_type: r.LOGIN_TYPE.or(r.login_type),
        paper_user_name: r.PAPER_USER_NAME,
        is_master: r.IS_MASTER,
        is_free_trial: r.IS_FREE_TRIAL,
        sf_enabled: r.SF_ENABLED,
        qualified_for_mobile_auth: r.QUALIFIED_FOR_MOBILE_AUTH,
        landing_app: r.LANDING_APP,
        region: r.region,
        env,
        pacing: Pacing::default(),
    })
}

/// Parses a `/logout` body: `{"status": bool}`, or the old `{"confirmed": bool}`.
///
/// # Errors
/// As [`auth_status`].
pub fn logout(body: &[u8]) -> Result<Option<bool>, ProtocolError> {
    #[derive(Deserialize)]
    struct Raw {
        status: Option<bool>,
        confirmed: Option<bool>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let r: Raw = parse_json(Endpoint::Logout.name(), body)?;
    Ok(r.status.or(r.confirmed))
}

/// Parses a `/iserver/reauthenticate` body: the `message` (`triggered`).
///
/// # Errors
/// As [`auth_status`].
pub fn reauthenticate(body: &[u8]) -> Result<Option<String>, ProtocolError> {
    #[derive(Deserialize)]
    struct Raw {
        message: Option<String>,
    }
    let r: Raw = parse_json(
        Endpoint::Reauthenticate(ReauthenticateMethod::Post).name(),
        body,
    )?;
    Ok(r.message)
}

/// Parses the `/oauth/live_session_token` body.
///
/// # Errors
/// [`ProtocolError::MissingField`] when `diffie_hellman_response` or
/// `live_session_token_signature` is absent, otherwise as [`auth_status`].
pub fn live_session_token(body: &[u8]) -> Result<LstResponse, ProtocolError> {
    const EP: &str = Endpoint::LiveSessionToken.name();
    #[derive(Deserialize)]
    struct Raw {
        diffie_hellman_response: Option<String>,
        live_session_token_signature: Option<String>,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        live_session_token_expiration: Option<i64>,
    }
    let r: Raw = parse_json(EP, body)?;
    Ok(LstResponse {
        diffie_hellman_response: r
            .diffie_hellman_response
            .ok_or(ProtocolError::MissingField {
                endpoint: EP,
                field: "diffie_hellman_response",
            })?,
        live_session_token_signature: r.live_session_token_signature.ok_or(
            ProtocolError::MissingField {
                endpoint: EP,
                field: "live_session_token_signature",
            },
        )?,
        live_session_token_expiration: r.live_session_token_expiration,
    })
}

/// The `error` text of an IBKR error body (`{"error": "…", "statusCode": 401}`), if
/// the body is such an object. Never fails.
pub fn error_text(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Raw {
        error: Option<serde_json::Value>,
    }
    if body.len() > crate::MAX_BODY {
        return None;
    }
    let r: Raw = serde_json::from_slice(body).ok()?;
    r.error.map(value_text)
}

/// The text of an `error` value: a string as it is (moved, not copied), anything
/// else as JSON.
fn value_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_documented_bodies() {
        let s = auth_status(
            br#"{"authenticated":false,"competing":false,"connected":false,"MAC":"98:B2:C3:45:DE:F6"}"#,
        )
        .unwrap();
        assert_eq!(s.authenticated, Some(false));
        assert_eq!(s.mac.as_deref(), Some("98:B2:C3:45:DE:F6"));
        let s = auth_status(br#"{"authenticated":true,"connected":true,"competing":false,"established":true,"serverInfo":{"serverName":"JifN19053","serverVersion":"Build 10.25.0p"},"new":1}"#).unwrap();
        assert_eq!(
            s.server_info.unwrap().server_name.as_deref(),
            Some("JifN19053")
        );
        assert!(auth_status(b"[]").is_err());
        assert!(ssodh_init(b"[]").is_err());
    }

    #[test]
    fn tickle_both_shapes() {
        let t = tickle(br#"{"session":"bb665d0f55b6289d70bc8ba97ee6d2fd","ssoExpires":460311,"collission":false,"userId":123456789,"hmds":{"error":"no bridge"},"iserver":{"authStatus":{"authenticated":true,"competing":false,"connected":true,"message":"","MAC":"98:F2:B3:23:BF:A0","serverInfo":{"serverName":"JifN19053","serverVersion":"Build"}},"tickle":true}}"#).unwrap();
        let TickleResponse::Ok(info) = t else {
            panic!()
        };
        assert_eq!(info.session_class, Some(SessionClass::Ready));
        assert!(!format!("{info:?}").contains("bb665d0f"));
        let details = info.details().unwrap();
        assert_eq!(details.sso_expires, Some(460_311));
        assert_eq!(details.hmds_error.as_deref(), Some("no bridge"));
        assert_eq!(details.auth_status.unwrap().authenticated, Some(true));
        assert!(!format!("{:?}", details.session).contains("bb665d0f"));
        assert_eq!(
            tickle(br#"{"error":"no session"}"#).unwrap(),
            TickleResponse::Failed {
                error: "no session".into()
            }
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_tickle_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"session":"bb665d0f55b6289d70bc8ba97ee6d2fd","ssoExpires":460311,"collission":false,"userId":123456789,"hmds":{"error":"no bridge"},"iserver":{"authStatus":{"authenticated":true,"competing":false,"connected":true,"message":"","MAC":"98:F2:B3:23:BF:A0","serverInfo":{"serverName":"JifN19053","serverVersion":"Build"}},"tickle":true}}"#.to_vec(),
            br#"{"iserver":{"authStatus":{"authenticated":false,"established":null,"connected":true,"fail":"","hardware_info":"3b|98"}}, "x": [1, -2.5, null, {"y": []}]}"#.to_vec(),
            br#"{"error":"no session"}"#.to_vec(),
        ])) {
            if let Some(fast) = Flags::read_plain_tickle(&body) {
                let slow: KeepAlive = serde_json::from_slice(&body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert!(slow.error.is_none());
                proptest::prop_assert_eq!(fast, slow.iserver.and_then(|i| i.auth_status));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_status_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"authenticated":true,"competing":false,"connected":true,"message":"","MAC":"98:F2:B3:23:BF:A0","fail":"","hardware_info":"3b0679ee|98:F2:B3:23:BF:A0","serverInfo":{"serverName":"JifN19053","serverVersion":"Build 10.25.0p"}}"#.to_vec(),
            br#"{"authenticated":false,"established":null,"connected":true,"message":null,"serverInfo":null,"other":[1,{"a":"b"}]}"#.to_vec(),
        ])) {
            let plain = Plain::new(&body).and_then(|mut r| {
                let s = AuthStatus::read_plain(&mut r, 0)?;
                r.end()?;
                Some(s)
            });
            if let Some(fast) = plain {
                let slow: AuthStatus = serde_json::from_slice(&body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn the_status_fast_path_reads_the_usual_answer() {
        let body = br#"{"authenticated":true,"competing":false,"connected":true,"message":"","MAC":"98:F2","serverInfo":{"serverName":"JifN19053","serverVersion":"Build"}}"#;
        let mut r = Plain::new(body).unwrap();
        let s = AuthStatus::read_plain(&mut r, 0).unwrap();
        assert!(r.end().is_some());
        assert_eq!(s, serde_json::from_slice::<AuthStatus>(body).unwrap());
        assert_eq!(s.mac.as_deref(), Some("98:F2"));
        assert_eq!(
            s.server_info.and_then(|i| i.server_name).as_deref(),
            Some("JifN19053")
        );
    }

    #[test]
    fn the_tickle_fast_path_reads_the_usual_answer() {
        let body = br#"{"session":"s","iserver":{"authStatus":{"authenticated":true,"competing":false,"connected":true}}}"#;
        assert_eq!(
            Flags::read_plain_tickle(body),
            Some(Some(Flags {
                authenticated: Some(true),
                competing: Some(false),
                connected: Some(true),
                established: None,
            }))
        );
        assert_eq!(Flags::read_plain_tickle(br#"{"session":"s"}"#), Some(None));
        // The failure shape and escapes go to serde_json.
        assert_eq!(Flags::read_plain_tickle(br#"{"error":"no session"}"#), None);
        assert_eq!(Flags::read_plain_tickle(br#"{"session":"\u0073"}"#), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_validate_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"AUTH_TIME":1702580846836,"CREDENTIAL":"testuser1","EXPIRES":415890,"IP":"12.345.678.901","IS_FREE_TRIAL":false,"IS_MASTER":false,"LANDING_APP":"UNIVERSAL","LOGIN_TYPE":2,"PAPER_USER_NAME":"testuser1","QUALIFIED_FOR_MOBILE_AUTH":null,"RESULT":true,"SF_ENABLED":false,"USER_ID":123456789,"USER_NAME":"testuser1","features":{"bond":true,"calendar":true,"env":"PROD","newMf":true,"optionChains":true,"realtime":true,"wlms":true},"lastAccessed":1702582037124,"region":"NJ"}"#.to_vec(),
            br#"{"USER_ID":"123","loginType":1,"LOGIN_TYPE":null,"features":{"envs":"TEST","env":null},"lastAccessed":"1702582037124","EXPIRES":-5,"region":null,"x":[1,-2.5,{"y":[]}]}"#.to_vec(),
            br#"{"loginType":"2","LOGIN_TYPE":1,"features":null,"RESULT":false}"#.to_vec(),
        ])) {
            if let Some(fast) = ValidateInfo::read_plain(&body) {
                let slow = validate_serde(&body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn the_validate_fast_path_reads_the_usual_answer() {
        let body = br#"{"USER_ID":123456789,"USER_NAME":"testuser1","RESULT":true,"AUTH_TIME":1702580846836,"SF_ENABLED":false,"IS_FREE_TRIAL":false,"EXPIRES":415890,"QUALIFIED_FOR_MOBILE_AUTH":null,"LANDING_APP":"UNIVERSAL","IS_MASTER":false,"lastAccessed":1702582037124,"LOGIN_TYPE":2,"PAPER_USER_NAME":"testuser1","features":{"env":"PROD","wlms":true},"region":"NJ"}"#;
        let fast = ValidateInfo::read_plain(body).expect("plain");
        assert_eq!(fast, validate_serde(body).unwrap());
        assert_eq!(fast.user_id, Some(123_456_789));
        assert_eq!(fast.expires, Some(415_890));
        assert_eq!(fast.qualified_for_mobile_auth, None);
        assert_eq!(fast.env.as_deref(), Some("PROD"));
        // Escapes, a field given twice and a wrong type go to serde_json, whose
        // errors the caller gets.
        assert_eq!(ValidateInfo::read_plain(br#"{"USER_NAME":"\u0075"}"#), None);
        assert_eq!(
            ValidateInfo::read_plain(br#"{"RESULT":true,"RESULT":true}"#),
            None
        );
        assert_eq!(ValidateInfo::read_plain(br#"{"RESULT":"yes"}"#), None);
        assert!(matches!(
            validate(br#"{"RESULT":"yes"}"#),
            Err(ProtocolError::MalformedBody { .. })
        ));
    }

    #[test]
    fn validate_accepts_both_spellings() {
        let v = validate(br#"{"USER_ID":123,"USER_NAME":"u","RESULT":true,"AUTH_TIME":1702580846836,"lastAccessed":1702580846836,"LOGIN_TYPE":2,"features":{"env":"PROD","bond":true},"region":"NJ","EXPIRES":415890}"#).unwrap();
        assert_eq!(v.auth_time, Some(1_702_580_846_836));
        assert_eq!(v.login_type, Some(2));
        assert_eq!(v.env.as_deref(), Some("PROD"));
        let v = validate(br#"{"loginType":1,"features":{"envs":"TEST"}}"#).unwrap();
        assert_eq!((v.login_type, v.env.as_deref()), (Some(1), Some("TEST")));
    }

    #[test]
    fn logout_and_lst() {
        assert_eq!(logout(br#"{"status":true}"#).unwrap(), Some(true));
        assert_eq!(logout(br#"{"confirmed":false}"#).unwrap(), Some(false));
        let l = live_session_token(br#"{"diffie_hellman_response":"74d2","live_session_token_signature":"712549e22ba937ab10bc8d571bd3a9c20c43d7cb","live_session_token_expiration":1714669716258}"#).unwrap();
        assert_eq!(l.live_session_token_expiration, Some(1_714_669_716_258));
        assert!(matches!(
            live_session_token(br#"{"diffie_hellman_challenge":"74d2"}"#),
            Err(ProtocolError::MissingField { .. })
        ));
        assert_eq!(
            error_text(br#"{"error":"id: 3931, error: invalid consumer","statusCode":401}"#)
                .as_deref(),
            Some("id: 3931, error: invalid consumer")
        );
    }
}
