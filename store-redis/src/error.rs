//! The one error type of this crate. Texts say what happened and what to do; none
//! contains a password, a key or a snapshot.

use std::fmt;

/// What went wrong, and what to do about it.
///
/// ```
/// use broker_session_redis::Error;
///
/// let err = Error::StaleGeneration { stored: 7, attempted: 5 };
/// assert!(err.to_string().contains("generation 5"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The `redis` crate could not read the URL.
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// The `redis` crate's reason, without the password.
        detail: String,
    },
    /// Redis could not be reached or refused a command.
    Redis {
        /// What this crate was doing ("renewing the lease").
        during: &'static str,
        /// The URL, redacted.
        url: String,
        /// The `redis` crate's reason, without the password.
        detail: String,
    },
    /// A namespace was empty, longer than 200 bytes, or held `{`, `}` or control characters.
    InvalidNamespace {
        /// The first 64 characters of the namespace.
        namespace: String,
    },
    /// A lease duration below 10 ms or above a day was asked for.
    InvalidTtl {
        /// The duration asked for, in milliseconds.
        millis: u128,
    },
    /// The lease is no longer held by this owner: it expired, or another process took it.
    LeaseLost {
        /// The namespace of the lease.
        namespace: String,
    },
    /// A publish was fenced off: the writer's lease (and fencing token) is no longer the
    /// current one.
    NotOwner {
        /// The namespace of the lease.
        namespace: String,
    },
    /// A publish was refused: the stored generation is already at least as high.
    StaleGeneration {
        /// The generation in Redis.
        stored: u64,
        /// The generation that was to be written.
        attempted: u64,
    },
    /// A generation of 0 or above [`MAX_GENERATION`](crate::MAX_GENERATION) was given.
    GenerationOutOfRange {
        /// The generation given.
        generation: u64,
    },
    /// The stored snapshot is in clear but this store is configured with a key.
    UnsealedSnapshotRefused {
        /// The namespace of the snapshot.
        namespace: String,
    },
    /// The stored snapshot is sealed but this store is configured to read in clear.
    SealedSnapshotWithoutKey {
        /// The namespace of the snapshot.
        namespace: String,
    },
    /// The sealed snapshot failed authentication: another key, a modified blob, or a
    /// blob moved from another namespace or generation.
    SnapshotUnopenable {
        /// The namespace of the snapshot.
        namespace: String,
        /// The generation it was stored under.
        generation: u64,
    },
    /// The stored data is not a snapshot written by this crate (or by a newer version).
    SnapshotMalformed {
        /// The namespace of the snapshot.
        namespace: String,
    },
    /// The subscriber's background thread has stopped.
    SubscriberStopped,
    /// The operating system's random number generator failed (sealing needs a nonce).
    Randomness,
    /// The broker session of a [`SharedIgSession`](crate::SharedIgSession) failed: its
    /// configuration is unusable, or the owner could not log in.
    Session(broker_session_ureq::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl { url, detail } => write!(
                f,
                "cannot read the Redis URL {url}: {detail}; expected redis://[user:password@]host[:port][/db] \
                 or rediss:// for TLS"
            ),
            Self::Redis {
                during,
                url,
                detail,
            } => write!(
                f,
                "Redis at {url} failed while {during}: {detail}; check the server is reachable and \
                 the credentials in the URL are right (the next call reconnects)"
            ),
            Self::InvalidNamespace { namespace } => write!(
                f,
                "namespace {namespace:?} cannot name Redis keys: use 1 to 200 bytes without '{{', '}}' \
                 or control characters (one namespace per broker login)"
            ),
            Self::InvalidTtl { millis } => write!(
                f,
                "a lease of {millis} ms is out of range: use between 10 ms and 24 h (seconds are typical)"
            ),
            Self::LeaseLost { namespace } => write!(
                f,
                "the lease on {namespace:?} is no longer ours (it expired or another process took it): \
                 stop acting as owner at once, then try_acquire again; renew at lease.renew_after() \
                 to keep it"
            ),
            Self::NotOwner { namespace } => write!(
                f,
                "publish to {namespace:?} refused: this writer's lease and fencing token are no longer \
                 current (another process owns the session, or the lease expired); stop acting as owner \
                 and read the current generation instead"
            ),
            Self::StaleGeneration { stored, attempted } => write!(
                f,
                "publish of generation {attempted} refused: Redis already holds generation {stored}; \
                 generations only go up: read the current one and publish a higher number"
            ),
            Self::GenerationOutOfRange { generation } => write!(
                f,
                "generation {generation} is out of range: use 1 to 2^53 - 1"
            ),
            Self::UnsealedSnapshotRefused { namespace } => write!(
                f,
                "the snapshot of {namespace:?} is stored in clear but this store holds a sealing key: \
                 refused; have the owner publish sealed with the same key, or opt in to Sealing::Unsealed \
                 on both sides"
            ),
            Self::SealedSnapshotWithoutKey { namespace } => write!(
                f,
                "the snapshot of {namespace:?} is sealed but this store has no key (Sealing::Unsealed): \
                 configure Sealing::Sealed with the owner's key"
            ),
            Self::SnapshotUnopenable {
                namespace,
                generation,
            } => write!(
                f,
                "the sealed snapshot of {namespace:?} at generation {generation} does not open with this \
                 key: the key differs from the writer's, or the blob was modified or copied from another \
                 namespace or generation; check every process uses the same key"
            ),
            Self::SnapshotMalformed { namespace } => write!(
                f,
                "the data under {namespace:?} is not a snapshot this version can read: check no other \
                 program writes these keys, and that all processes run the same version"
            ),
            Self::Randomness => write!(
                f,
                "the operating system's random number generator failed; sealing needs it for nonces: \
                 check the platform's entropy source (getrandom)"
            ),
            Self::Session(e) => write!(f, "the shared broker session failed: {e}"),
            Self::SubscriberStopped => write!(
                f,
                "the generation subscriber has stopped: create a new Subscriber, and poll_latest meanwhile"
            ),
        }
    }
}

impl std::error::Error for Error {}
