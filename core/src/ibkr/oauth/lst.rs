//! The live session token: derivation from the Diffie-Hellman secret and the prepend,
//! and its check against the broker's signature.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit as _, Mac as _};

use crate::error::CryptoError;
use crate::secret::LiveSessionToken;

use super::hex_encode;

/// LST = base64(HMAC-SHA1(key = K bytes, message = prepend bytes)).
///
/// `k_bytes` must already carry the leading `0x00` rule
/// ([`dh::to_java_bytes`](super::dh::to_java_bytes)); `prepend` is the decrypted access
/// token secret as bytes, not its hex.
pub fn live_session_token(k_bytes: &[u8], prepend: &[u8]) -> LiveSessionToken {
    LiveSessionToken::new(STANDARD.encode(hmac_sha1(k_bytes, prepend)))
}

/// The broker's check value: lowercase hex of HMAC-SHA1(key = base64-decoded LST,
/// message = consumer key). `None` if the LST is not valid base64.
pub fn live_session_token_signature(lst: &LiveSessionToken, consumer_key: &str) -> Option<String> {
    let key = zeroize::Zeroizing::new(STANDARD.decode(lst.expose_secret()).ok()?);
    Some(hex_encode(&hmac_sha1(&key, consumer_key.as_bytes())))
}

/// Checks the locally derived LST against `live_session_token_signature` from the
/// broker (case-insensitive hex).
///
/// # Errors
/// [`CryptoError::LiveSessionTokenMismatch`] when they differ: usually the wrong
/// encryption key or access token secret (decryption cannot tell), or the wrong prime.
pub fn validate_live_session_token(
    lst: &LiveSessionToken,
    consumer_key: &str,
    signature_hex: &str,
) -> Result<(), CryptoError> {
    let expected = live_session_token_signature(lst, consumer_key)
        .ok_or(CryptoError::LiveSessionTokenMismatch)?;
    if constant_time_eq(
        expected.as_bytes(),
        signature_hex.trim().to_ascii_lowercase().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(CryptoError::LiveSessionTokenMismatch)
    }
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
