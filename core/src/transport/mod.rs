//! What both bundled transports decide alike, as values and pure functions: their
//! settings and the rules applied before any IO ([`Config`], [`Tls`], [`Policy`]),
//! their one error type ([`Error`]), the application-call sub-machine ([`Call`]) and
//! the typed broker operations ([`ops`]).
//!
//! A transport built on these keeps only what is its own: locks and wake-ups,
//! threads or tasks, sockets, TLS and clocks. `broker-session-ureq` and
//! `broker-session-hyper` re-export [`Config`], [`Tls`] and [`Error`] as their own.

mod call;
mod config;
mod error;
pub mod ops;
mod root;

pub use call::{Call, CallInput, CallStep, clone_request, resolve};
pub use config::{
    Config, DEADLINE_MARGIN, Policy, Tls, explain, is_loopback, no_connection_slot, origin,
};
pub use error::Error;
