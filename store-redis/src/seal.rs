//! Sealing snapshots at rest: XChaCha20-Poly1305 under a key the user provides.
//!
//! Blob layout: `BSR1`, a mode byte (0 = clear, 1 = XChaCha20-Poly1305), then the
//! plaintext (clear) or a 24-byte random nonce and the ciphertext with its 16-byte tag.
//! The associated data is `broker-session-redis/v1`, the namespace (length-prefixed)
//! and the generation, so a sealed blob only opens where it was written.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;

const MAGIC: &[u8; 4] = b"BSR1";
const MODE_CLEAR: u8 = 0;
const MODE_XCHACHA: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// A 32-byte XChaCha20-Poly1305 key. Zeroized on drop; Debug shows `SealingKey(***)`.
///
/// Every process of a fleet needs the same key; keep it where you keep the broker
/// credentials (not in Redis).
///
/// ```
/// use broker_session_redis::SealingKey;
///
/// let key = SealingKey::from_bytes([0x42; 32]);
/// assert_eq!(format!("{key:?}"), "SealingKey(***)");
/// assert!(SealingKey::from_slice(&[1, 2, 3]).is_none());
/// ```
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// Takes the key's bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Copies a key from a slice; `None` unless it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// A new random key from the operating system.
    ///
    /// # Errors
    ///
    /// [`Error::Randomness`] when the OS generator fails.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| Error::Randomness)?;
        Ok(Self(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.0).expect("a 32-byte key fits XChaCha20-Poly1305")
    }
}

/// A copy for another session of the fleet (each copy is zeroized when dropped).
impl Clone for SealingKey {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl Drop for SealingKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(***)")
    }
}

/// How snapshots are stored: sealed under a key (the default to choose), or in clear
/// after an explicit opt-in. A store configured sealed refuses a blob in clear, and
/// the other way round.
///
/// ```
/// use broker_session_redis::{Sealing, SealingKey};
///
/// let sealed = Sealing::Sealed(SealingKey::from_bytes([1; 32]));
/// // In clear: anyone who can read the Redis keys can act as the broker account.
/// let clear = Sealing::Unsealed { i_understand_tokens_are_stored_in_clear: () };
/// assert_ne!(format!("{sealed:?}"), format!("{clear:?}"));
/// ```
#[non_exhaustive]
pub enum Sealing {
    /// XChaCha20-Poly1305 under this key.
    Sealed(SealingKey),
    /// In clear. Broker tokens in Redis can then be read by anyone with access to
    /// Redis (or to its backups): use only where that is acceptable.
    Unsealed {
        /// The opt-in.
        i_understand_tokens_are_stored_in_clear: (),
    },
}

impl fmt::Debug for Sealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sealed(key) => f.debug_tuple("Sealed").field(key).finish(),
            Self::Unsealed { .. } => f.write_str("Unsealed"),
        }
    }
}

fn associated_data(namespace: &str, generation: u64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(40 + namespace.len());
    ad.extend_from_slice(b"broker-session-redis/v1");
    ad.extend_from_slice(
        &u32::try_from(namespace.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    ad.extend_from_slice(namespace.as_bytes());
    ad.extend_from_slice(&generation.to_be_bytes());
    ad
}

impl Sealing {
    /// Seals `plaintext` as the snapshot of `namespace` at `generation`.
    pub(crate) fn seal(
        &self,
        namespace: &str,
        generation: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut blob = Vec::with_capacity(5 + NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(MAGIC);
        match self {
            Self::Unsealed { .. } => {
                blob.push(MODE_CLEAR);
                blob.extend_from_slice(plaintext);
            }
            Self::Sealed(key) => {
                let mut nonce = [0u8; NONCE_LEN];
                getrandom::getrandom(&mut nonce).map_err(|_| Error::Randomness)?;
                let aad = associated_data(namespace, generation);
                let sealed = key
                    .cipher()
                    .encrypt(
                        &XNonce::from(nonce),
                        Payload {
                            msg: plaintext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::SnapshotMalformed {
                        namespace: namespace.to_owned(),
                    })?;
                blob.push(MODE_XCHACHA);
                blob.extend_from_slice(&nonce);
                blob.extend_from_slice(&sealed);
            }
        }
        Ok(blob)
    }

    /// Opens the blob stored as the snapshot of `namespace` at `generation`.
    pub(crate) fn open(
        &self,
        namespace: &str,
        generation: u64,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let malformed = || Error::SnapshotMalformed {
            namespace: namespace.to_owned(),
        };
        let body = blob.strip_prefix(MAGIC).ok_or_else(malformed)?;
        let (&mode, body) = body.split_first().ok_or_else(malformed)?;
        match (self, mode) {
            (Self::Unsealed { .. }, MODE_CLEAR) => Ok(Zeroizing::new(body.to_vec())),
            (Self::Sealed(_), MODE_CLEAR) => Err(Error::UnsealedSnapshotRefused {
                namespace: namespace.to_owned(),
            }),
            (Self::Unsealed { .. }, MODE_XCHACHA) => Err(Error::SealedSnapshotWithoutKey {
                namespace: namespace.to_owned(),
            }),
            (Self::Sealed(key), MODE_XCHACHA) => {
                if body.len() < NONCE_LEN + TAG_LEN {
                    return Err(malformed());
                }
                let (nonce, sealed) = body.split_at(NONCE_LEN);
                let nonce = XNonce::try_from(nonce).map_err(|_| malformed())?;
                let aad = associated_data(namespace, generation);
                key.cipher()
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map(Zeroizing::new)
                    .map_err(|_| Error::SnapshotUnopenable {
                        namespace: namespace.to_owned(),
                        generation,
                    })
            }
            _ => Err(malformed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(byte: u8) -> Sealing {
        Sealing::Sealed(SealingKey::from_bytes([byte; 32]))
    }

    const CLEAR: Sealing = Sealing::Unsealed {
        i_understand_tokens_are_stored_in_clear: (),
    };

    #[test]
    fn round_trip_and_nonces_differ() {
        let s = sealed(1);
        let a = s.seal("ns", 3, b"tokens").unwrap();
        let b = s.seal("ns", 3, b"tokens").unwrap();
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(!a.windows(6).any(|w| w == b"tokens"));
        assert_eq!(&s.open("ns", 3, &a).unwrap()[..], b"tokens");
    }

    #[test]
    fn another_key_generation_or_namespace_does_not_open() {
        let blob = sealed(1).seal("ns", 3, b"tokens").unwrap();
        for (s, ns, generation) in [
            (sealed(2), "ns", 3),
            (sealed(1), "ns", 4),
            (sealed(1), "nt", 3),
        ] {
            assert!(matches!(
                s.open(ns, generation, &blob),
                Err(Error::SnapshotUnopenable { .. })
            ));
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let s = sealed(1);
        let blob = s.seal("ns", 3, b"tokens").unwrap();
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(s.open("ns", 3, &bad).is_err(), "bit {i}");
        }
    }

    #[test]
    fn modes_do_not_mix() {
        let clear_blob = CLEAR.seal("ns", 1, b"tokens").unwrap();
        assert_eq!(&CLEAR.open("ns", 1, &clear_blob).unwrap()[..], b"tokens");
        assert!(matches!(
            sealed(1).open("ns", 1, &clear_blob),
            Err(Error::UnsealedSnapshotRefused { .. })
        ));
        let sealed_blob = sealed(1).seal("ns", 1, b"tokens").unwrap();
        assert!(matches!(
            CLEAR.open("ns", 1, &sealed_blob),
            Err(Error::SealedSnapshotWithoutKey { .. })
        ));
        assert!(matches!(
            CLEAR.open("ns", 1, b"junk"),
            Err(Error::SnapshotMalformed { .. })
        ));
    }

    #[test]
    fn keys_do_not_show() {
        let text = format!("{:?}", sealed(0xAB));
        assert_eq!(text, "Sealed(SealingKey(***))");
    }
}
