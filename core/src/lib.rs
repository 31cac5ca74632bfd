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
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;
mod machine;
mod rng;
pub mod secret;
mod time;
mod wire;

pub mod ibkr;
pub mod ig;

pub use error::{ActionRequired, ApiError, CryptoError, Error, ProtocolError, UsageError};
pub use machine::{
    AuthStamp, AuthorizeError, Event, FailureKind, Input, MAX_BODY, Machine, Observation, OpId,
    Output, RequestId, RngSeed, Transmit, TransportFailure,
};
pub use time::Now;

/// Re-export of the `http` crate whose types appear in this crate's API.
pub use http;
