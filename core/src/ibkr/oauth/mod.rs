//! OAuth 1.0a for IBKR as pure functions: percent-encoding, base strings, RSA-SHA256
//! and HMAC-SHA256 signatures, Diffie-Hellman, and the live session token.
//!
//! Each function does one step of the numbered algorithm in IBKR's OAuth 1.0a flow
//! (live session token request, then HMAC-SHA256 on every later request). They are
//! public so the published test vectors can pin them bit for bit; the
//! [`IbkrSession`](super::IbkrSession) machine strings them together.

pub mod base_string;
pub mod dh;
pub mod lst;
pub mod percent;
pub mod sign;

/// Lowercase hex of `bytes`, two digits per byte.
///
/// ```
/// assert_eq!(broker_session::ibkr::oauth::hex_encode(&[0x0f, 0xa0]), "0fa0");
/// ```
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes of a hex string (either case). An odd number of digits is read as if it had
/// one leading `0`, since IBKR renders big numbers without padding. `None` for any
/// non-hex character or an empty string.
///
/// ```
/// use broker_session::ibkr::oauth::hex_decode;
/// assert_eq!(hex_decode("fff"), Some(vec![0x0f, 0xff]));
/// assert_eq!(hex_decode("zz"), None);
/// ```
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if digits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let mut iter = digits.iter();
    if digits.len() % 2 == 1 {
        out.push(nibble(*iter.next()?)?);
    }
    while let (Some(h), Some(l)) = (iter.next(), iter.next()) {
        out.push((nibble(*h)? << 4) | nibble(*l)?);
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&bytes)), Some(bytes));
        assert_eq!(hex_decode("A"), Some(vec![10]));
        assert_eq!(hex_decode(""), None);
        assert_eq!(hex_decode("0g"), None);
    }
}
