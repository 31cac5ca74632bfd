//! One broker session for a fleet of processes, on Redis.
//!
//! Several processes acting for one broker login must not each log in, refresh or
//! tickle on their own. This crate gives them the three pieces a shared session is
//! built from, against a real Redis (single node, or Sentinel/Cluster through the URL):
//!
//! - [`Lease`]: one owner at a time, with a [`FencingToken`] that grows with every
//!   acquisition. The owner renews well before expiry ([`Lease::renew_after`]).
//! - [`GenerationStore`]: the owner publishes each credential snapshot with a
//!   generation number, by compare-and-set: the write lands only while the writer
//!   still holds the lease *and* the generation is higher than the stored one, so a
//!   paused ex-owner can never overwrite a newer generation. Every write is announced
//!   on a pub/sub channel ([`Subscriber`]); [`GenerationStore::poll_latest`] is the
//!   periodic-check fallback.
//! - [`Sealing`]: snapshots are sealed with XChaCha20-Poly1305 under a key you provide
//!   ([`SealingKey`]); the associated data binds the namespace and the generation, so a
//!   blob cannot be replayed under another. Storing in clear is an explicit opt-in.
//!
//! On these, [`SharedIgSession`] shares one IG session between the processes (on the
//! blocking ureq transport): the lease holder leads it and publishes each credential
//! generation; the others follow, adopting each generation, and ask the owner for one
//! recovery when theirs is refused ([`RecoveryRequests`]); a follower takes over a dead
//! owner's session by resuming it, without a new login. [`AsyncSharedIgSession`] (the
//! `async` feature, on by default) is the same on the async hyper transport, for
//! tokio programs. [`SharedIbkrSession`] and [`AsyncSharedIbkrSession`] share one IBKR
//! session the same way: the OAuth live session token, or a gateway's brokerage
//! session, with one process tickling and none ever competing for the brokerage
//! session by itself.
//!
//! Redis is reached through the `redis` crate's synchronous connection, from the
//! caller's thread or the shared session's own threads.
//!
//! ```no_run
//! use broker_session_redis::{GenerationStore, Lease, Redis, Sealing, SealingKey};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), broker_session_redis::Error> {
//! let redis = Redis::open("redis://127.0.0.1:6379/")?;
//! let mut conn = redis.connect()?;
//! let key = SealingKey::from_bytes([7; 32]); // load yours from a secret store
//! let store = GenerationStore::new("ig-demo-ABC123", Sealing::Sealed(key))?;
//!
//! if let Some(mut lease) = Lease::try_acquire(&mut conn, "ig-demo-ABC123", "host-a/4711",
//!                                              Duration::from_secs(15))? {
//!     // ... log in, then share the session:
//!     store.publish(&mut conn, &lease, 1, b"{\"cst\":\"...\"}")?;
//!     lease.renew(&mut conn)?; // every lease.renew_after()
//!     lease.release(&mut conn)?;
//! } else if let Some(snapshot) = store.poll_latest(&mut conn, 0)? {
//!     println!("generation {} is current", snapshot.generation());
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod broker;
mod connection;
mod error;
mod generation;
mod keys;
mod lease;
mod recovery;
mod seal;
mod shared;
mod shared_ibkr;

pub use connection::{Connection, Redis, RedisUrl};
pub use error::Error;
pub use generation::{GenerationStore, Notice, Snapshot, Subscriber};
pub use lease::{FencingToken, Lease};
pub use recovery::RecoveryRequests;
pub use seal::{Sealing, SealingKey};
#[cfg(feature = "async")]
pub use shared::AsyncSharedIgSession;
pub use shared::{FleetEvent, SharedConfig, SharedIgSession};
#[cfg(feature = "async")]
pub use shared_ibkr::AsyncSharedIbkrSession;
pub use shared_ibkr::SharedIbkrSession;

/// The highest generation number: Redis compares generations in Lua, whose numbers are
/// doubles, exact up to 2^53 − 1.
pub const MAX_GENERATION: u64 = (1 << 53) - 1;
