//! The HTTP side: a configured `ureq` agent that executes requests exactly as the
//! machine built them, and maps every failure to a [`TransportFailure`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_session::{FailureKind, TransportFailure};
use http::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};

use crate::config::{self, Config, Tls};
use crate::error::Error;
use crate::resolve::CachingResolver;

/// A configured HTTP client: connection pool, TLS trust, timeouts, limits.
///
/// Cheap to clone; clones share one connection pool, so one `HttpClient` can serve
/// many sessions.
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    settings: Arc<Settings>,
}

/// How long before a session request's [`Transmit::deadline`] the transport gives up
/// on the exchange (or a tenth of the time left, if less), so that the failure reaches
/// the machine while it still waits for it.
///
/// [`Transmit::deadline`]: broker_session::Transmit::deadline
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

struct Settings {
    user_agent: HeaderValue,
    max_body: usize,
    request_timeout: Duration,
    insecure: bool,
    allow_plain_http: bool,
    proxied: bool,
    loopback_through_proxy: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("user_agent", &self.settings.user_agent)
            .field("max_body", &self.settings.max_body)
            .field("insecure", &self.settings.insecure)
            .field("proxied", &self.settings.proxied)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds a client from `config`. Fails if the PEM text of
    /// [`Tls::Pem`] holds no parseable certificate, the user agent is not a valid
    /// header value, a timeout is zero, or the proxy settings are unusable.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::Config("the user agent is not a valid header value".into()))?;
        let request_timeout = config::timeout(config.request_timeout, "request_timeout")?;
        let connect_timeout = config::timeout(config.connect_timeout, "connect_timeout")?;
        let (proxy_uri, loopback_through_proxy) = config::proxy(config)?;
        // Never `Proxy::try_from_env`: a proxy is used only when configured.
        let proxy = match &proxy_uri {
            Some(uri) => Some(
                ureq::Proxy::new(&uri.to_string())
                    .map_err(|_| Error::Config("Config::proxy is not a usable proxy URI".into()))?,
            ),
            None => None,
        };
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        let mut insecure = false;
        match &config.tls {
            Tls::WebPkiRoots => tls = tls.root_certs(ureq::tls::RootCerts::WebPki),
            Tls::Pem(pem) => tls = tls.root_certs(parse_pem(pem)?),
            Tls::InsecureLoopbackOnly => {
                insecure = true;
                tls = tls.disable_verification(true);
            }
        }
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(config.user_agent.as_str())
            .accept_encoding("")
            .proxy(proxy)
            // One budget for the whole exchange (connect, send, response head and
            // body). Cheap only with the caching resolver: see `resolve.rs` and
            // `benches/exchange_deadline.rs`.
            .timeout_per_call(Some(request_timeout))
            .timeout_connect(Some(connect_timeout))
            .tls_config(tls.build())
            .build();
        let agent = ureq::Agent::with_parts(
            agent_config,
            ureq::unversioned::transport::DefaultConnector::new(),
            CachingResolver::default(),
        );
        Ok(Self {
            agent,
            settings: Arc::new(Settings {
                user_agent,
                max_body: config.max_body,
                request_timeout,
                insecure,
                allow_plain_http: config.allow_plain_http,
                proxied: proxy_uri.is_some(),
                loopback_through_proxy,
            }),
        })
    }

    /// Sends `request` as it is (no redirect followed, status codes passed through)
    /// and reads the whole response body, within the configured limits and
    /// [`Config::request_timeout`].
    pub fn execute(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.exchange(request, None)
    }

    /// Like [`execute`](Self::execute), but gives up on the exchange shortly before
    /// `deadline` (by [`DEADLINE_MARGIN`], or a tenth of the time left if less) if
    /// that comes before [`Config::request_timeout`]: pass a
    /// [`Transmit::deadline`](broker_session::Transmit::deadline), so the machine hears
    /// of the failure ([`FailureKind::Timeout`]) while it still waits for the answer.
    /// A deadline already (nearly) passed fails at once, without sending.
    pub fn execute_before(
        &self,
        request: http::Request<Vec<u8>>,
        deadline: Instant,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.exchange(request, Some(deadline))
    }

    fn exchange(
        &self,
        mut request: http::Request<Vec<u8>>,
        deadline: Option<Instant>,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.check_target(request.uri())?;
        let budget = exchange_budget(self.settings.request_timeout, Instant::now(), deadline);
        if budget.is_zero() {
            return Err(TransportFailure::new(
                FailureKind::Timeout,
                "timeout: the session's deadline for this request had passed; not sent",
            ));
        }
        let headers = request.headers_mut();
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.settings.user_agent.clone());
        }
        let needs_length = !request.body().is_empty()
            || matches!(
                *request.method(),
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            );
        if needs_length {
            let len = HeaderValue::from(request.body().len());
            request.headers_mut().insert(CONTENT_LENGTH, len);
        }
        // The agent's per-call timeout is the configured one; only a shorter budget
        // (the machine's deadline comes first) costs a per-request configuration.
        if budget < self.settings.request_timeout {
            request = self
                .agent
                .configure_request(request)
                .timeout_per_call(Some(budget))
                .build();
        }
        let response = self.agent.run(request).map_err(classify)?;
        let (parts, body) = response.into_parts();
        let limit = u64::try_from(self.settings.max_body).unwrap_or(u64::MAX);
        let body = body
            .into_with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(classify)?;
        Ok(http::Response::from_parts(parts, body))
    }

    /// Refuses, before any connection, what the configuration forbids.
    fn check_target(&self, uri: &http::Uri) -> Result<(), TransportFailure> {
        let s = &self.settings;
        match config::refusal(
            uri,
            s.insecure,
            s.allow_plain_http,
            s.proxied,
            s.loopback_through_proxy,
        ) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// How long an exchange may take: `timeout`, and for a session request no longer than
/// until shortly before the machine's `deadline` for it. Zero: do not start it.
pub(crate) fn exchange_budget(
    timeout: Duration,
    now: Instant,
    deadline: Option<Instant>,
) -> Duration {
    let Some(deadline) = deadline else {
        return timeout;
    };
    let left = deadline.saturating_duration_since(now);
    let margin = DEADLINE_MARGIN.min(left / 10);
    timeout.min(left.saturating_sub(margin))
}

fn parse_pem(pem: &[u8]) -> Result<ureq::tls::RootCerts, Error> {
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(_) => Some(Err(Error::Config("the PEM text does not parse".into()))),
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(Error::Config("the PEM text holds no certificate".into()));
    }
    Ok(ureq::tls::RootCerts::Specific(Arc::new(certs)))
}

/// Maps a ureq error to the core's classification. The detail never holds header
/// values or bodies: ureq's errors carry neither, and URIs are left out.
fn classify(e: ureq::Error) -> TransportFailure {
    use ureq::Error as E;
    let (kind, detail) = match &e {
        E::Timeout(t) => (FailureKind::Timeout, format!("timeout: {t}")),
        E::HostNotFound => (FailureKind::Connect, "host not found".to_owned()),
        E::ConnectionFailed => (FailureKind::Connect, "connection failed".to_owned()),
        E::Io(io) => return classify_io(io),
        E::BodyExceedsLimit(n) => (
            FailureKind::BodyTooLarge,
            format!("response body larger than {n} bytes"),
        ),
        E::Tls(m) => (FailureKind::Tls, format!("tls: {m}")),
        E::Rustls(r) => (FailureKind::Tls, format!("tls: {r}")),
        E::Pem(_) => (FailureKind::Tls, "tls: bad PEM".to_owned()),
        E::Protocol(p) => (FailureKind::Io, format!("http protocol: {p}")),
        E::BadUri(_) => (FailureKind::Other, "bad request URI".to_owned()),
        E::Http(_) => (FailureKind::Other, "invalid request".to_owned()),
        E::LargeResponseHeader(..) => (
            FailureKind::BodyTooLarge,
            "response headers too large".to_owned(),
        ),
        E::ConnectProxyFailed(_) => (
            FailureKind::Connect,
            "the proxy did not open a tunnel".to_owned(),
        ),
        E::BodyStalled => (FailureKind::Timeout, "response body stalled".to_owned()),
        // Other variants can quote URLs or proxy settings: keep the detail generic.
        _ => (FailureKind::Other, "http client error".to_owned()),
    };
    TransportFailure::new(kind, detail)
}

fn classify_io(e: &io::Error) -> TransportFailure {
    use io::ErrorKind as K;
    let kind = match e.kind() {
        // Only errors that can happen before a connection exists prove that nothing
        // was sent (`FailureKind::Connect`, on which a login may be retried).
        // `NotConnected` can come from a socket that was open, so it is `Io`.
        K::ConnectionRefused | K::AddrNotAvailable => FailureKind::Connect,
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        _ => FailureKind::Io,
    };
    // TLS failures reach us as io errors wrapping rustls errors.
    let detail = e.to_string();
    let kind = if kind == FailureKind::Io && detail.contains("certificate") {
        FailureKind::Tls
    } else {
        kind
    };
    TransportFailure::new(kind, format!("io: {detail}"))
}
