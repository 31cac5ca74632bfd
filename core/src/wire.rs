//! Helpers shared by the brokers' pure decoders: bounded JSON parsing, lenient
//! number fields, header reads, id generation.

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::error::ProtocolError;
use crate::machine::{MAX_BODY, OpId, RequestId};

/// Rejects bodies above [`MAX_BODY`] before any parsing.
pub(crate) fn check_body(endpoint: &'static str, body: &[u8]) -> Result<(), ProtocolError> {
    if body.len() > MAX_BODY {
        return Err(ProtocolError::BodyTooLarge {
            endpoint,
            len: body.len(),
            limit: MAX_BODY,
        });
    }
    Ok(())
}

/// Parses a JSON body after the size check; errors never echo the body.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(
    endpoint: &'static str,
    body: &'a [u8],
) -> Result<T, ProtocolError> {
    check_body(endpoint, body)?;
    serde_json::from_slice(body).map_err(|e| ProtocolError::from_json(endpoint, &e))
}

/// A header's value as a string, if present and visible ASCII. Header names are
/// case-insensitive in `http::HeaderMap`.
pub(crate) fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Deserializes an integer sent either as a JSON number or as a string of digits
/// (IG sends `expires_in: "60"` and `timeStamp` both ways). Anything else is an error,
/// never a silent 0.
pub(crate) fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer or a string of digits")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("integer out of range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation)]
                Ok(v as i64)
            } else {
                Err(E::custom("not a whole number"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            v.trim()
                .parse::<i64>()
                .map_err(|_| E::custom("string is not an integer"))
        }
    }
    d.deserialize_any(V)
}

/// [`int_or_string`] for optional fields (`null` and absent give `None`).
pub(crate) fn opt_int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct W(#[serde(deserialize_with = "int_or_string")] i64);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

/// Hands out request and operation ids, unique within one machine.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    next_request: u64,
    next_op: u64,
}

impl Ids {
    pub(crate) fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    pub(crate) fn op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "int_or_string")]
        n: i64,
        #[serde(default, deserialize_with = "opt_int_or_string")]
        o: Option<i64>,
    }

    #[test]
    fn int_or_string_accepts_both_and_rejects_garbage() {
        let t: T = serde_json::from_str(r#"{"n":"60","o":1601218928621}"#).unwrap();
        assert_eq!((t.n, t.o), (60, Some(1_601_218_928_621)));
        let t: T = serde_json::from_str(r#"{"n":60,"o":"1601218928621"}"#).unwrap();
        assert_eq!((t.n, t.o), (60, Some(1_601_218_928_621)));
        let t: T = serde_json::from_str(r#"{"n":60}"#).unwrap();
        assert_eq!(t.o, None);
        assert!(serde_json::from_str::<T>(r#"{"n":"sixty"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":""}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":1.5}"#).is_err());
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let big = vec![b' '; MAX_BODY + 1];
        assert!(matches!(
            parse_json::<serde_json::Value>("GET /x", &big),
            Err(ProtocolError::BodyTooLarge { .. })
        ));
    }
}
