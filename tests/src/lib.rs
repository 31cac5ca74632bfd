//! Test kit for `broker-session`: fake brokers and a virtual-clock harness.
//!
//! - [`sim`]: runs any [`Machine`](broker_session::Machine) against any
//!   [`FakeBroker`](sim::FakeBroker) in memory, with a virtual clock, so hours of
//!   session life run in milliseconds.
//! - [`ig`]: a fake IG Markets REST broker, strict the way IG is.
//! - [`ibkr`]: a fake Interactive Brokers broker (gateway and OAuth 1.0a modes).
//! - [`server`]: serves any fake over real HTTP and HTTPS on loopback.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ibkr;
pub mod ig;
pub mod server;
pub mod sim;
