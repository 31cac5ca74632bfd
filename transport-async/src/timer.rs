//! One tokio task that runs the timers of every kept-alive session of an
//! [`HttpClient`](crate::HttpClient) on a runtime.
//!
//! A session kept alive costs the task an entry in a map and a pair in a heap of
//! deadlines (earliest first), not a task of its own with its `Sleep` and `Notified`.
//! The task sleeps until the earliest deadline, drives each session that is due (its
//! exchanges go to spawned tasks, so a slow broker holds up nobody else's timer),
//! reads the session's next deadline and queues it again. A session whose deadline
//! moves earlier than the one the task knows (an application call, a recovery, a
//! submitted operation) tells it through its [`Hook`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use tokio::runtime::{Handle, Id};
use tokio::sync::Notify;

/// How many due sessions the task drives before it lets the runtime's other tasks
/// (the exchanges it spawned among them) run, so that a wave of thousands of
/// sessions due at once does not keep a worker to itself for long (a drive takes a
/// few microseconds). Not fewer: a yielded task runs again only once the worker has
/// run through its other ready tasks, so yielding often would let a wave of
/// exchanges hold the timers back (at 64, 100,000 sessions refreshing within 3 s
/// were served up to 300 ms late).
const DRIVES_PER_YIELD: usize = 1024;

/// A session as the timer task sees it.
pub(crate) trait Timed: Send + Sync {
    /// Drives the session if registration `id` is still its hook (exchanges on
    /// spawned tasks, never awaited) and returns its next deadline, which the hook
    /// then knows. `None` outside: the registration was dropped meanwhile.
    fn service_timer(self: Arc<Self>, id: u64) -> Option<Option<Instant>>;
    /// Hooks the session to `timer` as registration `id`, or counts one more holder
    /// of the registration it has on that timer. Returns the registration's id.
    fn attach(&self, timer: &Arc<Shared>, id: u64) -> u64;
    /// Drops one holder of registration `id`; `true` when it was the last, and the
    /// session no longer wakes the timer.
    fn release(&self, id: u64) -> bool;
}

/// Where a session tells its timer that its deadline moved earlier than the one the
/// timer knows. Kept by the session, under its lock.
#[derive(Debug)]
pub(crate) struct Hook {
    shared: Weak<Shared>,
    id: u64,
    /// How many [`KeepAlive`](crate::KeepAlive) handles hold the registration.
    holders: usize,
    known: Option<Instant>,
}

impl Hook {
    pub(crate) fn new(shared: &Arc<Shared>, id: u64) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            id,
            holders: 1,
            known: None,
        }
    }

    /// The registration this hook belongs to.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether this hook belongs to `timer`.
    pub(crate) fn is_on(&self, timer: &Arc<Shared>) -> bool {
        std::ptr::eq(self.shared.as_ptr(), Arc::as_ptr(timer))
    }

    /// One more handle holds the registration.
    pub(crate) fn hold(&mut self) {
        self.holders += 1;
    }

    /// One handle fewer; `true` when none is left.
    pub(crate) fn release(&mut self) -> bool {
        self.holders = self.holders.saturating_sub(1);
        self.holders == 0
    }

    /// Records `deadline`; tells the timer if it comes before what it knew.
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

    /// Records `deadline` as the one the timer knows (it just learnt it).
    pub(crate) fn learnt(&mut self, deadline: Option<Instant>) {
        self.known = deadline;
    }
}

/// The timer tasks of one [`HttpClient`](crate::HttpClient): at most one per
/// runtime, each alive only while it has sessions.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// A client's sessions live on one runtime or a few: a short list.
    tasks: Mutex<Vec<(Id, Weak<Shared>)>>,
}

impl Timers {
    /// Registers `session` (of `runtime`) with the timer task of that runtime,
    /// spawning the task if there is none; returns the timer and the registration's
    /// id. Registering a session already on it counts one more holder.
    pub(crate) fn register(
        &self,
        runtime: &Handle,
        session: &Arc<dyn Timed>,
    ) -> (Arc<Shared>, u64) {
        let rt = runtime.id();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Timers whose task ended (no session left, or their runtime shut down).
        tasks.retain(|(_, t)| t.strong_count() > 0);
        let live = tasks
            .iter()
            .find(|(id, _)| *id == rt)
            .and_then(|(_, t)| t.upgrade());
        if let Some(shared) = live
            && let Some(id) = shared.add(session)
        {
            return (shared, id);
        }
        // None yet, or its task is ending (it saw no session left): a new one.
        let shared = Arc::new(Shared::default());
        let id = shared.add(session).expect("a timer nobody ran yet is open");
        tasks.retain(|(id, _)| *id != rt);
        tasks.push((rt, Arc::downgrade(&shared)));
        drop(tasks);
        runtime.spawn(run(Arc::clone(&shared)));
        (shared, id)
    }
}

/// What a timer task and its sessions share.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    /// `(due, id)` of every entry with a due time, earliest first. An entry whose due
    /// time has changed since (or that has left) leaves a stale pair behind, skipped
    /// when it comes up: cheaper than finding it in the heap.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    /// The instant the task sleeps until (`None`: it is awake and looks at the queue
    /// again before it sleeps); a session due earlier wakes it.
    asleep_until: Option<Instant>,
    /// The task saw no session left and ended: nothing may be added any more.
    closed: bool,
}

struct Entry {
    /// Weak: a session nobody holds any more (no client, no keep-alive handle) is
    /// not kept alive by its timer.
    session: Weak<dyn Timed>,
    /// When the session next needs driving (`None`: not until it says so, or the
    /// task is driving it now).
    due: Option<Instant>,
    /// The session moved its deadline earlier while the task was driving it.
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

    /// Adds `session`, due at once so that its first drive tells the task its
    /// deadline, and hooks it; `None` if the task has ended.
    fn add(self: &Arc<Self>, session: &Arc<dyn Timed>) -> Option<u64> {
        let id = {
            let mut st = self.lock();
            if st.closed {
                return None;
            }
            st.next_id += 1;
            st.next_id
        };
        // Hooked before it is queued: the session's lock is never taken under the
        // timer's. An id the session already has on this timer comes back instead.
        let id = session.attach(self, id);
        let mut st = self.lock();
        if st.closed {
            // The task ended between the two looks; the caller starts another.
            drop(st);
            session.release(id);
            return None;
        }
        if !st.entries.contains_key(&id) {
            st.entries.insert(
                id,
                Entry {
                    session: Arc::downgrade(session),
                    due: None,
                    poked: false,
                },
            );
            st.schedule(id, Some(Instant::now()));
            st.wake_for(&self.wake, Instant::now());
        }
        Some(id)
    }

    /// Removes registration `id` (its last handle dropped).
    pub(crate) fn remove(&self, id: u64) {
        let mut st = self.lock();
        st.entries.remove(&id);
        if st.entries.is_empty() {
            // The task ends: tell it now rather than at its next deadline.
            st.asleep_until = None;
            self.wake.notify_one();
        }
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
            st.wake_for(&self.wake, deadline);
        }
    }
}

impl State {
    /// Takes the next session due by `now`, marking it as being driven.
    fn take_due(&mut self, now: Instant) -> Option<(u64, Weak<dyn Timed>)> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now {
                return None;
            }
            self.queue.pop();
            if let Some(e) = self.entries.get_mut(&id)
                && e.due == Some(at)
            {
                e.due = None;
                e.poked = false;
                return Some((id, Weak::clone(&e.session)));
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

    /// Wakes the task if it sleeps past `at`.
    fn wake_for(&mut self, wake: &Notify, at: Instant) {
        if self.asleep_until.is_some_and(|until| at < until) {
            self.asleep_until = Some(at);
            wake.notify_one();
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

/// The timer task: drives the due sessions, sleeps until the next deadline or a
/// wake-up, and ends when no session is left.
async fn run(shared: Arc<Shared>) {
    loop {
        let mut driven = 0;
        let next = loop {
            let now = Instant::now();
            let taken = {
                let mut st = shared.lock();
                match st.take_due(now) {
                    Some(taken) => taken,
                    None => {
                        if st.entries.is_empty() {
                            st.closed = true;
                            return;
                        }
                        let next = st.earliest();
                        // Far enough to mean "until woken" when nothing is due.
                        st.asleep_until = Some(next.unwrap_or_else(|| {
                            broker_session::deadline_after(now, std::time::Duration::MAX)
                        }));
                        break next;
                    }
                }
            };
            let (id, session) = taken;
            let deadline = session.upgrade().and_then(|s| s.service_timer(id));
            {
                let mut st = shared.lock();
                match deadline {
                    // The session is gone, or its registration was dropped: forget it.
                    None => {
                        st.entries.remove(&id);
                    }
                    Some(deadline) => {
                        if let Some(e) = st.entries.get(&id) {
                            let due = if e.poked {
                                earliest(e.due, deadline)
                            } else {
                                deadline
                            };
                            // A poke while driving may have queued this very time.
                            if !(e.poked && due == e.due) {
                                st.schedule(id, due);
                            }
                        }
                    }
                }
            }
            driven += 1;
            if driven % DRIVES_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        };
        // `notify_one` keeps a permit for a wake-up sent before this wait starts.
        let woken = shared.wake.notified();
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), woken).await;
            }
            None => woken.await,
        }
        shared.lock().asleep_until = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A session that returns the deadlines it is given and counts its drives.
    #[derive(Default)]
    struct Fake {
        next: Mutex<Option<Instant>>,
        drives: AtomicUsize,
        hook: Mutex<Option<Hook>>,
    }

    impl Timed for Fake {
        fn service_timer(self: Arc<Self>, id: u64) -> Option<Option<Instant>> {
            let mut hook = self.hook.lock().unwrap();
            let hook = hook.as_mut().filter(|h| h.id() == id)?;
            self.drives.fetch_add(1, Ordering::SeqCst);
            let next = *self.next.lock().unwrap();
            hook.learnt(next);
            Some(next)
        }
        fn attach(&self, timer: &Arc<Shared>, id: u64) -> u64 {
            let mut hook = self.hook.lock().unwrap();
            match hook.as_mut() {
                Some(h) if h.is_on(timer) => {
                    h.hold();
                    h.id()
                }
                _ => {
                    *hook = Some(Hook::new(timer, id));
                    id
                }
            }
        }
        fn release(&self, id: u64) -> bool {
            let mut hook = self.hook.lock().unwrap();
            let last = hook.as_mut().is_some_and(|h| h.id() == id && h.release());
            if last {
                *hook = None;
            }
            last
        }
    }

    fn later(d: Duration) -> Instant {
        broker_session::deadline_after(Instant::now(), d)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let end = later(Duration::from_secs(10));
        while !f() {
            assert!(Instant::now() < end, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn one_task_drives_the_due_sessions_learns_earlier_deadlines_and_ends_when_empty() {
        let timers = Timers::default();
        let rt = Handle::current();
        let (a, b) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
        *a.next.lock().unwrap() = Some(later(Duration::from_secs(3600)));
        let a_dyn: Arc<dyn Timed> = a.clone();
        let b_dyn: Arc<dyn Timed> = b.clone();
        let (ta, ida) = timers.register(&rt, &a_dyn);
        let (tb, idb) = timers.register(&rt, &b_dyn);
        assert!(Arc::ptr_eq(&ta, &tb), "one timer per runtime");
        assert_ne!(ida, idb);
        // Both are due at once to learn their deadlines; then only `a` has one.
        until("first drives", || {
            a.drives.load(Ordering::SeqCst) == 1 && b.drives.load(Ordering::SeqCst) == 1
        })
        .await;
        // `b` moves its deadline earlier: it is driven again, `a` is not.
        b.hook
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .moved(Some(later(Duration::from_millis(20))));
        until("b driven again", || b.drives.load(Ordering::SeqCst) == 2).await;
        assert_eq!(a.drives.load(Ordering::SeqCst), 1);
        // A second handle on `a` shares its registration.
        let (_, again) = timers.register(&rt, &a_dyn);
        assert_eq!(again, ida);
        assert!(!a.release(ida), "one holder left");
        assert!(a.release(ida));
        ta.remove(ida);
        assert!(b.release(idb));
        tb.remove(idb);
        let weak = Arc::downgrade(&ta);
        drop((ta, tb));
        // No session left: the task ends and frees the timer.
        until("the task ends", || weak.strong_count() == 0).await;
        // The next registration starts a new one.
        let (tc, _) = timers.register(&rt, &a_dyn);
        assert!(!std::ptr::eq(Arc::as_ptr(&tc), weak.as_ptr()));
    }
}
