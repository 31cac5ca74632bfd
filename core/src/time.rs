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
                .unwrap_or_else(|| self.mono + Duration::from_secs(100 * 365 * 24 * 3600))
        }
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        Self {
            mono: self.mono + rhs,
            wall: self.wall + rhs,
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
        let _ = now.instant_at_epoch_millis(i64::MAX);
    }
}
