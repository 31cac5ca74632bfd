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

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use broker_session::{FailureKind, Now};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::sim::{FakeBroker, Reply};

/// The largest request body the server reads (2 MiB).
const MAX_REQUEST_BODY: usize = 2 << 20;

/// How many requests the server remembers for [`Server::requests`]; older ones are
/// forgotten.
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
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(3),
            cert: CertMode::CaSigned,
            http_port: 0,
            https_port: 0,
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
        let state = Arc::new(State {
            broker,
            requests: Arc::clone(&requests),
            stall: options.stall,
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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let is_tls = tls.is_some();
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { serve(state, req, is_tls).await }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
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

async fn serve<F: FakeBroker>(
    state: Arc<State<F>>,
    req: http::Request<Incoming>,
    tls: bool,
) -> Result<http::Response<Full<Bytes>>, DropConnection> {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, MAX_REQUEST_BODY).collect().await else {
        return Err(DropConnection);
    };
    let body = body.to_bytes().to_vec();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    {
        let mut log = lock(&state.requests);
        if log.len() == RECORD_LIMIT {
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
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method;
    *request.headers_mut() = parts.headers;
    *request.version_mut() = parts.version;
    if let Ok(uri) = format!("{scheme}://{host}{path}").parse() {
        *request.uri_mut() = uri;
    }
    let now = Now::new(Instant::now(), SystemTime::now());
    let reply = lock(&state.broker).handle(&request, now);
    match reply {
        Reply::Response(r) => Ok(r.map(|b| Full::new(Bytes::from(b)))),
        Reply::Fail(f) => {
            if f.kind == FailureKind::Timeout {
                tokio::time::sleep(state.stall).await;
            }
            Err(DropConnection)
        }
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
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, "broker-session test CA");
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
