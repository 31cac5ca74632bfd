//! The HTTP side: one pooled hyper client shared by sessions, executing requests as
//! the machine built them and mapping every failure to a [`TransportFailure`].

use std::cell::RefCell;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_session::transport::{Policy, explain, no_connection_slot, origin};
use broker_session::{FailureKind, TransportFailure, deadline_after};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::timer::Timers;
use crate::{Config, Error, tls};

/// How long an idle pooled connection is kept: shorter than the idle timeouts
/// brokers' load balancers commonly use, so a kept connection is rarely found dead.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

type Pool = LegacyClient<HttpsConnector<Route>, Full<Bytes>>;

/// A pooled HTTP client: connections, TLS trust, timeouts, limits.
///
/// Cheap to clone; clones share one connection pool. Build one and hand clones to
/// every session (see [`Client::with_http`](crate::Client::with_http)). At most
/// [`Config::max_connections_per_host`] exchanges run at once to one origin (scheme,
/// host, port), and at most that many sockets are open to it; the other exchanges
/// wait in line (first come, first served), within their deadline.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// One allocation shared by every clone: a session holds a pointer, not its own
    /// copy of the pool's handle (which is several hundred bytes).
    inner: Arc<Shared>,
}

/// What the clones of one [`HttpClient`] share.
#[derive(Debug)]
struct Shared {
    pool: Pool,
    policy: Policy,
    gates: Gates,
    /// The task that runs the timers of this client's kept-alive sessions, one per
    /// runtime.
    timers: Timers,
}

/// One counting semaphore per origin, created on its first use, with `cap` permits.
/// A client talks to a handful of origins (one or two brokers), so they sit in a
/// short list scanned without allocating, never pruned.
#[derive(Debug)]
struct Gates {
    cap: usize,
    origins: Mutex<Origins>,
}

/// An origin (scheme, host, port) and its semaphore.
type Gate = (Box<str>, Box<str>, u16, Arc<Semaphore>);

#[derive(Debug, Default)]
struct Origins {
    /// Each origin and its semaphore.
    gates: Vec<Gate>,
    /// Each spelling of an origin seen so far (scheme, authority as written), its
    /// origin's semaphore and whether the policy lets requests go there: a session
    /// sends the same few URIs, so a request finds its gate and its verdict by
    /// comparing two strings, without parsing the host and port each time. Spellings
    /// of one origin (`h`, `h:443`, `H:443`) share its semaphore.
    spellings: Vec<Spelling>,
}

/// A spelling of an origin: scheme, authority as written, the origin's semaphore and
/// the policy's verdict on it.
type Spelling = (Box<str>, Box<str>, Arc<Semaphore>, bool);

impl Gates {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            origins: Mutex::new(Origins::default()),
        }
    }

    /// The semaphore of `uri`'s origin, and whether requests may go there: `allowed`
    /// judges it the first time a spelling of an origin is seen (it depends on the
    /// scheme and host only), and the verdict is kept with the spelling.
    fn of(&self, uri: &http::Uri, allowed: impl FnOnce() -> bool) -> (Arc<Semaphore>, bool) {
        let scheme = uri.scheme_str().unwrap_or("");
        let authority = uri.authority().map_or("", http::uri::Authority::as_str);
        // Held for a lookup only; a panic cannot happen while it is held.
        let mut list = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((.., s, verdict)) = list
            .spellings
            .iter()
            .find(|(s, a, ..)| **a == *authority && **s == *scheme)
        {
            return (Arc::clone(s), *verdict);
        }
        let verdict = allowed();
        let (_, host, port) = origin(uri);
        let gate = match list
            .gates
            .iter()
            .find(|(s, h, p, _)| **s == *scheme && h.eq_ignore_ascii_case(host) && *p == port)
        {
            Some((.., s)) => Arc::clone(s),
            None => {
                let s = Arc::new(Semaphore::new(self.cap));
                list.gates
                    .push((scheme.into(), host.into(), port, Arc::clone(&s)));
                s
            }
        };
        // Bounded, for a program that writes one origin in ever new ways (user info
        // in the URI): past the bound, a new spelling is parsed each time.
        if list.spellings.len() < MAX_SPELLINGS {
            list.spellings
                .push((scheme.into(), authority.into(), Arc::clone(&gate), verdict));
        }
        (gate, verdict)
    }
}

/// How many spellings of origins [`Gates`] remembers.
const MAX_SPELLINGS: usize = 64;

impl HttpClient {
    /// Builds a client from `config`. Fails if the PEM text of [`Tls::Pem`](crate::Tls::Pem) holds no
    /// parseable certificate, the user agent is not a valid header value, a timeout is
    /// zero, or the proxy settings are unusable. Needs no runtime; requests must run
    /// inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let policy = config.policy()?;
        let proxy = policy.proxy.clone();
        let tls_config = tls::client_config(&config.tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(policy.connect_timeout));
        let route = Route(Arc::new(RouteParts {
            tunnel: proxy.clone().map(|p| Tunnel::new(p, http.clone())),
            proxy: proxy.clone(),
            direct: http,
            sockets: Gates::new(policy.max_connections_per_host),
        }));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(route);
        let pool = LegacyClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // As many idle connections to an origin as may be open to it: a wave at
            // the cap reuses its sockets; more could never be used at once.
            .pool_max_idle_per_host(policy.max_connections_per_host)
            .build(connector);
        Ok(Self {
            inner: Arc::new(Shared {
                pool,
                gates: Gates::new(policy.max_connections_per_host),
                policy,
                timers: Timers::default(),
            }),
        })
    }

    /// The checked settings this client was built with.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The timer tasks of this client's kept-alive sessions.
    pub(crate) fn timers(&self) -> &Timers {
        &self.inner.timers
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
    /// `deadline` (by [`DEADLINE_MARGIN`](crate::DEADLINE_MARGIN), or a tenth of the time left if less) if
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
        let now = Instant::now();
        let policy = &self.inner.policy;
        let uri = request.uri().clone();
        // The policy's verdict on the origin is kept with its gate: judged once.
        let (gate, allowed) = self.inner.gates.of(&uri, || policy.refusal(&uri).is_none());
        if !allowed && let Some(failure) = policy.refusal(&uri) {
            return Err(failure);
        }
        let budget = policy.prepare_allowed(&mut request, now, deadline)?;
        let request = request.map(|b| Full::new(Bytes::from(b)));
        let max_body = policy.max_body;
        let give_up = deadline_after(now, budget);
        // One deadline over waiting for a connection slot, connect, send and the
        // whole body; whether the slot was had says which failure a timeout is.
        let slotted = AtomicBool::new(false);
        let exchange = async {
            // Never closed.
            let Ok(_slot) = gate.acquire_owned().await else {
                return Err(None);
            };
            slotted.store(true, Ordering::Relaxed);
            let response = EXCHANGE
                .scope(RefCell::new(None), self.inner.pool.request(request))
                .await
                .map_err(|e| Some(classify_client(e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| Some(classify_body(&*e)))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        match tokio::time::timeout_at(give_up.into(), exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(Some(failure))) => Err(explain(failure, &uri)),
            // A deadline passed in line for a slot: not sent.
            Ok(Err(None)) | Err(_) if !slotted.load(Ordering::Relaxed) => {
                Err(no_connection_slot(&uri, policy.max_connections_per_host))
            }
            Ok(Err(None)) | Err(_) => Err(TransportFailure::new(
                FailureKind::Timeout,
                "request timeout expired",
            )),
        }
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

tokio::task_local! {
    /// Set around each exchange's request to the pool: a connect started for it
    /// (see [`Route`]) leaves a sender here and keeps its receiver, which completes
    /// when the exchange ends and drops the sender.
    static EXCHANGE: RefCell<Option<oneshot::Sender<()>>>;
}

/// Where connections go: straight to the target, or through the configured proxy
/// (a `CONNECT` tunnel for `https`, the proxy itself for plain `http`, to which the
/// pool then sends requests in absolute form).
///
/// Every connection it opens holds one of its origin's socket permits until it
/// closes. The exchange gate alone does not bound the sockets: hyper's pool gets a
/// connection back from a task of its own a moment after the exchange that used it
/// ended, so the next exchange in line, finding no idle connection yet, would open
/// one more. With the permits, that exchange's connect waits, and the connection
/// coming back to the pool serves it; the connect, which hyper then finishes on a
/// task of its own, stops waiting for a socket as soon as that exchange has ended.
///
/// One pointer: the pool clones its connector for every request (to have it ready
/// should the request need a new connection), so the parts are shared, and cloned
/// only for a connect.
#[derive(Clone)]
pub(crate) struct Route(Arc<RouteParts>);

struct RouteParts {
    direct: HttpConnector,
    proxy: Option<http::Uri>,
    tunnel: Option<Tunnel<HttpConnector>>,
    sockets: Gates,
}

impl tower_service::Service<http::Uri> for Route {
    type Response = RouteIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both connectors resolve names with `GaiResolver`, which is always ready
        // (each lookup runs on the blocking pool), and are otherwise stateless: a
        // clone of them is as ready as they are.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: http::Uri) -> Self::Future {
        let parts = &*self.0;
        let https = target.scheme_str() == Some("https");
        let (sockets, _) = parts.sockets.of(&target, || true);
        let mut direct = parts.direct.clone();
        // The connector futures do nothing until polled: connecting starts once a
        // socket permit is held.
        let (connecting, proxied): (Pin<Box<dyn Future<Output = _> + Send>>, bool) =
            match (&parts.proxy, &parts.tunnel) {
                (Some(_), Some(tunnel)) if https => {
                    let c = tunnel.clone().call(target);
                    (
                        Box::pin(async move { c.await.map_err(BoxError::from) }),
                        false,
                    )
                }
                (Some(proxy), _) => {
                    let c = direct.call(proxy.clone());
                    (
                        Box::pin(async move { c.await.map_err(BoxError::from) }),
                        !https,
                    )
                }
                (None, _) => {
                    let c = direct.call(target);
                    (
                        Box::pin(async move { c.await.map_err(BoxError::from) }),
                        false,
                    )
                }
            };
        // The exchange this connect is for, if it runs inside one: told when that
        // exchange ends (see `EXCHANGE`).
        let ended = EXCHANGE
            .try_with(|slot| {
                let (tx, rx) = oneshot::channel::<()>();
                *slot.borrow_mut() = Some(tx);
                rx
            })
            .ok();
        Box::pin(async move {
            let socket = match Arc::clone(&sockets).try_acquire_owned() {
                Ok(socket) => socket,
                // Every socket to the origin is open: wait for one, but only while the
                // exchange that wanted this connection still waits for it. If the pool
                // served that exchange meanwhile (a connection came back to it), hyper
                // goes on with this connect in a task of its own; a socket would free
                // up only when one of the pool's connections closes, which could be
                // minutes away, with this task and its buffers waiting all along.
                Err(_) => {
                    let mut wait = std::pin::pin!(sockets.acquire_owned());
                    match ended {
                        Some(mut ended) => {
                            std::future::poll_fn(|cx| {
                                if let Poll::Ready(socket) = wait.as_mut().poll(cx) {
                                    // The semaphore is never closed.
                                    return Poll::Ready(socket.map_err(BoxError::from));
                                }
                                match Pin::new(&mut ended).poll(cx) {
                                    // Served by the pool, timed out or dropped:
                                    // nobody waits for this connection any more.
                                    Poll::Ready(_) => Poll::Ready(Err(BoxError::from(
                                        "the exchange this connection was for ended \
                                         before a socket came free",
                                    ))),
                                    Poll::Pending => Poll::Pending,
                                }
                            })
                            .await?
                        }
                        None => wait.await.map_err(BoxError::from)?,
                    }
                }
            };
            Ok(RouteIo {
                io: connecting.await?,
                proxied,
                _socket: socket,
            })
        })
    }
}

/// A connection opened by [`Route`]: says whether it goes to an HTTP proxy (so the
/// pool writes absolute-form request targets).
pub(crate) struct RouteIo {
    io: TokioIo<TcpStream>,
    proxied: bool,
    /// Given back to the origin's socket count when the connection closes.
    _socket: OwnedSemaphorePermit,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_origin_shares_its_gate() {
        let gates = Gates::new(2);
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let a = gates.of(&uri("https://broker.example/a"), || true).0;
        for same in [
            "https://broker.example:443/b",
            "https://BROKER.example/c",
            "https://user@broker.example/d",
            "https://broker.example/a",
        ] {
            assert!(Arc::ptr_eq(&a, &gates.of(&uri(same), || true).0), "{same}");
        }
        for other in [
            "http://broker.example/a",
            "https://broker.example:8443/a",
            "https://other.example/a",
        ] {
            assert!(
                !Arc::ptr_eq(&a, &gates.of(&uri(other), || true).0),
                "{other}"
            );
        }
        let list = gates.origins.lock().unwrap();
        assert_eq!(list.gates.len(), 4);
        assert_eq!(list.spellings.len(), 7);
    }

    #[test]
    fn spellings_are_bounded_and_still_find_their_gate() {
        let gates = Gates::new(1);
        let first = gates.of(&"http://127.0.0.1:9/".parse().unwrap(), || true).0;
        for i in 0..MAX_SPELLINGS * 2 {
            let uri: http::Uri = format!("http://u{i}@127.0.0.1:9/").parse().unwrap();
            assert!(Arc::ptr_eq(&first, &gates.of(&uri, || true).0));
        }
        let list = gates.origins.lock().unwrap();
        assert_eq!(list.gates.len(), 1);
        assert_eq!(list.spellings.len(), MAX_SPELLINGS);
    }
}
