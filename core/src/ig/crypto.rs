//! IG's encrypted-password login: the password is RSA-encrypted with a key IG hands out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::{Pkcs1v15Encrypt, PublicKey};
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::rng::SessionRng;
use crate::secret::Password;

/// Encrypts a password the way IG's official samples do:
/// `Base64(RSA-PKCS#1-v1.5(key, Base64(UTF-8(password + "|" + timeStamp))))`.
///
/// `key_b64` is the `encryptionKey` of `GET /session/encryptionKey` (base64 DER
/// SubjectPublicKeyInfo), `time_stamp` its `timeStamp`. The padding comes from `rng`,
/// the session's seeded generator. Send the result as `password` with
/// `encryptedPassword: true` on a v2 login.
///
/// # Errors
/// [`CryptoError::InvalidKey`] if the key does not parse; [`CryptoError::Encrypt`] if
/// the message is too long for the key (a password of more than about 160 bytes with
/// a 2048-bit key).
pub fn encrypt_password(
    rng: &mut SessionRng,
    key_b64: &str,
    time_stamp: i64,
    password: &Password,
) -> Result<Password, CryptoError> {
    let invalid = CryptoError::InvalidKey {
        which: "IG encryptionKey",
    };
    let der = B64.decode(key_b64.trim()).map_err(|_| invalid.clone())?;
    let key = PublicKey::from_public_key_der(&der).map_err(|_| invalid)?;
    let plain = Zeroizing::new(format!("{}|{time_stamp}", password.expose_secret()));
    let inner = Zeroizing::new(B64.encode(plain.as_bytes()));
    let ct = key
        .encrypt(rng, Pkcs1v15Encrypt, inner.as_bytes())
        .map_err(|e| CryptoError::Encrypt {
            reason: match e {
                rsa::Error::MessageTooLong => "password too long for the key",
                _ => "the key or the random generator was refused",
            },
        })?;
    Ok(Password::new(B64.encode(ct)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::RngSeed;
    use crate::rng::session_rng;
    use rsa::PrivateKey;
    use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};

    const PEM: &str = include_str!("../../../tests/fixtures/ig_encryption_key.pem");

    fn keys() -> (PrivateKey, String) {
        let sk = PrivateKey::from_pkcs8_pem(PEM).unwrap();
        let der = sk.to_public_key().to_public_key_der().unwrap();
        (sk, B64.encode(der.as_bytes()))
    }

    #[test]
    fn round_trip_has_inner_base64_and_time_stamp() {
        let (sk, pk) = keys();
        let mut rng = session_rng(&RngSeed::from_u64(3));
        let ct =
            encrypt_password(&mut rng, &pk, 1_601_218_928_621, &Password::new("pä$s")).unwrap();
        let raw = B64.decode(ct.expose_secret()).unwrap();
        assert_eq!(raw.len(), 256);
        let inner = sk.decrypt(Pkcs1v15Encrypt, &raw).unwrap();
        let plain = B64.decode(&inner).unwrap();
        assert_eq!(plain, "pä$s|1601218928621".as_bytes());
        // Same seed, same bytes: the padding comes from the session's generator only.
        let mut rng2 = session_rng(&RngSeed::from_u64(3));
        let ct2 =
            encrypt_password(&mut rng2, &pk, 1_601_218_928_621, &Password::new("pä$s")).unwrap();
        assert_eq!(ct, ct2);
    }

    #[test]
    fn bad_keys_and_long_passwords_are_typed_errors() {
        let (_, pk) = keys();
        let mut rng = session_rng(&RngSeed::from_u64(3));
        assert!(matches!(
            encrypt_password(&mut rng, "not base64!", 1, &Password::new("p")),
            Err(CryptoError::InvalidKey { .. })
        ));
        assert!(matches!(
            encrypt_password(&mut rng, "AAAA", 1, &Password::new("p")),
            Err(CryptoError::InvalidKey { .. })
        ));
        let long = "x".repeat(300);
        assert!(matches!(
            encrypt_password(&mut rng, &pk, 1, &Password::new(long)),
            Err(CryptoError::Encrypt { .. })
        ));
    }
}
