//! Time as an argument: the core never reads a clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The current time, handed to every mutating call of a [`Machine`](crate::Machine).
///
/// `mono` drives timers (refresh deadlines, keep-alive ticks, back-off); `wall` is
/// needed for OAuth timestamps and for turning the brokers' epoch expiry stamps into
/// deadlines. Transports fill it from the OS clocks; tests fill it from a virtual clock.
///
/// ```
/// use broker_session::Now;
/// use std::time::{Duration, Instant, SystemTime};
///
/// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_489_500));
/// assert_eq!(now.unix_seconds(), 1_714_489_500);
/// let later = now + Duration::from_secs(60);
/// assert_eq!(later.unix_seconds(), 1_714_489_560);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: every deadline the core reports is an `Instant` on this clock.
    pub mono: Instant,
    /// Wall-clock time: used for OAuth timestamps and epoch expiry stamps.
    pub wall: SystemTime,
}

impl Now {
    /// Bundles a monotonic and a wall-clock reading taken at the same moment.
    pub fn new(mono: Instant, wall: SystemTime) -> Self {
        Self { mono, wall }
    }

    /// Seconds since the Unix epoch (0 for a wall time before the epoch).
    pub fn unix_seconds(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Milliseconds since the Unix epoch (negative before the epoch).
    pub fn unix_millis(&self) -> i64 {
        match self.wall.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// The monotonic instant at which the wall clock will show `epoch_millis`,
    /// assuming both clocks advance together. A stamp in the past maps to `self.mono`.
    pub fn instant_at_epoch_millis(&self, epoch_millis: i64) -> Instant {
        let ahead = epoch_millis.saturating_sub(self.unix_millis());
        if ahead <= 0 {
            self.mono
        } else {
            // A stamp centuries ahead must not overflow `Instant`.
            let ahead = Duration::from_millis(u64::try_from(ahead).unwrap_or(u64::MAX));
            self.mono
                .checked_add(ahead)
                .unwrap_or_else(|| deadline_after(self.mono, Duration::MAX))
        }
    }

    /// The monotonic instant `by` from now, saturating far in the future instead of
    /// overflowing (see [`deadline_after`]).
    pub fn after(&self, by: Duration) -> Instant {
        deadline_after(self.mono, by)
    }
}

/// `at + by`, but never panicking: a duration that would overflow `Instant` (such as
/// `Duration::MAX` from a configuration, or a server's absurd expiry) gives an instant
/// about a century ahead, which no timer ever reaches in practice.
///
/// Every deadline in the workspace is computed with this (or with `checked_add`), never
/// with `Instant + Duration`, which panics on overflow.
///
/// ```
/// use broker_session::deadline_after;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// assert_eq!(deadline_after(t0, Duration::from_secs(5)), t0 + Duration::from_secs(5));
/// assert!(deadline_after(t0, Duration::MAX) > t0); // no panic
/// ```
pub fn deadline_after(at: Instant, by: Duration) -> Instant {
    if let Some(t) = at.checked_add(by) {
        return t;
    }
    // Halve the step until it fits: the largest representable instant is platform
    // specific, and a century is enough for "never".
    let mut step = Duration::from_secs(100 * 365 * 24 * 3600).min(by);
    loop {
        if let Some(t) = at.checked_add(step) {
            return t;
        }
        step /= 2;
        if step.is_zero() {
            return at;
        }
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Self;

    /// Saturates instead of panicking (see [`deadline_after`]); the wall clock
    /// stays put if it would overflow.
    fn add(self, rhs: Duration) -> Self {
        Self {
            mono: deadline_after(self.mono, rhs),
            wall: self.wall.checked_add(rhs).unwrap_or(self.wall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant to start from
    fn epoch_millis_maps_to_future_instant() {
        let now = Now::new(Instant::now(), UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(now.unix_millis(), 1_000_000);
        assert_eq!(
            now.instant_at_epoch_millis(1_005_000),
            now.mono + Duration::from_secs(5)
        );
        assert_eq!(now.instant_at_epoch_millis(10), now.mono);
        // Far future does not panic.
        assert!(now.instant_at_epoch_millis(i64::MAX) > now.mono);
        assert!(deadline_after(now.mono, Duration::MAX) > now.mono);
        assert!((now + Duration::MAX).mono > now.mono);
    }
}
