//! Request builders for the session endpoints, and the OAuth 1.0a signer that stamps
//! them (and the user's requests).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::Rng;
use rsa::PrivateKey;
use zeroize::Zeroizing;

use super::config::{OAuthConfig, QuerySigning};
use super::endpoint::Endpoint;
use super::oauth::base_string::{authorization_header, base_string, query_params};
use super::oauth::dh::{DhGroup, DhSecret};
use super::oauth::sign::{
    decrypt_access_token_secret, hmac_sha256_signature, parse_private_key, rsa_sha256_signature,
};
use super::oauth::{hex_encode, percent};
use crate::error::{CryptoError, Error, UsageError};
use crate::rng::SessionRng;
use crate::secret::{AccessToken, LiveSessionToken, SecretBytes, sensitive_header};
use crate::time::Now;
use crate::uris::EndpointUris;

/// Every session endpoint, in the order of [`Base`]'s URIs (see `uri_index`).
const ENDPOINTS: [Endpoint; 8] = [
    Endpoint::LiveSessionToken,
    Endpoint::Status,
    Endpoint::SsodhInit,
    Endpoint::Tickle,
    Endpoint::Reauthenticate(super::config::ReauthenticateMethod::Post),
    Endpoint::Validate,
    Endpoint::Logout,
    Endpoint::Accounts,
];

/// Where `endpoint`'s URI is in [`ENDPOINTS`].
fn uri_index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::LiveSessionToken => 0,
        Endpoint::Status => 1,
        Endpoint::SsodhInit => 2,
        Endpoint::Tickle => 3,
        Endpoint::Reauthenticate(_) => 4,
        Endpoint::Validate => 5,
        Endpoint::Logout => 6,
        Endpoint::Accounts => 7,
    }
}

/// The session's base URL, split so requests can be built and checked against it.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// `https://host:port/v1/api` without a trailing slash.
    pub(crate) url: String,
    scheme: String,
    host: String,
    port: u16,
    /// Every endpoint's URI, parsed once.
    uris: EndpointUris<8>,
}

impl Base {
    pub(crate) fn parse(url: &str) -> Result<Self, UsageError> {
        const BAD: UsageError = UsageError::InvalidArgument {
            what: "base_url",
            reason: "must be an absolute http(s) URL without query, e.g. https://localhost:5000/v1/api",
        };
        let url = Self::trimmed(url);
        let uri: http::Uri = url.parse().map_err(|_| BAD)?;
        let scheme = uri.scheme_str().ok_or(BAD)?.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(BAD);
        }
        if uri.query().is_some() {
            return Err(BAD);
        }
        let host = uri.host().ok_or(BAD)?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let uris = EndpointUris::new(
            uri.scheme().ok_or(BAD)?.clone(),
            uri.authority().ok_or(BAD)?.clone(),
            uri.path().trim_end_matches('/'),
            ENDPOINTS.map(Endpoint::path),
            // The keep-alive.
            uri_index(Endpoint::Tickle),
        )
        .ok_or(BAD)?;
        Ok(Self {
            url: url.to_owned(),
            scheme,
            host,
            port,
            uris,
        })
    }

    /// The text of a base URL [`parse`](Self::parse) reads and keeps as `url`: without
    /// surrounding white space or trailing slashes.
    pub(crate) fn trimmed(url: &str) -> &str {
        url.trim().trim_end_matches('/')
    }

    /// Whether `uri` goes to this base's scheme, host and port.
    ///
    /// A URI with userinfo (`https://user@api.ibkr.com/…`) is never same-origin:
    /// nothing legitimate sends IBKR userinfo, a transport may turn it into its own
    /// `Authorization` header (clashing with the OAuth one), and `user@host` is the
    /// classic disguise of a host (`https://api.ibkr.com@evil.example/`). Credentials
    /// are stamped only on plain `scheme://host[:port]` authorities.
    pub(crate) fn same_origin(&self, uri: &http::Uri) -> bool {
        let Some(scheme) = uri.scheme_str() else {
            return false;
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return false;
        }
        let scheme = scheme.to_ascii_lowercase();
        let default_port = if scheme == "https" { 443 } else { 80 };
        scheme == self.scheme
            && uri
                .host()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && uri.port_u16().unwrap_or(default_port) == self.port
    }
}

/// Headers a session request may carry: `Accept`, `Content-Type`, `Content-Length`
/// and the OAuth `Authorization`.
const SESSION_HEADERS: usize = 4;

/// A session request to `endpoint` (its method and path): `Accept`, JSON
/// `Content-Type` when there is a body, and `Content-Length` on every POST (IBKR's CDN
/// answers 411 without it). The URI comes parsed from `base`, the header values are
/// static but for a non-empty body's length.
pub(crate) fn request(
    base: &Base,
    endpoint: Endpoint,
    body: Option<Vec<u8>>,
) -> Result<http::Request<Vec<u8>>, Error> {
    const JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");
    let uri =
        base.uris
            .get(uri_index(endpoint))
            .ok_or(Error::Usage(UsageError::InvalidArgument {
                what: "base_url",
                reason: "does not form a valid request URI",
            }))?;
    let method = endpoint.method();
    let mut headers = http::HeaderMap::with_capacity(SESSION_HEADERS);
    headers.insert(http::header::ACCEPT, JSON);
    let body = match body {
        Some(body) => {
            headers.insert(http::header::CONTENT_TYPE, JSON);
            body
        }
        None => Vec::new(),
    };
    if method == http::Method::POST {
        let length = if body.is_empty() {
            http::HeaderValue::from_static("0")
        } else {
            http::HeaderValue::from(body.len())
        };
        headers.insert(http::header::CONTENT_LENGTH, length);
    }
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The body of [`Endpoint::SsodhInit`]: `{"publish":true,"compete":<compete>}`. IBKR
/// answers 500 when `publish` is false.
pub fn ssodh_init_body(compete: bool) -> Vec<u8> {
    format!("{{\"publish\":true,\"compete\":{compete}}}").into_bytes()
}

/// Everything needed to sign: keys parsed, the prepend decrypted, the DH group ready.
pub(crate) struct Signer {
    consumer_key: String,
    access_token: AccessToken,
    realm: String,
    query_signing: QuerySigning,
    signature_key: PrivateKey,
    group: DhGroup,
    prepend: SecretBytes,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("consumer_key", &self.consumer_key)
            .field("realm", &self.realm)
            .field("query_signing", &self.query_signing)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub(crate) fn new(c: &OAuthConfig, rng: &mut SessionRng) -> Result<Self, CryptoError> {
        let encryption_key = parse_private_key(
            c.encryption_key.expose_secret(),
            "IBKR private encryption key",
        )?;
        let signature_key = parse_private_key(
            c.signature_key.expose_secret(),
            "IBKR private signature key",
        )?;
        let group = DhGroup::new(&c.dh_prime, c.dh_generator)?;
        let prepend = decrypt_access_token_secret(
            &encryption_key,
            rng,
            c.access_token_secret.expose_secret(),
        )?;
        Ok(Self {
            consumer_key: c.consumer_key.clone(),
            access_token: c.access_token.clone(),
            realm: c.realm.clone(),
            query_signing: c.query_signing,
            signature_key,
            group,
            prepend,
        })
    }

    pub(crate) fn consumer_key(&self) -> &str {
        &self.consumer_key
    }

    pub(crate) fn group(&self) -> &DhGroup {
        &self.group
    }

    pub(crate) fn prepend(&self) -> &[u8] {
        self.prepend.expose_secret()
    }

    fn common_params(&self, rng: &mut SessionRng, method: &str, now: Now) -> Vec<(String, String)> {
        vec![
            ("oauth_consumer_key".to_owned(), self.consumer_key.clone()),
            ("oauth_nonce".to_owned(), nonce(rng)),
            ("oauth_signature_method".to_owned(), method.to_owned()),
            ("oauth_timestamp".to_owned(), now.unix_seconds().to_string()),
            (
                "oauth_token".to_owned(),
                self.access_token.expose_secret().to_owned(),
            ),
        ]
    }

    /// The `POST /oauth/live_session_token` request with a fresh DH secret.
    pub(crate) fn lst_request(
        &self,
        base: &Base,
        rng: &mut SessionRng,
        now: Now,
    ) -> Result<(http::Request<Vec<u8>>, DhSecret), Error> {
        let secret = DhSecret::random(rng);
        let challenge = self.group.challenge(&secret);
        let endpoint = Endpoint::LiveSessionToken;
        let url = format!("{}{}", base.url, endpoint.path());
        let mut params = self.common_params(rng, "RSA-SHA256", now);
        params.push(("diffie_hellman_challenge".to_owned(), challenge));
        let prepend_hex = Zeroizing::new(hex_encode(self.prepend.expose_secret()));
        let base_str = Zeroizing::new(base_string(&prepend_hex, "POST", &url, &params));
        let sig = rsa_sha256_signature(&self.signature_key, rng, &base_str)?;
        params.push(("oauth_signature".to_owned(), percent::encode(&sig)));
        let header = authorization_header(&self.realm, &params);
        let mut req = request(base, endpoint, None)?;
        set_authorization(&mut req, &header)?;
        Ok((req, secret))
    }

    /// Stamps the HMAC-SHA256 `Authorization` header onto any request.
    ///
    /// This runs for every signed request, so it borrows the parameters and builds the
    /// base string and the header each in one buffer: a handful of allocations rather
    /// than one per parameter.
    pub(crate) fn sign<B>(
        &self,
        req: &mut http::Request<B>,
        lst: &LiveSessionToken,
        rng: &mut SessionRng,
        now: Now,
    ) -> Result<(), Error> {
        let nonce = nonce_bytes(rng);
        let mut ts_buf = [0u8; 20];
        let oauth: [(&str, &str); 5] = [
            ("oauth_consumer_key", &self.consumer_key),
            ("oauth_nonce", ascii(&nonce)),
            ("oauth_signature_method", "HMAC-SHA256"),
            ("oauth_timestamp", decimal(now.unix_seconds(), &mut ts_buf)),
            ("oauth_token", self.access_token.expose_secret()),
        ];
        let uri = req.uri();
        let query = match (self.query_signing, uri.query()) {
            (QuerySigning::Include, Some(q)) => Some(query_params(q).ok_or(Error::Usage(
                UsageError::InvalidArgument {
                    what: "request URI",
                    reason: "query string has a malformed percent escape or is not UTF-8",
                },
            ))?),
            _ => None,
        };
        let mut signed: Vec<(&str, &str)> =
            Vec::with_capacity(oauth.len() + query.as_ref().map_or(0, Vec::len));
        signed.extend_from_slice(&oauth);
        if let Some(q) = &query {
            signed.extend(q.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        // Same order as sorting the owned pairs: by key, then value.
        signed.sort_unstable();
        let mut base_str = String::with_capacity(512);
        for c in req.method().as_str().chars() {
            base_str.push(c.to_ascii_uppercase());
        }
        base_str.push('&');
        push_encoded_url(&mut base_str, uri);
        base_str.push('&');
        // Percent-encoding is byte by byte, so encoding `k=v&k=v` is encoding each
        // piece and writing `=` as `%3D` and `&` as `%26`.
        for (i, (k, v)) in signed.iter().enumerate() {
            if i > 0 {
                base_str.push_str("%26");
            }
            percent::encode_into(&mut base_str, k.as_bytes());
            base_str.push_str("%3D");
            percent::encode_into(&mut base_str, v.as_bytes());
        }
        let bad_lst = || {
            Error::Crypto(CryptoError::InvalidKey {
                which: "IBKR live session token",
            })
        };
        // The token is 20 bytes (HMAC-SHA1); decode it on the stack when it fits.
        let mut key_buf = Zeroizing::new([0u8; 64]);
        let sig = match STANDARD.decode_slice(lst.expose_secret(), &mut key_buf[..]) {
            Ok(n) => hmac_sha256_signature(&key_buf[..n], &base_str),
            Err(_) => {
                let key = Zeroizing::new(
                    STANDARD
                        .decode(lst.expose_secret())
                        .map_err(|_| bad_lst())?,
                );
                hmac_sha256_signature(&key, &base_str)
            }
        };
        let sig = percent::encode(&sig);
        let mut header_params: [(&str, &str); 6] = [
            oauth[0],
            oauth[1],
            oauth[2],
            oauth[3],
            oauth[4],
            ("oauth_signature", &sig),
        ];
        header_params.sort_unstable();
        let mut header = String::with_capacity(64 + self.realm.len() + base_str.len() / 2);
        header.push_str("OAuth realm=\"");
        header.push_str(&self.realm);
        header.push('"');
        for (k, v) in header_params {
            header.push_str(", ");
            header.push_str(k);
            header.push_str("=\"");
            header.push_str(v);
            header.push('"');
        }
        // Moves the string into the header value (no copy).
        let mut value =
            http::HeaderValue::try_from(header).map_err(|_| Error::Crypto(CryptoError::Sign))?;
        value.set_sensitive(true);
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}

fn set_authorization<B>(req: &mut http::Request<B>, header: &str) -> Result<(), Error> {
    let v = sensitive_header(header).ok_or(Error::Crypto(CryptoError::Sign))?;
    req.headers_mut().insert(http::header::AUTHORIZATION, v);
    Ok(())
}

/// `scheme://authority/path` as it enters the base string: scheme and host lowercase,
/// default ports dropped, no query. The signer writes it encoded with
/// [`push_encoded_url`]; this plain form pins that down in tests.
#[cfg(test)]
fn url_without_query(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let port = match (uri.port_u16(), scheme.as_str()) {
        (None, _) | (Some(443), "https") | (Some(80), "http") => String::new(),
        (Some(p), _) => format!(":{p}"),
    };
    format!("{scheme}://{host}{port}{}", uri.path())
}

/// `scheme://host[:port]/path` percent-encoded into `out`, as `url_without_query`
/// renders it.
fn push_encoded_url(out: &mut String, uri: &http::Uri) {
    let scheme = uri.scheme_str().unwrap_or("https");
    for b in scheme.bytes() {
        percent::encode_into(out, &[b.to_ascii_lowercase()]);
    }
    out.push_str("%3A%2F%2F");
    for b in uri.host().unwrap_or_default().bytes() {
        percent::encode_into(out, &[b.to_ascii_lowercase()]);
    }
    let default_port = match uri.port_u16() {
        None => true,
        Some(443) => scheme.eq_ignore_ascii_case("https"),
        Some(80) => scheme.eq_ignore_ascii_case("http"),
        Some(_) => false,
    };
    if let (false, Some(p)) = (default_port, uri.port_u16()) {
        let mut buf = [0u8; 20];
        out.push_str("%3A");
        out.push_str(decimal(u64::from(p), &mut buf));
    }
    percent::encode_into(out, uri.path().as_bytes());
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is a single digit.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ascii(&buf[i..])
}

/// ASCII bytes as text (the callers only produce ASCII).
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// 16 characters from `[A-Za-z0-9]`, as ibind draws them, on the stack.
fn nonce_bytes(rng: &mut SessionRng) -> [u8; 16] {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = [0u8; 16];
    let mut n = 0;
    while n < out.len() {
        // Rejection sampling keeps the distribution uniform (248 = 4 * 62).
        let b = (rng.next_u32() & 0xff) as u8;
        if b < 248 {
            out[n] = ALPHABET[usize::from(b % 62)];
            n += 1;
        }
    }
    out
}

/// 16 characters from `[A-Za-z0-9]`, as ibind draws them.
fn nonce(rng: &mut SessionRng) -> String {
    ascii(&nonce_bytes(rng)).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_url_matches_the_plain_form() {
        for u in [
            "https://api.ibkr.com/v1/api/iserver/accounts?x=1",
            "HTTPS://API.IBKR.com:443/v1/api/tickle",
            "http://127.0.0.1:80/v1/api/tickle",
            "http://127.0.0.1:5000/v1/api/sso/validate",
            "https://localhost:5000/v1/api/a%20b/c~d",
        ] {
            let uri: http::Uri = u.parse().unwrap();
            let mut out = String::new();
            push_encoded_url(&mut out, &uri);
            assert_eq!(out, percent::encode(&url_without_query(&uri)), "{u}");
        }
    }

    #[test]
    fn base_origin_checks() {
        let b = Base::parse("https://localhost:5000/v1/api/").unwrap();
        assert_eq!(b.url, "https://localhost:5000/v1/api");
        assert!(b.same_origin(&"https://LOCALHOST:5000/v1/api/x".parse().unwrap()));
        assert!(!b.same_origin(&"https://localhost:5001/v1/api/x".parse().unwrap()));
        assert!(!b.same_origin(&"http://localhost:5000/v1/api/x".parse().unwrap()));
        assert!(!b.same_origin(&"https://evil.example/v1/api/x".parse().unwrap()));
        assert!(!b.same_origin(&"/v1/api/x".parse().unwrap()));
        let d = Base::parse("https://api.ibkr.com/v1/api").unwrap();
        assert!(d.same_origin(&"https://api.ibkr.com:443/v1/api/x".parse().unwrap()));
        // Userinfo, even on the right host, is refused.
        for u in [
            "https://user@api.ibkr.com/v1/api/x",
            "https://user:pw@api.ibkr.com:443/v1/api/x",
            "https://evil.example@api.ibkr.com/v1/api/x",
            "https://@api.ibkr.com/v1/api/x",
            "https://api.ibkr.com@evil.example/v1/api/x",
        ] {
            let uri: http::Uri = u.parse().unwrap();
            assert!(!d.same_origin(&uri), "{u}");
        }
        assert!(Base::parse("ftp://x/y").is_err());
        assert!(Base::parse("not a url").is_err());
    }

    #[test]
    fn url_normalisation() {
        assert_eq!(
            url_without_query(&"HTTPS://API.ibkr.com:443/v1/api/x?a=1".parse().unwrap()),
            "https://api.ibkr.com/v1/api/x"
        );
        assert_eq!(
            url_without_query(&"https://localhost:5000/v1/api".parse().unwrap()),
            "https://localhost:5000/v1/api"
        );
    }

    #[test]
    fn post_requests_carry_content_length() {
        let b = Base::parse("https://localhost:5000/v1/api").unwrap();
        let r = request(&b, Endpoint::Tickle, None).unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(r.uri(), "https://localhost:5000/v1/api/tickle");
        assert_eq!(r.headers()["content-length"], "0");
        let r = request(&b, Endpoint::SsodhInit, Some(ssodh_init_body(true))).unwrap();
        assert_eq!(r.body(), br#"{"publish":true,"compete":true}"#);
        assert_eq!(r.headers()["content-length"], "31");
    }

    /// Every endpoint's URI, as `{base}{path}` spells it, whatever the base's path.
    #[test]
    fn every_endpoint_gets_the_base_url_and_its_path() {
        use crate::ibkr::ReauthenticateMethod;
        for base in [
            "https://localhost:5000/v1/api",
            "https://api.ibkr.com/v1/api/",
            "http://127.0.0.1:8080",
        ] {
            let b = Base::parse(base).unwrap();
            let mut all = ENDPOINTS.to_vec();
            all.push(Endpoint::Reauthenticate(ReauthenticateMethod::Get));
            for e in all {
                let r = request(&b, e, None).unwrap();
                let want = format!("{}{}", base.trim_end_matches('/'), e.path());
                assert_eq!(r.uri().to_string(), want, "{e:?}");
                assert_eq!(r.method(), e.method());
                assert_eq!(r.headers()["accept"], "application/json");
                assert!(r.headers().get("content-type").is_none());
            }
        }
    }
}
