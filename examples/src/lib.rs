//! Shared helpers for the runnable examples in this package.
