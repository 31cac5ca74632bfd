//! The Redis URL (redacted when shown), the client, and a connection that reconnects.

use std::fmt;
use std::time::Duration;

use redis::ConnectionLike;
use zeroize::Zeroizing;

use crate::Error;

/// A Redis connection URL, as the `redis` crate reads it: `redis://`, `rediss://` (TLS,
/// with the `tls` feature, on by default), `redis+unix://`, with credentials
/// (`redis://user:password@host:6379/0`).
///
/// Debug and Display hide the password and any query string:
///
/// ```
/// use broker_session_redis::RedisUrl;
///
/// let url = RedisUrl::new("rediss://app:s3cret@cache.example:6380/0");
/// assert_eq!(url.to_string(), "rediss://app:***@cache.example:6380/0");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct RedisUrl(Zeroizing<String>);

impl RedisUrl {
    /// Wraps a URL. It is parsed when opened ([`Redis::open`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self(Zeroizing::new(url.into()))
    }

    /// The URL with its password and query string replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<not a URL>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

/// A Redis server (or Sentinel/Cluster entry point) to connect to. Cheap to clone.
///
/// ```no_run
/// let redis = broker_session_redis::Redis::open("redis://127.0.0.1:6379/")?;
/// let mut conn = redis.connect()?;
/// conn.ping()?;
/// # Ok::<(), broker_session_redis::Error>(())
/// ```
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    url: RedisUrl,
    timeout: Duration,
}

impl Redis {
    /// How long a connection attempt, a command or a reply may take by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Reads the URL. Nothing is sent until [`Redis::connect`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when the `redis` crate cannot read the URL.
    pub fn open(url: impl Into<RedisUrl>) -> Result<Self, Error> {
        let url = url.into();
        let client = redis::Client::open(url.expose()).map_err(|e| Error::InvalidUrl {
            url: url.redacted(),
            detail: scrub(&e.to_string(), &url),
        })?;
        Ok(Self {
            client,
            url,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Sets the connect, read and write timeout (default [`Redis::DEFAULT_TIMEOUT`]).
    /// Zero is replaced by one millisecond.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The URL, which shows itself redacted.
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Opens a connection now.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when the server cannot be reached or refuses the credentials.
    pub fn connect(&self) -> Result<Connection, Error> {
        let mut conn = Connection {
            redis: self.clone(),
            inner: None,
        };
        conn.ensure("connecting")?;
        Ok(conn)
    }

    pub(crate) fn raw_connection(&self, during: &'static str) -> Result<redis::Connection, Error> {
        let conn = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.error(during, &e))?;
        conn.set_read_timeout(Some(self.timeout))
            .and_then(|()| conn.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.error(during, &e))?;
        Ok(conn)
    }

    pub(crate) fn error(&self, during: &'static str, e: &redis::RedisError) -> Error {
        Error::Redis {
            during,
            url: self.url.redacted(),
            detail: scrub(&e.to_string(), &self.url),
        }
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Removes the URL and its password from an error text of the `redis` crate.
fn scrub(text: &str, url: &RedisUrl) -> String {
    let mut text = text.replace(url.expose(), &url.redacted());
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.expose())
        && let Some(password) = info.redis_settings().password()
        && !password.is_empty()
    {
        text = text.replace(password, "***");
    }
    text
}

/// A connection to Redis that reconnects on its next use after the server went away
/// (restart, failover, network): the failing call returns [`Error::Redis`], the next
/// one opens a new connection. Calls are never retried behind your back, since a
/// retried compare-and-set could act twice.
pub struct Connection {
    redis: Redis,
    inner: Option<redis::Connection>,
}

impl Connection {
    fn ensure(&mut self, during: &'static str) -> Result<&mut redis::Connection, Error> {
        if self.inner.as_ref().is_none_or(|c| !c.is_open()) {
            self.inner = Some(self.redis.raw_connection(during)?);
        }
        Ok(self.inner.as_mut().expect("connection was just set"))
    }

    /// Runs `f` on the live connection (opening one if needed); on a connection-level
    /// failure, drops the connection so the next call reconnects.
    pub(crate) fn run<T>(
        &mut self,
        during: &'static str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let conn = self.ensure(during)?;
        f(conn).map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_unrecoverable_error()
            {
                self.inner = None;
            }
            self.redis.error(during, &e)
        })
    }

    /// Sends `PING`: checks the server answers (and reconnects if it had gone away).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when it does not answer.
    pub fn ping(&mut self) -> Result<(), Error> {
        self.run("sending PING", |c| redis::cmd("PING").query::<String>(c))
            .map(drop)
    }

    /// The server this connection talks to.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.redis.url)
            .field("open", &self.inner.as_ref().is_some_and(|c| c.is_open()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_queries_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("rediss://u:p:w@h/"), "rediss://u:***@h/");
        assert_eq!(redact("redis://token@h"), "redis://***@h");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?pass=pw&db=1"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(redact("no url"), "<not a URL>");
    }

    #[test]
    fn open_errors_do_not_show_the_password() {
        let err = Redis::open("redis://user:hunter2@[bad").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_are_accepted() {
        let redis = Redis::open("rediss://:pw@cache.example:6380/0").unwrap();
        assert_eq!(
            redis.url().to_string(),
            "rediss://:***@cache.example:6380/0"
        );
    }

    #[test]
    fn debug_of_a_client_does_not_show_the_password() {
        let redis = Redis::open("redis://user:hunter2@127.0.0.1:1/").unwrap();
        let text = format!("{redis:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("user:***@127.0.0.1"), "{text}");
    }
}
