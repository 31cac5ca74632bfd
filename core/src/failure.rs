//! What a transport reports when an exchange fails: a [`TransportFailure`] of a
//! [`FailureKind`]. Its own module so that [`Error`](crate::Error) (which carries
//! one) and the [`Machine`](crate::Machine) contract (which takes one as input) both
//! depend on it without depending on each other.

use std::fmt;

/// What the transport could not do. The core decides what it means (retry, back off,
/// give up); the transport only classifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportFailure {
    /// The class of failure.
    pub kind: FailureKind,
    /// A human-readable description. Transports must not put secrets here (no request
    /// headers, no bodies).
    pub detail: String,
}

impl TransportFailure {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for TransportFailure {}

/// The class of a transport failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Could not connect (refused, DNS, unreachable): no connection was open, so no
    /// byte of the request can have reached the server. The core relies on this to
    /// resend even a login; a transport reports it only when that holds (a failure on
    /// an already open or pooled connection is [`Io`](Self::Io)). Also what a
    /// transport reports when no connection slot to the host came free before the
    /// exchange's deadline (its per-host connection cap): the request was never sent.
    Connect,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The connect or request timeout expired.
    Timeout,
    /// The connection broke mid-exchange (reset, truncated response).
    Io,
    /// The response body exceeded the transport's limit.
    BodyTooLarge,
    /// The request was dropped before it completed (a cancelled future, a shut-down
    /// client).
    Cancelled,
    /// Anything else.
    Other,
}

/// `Display` of a failure class: what happened, in words.
///
/// ```
/// use broker_session::{FailureKind, TransportFailure};
///
/// assert_eq!(FailureKind::Connect.to_string(), "could not connect");
/// let t = TransportFailure::new(FailureKind::Timeout, "no answer in 30 s");
/// assert_eq!(t.to_string(), "timed out: no answer in 30 s");
/// ```
impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "could not connect",
            Self::Tls => "TLS handshake or certificate check failed",
            Self::Timeout => "timed out",
            Self::Io => "connection broken mid-exchange",
            Self::BodyTooLarge => "response body too large",
            Self::Cancelled => "cancelled",
            Self::Other => "failed",
        })
    }
}
