//! Transport settings, each with its default next to it.

use std::time::Duration;

use broker_session::MAX_BODY;

/// Which server certificates the transport trusts.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Tls {
    /// Mozilla's root certificates, compiled in (`webpki-roots`). The default: the
    /// same trust on every machine, no dependency on the platform's store, and no extra
    /// crates (ureq's rustls support already carries them).
    #[default]
    WebPkiRoots,
    /// Trust only the certificates in this PEM text: a private CA, or the self-signed
    /// leaf certificate of an IBKR Client Portal Gateway (with `CA:FALSE` and the
    /// gateway's host name in its subject alternative names).
    Pem(Vec<u8>),
    /// No certificate verification at all. Refused for every host that is not a
    /// loopback address (`localhost`, `127.0.0.0/8`, `::1`): the connection is still
    /// encrypted but anyone on the path could read the session's credentials.
    InsecureLoopbackOnly,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WebPkiRoots => f.write_str("WebPkiRoots"),
            Self::Pem(p) => write!(f, "Pem({} bytes)", p.len()),
            Self::InsecureLoopbackOnly => f.write_str("InsecureLoopbackOnly"),
        }
    }
}

/// Settings of an [`HttpClient`](crate::HttpClient).
///
/// Start from [`Config::default()`] and change the fields you need:
///
/// ```
/// use std::time::Duration;
/// let mut config = broker_session_ureq::Config::default();
/// config.request_timeout = Duration::from_secs(10);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The `User-Agent` sent on every request (unless the request has its own).
    /// Default: `broker-session/<crate version>`.
    pub user_agent: String,
    /// Longest time to resolve and connect (including the TLS handshake).
    /// Default: 10 s.
    pub connect_timeout: Duration,
    /// Longest time for each phase of an exchange: sending the request head,
    /// sending the body, waiting for the response head, reading the response body
    /// (connecting has [`connect_timeout`](Self::connect_timeout)). Default: 30 s.
    /// When it expires the machine gets a
    /// [`FailureKind::Timeout`](broker_session::FailureKind::Timeout) failure. (The
    /// session machines also give up on a request after their own deadline.)
    pub request_timeout: Duration,
    /// Largest response body read; a larger one is a
    /// [`FailureKind::BodyTooLarge`](broker_session::FailureKind::BodyTooLarge)
    /// failure. Default: [`MAX_BODY`] (1 MiB).
    pub max_body: usize,
    /// Which certificates to trust. Default: [`Tls::WebPkiRoots`].
    pub tls: Tls,
    /// Allow plain `http://` to hosts that are not loopback addresses. Default:
    /// `false` (plain HTTP only to `localhost`, `127.0.0.0/8` and `::1`): session
    /// credentials must not cross a network unencrypted.
    pub allow_plain_http: bool,
    /// How many undelivered events a session keeps; when full, the oldest is
    /// dropped and counted. Default: 256.
    pub event_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            user_agent: concat!("broker-session/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body: MAX_BODY,
            tls: Tls::WebPkiRoots,
            allow_plain_http: false,
            event_capacity: 256,
        }
    }
}

/// Whether `host` (as written in a URI, IPv6 in brackets) names this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1",
            "localhost.example.com",
            "[::2]",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
