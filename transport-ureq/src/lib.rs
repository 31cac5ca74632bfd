//! Blocking transport for [`broker_session`] on [`ureq`](https://docs.rs/ureq).
//!
//! [`Client`] drives any [`Machine`](broker_session::Machine) over HTTPS: its
//! methods submit an intent and run the machine until that operation completes,
//! [`Client::send`] stamps the session's credentials on your own API requests and
//! recovers once from a refused credential, and [`Client::keep_alive`] (or
//! [`Client::service`] if you own the loop) runs the session's timers.
//!
//! ```no_run
//! # fn demo<M>(machine: M, intent: M::Intent) -> Result<(), broker_session_ureq::Error>
//! # where M: broker_session::Machine + Send + 'static, M::State: Send, M::Outcome: Send {
//! use broker_session_ureq::{Client, Config};
//!
//! let client = Client::new(machine, &Config::default())?;
//! let outcome = client.run(intent)?;          // e.g. a login
//! let _keep_alive = client.keep_alive()?;     // timers run until this guard drops
//! let response = client.send(
//!     broker_session::http::Request::get("/accounts") // under the base URL
//!         .body(Vec::new())
//!         .expect("valid request"),
//! )?;
//! # let _ = (outcome, response); Ok(()) }
//! ```
//!
//! # Many sessions
//!
//! One [`HttpClient`] (one connection pool) can serve many sessions
//! ([`Client::open`]). It opens at most
//! [`Config::max_connections_per_host`] connections to one origin; further exchanges
//! wait in line for one, within their deadline, and one that gets none in time fails
//! as [`FailureKind::Connect`](broker_session::FailureKind::Connect) without being
//! sent. A [`Scheduler`] runs the timers of any number of sessions on one thread
//! (or from a loop of yours, [`Scheduler::run_due`]) where
//! [`Client::keep_alive`] would start one thread per session:
//!
//! ```no_run
//! # fn demo(configs: Vec<broker_session_ureq::IgConfig>) -> Result<(), broker_session_ureq::Error> {
//! use broker_session_ureq::{Client, Config, HttpClient, Scheduler};
//!
//! let http = HttpClient::new(&Config::default())?;
//! let scheduler = Scheduler::spawn()?;
//! let sessions = configs
//!     .into_iter()
//!     .map(|config| {
//!         let client = Client::open(config, &http)?;
//!         let registration = scheduler.add(&client); // timers run until it drops
//!         client.login()?;
//!         Ok((client, registration))
//!     })
//!     .collect::<Result<Vec<_>, broker_session_ureq::Error>>()?;
//! # drop(sessions); Ok(()) }
//! ```
//!
//! # What the transport does and does not do
//!
//! It makes no protocol decision: the machine decides what to send, how to read a
//! response and when to retry. The transport sends requests exactly as built, adds
//! only `User-Agent` and `Content-Length` (on every `POST`, `PUT` and `PATCH`, `0`
//! when empty), never follows a redirect (a `3xx` goes to the machine as it is),
//! passes every status through, limits the response body, ends every exchange
//! within one overall deadline ([`Config::request_timeout`], and for a session request
//! before the machine's own deadline for it), and maps every failure to a
//! [`TransportFailure`](broker_session::TransportFailure). The socket is given that
//! deadline's time left rounded down to whole seconds, so its timeouts are set once
//! per connection rather than before each read; a read the rounding cuts short is
//! tried again with what is left, so it still ends at the deadline (a write so cut
//! fails as a timeout up to a second early, after all but that second of blocking).
//!
//! # Proxies
//!
//! None unless [`Config::proxy`] is set: the proxy environment variables
//! (`HTTPS_PROXY` and the like) are ignored. Through a proxy, no host counts as
//! loopback (see [`Config::trust_loopback_proxy`]).
//!
//! # TLS
//!
//! rustls with the `ring` provider. Server certificates are verified against
//! Mozilla's roots compiled in ([`Tls::WebPkiRoots`], the default), or against
//! certificates you give in PEM ([`Tls::Pem`], for the IBKR Client Portal Gateway's
//! self-signed certificate). [`Tls::InsecureLoopbackOnly`] turns verification off and
//! is refused for any host that is not a loopback address. Plain `http://` is
//! allowed to loopback hosts only, unless [`Config::allow_plain_http`] is set. Through a
//! [`Config::proxy`], no host counts as loopback.
//!
//! # Logs
//!
//! ureq logs through the `log` crate; at `TRACE` level it logs request and response
//! bytes **unredacted**, including session credentials. Do not enable `TRACE` for
//! `ureq` in production.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod gate;
mod http_client;
mod keep_alive;
mod resolve;
mod scheduler;
mod steady;

pub use client::Client;
pub use http_client::HttpClient;
pub use keep_alive::KeepAlive;
pub use scheduler::{Registration, Scheduler};

broker_session::__transport_root!(broker_session_ureq);
