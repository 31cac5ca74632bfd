//! Secret values: redacted in `Debug`/`Display`, zeroized on drop.
//!
//! Every credential and token the library holds lives in one of these newtypes. They
//! print as `Password(***)`, never their value, and wipe their heap buffer when
//! dropped. The value is only reachable through [`expose_secret`](Password::expose_secret),
//! an explicit call that is easy to find in review.
//!
//! What zeroize covers: the copy held inside the machine. Copies made into
//! `http::HeaderValue`s (marked sensitive) and into transport buffers are outside the
//! library's control once the request leaves the core.

use http::HeaderValue;
use zeroize::Zeroizing;

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// `Debug` and `Display` are redacted; the buffer is zeroized on drop.
        ///
        /// ```
        #[doc = concat!("use broker_session::secret::", stringify!($name), ";")]
        #[doc = concat!("let s = ", stringify!($name), "::new(\"hunter2\");")]
        /// assert_eq!(s.expose_secret(), "hunter2");
        /// assert!(!format!("{s:?} {s}").contains("hunter2"));
        /// ```
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Zeroizing::new(value.into()))
            }

            /// The secret value. Call it only where the value is put on the wire or
            /// into storage the user asked for.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }

            /// Whether the value is empty.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(***)"))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("***")
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }
    };
}

secret_string!(
    /// A login password (IG `password`).
    Password
);
secret_string!(
    /// An IG API key (`X-IG-API-KEY`).
    ApiKey
);
secret_string!(
    /// An IG client session token (`CST` header).
    Cst
);
secret_string!(
    /// An IG account session token (`X-SECURITY-TOKEN` header).
    SecurityToken
);
secret_string!(
    /// An OAuth access token (IG v3 `access_token`, IBKR OAuth 1.0a `oauth_token`).
    AccessToken
);
secret_string!(
    /// An OAuth refresh token (IG v3 `refresh_token`; rotates on every refresh).
    RefreshToken
);
secret_string!(
    /// The IBKR OAuth 1.0a access token secret (base64 ciphertext, decrypted into the prepend).
    AccessTokenSecret
);
secret_string!(
    /// The IBKR OAuth 1.0a live session token (base64), the HMAC key for every signed request.
    LiveSessionToken
);
secret_string!(
    /// A private key in PEM form (IBKR OAuth 1.0a encryption or signature key).
    PrivateKeyPem
);
secret_string!(
    /// An IBKR session id (`/tickle` `session`), the value of the WebSocket `api` cookie.
    SessionId
);

secret_string!(
    /// A Lightstreamer password built from session tokens (IG `CST-<cst>|XST-<xst>`).
    LightstreamerPassword
);

/// Secret bytes (decrypted secrets, derived keys): redacted in `Debug`, zeroized on drop.
///
/// ```
/// use broker_session::secret::SecretBytes;
/// let s = SecretBytes::new(vec![1, 2, 3]);
/// assert_eq!(s.expose_secret(), &[1, 2, 3]);
/// assert_eq!(format!("{s:?}"), "SecretBytes(3 bytes)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps secret bytes.
    pub fn new(value: Vec<u8>) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Builds a header value that carries a secret and marks it sensitive, so HTTP
/// libraries (and `http`'s own `Debug`) treat it as such.
///
/// Returns `None` when the value contains bytes not allowed in a header (a control
/// character, say); the caller turns that into a typed error without echoing the value.
///
/// ```
/// let v = broker_session::secret::sensitive_header("Bearer abc").unwrap();
/// assert!(v.is_sensitive());
/// assert_eq!(format!("{v:?}"), "Sensitive");
/// ```
pub fn sensitive_header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Secrets the session replaces in place, every keep-alive: an IG refresh brings a
/// new access token and a new refresh token, usually as long as the old ones.
macro_rules! overwritable {
    ($($name:ident),*) => {$(
        impl $name {
            /// Replaces the value, wiping the old one first and reusing its buffer
            /// when the new value fits.
            pub(crate) fn overwrite(&mut self, value: &str) {
                zeroize::Zeroize::zeroize(&mut *self.0);
                self.0.push_str(value);
            }
        }
    )*};
}

overwritable!(AccessToken, RefreshToken);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_type_redacts() {
        let v = "s3cr3t-value";
        let printed = [
            format!("{:?}{}", Password::new(v), Password::new(v)),
            format!("{:?}{}", ApiKey::new(v), ApiKey::new(v)),
            format!("{:?}{}", Cst::new(v), Cst::new(v)),
            format!("{:?}{}", SecurityToken::new(v), SecurityToken::new(v)),
            format!("{:?}{}", AccessToken::new(v), AccessToken::new(v)),
            format!("{:?}{}", RefreshToken::new(v), RefreshToken::new(v)),
            format!(
                "{:?}{}",
                AccessTokenSecret::new(v),
                AccessTokenSecret::new(v)
            ),
            format!("{:?}{}", LiveSessionToken::new(v), LiveSessionToken::new(v)),
            format!("{:?}{}", PrivateKeyPem::new(v), PrivateKeyPem::new(v)),
            format!("{:?}", SecretBytes::new(v.as_bytes().to_vec())),
        ];
        for p in printed {
            assert!(!p.contains(v), "{p}");
            assert!(p.contains("***") || p.contains("bytes"), "{p}");
        }
    }

    #[test]
    fn a_token_is_overwritten_in_its_own_buffer() {
        let mut t = AccessToken::new("fakeig-access-00001-secret");
        let buffer = t.expose_secret().as_ptr();
        t.overwrite("fakeig-access-00002-secret");
        assert_eq!(t.expose_secret(), "fakeig-access-00002-secret");
        assert_eq!(t.expose_secret().as_ptr(), buffer);
        let mut r = RefreshToken::new("short");
        r.overwrite("a longer refresh token than before");
        assert_eq!(r.expose_secret(), "a longer refresh token than before");
    }

    #[test]
    fn sensitive_header_rejects_control_characters() {
        assert!(sensitive_header("a\nb").is_none());
    }
}
