//! Async transport for [`broker_session`] on `hyper` 1 and `tokio`.
//!
//! [`Client`] drives any [`Machine`](broker_session::Machine) over HTTPS: its
//! methods submit an intent and run the machine until that operation completes,
//! [`Client::send`] stamps the session's credentials on your own API requests and
//! recovers once from a refused credential, and [`Client::keep_alive`] (or
//! [`Client::service`]) runs the session's timers. One [`HttpClient`] (one
//! connection pool) can serve many sessions ([`Client::open`]); it opens at most
//! [`Config::max_connections_per_host`] connections to one origin, and further
//! exchanges wait in line for one, within their deadline (one that gets none in time
//! fails as [`FailureKind::Connect`](broker_session::FailureKind::Connect), never
//! sent).
//!
//! ```no_run
//! # async fn demo<M>(machine: M, intent: M::Intent) -> Result<(), broker_session_hyper::Error>
//! # where M: broker_session::Machine + Send + 'static, M::State: Send, M::Outcome: Send {
//! use broker_session_hyper::{Client, Config, HttpClient};
//!
//! let http = HttpClient::new(&Config::default())?;  // share it between sessions
//! let session = Client::with_http(machine, http.clone())?;
//! let outcome = session.run(intent).await?;         // e.g. a login
//! let _keep_alive = session.keep_alive();           // timers run until this drops
//! let response = session
//!     .send(
//!         broker_session::http::Request::get("/accounts") // under the base URL
//!             .body(Vec::new())
//!             .expect("valid request"),
//!     )
//!     .await?;
//! # let _ = (outcome, response); Ok(()) }
//! ```
//!
//! # What the transport does and does not do
//!
//! It makes no protocol decision. It sends requests exactly as the machine built
//! them, adds only `User-Agent` and `Content-Length` (on every `POST`, `PUT` and
//! `PATCH`, `0` when empty), never follows a redirect, passes every status through,
//! limits the response body, ends every exchange within one overall deadline
//! ([`Config::request_timeout`], and for a session request before the machine's own
//! deadline for it), and maps every failure to a
//! [`TransportFailure`](broker_session::TransportFailure).
//!
//! # Proxies
//!
//! None unless [`Config::proxy`] is set (the proxy environment variables are not
//! read). Through a proxy, no host counts as loopback (see
//! [`Config::trust_loopback_proxy`]).
//!
//! # Cancellation
//!
//! Every future is cancellation-safe. A session request is exchanged inside the
//! future that awaits the machine (a `login`, `run`, a `send` waiting for a
//! recovery): no task is spawned and no wake-up passes between tasks per exchange. Such a future, dropped half-way, hands its exchange to a task
//! the session spawns, which hands the result to the machine (and, should the runtime
//! drop that task too, reports
//! [`FailureKind::Cancelled`](broker_session::FailureKind)); the operation runs to
//! its end and its result goes to the event buffer (for a subscriber, see
//! [`Client::subscribe`]). As with any future, keep polling
//! one you hold, or drop it: a future held but never polled holds up the session
//! request it runs. Requests nobody awaits (those of [`Client::submit`],
//! [`Client::service`] and the timers of [`Client::keep_alive`]) are exchanged on
//! spawned tasks, which live only while they exchange.
//!
//! # Keeping sessions alive
//!
//! [`Client::keep_alive`] puts the session on the one timer task its
//! [`HttpClient`] runs (per tokio runtime) for every session kept alive on it: the
//! task keeps the sessions' deadlines in a heap, sleeps until the earliest, drives
//! each session that is due and hands the requests that produces to spawned tasks,
//! so it never waits for a broker and one slow broker delays no other session's
//! timer. A call that moves a session's next deadline earlier (a login, a recovery,
//! a submitted operation) wakes the task; a session nobody keeps alive pays one
//! relaxed atomic load per drive for that. A kept-alive session costs the task a
//! slot in a vector and a pair in the heap (about 80 bytes measured, the handle
//! included), not a task of its own; the task ends when the last [`KeepAlive`] is
//! dropped.
//!
//! # TLS
//!
//! rustls with the `ring` provider; Mozilla's roots compiled in by default
//! ([`Tls::WebPkiRoots`]), or certificates you give in PEM ([`Tls::Pem`], for the
//! IBKR gateway's self-signed certificate). [`Tls::InsecureLoopbackOnly`] turns
//! verification off and is refused for any non-loopback host. Plain `http://` is
//! allowed to loopback hosts only, unless [`Config::allow_plain_http`] is set. Through a
//! [`Config::proxy`], no host counts as loopback.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod http_client;
mod keep_alive;
mod timer;
mod tls;

#[allow(deprecated)]
pub use client::{Client, Session};
pub use http_client::HttpClient;
pub use keep_alive::KeepAlive;

broker_session::__transport_root!(broker_session_hyper);
