//! The HTTP side: a configured `ureq` agent that executes requests exactly as the
//! machine built them, and maps every failure to a [`TransportFailure`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use broker_session::transport::{Policy, explain, no_connection_slot};
use broker_session::{FailureKind, TransportFailure, deadline_after};

use crate::gate::HostGate;
use crate::resolve::CachingResolver;
use crate::steady::SteadyTimeouts;
use crate::{Config, Error, Tls};

/// A configured HTTP client: connection pool, TLS trust, timeouts, limits.
///
/// Cheap to clone; clones share one connection pool, so one `HttpClient` can serve
/// many sessions. At most [`Config::max_connections_per_host`] exchanges run at once
/// to one origin (scheme, host, port); the others wait in line, within their
/// deadline.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// One allocation shared by every clone: a session holds a pointer.
    inner: Arc<Shared>,
}

/// What the clones of one [`HttpClient`] share.
#[derive(Debug)]
struct Shared {
    agent: ureq::Agent,
    policy: Policy,
    gate: HostGate,
}

/// How many origins' worth of idle connections the pool keeps in all: a client
/// talks to one or two brokers (and perhaps a proxy).
const IDLE_ORIGINS: usize = 4;

/// The largest response head (status line and headers) accepted: ureq's default.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Each connection's input buffer. ureq allocates both buffers in full on a
/// connection's first exchange and keeps them while it idles in the pool (128 KiB
/// each by default: 64 MiB for 256 idle connections). The input buffer must hold a
/// whole response head, so it is the head limit plus a little (a head that fills it
/// unparsed is then reported as too large, not as a stalled read); bodies stream
/// through it.
const INPUT_BUFFER: usize = MAX_RESPONSE_HEAD + 1024;

/// Each connection's output buffer: it holds a request head (a broker request's is
/// well under 2 KiB) and request bodies pass through it in chunks.
const OUTPUT_BUFFER: usize = 16 * 1024;

impl HttpClient {
    /// Builds a client from `config`. Fails if the PEM text of
    /// [`Tls::Pem`] holds no parseable certificate, the user agent is not a valid
    /// header value, a timeout is zero, or the proxy settings are unusable.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let policy = config.policy()?;
        // Never `Proxy::try_from_env`: a proxy is used only when configured.
        let proxy = match &policy.proxy {
            Some(uri) => Some(
                ureq::Proxy::new(&uri.to_string())
                    .map_err(|_| Error::Config("Config::proxy is not a usable proxy URI".into()))?,
            ),
            None => None,
        };
        let tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        let tls = match &config.tls {
            Tls::Pem(pem) => tls.root_certs(parse_pem(pem)?),
            Tls::InsecureLoopbackOnly => tls.disable_verification(true),
            _ => tls.root_certs(ureq::tls::RootCerts::WebPki),
        };
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(config.user_agent.as_str())
            .accept_encoding("")
            .proxy(proxy)
            // One budget for the whole exchange (connect, send, response head and
            // body). Cheap only with the caching resolver: see `resolve.rs` and
            // `benches/exchange_deadline.rs`.
            .timeout_per_call(Some(policy.request_timeout))
            .timeout_connect(Some(policy.connect_timeout))
            // Keep as many idle connections to an origin as may be open to it, so a
            // wave of exchanges at the cap reuses its sockets instead of closing all
            // but a few (ureq keeps 3 per host by default).
            .max_idle_connections_per_host(policy.max_connections_per_host)
            .max_idle_connections(policy.max_connections_per_host.saturating_mul(IDLE_ORIGINS))
            .max_response_header_size(MAX_RESPONSE_HEAD)
            .input_buffer_size(INPUT_BUFFER)
            .output_buffer_size(OUTPUT_BUFFER)
            .tls_config(tls.build())
            .build();
        let agent = ureq::Agent::with_parts(agent_config, connector(), CachingResolver::default());
        Ok(Self {
            inner: Arc::new(Shared {
                agent,
                gate: HostGate::new(policy.max_connections_per_host),
                policy,
            }),
        })
    }

    /// The checked settings this client was built with.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
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
    /// `deadline` (by [`DEADLINE_MARGIN`](crate::DEADLINE_MARGIN), or a tenth of the time left if less) if
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
        let start = Instant::now();
        let budget = self.inner.policy.prepare(&mut request, start, deadline)?;
        let uri = request.uri().clone();
        // Waiting for a connection slot spends the exchange's one budget.
        let give_up = deadline_after(start, budget);
        let no_slot = || no_connection_slot(&uri, self.inner.policy.max_connections_per_host);
        let slot = self.inner.gate.enter(&uri, give_up).ok_or_else(no_slot)?;
        // Only time spent waiting for the slot shortens the budget (and costs a
        // clock read).
        let budget = if slot.waited() {
            give_up.saturating_duration_since(Instant::now())
        } else {
            budget
        };
        if budget.is_zero() {
            return Err(no_slot());
        }
        // The agent's per-call timeout is the configured one; only a shorter budget
        // (the machine's deadline comes first) costs a per-request configuration.
        if budget < self.inner.policy.request_timeout {
            request = self
                .inner
                .agent
                .configure_request(request)
                .timeout_per_call(Some(budget))
                .build();
        }
        let limit = u64::try_from(self.inner.policy.max_body).unwrap_or(u64::MAX);
        let read = |response: http::Response<ureq::Body>| {
            let (parts, body) = response.into_parts();
            let body = body.into_with_config().limit(limit).read_to_vec()?;
            Ok(http::Response::from_parts(parts, body))
        };
        self.inner
            .agent
            .run(request)
            .and_then(read)
            .map_err(|e| explain(classify(e), &uri))
    }
}

/// ureq's default chain of connectors for this build (an HTTP `CONNECT` proxy if
/// one is configured, TCP, rustls: SOCKS proxies are refused by the configuration's
/// checks), with socket timeouts that stay put between reads ([`SteadyTimeouts`],
/// right above the socket, so TLS and proxied connections get it too).
fn connector() -> impl ureq::unversioned::transport::Connector {
    use ureq::unversioned::transport::{
        ConnectProxyConnector, Connector, RustlsConnector, TcpConnector,
    };
    ().chain(ConnectProxyConnector::default())
        .chain(TcpConnector::default())
        .chain(SteadyTimeouts)
        .chain(RustlsConnector::default())
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
