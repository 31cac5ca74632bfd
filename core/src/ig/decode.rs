//! Pure parsers for the answers of IG's session endpoints.
//!
//! Each parser takes what it reads of a successful (2xx) answer (the body, and the
//! headers where tokens come in them) and returns the value or a [`ProtocolError`];
//! the machine turns that into its [`Error`](crate::Error), and judges other
//! statuses with [`action_for`](super::action_for). Parsers never panic on any input
//! and never put a body or header value into an error.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;

use super::endpoint::Endpoint;
use crate::error::{ActionRequired, ProtocolError};
use crate::plain_json::{Loose, Plain, first};
use crate::secret::{AccessToken, Cst, RefreshToken, SecurityToken};
use crate::wire::{check_body, header_str, int_or_string, parse_json};

/// One account of the client, from a v1/v2 login response.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct IgAccount {
    /// The account id (e.g. `ABC123`).
    #[serde(rename = "accountId")]
    pub account_id: String,
    /// The account's display name.
    #[serde(rename = "accountName", default)]
    pub account_name: Option<String>,
    /// Whether it is the profile's default account.
    #[serde(default)]
    pub preferred: bool,
    /// `CFD`, `PHYSICAL` or `SPREADBET`.
    #[serde(rename = "accountType", default)]
    pub account_type: Option<String>,
}

/// A CST-mode login (v1, v2, web platform): tokens from the headers, details from the body.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CstLogin {
    /// The client session token (`CST` header).
    pub cst: Cst,
    /// The account session token (`X-SECURITY-TOKEN` header).
    pub xst: SecurityToken,
    /// The active account (`currentAccountId`; `accountId` is accepted too).
    pub account_id: String,
    /// The client id.
    pub client_id: Option<String>,
    /// The Lightstreamer server for this session.
    pub lightstreamer_endpoint: Option<String>,
    /// The client's accounts.
    pub accounts: Vec<IgAccount>,
}

/// What a CST-mode login answered: the session, or that a person must act first
/// (a change of environment, forms to fill, another authentication status). The
/// second is read before any header, since such an answer lacks the tokens and
/// reporting a missing header would hide the real cause.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CstLoginAnswer {
    /// Logged in.
    LoggedIn(CstLogin),
    /// IG accepted the credentials but a person must act before the API can be used.
    ActionRequired(ActionRequired),
}

/// OAuth tokens from a v3 login or a refresh.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OAuthTokens {
    /// The access token (`Authorization: Bearer …`).
    pub access_token: AccessToken,
    /// The refresh token; a new one comes with every refresh.
    pub refresh_token: RefreshToken,
    /// The access token's lifetime (`expires_in`, sent as a JSON string).
    pub expires_in: Duration,
}

/// A v3 login.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OAuthLogin {
    /// The tokens.
    pub tokens: OAuthTokens,
    /// The default account (`accountId`; `currentAccountId` is accepted too).
    pub account_id: String,
    /// The client id.
    pub client_id: Option<String>,
    /// The Lightstreamer server for this session.
    pub lightstreamer_endpoint: Option<String>,
}

/// `GET /session` details.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionDetails {
    /// The active account.
    pub account_id: String,
    /// The client id.
    pub client_id: Option<String>,
    /// The account currency.
    pub currency: Option<String>,
    /// The locale, e.g. `en_GB`.
    pub locale: Option<String>,
    /// The Lightstreamer server.
    pub lightstreamer_endpoint: Option<String>,
    /// Offset from UTC in hours.
    pub timezone_offset: Option<i64>,
}

/// CST and X-SECURITY-TOKEN returned by `GET /session?fetchSessionTokens=true`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StreamingTokens {
    /// The client session token.
    pub cst: Cst,
    /// The account session token.
    pub xst: SecurityToken,
}

/// Tokens from a `PUT /session` answer: IG sends a new X-SECURITY-TOKEN, sometimes a
/// new CST; an absent one means "keep the old".
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SwitchTokens {
    /// A new CST, if sent.
    pub cst: Option<Cst>,
    /// A new X-SECURITY-TOKEN, if sent.
    pub xst: Option<SecurityToken>,
}

/// `GET /session/encryptionKey`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncryptionKey {
    /// Base64 of a DER SubjectPublicKeyInfo RSA key.
    pub key: String,
    /// IG's timestamp (ms since epoch), sent as a number or a string.
    pub time_stamp: i64,
}

/// The `errorCode` of an IG error body, if the body is JSON and has one. Non-JSON
/// bodies (some 5xx pages) give `None`.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        #[serde(rename = "errorCode")]
        error_code: Option<String>,
    }
    check_body("error body", body).ok()?;
    serde_json::from_slice::<E>(body).ok()?.error_code
}

fn opt_header<T: From<String>>(
    endpoint: &'static str,
    headers: &http::HeaderMap,
    name: &'static str,
) -> Result<Option<T>, ProtocolError> {
    match headers.get(name) {
        None => Ok(None),
        Some(_) => match header_str(headers, name) {
            Some(v) if !v.trim().is_empty() => Ok(Some(T::from(v.trim().to_owned()))),
            _ => Err(ProtocolError::InvalidHeader {
                endpoint,
                header: name,
            }),
        },
    }
}

fn req_header<T: From<String>>(
    endpoint: &'static str,
    headers: &http::HeaderMap,
    name: &'static str,
) -> Result<T, ProtocolError> {
    opt_header(endpoint, headers, name)?.ok_or(ProtocolError::MissingHeader {
        endpoint,
        header: name,
    })
}

#[derive(Deserialize)]
struct FormDetail {
    #[serde(rename = "formType", default)]
    form_type: Option<String>,
}

#[derive(Deserialize)]
struct CstLoginBody {
    #[serde(rename = "currentAccountId", default)]
    current_account_id: Option<String>,
    #[serde(rename = "accountId", default)]
    account_id: Option<String>,
    #[serde(rename = "clientId", default)]
    client_id: Option<serde_json::Value>,
    #[serde(rename = "lightstreamerEndpoint", default)]
    lightstreamer_endpoint: Option<String>,
    #[serde(default)]
    accounts: Option<Vec<IgAccount>>,
    #[serde(rename = "reroutingEnvironment", default)]
    rerouting_environment: Option<String>,
    #[serde(rename = "authenticationStatus", default)]
    authentication_status: Option<String>,
    #[serde(rename = "formDetails", default)]
    form_details: Option<Vec<FormDetail>>,
}

fn client_id(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks the fields that mean "a person must act" before any header is looked at:
/// a CHANGE_ENVIRONMENT login has no X-SECURITY-TOKEN, and reporting that as a
/// missing header would hide the real cause.
fn action_required(b: &CstLoginBody) -> Option<ActionRequired> {
    if let Some(status) = b.authentication_status.as_deref() {
        if status == "CHANGE_ENVIRONMENT" {
            return Some(ActionRequired::ChangeEnvironment {
                environment: b.rerouting_environment.clone(),
            });
        }
        if status != "AUTHENTICATED" {
            return Some(ActionRequired::AuthenticationStatus {
                status: status.chars().take(64).collect(),
            });
        }
    }
    if b.rerouting_environment.is_some() {
        return Some(ActionRequired::ChangeEnvironment {
            environment: b.rerouting_environment.clone(),
        });
    }
    match &b.form_details {
        Some(forms) if !forms.is_empty() => Some(ActionRequired::Forms {
            forms: forms
                .iter()
                .map(|f| {
                    f.form_type
                        .as_deref()
                        .unwrap_or("unnamed")
                        .chars()
                        .take(64)
                        .collect()
                })
                .collect(),
        }),
        _ => None,
    }
}

fn cst_login(
    endpoint: Endpoint,
    h: &http::HeaderMap,
    body: &[u8],
) -> Result<CstLoginAnswer, ProtocolError> {
    let endpoint = endpoint.name();
    let b: CstLoginBody = parse_json(endpoint, body)?;
    if let Some(a) = action_required(&b) {
        return Ok(CstLoginAnswer::ActionRequired(a));
    }
    let cst = req_header(endpoint, h, "CST")?;
    let xst = req_header(endpoint, h, "X-SECURITY-TOKEN")?;
    let account_id = b
        .current_account_id
        .or(b.account_id)
        .filter(|a| !a.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "currentAccountId",
        })?;
    Ok(CstLoginAnswer::LoggedIn(CstLogin {
        cst,
        xst,
        account_id,
        client_id: client_id(b.client_id),
        lightstreamer_endpoint: b.lightstreamer_endpoint,
        accounts: b.accounts.unwrap_or_default(),
    }))
}

/// A v1/v2 login answer ([`Endpoint::LoginV1`], [`Endpoint::LoginV2`]).
pub fn login_v2(headers: &http::HeaderMap, body: &[u8]) -> Result<CstLoginAnswer, ProtocolError> {
    cst_login(Endpoint::LoginV2, headers, body)
}

/// The unofficial web-platform login answer ([`Endpoint::WebPlatformLogin`]).
pub fn web_platform_login(
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<CstLoginAnswer, ProtocolError> {
    cst_login(Endpoint::WebPlatformLogin, headers, body)
}

/// A token object as sent, its strings borrowed from the body where they can be.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct TokenBody<'a> {
    #[serde(borrow)]
    access_token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refresh_token: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "crate::wire::opt_int_or_string")]
    expires_in: Option<i64>,
}

impl<'a> TokenBody<'a> {
    /// A token object read by hand when it is plain JSON (the answer to every
    /// refresh); `None` hands the body to serde_json (see `crate::plain_json`).
    fn read_plain(body: &'a [u8]) -> Option<Self> {
        let mut r = Plain::new(body)?;
        let t = Self::read(&mut r, 0)?;
        r.end()?;
        Some(t)
    }

    /// The token object at `depth` (0 at the top of the body).
    fn read(r: &mut Plain<'a>, depth: u32) -> Option<Self> {
        let mut t = Self::default();
        let mut seen = [false; 3];
        r.object(depth, |r, key| {
            match key {
                "access_token" => {
                    first(&mut seen[0])?;
                    t.access_token = r.string_or_null()?.map(Cow::Borrowed);
                }
                "refresh_token" => {
                    first(&mut seen[1])?;
                    t.refresh_token = r.string_or_null()?.map(Cow::Borrowed);
                }
                "expires_in" => {
                    first(&mut seen[2])?;
                    t.expires_in = r.int_or_string_or_null()?;
                }
                _ => r.skip(depth + 1)?,
            }
            Some(())
        })?;
        Some(t)
    }
}

/// `clientId` as IG sends it, a string or a number (read as a `serde_json::Value`):
/// the string, or the number's text.
fn client_id_plain(v: Loose<'_>) -> Option<Cow<'_, str>> {
    match v {
        Loose::Str(s) | Loose::Int(s, _) => Some(Cow::Borrowed(s)),
        Loose::Null | Loose::Other => None,
    }
}

/// A string or `null` field, borrowed.
fn opt_str<'a>(r: &mut Plain<'a>) -> Option<Option<Cow<'a, str>>> {
    r.string_or_null().map(|s| s.map(Cow::Borrowed))
}

/// The fields of a v3 login answer that the session keeps, borrowed from the body
/// when it is plain JSON (the fast path: `read_plain`), owned when serde_json read
/// it (`read_json`). Both give the same value for every body the fast path reads
/// (`tests::the_v3_login_fast_path_agrees_with_serde`).
#[derive(Debug, Default, PartialEq)]
struct LoginV3Body<'a> {
    account_id: Option<Cow<'a, str>>,
    current_account_id: Option<Cow<'a, str>>,
    client_id: Option<Cow<'a, str>>,
    lightstreamer_endpoint: Option<Cow<'a, str>>,
    oauth_token: Option<TokenBody<'a>>,
}

impl<'a> LoginV3Body<'a> {
    fn read_plain(body: &'a [u8]) -> Option<Self> {
        let mut r = Plain::new(body)?;
        let mut b = Self::default();
        let mut seen = [false; 5];
        r.object(0, |r, key| {
            match key {
                "accountId" => {
                    first(&mut seen[0])?;
                    b.account_id = opt_str(r)?;
                }
                "currentAccountId" => {
                    first(&mut seen[1])?;
                    b.current_account_id = opt_str(r)?;
                }
                "clientId" => {
                    first(&mut seen[2])?;
                    b.client_id = client_id_plain(r.loose(1)?);
                }
                "lightstreamerEndpoint" => {
                    first(&mut seen[3])?;
                    b.lightstreamer_endpoint = opt_str(r)?;
                }
                "oauthToken" => {
                    first(&mut seen[4])?;
                    b.oauth_token = if r.null()? {
                        None
                    } else {
                        Some(TokenBody::read(r, 1)?)
                    };
                }
                _ => r.skip(1)?,
            }
            Some(())
        })?;
        r.end()?;
        Some(b)
    }

    fn read_json(endpoint: &'static str, body: &'a [u8]) -> Result<Self, ProtocolError> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(rename = "accountId", default)]
            account_id: Option<String>,
            #[serde(rename = "currentAccountId", default)]
            current_account_id: Option<String>,
            #[serde(rename = "clientId", default)]
            client_id: Option<serde_json::Value>,
            #[serde(rename = "lightstreamerEndpoint", default)]
            lightstreamer_endpoint: Option<String>,
            #[serde(rename = "oauthToken", borrow)]
            oauth_token: Option<TokenBody<'a>>,
        }
        let b: Body<'a> = parse_json(endpoint, body)?;
        Ok(Self {
            account_id: b.account_id.map(Cow::Owned),
            current_account_id: b.current_account_id.map(Cow::Owned),
            client_id: client_id(b.client_id).map(Cow::Owned),
            lightstreamer_endpoint: b.lightstreamer_endpoint.map(Cow::Owned),
            oauth_token: b.oauth_token,
        })
    }
}

/// The fields of a session-read answer, as [`LoginV3Body`] for a login
/// (`tests::the_session_read_fast_path_agrees_with_serde`).
#[derive(Debug, Default, PartialEq)]
struct SessionBody<'a> {
    account_id: Option<Cow<'a, str>>,
    current_account_id: Option<Cow<'a, str>>,
    client_id: Option<Cow<'a, str>>,
    currency: Option<Cow<'a, str>>,
    locale: Option<Cow<'a, str>>,
    lightstreamer_endpoint: Option<Cow<'a, str>>,
    timezone_offset: Option<i64>,
}

impl<'a> SessionBody<'a> {
    fn read_plain(body: &'a [u8]) -> Option<Self> {
        let mut r = Plain::new(body)?;
        let mut b = Self::default();
        let mut seen = [false; 7];
        r.object(0, |r, key| {
            match key {
                "accountId" => {
                    first(&mut seen[0])?;
                    b.account_id = opt_str(r)?;
                }
                "currentAccountId" => {
                    first(&mut seen[1])?;
                    b.current_account_id = opt_str(r)?;
                }
                "clientId" => {
                    first(&mut seen[2])?;
                    b.client_id = client_id_plain(r.loose(1)?);
                }
                "currency" => {
                    first(&mut seen[3])?;
                    b.currency = opt_str(r)?;
                }
                "locale" => {
                    first(&mut seen[4])?;
                    b.locale = opt_str(r)?;
                }
                "lightstreamerEndpoint" => {
                    first(&mut seen[5])?;
                    b.lightstreamer_endpoint = opt_str(r)?;
                }
                "timezoneOffset" => {
                    first(&mut seen[6])?;
                    // A `serde_json::Value` read with `as_i64`: anything but an
                    // integer is no offset.
                    b.timezone_offset = match r.loose(1)? {
                        Loose::Int(_, n) => Some(n),
                        Loose::Str(_) | Loose::Null | Loose::Other => None,
                    };
                }
                _ => r.skip(1)?,
            }
            Some(())
        })?;
        r.end()?;
        Some(b)
    }

    fn read_json(endpoint: &'static str, body: &'a [u8]) -> Result<Self, ProtocolError> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "accountId", default)]
            account_id: Option<String>,
            #[serde(rename = "currentAccountId", default)]
            current_account_id: Option<String>,
            #[serde(rename = "clientId", default)]
            client_id: Option<serde_json::Value>,
            #[serde(default)]
            currency: Option<String>,
            #[serde(default)]
            locale: Option<String>,
            #[serde(rename = "lightstreamerEndpoint", default)]
            lightstreamer_endpoint: Option<String>,
            #[serde(rename = "timezoneOffset", default)]
            timezone_offset: Option<serde_json::Value>,
        }
        let b: Body = parse_json(endpoint, body)?;
        Ok(Self {
            account_id: b.account_id.map(Cow::Owned),
            current_account_id: b.current_account_id.map(Cow::Owned),
            client_id: client_id(b.client_id).map(Cow::Owned),
            currency: b.currency.map(Cow::Owned),
            locale: b.locale.map(Cow::Owned),
            lightstreamer_endpoint: b.lightstreamer_endpoint.map(Cow::Owned),
            timezone_offset: b.timezone_offset.and_then(|v| v.as_i64()),
        })
    }
}

/// New OAuth tokens, checked, borrowed from the answer: the session copies them
/// into the buffers of the tokens they replace (`refresh_tokens`).
pub(crate) struct FreshTokens<'a> {
    pub(crate) access: Cow<'a, str>,
    pub(crate) refresh: Cow<'a, str>,
    pub(crate) expires_in: Duration,
}

impl FreshTokens<'_> {
    fn into_owned(self) -> OAuthTokens {
        OAuthTokens {
            access_token: AccessToken::new(self.access.into_owned()),
            refresh_token: RefreshToken::new(self.refresh.into_owned()),
            expires_in: self.expires_in,
        }
    }
}

fn tokens<'a>(endpoint: &'static str, t: TokenBody<'a>) -> Result<FreshTokens<'a>, ProtocolError> {
    let access = t
        .access_token
        .filter(|s| !s.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "access_token",
        })?;
    let refresh = t
        .refresh_token
        .filter(|s| !s.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "refresh_token",
        })?;
    let secs = t.expires_in.ok_or(ProtocolError::MissingField {
        endpoint,
        field: "expires_in",
    })?;
    // A zero or absurd lifetime would make the machine refresh in a loop (or never).
    if !(1..=366 * 24 * 3600).contains(&secs) {
        return Err(ProtocolError::InvalidField {
            endpoint,
            field: "expires_in",
            reason: "not a positive number of seconds below a year",
        });
    }
    Ok(FreshTokens {
        access,
        refresh,
        expires_in: Duration::from_secs(secs.unsigned_abs()),
    })
}

/// A v3 login answer ([`Endpoint::LoginV3`]).
pub fn login_v3(body: &[u8]) -> Result<OAuthLogin, ProtocolError> {
    let endpoint = Endpoint::LoginV3.name();
    check_body(endpoint, body)?;
    let b = match LoginV3Body::read_plain(body) {
        Some(b) => b,
        None => LoginV3Body::read_json(endpoint, body)?,
    };
    let t = b.oauth_token.ok_or(ProtocolError::MissingField {
        endpoint,
        field: "oauthToken",
    })?;
    let tokens = tokens(endpoint, t)?.into_owned();
    let account_id = b
        .account_id
        .or(b.current_account_id)
        .filter(|a| !a.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "accountId",
        })?
        .into_owned();
    Ok(OAuthLogin {
        tokens,
        account_id,
        client_id: b.client_id.map(Cow::into_owned),
        lightstreamer_endpoint: b.lightstreamer_endpoint.map(Cow::into_owned),
    })
}

/// A refresh answer ([`Endpoint::Refresh`]): the bare token object.
pub fn refresh(body: &[u8]) -> Result<OAuthTokens, ProtocolError> {
    refresh_tokens(body).map(FreshTokens::into_owned)
}

/// [`refresh`], borrowing the tokens from the body.
pub(crate) fn refresh_tokens(body: &[u8]) -> Result<FreshTokens<'_>, ProtocolError> {
    let endpoint = Endpoint::Refresh.name();
    check_body(endpoint, body)?;
    let t = match TokenBody::read_plain(body) {
        Some(t) => t,
        None => parse_json(endpoint, body)?,
    };
    tokens(endpoint, t)
}

/// A [`Endpoint::ReadSession`] answer, with the CST/X-SECURITY-TOKEN headers when
/// both were sent.
pub fn read_session(
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(SessionDetails, Option<StreamingTokens>), ProtocolError> {
    let endpoint = Endpoint::ReadSession {
        fetch_tokens: false,
    }
    .name();
    check_body(endpoint, body)?;
    let b = match SessionBody::read_plain(body) {
        Some(b) => b,
        None => SessionBody::read_json(endpoint, body)?,
    };
    let account_id = b
        .account_id
        .or(b.current_account_id)
        .filter(|a| !a.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "accountId",
        })?
        .into_owned();
    let cst: Option<Cst> = opt_header(endpoint, headers, "CST")?;
    let xst: Option<SecurityToken> = opt_header(endpoint, headers, "X-SECURITY-TOKEN")?;
    let tokens = match (cst, xst) {
        (Some(cst), Some(xst)) => Some(StreamingTokens { cst, xst }),
        _ => None,
    };
    let details = SessionDetails {
        account_id,
        client_id: b.client_id.map(Cow::into_owned),
        currency: b.currency.map(Cow::into_owned),
        locale: b.locale.map(Cow::into_owned),
        lightstreamer_endpoint: b.lightstreamer_endpoint.map(Cow::into_owned),
        timezone_offset: b.timezone_offset,
    };
    Ok((details, tokens))
}

/// A [`Endpoint::Switch`] answer: the new tokens from the headers. The body (account
/// flags) is not needed; it is checked for size only.
pub fn switch_account(
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<SwitchTokens, ProtocolError> {
    let endpoint = Endpoint::Switch.name();
    check_body(endpoint, body)?;
    Ok(SwitchTokens {
        cst: opt_header(endpoint, headers, "CST")?,
        xst: opt_header(endpoint, headers, "X-SECURITY-TOKEN")?,
    })
}

/// A [`Endpoint::EncryptionKey`] answer.
pub fn encryption_key(body: &[u8]) -> Result<EncryptionKey, ProtocolError> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(rename = "encryptionKey")]
        encryption_key: Option<String>,
        #[serde(rename = "timeStamp", deserialize_with = "int_or_string")]
        time_stamp: i64,
    }
    let endpoint = Endpoint::EncryptionKey.name();
    let b: Body = parse_json(endpoint, body)?;
    let key = b
        .encryption_key
        .filter(|k| !k.is_empty())
        .ok_or(ProtocolError::MissingField {
            endpoint,
            field: "encryptionKey",
        })?;
    Ok(EncryptionKey {
        key,
        time_stamp: b.time_stamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    // The decoders through the machine's lens: a response in, the session's error out.
    type R = http::Response<Vec<u8>>;

    fn v2(r: &R) -> Result<CstLogin, Error> {
        match login_v2(r.headers(), r.body())? {
            CstLoginAnswer::LoggedIn(l) => Ok(l),
            CstLoginAnswer::ActionRequired(a) => Err(Error::ActionRequired(a)),
        }
    }

    fn v3(r: &R) -> Result<OAuthLogin, Error> {
        Ok(login_v3(r.body())?)
    }

    fn refreshed(r: &R) -> Result<OAuthTokens, Error> {
        Ok(refresh(r.body())?)
    }

    fn read(r: &R) -> Result<(SessionDetails, Option<StreamingTokens>), Error> {
        Ok(read_session(r.headers(), r.body())?)
    }

    fn key(r: &R) -> Result<EncryptionKey, Error> {
        Ok(encryption_key(r.body())?)
    }

    fn switched(r: &R) -> Result<SwitchTokens, Error> {
        Ok(switch_account(r.headers(), r.body())?)
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body.as_bytes().to_vec()).unwrap()
    }

    const V2_BODY: &str = r#"{"accountType":"CFD","accountInfo":{"balance":1.0,"deposit":0,"profitLoss":0,"available":1},
        "currencyIsoCode":"GBP","currencySymbol":"£","currentAccountId":"ABC123",
        "lightstreamerEndpoint":"https://demo-apd.marketdatasystems.com",
        "accounts":[{"accountId":"ABC123","accountName":"CFD","preferred":true,"accountType":"CFD"},
                    {"accountId":"XYZ789","accountName":"SB","preferred":false,"accountType":"SPREADBET"}],
        "clientId":"100","timezoneOffset":1,"hasActiveDemoAccounts":true,"hasActiveLiveAccounts":false,
        "trailingStopsEnabled":false,"reroutingEnvironment":null,"dealingEnabled":true}"#;

    #[test]
    fn v2_login_reads_headers_case_insensitively_and_current_account() {
        let r = resp(200, &[("cst", "C1"), ("x-security-token", "X1")], V2_BODY);
        let l = v2(&r).unwrap();
        assert_eq!(l.cst.expose_secret(), "C1");
        assert_eq!(l.xst.expose_secret(), "X1");
        assert_eq!(l.account_id, "ABC123");
        assert_eq!(l.accounts.len(), 2);
        assert_eq!(
            l.lightstreamer_endpoint.as_deref(),
            Some("https://demo-apd.marketdatasystems.com")
        );
        // `accountId` is accepted when `currentAccountId` is absent.
        let r = resp(
            200,
            &[("CST", "C"), ("X-SECURITY-TOKEN", "X")],
            r#"{"accountId":"Q1"}"#,
        );
        assert_eq!(v2(&r).unwrap().account_id, "Q1");
        let r = resp(200, &[("CST", "C")], V2_BODY);
        assert!(matches!(
            v2(&r),
            Err(Error::Protocol(ProtocolError::MissingHeader {
                header: "X-SECURITY-TOKEN",
                ..
            }))
        ));
    }

    #[test]
    fn v2_login_action_required_beats_missing_header() {
        let r = resp(
            200,
            &[("CST", "temp")],
            r#"{"authenticationStatus":"CHANGE_ENVIRONMENT","reroutingEnvironment":"LIVE"}"#,
        );
        assert_eq!(
            v2(&r).unwrap_err(),
            Error::ActionRequired(ActionRequired::ChangeEnvironment {
                environment: Some("LIVE".into())
            })
        );
        let r = resp(200, &[], r#"{"reroutingEnvironment":"DEMO"}"#);
        assert!(matches!(
            v2(&r),
            Err(Error::ActionRequired(
                ActionRequired::ChangeEnvironment { .. }
            ))
        ));
        let r = resp(
            200,
            &[("CST", "C"), ("X-SECURITY-TOKEN", "X")],
            r#"{"currentAccountId":"A","formDetails":[{"formType":"KYC","formUrl":"u","formTitle":"t","formDismissible":false}]}"#,
        );
        assert_eq!(
            v2(&r).unwrap_err(),
            Error::ActionRequired(ActionRequired::Forms {
                forms: vec!["KYC".into()]
            })
        );
        let r = resp(
            200,
            &[],
            r#"{"authenticationStatus":"DISABLED_PREFERRED_ACCOUNT"}"#,
        );
        assert!(matches!(
            v2(&r),
            Err(Error::ActionRequired(
                ActionRequired::AuthenticationStatus { .. }
            ))
        ));
        // AUTHENTICATED with empty formDetails is normal.
        let r = resp(
            200,
            &[("CST", "C"), ("X-SECURITY-TOKEN", "X")],
            r#"{"currentAccountId":"A","authenticationStatus":"AUTHENTICATED","formDetails":[]}"#,
        );
        assert!(v2(&r).is_ok());
    }

    fn v3_body(expires: &str) -> String {
        format!(
            r#"{{"clientId":"101","accountId":"ACC3","timezoneOffset":1,"lightstreamerEndpoint":"https://ls",
            "oauthToken":{{"access_token":"AT","refresh_token":"RT","scope":"profile","token_type":"Bearer","expires_in":{expires}}}}}"#
        )
    }

    #[test]
    fn v3_expires_in_string_number_and_garbage() {
        let l = v3(&resp(200, &[], &v3_body("\"60\""))).unwrap();
        assert_eq!(l.tokens.expires_in, Duration::from_secs(60));
        assert_eq!(l.account_id, "ACC3");
        assert_eq!(l.tokens.access_token.expose_secret(), "AT");
        let l = v3(&resp(200, &[], &v3_body("60"))).unwrap();
        assert_eq!(l.tokens.expires_in, Duration::from_secs(60));
        for bad in ["\"sixty\"", "\"0\"", "0", "-5", "null", "\"\""] {
            let e = v3(&resp(200, &[], &v3_body(bad))).unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains("sixty"));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_token_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"access_token":"fakeig-access-00002-secret","refresh_token":"fakeig-refresh-00003-secret","scope":"profile","token_type":"Bearer","expires_in":"60"}"#.to_vec(),
            br#"{ "access_token" : "a", "refresh_token" : null, "expires_in" : 60, "x" : [ 1 , { } , -0.5 ] }"#.to_vec(),
            br#"{"expires_in":" 61 ","access_token":"","other":{"a":[true,false,null]}}"#.to_vec(),
        ])) {
            if let Some(fast) = TokenBody::read_plain(&body) {
                let slow: TokenBody<'_> = serde_json::from_slice(&body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_v3_login_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"clientId":"101","accountId":"ACC3","timezoneOffset":1,"lightstreamerEndpoint":"https://ls","oauthToken":{"access_token":"AT","refresh_token":"RT","scope":"profile","token_type":"Bearer","expires_in":"60"}}"#.to_vec(),
            br#"{ "clientId" : 101 , "currentAccountId" : "C1", "accountId" : null, "oauthToken" : null, "x" : [ { "y" : -1.5 } ] }"#.to_vec(),
            br#"{"clientId":{"a":[1]},"lightstreamerEndpoint":null,"oauthToken":{"expires_in":60,"other":{}},"accountId":""}"#.to_vec(),
        ])) {
            if let Some(fast) = LoginV3Body::read_plain(&body) {
                let slow = LoginV3Body::read_json("test", &body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert_eq!(fast, slow);
            }
        }

        #[test]
        fn the_session_read_fast_path_agrees_with_serde(body in crate::plain_json::mutated(vec![
            br#"{"clientId":"1","accountId":"A1","timezoneOffset":0,"locale":"en_GB","currency":"GBP","lightstreamerEndpoint":"https://ls"}"#.to_vec(),
            br#"{ "clientId" : -42 , "currentAccountId" : "C1", "timezoneOffset" : "1", "currency" : null, "z" : [ true, { } ] }"#.to_vec(),
            br#"{"timezoneOffset":-3,"clientId":true,"locale":"fr","accountId":"A","extra":{"n":[null,12]}}"#.to_vec(),
        ])) {
            if let Some(fast) = SessionBody::read_plain(&body) {
                let slow = SessionBody::read_json("test", &body)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("serde refused what the fast path read: {e}")))?;
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    /// The answers IG documents are read by the fast path, and it gives up where
    /// serde_json has to decide (an escape, a number serde_json keeps as a float, a
    /// field given twice), with the same result through serde_json.
    #[test]
    fn the_login_and_session_fast_paths_read_the_usual_answers() {
        let login = v3_body("\"60\"");
        let b = LoginV3Body::read_plain(login.as_bytes()).unwrap();
        assert_eq!(b.account_id.as_deref(), Some("ACC3"));
        assert_eq!(b.client_id.as_deref(), Some("101"));
        assert!(matches!(b.client_id, Some(Cow::Borrowed(_))));
        assert_eq!(b.oauth_token.unwrap().expires_in, Some(60));
        let session = br#"{"clientId":101,"accountId":"A1","timezoneOffset":-5,"locale":"en_GB","currency":"GBP","lightstreamerEndpoint":"https://ls"}"#;
        let s = SessionBody::read_plain(session).unwrap();
        assert_eq!(
            (
                s.client_id.as_deref(),
                s.timezone_offset,
                s.currency.as_deref()
            ),
            (Some("101"), Some(-5), Some("GBP"))
        );
        for given_up in [
            &br#"{"accountId":"A\u0031"}"#[..],
            br#"{"accountId":"A1","clientId":-0}"#,
            br#"{"accountId":"A1","timezoneOffset":1.0}"#,
            br#"{"accountId":"A1","accountId":"A2"}"#,
        ] {
            assert!(SessionBody::read_plain(given_up).is_none());
        }
        let (d, _) = read_session(
            &http::HeaderMap::new(),
            br#"{"accountId":"A\u0031","timezoneOffset":1.0}"#,
        )
        .unwrap();
        assert_eq!((d.account_id.as_str(), d.timezone_offset), ("A1", None));
        assert!(
            read_session(
                &http::HeaderMap::new(),
                br#"{"accountId":"A1","accountId":"A2"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_token_fast_path_reads_the_usual_answer() {
        let body = br#"{"access_token":"a","refresh_token":"r","scope":"profile","token_type":"Bearer","expires_in":"60"}"#;
        let t = TokenBody::read_plain(body).unwrap();
        assert_eq!(
            (
                t.access_token.as_deref(),
                t.refresh_token.as_deref(),
                t.expires_in
            ),
            (Some("a"), Some("r"), Some(60))
        );
        // Given twice: serde_json refuses, so the fast path leaves it to serde_json.
        assert!(TokenBody::read_plain(br#"{"access_token":"a","access_token":"b"}"#).is_none());
        assert!(
            refresh(
                br#"{"access_token":"a","access_token":"b","refresh_token":"r","expires_in":60}"#
            )
            .is_err()
        );
    }

    #[test]
    fn refresh_is_a_bare_token_object() {
        let r = resp(
            200,
            &[],
            r#"{"access_token":"A2","refresh_token":"R2","scope":"profile","token_type":"Bearer","expires_in":"30"}"#,
        );
        let t = refreshed(&r).unwrap();
        assert_eq!(t.refresh_token.expose_secret(), "R2");
        assert_eq!(t.expires_in, Duration::from_secs(30));
        // The login shape (wrapped in oauthToken) is not a refresh answer.
        assert!(refreshed(&resp(200, &[], &v3_body("\"60\""))).is_err());
    }

    #[test]
    fn read_session_with_and_without_tokens() {
        let body = r#"{"clientId":"1","accountId":"A1","timezoneOffset":0,"locale":"en_GB","currency":"GBP","lightstreamerEndpoint":"https://ls"}"#;
        let (d, t) = read(&resp(200, &[], body)).unwrap();
        assert_eq!(d.account_id, "A1");
        assert_eq!(d.locale.as_deref(), Some("en_GB"));
        assert!(t.is_none());
        let (_, t) = read(&resp(
            200,
            &[("cst", "SC"), ("x-security-token", "SX")],
            body,
        ))
        .unwrap();
        assert_eq!(t.unwrap().cst.expose_secret(), "SC");
    }

    #[test]
    fn encryption_key_time_stamp_both_ways() {
        let k = key(&resp(
            200,
            &[],
            r#"{"encryptionKey":"MIIB","timeStamp":"1601218928621"}"#,
        ))
        .unwrap();
        assert_eq!(k.time_stamp, 1_601_218_928_621);
        let k = key(&resp(
            200,
            &[],
            r#"{"encryptionKey":"MIIB","timeStamp":1601218928621}"#,
        ))
        .unwrap();
        assert_eq!(k.time_stamp, 1_601_218_928_621);
        assert!(key(&resp(200, &[], r#"{"encryptionKey":"K","timeStamp":"x"}"#)).is_err());
    }

    #[test]
    fn switch_keeps_absent_tokens_absent() {
        let t = switched(&resp(200, &[("X-SECURITY-TOKEN", "X2")], "{}")).unwrap();
        assert!(t.cst.is_none());
        assert_eq!(t.xst.unwrap().expose_secret(), "X2");
    }

    #[test]
    fn error_codes_and_non_json_bodies() {
        assert_eq!(
            error_code(br#"{"errorCode":"error.security.invalid-details"}"#).as_deref(),
            Some("error.security.invalid-details")
        );
        assert_eq!(error_code(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(error_code(b""), None);
        assert_eq!(error_code(br#"{"errorCode":5}"#), None);
        assert!(matches!(
            v2(&resp(200, &[], "{\"currentAcc")),
            Err(Error::Protocol(ProtocolError::MalformedBody { .. }))
        ));
    }
}
