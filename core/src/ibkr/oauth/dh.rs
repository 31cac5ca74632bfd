//! Diffie-Hellman over the consumer's prime, with constant-time modular
//! exponentiation (crypto-bigint Montgomery forms).

use std::fmt;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd, Resize as _};
use rand_core::Rng;
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::CryptoError;
use crate::secret::SecretBytes;

use super::{hex_decode, hex_encode};

/// Bits of the random Diffie-Hellman exponent `a`.
pub const SECRET_BITS: u32 = 256;

/// A Diffie-Hellman group: the prime `p` and the generator `g`.
#[derive(Clone)]
pub struct DhGroup {
    p: BoxedUint,
    params: BoxedMontyParams,
    g: BoxedUint,
}

impl fmt::Debug for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhGroup")
            .field("prime_bits", &self.p.bit_width())
            .finish_non_exhaustive()
    }
}

impl DhGroup {
    /// A group from the prime, given either as hex (as IBKR's self-service portal
    /// shows it) or as a `-----BEGIN DH PARAMETERS-----` PEM (`openssl dhparam`), and
    /// the generator. A generator inside the PEM takes precedence over `generator`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if the prime does not parse, is even or shorter than
    /// 512 bits; [`CryptoError::DiffieHellman`] for a generator outside `2..p-1`.
    pub fn new(prime: &str, generator: u32) -> Result<Self, CryptoError> {
        const WHICH: CryptoError = CryptoError::InvalidKey {
            which: "IBKR Diffie-Hellman prime",
        };
        let prime = prime.trim();
        let (p_bytes, g) = if prime.starts_with("-----BEGIN") {
            let (_, der) = rsa::pkcs1::der::pem::decode_vec(prime.as_bytes()).map_err(|_| WHICH)?;
            let (p, g) = parse_dh_params_der(&der).ok_or(WHICH)?;
            (p, g.unwrap_or(u64::from(generator)))
        } else {
            let hex = prime.strip_prefix("0x").unwrap_or(prime);
            let hex: String = hex
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            (hex_decode(&hex).ok_or(WHICH)?, u64::from(generator))
        };
        let p = BoxedUint::from_be_slice_vartime(trim_zeros(&p_bytes));
        if p.bit_width() < 512 {
            return Err(WHICH);
        }
        let odd = Odd::new(p.clone()).into_option().ok_or(WHICH)?;
        let params = BoxedMontyParams::new_vartime(odd);
        let g = BoxedUint::from(g)
            .try_resize(p.bits_precision())
            .ok_or(WHICH)?;
        let group = Self { p, params, g };
        if !group.in_open_range(&group.g) {
            return Err(CryptoError::DiffieHellman {
                reason: "generator outside 2..p-2",
            });
        }
        Ok(group)
    }

    /// `g^a mod p` as lowercase hex without leading zeros: the
    /// `diffie_hellman_challenge`.
    pub fn challenge(&self, secret: &DhSecret) -> String {
        let a = BoxedMontyForm::new(self.g.clone(), &self.params).pow(&secret.0);
        trimmed_hex(&a.retrieve().to_be_bytes())
    }

    /// The shared secret `K = B^a mod p` from the broker's `diffie_hellman_response`
    /// (hex), as the bytes that key the live session token: minimal big-endian with a
    /// leading `0x00` when the top bit is set ([`to_java_bytes`]).
    ///
    /// # Errors
    /// [`CryptoError::DiffieHellman`] when the response is not hex or `B` is outside
    /// `2..p-2` (which would make the shared secret guessable).
    pub fn shared_secret(
        &self,
        secret: &DhSecret,
        response_hex: &str,
    ) -> Result<SecretBytes, CryptoError> {
        let bytes = hex_decode(response_hex.trim()).ok_or(CryptoError::DiffieHellman {
            reason: "diffie_hellman_response is not hex",
        })?;
        let bytes = trim_zeros(&bytes);
        let b = BoxedUint::from_be_slice(bytes, self.p.bits_precision()).map_err(|_| {
            CryptoError::DiffieHellman {
                reason: "diffie_hellman_response larger than the prime",
            }
        })?;
        if !self.in_open_range(&b) {
            return Err(CryptoError::DiffieHellman {
                reason: "diffie_hellman_response outside 2..p-2",
            });
        }
        let k = BoxedMontyForm::new(b, &self.params)
            .pow(&secret.0)
            .retrieve();
        let raw = Zeroizing::new(k.to_be_bytes());
        Ok(SecretBytes::new(to_java_bytes(trim_zeros(&raw))))
    }

    /// `g^b mod p` for a server-side secret: what a broker (or a fake one) sends back as
    /// `diffie_hellman_response`. Same as [`challenge`](Self::challenge).
    pub fn public_value(&self, secret: &DhSecret) -> String {
        self.challenge(secret)
    }

    /// `1 < x < p - 1`.
    fn in_open_range(&self, x: &BoxedUint) -> bool {
        let one = BoxedUint::one_with_precision(self.p.bits_precision());
        let p_minus_1 = self.p.wrapping_sub(&one);
        *x > one && *x < p_minus_1
    }
}

/// A Diffie-Hellman secret exponent. Redacted in `Debug`, zeroized on drop.
pub struct DhSecret(BoxedUint);

impl DhSecret {
    /// A fresh non-zero 256-bit secret from `rng` (the machine's seeded generator).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        loop {
            rng.fill_bytes(bytes.as_mut());
            if bytes.iter().any(|b| *b != 0) {
                break;
            }
        }
        Self(BoxedUint::from_be_slice_truncated(
            bytes.as_ref(),
            SECRET_BITS,
        ))
    }

    /// A secret from hex (test vectors, fake brokers).
    ///
    /// # Errors
    /// [`CryptoError::DiffieHellman`] for non-hex input, zero, or more than 4096 bits.
    pub fn from_hex(hex: &str) -> Result<Self, CryptoError> {
        const BAD: CryptoError = CryptoError::DiffieHellman {
            reason: "secret is not non-zero hex of at most 4096 bits",
        };
        let bytes = Zeroizing::new(hex_decode(hex).ok_or(BAD)?);
        let bytes = trim_zeros(&bytes);
        if bytes.is_empty() || bytes.len() > 512 {
            return Err(BAD);
        }
        let bits = u32::try_from(bytes.len() * 8)
            .map_err(|_| BAD)?
            .max(SECRET_BITS);
        Ok(Self(BoxedUint::from_be_slice_truncated(bytes, bits)))
    }
}

impl Drop for DhSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhSecret(***)")
    }
}

/// Java `BigInteger.toByteArray()` of a non-negative number given as big-endian
/// magnitude: leading zero bytes removed, then one `0x00` added when the first byte
/// has its top bit set (two's complement sign bit). Zero is `[0x00]`.
///
/// ```
/// use broker_session::ibkr::oauth::dh::to_java_bytes;
/// assert_eq!(to_java_bytes(&[0x7f]), vec![0x7f]);
/// assert_eq!(to_java_bytes(&[0x00, 0x80]), vec![0x00, 0x80]);
/// assert_eq!(to_java_bytes(&[0x01, 0x00]), vec![0x01, 0x00]);
/// ```
pub fn to_java_bytes(magnitude: &[u8]) -> Vec<u8> {
    let m = trim_zeros(magnitude);
    match m.first() {
        None => vec![0],
        Some(b) if *b >= 0x80 => {
            let mut v = Vec::with_capacity(m.len() + 1);
            v.push(0);
            v.extend_from_slice(m);
            v
        }
        Some(_) => m.to_vec(),
    }
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or(&[])
}

fn trimmed_hex(b: &[u8]) -> String {
    let h = hex_encode(b);
    let t = h.trim_start_matches('0');
    if t.is_empty() {
        "0".to_owned()
    } else {
        t.to_owned()
    }
}

/// `SEQUENCE { INTEGER p, INTEGER g, ... }` (PKCS#3 DHParameter) → (p bytes, g).
fn parse_dh_params_der(der: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
    let (tag, body, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, p, rest) = der_tlv(body)?;
    if tag != 0x02 {
        return None;
    }
    let g = match der_tlv(rest) {
        Some((0x02, g, _)) => {
            let g = trim_zeros(g);
            if g.len() > 8 {
                return None;
            }
            Some(g.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        _ => None,
    };
    Some((trim_zeros(p).to_vec(), g))
}

/// One DER tag-length-value: (tag, value, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len_bytes = input.get(2..2 + n)?;
        (
            len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let value = input.get(header..header.checked_add(len)?)?;
    let rest = input.get(header + len..)?;
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_params_parse() {
        // SEQUENCE { INTEGER 0x00ff..(65 bytes), INTEGER 2 }
        let mut p = vec![0x00];
        p.extend(std::iter::repeat_n(0xffu8, 64));
        let mut der = vec![0x30, 0x46, 0x02, 0x41];
        der.extend(&p);
        der.extend([0x02, 0x01, 0x02]);
        let (pp, g) = parse_dh_params_der(&der).unwrap();
        assert_eq!(pp.len(), 64);
        assert_eq!(g, Some(2));
        assert!(parse_dh_params_der(&der[..10]).is_none());
    }

    #[test]
    fn bad_primes_are_refused() {
        assert!(DhGroup::new("zz", 2).is_err());
        assert!(DhGroup::new("ff", 2).is_err());
        assert!(
            DhGroup::new(&"f".repeat(127).chars().chain(['e']).collect::<String>(), 2).is_err()
        );
    }
}
