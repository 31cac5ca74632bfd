//! The HTTP side: a configured `ureq` agent that executes requests exactly as the
//! machine built them, and maps every failure to a [`TransportFailure`].

use std::io;
use std::sync::Arc;

use broker_session::{FailureKind, TransportFailure};
use http::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};

use crate::config::{Config, Tls, is_loopback};
use crate::error::Error;

/// A configured HTTP client: connection pool, TLS trust, timeouts, limits.
///
/// Cheap to clone; clones share one connection pool, so one `HttpClient` can serve
/// many sessions.
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    settings: Arc<Settings>,
}

struct Settings {
    user_agent: HeaderValue,
    max_body: usize,
    insecure: bool,
    allow_plain_http: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("user_agent", &self.settings.user_agent)
            .field("max_body", &self.settings.max_body)
            .field("insecure", &self.settings.insecure)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds a client from `config`. Fails if the PEM text of
    /// [`Tls::Pem`] holds no parseable certificate, or the user agent is not a valid
    /// header value.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::Config("the user agent is not a valid header value".into()))?;
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
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(config.user_agent.as_str())
            .accept_encoding("")
            // Per phase rather than `timeout_global`: ureq re-arms the socket
            // timeouts on every read and write under a global deadline, which
            // measured 3-6x slower per request on loopback.
            .timeout_send_request(Some(config.request_timeout))
            .timeout_send_body(Some(config.request_timeout))
            .timeout_recv_response(Some(config.request_timeout))
            .timeout_recv_body(Some(config.request_timeout))
            .timeout_connect(Some(config.connect_timeout))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Self {
            agent,
            settings: Arc::new(Settings {
                user_agent,
                max_body: config.max_body,
                insecure,
                allow_plain_http: config.allow_plain_http,
            }),
        })
    }

    /// Sends `request` as it is (no redirect followed, status codes passed through)
    /// and reads the whole response body, within the configured limits.
    pub fn execute(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.check_target(request.uri())?;
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
        let host = uri.host().unwrap_or("");
        let loopback = is_loopback(host);
        match uri.scheme_str() {
            Some("https") => {
                if self.settings.insecure && !loopback {
                    return Err(TransportFailure::new(
                        FailureKind::Tls,
                        "certificate verification is disabled, which is allowed for loopback hosts only: request refused",
                    ));
                }
                Ok(())
            }
            Some("http") if loopback || self.settings.allow_plain_http => Ok(()),
            Some("http") => Err(TransportFailure::new(
                FailureKind::Other,
                "plain http to a non-loopback host is refused (set Config::allow_plain_http to allow it)",
            )),
            _ => Err(TransportFailure::new(
                FailureKind::Other,
                "the request URI has no http or https scheme",
            )),
        }
    }
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
        E::BodyStalled => (FailureKind::Timeout, "response body stalled".to_owned()),
        // Other variants can quote URLs or proxy settings: keep the detail generic.
        _ => (FailureKind::Other, "http client error".to_owned()),
    };
    TransportFailure::new(kind, detail)
}

fn classify_io(e: &io::Error) -> TransportFailure {
    use io::ErrorKind as K;
    let kind = match e.kind() {
        K::ConnectionRefused | K::AddrNotAvailable | K::NotConnected => FailureKind::Connect,
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
