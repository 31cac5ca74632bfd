//! Redis key names for one namespace (one shared broker login).

use crate::Error;

/// The Redis keys of one namespace. All share the hash tag `{namespace}`, so a Redis
/// Cluster puts them in one slot, as the Lua scripts need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) namespace: String,
    pub(crate) lease: String,
    pub(crate) fence: String,
    pub(crate) snapshot: String,
    pub(crate) channel: String,
    /// The highest generation a follower asked the owner to recover.
    pub(crate) recovery: String,
    pub(crate) recovery_channel: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Result<Self, Error> {
        if namespace.is_empty()
            || namespace.len() > 200
            || namespace
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_control())
        {
            return Err(Error::InvalidNamespace {
                namespace: namespace.chars().take(64).collect(),
            });
        }
        let base = format!("broker-session:{{{namespace}}}");
        Ok(Self {
            namespace: namespace.to_owned(),
            lease: format!("{base}:lease"),
            fence: format!("{base}:fence"),
            snapshot: format!("{base}:snapshot"),
            channel: format!("{base}:generations"),
            recovery: format!("{base}:recovery"),
            recovery_channel: format!("{base}:recoveries"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("ig-demo").unwrap();
        assert_eq!(keys.lease, "broker-session:{ig-demo}:lease");
        assert_eq!(keys.snapshot, "broker-session:{ig-demo}:snapshot");
    }

    #[test]
    fn braces_and_empty_names_are_refused() {
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a}b").is_err());
        assert!(Keys::new("a\nb").is_err());
    }
}
