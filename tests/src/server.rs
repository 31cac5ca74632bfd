//! A loopback HTTP and HTTPS server that serves any [`FakeBroker`] over real
//! sockets, for the transports and the examples.
//!
//! It listens on `127.0.0.1` only, on ephemeral ports, runs on its own thread, and
//! stops when its [`Server`] handle is dropped. HTTPS uses a certificate generated at
//! start-up with rcgen: a leaf for `127.0.0.1` and `localhost` signed by a fresh CA
//! (or, with [`CertMode::SelfSignedLeaf`], a self-signed leaf as the IBKR gateway
//! uses). [`Server::trust_pem`] is the PEM a client must trust.
//!
//! A [`Reply::Fail`] from the fake becomes a real transport fault: a
//! [`FailureKind::Timeout`] stalls the
//! response for [`ServerOptions::stall`] and then drops the connection; any other
//! kind drops the connection at once without a response.
//!
//! Like any HTTP server in front of a broker, it answers a request body over 2 MiB
//! with `413 Payload Too Large`, and a request whose headers or body do not arrive
//! within [`ServerOptions::body_timeout`] with `408 Request Timeout` (or, for headers,
//! by closing the connection), so a stuck client never holds a connection forever.
//! Each request reaches the fake with a [`ServedOn`] extension: the address it came
//! in on.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use broker_session::{FailureKind, Now};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::sim::{FakeBroker, Reply};

/// The largest request body the server reads (2 MiB).
const MAX_REQUEST_BODY: usize = 2 << 20;

/// How many requests the server remembers for [`Server::requests`] by default; older
/// ones are forgotten.
const RECORD_LIMIT: usize = 10_000;

/// Which certificate the HTTPS listener presents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertMode {
    /// A leaf signed by a CA generated at start-up; trust the CA. The default.
    #[default]
    CaSigned,
    /// A self-signed leaf (`CA:FALSE`), as the IBKR Client Portal Gateway presents;
    /// trust the leaf itself.
    SelfSignedLeaf,
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// How long a `Reply::Fail` of kind `Timeout` stalls before the connection is
    /// dropped. Default: 3 s (longer than the short timeouts tests configure).
    pub stall: Duration,
    /// Which certificate HTTPS presents. Default: [`CertMode::CaSigned`].
    pub cert: CertMode,
    /// Fixed ports to listen on (`0`: an ephemeral port). Default: `0` and `0`.
    pub http_port: u16,
    /// Port of the HTTPS listener (`0`: an ephemeral port).
    pub https_port: u16,
    /// How long the server waits for a request's headers, and then for its whole
    /// body, before it gives up on it (`408 Request Timeout` for a body). Default:
    /// 10 s.
    pub body_timeout: Duration,
    /// A file to append one JSON line per request to: time, method, path and query,
    /// headers (credentials redacted), body size, status and error code of the answer.
    /// Default: none.
    pub request_log: Option<PathBuf>,
    /// How many requests the server remembers for [`Server::requests`] (older ones
    /// are forgotten; `0` remembers none, as a benchmark measuring its clients'
    /// memory wants). Default: 10,000.
    pub record_limit: usize,
}

/// Where a request came in: a request extension the server adds, for fakes that
/// need the address a client connected to (e.g. to check what URL it signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedOn {
    /// Whether over HTTPS.
    pub tls: bool,
    /// The listening address (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(3),
            cert: CertMode::CaSigned,
            http_port: 0,
            https_port: 0,
            body_timeout: Duration::from_secs(10),
            request_log: None,
            record_limit: RECORD_LIMIT,
        }
    }
}

/// One request the server received, for assertions on what a transport sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Every header as received.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// Whether it came over HTTPS.
    pub tls: bool,
}

/// A running loopback server; dropping it stops it.
pub struct Server {
    http: SocketAddr,
    https: SocketAddr,
    trust_pem: String,
    requests: Arc<Mutex<VecDeque<Recorded>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("http", &self.http)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

struct State<F> {
    broker: Arc<Mutex<F>>,
    requests: Arc<Mutex<VecDeque<Recorded>>>,
    stall: Duration,
    body_timeout: Duration,
    log: Option<Mutex<std::fs::File>>,
    record_limit: usize,
}

impl Server {
    /// Serves `broker` with default options.
    pub fn start<F: FakeBroker + Send + 'static>(broker: F) -> io::Result<Self> {
        Self::start_shared(Arc::new(Mutex::new(broker)), ServerOptions::default())
    }

    /// Serves a broker the test keeps a handle on (to inject faults or inspect it
    /// while the server runs).
    pub fn start_shared<F: FakeBroker + Send + 'static>(
        broker: Arc<Mutex<F>>,
        options: ServerOptions,
    ) -> io::Result<Self> {
        let (tls, trust_pem) = tls_config(options.cert)?;
        let http_std = std::net::TcpListener::bind(("127.0.0.1", options.http_port))?;
        let https_std = std::net::TcpListener::bind(("127.0.0.1", options.https_port))?;
        http_std.set_nonblocking(true)?;
        https_std.set_nonblocking(true)?;
        let (http, https) = (http_std.local_addr()?, https_std.local_addr()?);
        let requests = Arc::new(Mutex::new(VecDeque::new()));
        let log = match &options.request_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        };
        let state = Arc::new(State {
            broker,
            requests: Arc::clone(&requests),
            stall: options.stall,
            body_timeout: options.body_timeout,
            log,
            record_limit: options.record_limit,
        });
        let (tx, rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("fake-broker-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (Ok(http), Ok(https)) = (
                        TcpListener::from_std(http_std),
                        TcpListener::from_std(https_std),
                    ) else {
                        return;
                    };
                    let acceptor = TlsAcceptor::from(Arc::new(tls));
                    tokio::select! {
                        _ = rx => {}
                        _ = accept_loop(http, None, Arc::clone(&state)) => {}
                        _ = accept_loop(https, Some(acceptor), state) => {}
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(Self {
            http,
            https,
            trust_pem,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// The PEM certificate a client must trust for [`https_url`](Self::https_url):
    /// the CA, or the self-signed leaf.
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// Every request received so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.requests).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.requests).clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop<F: FakeBroker + Send + 'static>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State<F>>,
) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let on = ServedOn {
        tls: tls.is_some(),
        addr,
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let header_timeout = state.body_timeout;
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { serve(state, req, on).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

/// A fault the fake asked for: hyper closes the connection without a response.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injected: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

/// An answer the server gives by itself (the fake never sees the request), closing
/// the connection.
fn refuse(status: u16, reason: &str) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONNECTION, "close")
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(reason.to_owned())))
        .unwrap_or_default()
}

async fn serve<F: FakeBroker>(
    state: Arc<State<F>>,
    req: http::Request<Incoming>,
    on: ServedOn,
) -> Result<http::Response<Full<Bytes>>, DropConnection> {
    let tls = on.tls;
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || refuse(413, "Payload Too Large: the limit is 2 MiB\n");
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        let resp = too_large();
        state.log_line(&parts, &path, tls, declared, Some(&resp), None);
        return Ok(resp);
    }
    let collected = tokio::time::timeout(
        state.body_timeout,
        Limited::new(body, MAX_REQUEST_BODY).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(body)) => body.to_bytes().to_vec(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let resp = too_large();
            state.log_line(&parts, &path, tls, None, Some(&resp), None);
            return Ok(resp);
        }
        Ok(Err(_)) => return Err(DropConnection),
        Err(_) => {
            let resp = refuse(408, "Request Timeout: the body did not arrive\n");
            state.log_line(&parts, &path, tls, None, Some(&resp), None);
            return Ok(resp);
        }
    };
    if state.record_limit > 0 {
        let mut log = lock(&state.requests);
        if log.len() >= state.record_limit {
            log.pop_front();
        }
        log.push_back(Recorded {
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            tls,
        });
    }
    // The fakes see absolute URIs, as the machine built them.
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let scheme = if tls { "https" } else { "http" };
    let body_len = body.len() as u64;
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.headers_mut() = parts.headers.clone();
    *request.version_mut() = parts.version;
    request.extensions_mut().insert(on);
    if let Ok(uri) = format!("{scheme}://{host}{path}").parse() {
        *request.uri_mut() = uri;
    }
    let now = Now::new(Instant::now(), SystemTime::now());
    let reply = lock(&state.broker).handle(&request, now);
    match reply {
        Reply::Response(r) => {
            state.log_line(&parts, &path, tls, Some(body_len), None, Some(&r));
            Ok(r.map(|b| Full::new(Bytes::from(b))))
        }
        Reply::Fail(f) => {
            state.log_line(&parts, &path, tls, Some(body_len), None, None);
            if f.kind == FailureKind::Timeout {
                tokio::time::sleep(state.stall).await;
            }
            Err(DropConnection)
        }
    }
}

/// Headers whose values are credentials: logged as `<redacted>` (for
/// `Authorization`, only the scheme, the OAuth realm and the parameter names).
const SECRET_HEADERS: [&str; 6] = [
    "cst",
    "x-security-token",
    "x-ig-api-key",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// `Authorization` without its secrets: `Bearer <redacted>`, or `OAuth realm="r",
/// oauth_consumer_key, oauth_nonce, …` (names only).
fn redact_authorization(value: &str) -> String {
    let Some(rest) = value.strip_prefix("OAuth ") else {
        let scheme = value.split_whitespace().next().unwrap_or("");
        return format!("{scheme} <redacted>");
    };
    let parts: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some(if k == "realm" {
                format!("{k}={v}")
            } else {
                k.to_owned()
            })
        })
        .collect();
    format!("OAuth {}", parts.join(", "))
}

impl<F> State<F> {
    /// Appends one JSON line about a request to the request log, if there is one.
    fn log_line(
        &self,
        parts: &http::request::Parts,
        path: &str,
        tls: bool,
        body_bytes: Option<u64>,
        own: Option<&http::Response<Full<Bytes>>>,
        fake: Option<&http::Response<Vec<u8>>>,
    ) {
        let Some(file) = &self.log else {
            return;
        };
        let mut headers = serde_json::Map::new();
        for (name, value) in &parts.headers {
            let value = value.to_str().unwrap_or("<not text>");
            let shown = if name == http::header::AUTHORIZATION {
                redact_authorization(value)
            } else if SECRET_HEADERS.contains(&name.as_str()) {
                "<redacted>".to_owned()
            } else {
                value.to_owned()
            };
            headers.insert(name.as_str().to_owned(), serde_json::Value::String(shown));
        }
        let status = own
            .map(|r| r.status().as_u16())
            .or_else(|| fake.map(|r| r.status().as_u16()));
        // The error code of a refusal (IG `errorCode`, IBKR `error`); never a body.
        let error = fake
            .filter(|r| !r.status().is_success())
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(r.body()).ok())
            .and_then(|v| {
                v.get("errorCode")
                    .or_else(|| v.get("error"))
                    .and_then(|e| e.as_str())
                    .map(str::to_owned)
            });
        let at_ms = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = serde_json::json!({
            "at_ms": at_ms,
            "method": parts.method.as_str(),
            "path": path,
            "tls": tls,
            "headers": headers,
            "body_bytes": body_bytes,
            "status": status,
            "error": error,
        });
        let mut f = lock(file);
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }
}

/// Builds the server's TLS configuration; returns it with the PEM to trust.
fn tls_config(mode: CertMode) -> io::Result<(rustls::ServerConfig, String)> {
    let err = |e: rcgen::Error| io::Error::other(e.to_string());
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut leaf = rcgen::CertificateParams::new(names).map_err(err)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "fake broker (loopback)");
    leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
    let (leaf_der, trust_pem) = match mode {
        CertMode::CaSigned => {
            let ca_key = rcgen::KeyPair::generate().map_err(err)?;
            let mut ca = rcgen::CertificateParams::new(Vec::new()).map_err(err)?;
            // A name of its own per start-up: a client that trusts the CAs of two
            // servers at once (one bundle) must find each leaf's issuer by name.
            let unique = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            ca.distinguished_name.push(
                rcgen::DnType::CommonName,
                format!("broker-session test CA {unique:x}"),
            );
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).map_err(err)?;
            let cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
            (cert.der().clone(), issuer.pem())
        }
        CertMode::SelfSignedLeaf => {
            let cert = leaf.self_signed(&leaf_key).map_err(err)?;
            (cert.der().clone(), cert.pem())
        }
    };
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_der], key)
        .map_err(io::Error::other)?;
    Ok((config, trust_pem))
}
