//! Shared pieces of the broker-session benchmarks: a counting allocator, a
//! record-and-replay driver for the machines, and a description of the machine the
//! figures come from. The benchmarks themselves are under `benches/`; BENCHMARKS.md at
//! the repository root has the figures and the commands.

pub mod alloc;
pub mod replay;
pub mod sys;
