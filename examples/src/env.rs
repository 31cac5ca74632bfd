//! Reading the examples' settings from environment variables.

use std::path::PathBuf;
use std::time::Duration;

/// A variable's value, if set and not empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A required variable: its value, or an error that names it.
pub fn required(name: &str) -> Result<String, String> {
    var(name).ok_or_else(|| format!("{name} is not set"))
}

/// A number of seconds (`IG_HOLD_SECS=30`), or `default` when unset.
pub fn seconds(name: &str, default: u64) -> Result<Duration, String> {
    match var(name) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{name} must be a whole number of seconds, not {v:?}")),
    }
}

/// A boolean (`true`/`false`/`1`/`0`), or `default` when unset.
pub fn flag(name: &str, default: bool) -> Result<bool, String> {
    match var(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(v) => Err(format!("{name} must be true or false, not {v:?}")),
    }
}

/// Which transport an example runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `broker-session-ureq`, blocking.
    Ureq,
    /// `broker-session-hyper`, async on tokio.
    Hyper,
}

/// The transport named by `name` (`ureq` or `hyper`); `ureq` when unset.
pub fn transport(name: &str) -> Result<Transport, String> {
    match var(name).as_deref().map(str::trim) {
        None | Some("ureq") => Ok(Transport::Ureq),
        Some("hyper") => Ok(Transport::Hyper),
        Some(v) => Err(format!("{name} must be ureq or hyper, not {v:?}")),
    }
}

/// The contents of the file a variable names, if set.
pub fn file(name: &str) -> Result<Option<String>, String> {
    match var(name) {
        None => Ok(None),
        Some(path) => {
            let path = PathBuf::from(path);
            std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| format!("{name}: cannot read {}: {e}", path.display()))
        }
    }
}
