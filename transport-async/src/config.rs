//! Transport settings, each with its default next to it.

use std::time::Duration;

use broker_session::{FailureKind, MAX_BODY, TransportFailure};

use crate::error::Error;

/// Which server certificates the transport trusts.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Tls {
    /// Mozilla's root certificates, compiled in (`webpki-roots`). The default: the
    /// same trust on every machine, no dependency on the platform's store, and no extra
    /// crates (the same list hyper-rustls would use).
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
/// let mut config = broker_session_hyper::Config::default();
/// config.request_timeout = Duration::from_secs(10);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The `User-Agent` sent on every request (unless the request has its own).
    /// Default: `broker-session/<crate version>`.
    pub user_agent: String,
    /// Longest time to resolve and connect (including the TLS handshake and, through a
    /// proxy, the tunnel). Default: 10 s. Connecting is also part of the exchange, so
    /// [`request_timeout`](Self::request_timeout) bounds it too.
    pub connect_timeout: Duration,
    /// Longest time for a whole exchange: connect, send the request, and read the
    /// full response. Default: 25 s, below the session machines' default request
    /// deadlines (IG `request_deadline` and IBKR `request_timeout`, both 30 s).
    ///
    /// For a session request the exchange also ends shortly before the machine's own
    /// deadline for it ([`Transmit::deadline`](broker_session::Transmit::deadline),
    /// minus [`DEADLINE_MARGIN`](crate::DEADLINE_MARGIN) or a tenth of what is left,
    /// whichever is smaller), whichever comes first: the machine always hears how an
    /// exchange ended while it still waits for it, never after it gave up. Application
    /// requests ([`Session::send`](crate::Session::send)) have this timeout alone.
    ///
    /// When it expires the machine gets a
    /// [`FailureKind::Timeout`](broker_session::FailureKind::Timeout) failure. Must
    /// not be zero; values above one year count as one year (as does
    /// [`connect_timeout`](Self::connect_timeout)).
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
    /// The HTTP proxy every request goes through, as `http://host:port`: `https://`
    /// requests go through an HTTP `CONNECT` tunnel, plain `http://` requests are sent
    /// to the proxy in absolute form. Default: `None`, no
    /// proxy: the `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` environment
    /// variables are **not** read, so a proxy is only ever used when set here. Proxy
    /// credentials (`user:password@`) are not supported and refused.
    ///
    /// Through a proxy, no target counts as a loopback host: plain `http://` needs
    /// [`allow_plain_http`](Self::allow_plain_http) and
    /// [`Tls::InsecureLoopbackOnly`] is refused, because the proxy, not the URL,
    /// decides where the connection goes. See
    /// [`trust_loopback_proxy`](Self::trust_loopback_proxy) for the one exception.
    pub proxy: Option<String>,
    /// With a [`proxy`](Self::proxy) that is itself on a loopback address, treat
    /// loopback targets (`localhost`, `127.0.0.0/8`, `::1`) as loopback again: plain
    /// `http://` and [`Tls::InsecureLoopbackOnly`] are then allowed to them through
    /// the proxy. Only for a proxy you run on this machine and trust (a debugging
    /// proxy): it sees and could redirect everything. Default: `false`. Refused
    /// (a configuration error) when the proxy is not on a loopback address.
    pub trust_loopback_proxy: bool,
    /// How many undelivered events a session keeps; when full, the oldest is
    /// dropped and counted. Default: 256.
    pub event_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            user_agent: concat!("broker-session/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(25),
            max_body: MAX_BODY,
            tls: Tls::WebPkiRoots,
            allow_plain_http: false,
            proxy: None,
            trust_loopback_proxy: false,
            event_capacity: 256,
        }
    }
}

/// The longest timeout handed to the HTTP library: longer ones (up to
/// `Duration::MAX`) would overflow its deadline arithmetic.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A configured timeout, checked: not zero, at most a year.
pub(crate) fn timeout(value: Duration, name: &str) -> Result<Duration, Error> {
    if value.is_zero() {
        return Err(Error::Config(format!(
            "Config::{name} is zero: every exchange would time out at once; give it a positive duration"
        )));
    }
    Ok(value.min(MAX_TIMEOUT))
}

/// The proxy of `config`, checked: an `http://host[:port]` URI without credentials.
/// Returns it and whether loopback targets still count as loopback through it.
pub(crate) fn proxy(config: &Config) -> Result<(Option<http::Uri>, bool), Error> {
    let Some(text) = &config.proxy else {
        if config.trust_loopback_proxy {
            return Err(Error::Config(
                "Config::trust_loopback_proxy is set but Config::proxy is not: set both or neither"
                    .into(),
            ));
        }
        return Ok((None, true));
    };
    let bad = |why: &str| Error::Config(format!("Config::proxy {why}"));
    let uri: http::Uri = text
        .parse()
        .map_err(|_| bad("is not a URI: write it as http://host:port"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("has no host: write it as http://host:port"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "holds credentials, which are not supported: use a proxy that needs none",
        ));
    }
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "must start with http:// (a plain HTTP proxy that opens CONNECT tunnels)",
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must have no path: write it as http://host:port"));
    }
    let proxy_on_loopback = is_loopback(authority.host());
    if config.trust_loopback_proxy && !proxy_on_loopback {
        return Err(Error::Config(
            "Config::trust_loopback_proxy is set but the proxy is not on a loopback address: \
             only a proxy on this machine can be trusted with loopback traffic"
                .into(),
        ));
    }
    Ok((Some(uri), config.trust_loopback_proxy && proxy_on_loopback))
}

/// Why a request is refused before any connection, if it is: plain HTTP or disabled
/// certificate verification to a host that is not (or, through a proxy, may not be)
/// this machine, or a URI that is neither http nor https.
pub(crate) fn refusal(
    uri: &http::Uri,
    insecure: bool,
    allow_plain_http: bool,
    proxied: bool,
    loopback_through_proxy: bool,
) -> Option<TransportFailure> {
    let host_is_loopback = is_loopback(uri.host().unwrap_or(""));
    let loopback = host_is_loopback && (!proxied || loopback_through_proxy);
    match uri.scheme_str() {
        Some("https") if insecure && !loopback => Some(TransportFailure::new(
            FailureKind::Tls,
            if host_is_loopback {
                "certificate verification is disabled, which is allowed for loopback hosts only, \
                 and through a proxy no host counts as loopback (the proxy decides where the \
                 connection goes; set Config::trust_loopback_proxy for a proxy on this machine): \
                 request refused"
            } else {
                "certificate verification is disabled, which is allowed for loopback hosts only: request refused"
            },
        )),
        Some("https") => None,
        Some("http") if loopback || allow_plain_http => None,
        Some("http") if host_is_loopback => Some(TransportFailure::new(
            FailureKind::Other,
            "plain http through a proxy is refused: the proxy decides where it goes, so the \
             host does not count as loopback (set Config::trust_loopback_proxy for a proxy on \
             this machine, or Config::allow_plain_http)",
        )),
        Some("http") => Some(TransportFailure::new(
            FailureKind::Other,
            "plain http to a non-loopback host is refused (set Config::allow_plain_http to allow it)",
        )),
        _ => Some(TransportFailure::new(
            FailureKind::Other,
            "the request URI has no http or https scheme",
        )),
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
