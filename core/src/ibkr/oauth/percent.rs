//! RFC 3986 percent-encoding as OAuth 1.0a uses it.

/// Percent-encodes every byte except the RFC 3986 unreserved set
/// (`A-Z a-z 0-9 - . _ ~`), with uppercase hex digits.
///
/// ```
/// use broker_session::ibkr::oauth::percent::encode;
/// assert_eq!(encode("a+b/c=d ~"), "a%2Bb%2Fc%3Dd%20~");
/// ```
pub fn encode(input: &str) -> String {
    encode_bytes(input.as_bytes())
}

/// [`encode`] for raw bytes.
pub fn encode_bytes(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len() * 3);
    encode_into(&mut out, input);
    out
}

/// [`encode_bytes`] appending to `out`, so a signature base string is built in one
/// buffer.
pub(crate) fn encode_into(out: &mut String, input: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// Decodes `%XX` escapes; with `plus_is_space`, `+` becomes a space (as in
/// `application/x-www-form-urlencoded` query strings). `None` for a malformed escape.
///
/// ```
/// use broker_session::ibkr::oauth::percent::decode;
/// assert_eq!(decode("a%2Bb+c", true), Some(b"a+b c".to_vec()));
/// assert_eq!(decode("%zz", false), None);
/// ```
pub fn decode(input: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
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
    fn unreserved_pass_and_everything_else_is_escaped() {
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(
            encode("https://api.ibkr.com/v1"),
            "https%3A%2F%2Fapi.ibkr.com%2Fv1"
        );
        assert_eq!(decode(&encode("a b+c/é"), false), Some("a b+c/é".into()));
        assert_eq!(decode("%4", false), None);
    }
}
