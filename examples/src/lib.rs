//! The embedded fake brokers the runnable examples fall back on when no broker is
//! configured. Nothing else: each example is a program of its own, written against
//! the published crates only (configuration from the environment, `Display` of
//! events), so it can be copied into a project.
//!
//! The examples live beside this crate (`examples/*.rs`) and run with
//! `cargo run --example NAME` from the workspace root.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod embedded;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
