//! # broker-session
//!
//! Sans-IO session management for brokers' web APIs: IG Markets (REST v1/v2/v3
//! sessions) and Interactive Brokers (Client Portal Gateway and OAuth 1.0a).
//!
//! This crate does no IO. It turns what you want (log in, refresh, switch account,
//! tickle, log out) into [`http::Request`] values, and turns the [`http::Response`]
//! values you hand back into state transitions and events. Time comes in as a [`Now`]
//! argument and randomness from a seed in the configuration, so every run is
//! reproducible. The transports `broker-session-ureq` (blocking) and
//! `broker-session-hyper` (async) run the loop for you.
//!
//! ## The loop
//!
//! Every machine implements [`Machine`]:
//!
//! 1. [`Machine::submit`] an intent; it returns an [`OpId`].
//! 2. Call [`Machine::poll_output`] until it returns [`Output::Wait`]:
//!    - [`Output::Send`]: send the request, then [`Machine::handle_input`] the
//!      response ([`Input::Response`]) or failure ([`Input::Failed`]);
//!    - [`Output::Event`]: state changes, [`Event::Completed`] with each operation's
//!      typed result, [`Event::SessionLost`];
//!    - [`Output::Wait`]: sleep until the instant (always in the future), then
//!      `handle_input(Input::Timeout, now)`.
//! 3. For your own API calls, [`Machine::authorize`] stamps the session's
//!    credentials on the request and [`Machine::observe`] learns from the response
//!    (a 401 starts one recovery, a throttling answer a back-off).
//!
//! The rules the steps above rely on:
//!
//! - **Poll after every call that can change the machine**: after `submit`,
//!   `handle_input`, and also after `authorize` and `observe`, which can start work
//!   (a recovery after a 401, a refresh that falls due).
//! - **`Output::Wait(None)`** means no timer is set: the machine moves on only when
//!   you give it input (a submit, a response, an application request). Do not feed
//!   `Input::Timeout` then; sleep until your application has something to do.
//! - **`now.mono` must be monotonic**: it never goes backwards between calls. Take it
//!   from [`std::time::Instant`], never from a wall clock; the wall-clock half of
//!   [`Now`] is read only for what brokers express in dates.
//!
//! The whole loop, for any machine and any blocking HTTP client:
//!
//! ```
//! use broker_session::{Event, Input, Machine, Now, Output, TransportFailure, http};
//! use std::time::Instant;
//!
//! type Exchange<'a> = dyn FnMut(http::Request<Vec<u8>>)
//!     -> Result<http::Response<Vec<u8>>, TransportFailure> + 'a;
//!
//! /// Runs `intent` to its end; `None` if the machine went idle without finishing it.
//! fn run<M: Machine>(
//!     machine: &mut M,
//!     intent: M::Intent,
//!     now: &dyn Fn() -> Now,
//!     exchange: &mut Exchange<'_>,
//!     sleep_until: &dyn Fn(Instant),
//! ) -> Option<Result<M::Outcome, broker_session::Error>> {
//!     let op = match machine.submit(intent, now()) {
//!         Ok(op) => op,
//!         Err(refused) => return Some(Err(refused.into())),
//!     };
//!     loop {
//!         match machine.poll_output(now()) {
//!             Output::Send(t) => {
//!                 let input = match exchange(t.request) {
//!                     Ok(response) => Input::Response { id: t.id, response },
//!                     Err(failure) => Input::Failed { id: t.id, failure },
//!                 };
//!                 machine.handle_input(input, now());
//!             }
//!             Output::Event(Event::Completed { op: done, result }) if done == op => {
//!                 return Some(result);
//!             }
//!             Output::Event(other) => println!("{other:?}"), // report it
//!             Output::Wait(Some(at)) => {
//!                 sleep_until(at);
//!                 machine.handle_input(Input::Timeout, now());
//!             }
//!             // Idle: with every exchange done in place, nothing can finish it now.
//!             Output::Wait(None) => return None,
//!             _ => {}
//!         }
//!     }
//! }
//!
//! // Driven here against a canned IG answer, on a clock that stands still.
//! # use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgOutcome, IgSession};
//! # use std::time::{Duration, SystemTime};
//! let start = Now::new(Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
//! let config = IgConfig::new(IgEnvironment::Demo, "api-key", "user", "password");
//! let mut ig = IgSession::new(config, broker_session::RngSeed::from_u64(1), start).unwrap();
//! let mut canned = |_request: http::Request<Vec<u8>>| {
//!     Ok(http::Response::builder()
//!         .status(200)
//!         .header("CST", "cst-token")
//!         .header("X-SECURITY-TOKEN", "xst-token")
//!         .body(br#"{"currentAccountId":"ABC123","lightstreamerEndpoint":"https://x.test"}"#.to_vec())
//!         .unwrap())
//! };
//! let outcome = run(&mut ig, IgIntent::Login, &|| start, &mut canned, &|_| {});
//! assert!(matches!(outcome, Some(Ok(IgOutcome::LoggedIn(_)))));
//! ```
//!
//! Writing a transport of your own? [`driver::Driver`] keeps the bookkeeping around
//! the loop (due timers, requests in flight, results of awaited operations, a bounded
//! event buffer), and [`transport`] holds what both bundled transports share beyond
//! it (the application-call sub-machine, typed operations, settings, one error type),
//! so that only locking, sockets and clocks are left to write.
//!
//! Every event, state and outcome prints as one short line with `Display`
//! (`op#2 done: access token refreshed`, `state: active on ABC123 (OAuth tokens)`),
//! never showing a secret. Configurations can be read from the `IG_*` and `IBKR_*`
//! environment variables: the table is in [`env`](mod@env).
//!
//! This crate re-exports [`http`], whose `Request` and `Response` are in its API:
//! `use broker_session::http;` needs no `http` dependency of your own and cannot pick
//! another version.
//!
//! With the `tracing` feature, every request the machines emit (method and path) and
//! every event (through its redacting `Debug`) is traced; no secret ever is.
//!
//! ## Example: an IG v2 login, driven by hand
//!
//! A transport does this loop for you; here canned responses stand in for IG.
//!
//! ```
//! use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgOutcome, IgSession};
//! use broker_session::{Event, Input, Machine, Now, Output, RngSeed, http};
//! use std::time::{Duration, Instant, SystemTime};
//!
//! let config = IgConfig::builder(IgEnvironment::Demo)
//!     .api_key("api-key")
//!     .identifier("user")
//!     .password("password")
//!     .build()
//!     .unwrap();
//! let mut now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
//! let mut ig = IgSession::new(config, RngSeed::from_u64(1), now).unwrap();
//! let login = ig.submit(IgIntent::Login, now).unwrap();
//!
//! // 1. The machine asks for `POST /session` (Version 2).
//! let Output::Send(t) = ig.poll_output(now) else { panic!("expected a request") };
//! assert_eq!(t.request.uri(), "https://demo-api.ig.com/gateway/deal/session");
//! assert_eq!(t.request.headers()["Version"], "2");
//!
//! // 2. IG answers with the tokens in headers and the account in the body.
//! let response = http::Response::builder()
//!     .status(200)
//!     .header("CST", "cst-token")
//!     .header("X-SECURITY-TOKEN", "xst-token")
//!     .body(br#"{"currentAccountId":"ABC123","lightstreamerEndpoint":"https://demo-apd.marketdatasystems.com"}"#.to_vec())
//!     .unwrap();
//! now = now + Duration::from_millis(80);
//! ig.handle_input(Input::Response { id: t.id, response }, now);
//!
//! // 3. Drain the output until the machine waits: the login completed.
//! let mut account = None;
//! loop {
//!     match ig.poll_output(now) {
//!         Output::Event(Event::Completed { op, result: Ok(IgOutcome::LoggedIn(info)) }) if op == login => {
//!             account = Some(info.account_id);
//!         }
//!         Output::Event(_) => {}
//!         Output::Send(_) => panic!("nothing more to send"),
//!         Output::Wait(_) => break,
//!         _ => {}
//!     }
//! }
//! assert_eq!(account.as_deref(), Some("ABC123"));
//!
//! // 4. Your own request gets the session's credentials (marked sensitive).
//! let mut request = http::Request::get("https://demo-api.ig.com/gateway/deal/accounts")
//!     .header("Version", "1")
//!     .body(Vec::<u8>::new())
//!     .unwrap();
//! let stamp = ig.authorize(&mut request, now).unwrap();
//! assert_eq!(request.headers()["CST"], "cst-token");
//! assert!(request.headers()["X-SECURITY-TOKEN"].is_sensitive());
//! assert!(format!("{:?}", request.headers()).find("xst-token").is_none());
//!
//! // 5. And learns from its response (a 401 would start one re-login).
//! let ok = http::Response::builder().status(200).body(Vec::<u8>::new()).unwrap();
//! assert_eq!(ig.observe(&ok, stamp, now), broker_session::Observation::Accepted);
//!
//! // Credentials never go to another host.
//! let mut foreign = http::Request::get("https://example.com/accounts").body(()).unwrap();
//! assert!(ig.authorize(&mut foreign, now).is_err());
//! ```
//!
//! How a broker module is laid out, and how to add one: `ARCHITECTURE.md` (repository root).
// Where other crates' docs link for this crate's items when its own docs are not
// built beside theirs (`cargo doc --no-deps -p broker-session-ureq`); without it those
// links render as plain text. Keep the version in step with Cargo.toml.
#![doc(html_root_url = "https://docs.rs/broker-session/0.1.0")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;
mod failure;
mod machine;
mod plain_json;
mod rng;
pub mod secret;
mod time;
mod uris;
mod wire;

pub mod ibkr;
pub mod ig;

pub mod driver;
pub mod env;
pub mod transport;

pub use error::{ActionRequired, ApiError, CryptoError, Error, ProtocolError, UsageError};
pub use failure::{FailureKind, TransportFailure};
pub use machine::{
    AuthStamp, AuthorizeError, Event, Input, MAX_BODY, Machine, Observation, OpId, Output,
    RequestId, RngSeed, Transmit,
};
pub use time::{Now, deadline_after};

/// The `http` crate, whose `Request`, `Response` and `HeaderValue` appear in this
/// crate's API: `use broker_session::http;` instead of a dependency of your own, so
/// the versions always match.
///
/// ```
/// use broker_session::http;
/// let request = http::Request::get("https://demo-api.ig.com/gateway/deal/accounts")
///     .header("Version", "1")
///     .body(Vec::<u8>::new())
///     .unwrap();
/// assert_eq!(request.method(), http::Method::GET);
/// ```
pub use http;
