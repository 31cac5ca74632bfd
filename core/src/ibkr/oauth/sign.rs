//! RSA keys, the RSA-SHA256 signature of the live session token request, the
//! decryption of the access token secret, and HMAC-SHA256 request signatures.
//!
//! Only the explicit-RNG forms of the `rsa` crate are used: the RNG blinds the private
//! key operations (it never changes their output) and no OS randomness is read.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit as _, Mac as _};
use rand_core::TryCryptoRng;
use rsa::PrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;

use crate::error::CryptoError;
use crate::secret::SecretBytes;

/// Parses an RSA private key from PEM, in either PKCS#1 (`BEGIN RSA PRIVATE KEY`) or
/// PKCS#8 (`BEGIN PRIVATE KEY`) form. `which` names the key in the error.
///
/// # Errors
/// [`CryptoError::InvalidKey`] when neither form parses (the error never holds the PEM).
pub fn parse_private_key(pem: &str, which: &'static str) -> Result<PrivateKey, CryptoError> {
    let pem = pem.trim();
    let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        PrivateKey::from_pkcs1_pem(pem).ok()
    } else {
        PrivateKey::from_pkcs8_pem(pem).ok()
    };
    key.ok_or(CryptoError::InvalidKey { which })
}

/// Decrypts the base64 access token secret with the private encryption key
/// (RSAES-PKCS1-v1_5). The result's lowercase hex is the "prepend".
///
/// With `rsa` 0.10 a wrong key does not fail here (implicit rejection yields a
/// synthetic plaintext): the live session token signature check is what catches it.
///
/// # Errors
/// [`CryptoError::InvalidKey`] for bad base64, [`CryptoError::Decrypt`] when the RSA
/// operation fails (wrong ciphertext length, say).
pub fn decrypt_access_token_secret<R: TryCryptoRng + ?Sized>(
    key: &PrivateKey,
    rng: &mut R,
    access_token_secret_b64: &str,
) -> Result<SecretBytes, CryptoError> {
    let ciphertext = STANDARD
        .decode(access_token_secret_b64.trim())
        .map_err(|_| CryptoError::InvalidKey {
            which: "IBKR access token secret (base64)",
        })?;
    key.pkcs1v15_decrypt_with_rng(rng, &ciphertext)
        .map(SecretBytes::new)
        .map_err(|_| CryptoError::Decrypt)
}

/// RSASSA-PKCS1-v1_5 with SHA-256 over the UTF-8 base string; standard base64 with
/// padding (not yet percent-encoded).
///
/// # Errors
/// [`CryptoError::Sign`] when the private operation fails.
pub fn rsa_sha256_signature<R: TryCryptoRng + ?Sized>(
    key: &PrivateKey,
    rng: &mut R,
    base_string: &str,
) -> Result<String, CryptoError> {
    key.pkcs1v15_sign_with_rng::<sha2::Sha256, _>(rng, base_string.as_bytes())
        .map(|sig| STANDARD.encode(sig))
        .map_err(|_| CryptoError::Sign)
}

/// HMAC-SHA256 keyed with the decoded live session token over the UTF-8 base string;
/// standard base64 with padding (not yet percent-encoded).
pub fn hmac_sha256_signature(lst_key: &[u8], base_string: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(lst_key) else {
        return String::new();
    };
    mac.update(base_string.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}
