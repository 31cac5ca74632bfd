//! Helpers shared by the runnable examples: the embedded fake brokers, reading the
//! environment, and one printable line per session event (never a secret).
//!
//! The examples themselves live beside this crate (`examples/*.rs`) and run with
//! `cargo run --example NAME` from the workspace root.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod embedded;
pub mod env;
pub mod hold;
pub mod ibkr_run;
pub mod lines;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
