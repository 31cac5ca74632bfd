//! Small collections for the driver's per-request bookkeeping: a machine sends one
//! request at a time, so the common case (none or one) must not allocate.

use std::fmt;

use crate::machine::{RequestId, Transmit};

/// The requests one [`Driver::pump`](super::Driver::pump) produced, in order.
///
/// Usually none or one (a machine sends one request at a time), held without an
/// allocation then. Read it as a slice (`len`, `is_empty`, `iter`, indexing), or
/// take the transmits by value with `into_iter`.
///
/// ```
/// use broker_session::driver::Driver;
/// use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgSession};
/// use broker_session::{Now, RngSeed};
/// use std::time::{Duration, Instant, SystemTime};
///
/// let config = IgConfig::new(IgEnvironment::Demo, "api-key", "user", "password");
/// let now = Now::new(Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
/// let mut driver = Driver::new(IgSession::new(config, RngSeed::from_u64(1), now).unwrap(), 0);
/// driver.submit(IgIntent::Login, now).unwrap();
/// let transmits = driver.pump(now).transmits;
/// assert_eq!(transmits.len(), 1);
/// assert_eq!(transmits[0].request.method(), "POST");
/// for t in transmits {
///     // send `t.request`, then hand the answer to `driver.handle_input`
///     # let _ = t;
/// }
/// ```
pub struct Transmits(Repr);

#[expect(
    clippy::large_enum_variant,
    reason = "the one transmit inline is the point: no allocation per request"
)]
enum Repr {
    Few(Option<Transmit>),
    Many(Vec<Transmit>),
}

impl Transmits {
    /// None.
    pub(crate) const fn new() -> Self {
        Self(Repr::Few(None))
    }

    pub(crate) fn push(&mut self, t: Transmit) {
        match &mut self.0 {
            Repr::Few(slot @ None) => *slot = Some(t),
            Repr::Few(first @ Some(_)) => {
                let first = first.take();
                self.0 = Repr::Many(first.into_iter().chain([t]).collect());
            }
            Repr::Many(all) => all.push(t),
        }
    }

    /// The transmits as a vector (allocates when there is exactly one).
    #[must_use]
    pub fn into_vec(self) -> Vec<Transmit> {
        match self.0 {
            Repr::Few(t) => t.into_iter().collect(),
            Repr::Many(all) => all,
        }
    }
}

impl Default for Transmits {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for Transmits {
    type Target = [Transmit];

    fn deref(&self) -> &[Transmit] {
        match &self.0 {
            Repr::Few(t) => t.as_slice(),
            Repr::Many(all) => all,
        }
    }
}

impl fmt::Debug for Transmits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each transmit's own `Debug` redacts its secrets.
        f.debug_list().entries(self.iter()).finish()
    }
}

impl IntoIterator for Transmits {
    type Item = Transmit;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(match self.0 {
            Repr::Few(t) => Iter::Few(t.into_iter()),
            Repr::Many(all) => Iter::Many(all.into_iter()),
        })
    }
}

impl<'a> IntoIterator for &'a Transmits {
    type Item = &'a Transmit;
    type IntoIter = std::slice::Iter<'a, Transmit>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Transmits> for Vec<Transmit> {
    fn from(t: Transmits) -> Self {
        t.into_vec()
    }
}

/// The transmits of a [`Transmits`], by value and in order.
#[derive(Debug)]
pub struct IntoIter(Iter);

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the one transmit inline is the point: no allocation per request"
)]
enum Iter {
    Few(std::option::IntoIter<Transmit>),
    Many(std::vec::IntoIter<Transmit>),
}

impl Iterator for IntoIter {
    type Item = Transmit;

    fn next(&mut self) -> Option<Transmit> {
        match &mut self.0 {
            Iter::Few(t) => t.next(),
            Iter::Many(all) => all.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Iter::Few(t) => t.size_hint(),
            Iter::Many(all) => all.size_hint(),
        }
    }
}

impl ExactSizeIterator for IntoIter {}

/// The ids of the transmits in flight, in no particular order: one inline, more
/// (which the machines here never have) in a vector. No allocation for the usual
/// one at a time, and no more room than a vector.
#[derive(Debug, Default)]
pub(super) enum InFlight {
    #[default]
    None,
    One(RequestId),
    Many(Vec<RequestId>),
}

impl InFlight {
    pub(super) fn push(&mut self, id: RequestId) {
        match self {
            Self::None => *self = Self::One(id),
            Self::One(first) => *self = Self::Many(vec![*first, id]),
            Self::Many(all) => all.push(id),
        }
    }

    /// Removes `id`; whether it was there.
    pub(super) fn remove(&mut self, id: RequestId) -> bool {
        match self {
            Self::None => false,
            Self::One(one) => {
                let found = *one == id;
                if found {
                    *self = Self::None;
                }
                found
            }
            Self::Many(all) => {
                let Some(i) = all.iter().position(|r| *r == id) else {
                    return false;
                };
                all.swap_remove(i);
                match all.as_slice() {
                    [] => *self = Self::None,
                    [one] => *self = Self::One(*one),
                    _ => {}
                }
                true
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::One(_) => 1,
            Self::Many(all) => all.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant for the deadlines
    fn transmits_keep_their_order_inline_or_not() {
        let deadline = std::time::Instant::now();
        let t = |n: u64| Transmit {
            id: RequestId(n),
            request: http::Request::new(Vec::new()),
            deadline,
        };
        let ids = |t: &Transmits| t.iter().map(|t| t.id.0).collect::<Vec<_>>();
        let mut few = Transmits::new();
        assert!(few.is_empty());
        assert_eq!(few.into_iter().len(), 0);
        few = Transmits::new();
        few.push(t(1));
        assert!(matches!(few.0, Repr::Few(Some(_))), "one is inline");
        assert_eq!(ids(&few), [1]);
        few.push(t(2));
        few.push(t(3));
        assert_eq!(ids(&few), [1, 2, 3]);
        assert_eq!(few[2].id, RequestId(3));
        let mut all = few.into_iter();
        assert_eq!(all.len(), 3);
        assert_eq!(all.next().map(|t| t.id), Some(RequestId(1)));
        assert_eq!(all.map(|t| t.id.0).collect::<Vec<_>>(), [2, 3]);
        let mut one = Transmits::new();
        one.push(t(7));
        assert_eq!(one.into_vec().len(), 1);
    }

    #[test]
    fn in_flight_keeps_one_inline_and_counts_every_id() {
        assert_eq!(size_of::<InFlight>(), size_of::<Vec<RequestId>>());
        let mut f = InFlight::default();
        assert!(!f.remove(RequestId(1)));
        f.push(RequestId(1));
        assert!(matches!(f, InFlight::One(RequestId(1))));
        f.push(RequestId(2));
        f.push(RequestId(3));
        assert_eq!(f.len(), 3);
        assert!(!f.remove(RequestId(9)));
        assert!(f.remove(RequestId(1)));
        assert!(f.remove(RequestId(3)));
        assert!(
            matches!(f, InFlight::One(RequestId(2))),
            "back inline: {f:?}"
        );
        assert!(f.remove(RequestId(2)));
        assert_eq!(f.len(), 0);
        assert!(!f.remove(RequestId(2)));
    }
}
