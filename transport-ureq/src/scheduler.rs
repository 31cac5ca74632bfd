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
    /// A thread of the scheduler is running the session now: no other takes it up
    /// until it is done (it then reschedules from `due` if `poked`).
    running: bool,
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

    /// Runs the sessions due by now, one at a time, taking each from the queue only
    /// when the previous one is done: several threads calling this share the due
    /// sessions between them, and none runs a session another is running.
    fn run_due(&self) -> Option<Instant> {
        let now = Instant::now();
        loop {
            let next = {
                let mut st = self.lock();
                match st.take_due(now) {
                    Some(next) => next,
                    None => return st.earliest(),
                }
            };
            let (id, session) = next;
            let deadline = session.service_scheduled();
            let mut st = self.lock();
            if let Some(e) = st.entries.get_mut(&id) {
                e.running = false;
                let deadline = if e.poked {
                    earliest(e.due, deadline)
                } else {
                    deadline
                };
                st.schedule(id, deadline);
            }
        }
    }
}

impl State {
    /// Takes the next session due by `now` that no thread is running, marking it
    /// running.
    fn take_due(&mut self, now: Instant) -> Option<(u64, Arc<dyn Timed>)> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now {
                return None;
            }
            self.queue.pop();
            if let Some(e) = self.entries.get_mut(&id)
                && e.due == Some(at)
                && !e.running
            {
                e.due = None;
                e.poked = false;
                e.running = true;
                return Some((id, Arc::clone(&e.session)));
            }
        }
        None
    }

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
/// or less). One thread is what a fleet of idle sessions should cost, and the
/// exchanges a timer starts (a refresh, a keep-alive) take a round trip each, so a
/// thread serves thousands of sessions a second on a near broker (about 10,000 a
/// second on loopback). For sessions whose timers fall due together by the thousand
/// (a fleet logged in at once refreshes at once), or a distant broker, give the
/// scheduler several threads with [`spawn_threads`](Self::spawn_threads): they take
/// the due sessions one at a time from one queue, never one session on two threads,
/// and run up to that many exchanges at once (within
/// [`Config::max_connections_per_host`](crate::Config::max_connections_per_host)).
/// [`run_due`](Self::run_due) may likewise be called from several threads of your
/// own.
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
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("sessions", &self.shared.lock().entries.len())
            .field("threads", &self.threads.len())
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
            threads: Vec::new(),
        }
    }

    /// A scheduler with a thread of its own (named `bs-scheduler`) that runs the
    /// sessions' timers until the scheduler is dropped. The drop waits for the
    /// thread, which takes at most one exchange's deadline if it is in the middle of
    /// one.
    pub fn spawn() -> Result<Self, Error> {
        Self::spawn_threads(1)
    }

    /// A scheduler with `threads` threads of its own (at least one; named
    /// `bs-scheduler`), sharing the due sessions: up to `threads` sessions' exchanges
    /// run at once. See the type's documentation for when more than one helps.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), broker_session_ureq::Error> {
    /// // 100,000 sessions that logged in within seconds refresh within seconds too.
    /// let scheduler = broker_session_ureq::Scheduler::spawn_threads(8)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ThreadSpawn`] if a thread could not be started (those already
    /// started stop).
    pub fn spawn_threads(threads: usize) -> Result<Self, Error> {
        let mut scheduler = Self::new();
        for _ in 0..threads.max(1) {
            let run = Arc::clone(&scheduler.shared);
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
            scheduler.threads.push(thread);
        }
        Ok(scheduler)
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
                    running: false,
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
        for t in self.threads.drain(..) {
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

    /// A session whose first run waits (at most 10 s) until `together` runs have been
    /// in progress at once, notes the most it saw, and asks to be run again at once while it
    /// runs: a second thread must not run it meanwhile.
    struct Rendezvous {
        together: usize,
        in_progress: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        running: std::sync::atomic::AtomicBool,
        overlapped: std::sync::atomic::AtomicBool,
        runs: AtomicUsize,
        hook: Mutex<Option<Hook>>,
    }

    impl Timed for Rendezvous {
        fn service_scheduled(&self) -> Option<Instant> {
            if self.running.swap(true, Ordering::SeqCst) {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            let now_in = self.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now_in, Ordering::SeqCst);
            if run == 0 {
                // Due again at once, said while running.
                if let Some(h) = self.hook.lock().unwrap().as_mut() {
                    h.moved(Some(Instant::now()));
                }
                let end = later(Duration::from_secs(10));
                while self.most.load(Ordering::SeqCst) < self.together && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.in_progress.fetch_sub(1, Ordering::SeqCst);
            self.running.store(false, Ordering::SeqCst);
            None
        }
        fn attach(&self, hook: Option<Hook>) {
            *self.hook.lock().unwrap() = hook;
        }
        fn detach(&self, _id: u64) {}
    }

    #[test]
    fn several_threads_share_the_due_sessions_and_never_run_one_twice_at_once() {
        let scheduler = Scheduler::spawn_threads(3).unwrap();
        let in_progress = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let sessions: Vec<_> = (0..3)
            .map(|_| {
                Arc::new(Rendezvous {
                    together: 3,
                    in_progress: Arc::clone(&in_progress),
                    most: Arc::clone(&most),
                    running: false.into(),
                    overlapped: false.into(),
                    runs: AtomicUsize::new(0),
                    hook: Mutex::new(None),
                })
            })
            .collect();
        let _registrations: Vec<_> = sessions
            .iter()
            .map(|s| scheduler.register(s.clone()))
            .collect();
        let end = later(Duration::from_secs(20));
        while sessions.iter().any(|s| s.runs.load(Ordering::SeqCst) < 2) {
            assert!(Instant::now() < end, "every session runs twice");
            std::thread::sleep(Duration::from_millis(5));
        }
        // All three ran at once (one thread could not have got past the first), and
        // none was run by two threads at once though each asked to run again while
        // it ran.
        assert_eq!(most.load(Ordering::SeqCst), 3);
        for s in &sessions {
            assert!(!s.overlapped.load(Ordering::SeqCst));
            assert_eq!(s.runs.load(Ordering::SeqCst), 2);
        }
    }
}
