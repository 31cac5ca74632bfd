//! Pure request builders for IG's session endpoints: each takes an [`Endpoint`] (or
//! implies one) and the inputs, and returns the `http::Request`; method, path and
//! `Version` come from the [`Endpoint`] only.
//!
//! Every request carries `X-IG-API-KEY` (sensitive), `Accept` and `Content-Type`
//! (`application/json; charset=UTF-8`) and an explicit `Version`: IG defaults to 1
//! when it is absent, which silently changes the answer of a v2 or v3 login.
//!
//! The public builders parse their URL and header values on each call. A session
//! sends the same few URLs and credentials over and over, so it keeps them parsed in a
//! [`Prepared`] (and its credentials in [`AuthValues`]): putting one on a request is a
//! reference-count increment, not a parse and a copy. Both paths end in the same
//! `assemble`, so they cannot disagree on a header.

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use serde::Serialize;

use super::config::BaseUrl;
use super::endpoint::Endpoint;

use crate::error::{Error, UsageError};
use crate::secret::{AccessToken, ApiKey, Cst, Password, SecurityToken, sensitive_header};
use crate::uris::EndpointUris;

/// The JSON media type IG expects on both `Accept` and `Content-Type`.
pub const JSON: &str = "application/json; charset=UTF-8";

// Header names as constants: a `&str` name is parsed and, for these non-standard
// names, copied into a fresh buffer on every insert.
const X_IG_API_KEY: HeaderName = HeaderName::from_static("x-ig-api-key");
const VERSION: HeaderName = HeaderName::from_static("version");
const CST: HeaderName = HeaderName::from_static("cst");
const X_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-security-token");
const IG_ACCOUNT_ID: HeaderName = HeaderName::from_static("ig-account-id");

/// Room for the headers of a session request: `Accept`, `Content-Type`, `Version`,
/// the API key and two credential headers. A transport adding `User-Agent` and
/// `Content-Length` then grows the map once. Sized for all eight from the start, the
/// map doubles (16 slots: 17,483 instead of 9,611 bytes allocated per core IG cycle)
/// and the core IG cycle took 10.7–11.1 µs instead of 9.8–10.1 µs, for about 2,900
/// instructions saved per four-request loopback cycle (under 1 % of its CPU):
/// measured, and kept at six.
const SESSION_HEADERS: usize = 6;

/// Credentials to put on a request: CST mode (v1/v2 login) or OAuth mode (v3).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum AuthHeaders<'a> {
    /// `CST` + `X-SECURITY-TOKEN`.
    Cst {
        /// The client session token.
        cst: &'a Cst,
        /// The account session token.
        xst: &'a SecurityToken,
    },
    /// `Authorization: Bearer <token>` + `IG-ACCOUNT-ID`.
    Bearer {
        /// The v3 access token.
        token: &'a AccessToken,
        /// The account the request acts on.
        account_id: &'a str,
    },
}

fn invalid(what: &'static str) -> Error {
    Error::Usage(UsageError::InvalidArgument {
        what,
        reason: "contains characters not allowed in an HTTP header",
    })
}

/// The credentials' header values, checked and marked sensitive. A session builds
/// them once per credential generation and clones them onto each request.
///
/// The values hold copies of the tokens (as every request carrying them does); they
/// are dropped with the session or when the tokens change.
#[derive(Clone, Debug)]
pub(crate) enum AuthValues {
    /// `CST` + `X-SECURITY-TOKEN`.
    Cst { cst: HeaderValue, xst: HeaderValue },
    /// `Authorization: Bearer …` + `IG-ACCOUNT-ID`.
    Bearer {
        authorization: HeaderValue,
        account_id: HeaderValue,
    },
}

impl AuthValues {
    pub(crate) fn new(auth: AuthHeaders<'_>) -> Result<Self, Error> {
        Ok(match auth {
            AuthHeaders::Cst { cst, xst } => Self::Cst {
                cst: sensitive_header(cst.expose_secret()).ok_or_else(|| invalid("CST"))?,
                xst: sensitive_header(xst.expose_secret())
                    .ok_or_else(|| invalid("X-SECURITY-TOKEN"))?,
            },
            AuthHeaders::Bearer { token, account_id } => {
                let token = token.expose_secret();
                let mut bearer = String::with_capacity("Bearer ".len() + token.len());
                bearer.push_str("Bearer ");
                bearer.push_str(token);
                // Moves the string into the value (no copy).
                let mut authorization =
                    HeaderValue::try_from(bearer).map_err(|_| invalid("access token"))?;
                authorization.set_sensitive(true);
                Self::Bearer {
                    authorization,
                    account_id: sensitive_header(account_id)
                        .ok_or_else(|| invalid("account id"))?,
                }
            }
        })
    }

    /// Whether these are the values of `auth`, compared byte for byte: a session
    /// keeps them between requests and must never send stale ones, whatever changed
    /// its tokens or account.
    pub(crate) fn are_for(&self, auth: AuthHeaders<'_>) -> bool {
        match (self, auth) {
            (Self::Cst { cst, xst }, AuthHeaders::Cst { cst: c, xst: x }) => {
                cst.as_bytes() == c.expose_secret().as_bytes()
                    && xst.as_bytes() == x.expose_secret().as_bytes()
            }
            (
                Self::Bearer {
                    authorization,
                    account_id,
                },
                AuthHeaders::Bearer {
                    token,
                    account_id: a,
                },
            ) => {
                authorization.as_bytes().strip_prefix(b"Bearer ")
                    == Some(token.expose_secret().as_bytes())
                    && account_id.as_bytes() == a.as_bytes()
            }
            _ => false,
        }
    }

    /// Puts the credentials on `headers`, removing the other mode's headers (a request
    /// stamped before may carry them).
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        match self {
            Self::Cst { cst, xst } => {
                headers.remove(AUTHORIZATION);
                headers.remove(IG_ACCOUNT_ID);
                headers.insert(CST, cst.clone());
                headers.insert(X_SECURITY_TOKEN, xst.clone());
            }
            Self::Bearer {
                authorization,
                account_id,
            } => {
                headers.remove(CST);
                headers.remove(X_SECURITY_TOKEN);
                headers.insert(AUTHORIZATION, authorization.clone());
                headers.insert(IG_ACCOUNT_ID, account_id.clone());
            }
        }
    }

    /// Puts the credentials on a fresh request (nothing to remove).
    fn insert_into(&self, headers: &mut HeaderMap) {
        match self {
            Self::Cst { cst, xst } => {
                headers.insert(CST, cst.clone());
                headers.insert(X_SECURITY_TOKEN, xst.clone());
            }
            Self::Bearer {
                authorization,
                account_id,
            } => {
                headers.insert(AUTHORIZATION, authorization.clone());
                headers.insert(IG_ACCOUNT_ID, account_id.clone());
            }
        }
    }
}

/// `X-IG-API-KEY`'s value, marked sensitive.
pub(crate) fn api_key_value(api_key: &ApiKey) -> Result<HeaderValue, Error> {
    sensitive_header(api_key.expose_secret()).ok_or_else(|| invalid("api_key"))
}

/// Sets `X-IG-API-KEY` and the credentials' headers (all marked sensitive). Leaves
/// `Version` alone: the caller picks it per endpoint. Nothing is changed when a value
/// cannot go in a header.
pub fn apply_auth(
    headers: &mut HeaderMap,
    api_key: &ApiKey,
    auth: AuthHeaders<'_>,
) -> Result<(), Error> {
    let key = api_key_value(api_key)?;
    let values = AuthValues::new(auth)?;
    headers.insert(X_IG_API_KEY, key);
    values.apply(headers);
    Ok(())
}

fn not_a_session_request() -> Error {
    Error::Usage(UsageError::InvalidArgument {
        what: "endpoint",
        reason: "application requests are built by the application",
    })
}

fn bad_url() -> Error {
    Error::Usage(UsageError::InvalidArgument {
        what: "URL",
        reason: "not a valid request URI",
    })
}

/// `Version`'s value; the versions IG uses are static strings.
fn version_value(v: u8) -> HeaderValue {
    match v {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        v => HeaderValue::from(u16::from(v)),
    }
}

/// The one place method, `Version`, `Accept`, `Content-Type`, the API key and the
/// credentials are put on a session request.
fn assemble(
    endpoint: Endpoint,
    method: Method,
    uri: Uri,
    api_key: Option<HeaderValue>,
    auth: Option<&AuthValues>,
    body: Vec<u8>,
) -> Request<Vec<u8>> {
    let mut headers = HeaderMap::with_capacity(SESSION_HEADERS);
    headers.insert(ACCEPT, HeaderValue::from_static(JSON));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    if let Some(v) = endpoint.version() {
        headers.insert(VERSION, version_value(v));
    }
    if let Some(key) = api_key {
        headers.insert(X_IG_API_KEY, key);
    }
    if let Some(auth) = auth {
        auth.insert_into(&mut headers);
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// A request to `endpoint`: its method, `base` + its path (for the web-platform login,
/// `base` is the whole URL), its `Version`, `Accept` and `Content-Type`, then the API
/// key and the credentials when given.
fn request(
    endpoint: Endpoint,
    base: &str,
    api_key: Option<&ApiKey>,
    auth: Option<AuthHeaders<'_>>,
    body: Vec<u8>,
) -> Result<Request<Vec<u8>>, Error> {
    let method = endpoint.method().ok_or_else(not_a_session_request)?;
    let url = match endpoint.path() {
        Some(path) => [base, path].concat(),
        None => base.to_owned(),
    };
    let uri = Uri::try_from(url).map_err(|_| bad_url())?;
    let api_key = api_key.map(api_key_value).transpose()?;
    let auth = auth.map(AuthValues::new).transpose()?;
    Ok(assemble(
        endpoint,
        method,
        uri,
        api_key,
        auth.as_ref(),
        body,
    ))
}

/// The endpoints with a path under the base URL, in the order of [`Prepared`]'s URIs
/// (`Prepared::uri` picks by the same order).
const UNDER_BASE: [Endpoint; 4] = [
    Endpoint::Logout, // `/session`: also the logins, the read and the switch
    Endpoint::ReadSession { fetch_tokens: true },
    Endpoint::EncryptionKey,
    Endpoint::Refresh,
];

/// Where the refresh, the keep-alive of a v3 session, is in [`UNDER_BASE`]: its path
/// is kept parsed.
const REFRESH: usize = 3;
const _: () = assert!(matches!(UNDER_BASE[REFRESH], Endpoint::Refresh));

/// The parts of a session's requests that never change: each endpoint's URI and the
/// API key's header value. Built once when the session starts.
#[derive(Debug)]
pub(crate) struct Prepared {
    uris: EndpointUris<4>,
    /// The web-platform login's whole URL, when that is the login flow.
    web_platform: Option<Box<Uri>>,
    api_key: HeaderValue,
}

impl Prepared {
    /// Parses every fixed part once. `web_platform_url` is given only for the
    /// web-platform login flow.
    pub(crate) fn new(
        base: &BaseUrl,
        api_key: &ApiKey,
        web_platform_url: Option<&str>,
    ) -> Result<Self, Error> {
        let uris = EndpointUris::new(
            base.scheme.clone(),
            base.authority.clone(),
            &base.prefix,
            UNDER_BASE.map(|e| e.path().unwrap_or_default()),
            REFRESH,
        )
        .ok_or_else(bad_url)?;
        let web_platform = web_platform_url
            .map(|url| Uri::try_from(url).map(Box::new).map_err(|_| bad_url()))
            .transpose()?;
        Ok(Self {
            uris,
            web_platform,
            api_key: api_key_value(api_key)?,
        })
    }

    /// Whether the prepared API key header is `api_key`'s value.
    pub(crate) fn has_api_key(&self, api_key: &ApiKey) -> bool {
        self.api_key.as_bytes() == api_key.expose_secret().as_bytes()
    }

    /// Stamps an application request: the API key and the credentials, as
    /// [`apply_auth`] does.
    pub(crate) fn stamp(&self, headers: &mut HeaderMap, auth: &AuthValues) {
        headers.insert(X_IG_API_KEY, self.api_key.clone());
        auth.apply(headers);
    }

    fn uri(&self, endpoint: Endpoint) -> Result<Uri, Error> {
        let i = match endpoint {
            Endpoint::WebPlatformLogin => {
                return self.web_platform.as_deref().cloned().ok_or_else(bad_url);
            }
            Endpoint::LoginV1
            | Endpoint::LoginV2
            | Endpoint::LoginV3
            | Endpoint::ReadSession {
                fetch_tokens: false,
            }
            | Endpoint::Switch
            | Endpoint::Logout => 0,
            Endpoint::ReadSession { fetch_tokens: true } => 1,
            Endpoint::EncryptionKey => 2,
            Endpoint::Refresh => REFRESH,
            Endpoint::Application => return Err(not_a_session_request()),
        };
        self.uris.get(i).ok_or_else(bad_url)
    }

    /// The request to `endpoint` with `body`, from the prepared parts: the same
    /// request the public builder of that endpoint returns. The web-platform login
    /// carries no API key, like [`web_platform_login`].
    pub(crate) fn request(
        &self,
        endpoint: Endpoint,
        auth: Option<&AuthValues>,
        body: Vec<u8>,
    ) -> Result<Request<Vec<u8>>, Error> {
        let method = endpoint.method().ok_or_else(not_a_session_request)?;
        let uri = self.uri(endpoint)?;
        let api_key = (endpoint != Endpoint::WebPlatformLogin).then(|| self.api_key.clone());
        Ok(assemble(endpoint, method, uri, api_key, auth, body))
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain string/bool structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[derive(Serialize)]
struct LoginBody<'a> {
    identifier: &'a str,
    password: &'a str,
    #[serde(rename = "encryptedPassword", skip_serializing_if = "Option::is_none")]
    encrypted_password: Option<bool>,
}

/// The body of a `POST /session` login.
pub(crate) fn login_body(identifier: &str, password: &Password, encrypted: bool) -> Vec<u8> {
    json(&LoginBody {
        identifier,
        password: password.expose_secret(),
        encrypted_password: encrypted.then_some(true),
    })
}

/// `POST {base}/session` to `endpoint`: [`Endpoint::LoginV1`], [`LoginV2`](Endpoint::LoginV2)
/// or [`LoginV3`](Endpoint::LoginV3) (its `Version`). `encrypted` adds
/// `"encryptedPassword": true` (v1/v2 only; pass the output of
/// [`encrypt_password`](super::encrypt_password) as `password`).
///
/// # Errors
/// [`Error::Usage`] for another endpoint or values that cannot go in a header.
pub fn login(
    base: &str,
    api_key: &ApiKey,
    endpoint: Endpoint,
    identifier: &str,
    password: &Password,
    encrypted: bool,
) -> Result<Request<Vec<u8>>, Error> {
    if !matches!(
        endpoint,
        Endpoint::LoginV1 | Endpoint::LoginV2 | Endpoint::LoginV3
    ) {
        return Err(Error::Usage(UsageError::InvalidArgument {
            what: "endpoint",
            reason: "not a POST /session login",
        }));
    }
    let body = login_body(identifier, password, encrypted);
    request(endpoint, base, Some(api_key), None, body)
}

/// `GET {base}/session/encryptionKey`, Version 1.
pub fn encryption_key(base: &str, api_key: &ApiKey) -> Result<Request<Vec<u8>>, Error> {
    request(
        Endpoint::EncryptionKey,
        base,
        Some(api_key),
        None,
        Vec::new(),
    )
}

/// The body of `POST /session/refresh-token`.
pub(crate) fn refresh_body(refresh_token: &crate::secret::RefreshToken) -> Vec<u8> {
    // The body of every keep-alive, written directly rather than through a
    // serialized struct: `{"refresh_token":"…"}`.
    let token = refresh_token.expose_secret();
    let mut body = Vec::with_capacity(token.len() + 20);
    body.extend_from_slice(br#"{"refresh_token":"#);
    if token.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        body.push(b'"');
        body.extend_from_slice(token.as_bytes());
        body.push(b'"');
    } else {
        // A token that needs escapes: serde_json writes them (writing a string to a
        // vector cannot fail).
        let _ = serde_json::to_writer(&mut body, token);
    }
    body.push(b'}');
    body
}

/// `POST {base}/session/refresh-token`, Version 1, body `{"refresh_token": …}`. Only
/// the API key is sent: the refresh token is the credential, and the old access token
/// may already have expired.
pub fn refresh(
    base: &str,
    api_key: &ApiKey,
    refresh_token: &crate::secret::RefreshToken,
) -> Result<Request<Vec<u8>>, Error> {
    let body = refresh_body(refresh_token);
    request(Endpoint::Refresh, base, Some(api_key), None, body)
}

/// `GET {base}/session`, Version 1; with `fetch_tokens`, `?fetchSessionTokens=true`
/// so IG answers with `CST` and `X-SECURITY-TOKEN` headers.
pub fn read_session(
    base: &str,
    api_key: &ApiKey,
    auth: AuthHeaders<'_>,
    fetch_tokens: bool,
) -> Result<Request<Vec<u8>>, Error> {
    request(
        Endpoint::ReadSession { fetch_tokens },
        base,
        Some(api_key),
        Some(auth),
        Vec::new(),
    )
}

/// The body of `PUT /session`.
pub(crate) fn switch_body(account_id: &str, make_default: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "accountId")]
        account_id: &'a str,
        #[serde(rename = "defaultAccount", skip_serializing_if = "Option::is_none")]
        default_account: Option<bool>,
    }
    json(&Body {
        account_id,
        default_account: make_default.then_some(true),
    })
}

/// `PUT {base}/session`, Version 1, body `{"accountId": …}`, plus
/// `"defaultAccount": true` only when `make_default` (which permanently changes the
/// profile's default account).
pub fn switch_account(
    base: &str,
    api_key: &ApiKey,
    auth: AuthHeaders<'_>,
    account_id: &str,
    make_default: bool,
) -> Result<Request<Vec<u8>>, Error> {
    let body = switch_body(account_id, make_default);
    request(Endpoint::Switch, base, Some(api_key), Some(auth), body)
}

/// `DELETE {base}/session`, Version 1, no body.
pub fn logout(
    base: &str,
    api_key: &ApiKey,
    auth: AuthHeaders<'_>,
) -> Result<Request<Vec<u8>>, Error> {
    request(
        Endpoint::Logout,
        base,
        Some(api_key),
        Some(auth),
        Vec::new(),
    )
}

/// The body of the web-platform login.
pub(crate) fn web_platform_body(identifier: &str, password: &Password) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        username: &'a str,
        password: &'a str,
        enc: bool,
    }
    json(&Body {
        username: identifier,
        password: password.expose_secret(),
        enc: false,
    })
}

/// The unofficial web-platform login: `POST {url}` with
/// `{"username": …, "password": …, "enc": false}`. No API key and no `Version`: the
/// endpoint is not part of the public API and the key is not sent where it is not
/// needed.
pub fn web_platform_login(
    url: &str,
    identifier: &str,
    password: &Password,
) -> Result<Request<Vec<u8>>, Error> {
    let body = web_platform_body(identifier, password);
    request(Endpoint::WebPlatformLogin, url, None, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_bodies_are_json_whatever_the_token() {
        for token in ["fakeig-refresh-00003-secret", "a\"b\\c\nd", "é"] {
            let body = refresh_body(&crate::secret::RefreshToken::new(token));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, serde_json::json!({ "refresh_token": token }));
        }
        assert_eq!(
            refresh_body(&crate::secret::RefreshToken::new("abc")),
            br#"{"refresh_token":"abc"}"#
        );
    }
    use http::Method;

    const BASE: &str = "https://demo-api.ig.com/gateway/deal";

    fn key() -> ApiKey {
        ApiKey::new("the-api-key")
    }

    fn hdr<'a>(r: &'a Request<Vec<u8>>, n: &str) -> Option<&'a str> {
        r.headers().get(n).map(|v| v.to_str().unwrap())
    }

    fn body(r: &Request<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(r.body()).unwrap()
    }

    fn common(r: &Request<Vec<u8>>, version: &str) {
        assert_eq!(hdr(r, "x-ig-api-key"), Some("the-api-key"));
        assert!(r.headers()["x-ig-api-key"].is_sensitive());
        assert_eq!(hdr(r, "accept"), Some(JSON));
        assert_eq!(hdr(r, "content-type"), Some(JSON));
        assert_eq!(hdr(r, "version"), Some(version));
    }

    #[test]
    fn login_v2_and_v3_render_exactly() {
        for (e, v) in [
            (Endpoint::LoginV1, 1),
            (Endpoint::LoginV2, 2),
            (Endpoint::LoginV3, 3),
        ] {
            let r = login(BASE, &key(), e, "user1", &Password::new("pw"), false).unwrap();
            assert_eq!(r.method(), Method::POST);
            assert_eq!(r.uri(), "https://demo-api.ig.com/gateway/deal/session");
            common(&r, &v.to_string());
            assert_eq!(
                body(&r),
                serde_json::json!({"identifier":"user1","password":"pw"})
            );
            assert!(hdr(&r, "cst").is_none() && hdr(&r, "authorization").is_none());
        }
        let r = login(
            BASE,
            &key(),
            Endpoint::LoginV2,
            "u",
            &Password::new("ENC"),
            true,
        )
        .unwrap();
        assert_eq!(
            body(&r),
            serde_json::json!({"identifier":"u","password":"ENC","encryptedPassword":true})
        );
    }

    #[test]
    fn encryption_key_and_refresh_render_exactly() {
        let r = encryption_key(BASE, &key()).unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/gateway/deal/session/encryptionKey");
        common(&r, "1");
        assert!(r.body().is_empty());

        let r = refresh(BASE, &key(), &crate::secret::RefreshToken::new("rt-1")).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().path(), "/gateway/deal/session/refresh-token");
        common(&r, "1");
        assert_eq!(body(&r), serde_json::json!({"refresh_token":"rt-1"}));
        assert!(hdr(&r, "authorization").is_none());
    }

    #[test]
    fn session_reads_switches_and_logouts_carry_auth() {
        let cst = Cst::new("c1");
        let xst = SecurityToken::new("x1");
        let tok = AccessToken::new("a1");
        let cst_auth = AuthHeaders::Cst {
            cst: &cst,
            xst: &xst,
        };
        let bearer = AuthHeaders::Bearer {
            token: &tok,
            account_id: "ACC1",
        };

        let r = read_session(BASE, &key(), cst_auth, false).unwrap();
        assert_eq!(
            (r.method(), r.uri().path()),
            (&Method::GET, "/gateway/deal/session")
        );
        assert_eq!(r.uri().query(), None);
        common(&r, "1");
        assert_eq!(hdr(&r, "cst"), Some("c1"));
        assert_eq!(hdr(&r, "x-security-token"), Some("x1"));
        assert!(r.headers()["cst"].is_sensitive());

        let r = read_session(BASE, &key(), bearer, true).unwrap();
        assert_eq!(r.uri().query(), Some("fetchSessionTokens=true"));
        assert_eq!(hdr(&r, "authorization"), Some("Bearer a1"));
        assert_eq!(hdr(&r, "ig-account-id"), Some("ACC1"));
        assert!(r.headers()["authorization"].is_sensitive());

        let r = switch_account(BASE, &key(), cst_auth, "ACC2", false).unwrap();
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.uri().path(), "/gateway/deal/session");
        common(&r, "1");
        assert_eq!(body(&r), serde_json::json!({"accountId":"ACC2"}));
        let r = switch_account(BASE, &key(), cst_auth, "ACC2", true).unwrap();
        assert_eq!(
            body(&r),
            serde_json::json!({"accountId":"ACC2","defaultAccount":true})
        );

        let r = logout(BASE, &key(), cst_auth).unwrap();
        assert_eq!(r.method(), Method::DELETE);
        assert_eq!(r.uri().path(), "/gateway/deal/session");
        common(&r, "1");
        assert!(r.body().is_empty());
    }

    #[test]
    fn web_platform_login_renders_exactly() {
        let r = web_platform_login(
            "https://api.ig.com/clientsecurity/session",
            "u",
            &Password::new("p"),
        )
        .unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "https://api.ig.com/clientsecurity/session");
        assert_eq!(
            body(&r),
            serde_json::json!({"username":"u","password":"p","enc":false})
        );
        assert!(hdr(&r, "x-ig-api-key").is_none());
        assert!(hdr(&r, "version").is_none());
    }

    /// Every header with its sensitivity, in order.
    fn headers(r: &Request<Vec<u8>>) -> Vec<(String, Vec<u8>, bool)> {
        r.headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
            .collect()
    }

    fn same(a: &Request<Vec<u8>>, b: &Request<Vec<u8>>) {
        assert_eq!(a.method(), b.method());
        assert_eq!(a.uri(), b.uri());
        assert_eq!(headers(a), headers(b));
        assert_eq!(a.body(), b.body());
    }

    /// A session builds its requests from prepared parts; each must be exactly what
    /// the public builder of that endpoint returns.
    #[test]
    fn prepared_requests_equal_the_public_builders() {
        let web = "https://api.ig.com/clientsecurity/session";
        for base in [BASE, "http://127.0.0.1:8080", "https://h.example:8443/a/b"] {
            let p = Prepared::new(&BaseUrl::parse(base).unwrap(), &key(), Some(web)).unwrap();
            let (cst, xst, tok) = (
                Cst::new("c1"),
                SecurityToken::new("x1"),
                AccessToken::new("a1"),
            );
            for auth in [
                AuthHeaders::Cst {
                    cst: &cst,
                    xst: &xst,
                },
                AuthHeaders::Bearer {
                    token: &tok,
                    account_id: "ACC1",
                },
            ] {
                let v = AuthValues::new(auth).unwrap();
                for fetch_tokens in [false, true] {
                    let e = Endpoint::ReadSession { fetch_tokens };
                    let built = p.request(e, Some(&v), Vec::new()).unwrap();
                    same(
                        &built,
                        &read_session(base, &key(), auth, fetch_tokens).unwrap(),
                    );
                }
                let built = p.request(Endpoint::Logout, Some(&v), Vec::new()).unwrap();
                same(&built, &logout(base, &key(), auth).unwrap());
                let built = p
                    .request(Endpoint::Switch, Some(&v), switch_body("ACC2", true))
                    .unwrap();
                same(
                    &built,
                    &switch_account(base, &key(), auth, "ACC2", true).unwrap(),
                );
            }
            let pw = Password::new("pw");
            for e in [Endpoint::LoginV1, Endpoint::LoginV2, Endpoint::LoginV3] {
                let built = p.request(e, None, login_body("u", &pw, false)).unwrap();
                same(&built, &login(base, &key(), e, "u", &pw, false).unwrap());
            }
            let built = p
                .request(Endpoint::EncryptionKey, None, Vec::new())
                .unwrap();
            same(&built, &encryption_key(base, &key()).unwrap());
            let rt = crate::secret::RefreshToken::new("rt-1");
            let built = p
                .request(Endpoint::Refresh, None, refresh_body(&rt))
                .unwrap();
            same(&built, &refresh(base, &key(), &rt).unwrap());
            let built = p
                .request(
                    Endpoint::WebPlatformLogin,
                    None,
                    web_platform_body("u", &pw),
                )
                .unwrap();
            same(&built, &web_platform_login(web, "u", &pw).unwrap());
            assert!(p.request(Endpoint::Application, None, Vec::new()).is_err());
        }
    }

    /// A session reuses its credentials' header values only while they still match
    /// the tokens and account byte for byte.
    #[test]
    fn kept_auth_values_match_only_their_own_credentials() {
        let (c1, x1) = (Cst::new("c1"), SecurityToken::new("x1"));
        let (c2, x2) = (Cst::new("c2"), SecurityToken::new("x2"));
        let (t1, t2) = (AccessToken::new("a1"), AccessToken::new("a2"));
        let cst = |cst, xst| AuthHeaders::Cst { cst, xst };
        let bearer = |token, account_id| AuthHeaders::Bearer { token, account_id };
        let kept = AuthValues::new(cst(&c1, &x1)).unwrap();
        assert!(kept.are_for(cst(&c1, &x1)));
        assert!(!kept.are_for(cst(&c2, &x1)) && !kept.are_for(cst(&c1, &x2)));
        assert!(!kept.are_for(bearer(&t1, "A")));
        let kept = AuthValues::new(bearer(&t1, "A")).unwrap();
        assert!(kept.are_for(bearer(&t1, "A")));
        assert!(!kept.are_for(bearer(&t2, "A")) && !kept.are_for(bearer(&t1, "B")));
        assert!(!kept.are_for(cst(&c1, &x1)));
        // "Bearer " belongs to the header, not the token.
        let odd = AccessToken::new("Bearer a1");
        assert!(!kept.are_for(bearer(&odd, "A")));
    }

    #[test]
    fn apply_auth_switches_modes_and_leaves_nothing_of_the_other() {
        let (cst, xst, tok) = (
            Cst::new("c1"),
            SecurityToken::new("x1"),
            AccessToken::new("a1"),
        );
        let mut h = HeaderMap::new();
        apply_auth(
            &mut h,
            &key(),
            AuthHeaders::Cst {
                cst: &cst,
                xst: &xst,
            },
        )
        .unwrap();
        apply_auth(
            &mut h,
            &key(),
            AuthHeaders::Bearer {
                token: &tok,
                account_id: "A",
            },
        )
        .unwrap();
        assert!(h.get("cst").is_none() && h.get("x-security-token").is_none());
        assert_eq!(h["authorization"], "Bearer a1");
        apply_auth(
            &mut h,
            &key(),
            AuthHeaders::Cst {
                cst: &cst,
                xst: &xst,
            },
        )
        .unwrap();
        assert!(h.get("authorization").is_none() && h.get("ig-account-id").is_none());
        // A bad value changes nothing.
        let bad = Cst::new("a\r\nb");
        let before = h.clone();
        assert!(
            apply_auth(
                &mut h,
                &key(),
                AuthHeaders::Cst {
                    cst: &bad,
                    xst: &xst
                }
            )
            .is_err()
        );
        assert_eq!(h, before);
    }

    #[test]
    fn header_injection_is_refused_without_echo() {
        let bad = Cst::new("a\r\nb: evil");
        let xst = SecurityToken::new("x");
        let e = read_session(
            BASE,
            &key(),
            AuthHeaders::Cst {
                cst: &bad,
                xst: &xst,
            },
            false,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("evil"));
    }
}
