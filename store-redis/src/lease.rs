//! One owner at a time: a Redis lease with a fencing token.

use std::fmt;
use std::time::{Duration, Instant};

use crate::keys::Keys;
use crate::{Connection, Error};

/// Takes the lease if free: `SET lease "<token>/<nonce>/<owner>" NX PX ttl`, the token
/// from `INCR` on the namespace's fence counter. Atomic, so a token is only spent on
/// success. The random nonce keeps two acquisitions apart even if Redis lost its data
/// and the counter started again.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
local value = token .. '/' .. ARGV[1]
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then return false end
return token
";

/// Extends the lease only while it still holds our value. A lease that is gone
/// altogether while its holder still counts it as valid (`ARGV[3]` = 1) was lost with
/// Redis's data (a restart without persistence, a failover to a replica that had not
/// seen it): nobody else can have held it since, so it is set again with our value.
const RENEW: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if value == false and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease only while it still holds our value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A number that grows with every acquisition of a namespace's lease (from Redis
/// `INCR`). A write carrying an older token than the current owner's is refused
/// ([`GenerationStore::publish`](crate::GenerationStore::publish)), which is what keeps
/// a paused ex-owner from doing harm when it wakes up.
///
/// ```
/// # use broker_session_redis::FencingToken;
/// # fn show(token: FencingToken) {
/// println!("owner since token {token}"); // "owner since token 42"
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The ownership of one namespace (one shared broker login), for `ttl` from the last
/// acquisition or renewal.
///
/// **Renew well before expiry**: at [`Lease::renew_after`] (a third of the TTL) after
/// the last successful renewal, so that two renewals can fail (a slow network, a
/// Redis failover) before the lease lapses. Treat the lease as lost as soon as a
/// renewal says so ([`Error::LeaseLost`]) or [`Lease::expires_by`] has passed: stop
/// refreshing, tickling or publishing at once. Clocks: the local expiry is measured
/// from *before* the request was sent, so it errs on the early side.
///
/// ```no_run
/// use broker_session_redis::{Lease, Redis};
/// use std::time::Duration;
///
/// let mut conn = Redis::open("redis://127.0.0.1:6379/")?.connect()?;
/// let ttl = Duration::from_secs(15);
/// if let Some(mut lease) = Lease::try_acquire(&mut conn, "ig-live-XYZ", "host-a/pid-4711", ttl)? {
///     println!("owner with fencing token {}", lease.token());
///     std::thread::sleep(lease.renew_after());
///     lease.renew(&mut conn)?;
///     lease.release(&mut conn)?;
/// }
/// # Ok::<(), broker_session_redis::Error>(())
/// ```
pub struct Lease {
    keys: Keys,
    owner: String,
    value: String,
    token: FencingToken,
    ttl: Duration,
    expires_by: Instant,
}

impl Lease {
    /// Takes the lease of `namespace` for `owner` (any text naming this process, e.g.
    /// `host/pid`) if nobody holds it. `Ok(None)`: another owner holds it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`], [`Error::InvalidTtl`] (10 ms to 24 h),
    /// [`Error::Randomness`], or [`Error::Redis`].
    pub fn try_acquire(
        conn: &mut Connection,
        namespace: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Self>, Error> {
        let keys = Keys::new(namespace)?;
        let millis = ttl_millis(ttl)?;
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(|_| Error::Randomness)?;
        let suffix = format!("{:016x}/{owner}", u64::from_le_bytes(nonce));
        let sent = Instant::now();
        let token: Option<u64> = conn.run("acquiring the lease", |c| {
            redis::Script::new(ACQUIRE)
                .key(&keys.lease)
                .key(&keys.fence)
                .arg(&suffix)
                .arg(millis)
                .invoke(c)
        })?;
        Ok(token.map(|token| Self {
            value: format!("{token}/{suffix}"),
            owner: owner.to_owned(),
            token: FencingToken(token),
            ttl,
            expires_by: sent + ttl,
            keys,
        }))
    }

    /// Extends the lease by its TTL from now, if it is still ours. A lease Redis no
    /// longer holds at all (its data was lost: a restart without persistence, a
    /// failover to a replica that had not seen the lease) is taken again, as long as
    /// [`Lease::expires_by`] has not passed: until then no other process can have
    /// held it.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when it expired or another owner took it (stop acting as
    /// owner); [`Error::Redis`] when Redis did not answer (retry before
    /// [`Lease::expires_by`]).
    pub fn renew(&mut self, conn: &mut Connection) -> Result<(), Error> {
        let sent = Instant::now();
        let still_ours = if sent < self.expires_by { "1" } else { "0" };
        let renewed: i64 = conn.run("renewing the lease", |c| {
            redis::Script::new(RENEW)
                .key(&self.keys.lease)
                .arg(&self.value)
                .arg(ttl_millis(self.ttl).unwrap_or(10))
                .arg(still_ours)
                .invoke(c)
        })?;
        if renewed == 1 {
            self.expires_by = sent + self.ttl;
            Ok(())
        } else {
            Err(Error::LeaseLost {
                namespace: self.keys.namespace.clone(),
            })
        }
    }

    /// Gives the lease up, if it is still ours. `Ok(false)`: it was not ours anymore.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`]; the lease then lapses after its TTL.
    pub fn release(self, conn: &mut Connection) -> Result<bool, Error> {
        let deleted: i64 = conn.run("releasing the lease", |c| {
            redis::Script::new(RELEASE)
                .key(&self.keys.lease)
                .arg(&self.value)
                .invoke(c)
        })?;
        Ok(deleted == 1)
    }

    /// The fencing token of this acquisition.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The owner text given at acquisition.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.keys.namespace
    }

    /// The lease's duration.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When to renew, counted from the last acquisition or renewal: a third of the TTL.
    pub fn renew_after(&self) -> Duration {
        self.ttl / 3
    }

    /// By this instant the lease has lapsed unless renewed (measured from before the
    /// last successful request was sent, so early rather than late).
    pub fn expires_by(&self) -> Instant {
        self.expires_by
    }

    /// The value the lease holds in Redis while it is ours.
    pub(crate) fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("namespace", &self.keys.namespace)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn ttl_millis(ttl: Duration) -> Result<u64, Error> {
    let millis = ttl.as_millis();
    if (10..=86_400_000).contains(&millis) {
        Ok(millis as u64)
    } else {
        Err(Error::InvalidTtl { millis })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_out_of_range_are_refused() {
        assert_eq!(ttl_millis(Duration::from_millis(10)), Ok(10));
        assert_eq!(ttl_millis(Duration::from_secs(86_400)), Ok(86_400_000));
        for bad in [
            Duration::ZERO,
            Duration::from_millis(9),
            Duration::from_secs(86_401),
        ] {
            assert!(
                matches!(ttl_millis(bad), Err(Error::InvalidTtl { .. })),
                "{bad:?}"
            );
        }
    }
}
