//! Blocking transport for [`broker_session`] on `ureq`.
//!
//! **Not implemented yet**: this crate is a placeholder in the workspace. Until it
//! lands, drive a [`broker_session::Machine`] with your own HTTP client following the
//! loop described in the `broker_session` crate documentation.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
