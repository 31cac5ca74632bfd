//! A session's endpoint URIs, built once from its base URL.
//!
//! A session sends the same few URIs for its whole life. Formatting `{base}{path}` and
//! parsing it for each request costs a copy and a parse each time; here the scheme and
//! host are parsed once, and every endpoint's full path (base path + endpoint path)
//! is written once into one shared buffer. A request's URI is then put together from
//! reference-counted parts: no allocation, and a few bytes of state per endpoint.
//!
//! A path taken from the buffer is checked again on each use (`PathAndQuery` has no
//! unchecked constructor), a few hundred instructions. Only the endpoint a session
//! calls over and over (its keep-alive) keeps its path parsed: keeping every path
//! parsed would cost 40 bytes per endpoint per session for requests sent a few times
//! in a session's life.

use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};

/// The URIs of `N` endpoints under one base URL; endpoint `i` is the `i`-th path given
/// to [`EndpointUris::new`].
#[derive(Clone, Debug)]
pub(crate) struct EndpointUris<const N: usize> {
    scheme: Scheme,
    authority: Authority,
    /// Every endpoint's full path, one after the other.
    paths: Bytes,
    /// Where each path ends in `paths` (each starts where the previous one ends).
    ends: [u16; N],
    /// The keep-alive endpoint's index and its path, parsed.
    hot: (usize, PathAndQuery),
}

impl<const N: usize> EndpointUris<N> {
    /// `prefix` is the base URL's path without a trailing slash (`/v1/api`, or empty);
    /// `tails` are the endpoints' paths under it; `hot` is the index of the one sent
    /// most. `None` when a path does not form a valid URI path, they do not fit in
    /// 64 KiB, or `hot` is out of range.
    pub(crate) fn new(
        scheme: Scheme,
        authority: Authority,
        prefix: &str,
        tails: [&str; N],
        hot: usize,
    ) -> Option<Self> {
        let mut paths = String::with_capacity(tails.iter().map(|t| prefix.len() + t.len()).sum());
        let mut ends = [0u16; N];
        for (end, tail) in ends.iter_mut().zip(tails) {
            let start = paths.len();
            paths.push_str(prefix);
            paths.push_str(tail);
            PathAndQuery::try_from(&paths[start..]).ok()?;
            *end = u16::try_from(paths.len()).ok()?;
        }
        let mut uris = Self {
            scheme,
            authority,
            paths: Bytes::from(paths),
            ends,
            hot: (hot, PathAndQuery::from_static("/")),
        };
        uris.hot.1 = uris.path(hot)?;
        Some(uris)
    }

    /// Endpoint `i`'s path, checked again (see the module's documentation).
    fn path(&self, i: usize) -> Option<PathAndQuery> {
        let end = usize::from(*self.ends.get(i)?);
        let start = i.checked_sub(1).map_or(0, |p| usize::from(self.ends[p]));
        // A slice of the shared buffer: a reference count, not a copy.
        PathAndQuery::from_maybe_shared(self.paths.slice(start..end)).ok()
    }

    /// The URI of endpoint `i` (`None` only for an index out of range).
    pub(crate) fn get(&self, i: usize) -> Option<Uri> {
        let path = if i == self.hot.0 {
            self.hot.1.clone()
        } else {
            self.path(i)?
        };
        let mut parts = Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_gets_its_full_uri() {
        let base: Uri = "https://localhost:5000/v1/api".parse().unwrap();
        let uris = EndpointUris::new(
            base.scheme().unwrap().clone(),
            base.authority().unwrap().clone(),
            base.path(),
            [
                "/tickle",
                "/iserver/auth/status",
                "/session?fetchSessionTokens=true",
            ],
            0,
        )
        .unwrap();
        assert_eq!(uris.get(0).unwrap(), "https://localhost:5000/v1/api/tickle");
        assert_eq!(
            uris.get(1).unwrap(),
            "https://localhost:5000/v1/api/iserver/auth/status"
        );
        let q = uris.get(2).unwrap();
        assert_eq!(q.path(), "/v1/api/session");
        assert_eq!(q.query(), Some("fetchSessionTokens=true"));
        assert!(uris.get(3).is_none());
        let root =
            EndpointUris::new(Scheme::HTTP, "h:1".parse().unwrap(), "", ["/x", "/y"], 1).unwrap();
        assert_eq!(root.get(0).unwrap(), "http://h:1/x");
        assert_eq!(root.get(1).unwrap(), "http://h:1/y");
        assert!(EndpointUris::new(Scheme::HTTP, "h".parse().unwrap(), "", ["/a b"], 0).is_none());
        assert!(EndpointUris::new(Scheme::HTTP, "h".parse().unwrap(), "", ["/a"], 1).is_none());
    }
}
