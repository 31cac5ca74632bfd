//! Credential snapshots by generation: fenced compare-and-set writes, reads, and
//! notifications.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::keys::Keys;
use crate::{Connection, Error, Lease, MAX_GENERATION, Redis, Sealing};

/// Writes the snapshot only while the writer's lease value (token and owner) is the
/// current one and the new generation is higher than the stored one; then announces
/// the generation on the channel. Returns `{status, stored generation}`.
/// A lease that is gone altogether while its holder still counts it as valid
/// (`ARGV[5]`: the milliseconds it has left, else 0) was lost with Redis's data (see
/// `Lease::renew`): it is set again with the holder's value for what it has left.
const PUBLISH: &str = r"
local held = redis.call('GET', KEYS[1])
if held == false and tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
  held = ARGV[1]
end
if held ~= ARGV[1] then return {-1, 0} end
local stored = tonumber(redis.call('HGET', KEYS[2], 'generation') or '0')
if stored >= tonumber(ARGV[2]) then return {-2, stored} end
redis.call('HSET', KEYS[2], 'generation', ARGV[2], 'blob', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, stored}
";

/// The stored generation, and the blob only when newer than `ARGV[1]`.
const LATEST: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if stored <= tonumber(ARGV[1]) then return {stored, false} end
return {stored, redis.call('HGET', KEYS[1], 'blob')}
";

/// How often the subscriber thread looks up from a blocking read to see if it should stop.
const SUBSCRIBER_TICK: Duration = Duration::from_millis(100);

/// One credential snapshot: its generation and its bytes (opened). The bytes are
/// zeroized on drop and never shown by Debug.
pub struct Snapshot {
    generation: u64,
    bytes: Zeroizing<Vec<u8>>,
}

impl Snapshot {
    /// The generation it was published with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The bytes the owner published.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// The snapshots of one namespace (one shared broker login) in Redis.
///
/// Only the lease owner publishes, with generations that only go up; a publish by
/// a writer whose lease is no longer current ([`Error::NotOwner`]) or with a generation
/// not above the stored one ([`Error::StaleGeneration`]) changes nothing. Both checks
/// and the write are one Lua script, so they cannot interleave with another writer.
///
/// If Redis loses its data (a restart without persistence or replication), the stored
/// generation starts again from nothing: fencing still holds (a lease from before is
/// told apart by a random part of its value, not only by its token), but the next
/// owner must publish above the generation followers hold in memory.
///
/// ```no_run
/// use broker_session_redis::{GenerationStore, Lease, Redis, Sealing, SealingKey};
/// use std::time::Duration;
///
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let mut conn = redis.connect()?;
/// let store = GenerationStore::new("ig-live-XYZ", Sealing::Sealed(SealingKey::from_bytes([9; 32])))?;
/// let subscriber = store.subscribe(&redis)?;
/// if let Some(lease) = Lease::try_acquire(&mut conn, "ig-live-XYZ", "host-a/1", Duration::from_secs(15))? {
///     let next = store.current_generation(&mut conn)? + 1;
///     store.publish(&mut conn, &lease, next, b"serialized session snapshot")?;
/// }
/// let mut seen = 0;
/// if subscriber.recv_timeout(Duration::from_secs(1))?.is_some() {
///     if let Some(snapshot) = store.poll_latest(&mut conn, seen)? {
///         seen = snapshot.generation();
///     }
/// }
/// # let _ = seen;
/// # Ok::<(), broker_session_redis::Error>(())
/// ```
pub struct GenerationStore {
    keys: Keys,
    sealing: Sealing,
}

impl GenerationStore {
    /// A store for `namespace`, sealing and opening snapshots as `sealing` says.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`].
    pub fn new(namespace: &str, sealing: Sealing) -> Result<Self, Error> {
        Ok(Self {
            keys: Keys::new(namespace)?,
            sealing,
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.keys.namespace
    }

    /// Seals `snapshot` and writes it as `generation`, if `lease` is still the current
    /// one and `generation` is above the stored one; then announces it to subscribers.
    /// A lease Redis no longer holds at all while [`Lease::expires_by`] has not passed
    /// was lost with Redis's data, and is taken again (as [`Lease::renew`] does).
    ///
    /// # Errors
    ///
    /// [`Error::NotOwner`] (fenced: stop acting as owner), [`Error::StaleGeneration`],
    /// [`Error::GenerationOutOfRange`], [`Error::Randomness`], [`Error::Redis`].
    pub fn publish(
        &self,
        conn: &mut Connection,
        lease: &Lease,
        generation: u64,
        snapshot: &[u8],
    ) -> Result<(), Error> {
        check_generation(generation)?;
        if lease.namespace() != self.keys.namespace {
            return Err(Error::NotOwner {
                namespace: self.keys.namespace.clone(),
            });
        }
        let blob = self
            .sealing
            .seal(&self.keys.namespace, generation, snapshot)?;
        // What the lease has left by this process's clock (0 once it has passed).
        let left = lease
            .expires_by()
            .saturating_duration_since(Instant::now())
            .as_millis();
        let (status, stored): (i64, u64) = conn.run("publishing a snapshot", |c| {
            redis::Script::new(PUBLISH)
                .key(&self.keys.lease)
                .key(&self.keys.snapshot)
                .arg(lease.value())
                .arg(generation)
                .arg(&blob)
                .arg(&self.keys.channel)
                .arg(u64::try_from(left).unwrap_or(u64::MAX))
                .invoke(c)
        })?;
        match status {
            1 => Ok(()),
            -2 => Err(Error::StaleGeneration {
                stored,
                attempted: generation,
            }),
            _ => Err(Error::NotOwner {
                namespace: self.keys.namespace.clone(),
            }),
        }
    }

    /// The stored generation; 0 when nothing was published yet.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    pub fn current_generation(&self, conn: &mut Connection) -> Result<u64, Error> {
        let (stored, _) = self.latest_raw(conn, MAX_GENERATION)?;
        Ok(stored)
    }

    /// The current snapshot, opened; `None` when nothing was published yet.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], and the opening errors: [`Error::UnsealedSnapshotRefused`],
    /// [`Error::SealedSnapshotWithoutKey`], [`Error::SnapshotUnopenable`],
    /// [`Error::SnapshotMalformed`].
    pub fn read(&self, conn: &mut Connection) -> Result<Option<Snapshot>, Error> {
        self.poll_latest(conn, 0)
    }

    /// The current snapshot if its generation is above `last_seen` (one round trip;
    /// the blob is only sent when newer): the periodic check that backs up the
    /// [`Subscriber`], and the re-sync after a [`Notice::Resubscribed`].
    ///
    /// # Errors
    ///
    /// As [`GenerationStore::read`].
    pub fn poll_latest(
        &self,
        conn: &mut Connection,
        last_seen: u64,
    ) -> Result<Option<Snapshot>, Error> {
        let (stored, blob) = self.latest_raw(conn, last_seen.min(MAX_GENERATION))?;
        let Some(blob) = blob else {
            return Ok(None);
        };
        let bytes = self.sealing.open(&self.keys.namespace, stored, &blob)?;
        Ok(Some(Snapshot {
            generation: stored,
            bytes,
        }))
    }

    fn latest_raw(
        &self,
        conn: &mut Connection,
        last_seen: u64,
    ) -> Result<(u64, Option<Vec<u8>>), Error> {
        conn.run("reading the snapshot", |c| {
            redis::Script::new(LATEST)
                .key(&self.keys.snapshot)
                .arg(last_seen)
                .invoke(c)
        })
    }

    /// Starts a [`Subscriber`] to this namespace's generation announcements, on its
    /// own connection and thread. Returns once subscribed, so every publish after this
    /// call is announced to it.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when the first subscription fails.
    pub fn subscribe(&self, redis: &Redis) -> Result<Subscriber, Error> {
        Subscriber::start(redis.clone(), self.keys.channel.clone())
    }
}

impl fmt::Debug for GenerationStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationStore")
            .field("namespace", &self.keys.namespace)
            .field("sealing", &self.sealing)
            .finish()
    }
}

fn check_generation(generation: u64) -> Result<(), Error> {
    if (1..=MAX_GENERATION).contains(&generation) {
        Ok(())
    } else {
        Err(Error::GenerationOutOfRange { generation })
    }
}

/// What a [`Subscriber`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A snapshot of this generation was published.
    Generation(u64),
    /// The subscription was lost (Redis restarted, or the network failed) and is back:
    /// announcements may have been missed, so call
    /// [`GenerationStore::poll_latest`].
    Resubscribed,
}

/// Announcements of new generations, received by pub/sub on a background thread
/// (which reconnects by itself after Redis goes away). Pub/sub is best effort: poll
/// with [`GenerationStore::poll_latest`] now and then as well, and after each
/// [`Notice::Resubscribed`]. Stops its thread when dropped (within a tenth of a second,
/// or the connection timeout while it is reconnecting).
///
/// A follower's loop, keeping the current snapshot in memory:
///
/// ```no_run
/// use broker_session_redis::{GenerationStore, Notice, Redis, Sealing, SealingKey};
/// use std::time::Duration;
///
/// let redis = Redis::open("redis://127.0.0.1:6379/")?;
/// let mut conn = redis.connect()?;
/// let store = GenerationStore::new("ig-live-XYZ", Sealing::Sealed(SealingKey::from_bytes([9; 32])))?;
/// let subscriber = store.subscribe(&redis)?;
/// let mut current = store.read(&mut conn)?; // subscribe first, then read: nothing missed
/// loop {
///     // A notice, or every 30 s regardless: the periodic check.
///     match subscriber.recv_timeout(Duration::from_secs(30))? {
///         Some(Notice::Generation(g)) if current.as_ref().is_some_and(|s| s.generation() >= g) => {}
///         _ => {
///             let seen = current.as_ref().map_or(0, |s| s.generation());
///             if let Some(newer) = store.poll_latest(&mut conn, seen)? {
///                 current = Some(newer); // adopt it
///             }
///         }
///     }
/// #   break;
/// }
/// # Ok::<(), broker_session_redis::Error>(())
/// ```
pub struct Subscriber {
    notices: mpsc::Receiver<Notice>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Subscriber {
    pub(crate) fn start(redis: Redis, channel: String) -> Result<Self, Error> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (tx, notices) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("broker-session-redis-subscriber".into())
                .spawn(move || listen(&redis, &channel, &stop, &tx, ready_tx))
                .map_err(|_| Error::SubscriberStopped)?
        };
        let subscriber = Self {
            notices,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(subscriber),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::SubscriberStopped),
        }
    }

    /// The next notice, waiting up to `timeout`; `Ok(None)` when none came.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriberStopped`] if the background thread ended.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Notice>, Error> {
        match self.notices.recv_timeout(timeout) {
            Ok(notice) => Ok(Some(notice)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::SubscriberStopped),
        }
    }

    /// A notice if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// [`Error::SubscriberStopped`] if the background thread ended.
    pub fn try_recv(&self) -> Result<Option<Notice>, Error> {
        match self.notices.try_recv() {
            Ok(notice) => Ok(Some(notice)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(Error::SubscriberStopped),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

/// The subscriber thread: subscribe, forward announcements, resubscribe after errors.
fn listen(
    redis: &Redis,
    channel: &str,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Notice>,
    ready: mpsc::SyncSender<Result<(), Error>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let subscribed = redis.raw_connection("subscribing").and_then(|mut conn| {
            let mut pubsub = conn.as_pubsub();
            pubsub
                .subscribe(channel)
                .and_then(|()| pubsub.set_read_timeout(Some(SUBSCRIBER_TICK)))
                .map_err(|e| redis.error("subscribing", &e))?;
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Ok(()));
                }
                None => {
                    if tx.send(Notice::Resubscribed).is_err() {
                        return Ok(());
                    }
                }
            }
            backoff = Duration::from_millis(50);
            while !stop.load(Ordering::Relaxed) {
                match pubsub.get_message() {
                    Ok(msg) => {
                        let generation = std::str::from_utf8(msg.get_payload_bytes())
                            .ok()
                            .and_then(|g| g.parse().ok());
                        if let Some(generation) = generation
                            && tx.send(Notice::Generation(generation)).is_err()
                        {
                            return Ok(());
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(redis.error("listening for generations", &e)),
                }
            }
            Ok(())
        });
        if let Err(e) = subscribed {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(e));
                return;
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
