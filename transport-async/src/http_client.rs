//! The HTTP side: one pooled hyper client shared by sessions, executing requests as
//! the machine built them and mapping every failure to a [`TransportFailure`].

use std::error::Error as StdError;
use std::sync::Arc;

use broker_session::{FailureKind, TransportFailure};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Config, Tls, is_loopback};
use crate::error::Error;
use crate::tls;

/// How long an idle pooled connection is kept: shorter than the idle timeouts
/// brokers' load balancers commonly use, so a kept connection is rarely found dead.
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(50);

type Pool = LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP client: connections, TLS trust, timeouts, limits.
///
/// Cheap to clone; clones share one connection pool. Build one and hand clones to
/// every session (see [`Session::with_http`](crate::Session::with_http)).
#[derive(Clone)]
pub struct HttpClient {
    pool: Pool,
    settings: Arc<Settings>,
}

struct Settings {
    user_agent: HeaderValue,
    max_body: usize,
    request_timeout: std::time::Duration,
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
    /// Builds a client from `config`. Fails if the PEM text of [`Tls::Pem`] holds no
    /// parseable certificate, or the user agent is not a valid header value. Needs no
    /// runtime; requests must run inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::Config("the user agent is not a valid header value".into()))?;
        let tls_config = tls::client_config(&config.tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pool = LegacyClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            pool,
            settings: Arc::new(Settings {
                user_agent,
                max_body: config.max_body,
                request_timeout: config.request_timeout,
                insecure: matches!(config.tls, Tls::InsecureLoopbackOnly),
                allow_plain_http: config.allow_plain_http,
            }),
        })
    }

    /// Sends `request` as it is (no redirect followed, status codes passed through)
    /// and reads the whole response body, within the configured limits.
    pub async fn execute(
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
        let request = request.map(|b| Full::new(Bytes::from(b)));
        let max_body = self.settings.max_body;
        let exchange = async {
            let response = self.pool.request(request).await.map_err(classify_client)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| classify_body(&*e))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        match tokio::time::timeout(self.settings.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportFailure::new(
                FailureKind::Timeout,
                "request timeout expired",
            )),
        }
    }

    /// Refuses, before any connection, what the configuration forbids.
    fn check_target(&self, uri: &http::Uri) -> Result<(), TransportFailure> {
        let loopback = is_loopback(uri.host().unwrap_or(""));
        match uri.scheme_str() {
            Some("https") if self.settings.insecure && !loopback => Err(TransportFailure::new(
                FailureKind::Tls,
                "certificate verification is disabled, which is allowed for loopback hosts only: request refused",
            )),
            Some("https") => Ok(()),
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

/// Walks an error's source chain looking for what classifies it.
fn chain_kind(e: &(dyn StdError + 'static)) -> Option<FailureKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return Some(FailureKind::Tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Some(FailureKind::Timeout);
            }
            // `io::Error::source` skips the error it wraps; descend into it instead.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = err.source();
    }
    None
}

/// The innermost message of an error chain: hyper's errors carry no header values
/// or bodies, and URIs are not part of them.
fn root_message(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn classify_client(e: hyper_util::client::legacy::Error) -> TransportFailure {
    let kind = chain_kind(&e).unwrap_or(if e.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Io
    });
    TransportFailure::new(kind, format!("{e}: {}", root_message(&e)))
}

fn classify_body(e: &(dyn StdError + Send + Sync + 'static)) -> TransportFailure {
    if e.is::<http_body_util::LengthLimitError>() {
        return TransportFailure::new(FailureKind::BodyTooLarge, "response body too large");
    }
    let kind = chain_kind(e).unwrap_or(FailureKind::Io);
    TransportFailure::new(kind, format!("reading the body: {}", root_message(e)))
}
