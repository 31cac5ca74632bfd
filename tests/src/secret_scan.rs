//! Finds secrets in captured output, in any form a careless print could take.
//!
//! A [`SecretScan`] holds the secrets issued in a run (tokens, keys, passwords) and
//! derives, for each, the forms it could leak in: as is; base64 (standard and
//! URL-safe, with and without padding, at each of the three byte alignments, so a
//! secret inside a larger encoded blob is found too); hex (lower and upper case);
//! percent-encoded (upper and lower case hex); and Rust's `Debug` of its bytes
//! (`[102, 97, …]`). A secret that is itself base64 or hex text (a live session token,
//! an access token secret) also gets the forms of its decoded bytes.
//!
//! [`SecretScan::find`] reports any run of [`SecretScan::WINDOW`] bytes of any of
//! these forms, so a truncated or partly printed secret is caught as well.
//!
//! [`Harvest`] wraps a fake broker and adds every token its answers carry to its scan,
//! so a test learns what was issued without knowing the fake's internals.
//!
//! ```
//! use broker_session_testkit::secret_scan::SecretScan;
//! let mut scan = SecretScan::new();
//! scan.add("cst", "fakeig-cst-00001-secret");
//! assert!(scan.find("log: token=ZmFrZWlnLWNzdC0wMDAwMS1zZWNyZXQ").is_some());
//! assert!(scan.find("log: state=Active").is_none());
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use crate::sim::{FakeBroker, Reply};

/// Where a window comes from: the secret's label and the form.
#[derive(Clone, Debug)]
struct Origin {
    label: usize,
    form: &'static str,
}

/// Windows of one length, by their first 8 bytes.
type Table = HashMap<u64, Vec<(Vec<u8>, Origin)>>;

/// A secret found in output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// The secret's label, as given to [`SecretScan::add`].
    pub label: String,
    /// The form it was found in (`raw`, `base64`, `hex`, `percent` …).
    pub form: &'static str,
    /// Byte offset of the match in the scanned text.
    pub at: usize,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret `{}` ({} form) at byte {}",
            self.label, self.form, self.at
        )
    }
}

/// Secrets of a run and every window of every form of them.
#[derive(Clone, Default)]
pub struct SecretScan {
    labels: Vec<String>,
    /// Secrets as added, with their labels.
    added: Vec<(String, Vec<u8>)>,
    /// Secrets and decoded forms, each once.
    seen: HashSet<Vec<u8>>,
    /// Window length → first 8 bytes → (window, origin).
    windows: HashMap<usize, Table>,
}

impl fmt::Debug for SecretScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScan")
            .field("secrets", &self.labels)
            .finish_non_exhaustive()
    }
}

fn prefix(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&w[..8]);
    u64::from_le_bytes(b)
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

fn percent(bytes: &[u8], upper: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The base64 characters that depend only on `secret` when it sits at byte offset
/// `k` (0, 1 or 2) of a larger encoded message.
fn base64_aligned(engine: &impl base64::Engine, secret: &[u8], k: usize) -> String {
    let mut msg = vec![0u8; k];
    msg.extend_from_slice(secret);
    let enc = engine.encode(&msg);
    let first = (8 * k).div_ceil(6);
    let last = (8 * (k + secret.len())) / 6;
    enc.get(first..last.min(enc.len()))
        .unwrap_or_default()
        .to_owned()
}

impl SecretScan {
    /// Length of the runs looked for: any this long of any form is a leak.
    pub const WINDOW: usize = 12;

    /// An empty scan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of secrets added (distinct values).
    pub fn len(&self) -> usize {
        self.added.len()
    }

    /// Whether no secret was added.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
    }

    fn push_form(&mut self, label: usize, form: &'static str, text: &[u8], window: usize) {
        if text.len() < window {
            return;
        }
        let per_len = self.windows.entry(window).or_default();
        for w in text.windows(window) {
            let bucket = per_len.entry(prefix(w)).or_default();
            if !bucket.iter().any(|(x, _)| x == w) {
                bucket.push((w.to_vec(), Origin { label, form }));
            }
        }
    }

    /// Adds a secret (its bytes) and every encoded form of it. Text secrets that are
    /// base64 or hex get the forms of their decoded bytes too.
    ///
    /// # Panics
    /// If the secret is shorter than [`WINDOW`](Self::WINDOW) bytes: too short to
    /// look for without false alarms (a test bug).
    pub fn add(&mut self, label: &str, secret: impl AsRef<[u8]>) {
        let secret = secret.as_ref();
        assert!(
            secret.len() >= Self::WINDOW,
            "secret `{label}` is shorter than {} bytes",
            Self::WINDOW
        );
        if !self.added.iter().any(|(_, s)| s == secret) {
            self.added.push((label.to_owned(), secret.to_vec()));
        }
        self.add_bytes(label, secret);
        let Ok(text) = std::str::from_utf8(secret) else {
            return;
        };
        let text = text.trim();
        let mut decoded: Vec<Vec<u8>> = Vec::new();
        decoded.extend(STANDARD.decode(text).ok());
        decoded.extend(URL_SAFE.decode(text).ok());
        if text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            decoded.push(
                (0..text.len())
                    .step_by(2)
                    .filter_map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
                    .collect(),
            );
        }
        for raw in decoded {
            if raw.len() >= Self::WINDOW && raw != secret {
                self.add_bytes(&format!("{label} (decoded)"), &raw);
            }
        }
    }

    /// Adds every secret of `other`.
    pub fn extend(&mut self, other: &Self) {
        for (label, secret) in &other.added {
            self.add(label, secret);
        }
    }

    fn add_bytes(&mut self, label: &str, secret: &[u8]) {
        if !self.seen.insert(secret.to_vec()) {
            return;
        }
        let l = self.labels.len();
        self.labels.push(label.to_owned());
        let w = Self::WINDOW;
        self.push_form(l, "raw", secret, w);
        for k in 0..3 {
            for (form, s) in [
                ("base64", base64_aligned(&STANDARD, secret, k)),
                ("base64url", base64_aligned(&URL_SAFE, secret, k)),
            ] {
                self.push_form(l, form, s.as_bytes(), w);
            }
        }
        for (form, s) in [
            ("base64", STANDARD.encode(secret)),
            ("base64 unpadded", STANDARD_NO_PAD.encode(secret)),
            ("base64url", URL_SAFE.encode(secret)),
            ("base64url unpadded", URL_SAFE_NO_PAD.encode(secret)),
            ("hex", hex(secret, false)),
            ("HEX", hex(secret, true)),
            ("percent", percent(secret, true)),
            ("percent lower", percent(secret, false)),
        ] {
            self.push_form(l, form, s.as_bytes(), w);
        }
        // `{:?}` of the bytes; longer runs, as short ones of small numbers are common.
        self.push_form(l, "Debug bytes", format!("{secret:?}").as_bytes(), 2 * w);
    }

    /// Adds the tokens an answer carries: the `CST` and `X-SECURITY-TOKEN` headers, and
    /// the JSON fields `access_token`, `refresh_token` (IG) and `session` (IBKR's
    /// tickle session id), wherever they are in the body. Values shorter than
    /// [`WINDOW`](Self::WINDOW) are skipped.
    pub fn add_from_response(&mut self, response: &http::Response<Vec<u8>>) {
        for name in ["cst", "x-security-token"] {
            for v in response.headers().get_all(name) {
                if v.len() >= Self::WINDOW {
                    self.add(name, v.as_bytes());
                }
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(response.body()) {
            self.add_json_fields(&v);
        }
    }

    fn add_json_fields(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if let ("access_token" | "refresh_token" | "session", Some(s)) =
                        (k.as_str(), x.as_str())
                        && s.len() >= Self::WINDOW
                    {
                        self.add(k, s);
                    }
                    self.add_json_fields(x);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| self.add_json_fields(x)),
            _ => {}
        }
    }

    /// The first secret found in `text`, if any.
    pub fn find(&self, text: &str) -> Option<Leak> {
        let bytes = text.as_bytes();
        for (&len, table) in &self.windows {
            if bytes.len() < len {
                continue;
            }
            for (at, w) in bytes.windows(len).enumerate() {
                if let Some(bucket) = table.get(&prefix(w))
                    && let Some((_, o)) = bucket.iter().find(|(x, _)| x == w)
                {
                    return Some(Leak {
                        label: self.labels[o.label].clone(),
                        form: o.form,
                        at,
                    });
                }
            }
        }
        None
    }

    /// Panics, naming the secret and its form (never the value), if `text` holds any.
    ///
    /// # Panics
    /// On a leak.
    pub fn assert_clean(&self, what: &str, text: &str) {
        if let Some(leak) = self.find(text) {
            let start = leak.at.saturating_sub(40);
            let context: String = text
                .get(start..leak.at)
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            panic!("{what}: {leak}, after “{context}”");
        }
    }
}

/// A fake broker that adds every token its answers carry to a [`SecretScan`]
/// (see [`SecretScan::add_from_response`]), and runs an optional hook after each
/// request to add secrets the answers do not show (a live session token, say).
pub struct Harvest<F> {
    /// The wrapped broker.
    pub inner: F,
    /// The secrets seen so far.
    pub scan: SecretScan,
    hook: Option<HarvestHook<F>>,
}

/// A [`Harvest`] hook: the broker after the request, the request, the scan.
pub type HarvestHook<F> = Box<dyn FnMut(&mut F, &http::Request<Vec<u8>>, &mut SecretScan)>;

impl<F> Harvest<F> {
    /// Wraps `inner`, starting from `scan` (with the secrets known up front: API key,
    /// password, keys).
    pub fn new(inner: F, scan: SecretScan) -> Self {
        Self {
            inner,
            scan,
            hook: None,
        }
    }

    /// Runs `hook` after every request.
    #[must_use]
    pub fn with_hook(mut self, hook: HarvestHook<F>) -> Self {
        self.hook = Some(hook);
        self
    }
}

impl<F: fmt::Debug> fmt::Debug for Harvest<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harvest")
            .field("inner", &self.inner)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl<F: FakeBroker> FakeBroker for Harvest<F> {
    fn handle(&mut self, request: &http::Request<Vec<u8>>, now: broker_session::Now) -> Reply {
        let reply = self.inner.handle(request, now);
        if let Reply::Response(r) = &reply {
            self.scan.add_from_response(r);
        }
        if let Some(hook) = self.hook.as_mut() {
            hook(&mut self.inner, request, &mut self.scan);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_found_and_plain_text_is_not() {
        let mut scan = SecretScan::new();
        let token = "fakeig-access-00007-secret";
        scan.add("access", token);
        let b = token.as_bytes();
        for (form, text) in [
            ("raw", token.to_owned()),
            ("base64", STANDARD.encode(b)),
            ("base64url unpadded", URL_SAFE_NO_PAD.encode(b)),
            ("hex", hex(b, false)),
            ("HEX", hex(b, true)),
            ("percent", percent(b, true)),
            ("debug", format!("{b:?}")),
            // Inside a larger blob, at each alignment.
            ("blob+1", STANDARD.encode(format!("x{token}y"))),
            ("blob+2", STANDARD.encode(format!("xy{token}z"))),
            ("blob+3", STANDARD.encode(format!("CST-{token}|XST-x"))),
            // A 12-byte piece only.
            ("cut", format!("…{}…", &token[5..17])),
        ] {
            assert!(scan.find(&format!("a {text} b")).is_some(), "{form}");
        }
        assert!(scan.find("state=Active token=*** len=26").is_none());
        // Base64 text secrets are looked for decoded too.
        let mut scan = SecretScan::new();
        let lst_bytes: Vec<u8> = (1..=20).collect();
        scan.add("lst", STANDARD.encode(&lst_bytes));
        assert!(scan.find(&hex(&lst_bytes, false)).is_some());
        assert!(scan.find(&format!("{lst_bytes:?}")).is_some());
    }

    #[test]
    fn answers_are_harvested() {
        let r = http::Response::builder()
            .header("CST", "cst-token-0123456789")
            .body(
                br#"{"oauthToken":{"access_token":"access-0123456789","expires_in":"60"}}"#
                    .to_vec(),
            )
            .unwrap_or_default();
        let mut scan = SecretScan::new();
        scan.add_from_response(&r);
        assert_eq!(scan.len(), 2);
        assert!(scan.find("x cst-token-0123456789 y").is_some());
        assert!(scan.find("Bearer access-0123456789").is_some());
    }
}
