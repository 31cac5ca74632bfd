//! The machines' seeded random number generator.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::machine::RngSeed;

/// The generator every machine owns: deterministic for a given seed, no OS input.
pub(crate) type SessionRng = StdRng;

pub(crate) fn session_rng(seed: &RngSeed) -> SessionRng {
    StdRng::from_seed(seed.0)
}

/// A session's generator, created from its seed when first drawn from.
///
/// The generator's state is 320 bytes; many sessions never draw (an IG session
/// without the encrypted-password login, an IBKR gateway session), so until then a
/// session keeps only the 32-byte seed. The stream is the one a generator created at
/// once would give.
pub(crate) struct LazyRng {
    seed: RngSeed,
    rng: Option<Box<SessionRng>>,
}

impl LazyRng {
    pub(crate) fn new(seed: &RngSeed) -> Self {
        Self {
            seed: seed.clone(),
            rng: None,
        }
    }

    /// The generator, created on the first call.
    pub(crate) fn get(&mut self) -> &mut SessionRng {
        let seed = &self.seed;
        self.rng.get_or_insert_with(|| Box::new(session_rng(seed)))
    }
}

/// The generator of a session's timer jitter (when to refresh, when to tickle).
///
/// Derived from the session's seed but apart from [`SessionRng`], so that drawing
/// jitter never shifts the stream of nonces and Diffie-Hellman secrets a seeded test
/// reproduces byte for byte. SplitMix64 from a SHA-256 of the seed: eight bytes of
/// state; timer jitter needs no cryptographic strength, only different sessions
/// drawing differently and nothing about the seed showing through.
#[derive(Clone, Debug)]
pub(crate) struct JitterRng(u64);

impl JitterRng {
    pub(crate) fn new(seed: &RngSeed) -> Self {
        // The state comes from a one-way hash of the seed under its own label: the
        // schedule is observable from outside, and must say nothing about the seed,
        // which also keys the nonces and Diffie-Hellman secrets. Label and seed fit
        // in one SHA-256 block with its padding (at most 55 bytes): one compression
        // per session made, instead of two with a longer label.
        use sha2::Digest as _;
        const LABEL: &[u8] = b"bs timer jitter\0";
        const _: () = assert!(LABEL.len() + 32 <= 55);
        let mut h = sha2::Sha256::new();
        h.update(LABEL);
        h.update(seed.0);
        let digest = h.finalize();
        let mut state = [0u8; 8];
        state.copy_from_slice(&digest[..8]);
        Self(u64::from_le_bytes(state))
    }

    fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// A duration drawn uniformly from `[0, max]` (to the nanosecond; durations
    /// beyond `u64::MAX` nanoseconds, about 584 years, are treated as that).
    pub(crate) fn up_to(&mut self, max: Duration) -> Duration {
        let n = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if n == 0 {
            return Duration::ZERO;
        }
        // Multiply-shift maps 64 random bits onto 0..=n without a division.
        let span = u128::from(n) + 1;
        let draw = (u128::from(self.next_u64()) * span) >> 64;
        Duration::from_nanos(u64::try_from(draw).unwrap_or(n))
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_generator_draws_the_same_stream() {
        use rand_core::Rng as _;
        let seed = RngSeed::from_u64(9);
        let mut now = session_rng(&seed);
        let mut lazy = LazyRng::new(&seed);
        for _ in 0..3 {
            assert_eq!(now.next_u64(), lazy.get().next_u64());
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_depends_on_the_seed() {
        let max = Duration::from_secs(5);
        let draws = |n: u64| {
            let mut r = JitterRng::new(&RngSeed::from_u64(n));
            (0..64).map(|_| r.up_to(max)).collect::<Vec<_>>()
        };
        let (a, b) = (draws(1), draws(2));
        assert!(a.iter().chain(&b).all(|d| *d <= max));
        assert_ne!(a, b);
        assert_eq!(a, draws(1));
        // Spread over the range, not stuck at one end.
        assert!(a.iter().any(|d| *d < max / 4) && a.iter().any(|d| *d > max * 3 / 4));
        let mut r = JitterRng::new(&RngSeed::from_u64(3));
        assert_eq!(r.up_to(Duration::ZERO), Duration::ZERO);
        assert!(r.up_to(Duration::MAX) <= Duration::MAX);
    }
}
