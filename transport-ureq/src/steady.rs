//! Socket timeouts that stay put from one read to the next.
//!
//! Every exchange has a deadline (`HttpClient::exchange`), which ureq passes to the
//! socket as the time left: a slightly different value at every read and write, so
//! ureq's TCP transport sets the socket's read or write timeout (a `setsockopt`)
//! before nearly each of them, about 2.5 system calls per request that a client with
//! no deadline does not make. This layer sits right above the TCP socket (below TLS)
//! and hands it the time left rounded down to a whole second (whole when 2 s or more
//! are left, exact below that), so on a healthy connection the value is the same from
//! one request to the next and ureq sets it once per connection.
//!
//! Rounding down never lets a read or write outlast the deadline. A read cut short
//! by the rounding (the rounded time ran out, the real one has not) is simply tried
//! again with what is left, so a read waits as long as the deadline allows, no
//! longer and no shorter. A write cut short cannot be retried (part of it may have
//! been sent): it fails as a timeout at most a second early, after having been
//! blocked for all but that second of its budget.

use std::time::Duration as StdDuration;

use ureq::Error;
use ureq::unversioned::transport::time::Duration;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Below this much time left, the socket gets the exact time left.
const EXACT_BELOW: StdDuration = StdDuration::from_secs(2);

/// The connector that wraps each new connection's socket transport in [`Steady`].
/// Chained right after ureq's TCP connector.
#[derive(Debug, Default)]
pub(crate) struct SteadyTimeouts;

impl<In: Transport> Connector<In> for SteadyTimeouts {
    type Out = Steady<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails<'_>,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        Ok(chained.map(|inner| Steady { inner }))
    }
}

/// A socket transport handed rounded timeouts: see the module's docs.
#[derive(Debug)]
pub(crate) struct Steady<T> {
    inner: T,
}

/// `timeout` with the time left rounded down to whole seconds when at least
/// [`EXACT_BELOW`] is left.
fn rounded(timeout: NextTimeout) -> NextTimeout {
    match timeout.after {
        Duration::Exact(left) if left >= EXACT_BELOW => NextTimeout {
            after: Duration::Exact(StdDuration::from_secs(left.as_secs())),
            ..timeout
        },
        _ => timeout,
    }
}

/// What is left of `timeout` once `spent` of it has passed.
fn less(timeout: NextTimeout, spent: Duration) -> NextTimeout {
    let after = match (timeout.after, spent) {
        (Duration::Exact(left), Duration::Exact(spent)) => {
            Duration::Exact(left.saturating_sub(spent))
        }
        (after, _) => after,
    };
    NextTimeout { after, ..timeout }
}

impl<T: Transport> Transport for Steady<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.inner.transmit_output(amount, rounded(timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let mut left = timeout;
        loop {
            let socket = rounded(left);
            match self.inner.await_input(socket) {
                // Only the rounding ran out (no per-read limit is configured, so a
                // timeout is the deadline's): at least `socket.after` has passed, so
                // at most the difference is left. Try again with that; a read that
                // timed out consumed nothing.
                Err(Error::Timeout(_)) if socket.after != left.after && left.per_read.is_none() => {
                    left = less(left, socket.after);
                    if left.after == Duration::Exact(StdDuration::ZERO) {
                        return Err(Error::Timeout(left.reason));
                    }
                }
                result => return result,
            }
        }
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration;

    fn left(d: StdDuration) -> NextTimeout {
        NextTimeout {
            after: Duration::Exact(d),
            ..NextTimeout::default()
        }
    }

    #[test]
    fn a_long_budget_reaches_the_socket_as_the_same_whole_seconds() {
        let a = rounded(left(StdDuration::from_millis(24_999)));
        let b = rounded(left(StdDuration::from_millis(24_001)));
        assert_eq!(a.after, Duration::Exact(StdDuration::from_secs(24)));
        assert_eq!(a, b, "no new socket timeout between these two reads");
    }

    #[test]
    fn rounding_never_lengthens_and_a_short_budget_stays_exact() {
        for ms in [0, 1, 999, 1_999, 2_000, 2_001, 59_999] {
            let t = left(StdDuration::from_millis(ms));
            let r = rounded(t);
            let (Duration::Exact(r), Duration::Exact(t)) = (r.after, t.after) else {
                panic!("exact in, exact out");
            };
            assert!(r <= t);
            if t < EXACT_BELOW {
                assert_eq!(r, t);
            } else {
                assert!(t - r < StdDuration::from_secs(1));
            }
        }
        assert_eq!(rounded(NextTimeout::default()), NextTimeout::default());
    }

    #[test]
    fn what_is_left_after_a_rounded_read_is_the_difference() {
        let t = left(StdDuration::from_millis(24_700));
        let after = less(t, rounded(t).after);
        assert_eq!(after.after, Duration::Exact(StdDuration::from_millis(700)));
        assert_eq!(rounded(after), after, "the rest is exact");
    }
}
