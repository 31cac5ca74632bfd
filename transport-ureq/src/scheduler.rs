//! One timer thread for any number of blocking sessions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_session::Machine;

use crate::Error;
use crate::client::Client;

/// How long the scheduler's thread sleeps when no session has a timer; a session
/// that gets one wakes it earlier.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

/// A session as the scheduler sees it: something to run when due.
pub(crate) trait Timed: Send + Sync {
    /// Runs what is due (exchanges included, on this thread) and returns the next
    /// deadline, which from now on is the one the scheduler knows.
    fn service_scheduled(&self) -> Option<Instant>;
    /// Sends this session's wake-ups to `hook` (`None`: to nobody).
    fn attach(&self, hook: Option<Hook>);
    /// Stops the wake-ups of registration `id`, if they are still attached.
    fn detach(&self, id: u64);
}

/// Where a session tells its scheduler that its deadline moved earlier than the one
/// the scheduler knows.
#[derive(Debug)]
pub(crate) struct Hook {
    shared: Weak<Shared>,
    id: u64,
    known: Option<Instant>,
}

impl Hook {
    /// The registration this hook belongs to.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Records `deadline` as known; tells the scheduler if it comes before what it
    /// knew.
    pub(crate) fn moved(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        if self.known.is_some_and(|k| k <= d) {
            return;
        }
        self.known = Some(d);
        if let Some(shared) = self.shared.upgrade() {
            shared.poke(self.id, d);
        }
    }

    /// Records `deadline` as the one the scheduler knows (it just learnt it).
    pub(crate) fn learnt(&mut self, deadline: Option<Instant>) {
        self.known = deadline;
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    /// `(due, id)` of every entry with a due time, earliest first. An entry whose due
    /// time has changed since (or that has left) leaves a stale pair behind, skipped
    /// when it comes up: cheaper than finding it in the heap.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    stop: bool,
}

struct Entry {
    session: Arc<dyn Timed>,
    /// When the session next needs running (`None`: not until it says so, or it is
    /// running now).
    due: Option<Instant>,
    /// The session moved its deadline earlier while it was being run.
    poked: bool,
}

/// `a` or `b`, whichever is earlier; `None` is never.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is complete between two statements.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self, id: u64, deadline: Instant) {
        let mut st = self.lock();
        let Some(e) = st.entries.get_mut(&id) else {
            return;
        };
        e.poked = true;
        let due = earliest(e.due, Some(deadline));
        if due != e.due {
            st.schedule(id, due);
        }
        drop(st);
        self.wake.notify_all();
    }

    fn run_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = self.lock();
            while let Some(&Reverse((at, id))) = st.queue.peek() {
                if at > now {
                    break;
                }
                st.queue.pop();
                if let Some(e) = st.entries.get_mut(&id)
                    && e.due == Some(at)
                {
                    e.due = None;
                    e.poked = false;
                    due.push((id, Arc::clone(&e.session)));
                }
            }
        }
        for (id, session) in due {
            let next = session.service_scheduled();
            let mut st = self.lock();
            if let Some(e) = st.entries.get_mut(&id) {
                let next = if e.poked { earliest(e.due, next) } else { next };
                st.schedule(id, next);
            }
        }
        self.lock().earliest()
    }
}

impl State {
    /// Sets entry `id` (present) to run at `due`.
    fn schedule(&mut self, id: u64, due: Option<Instant>) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.due = due;
        }
        if let Some(at) = due {
            self.queue.push(Reverse((at, id)));
        }
    }

    /// The earliest due time of a registered session; drops the stale pairs in front.
    fn earliest(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if self.entries.get(&id).is_some_and(|e| e.due == Some(at)) {
                return Some(at);
            }
            self.queue.pop();
        }
        None
    }
}

/// Runs the timers (keep-alive ticks, proactive refreshes, retries) of any number of
/// blocking sessions on one thread, instead of one [`keep_alive`](Client::keep_alive)
/// thread per session.
///
/// [`spawn`](Self::spawn) starts the scheduler's own thread, which sleeps until the
/// earliest deadline of all the sessions [`add`](Self::add)ed and then runs every
/// session that is due; [`new`](Self::new) starts none, for a loop of your own around
/// [`run_due`](Self::run_due) and [`wait_due`](Self::wait_due). A call on a client
/// that moves its deadline earlier (a login schedules the first refresh) or queues an
/// operation wakes the scheduler. The deadlines are kept in a heap: a timer costs
/// O(log N) whatever the number N of sessions.
///
/// Due sessions run one after the other on the scheduler's thread, their exchanges
/// included: a session due while another one's exchange is in progress waits for it,
/// at most that exchange's deadline ([`Config::request_timeout`](crate::Config::request_timeout)
/// or less). We chose this over a pool of worker threads because the exchanges a
/// timer starts (a refresh, a keep-alive) take a round trip each, so a thread serves
/// hundreds of sessions a second, and one thread is what a fleet of idle sessions
/// should cost. For more parallelism, run several schedulers, each with a share of
/// the sessions, or call [`run_due`](Self::run_due) from threads of your own.
///
/// ```no_run
/// # fn demo(configs: Vec<broker_session_ureq::IgConfig>) -> Result<(), broker_session_ureq::Error> {
/// use broker_session_ureq::{Client, Config, HttpClient, Scheduler};
///
/// let http = HttpClient::new(&Config::default())?;
/// let scheduler = Scheduler::spawn()?;
/// let mut sessions = Vec::new();
/// for config in configs {
///     let client = Client::open(config, &http)?;
///     client.login()?;
///     let registration = scheduler.add(&client); // its timers run until this drops
///     sessions.push((client, registration));
/// }
/// # Ok(()) }
/// ```
#[must_use = "the scheduler's thread stops when it is dropped"]
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("sessions", &self.shared.lock().entries.len())
            .field("own_thread", &self.thread.is_some())
            .finish()
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// A scheduler without a thread of its own: call [`run_due`](Self::run_due)
    /// whenever it says, and [`wait_due`](Self::wait_due) in between.
    ///
    /// ```
    /// use std::time::Duration;
    /// let scheduler = broker_session_ureq::Scheduler::new();
    /// // Add clients, then, in a loop of your own:
    /// let next = scheduler.run_due();
    /// assert!(next.is_none(), "no session, no deadline");
    /// scheduler.wait_due(Duration::from_millis(1));
    /// ```
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            thread: None,
        }
    }

    /// A scheduler with a thread of its own (named `bs-scheduler`) that runs the
    /// sessions' timers until the scheduler is dropped. The drop waits for the
    /// thread, which takes at most one exchange's deadline if it is in the middle of
    /// one.
    pub fn spawn() -> Result<Self, Error> {
        let shared: Arc<Shared> = Arc::default();
        let run = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bs-scheduler".into())
            .spawn(move || {
                loop {
                    run.run_due();
                    if !wait(&run, IDLE_SLEEP) {
                        return;
                    }
                }
            })
            .map_err(|_| Error::ThreadSpawn)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds `client`'s session: its timers run (on this scheduler) until the returned
    /// [`Registration`] is dropped, which keeps the session alive until then. A
    /// client has one scheduler at a time to wake up: adding it to a second one
    /// sends its wake-ups there.
    pub fn add<M>(&self, client: &Client<M>) -> Registration
    where
        M: Machine + Send + 'static,
        M::State: Send,
        M::Outcome: Send,
    {
        self.register(Arc::clone(client.inner()) as Arc<dyn Timed>)
    }

    fn register(&self, session: Arc<dyn Timed>) -> Registration {
        let id = {
            let mut st = self.shared.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.entries.insert(
                id,
                Entry {
                    session: Arc::clone(&session),
                    due: None,
                    poked: false,
                },
            );
            // Due now: its first run tells the scheduler its deadline.
            st.schedule(id, Some(Instant::now()));
            id
        };
        session.attach(Some(Hook {
            shared: Arc::downgrade(&self.shared),
            id,
            known: None,
        }));
        self.shared.wake.notify_all();
        Registration {
            shared: Arc::downgrade(&self.shared),
            session,
            id,
        }
    }

    /// Runs every session whose deadline has passed (their exchanges on this
    /// thread), then returns the earliest deadline of all the sessions: call again
    /// at (or soon after) that instant. `None`: no session has a timer.
    pub fn run_due(&self) -> Option<Instant> {
        self.shared.run_due()
    }

    /// Sleeps until a session is due (at once if one already is), a session moved
    /// its deadline earlier, or `at_most` has passed, whichever comes first; for a
    /// loop of your own around [`run_due`](Self::run_due).
    pub fn wait_due(&self, at_most: Duration) {
        wait(&self.shared, at_most);
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sleeps until a session is due, a wake-up, or `at_most`; `false` when the
/// scheduler is stopping.
fn wait(shared: &Shared, at_most: Duration) -> bool {
    let mut st = shared.lock();
    if st.stop {
        return false;
    }
    let now = Instant::now();
    let sleep = st
        .earliest()
        .map_or(at_most, |d| d.saturating_duration_since(now).min(at_most));
    if sleep.is_zero() {
        return true;
    }
    let st = shared
        .wake
        .wait_timeout(st, sleep)
        .unwrap_or_else(PoisonError::into_inner)
        .0;
    !st.stop
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            // A panic on the thread has already been reported; nothing to add here.
            let _ = t.join();
        }
    }
}

/// A session's place on a [`Scheduler`]: its timers run there until this is
/// dropped.
#[must_use = "the session leaves the scheduler when the registration is dropped"]
pub struct Registration {
    shared: Weak<Shared>,
    session: Arc<dyn Timed>,
    id: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().entries.remove(&self.id);
        }
        self.session.detach(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A session that returns the deadlines it is given and counts its runs.
    #[derive(Default)]
    struct Fake {
        next: Mutex<Option<Instant>>,
        runs: AtomicUsize,
        hook: Mutex<Option<Hook>>,
    }

    impl Timed for Fake {
        fn service_scheduled(&self) -> Option<Instant> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let next = *self.next.lock().unwrap();
            if let Some(h) = self.hook.lock().unwrap().as_mut() {
                h.learnt(next);
            }
            next
        }
        fn attach(&self, hook: Option<Hook>) {
            *self.hook.lock().unwrap() = hook;
        }
        fn detach(&self, id: u64) {
            let mut h = self.hook.lock().unwrap();
            if h.as_ref().is_some_and(|h| h.id() == id) {
                *h = None;
            }
        }
    }

    fn later(d: Duration) -> Instant {
        broker_session::deadline_after(Instant::now(), d)
    }

    #[test]
    fn runs_the_due_sessions_only_and_learns_of_earlier_deadlines() {
        let scheduler = Scheduler::new();
        let (a, b) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
        let far = later(Duration::from_secs(3600));
        *a.next.lock().unwrap() = Some(far);
        let ra = scheduler.register(a.clone());
        let _rb = scheduler.register(b.clone());
        // Both are due at once to learn their deadlines; then only `a` has one.
        assert_eq!(scheduler.run_due(), Some(far));
        assert_eq!(scheduler.run_due(), Some(far));
        assert_eq!(a.runs.load(Ordering::SeqCst), 1);
        assert_eq!(b.runs.load(Ordering::SeqCst), 1);
        // `b` moves its deadline to now: it runs next, `a` does not.
        b.hook
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .moved(Some(Instant::now()));
        assert_eq!(scheduler.run_due(), Some(far));
        assert_eq!(b.runs.load(Ordering::SeqCst), 2);
        assert_eq!(a.runs.load(Ordering::SeqCst), 1);
        // A later deadline than the known one does not wake anybody.
        a.hook
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .moved(Some(later(Duration::from_secs(7200))));
        assert_eq!(scheduler.run_due(), Some(far));
        // `a` leaves: nothing is scheduled any more.
        drop(ra);
        assert!(a.hook.lock().unwrap().is_none());
        assert_eq!(scheduler.len(), 1);
        assert_eq!(scheduler.run_due(), None);
    }
}
