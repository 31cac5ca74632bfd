//! The one error type of both transports.

use std::fmt;

use crate::error::UsageError;
use crate::failure::TransportFailure;
use crate::machine::AuthorizeError;

/// Everything a call on a transport's client can fail with; the same type in both
/// transports (each re-exports it as its `Error`).
///
/// Flat: a mistake has one variant whichever way it is reported. A refused intent
/// and an operation that ended with a [`UsageError`] are both [`Error::Usage`]; an
/// unusable session configuration is [`Error::SessionConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The session operation failed; the core's error says why and what to do.
    Session(crate::Error),
    /// The call makes no sense in the session's current state (not logged in, an
    /// intent this session does not support, too many queued).
    Usage(UsageError),
    /// The session could not be built from its configuration (a base URL, a key or
    /// another value that cannot work).
    SessionConfig(crate::Error),
    /// The session could not stamp credentials on an application request (not
    /// logged in, backing off, lost, or a request to another host).
    Authorize(AuthorizeError),
    /// An application request could not be exchanged (connect, TLS, timeout, body
    /// too large …).
    Transport(TransportFailure),
    /// The transport's configuration is unusable (a PEM text without a certificate,
    /// a certificate that does not parse, a zero timeout, a bad proxy). Fix the
    /// [`Config`](super::Config).
    Config(String),
    /// The operation cannot complete: the machine is idle, nothing is in flight and
    /// the operation has not ended. This is a bug in the machine; please report it.
    Stalled,
    /// The operating system's random number generator failed.
    Random,
    /// An operation ended with an outcome of another kind than its intent produces
    /// (a bug in the machine: please report it).
    UnexpectedOutcome,
    /// The blocking transport's keep-alive thread could not be started.
    ThreadSpawn,
    /// The async transport found no tokio runtime: create its clients inside one.
    NoRuntime,
}

impl Error {
    /// The error of an operation that ended in `e`: usage errors are reported as
    /// [`Error::Usage`], whether the machine refused the intent at once or later.
    pub fn from_session(e: crate::Error) -> Self {
        match e {
            crate::Error::Usage(u) => Self::Usage(u),
            e => Self::Session(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session(e) => write!(f, "{e}"),
            Self::Usage(e) => write!(f, "{e}"),
            Self::SessionConfig(e) => write!(f, "the session configuration is unusable: {e}"),
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
            Self::NoRuntime => {
                f.write_str("no tokio runtime: create the session inside a tokio runtime")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Session(e) | Self::SessionConfig(e) => Some(e),
            Self::Usage(e) => Some(e),
            Self::Authorize(e) => Some(e),
            Self::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Self::from_session(e)
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Self::Usage(e)
    }
}
