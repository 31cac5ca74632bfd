//! Shared pieces of the fuzz targets: a byte reader, response building, and a driver
//! that runs any [`Machine`] from arbitrary bytes while checking the loop contract.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant, UNIX_EPOCH};

use broker_session::{
    AuthStamp, Event, FailureKind, Input, Machine, Now, OpId, Output, RequestId, TransportFailure,
};

/// Reads small decisions from the fuzzer's bytes; zeros once they run out.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    /// One byte.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// Up to `max` bytes (length from the input).
    pub fn take(&mut self, max: usize) -> &[u8] {
        let n = (usize::from(self.u16()) % (max + 1)).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    /// Whether bytes are left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bodies the decoders are interested in, to start the fuzzer near valid inputs.
pub const TEMPLATES: &[&[u8]] = &[
    br#"{"currentAccountId":"A","accounts":[{"accountId":"A","preferred":true}],"lightstreamerEndpoint":"x","clientId":"1"}"#,
    br#"{"accountId":"A","clientId":"1","oauthToken":{"access_token":"a","refresh_token":"r","expires_in":"60"}}"#,
    br#"{"access_token":"a","refresh_token":"r","expires_in":"60"}"#,
    br#"{"encryptionKey":"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A","timeStamp":1601218928621}"#,
    br#"{"errorCode":"error.security.client-token-invalid"}"#,
    br#"{"errorCode":"error.security.oauth-token-invalid"}"#,
    br#"{"errorCode":"error.public-api.exceeded-api-key-allowance"}"#,
    br#"{"authenticated":true,"connected":true,"competing":false}"#,
    br#"{"authenticated":false,"connected":true,"competing":false}"#,
    br#"{"session":"abc","iserver":{"authStatus":{"authenticated":true,"connected":true}}}"#,
    br#"{"error":"no session"}"#,
    br#"{"error":"Bad Request: no bridge","statusCode":400}"#,
    br#"{"diffie_hellman_response":"ff","live_session_token_signature":"00","live_session_token_expiration":1}"#,
    br#"{"status":true}"#,
    b"<html>oops</html>",
];

/// A response from fuzz bytes: a status, a few headers, and a body that is either
/// raw bytes or a template, possibly cut.
pub fn response(b: &mut Bytes<'_>) -> http::Response<Vec<u8>> {
    let status = match b.u8() % 8 {
        0 => 200,
        1 => 401,
        2 => 429,
        3 => 500,
        4 => 302,
        5 => 403,
        6 => 400,
        _ => 100 + b.u16() % 900,
    };
    let body = if b.u8() % 2 == 0 {
        let t = TEMPLATES[usize::from(b.u8()) % TEMPLATES.len()];
        let cut = usize::from(b.u16()) % (t.len() + 1);
        if b.u8() % 2 == 0 {
            t.to_vec()
        } else {
            t[..cut].to_vec()
        }
    } else {
        b.take(512).to_vec()
    };
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    for _ in 0..(b.u8() % 4) {
        let name = match b.u8() % 5 {
            0 => "cst",
            1 => "x-security-token",
            2 => "location",
            3 => "content-type",
            _ => "x-other",
        };
        let value = b.take(48).to_vec();
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            r.headers_mut().append(name, v);
        }
    }
    r
}

/// A fixed starting time (wall clock 2026-11-23T12:00:00Z).
pub fn start() -> Now {
    // Instant has no constructor; the fuzz targets are not the sans-IO core.
    Now::new(
        Instant::now(),
        UNIX_EPOCH + Duration::from_secs(1_795_435_200),
    )
}

/// Drives `m` from the bytes: intents (through `submit`), answers to its requests,
/// transport failures, clock steps, application requests (`authorize` + `observe`).
/// Panics if the machine breaks the loop contract: a `Wait` not in the future, two
/// session requests in flight, an operation completed twice.
pub fn drive<M: Machine>(
    mut m: M,
    data: &[u8],
    intent: impl Fn(u8) -> M::Intent,
    app_request: impl Fn() -> http::Request<Vec<u8>>,
) {
    let mut b = Bytes(data);
    let mut now = start();
    let mut in_flight: Option<(RequestId, Instant)> = None;
    let mut done: Vec<OpId> = Vec::new();
    let mut steps = 0;
    while !b.is_empty() && steps < 2_000 {
        steps += 1;
        // Drain until Wait.
        for _ in 0..1_000 {
            match m.poll_output(now) {
                Output::Send(t) => {
                    if let Some((_, sent)) = in_flight {
                        // Legal only once the machine's own 30 s deadline passed.
                        assert!(
                            now.mono - sent >= Duration::from_secs(30),
                            "two session requests in flight"
                        );
                    }
                    in_flight = Some((t.id, now.mono));
                }
                Output::Event(Event::Completed { op, .. }) => {
                    assert!(!done.contains(&op), "{op} completed twice");
                    done.push(op);
                }
                Output::Event(_) => {}
                Output::Wait(w) => {
                    if let Some(at) = w {
                        assert!(at > now.mono, "Wait not in the future");
                    }
                    break;
                }
                _ => {}
            }
        }
        match b.u8() % 8 {
            0 => {
                let _ = m.submit(intent(b.u8()), now);
            }
            1 | 2 | 3 => {
                if let Some((id, _)) = in_flight.take() {
                    let response = response(&mut b);
                    m.handle_input(Input::Response { id, response }, now);
                }
            }
            4 => {
                if let Some((id, _)) = in_flight.take() {
                    let kind = match b.u8() % 4 {
                        0 => FailureKind::Timeout,
                        1 => FailureKind::Io,
                        2 => FailureKind::Connect,
                        _ => FailureKind::Cancelled,
                    };
                    m.handle_input(
                        Input::Failed {
                            id,
                            failure: TransportFailure::new(kind, "fuzz"),
                        },
                        now,
                    );
                }
            }
            5 => {
                let ms = match b.u8() % 4 {
                    0 => u64::from(b.u8()),
                    1 => u64::from(b.u16()) * 10,
                    2 => u64::from(b.u16()) * 1_000,
                    _ => u64::from(b.u16()) * 60_000,
                };
                now = now + Duration::from_millis(ms);
                m.handle_input(Input::Timeout, now);
            }
            6 => {
                let mut req = app_request();
                let stamp = m
                    .authorize(&mut req, now)
                    .unwrap_or(AuthStamp { generation: 0 });
                let stamp = if b.u8() % 4 == 0 {
                    AuthStamp {
                        generation: stamp.generation.saturating_sub(1),
                    }
                } else {
                    stamp
                };
                let _ = m.observe(&response(&mut b), stamp, now);
            }
            _ => {
                // An answer to an arbitrary request id: ignored unless it is the one in
                // flight, which it then answers.
                let id = RequestId(u64::from(b.u16()));
                if in_flight.is_some_and(|(f, _)| f == id) {
                    in_flight = None;
                }
                m.handle_input(
                    Input::Response {
                        id,
                        response: response(&mut b),
                    },
                    now,
                );
            }
        }
        let _ = m.state();
    }
}
