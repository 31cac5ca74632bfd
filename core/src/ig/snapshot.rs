//! Saving a session's tokens and resuming from them in another process.
//!
//! [`SessionSnapshot`] is what [`IgSession::snapshot`](super::IgSession::snapshot)
//! returns and [`IgIntent::Resume`](super::IgIntent::Resume) takes: its `Debug` is
//! redacted and it cannot be serialized. To store it, call
//! [`SessionSnapshot::expose_secrets`], an explicit step that yields a
//! [`PersistedSession`] (serde-serializable, **holds the tokens in clear**); turn a
//! stored one back with [`SessionSnapshot::from_persisted`].

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::secret::{AccessToken, Cst, RefreshToken, SecurityToken};

/// A session's resumable state: base URL, account, Lightstreamer endpoint and tokens
/// (CST/XST, or v3 access and refresh tokens with their wall-clock expiry).
///
/// `Debug` shows no token.
///
/// ```
/// use broker_session::ig::{PersistedSession, PersistedTokens, SessionSnapshot};
/// let stored = r#"{"base_url":"https://demo-api.ig.com/gateway/deal","account_id":"ABC",
///   "lightstreamer_endpoint":null,"tokens":{"mode":"cst","cst":"c-secret","xst":"x-secret"}}"#;
/// let persisted: PersistedSession = serde_json::from_str(stored).unwrap();
/// let snapshot = SessionSnapshot::from_persisted(persisted);
/// assert_eq!(snapshot.account_id(), "ABC");
/// assert!(!format!("{snapshot:?}").contains("c-secret"));
/// let back = serde_json::to_string(&snapshot.expose_secrets()).unwrap();
/// assert!(back.contains("c-secret"));
/// ```
#[derive(Clone, Debug)]
pub struct SessionSnapshot {
    pub(crate) base_url: String,
    pub(crate) account_id: String,
    pub(crate) lightstreamer_endpoint: Option<String>,
    pub(crate) tokens: SnapTokens,
}

#[derive(Clone, Debug)]
pub(crate) enum SnapTokens {
    Cst {
        cst: Cst,
        xst: SecurityToken,
    },
    OAuth {
        access: AccessToken,
        refresh: RefreshToken,
        expires_at_epoch_ms: i64,
        streaming: Option<(Cst, SecurityToken)>,
    },
}

impl SessionSnapshot {
    /// The REST base URL the tokens belong to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The account the session acts on.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The Lightstreamer server of the session.
    pub fn lightstreamer_endpoint(&self) -> Option<&str> {
        self.lightstreamer_endpoint.as_deref()
    }

    /// The persistable form. **It holds the session tokens in clear**: anyone who
    /// reads it can act on the account until the tokens expire. Store it only where
    /// you would store the password (an encrypted file, a secret store).
    pub fn expose_secrets(&self) -> PersistedSession {
        let tokens = match &self.tokens {
            SnapTokens::Cst { cst, xst } => PersistedTokens::Cst {
                cst: cst.expose_secret().to_owned(),
                xst: xst.expose_secret().to_owned(),
            },
            SnapTokens::OAuth {
                access,
                refresh,
                expires_at_epoch_ms,
                streaming,
            } => PersistedTokens::OAuth {
                access_token: access.expose_secret().to_owned(),
                refresh_token: refresh.expose_secret().to_owned(),
                expires_at_epoch_ms: *expires_at_epoch_ms,
                streaming_cst: streaming.as_ref().map(|s| s.0.expose_secret().to_owned()),
                streaming_xst: streaming.as_ref().map(|s| s.1.expose_secret().to_owned()),
            },
        };
        PersistedSession {
            base_url: self.base_url.clone(),
            account_id: self.account_id.clone(),
            lightstreamer_endpoint: self.lightstreamer_endpoint.clone(),
            tokens,
        }
    }

    /// A snapshot from its persisted form (moving the tokens back into secret types).
    pub fn from_persisted(mut p: PersistedSession) -> Self {
        let take = std::mem::take::<String>;
        let tokens = match &mut p.tokens {
            PersistedTokens::Cst { cst, xst } => SnapTokens::Cst {
                cst: Cst::new(take(cst)),
                xst: SecurityToken::new(take(xst)),
            },
            PersistedTokens::OAuth {
                access_token,
                refresh_token,
                expires_at_epoch_ms,
                streaming_cst,
                streaming_xst,
            } => SnapTokens::OAuth {
                access: AccessToken::new(take(access_token)),
                refresh: RefreshToken::new(take(refresh_token)),
                expires_at_epoch_ms: *expires_at_epoch_ms,
                streaming: match (streaming_cst.take(), streaming_xst.take()) {
                    (Some(c), Some(x)) => Some((Cst::new(c), SecurityToken::new(x))),
                    _ => None,
                },
            },
        };
        Self {
            base_url: take(&mut p.base_url),
            account_id: take(&mut p.account_id),
            lightstreamer_endpoint: p.lightstreamer_endpoint.take(),
            tokens,
        }
    }
}

/// The serializable form of a [`SessionSnapshot`].
///
/// **Holds secrets in clear** (session tokens): store it like a password. `Debug` is
/// redacted, and the strings are zeroized on drop, but its `Serialize` output is not.
#[derive(Clone, Serialize, Deserialize)]
pub struct PersistedSession {
    /// The REST base URL the tokens belong to.
    pub base_url: String,
    /// The account the session acts on.
    pub account_id: String,
    /// The Lightstreamer server.
    pub lightstreamer_endpoint: Option<String>,
    /// The tokens.
    pub tokens: PersistedTokens,
}

/// The tokens of a [`PersistedSession`]. **Secret values in clear.**
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PersistedTokens {
    /// A v1/v2 (or web-platform) session.
    Cst {
        /// The `CST` token.
        cst: String,
        /// The `X-SECURITY-TOKEN` token.
        xst: String,
    },
    /// A v3 session.
    #[serde(rename = "oauth")]
    OAuth {
        /// The access token.
        access_token: String,
        /// The refresh token.
        refresh_token: String,
        /// When the access token expires, in wall-clock milliseconds since the Unix
        /// epoch (monotonic instants do not survive a restart).
        expires_at_epoch_ms: i64,
        /// CST fetched for streaming, if any.
        streaming_cst: Option<String>,
        /// X-SECURITY-TOKEN fetched for streaming, if any.
        streaming_xst: Option<String>,
    },
}

impl fmt::Debug for PersistedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistedSession")
            .field("base_url", &self.base_url)
            .field("account_id", &self.account_id)
            .field("lightstreamer_endpoint", &self.lightstreamer_endpoint)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl fmt::Debug for PersistedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cst { .. } => f.write_str("Cst(***)"),
            Self::OAuth {
                expires_at_epoch_ms,
                ..
            } => write!(f, "OAuth(***, expires_at_epoch_ms: {expires_at_epoch_ms})"),
        }
    }
}

impl Drop for PersistedSession {
    fn drop(&mut self) {
        match &mut self.tokens {
            PersistedTokens::Cst { cst, xst } => {
                cst.zeroize();
                xst.zeroize();
            }
            PersistedTokens::OAuth {
                access_token,
                refresh_token,
                streaming_cst,
                streaming_xst,
                ..
            } => {
                access_token.zeroize();
                refresh_token.zeroize();
                streaming_cst.zeroize();
                streaming_xst.zeroize();
            }
        }
    }
}
