//! The crate's one error type.

use std::fmt;

use broker_session::{AuthorizeError, TransportFailure, UsageError};

/// Everything a call on this crate's client can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The session operation failed; the core's error says why and what to do.
    Session(broker_session::Error),
    /// The intent was refused: it makes no sense in the session's current state.
    Usage(UsageError),
    /// The session could not stamp credentials on an application request (not
    /// logged in, backing off, lost, or a request to another host).
    Authorize(AuthorizeError),
    /// An application request could not be exchanged (connect, TLS, timeout, body
    /// too large …).
    Transport(TransportFailure),
    /// The transport's configuration is unusable (a PEM text without a certificate,
    /// a certificate that does not parse). Fix the [`Config`](crate::Config).
    Config(String),
    /// The operation cannot complete: the machine is idle, nothing is in flight and
    /// the operation has not ended. This is a bug in the machine; please report it.
    Stalled,
    /// The operating system's random number generator failed.
    Random,
    /// An operation ended with an outcome of another kind than its intent produces
    /// (a bug in the machine: please report it).
    UnexpectedOutcome,
    /// The keep-alive thread could not be started.
    ThreadSpawn,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session(e) => write!(f, "{e}"),
            Self::Usage(e) => write!(f, "intent refused: {e}"),
            Self::Authorize(e) => write!(f, "cannot authorize the request: {e}"),
            Self::Transport(e) => write!(f, "transport failure: {e}"),
            Self::Config(e) => write!(f, "transport configuration: {e}"),
            Self::Stalled => f.write_str(
                "the session machine went idle before the operation ended (a bug: please report it)",
            ),
            Self::Random => f.write_str("the operating system's random number generator failed"),
            Self::UnexpectedOutcome => f.write_str(
                "the operation ended with an unexpected kind of outcome (a bug: please report it)",
            ),
            Self::ThreadSpawn => f.write_str("the keep-alive thread could not be started"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Session(e) => Some(e),
            Self::Authorize(e) => Some(e),
            Self::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<broker_session::Error> for Error {
    fn from(e: broker_session::Error) -> Self {
        Self::Session(e)
    }
}
