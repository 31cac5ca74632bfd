//! The OAuth 1.0a server side of the fake: live session tokens and signature checks,
//! written independently of the client code it tests.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_session::Now;
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret};
use hmac::{KeyInit as _, Mac as _};
use rsa::PublicKey;
use serde_json::json;

use super::{BASE_PATH, respond};
use crate::server::ServedOn;

/// IBKR's public OAuth 1.0a base URL, the one a client signs for when it believes it
/// talks to the real host ([`OAuthServer::public_base_url`]'s default).
pub const PUBLIC_BASE_URL: &str = "https://api.ibkr.com/v1/api";

/// The realm IBKR pairs with a consumer key: `test_realm` for IBKR's test consumer
/// `TESTCONS`, `limited_poa` for every other consumer.
///
/// Source: ibind 0.2.2 `OAuth1aConfig.realm` ("generally set to limited_poa, however
/// should be set to test_realm when using the TESTCONS consumer key"), and IBKR's
/// C# OAuth 1.0a sample, which picks `test_realm` for `TESTCONS`.
pub fn realm_for(consumer_key: &str) -> &'static str {
    if consumer_key == "TESTCONS" {
        "test_realm"
    } else {
        "limited_poa"
    }
}

/// Which variants of a signed request's query string the server accepts.
///
/// IBKR's own description of the base string (quoted in ibind 0.2.2's
/// `generate_base_string` docstring) lists "query parameters" among the signed
/// pairs, as RFC 5849 §3.4.1.3 does; ibind 0.2.2 signs without them and is used that
/// way against the live API (ibind `IbkrClient._get_headers` passes no
/// `request_params`). Both are therefore accepted by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryAcceptance {
    /// Signed with or without the query parameters (the default).
    #[default]
    Either,
    /// Only signatures that include the query parameters.
    Included,
    /// Only signatures without the query parameters.
    Omitted,
}

/// The OAuth server side.
pub struct OAuthServer {
    pub(super) consumer_key: String,
    pub(super) access_token: String,
    pub(super) realm: String,
    pub(super) signature_key: PublicKey,
    pub(super) prepend: Vec<u8>,
    pub(super) group: DhGroup,
    pub(super) server_secret: DhSecret,
    pub(super) lst: Option<Vec<u8>>,
    pub(super) lst_expires_ms: i64,
    pub(super) nonces: HashSet<String>,
    /// Lifetime of each live session token (default 24 h).
    pub lst_lifetime: Duration,
    /// Which query-string variants of the base string are accepted (default: either).
    pub query_signing: QueryAcceptance,
    /// The public base URL clients sign for besides the URL they connect to (default
    /// [`PUBLIC_BASE_URL`]).
    pub public_base_url: String,
    /// Answer the LST request 401 `invalid consumer` (default `false`).
    pub reject_consumer: bool,
    /// Live session tokens issued.
    pub tokens_issued: u32,
    /// Requests refused for a bad signature.
    pub bad_signatures: u32,
}

impl OAuthServer {
    /// The current live session token (base64), as the server derived it.
    pub fn current_lst(&self) -> Option<String> {
        self.lst.as_ref().map(|k| STANDARD.encode(k))
    }

    /// Forgets the live session token (as IBKR does at its reset or on expiry).
    pub fn revoke(&mut self) {
        self.lst = None;
    }

    pub(super) fn live_session_token(
        &mut self,
        req: &http::Request<Vec<u8>>,
        now: Now,
    ) -> http::Response<Vec<u8>> {
        let deny = |why: &str| {
            respond(
                401,
                &json!({"error": format!("id: 3931, error: {why}"), "statusCode": 401}),
            )
        };
        if self.reject_consumer {
            return deny("invalid consumer");
        }
        let Some((realm, params)) = parse_header(req) else {
            return deny("missing authorization");
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if realm != self.realm
            || get("oauth_consumer_key").as_deref() != Some(&self.consumer_key)
            || get("oauth_token").as_deref() != Some(&self.access_token)
            || get("oauth_signature_method").as_deref() != Some("RSA-SHA256")
            || !self.fresh(get("oauth_timestamp"), get("oauth_nonce"), now)
        {
            return deny("invalid consumer");
        }
        let (Some(challenge), Some(sig)) =
            (get("diffie_hellman_challenge"), get("oauth_signature"))
        else {
            return deny("missing parameters");
        };
        let prepend_hex: String = self.prepend.iter().map(|b| format!("{b:02x}")).collect();
        let Some(sig) = pct_decode(&sig).and_then(|s| STANDARD.decode(s).ok()) else {
            return deny("bad signature encoding");
        };
        let verified = self.urls(req).iter().any(|url| {
            let base = format!("{prepend_hex}{}", base_string(req, url, &params, false));
            self.signature_key
                .pkcs1v15_verify::<sha2::Sha256>(base.as_bytes(), &sig)
                .is_ok()
        });
        if !verified {
            self.bad_signatures += 1;
            return deny("invalid signature");
        }
        let Ok(k) = self.group.shared_secret(&self.server_secret, &challenge) else {
            return deny("invalid challenge");
        };
        let lst = hmac_sha1(k.expose_secret(), &self.prepend);
        let signature: String = hmac_sha1(&lst, self.consumer_key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let lifetime_ms = i64::try_from(self.lst_lifetime.as_millis()).unwrap_or(i64::MAX);
        self.lst_expires_ms = now.unix_millis().saturating_add(lifetime_ms);
        self.lst = Some(lst);
        self.tokens_issued += 1;
        respond(
            200,
            &json!({
                "diffie_hellman_response": self.group.public_value(&self.server_secret),
                "live_session_token_signature": signature,
                "live_session_token_expiration": self.lst_expires_ms,
            }),
        )
    }

    fn fresh(&mut self, ts: Option<String>, nonce: Option<String>, now: Now) -> bool {
        let Some(ts) = ts.and_then(|t| t.parse::<u64>().ok()) else {
            return false;
        };
        let Some(nonce) = nonce else {
            return false;
        };
        ts.abs_diff(now.unix_seconds()) <= 300 && self.nonces.insert(nonce)
    }

    /// The URLs (without query) a client may have signed a request for:
    /// - the URL rebuilt from the request's `Host` header (what a client that sends
    ///   its own host computes);
    /// - the address the request actually reached, as `127.0.0.1:<port>` and
    ///   `localhost:<port>` (ibind 0.2.2 signs for its configured base URL but always
    ///   sends `Host: api.ibkr.com`, `oauth1a.generate_oauth_headers`);
    /// - [`public_base_url`](Self::public_base_url) plus the path below `/v1/api` (a
    ///   client that believes it talks to the real host).
    fn urls(&self, req: &http::Request<Vec<u8>>) -> Vec<String> {
        let uri = req.uri();
        let path = uri.path();
        let mut urls = vec![format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            path
        )];
        if let Some(on) = req.extensions().get::<ServedOn>() {
            let scheme = if on.tls { "https" } else { "http" };
            urls.push(format!("{scheme}://{}{path}", on.addr));
            urls.push(format!("{scheme}://localhost:{}{path}", on.addr.port()));
        }
        if let Some(below) = path.strip_prefix(BASE_PATH) {
            urls.push(format!(
                "{}{below}",
                self.public_base_url.trim_end_matches('/')
            ));
        }
        urls.dedup();
        urls
    }

    pub(super) fn verify(
        &mut self,
        req: &http::Request<Vec<u8>>,
        now: Now,
    ) -> Result<(), Box<http::Response<Vec<u8>>>> {
        let deny = || {
            Box::new(respond(
                401,
                &json!({"error": "not authenticated", "statusCode": 401}),
            ))
        };
        let Some(lst) = self.lst.clone() else {
            return Err(deny());
        };
        if now.unix_millis() >= self.lst_expires_ms {
            self.lst = None;
            return Err(deny());
        }
        let Some((_, params)) = parse_header(req) else {
            return Err(deny());
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("oauth_consumer_key").as_deref() != Some(&self.consumer_key)
            || get("oauth_token").as_deref() != Some(&self.access_token)
            || get("oauth_signature_method").as_deref() != Some("HMAC-SHA256")
            || !self.fresh(get("oauth_timestamp"), get("oauth_nonce"), now)
        {
            return Err(deny());
        }
        let Some(sent) = get("oauth_signature").and_then(|s| pct_decode(&s)) else {
            self.bad_signatures += 1;
            return Err(deny());
        };
        let with_query: &[bool] = match self.query_signing {
            QueryAcceptance::Either => &[true, false],
            QueryAcceptance::Included => &[true],
            QueryAcceptance::Omitted => &[false],
        };
        let matches = |url: &str, q: bool| {
            let base = base_string(req, url, &params, q);
            let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&lst) else {
                return false;
            };
            mac.update(base.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes()) == sent
        };
        let urls = self.urls(req);
        if !urls
            .iter()
            .any(|url| with_query.iter().any(|&q| matches(url, q)))
        {
            self.bad_signatures += 1;
            return Err(deny());
        }
        Ok(())
    }
}

/// `METHOD&pct(url)&pct(sorted params)`, independent of the client's code. With
/// `with_query`, the query parameters are decoded, re-encoded and sorted in with the
/// OAuth parameters (RFC 5849 §3.4.1.3).
fn base_string(
    req: &http::Request<Vec<u8>>,
    url: &str,
    params: &[(String, String)],
    with_query: bool,
) -> String {
    let mut all: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "oauth_signature")
        .cloned()
        .collect();
    if with_query {
        for pair in req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| pct_decode(&s.replace('+', " ")).unwrap_or_default();
            all.push((pct(&dec(k)), pct(&dec(v))));
        }
    }
    all.sort();
    let joined: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}&{}&{}",
        req.method().as_str(),
        pct(url),
        pct(&joined.join("&"))
    )
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn parse_header(req: &http::Request<Vec<u8>>) -> Option<(String, Vec<(String, String)>)> {
    let h = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let rest = h.strip_prefix("OAuth ")?;
    let mut realm = String::new();
    let mut params = Vec::new();
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?.to_owned();
        if k == "realm" {
            realm = v;
        } else {
            params.push((k.to_owned(), v));
        }
    }
    Some((realm, params))
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
