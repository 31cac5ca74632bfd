//! Host name resolution that stays cheap under an overall exchange deadline.
//!
//! With any overall timeout set, ureq's default resolver looks every host up on a new
//! thread (so the lookup can be abandoned when the budget runs out), even an IP
//! literal and even when a pooled connection is then reused: about 100 µs per request
//! on loopback (`benches/exchange_deadline.rs`). This resolver parses IP literals
//! itself and remembers the addresses of a host name for a short while, so the
//! deadline-bounded lookup runs once per host per [`CACHE_FOR`], not once per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long resolved addresses are reused: about what common DNS caches do for
/// short-lived records. A pooled connection outlives it anyway.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// Host names remembered at most; the cache is emptied when full (a session talks
/// to one or two hosts).
const CACHE_HOSTS: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct CachingResolver {
    default: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(host), Some(scheme)) = (uri.host(), uri.scheme()) else {
            return self.default.resolve(uri, config, timeout);
        };
        let port = uri.port_u16().or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        let Some(port) = port else {
            return self.default.resolve(uri, config, timeout);
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = format!("{host}:{port}");
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, addrs)) = cache.get(&key)
                && now.saturating_duration_since(*at) < CACHE_FOR
            {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.default.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_HOSTS {
            cache.clear();
        }
        cache.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}
