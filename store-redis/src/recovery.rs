//! Followers' requests for a recovery: "the credentials of generation G were refused".
//!
//! Any number of followers may ask about one generation; the first request for it is
//! stored and announced, later ones change nothing, so the owner recovers once.

use std::fmt;

use crate::generation::Subscriber;
use crate::keys::Keys;
use crate::{Connection, Error, MAX_GENERATION, Redis};

/// Stores `ARGV[1]` and announces it, only when it is above the stored request.
const REQUEST: &str = r"
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
";

/// The recovery requests of one namespace (one shared broker login).
///
/// A follower whose credentials of generation `G` were refused calls
/// [`request`](Self::request); the owner learns of it from a subscription
/// ([`subscribe`](Self::subscribe), each notice is
/// [`Notice::Generation(G)`](crate::Notice::Generation)) or by polling
/// [`latest`](Self::latest), and recovers once unless it already holds a generation
/// above `G`. Requests for a generation at or below the highest one asked about are
/// collapsed: `request` returns `false` and announces nothing.
///
/// ```no_run
/// use broker_session_redis::{Redis, RecoveryRequests};
///
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let mut conn = redis.connect()?;
/// let requests = RecoveryRequests::new("ig-live-XYZ")?;
/// let first = requests.request(&mut conn, 4)?;
/// let again = requests.request(&mut conn, 4)?; // another follower, same refusal
/// assert!(first && !again);
/// assert_eq!(requests.latest(&mut conn)?, Some(4));
/// # Ok::<(), broker_session_redis::Error>(())
/// ```
pub struct RecoveryRequests {
    keys: Keys,
}

impl RecoveryRequests {
    /// The requests of `namespace`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`].
    pub fn new(namespace: &str) -> Result<Self, Error> {
        Ok(Self {
            keys: Keys::new(namespace)?,
        })
    }

    /// Asks the owner to recover the credentials of `refused`. `Ok(true)`: this was
    /// the first request for it, announced to the owner; `Ok(false)`: it (or a later
    /// generation) was asked about already.
    ///
    /// # Errors
    ///
    /// [`Error::GenerationOutOfRange`] above [`MAX_GENERATION`], [`Error::Redis`].
    pub fn request(&self, conn: &mut Connection, refused: u64) -> Result<bool, Error> {
        if refused > MAX_GENERATION {
            return Err(Error::GenerationOutOfRange {
                generation: refused,
            });
        }
        let first: i64 = conn.run("asking for a recovery", |c| {
            redis::Script::new(REQUEST)
                .key(&self.keys.recovery)
                .arg(refused)
                .arg(&self.keys.recovery_channel)
                .invoke(c)
        })?;
        Ok(first == 1)
    }

    /// The highest generation a recovery was asked for; `None` if none was.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    pub fn latest(&self, conn: &mut Connection) -> Result<Option<u64>, Error> {
        conn.run("reading the recovery requests", |c| {
            redis::cmd("GET").arg(&self.keys.recovery).query(c)
        })
    }

    /// Starts a [`Subscriber`] to the requests (each notice carries the refused
    /// generation), on its own connection and thread.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when the first subscription fails.
    pub fn subscribe(&self, redis: &Redis) -> Result<Subscriber, Error> {
        Subscriber::start(redis.clone(), self.keys.recovery_channel.clone())
    }
}

impl fmt::Debug for RecoveryRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryRequests")
            .field("namespace", &self.keys.namespace)
            .finish()
    }
}
