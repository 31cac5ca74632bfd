//! The machines' seeded random number generator.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::machine::RngSeed;

/// The generator every machine owns: deterministic for a given seed, no OS input.
pub(crate) type SessionRng = StdRng;

pub(crate) fn session_rng(seed: &RngSeed) -> SessionRng {
    StdRng::from_seed(seed.0)
}
