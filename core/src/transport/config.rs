//! The transport settings and the rules both transports apply before any IO: which
//! targets may be reached in plain HTTP or without certificate checks, the proxy
//! policy, the exchange budget, the headers a transport adds. Plain values and pure
//! functions; the transports keep only sockets, TLS and clocks.

use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};

use super::Error;
use crate::failure::{FailureKind, TransportFailure};
use crate::machine::MAX_BODY;

/// Which server certificates the transport trusts.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Tls {
    /// Mozilla's root certificates, compiled in (`webpki-roots`). The default: the
    /// same trust on every machine and no dependency on the platform's store.
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

/// Settings of a transport's HTTP client, the same for both transports.
///
/// Start from [`Config::default()`] and change the fields you need:
///
/// ```
/// use std::time::Duration;
/// let mut config = broker_session::transport::Config::default();
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
    /// deadline for it ([`Transmit::deadline`](crate::Transmit::deadline), minus
    /// [`DEADLINE_MARGIN`] or a tenth of what is left, whichever is smaller),
    /// whichever comes first: the machine always hears how an exchange ended while it
    /// still waits for it, never after it gave up. Application requests (a client's
    /// `send`) have this timeout alone.
    ///
    /// When it expires the machine gets a [`FailureKind::Timeout`] failure. Must not
    /// be zero; values above one year count as one year (as does
    /// [`connect_timeout`](Self::connect_timeout)).
    pub request_timeout: Duration,
    /// Largest response body read; a larger one is a [`FailureKind::BodyTooLarge`]
    /// failure. Default: [`MAX_BODY`] (1 MiB).
    pub max_body: usize,
    /// Which certificates to trust. Default: [`Tls::WebPkiRoots`].
    pub tls: Tls,
    /// Allow plain `http://` to hosts that are not loopback addresses. Default:
    /// `false` (plain HTTP only to `localhost`, `127.0.0.0/8` and `::1`): session
    /// credentials must not cross a network unencrypted.
    pub allow_plain_http: bool,
    /// The HTTP proxy every request goes through, as `http://host:port`: `https://`
    /// requests go through an HTTP `CONNECT` tunnel (the blocking transport tunnels
    /// plain `http://` too; the async one sends it to the proxy in absolute form).
    /// Default: `None`, no proxy: the `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` and
    /// `NO_PROXY` environment variables are **not** read, so a proxy is only ever used
    /// when set here. Proxy credentials (`user:password@`) are not supported and
    /// refused.
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
    /// How many undelivered events a session keeps for its subscriber; when full,
    /// the oldest is dropped and counted (`dropped_events`). Default: 256.
    ///
    /// Events are kept only once the application reads them: from the first call
    /// to a client's `subscribe`, `drain_events` or `next_event` on. Before that no
    /// event is kept (or counted as dropped), so a session whose events nobody reads
    /// costs no buffer. Call `subscribe` right after creating the client to see
    /// every event from its start. Results of the operations a call awaits (`login`,
    /// `run` …) arrive whether or not anyone subscribed.
    pub event_capacity: usize,
    /// Most connections open at once to one origin (scheme, host and port), and
    /// most idle connections kept to it. An exchange that finds them all busy waits
    /// in a queue for one to come free, within its one deadline (the earlier of
    /// [`request_timeout`](Self::request_timeout) and, for a session request, the
    /// machine's own deadline less the margin). One that gets no slot in time fails
    /// with [`FailureKind::Connect`] and the detail "no connection slot …": it was
    /// never sent, which is what `Connect` promises, so the machine may resend even a
    /// login.
    ///
    /// Default: 256, so that a whole fleet of sessions sharing one client (100,000
    /// sessions of one broker in one process) keeps at most 256 sockets to the
    /// broker: a refresh wave queues instead of opening a socket per refresh and
    /// running out of file descriptors, while 256 exchanges in flight at once still
    /// serve thousands of refreshes a second. Must not be zero.
    pub max_connections_per_host: usize,
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
            max_connections_per_host: 256,
        }
    }
}

/// How long before a session request's [`Transmit::deadline`] the transport gives up
/// on the exchange (or a tenth of the time left, if less), so that the failure reaches
/// the machine while it still waits for it.
///
/// [`Transmit::deadline`]: crate::Transmit::deadline
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// The longest timeout handed to an HTTP library: longer ones (up to
/// `Duration::MAX`) would overflow their deadline arithmetic.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A [`Config`] checked once, when a transport's HTTP client is built: what every
/// exchange then needs, as values.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Policy {
    /// The `User-Agent` value.
    pub user_agent: HeaderValue,
    /// [`Config::max_body`].
    pub max_body: usize,
    /// [`Config::request_timeout`], at most a year.
    pub request_timeout: Duration,
    /// [`Config::connect_timeout`], at most a year.
    pub connect_timeout: Duration,
    /// The proxy, parsed.
    pub proxy: Option<http::Uri>,
    /// Whether certificate verification is off ([`Tls::InsecureLoopbackOnly`]).
    pub insecure: bool,
    /// [`Config::allow_plain_http`].
    pub allow_plain_http: bool,
    /// Whether loopback targets still count as loopback through the proxy.
    pub loopback_through_proxy: bool,
    /// [`Config::event_capacity`].
    pub event_capacity: usize,
    /// [`Config::max_connections_per_host`], at least one.
    pub max_connections_per_host: usize,
}

impl Config {
    /// Checks the settings a transport's HTTP client is built from (timeouts, user
    /// agent, proxy); the TLS roots are checked by the transport, which parses them.
    ///
    /// ```
    /// use broker_session::transport::{Config, Error};
    /// let mut config = Config::default();
    /// config.proxy = Some("socks5://127.0.0.1:1080".into());
    /// assert!(matches!(config.policy(), Err(Error::Config(_))));
    /// ```
    pub fn policy(&self) -> Result<Policy, Error> {
        let user_agent = HeaderValue::from_str(&self.user_agent)
            .map_err(|_| Error::Config("the user agent is not a valid header value".into()))?;
        let (proxy, loopback_through_proxy) = self.checked_proxy()?;
        Ok(Policy {
            user_agent,
            max_body: self.max_body,
            request_timeout: timeout(self.request_timeout, "request_timeout")?,
            connect_timeout: timeout(self.connect_timeout, "connect_timeout")?,
            proxy,
            insecure: matches!(self.tls, Tls::InsecureLoopbackOnly),
            allow_plain_http: self.allow_plain_http,
            loopback_through_proxy,
            event_capacity: self.event_capacity,
            max_connections_per_host: self.checked_connection_cap()?,
        })
    }

    /// [`max_connections_per_host`](Self::max_connections_per_host), checked: not zero.
    fn checked_connection_cap(&self) -> Result<usize, Error> {
        if self.max_connections_per_host == 0 {
            return Err(Error::Config(
                "Config::max_connections_per_host is zero: no request could ever be sent; \
                 give it at least 1"
                    .into(),
            ));
        }
        Ok(self.max_connections_per_host)
    }

    /// The proxy, checked: an `http://host[:port]` URI without credentials. Returns it
    /// and whether loopback targets still count as loopback through it.
    fn checked_proxy(&self) -> Result<(Option<http::Uri>, bool), Error> {
        let Some(text) = &self.proxy else {
            if self.trust_loopback_proxy {
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
        if self.trust_loopback_proxy && !proxy_on_loopback {
            return Err(Error::Config(
                "Config::trust_loopback_proxy is set but the proxy is not on a loopback address: \
                 only a proxy on this machine can be trusted with loopback traffic"
                    .into(),
            ));
        }
        Ok((Some(uri), self.trust_loopback_proxy && proxy_on_loopback))
    }
}

/// A configured timeout, checked: not zero, at most a year.
fn timeout(value: Duration, name: &str) -> Result<Duration, Error> {
    if value.is_zero() {
        return Err(Error::Config(format!(
            "Config::{name} is zero: every exchange would time out at once; give it a positive duration"
        )));
    }
    Ok(value.min(MAX_TIMEOUT))
}

impl Policy {
    /// Readies `request` for the wire, or says why it must not be sent: refuses what
    /// the configuration forbids ([`refusal`](Self::refusal)) and a session request
    /// whose `deadline` has (nearly) passed, adds `User-Agent` (unless present) and
    /// `Content-Length` (on a body, and on every `POST`, `PUT` and `PATCH`). Returns
    /// how long the exchange may take ([`budget`](Self::budget)).
    ///
    /// # Errors
    /// The [`TransportFailure`] to report instead of sending.
    pub fn prepare(
        &self,
        request: &mut http::Request<Vec<u8>>,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Duration, TransportFailure> {
        if let Some(failure) = self.refusal(request.uri()) {
            return Err(failure);
        }
        self.prepare_allowed(request, now, deadline)
    }

    /// [`prepare`](Self::prepare) for a request whose URI the transport has already
    /// found allowed by [`refusal`](Self::refusal): a transport that keeps the
    /// verdict per origin (it depends on the scheme and host only) skips parsing the
    /// host of every plain-http request.
    ///
    /// ```
    /// use broker_session::transport::Config;
    /// use std::time::{Duration, Instant};
    ///
    /// let policy = Config::default().policy().unwrap();
    /// let mut request = broker_session::http::Request::post("http://127.0.0.1:5000/v1/api/tickle")
    ///     .body(Vec::new())
    ///     .unwrap();
    /// assert!(policy.refusal(request.uri()).is_none(), "loopback: plain http allowed");
    /// let now = Instant::now();
    /// let budget = policy.prepare_allowed(&mut request, now, None).unwrap();
    /// assert_eq!(budget, policy.request_timeout);
    /// assert_eq!(request.headers()["content-length"], "0");
    /// assert!(request.headers().contains_key("user-agent"));
    /// ```
    ///
    /// # Errors
    /// The [`TransportFailure`] to report instead of sending: a session request
    /// whose `deadline` has (nearly) passed.
    pub fn prepare_allowed(
        &self,
        request: &mut http::Request<Vec<u8>>,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Duration, TransportFailure> {
        let budget = self.budget(now, deadline);
        if budget.is_zero() {
            return Err(TransportFailure::new(
                FailureKind::Timeout,
                "timeout: the session's deadline for this request had passed; not sent",
            ));
        }
        let headers = request.headers_mut();
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.user_agent.clone());
        }
        let needs_length = !request.body().is_empty()
            || matches!(
                *request.method(),
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            );
        if needs_length {
            // An empty body (a bare POST, as IBKR's tickle) needs no formatting.
            let len = match request.body().len() {
                0 => HeaderValue::from_static("0"),
                n => HeaderValue::from(n),
            };
            request.headers_mut().insert(CONTENT_LENGTH, len);
        }
        Ok(budget)
    }

    /// How long an exchange may take: the request timeout, and for a session request
    /// no longer than until shortly before the machine's `deadline` for it. Zero: do
    /// not start it.
    pub fn budget(&self, now: Instant, deadline: Option<Instant>) -> Duration {
        let Some(deadline) = deadline else {
            return self.request_timeout;
        };
        let left = deadline.saturating_duration_since(now);
        let margin = DEADLINE_MARGIN.min(left / 10);
        self.request_timeout.min(left.saturating_sub(margin))
    }

    /// Why a request to `uri` is refused before any connection, if it is: plain HTTP
    /// or disabled certificate verification to a host that is not (or, through a
    /// proxy, may not be) this machine, or a URI that is neither http nor https.
    pub fn refusal(&self, uri: &http::Uri) -> Option<TransportFailure> {
        // Verified TLS goes anywhere: no need to look at the host (every request
        // to a broker passes here).
        if !self.insecure && uri.scheme_str() == Some("https") {
            return None;
        }
        let host_is_loopback = is_loopback(uri.host().unwrap_or(""));
        let loopback = host_is_loopback && (self.proxy.is_none() || self.loopback_through_proxy);
        match uri.scheme_str() {
            Some("https") if self.insecure && !loopback => Some(TransportFailure::new(
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
            Some("http") if loopback || self.allow_plain_http => None,
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
}

/// The origin of `uri` as a pool counts it: scheme, host and port (the default
/// port of the scheme when none is written).
///
/// ```
/// use broker_session::transport::origin;
/// let uri = "https://api.example.com/session".parse().unwrap();
/// assert_eq!(origin(&uri), ("https", "api.example.com", 443));
/// ```
pub fn origin(uri: &http::Uri) -> (&str, &str, u16) {
    let scheme = uri.scheme_str().unwrap_or("");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    (scheme, uri.host().unwrap_or(""), port)
}

/// The failure of an exchange that found every connection to `uri`'s origin busy
/// ([`Config::max_connections_per_host`]) until its deadline: never sent, so
/// [`FailureKind::Connect`]. Names the origin only (no path or query).
pub fn no_connection_slot(uri: &http::Uri, cap: usize) -> TransportFailure {
    let (scheme, host, port) = origin(uri);
    TransportFailure::new(
        FailureKind::Connect,
        format!(
            "no connection slot to {scheme}://{host}:{port} within the deadline (all \
             {cap} of Config::max_connections_per_host busy); not sent"
        ),
    )
}

/// Adds to a failure of an exchange with `uri` what to do about it: for a failed
/// connection, where nothing listened; for a certificate the transport does not
/// trust, how to trust a self-signed one. Only the scheme, host and port are quoted
/// (never user info, path or query).
///
/// ```
/// use broker_session::transport::explain;
/// use broker_session::{FailureKind, TransportFailure};
///
/// let uri = "https://localhost:5000/v1/api/tickle".parse().unwrap();
/// let f = explain(TransportFailure::new(FailureKind::Connect, "connection refused"), &uri);
/// assert!(f.detail.contains("nothing listens at https://localhost:5000"), "{f}");
/// ```
pub fn explain(mut failure: TransportFailure, uri: &http::Uri) -> TransportFailure {
    let origin = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.host().unwrap_or("?"),
        uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let detail = failure.detail.to_ascii_lowercase();
    let hint = match failure.kind {
        FailureKind::Connect => format!(
            "nothing listens at {origin} (or its name does not resolve): is the server (the \
             gateway) running, and is the base URL right?"
        ),
        FailureKind::Tls
            if [
                "unknownissuer",
                "unknown issuer",
                "self-signed",
                "self signed",
                "not trusted",
            ]
            .iter()
            .any(|w| detail.contains(w)) =>
        {
            format!(
                "the certificate of {origin} is not trusted: if it is self-signed (as an IBKR \
                 gateway's is), set `Tls::Pem` with it"
            )
        }
        FailureKind::Tls if detail.contains("certificate") => format!(
            "the certificate of {origin} was refused: check that it names this host and has not \
             expired, or trust its issuer with `Tls::Pem`"
        ),
        _ => return failure,
    };
    failure.detail = format!("{}; {hint}", failure.detail);
    failure
}

/// Whether `host` (as written in a URI, IPv6 in brackets) names this machine.
///
/// ```
/// use broker_session::transport::is_loopback;
/// assert!(is_loopback("[::1]") && is_loopback("localhost") && !is_loopback("10.0.0.1"));
/// ```
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant to start from
    fn budget_ends_before_the_deadline() {
        let p = Config::default().policy().unwrap();
        let now = Instant::now();
        assert_eq!(p.budget(now, None), Duration::from_secs(25));
        let d = crate::deadline_after(now, Duration::from_secs(1));
        assert_eq!(p.budget(now, Some(d)), Duration::from_millis(900));
        assert_eq!(p.budget(d, Some(d)), Duration::ZERO);
    }

    #[test]
    fn tls_hint_names_the_fix() {
        let uri: http::Uri = "https://127.0.0.1:5000/x?secret=1".parse().unwrap();
        let f = explain(
            TransportFailure::new(
                FailureKind::Tls,
                "io: invalid peer certificate: UnknownIssuer",
            ),
            &uri,
        );
        assert!(f.detail.contains("Tls::Pem"), "{f}");
        assert!(!f.detail.contains("secret"), "{f}");
    }

    #[test]
    fn connection_cap_must_not_be_zero() {
        let mut c = Config::default();
        assert_eq!(c.policy().unwrap().max_connections_per_host, 256);
        c.max_connections_per_host = 0;
        assert!(matches!(c.policy(), Err(Error::Config(_))));
    }

    #[test]
    fn queue_timeout_names_the_origin_only() {
        let uri: http::Uri = "http://127.0.0.1:5000/x?secret=1".parse().unwrap();
        let f = no_connection_slot(&uri, 2);
        assert_eq!(f.kind, FailureKind::Connect);
        assert!(f.detail.contains("http://127.0.0.1:5000"), "{f}");
        assert!(!f.detail.contains("secret"), "{f}");
    }
}
