//! The Redis URL (redacted when shown), the client, and a connection that reconnects.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use zeroize::Zeroizing;

use crate::Error;

/// A Redis connection URL: one server as the `redis` crate reads it (`redis://`,
/// `rediss://` for TLS with the `tls` feature, on by default, `redis+unix://`, with
/// credentials: `redis://user:password@host:6379/0`), a Redis Cluster, or a server
/// found through Redis Sentinel:
///
/// - `redis+cluster://[user:password@]host:port[,host:port…]` (`rediss+cluster://`
///   with TLS): the cluster's entry points; commands go to the node that owns their
///   slot (a namespace's keys share one slot), and pub/sub goes through the first
///   entry point that answers (a cluster forwards every `PUBLISH` to every node).
/// - `redis+sentinel://[user:password@]host:port[,host:port…]/master-name[/db]`
///   (`rediss+sentinel://` with TLS): the Sentinels, and the name they monitor the
///   master under; every (re)connection asks them for the current master, so a
///   failover is followed. The credentials and database are the master's (the
///   Sentinels are asked without credentials).
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
    target: Target,
    url: RedisUrl,
    timeout: Duration,
}

/// What the URL names.
#[derive(Clone)]
enum Target {
    /// One server.
    Node(redis::Client),
    /// A Redis Cluster: commands through a cluster connection, pub/sub through a
    /// connection to one of the entry points.
    Cluster {
        cluster: ClusterClient,
        entry_points: Vec<redis::Client>,
    },
    /// The master Redis Sentinel names, asked for again at every connection.
    Sentinel(Arc<Mutex<SentinelClient>>),
}

/// The URL's scheme, if it names a cluster or Sentinels, and whether with TLS.
fn multi_node_scheme(url: &str) -> Option<(&'static str, bool, &str)> {
    for (scheme, kind, tls) in [
        ("redis+cluster://", "cluster", false),
        ("rediss+cluster://", "cluster", true),
        ("redis+sentinel://", "sentinel", false),
        ("rediss+sentinel://", "sentinel", true),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return Some((kind, tls, rest));
        }
    }
    None
}

/// `[user:password@]host:port[,host:port…]` and what follows the hosts (from the
/// first `/`, if any): one plain URL per host, each with the credentials.
fn node_urls(rest: &str, tls: bool) -> Result<(Vec<String>, &str), String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let scheme = if tls { "rediss" } else { "redis" };
    let urls: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{userinfo}{h}/"))
        .collect();
    if urls.is_empty() {
        return Err("no host".to_owned());
    }
    Ok((urls, path))
}

impl Target {
    fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let Some((kind, tls, rest)) = multi_node_scheme(url) else {
            return redis::Client::open(url)
                .map(Self::Node)
                .map_err(|e| e.to_string());
        };
        let (urls, path) = node_urls(rest, tls)?;
        if kind == "cluster" {
            if !path.trim_matches('/').is_empty() {
                return Err("a cluster has no database number".to_owned());
            }
            let entry_points = urls
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let cluster = ClusterClient::builder(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(|e| e.to_string())?;
            return Ok(Self::Cluster {
                cluster,
                entry_points,
            });
        }
        let mut parts = path.trim_start_matches('/').split('/');
        let master = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or("no master name after the Sentinels")?;
        let db = match parts.next().filter(|d| !d.is_empty()) {
            Some(d) => d.parse::<i64>().map_err(|_| "not a database number")?,
            None => 0,
        };
        // The master's credentials, as the URL gives them; the Sentinels get none.
        let first = redis::IntoConnectionInfo::into_connection_info(urls[0].as_str())
            .map_err(|e| e.to_string())?;
        let master_info = first.redis_settings().clone().set_db(db);
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(master_info);
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let sentinels: Vec<String> = urls
            .iter()
            .map(|u| {
                let host = u.rsplit('@').next().unwrap_or(u);
                let host = host.strip_prefix(&format!("{scheme}://")).unwrap_or(host);
                format!("{scheme}://{host}")
            })
            .collect();
        let client =
            SentinelClient::build(sentinels, master, Some(node), SentinelServerType::Master)
                .map_err(|e| e.to_string())?;
        Ok(Self::Sentinel(Arc::new(Mutex::new(client))))
    }

    /// A client for one server: the URL's, the master the Sentinels name now, or
    /// the cluster entry point at `index`.
    fn node(&self, index: usize) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Node(client) => Ok(client.clone()),
            Self::Cluster { entry_points, .. } => {
                Ok(entry_points[index % entry_points.len()].clone())
            }
            Self::Sentinel(sentinel) => sentinel
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_client(),
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Self::Cluster { entry_points, .. } => entry_points.len(),
            _ => 1,
        }
    }
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
        Self::open_with_timeout(url.into(), Self::DEFAULT_TIMEOUT)
    }

    fn open_with_timeout(url: RedisUrl, timeout: Duration) -> Result<Self, Error> {
        let target = Target::open(url.expose(), timeout).map_err(|e| Error::InvalidUrl {
            url: url.redacted(),
            detail: scrub(&e, &url),
        })?;
        Ok(Self {
            target,
            url,
            timeout,
        })
    }

    /// Sets the connect, read and write timeout (default [`Redis::DEFAULT_TIMEOUT`]).
    /// Zero is replaced by one millisecond.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        if let Target::Cluster { .. } = self.target
            && let Ok(reopened) = Self::open_with_timeout(self.url.clone(), self.timeout)
        {
            // The cluster client takes its timeouts when built.
            self.target = reopened.target;
        }
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

    /// A connection to one server (for pub/sub): the URL's, the current master of a
    /// Sentinel URL, or the first cluster entry point that answers.
    pub(crate) fn raw_connection(&self, during: &'static str) -> Result<redis::Connection, Error> {
        let mut last = None;
        for index in 0..self.target.nodes() {
            let opened = self.target.node(index).and_then(|client| {
                let conn = client.get_connection_with_timeout(self.timeout)?;
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                Ok(conn)
            });
            match opened {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => self.error(during, &e),
            None => Error::Redis {
                during,
                url: self.url.redacted(),
                detail: "no server to connect to".to_owned(),
            },
        })
    }

    /// A connection for commands: to the one server, or a cluster connection.
    fn command_connection(&self, during: &'static str) -> Result<Link, Error> {
        match &self.target {
            Target::Cluster { cluster, .. } => cluster
                .get_connection()
                .map(|c| Link::Cluster(Box::new(c)))
                .map_err(|e| self.error(during, &e)),
            _ => self.raw_connection(during).map(Link::Node),
        }
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
    let mut passwords = Vec::new();
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.expose())
        && let Some(password) = info.redis_settings().password()
    {
        passwords.push(password.to_owned());
    }
    // The userinfo's password as written (cluster and Sentinel URLs, which the
    // `redis` crate does not read itself).
    if let Some(rest) = url.expose().split_once("://").map(|(_, rest)| rest) {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            passwords.push(password.to_owned());
        }
    }
    for password in passwords.iter().filter(|p| !p.is_empty()) {
        text = text.replace(password.as_str(), "***");
    }
    text
}

/// A connection to Redis that reconnects on its next use after the server went away
/// (restart, failover, network): the failing call returns [`Error::Redis`], the next
/// one opens a new connection. Calls are never retried behind your back, since a
/// retried compare-and-set could act twice.
pub struct Connection {
    redis: Redis,
    inner: Option<Link>,
}

/// A live connection for commands.
enum Link {
    Node(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

impl Link {
    fn is_open(&self) -> bool {
        match self {
            Self::Node(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }

    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Node(c) => c,
            Self::Cluster(c) => c.as_mut(),
        }
    }
}

impl Connection {
    fn ensure(&mut self, during: &'static str) -> Result<&mut dyn ConnectionLike, Error> {
        if self.inner.as_ref().is_none_or(|c| !c.is_open()) {
            self.inner = Some(self.redis.command_connection(during)?);
        }
        Ok(self
            .inner
            .as_mut()
            .expect("connection was just set")
            .as_dyn())
    }

    /// Runs `f` on the live connection (opening one if needed); on a connection-level
    /// failure, drops the connection so the next call reconnects.
    pub(crate) fn run<T>(
        &mut self,
        during: &'static str,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let conn = self.ensure(during)?;
        f(conn).map_err(|e| {
            // A server that went away, or a master demoted to a replica by a
            // failover (READONLY): the next call connects afresh (to the new master,
            // through the Sentinels).
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
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
    fn cluster_and_sentinel_urls_open_and_hide_their_password() {
        for url in [
            "redis+cluster://u:hunter2@127.0.0.1:1,127.0.0.1:2",
            "redis+sentinel://u:hunter2@127.0.0.1:1,127.0.0.1:2/main",
            "redis+sentinel://:hunter2@127.0.0.1:1/main/3",
        ] {
            let redis = Redis::open(url).unwrap();
            let shown = format!("{redis:?} {}", redis.url());
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(":***@127.0.0.1:1"), "{shown}");
        }
        for url in [
            "redis+cluster://",
            "redis+cluster://127.0.0.1:1/0",
            "redis+sentinel://127.0.0.1:1",
            "redis+sentinel://u:hunter2@127.0.0.1:1/main/not-a-db",
        ] {
            let err = Redis::open(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
            assert!(!format!("{err} {err:?}").contains("hunter2"));
        }
    }

    #[test]
    fn errors_from_a_sentinel_url_do_not_show_the_password() {
        // Nothing listens on port 1: the Sentinel cannot be asked.
        let redis = Redis::open("redis+sentinel://u:hunter2@127.0.0.1:1/main")
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let err = redis.connect().unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, Error::Redis { .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn debug_of_a_client_does_not_show_the_password() {
        let redis = Redis::open("redis://user:hunter2@127.0.0.1:1/").unwrap();
        let text = format!("{redis:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("user:***@127.0.0.1"), "{text}");
    }
}
