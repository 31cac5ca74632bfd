//! A strict reader for *plain* JSON bodies: the fast path of the decoders that run
//! on every keep-alive (IG's token refresh, IBKR's tickle).
//!
//! Plain means valid UTF-8 with no backslash anywhere, so every string is the bytes
//! between two quotes and can be borrowed as it is. The answers of both brokers are
//! plain in practice; reading them by hand costs a fraction of serde_json's generic
//! machinery.
//!
//! The reader never judges a body. It gives up (`None`) at anything it does not read
//! itself: an escape, a number with an exponent, a field given twice, nesting deeper
//! than [`MAX_DEPTH`], a field of an unexpected type, or a body that is not JSON at
//! all. The decoder then hands the body to serde_json, which gives the answer or the
//! typed error. So every body this reader accepts is one serde_json accepts with the
//! same result (`tests::fast_paths_agree_with_serde` compares both on mutated
//! bodies), and every error still comes from serde_json.

/// Nesting the reader follows before it gives up (serde_json's own limit is 128).
pub(crate) const MAX_DEPTH: u32 = 16;

/// A cursor over a plain JSON body.
pub(crate) struct Plain<'a> {
    /// The body, checked to be UTF-8 once, so that strings are cut from it without
    /// checking each again.
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Plain<'a> {
    /// A reader of `body`, if it is plain.
    pub(crate) fn new(body: &'a [u8]) -> Option<Self> {
        if memchr::memchr(b'\\', body).is_some() {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        Some(Self {
            text,
            b: body,
            i: 0,
        })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    /// Consumes `c` (after whitespace), or gives up.
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Consumes `lit` exactly, or gives up.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.skip_ws();
        self.b[self.i..]
            .starts_with(lit)
            .then(|| self.i += lit.len())
    }

    /// An object: `member` is called with each key and must read its value.
    #[inline]
    pub(crate) fn object(
        &mut self,
        depth: u32,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.skip(depth)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string: the bytes between its quotes (no control characters, which JSON
    /// requires escaped).
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + string_len(&self.b[start..])?;
        self.i = end + 1;
        // Cut at two ASCII quotes: always on character boundaries.
        self.text.get(start..end)
    }

    /// Consumes a `null` and says so; consumes nothing before any other value.
    pub(crate) fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| true);
        }
        Some(false)
    }

    /// A string, or `None` for `null`.
    pub(crate) fn string_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| None);
        }
        self.string().map(Some)
    }

    /// `true` or `false`, or `None` for `null`.
    pub(crate) fn bool_or_null(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| Some(true)),
            b'f' => self.literal(b"false").map(|()| Some(false)),
            _ => self.literal(b"null").map(|()| None),
        }
    }

    /// A number's text: `-`, digits without a leading zero, and an optional
    /// fraction. An exponent gives up.
    fn number(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = self.digits()?;
        if digits > 1 && self.b[self.i - digits] == b'0' {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        self.text.get(start..self.i)
    }

    /// Consumes one or more digits; how many.
    fn digits(&mut self) -> Option<usize> {
        let n = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        self.i += n;
        (n > 0).then_some(n)
    }

    /// An integer written as a JSON number (no fraction) or as a string of digits
    /// (`crate::wire::int_or_string`), or `None` for `null`. Anything else, including
    /// a value out of range, gives up.
    pub(crate) fn int_or_string_or_null(&mut self) -> Option<Option<i64>> {
        let text = match self.peek()? {
            b'n' => return self.literal(b"null").map(|()| None),
            b'"' => self.string()?.trim(),
            _ => self.number()?,
        };
        text.parse::<i64>().ok().map(Some)
    }

    /// A loosely typed value (a field the answer's serde_json form reads as a
    /// `serde_json::Value`): a string, an integer, `null`, or any other value, skipped.
    /// `depth` is the depth of the value (its enclosing object's plus one). A number
    /// with a fraction, `-0` (which serde_json reads as a float) and an integer
    /// outside `i64` give up: their `Value` form is not simply their text.
    pub(crate) fn loose(&mut self, depth: u32) -> Option<Loose<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Loose::Str),
            b'n' => self.literal(b"null").map(|()| Loose::Null),
            b'-' | b'0'..=b'9' => {
                let text = self.number()?;
                if text.contains('.') || text.starts_with("-0") {
                    return None;
                }
                Some(Loose::Int(text, text.parse().ok()?))
            }
            _ => self.skip(depth).map(|()| Loose::Other),
        }
    }

    /// Skips one value of any type.
    pub(crate) fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth + 1, |r, _| r.skip(depth + 1)),
            b'[' => self.array(depth + 1),
            b't' | b'f' | b'n' => self.bool_or_null().map(drop),
            _ => self.number().map(drop),
        }
    }

    /// Nothing but whitespace is left.
    pub(crate) fn end(mut self) -> Option<()> {
        self.skip_ws();
        (self.i == self.b.len()).then_some(())
    }
}

/// A loosely typed value, as [`Plain::loose`] reads it.
pub(crate) enum Loose<'a> {
    /// A string's content.
    Str(&'a str),
    /// An integer: its text (as serde_json would print it back) and its value.
    Int(&'a str, i64),
    /// `null`.
    Null,
    /// `true`, `false`, an array or an object.
    Other,
}

/// The length of a string's content at the start of `rest`: the bytes before its
/// closing quote; `None` when there is none or a control character (which JSON
/// requires escaped) comes first.
///
/// Eight bytes are tested at a time (the strings are keys, flags and tokens, too
/// short for a vectorised search's set-up to pay): with `L` = 0x01 in every byte and
/// `H` = 0x80 in every byte, `(x - L) & !x & H` flags the bytes of `x` that are zero,
/// exactly so up to the first one (a borrow may flag bytes after it). A quote is a
/// zero byte of `w ^ (L * b'"')`, a control character a byte below 0x20, that is one
/// that `w - L * 0x20` borrows through. The word is read little-endian, so the lowest
/// flag is the first such byte.
fn string_len(rest: &[u8]) -> Option<usize> {
    const L: u64 = u64::from_le_bytes([0x01; 8]);
    const H: u64 = u64::from_le_bytes([0x80; 8]);
    let mut n = 0;
    while let Some(chunk) = rest.get(n..n + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = w ^ (L * u64::from(b'"'));
        let found = (quote.wrapping_sub(L) & !quote | w.wrapping_sub(L * 0x20) & !w) & H;
        if found != 0 {
            let at = n + found.trailing_zeros() as usize / 8;
            return (rest[at] == b'"').then_some(at);
        }
        n += 8;
    }
    // The last bytes, fewer than eight.
    for &c in &rest[n..] {
        match c {
            b'"' => return Some(n),
            0..0x20 => return None,
            _ => n += 1,
        }
    }
    None
}

/// For a field read once: `Some` the first time, `None` (give up) when the body
/// gives it again, which serde_json refuses.
pub(crate) fn first(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// Bodies for comparing a fast path with serde_json: `bodies` with a few
/// fragments deleted, replaced or inserted (JSON punctuation, digits, literals, a
/// field given twice, an escape, a control character, a byte that is not UTF-8).
#[cfg(test)]
pub(crate) fn mutated(bodies: Vec<Vec<u8>>) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    const FRAGMENTS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b" ",
        b"0",
        b"00",
        b"7",
        b"-",
        b".",
        b"e5",
        b"null",
        b"true",
        b"fals",
        b"\\",
        b"\\u0041",
        b"\x01",
        b"\xff",
        b"\"access_token\":\"x\",",
        b"\"iserver\":{},",
        b"\"authenticated\":true,",
        b"\"expires_in\":1,",
        b"1.5",
        b"[]",
        b"\"clientId\":-0,",
        b"\"oauthToken\":{},",
        b"\"accountId\":null,",
        b"9223372036854775808",
    ];
    let edit = (
        any::<prop::sample::Index>(),
        0..3u8,
        prop::sample::select(FRAGMENTS),
    );
    (
        prop::sample::select(bodies),
        prop::collection::vec(edit, 0..3),
    )
        .prop_map(|(mut b, edits)| {
            for (at, op, fragment) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 if i < b.len() => {
                        b.remove(i);
                    }
                    1 if i < b.len() => {
                        b.splice(i..=i, fragment.iter().copied());
                    }
                    _ => {
                        b.splice(i..i, fragment.iter().copied());
                    }
                }
            }
            b
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_flat(body: &str) -> Option<Vec<(String, String)>> {
        let mut r = Plain::new(body.as_bytes())?;
        let mut out = Vec::new();
        r.object(0, |r, k| {
            let v = match r.peek()? {
                b'"' => r.string()?.to_owned(),
                b't' | b'f' | b'n' => format!("{:?}", r.bool_or_null()?),
                _ => {
                    r.skip(1)?;
                    "skipped".to_owned()
                }
            };
            out.push((k.to_owned(), v));
            Some(())
        })?;
        r.end()?;
        Some(out)
    }

    #[test]
    fn reads_plain_bodies_and_gives_up_on_the_rest() {
        let v =
            read_flat(r#" {"a":"x y","b":true,"c":null,"d":[1,-2.5,{"e":[]}],"f":0} "#).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], ("a".into(), "x y".into()));
        assert_eq!(v[1].1, "Some(true)");
        assert_eq!(v[2].1, "None");
        assert_eq!(read_flat("{}"), Some(vec![]));
        for bad in [
            r#"{"a":"x\"y"}"#,   // an escape
            r#"{"a":1e5}"#,      // an exponent
            r#"{"a":01}"#,       // a leading zero
            r#"{"a":"x"#,        // unterminated
            r#"{"a":"x",}"#,     // trailing comma
            r#"{"a":truex}"#,    // not a literal
            r#"{"a":"x"} x"#,    // trailing text
            "{\"a\":\"\u{1}\"}", // a raw control character
            r#"{"a":-}"#,        // no digits
            r#"{"a":1.}"#,       // no fraction digits
            "[1]",               // not an object
        ] {
            assert_eq!(read_flat(bad), None, "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert_eq!(read_flat(&deep), None);
        assert!(Plain::new(b"{\"a\":\"\xff\"}").is_none());
    }

    #[test]
    fn a_string_ends_at_its_quote_in_any_chunk() {
        for len in 0..40 {
            let text = "x".repeat(len);
            let quoted = format!("{text}\"tail");
            assert_eq!(string_len(quoted.as_bytes()), Some(len), "{len}");
            assert_eq!(string_len(text.as_bytes()), None, "{len}: unterminated");
            for at in 0..len {
                let mut bytes = quoted.clone().into_bytes();
                bytes[at] = b'\n';
                assert_eq!(string_len(&bytes), None, "{len}: control at {at}");
                bytes[at] = 0xC3; // the first byte of a two-byte character: not special
                assert_eq!(string_len(&bytes), Some(len), "{len}: high byte at {at}");
            }
        }
    }

    #[test]
    fn the_first_special_byte_of_a_chunk_decides() {
        assert_eq!(string_len(b"ab\"\x01\x01\"xyz"), Some(2));
        assert_eq!(string_len(b"a\x00\"bcdefgh"), None);
        assert_eq!(string_len(b"\x1f\"abcdefgh"), None);
        assert_eq!(string_len(b"\"\x00abcdefgh"), Some(0));
        assert_eq!(string_len(b"\xff\xfe\xe0\x80!#~ \"12345678"), Some(8));
    }

    #[test]
    fn integers_as_numbers_or_strings() {
        let read = |s: &str| Plain::new(s.as_bytes())?.int_or_string_or_null();
        assert_eq!(read("60"), Some(Some(60)));
        assert_eq!(read(r#"" 60 ""#), Some(Some(60)));
        assert_eq!(read("-7"), Some(Some(-7)));
        assert_eq!(read("null"), Some(None));
        assert_eq!(read("1.5"), None);
        assert_eq!(read(r#""sixty""#), None);
        assert_eq!(read("99999999999999999999"), None);
        assert_eq!(read("true"), None);
    }

    #[test]
    fn a_field_given_twice_gives_up() {
        let mut seen = false;
        assert_eq!(first(&mut seen), Some(()));
        assert_eq!(first(&mut seen), None);
    }
}
