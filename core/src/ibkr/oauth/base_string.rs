//! Signature base strings and the `Authorization` header.

use super::percent;

/// `k=v` pairs sorted by key (then value) and joined with `&`. Values are used as
/// given: the OAuth parameters IBKR uses are all unreserved characters, and query
/// parameters come from [`query_params`] already encoded.
///
/// ```
/// use broker_session::ibkr::oauth::base_string::param_string;
/// let p = vec![("b".to_owned(), "2".to_owned()), ("a".to_owned(), "1".to_owned())];
/// assert_eq!(param_string(&p), "a=1&b=2");
/// ```
pub fn param_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut out = String::new();
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The OAuth 1.0a signature base string:
/// `prepend ‖ METHOD ‖ "&" ‖ pct(url) ‖ "&" ‖ pct(param_string)`.
///
/// `prepend` is the lowercase hex of the decrypted access token secret for the live
/// session token request (RSA-SHA256) and empty for every HMAC-SHA256 request. `url`
/// is scheme, host and path, without the query.
pub fn base_string(prepend: &str, method: &str, url: &str, params: &[(String, String)]) -> String {
    let mut out = String::with_capacity(prepend.len() + url.len() * 2 + 256);
    out.push_str(prepend);
    out.push_str(&method.to_ascii_uppercase());
    out.push('&');
    out.push_str(&percent::encode(url));
    out.push('&');
    out.push_str(&percent::encode(&param_string(params)));
    out
}

/// The `Authorization` header value: `OAuth realm="…", ` then every parameter
/// (including `oauth_signature`, already percent-encoded) sorted by key as
/// `key="value"`, joined with `, `.
pub fn authorization_header(realm: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut out = format!("OAuth realm=\"{realm}\"");
    for (k, v) in sorted {
        out.push_str(", ");
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(v);
        out.push('"');
    }
    out
}

/// Query parameters as they enter a signature (RFC 5849 §3.4.1.3): each name and
/// value percent-decoded (`+` as space), then re-encoded with [`percent::encode`].
/// `None` if an escape is malformed or a decoded part is not UTF-8. A parameter
/// without `=` has an empty value.
///
/// ```
/// use broker_session::ibkr::oauth::base_string::query_params;
/// let q = query_params("conid=265598&period=1d&x=a%2Fb+c").unwrap();
/// assert_eq!(q[2], ("x".to_owned(), "a%2Fb%20c".to_owned()));
/// ```
pub fn query_params(query: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8(percent::decode(k, true)?).ok()?;
        let v = String::from_utf8(percent::decode(v, true)?).ok()?;
        out.push((percent::encode(&k), percent::encode(&v)));
    }
    Some(out)
}

/// Parses an OAuth `Authorization` header back into `realm` and parameters (values
/// as they appear, not decoded). For servers and tests; `None` if it is not an
/// `OAuth` header of `key="value"` pairs.
pub fn parse_authorization_header(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = header.strip_prefix("OAuth ")?;
    let mut realm = None;
    let mut params = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        if k == "realm" {
            realm = Some(v.to_owned());
        } else {
            params.push((k.to_owned(), v.to_owned()));
        }
    }
    Some((realm?, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let p = vec![
            ("oauth_token".to_owned(), "t".to_owned()),
            ("oauth_signature".to_owned(), "a%2Fb".to_owned()),
            (
                "oauth_signature_method".to_owned(),
                "HMAC-SHA256".to_owned(),
            ),
        ];
        let h = authorization_header("limited_poa", &p);
        assert_eq!(
            h,
            "OAuth realm=\"limited_poa\", oauth_signature=\"a%2Fb\", oauth_signature_method=\"HMAC-SHA256\", oauth_token=\"t\""
        );
        let (realm, back) = parse_authorization_header(&h).unwrap();
        assert_eq!(realm, "limited_poa");
        assert_eq!(back.len(), 3);
    }
}
