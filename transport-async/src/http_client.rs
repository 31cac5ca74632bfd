//! The HTTP side: one pooled hyper client shared by sessions, executing requests as
//! the machine built them and mapping every failure to a [`TransportFailure`].

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_session::{FailureKind, TransportFailure, deadline_after};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{self, Config, Tls};
use crate::error::Error;
use crate::tls;

/// How long an idle pooled connection is kept: shorter than the idle timeouts
/// brokers' load balancers commonly use, so a kept connection is rarely found dead.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// How long before a session request's [`Transmit::deadline`] the transport gives up
/// on the exchange (or a tenth of the time left, if less), so that the failure reaches
/// the machine while it still waits for it.
///
/// [`Transmit::deadline`]: broker_session::Transmit::deadline
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

type Pool = LegacyClient<HttpsConnector<Route>, Full<Bytes>>;

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
    /// Builds a client from `config`. Fails if the PEM text of [`Tls::Pem`] holds no
    /// parseable certificate, the user agent is not a valid header value, a timeout is
    /// zero, or the proxy settings are unusable. Needs no runtime; requests must run
    /// inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::Config("the user agent is not a valid header value".into()))?;
        let request_timeout = config::timeout(config.request_timeout, "request_timeout")?;
        let connect_timeout = config::timeout(config.connect_timeout, "connect_timeout")?;
        let (proxy, loopback_through_proxy) = config::proxy(config)?;
        let tls_config = tls::client_config(&config.tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let route = Route {
            tunnel: proxy.clone().map(|p| Tunnel::new(p, http.clone())),
            proxy: proxy.clone(),
            direct: http,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(route);
        let pool = LegacyClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            pool,
            settings: Arc::new(Settings {
                user_agent,
                max_body: config.max_body,
                request_timeout,
                insecure: matches!(config.tls, Tls::InsecureLoopbackOnly),
                allow_plain_http: config.allow_plain_http,
                proxied: proxy.is_some(),
                loopback_through_proxy,
            }),
        })
    }

    /// Sends `request` as it is (no redirect followed, status codes passed through)
    /// and reads the whole response body, within the configured limits and
    /// [`Config::request_timeout`].
    pub async fn execute(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.exchange(request, None).await
    }

    /// Like [`execute`](Self::execute), but gives up on the exchange shortly before
    /// `deadline` (by [`DEADLINE_MARGIN`], or a tenth of the time left if less) if
    /// that comes before [`Config::request_timeout`]: pass a
    /// [`Transmit::deadline`](broker_session::Transmit::deadline), so the machine hears
    /// of the failure ([`FailureKind::Timeout`]) while it still waits for the answer.
    /// A deadline already (nearly) passed fails at once, without sending.
    pub async fn execute_before(
        &self,
        request: http::Request<Vec<u8>>,
        deadline: Instant,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.exchange(request, Some(deadline)).await
    }

    async fn exchange(
        &self,
        mut request: http::Request<Vec<u8>>,
        deadline: Option<Instant>,
    ) -> Result<http::Response<Vec<u8>>, TransportFailure> {
        self.check_target(request.uri())?;
        let now = Instant::now();
        let budget = exchange_budget(self.settings.request_timeout, now, deadline);
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
        let request = request.map(|b| Full::new(Bytes::from(b)));
        let max_body = self.settings.max_body;
        // One deadline around connect, send and the whole body.
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
        let give_up = deadline_after(now, budget);
        match tokio::time::timeout_at(give_up.into(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportFailure::new(
                FailureKind::Timeout,
                "request timeout expired",
            )),
        }
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
fn exchange_budget(timeout: Duration, now: Instant, deadline: Option<Instant>) -> Duration {
    let Some(deadline) = deadline else {
        return timeout;
    };
    let left = deadline.saturating_duration_since(now);
    let margin = DEADLINE_MARGIN.min(left / 10);
    timeout.min(left.saturating_sub(margin))
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Where connections go: straight to the target, or through the configured proxy
/// (a `CONNECT` tunnel for `https`, the proxy itself for plain `http`, to which the
/// pool then sends requests in absolute form).
#[derive(Clone)]
pub(crate) struct Route {
    direct: HttpConnector,
    proxy: Option<http::Uri>,
    tunnel: Option<Tunnel<HttpConnector>>,
}

impl tower_service::Service<http::Uri> for Route {
    type Response = RouteIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::poll_ready(&mut self.direct, cx).map_err(Into::into)
    }

    fn call(&mut self, target: http::Uri) -> Self::Future {
        let https = target.scheme_str() == Some("https");
        match (&self.proxy, &mut self.tunnel) {
            (Some(_), Some(tunnel)) if https => {
                let connecting = tunnel.call(target);
                Box::pin(async move {
                    Ok(RouteIo {
                        io: connecting.await?,
                        proxied: false,
                    })
                })
            }
            (Some(proxy), _) => {
                let connecting = self.direct.call(proxy.clone());
                Box::pin(async move {
                    Ok(RouteIo {
                        io: connecting.await?,
                        proxied: !https,
                    })
                })
            }
            (None, _) => {
                let connecting = self.direct.call(target);
                Box::pin(async move {
                    Ok(RouteIo {
                        io: connecting.await?,
                        proxied: false,
                    })
                })
            }
        }
    }
}

/// A connection opened by [`Route`]: says whether it goes to an HTTP proxy (so the
/// pool writes absolute-form request targets).
pub(crate) struct RouteIo {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for RouteIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for RouteIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for RouteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
