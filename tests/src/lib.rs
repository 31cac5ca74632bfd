//! Test kit for `broker-session`: fake brokers and a virtual-clock harness.
//!
//! - [`sim`]: runs any [`Machine`](broker_session::Machine) against any
//!   [`FakeBroker`](sim::FakeBroker) in memory, with a virtual clock, so hours of
//!   session life run in milliseconds.
//! - [`ig`]: a fake IG Markets REST broker, strict the way IG is.
//! - [`ibkr`]: a fake Interactive Brokers broker (gateway and OAuth 1.0a modes).
//! - [`server`]: serves any fake over real HTTP and HTTPS on loopback.
//! - [`secret_scan`]: finds issued secrets in captured output, in any encoding.
//! - [`faults`]: generated fault plans and a fault-injecting, request-recording
//!   broker wrapper for your own property tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ibkr;
pub mod ig;
pub mod secret_scan;
pub mod server;
pub mod sim;

pub mod faults;
