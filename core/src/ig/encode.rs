//! Pure request builders for IG's session endpoints: each takes an [`Endpoint`] (or
//! implies one) and the inputs, and returns the `http::Request`; method, path and
//! `Version` come from the [`Endpoint`] only.
//!
//! Every request carries `X-IG-API-KEY` (sensitive), `Accept` and `Content-Type`
//! (`application/json; charset=UTF-8`) and an explicit `Version`: IG defaults to 1
//! when it is absent, which silently changes the answer of a v2 or v3 login.

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request};
use serde::Serialize;

use super::endpoint::Endpoint;

use crate::error::{Error, UsageError};
use crate::secret::{AccessToken, ApiKey, Cst, Password, SecurityToken, sensitive_header};

/// The JSON media type IG expects on both `Accept` and `Content-Type`.
pub const JSON: &str = "application/json; charset=UTF-8";

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

/// Sets `X-IG-API-KEY` and the credentials' headers (all marked sensitive). Leaves
/// `Version` alone: the caller picks it per endpoint.
pub fn apply_auth(
    headers: &mut HeaderMap,
    api_key: &ApiKey,
    auth: AuthHeaders<'_>,
) -> Result<(), Error> {
    headers.insert(
        "X-IG-API-KEY",
        sensitive_header(api_key.expose_secret()).ok_or_else(|| invalid("api_key"))?,
    );
    match auth {
        AuthHeaders::Cst { cst, xst } => {
            headers.remove(AUTHORIZATION);
            headers.remove("IG-ACCOUNT-ID");
            headers.insert(
                "CST",
                sensitive_header(cst.expose_secret()).ok_or_else(|| invalid("CST"))?,
            );
            headers.insert(
                "X-SECURITY-TOKEN",
                sensitive_header(xst.expose_secret()).ok_or_else(|| invalid("X-SECURITY-TOKEN"))?,
            );
        }
        AuthHeaders::Bearer { token, account_id } => {
            headers.remove("CST");
            headers.remove("X-SECURITY-TOKEN");
            let bearer = format!("Bearer {}", token.expose_secret());
            headers.insert(
                AUTHORIZATION,
                sensitive_header(&bearer).ok_or_else(|| invalid("access token"))?,
            );
            headers.insert(
                "IG-ACCOUNT-ID",
                sensitive_header(account_id).ok_or_else(|| invalid("account id"))?,
            );
        }
    }
    Ok(())
}

/// A request to `endpoint`: its method, `base` + its path (for the web-platform login,
/// `base` is the whole URL), its `Version`, `Accept` and `Content-Type`, then the API
/// key and the credentials when given. The one place method, path and version are
/// put on a request.
fn request(
    endpoint: Endpoint,
    base: &str,
    api_key: Option<&ApiKey>,
    auth: Option<AuthHeaders<'_>>,
    body: Vec<u8>,
) -> Result<Request<Vec<u8>>, Error> {
    let method = endpoint
        .method()
        .ok_or(Error::Usage(UsageError::InvalidArgument {
            what: "endpoint",
            reason: "application requests are built by the application",
        }))?;
    let url = match endpoint.path() {
        Some(path) => format!("{base}{path}"),
        None => base.to_owned(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .map_err(|_| {
            Error::Usage(UsageError::InvalidArgument {
                what: "URL",
                reason: "not a valid request URI",
            })
        })?;
    let h = req.headers_mut();
    h.insert(ACCEPT, HeaderValue::from_static(JSON));
    h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    if let Some(v) = endpoint.version() {
        h.insert("Version", HeaderValue::from(u16::from(v)));
    }
    match (api_key, auth) {
        (Some(key), Some(auth)) => apply_auth(h, key, auth)?,
        (Some(key), None) => {
            h.insert(
                "X-IG-API-KEY",
                sensitive_header(key.expose_secret()).ok_or_else(|| invalid("api_key"))?,
            );
        }
        _ => {}
    }
    Ok(req)
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
    let body = json(&LoginBody {
        identifier,
        password: password.expose_secret(),
        encrypted_password: encrypted.then_some(true),
    });
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

/// `POST {base}/session/refresh-token`, Version 1, body `{"refresh_token": …}`. Only
/// the API key is sent: the refresh token is the credential, and the old access token
/// may already have expired.
pub fn refresh(
    base: &str,
    api_key: &ApiKey,
    refresh_token: &crate::secret::RefreshToken,
) -> Result<Request<Vec<u8>>, Error> {
    #[derive(Serialize)]
    struct Body<'a> {
        refresh_token: &'a str,
    }
    let body = json(&Body {
        refresh_token: refresh_token.expose_secret(),
    });
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
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "accountId")]
        account_id: &'a str,
        #[serde(rename = "defaultAccount", skip_serializing_if = "Option::is_none")]
        default_account: Option<bool>,
    }
    let body = json(&Body {
        account_id,
        default_account: make_default.then_some(true),
    });
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

/// The unofficial web-platform login: `POST {url}` with
/// `{"username": …, "password": …, "enc": false}`. No API key and no `Version`: the
/// endpoint is not part of the public API and the key is not sent where it is not
/// needed.
pub fn web_platform_login(
    url: &str,
    identifier: &str,
    password: &Password,
) -> Result<Request<Vec<u8>>, Error> {
    #[derive(Serialize)]
    struct Body<'a> {
        username: &'a str,
        password: &'a str,
        enc: bool,
    }
    let body = json(&Body {
        username: identifier,
        password: password.expose_secret(),
        enc: false,
    });
    request(Endpoint::WebPlatformLogin, url, None, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;
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
