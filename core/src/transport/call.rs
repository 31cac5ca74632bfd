//! The application-call sub-machine: what a client's `send` decides, written once.

use super::Error;
use crate::failure::TransportFailure;
use crate::machine::{AuthStamp, AuthorizeError, Machine, Observation, OpId};
use crate::time::Now;

/// How many times a call waits for credentials being obtained before it gives up
/// with [`AuthorizeError::Pending`]: once for the login or refresh under way, once
/// more for a recovery that may follow it.
const PENDING_WAITS: u8 = 2;

/// One application request on its way through a session: authorize → (credentials
/// pending: wait for that operation, at most twice) → send → observe → replay once,
/// or wait for the one recovery and replay once → done.
///
/// Pure: it decides, the transport acts. The transport calls [`next`](Self::next)
/// under its lock with the machine and the last input ([`CallInput::Start`] first),
/// then does what the returned [`CallStep`] says (send the request without holding
/// the lock, or drive the machine until the operation finished), and feeds the result
/// back, until [`CallStep::Done`]. Poll the machine (e.g. [`Driver::pump`]) after every
/// step that is not [`CallStep::Send`]: `authorize` and `observe` may have given it
/// work.
///
/// [`Driver::pump`]: crate::driver::Driver::pump
///
/// ```
/// use broker_session::transport::{Call, CallInput, CallStep};
/// # use broker_session::{http, Machine, Now};
/// # fn demo<M: Machine>(
/// #     machine: &mut M,
/// #     now: Now,
/// #     exchange: impl Fn(http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, broker_session::TransportFailure>,
/// #     wait: impl Fn(&mut M, broker_session::OpId) -> Result<(), broker_session::Error>,
/// # ) -> Result<http::Response<Vec<u8>>, broker_session::transport::Error> {
/// let request = http::Request::get("/accounts").body(Vec::new()).unwrap();
/// let mut call = Call::new(request, Some("https://demo-api.ig.com/gateway/deal"));
/// let mut input = CallInput::Start;
/// loop {
///     input = match call.next(machine, input, now) {
///         CallStep::Send(request) => CallInput::Sent(exchange(request)),
///         CallStep::WaitFor(op) => CallInput::Finished(wait(machine, op)),
///         CallStep::Done(result) => return result,
///         _ => unreachable!(),
///     };
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Call {
    request: http::Request<Vec<u8>>,
    stamp: Option<AuthStamp>,
    resent: bool,
    waits: u8,
}

/// What a [`Call`] learned since its last step.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallInput {
    /// Nothing yet: the first step.
    Start,
    /// The exchange of the last [`CallStep::Send`] ended.
    Sent(Result<http::Response<Vec<u8>>, TransportFailure>),
    /// The operation of the last [`CallStep::WaitFor`] finished, successfully or not.
    Finished(Result<(), crate::Error>),
}

/// What the transport does next for a [`Call`].
#[derive(Debug)]
#[non_exhaustive]
#[must_use = "a call step must be acted on"]
pub enum CallStep {
    /// Exchange this (stamped) request, then feed [`CallInput::Sent`].
    Send(http::Request<Vec<u8>>),
    /// Drive the machine until this operation finished (a login, refresh or
    /// recovery another party may also wait for), then feed [`CallInput::Finished`].
    /// With a [`Driver`](crate::driver::Driver), [`join`](crate::driver::Driver::join)
    /// it under the lock this step was decided under, wait for
    /// [`finished`](crate::driver::Driver::finished), then
    /// [`leave`](crate::driver::Driver::leave) it.
    WaitFor(OpId),
    /// The call is over: the broker's response (whatever its status) or why not.
    Done(Result<http::Response<Vec<u8>>, Error>),
}

impl Call {
    /// A call for `request`. A URI without scheme and host (`/accounts`) is taken
    /// relative to `base_url` (the session's, see [`resolve`]).
    pub fn new(mut request: http::Request<Vec<u8>>, base_url: Option<&str>) -> Self {
        if let Some(base) = base_url
            && let Some(uri) = resolve(request.uri(), base)
        {
            *request.uri_mut() = uri;
        }
        Self {
            request,
            stamp: None,
            resent: false,
            waits: 0,
        }
    }

    /// The next step, given what happened since the last one.
    pub fn next<M: Machine>(&mut self, machine: &mut M, input: CallInput, now: Now) -> CallStep {
        match input {
            CallInput::Start | CallInput::Finished(Ok(())) => self.authorize(machine, now),
            CallInput::Finished(Err(e)) => CallStep::Done(Err(Error::from_session(e))),
            CallInput::Sent(Err(failure)) => CallStep::Done(Err(Error::Transport(failure))),
            CallInput::Sent(Ok(response)) => {
                let Some(stamp) = self.stamp.take() else {
                    // Only a transport feeding a response it was not asked for gets
                    // here; the response is the caller's either way.
                    return CallStep::Done(Ok(response));
                };
                match machine.observe(&response, stamp, now) {
                    Observation::Replay if !self.resent => {
                        self.resent = true;
                        self.authorize(machine, now)
                    }
                    Observation::Recover { op } if !self.resent => {
                        self.resent = true;
                        CallStep::WaitFor(op)
                    }
                    Observation::Lost(e) => CallStep::Done(Err(Error::from_session(e))),
                    _ => CallStep::Done(Ok(response)),
                }
            }
        }
    }

    fn authorize<M: Machine>(&mut self, machine: &mut M, now: Now) -> CallStep {
        let mut request = clone_request(&self.request);
        match machine.authorize(&mut request, now) {
            Ok(stamp) => {
                self.stamp = Some(stamp);
                CallStep::Send(request)
            }
            Err(AuthorizeError::Pending { op }) if self.waits < PENDING_WAITS => {
                self.waits += 1;
                CallStep::WaitFor(op)
            }
            Err(e) => CallStep::Done(Err(Error::Authorize(e))),
        }
    }
}

/// `uri` resolved against a session's `base_url`, if it is a path without scheme
/// and host: the path is appended to the base URL's own path, so `/accounts` under
/// `https://demo-api.ig.com/gateway/deal` is
/// `https://demo-api.ig.com/gateway/deal/accounts` (query kept). `None` for an
/// absolute URI (it stays as it is; `authorize` refuses one outside the session's
/// base URL) or one that cannot be joined.
///
/// ```
/// use broker_session::transport::resolve;
/// let uri = "/accounts?x=1".parse().unwrap();
/// let joined = resolve(&uri, "https://demo-api.ig.com/gateway/deal/").unwrap();
/// assert_eq!(joined, "https://demo-api.ig.com/gateway/deal/accounts?x=1");
/// assert!(resolve(&"https://example.com/a".parse().unwrap(), "https://b.test").is_none());
/// ```
pub fn resolve(uri: &http::Uri, base_url: &str) -> Option<http::Uri> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    let tail = uri.path_and_query()?.as_str().trim_start_matches('/');
    format!("{}/{tail}", base_url.trim_end_matches('/'))
        .parse()
        .ok()
}

/// A copy of a request (method, URI, version, headers, body), for a resend.
pub fn clone_request(r: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut out = http::Request::new(r.body().clone());
    *out.method_mut() = r.method().clone();
    *out.uri_mut() = r.uri().clone();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}

#[cfg(test)]
mod tests;
