//! What processes sharing one IBKR login share: [`IbkrSnapshot`].
//!
//! An OAuth session's owner shares its live session token and the token's expiry; a
//! follower signs its requests with it, using its own configuration (consumer key,
//! access token) for the rest of the signature. A gateway session shares nothing
//! secret (the gateway holds the brokerage session): its snapshot only says which
//! gateway it belongs to, and the generation it is published under says which
//! recovery of the brokerage session it follows.
//!
//! As with IG's [`SessionSnapshot`](crate::ig::SessionSnapshot), the snapshot itself
//! cannot be serialized and its `Debug` is redacted; [`IbkrSnapshot::expose_secrets`]
//! is the explicit step that yields the serializable [`PersistedIbkrSession`].

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::secret::LiveSessionToken;

/// The part of an IBKR session another process needs to act on it: the base URL, and
/// for OAuth the consumer key, the live session token and its wall-clock expiry.
///
/// `Debug` shows no token.
///
/// ```
/// use broker_session::ibkr::{IbkrSnapshot, PersistedIbkrSession};
/// let stored = r#"{"base_url":"https://api.ibkr.com/v1/api","consumer_key":"TESTCONS",
///   "live_session_token":"bHN0LXNlY3JldA==","expires_at_epoch_ms":1714576000000}"#;
/// let persisted: PersistedIbkrSession = serde_json::from_str(stored).unwrap();
/// let snapshot = IbkrSnapshot::from_persisted(persisted);
/// assert!(snapshot.is_oauth());
/// assert!(!format!("{snapshot:?}").contains("bHN0LXNlY3JldA"));
/// let back = serde_json::to_string(&snapshot.expose_secrets()).unwrap();
/// assert!(back.contains("bHN0LXNlY3JldA=="));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbkrSnapshot {
    pub(crate) base_url: String,
    pub(crate) consumer_key: Option<String>,
    pub(crate) lst: Option<LiveSessionToken>,
    pub(crate) expires_at_epoch_ms: Option<i64>,
}

impl IbkrSnapshot {
    /// The base URL the session belongs to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether it carries an OAuth live session token (else it is a gateway's).
    pub fn is_oauth(&self) -> bool {
        self.lst.is_some()
    }

    /// When the live session token expires, in wall-clock milliseconds since the Unix
    /// epoch (`None` for a gateway, or when IBKR gave no expiry).
    pub fn expires_at_epoch_ms(&self) -> Option<i64> {
        self.expires_at_epoch_ms
    }

    /// The persistable form. **It holds the live session token in clear**: anyone who
    /// reads it (and knows the consumer key and access token) can sign requests until
    /// the token expires. Store it only where you would store the access token secret.
    pub fn expose_secrets(&self) -> PersistedIbkrSession {
        PersistedIbkrSession {
            base_url: self.base_url.clone(),
            consumer_key: self.consumer_key.clone(),
            live_session_token: self.lst.as_ref().map(|t| t.expose_secret().to_owned()),
            expires_at_epoch_ms: self.expires_at_epoch_ms,
        }
    }

    /// A snapshot from its persisted form (moving the token back into its secret type).
    pub fn from_persisted(mut p: PersistedIbkrSession) -> Self {
        Self {
            base_url: std::mem::take(&mut p.base_url),
            consumer_key: p.consumer_key.take(),
            lst: p.live_session_token.take().map(LiveSessionToken::new),
            expires_at_epoch_ms: p.expires_at_epoch_ms,
        }
    }
}

/// The serializable form of an [`IbkrSnapshot`].
///
/// **Holds the live session token in clear**: store it like a password. `Debug` is
/// redacted, and the token is zeroized on drop, but its `Serialize` output is not.
#[derive(Clone, Serialize, Deserialize)]
pub struct PersistedIbkrSession {
    /// The base URL the session belongs to.
    pub base_url: String,
    /// OAuth: the consumer key the token was obtained for.
    #[serde(default)]
    pub consumer_key: Option<String>,
    /// OAuth: the live session token (base64). **Secret.**
    #[serde(default)]
    pub live_session_token: Option<String>,
    /// OAuth: when the token expires, in wall-clock milliseconds since the Unix epoch.
    #[serde(default)]
    pub expires_at_epoch_ms: Option<i64>,
}

impl fmt::Debug for PersistedIbkrSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistedIbkrSession")
            .field("base_url", &self.base_url)
            .field("consumer_key", &self.consumer_key)
            .field(
                "live_session_token",
                &self.live_session_token.as_ref().map(|_| "***"),
            )
            .field("expires_at_epoch_ms", &self.expires_at_epoch_ms)
            .finish()
    }
}

impl Drop for PersistedIbkrSession {
    fn drop(&mut self) {
        self.live_session_token.zeroize();
    }
}
