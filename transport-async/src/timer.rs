//! One tokio task that runs the timers of every kept-alive session of an
//! [`HttpClient`](crate::HttpClient) on a runtime.
//!
//! A session kept alive costs the task a slot in a vector (32 bytes) and a pair in
//! a heap of deadlines, earliest first (16 bytes, and one more for a while when its
//! deadline moves earlier), not a task of its own with its `Sleep` and `Notified`.
//! The task sleeps until the earliest deadline, drives each session that is due (its
//! exchanges go to spawned tasks, so a slow broker holds up nobody else's timer),
//! reads the session's next deadline and queues it again. A session whose deadline
//! moves earlier than the one the task knows (an application call, a recovery, a
//! submitted operation) tells it through its [`Hook`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use broker_session::deadline_after;

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
    /// Drops one holder of the session's registration. When it was the last, the
    /// session no longer wakes the timer, and its hook comes back to
    /// [`leave`](Hook::leave) the timer.
    fn release(&self) -> Option<Hook>;
}

/// Where a session tells its timer that its deadline moved earlier than the one the
/// timer knows. Kept by the session, under its lock.
#[derive(Debug)]
pub(crate) struct Hook {
    shared: Weak<Shared>,
    id: u64,
    /// How many [`KeepAlive`](crate::KeepAlive) handles hold the registration.
    holders: u32,
    /// The deadline the timer knows, as a tick (8 bytes where an `Instant` takes
    /// 16: every session has a hook while it is kept alive).
    known: Tick,
}

impl Hook {
    pub(crate) fn new(shared: &Arc<Shared>, id: u64) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            id,
            holders: 1,
            known: NEVER,
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
        // Each holder is a handle of 16 bytes: 4 billion of them do not fit in memory.
        self.holders = self.holders.saturating_add(1);
    }

    /// One handle fewer; `true` when none is left.
    pub(crate) fn release(&mut self) -> bool {
        self.holders = self.holders.saturating_sub(1);
        self.holders == 0
    }

    /// Takes the registration off its timer (after the session let go of the hook,
    /// so that the session's lock is not held meanwhile).
    pub(crate) fn leave(self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.remove(self.id);
        }
    }

    /// Records `deadline`; tells the timer if it comes before what it knew.
    pub(crate) fn moved(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        let at = tick(d);
        if self.known <= at {
            return;
        }
        self.known = at;
        if let Some(shared) = self.shared.upgrade() {
            shared.poke(self.id, at);
        }
    }

    /// Records `deadline` as the one the timer knows (it just learnt it).
    pub(crate) fn learnt(&mut self, deadline: Option<Instant>) {
        self.known = deadline.map_or(NEVER, tick);
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
        // None yet, or its task has ended (it saw no session left): a new one, which
        // nothing has closed, so the session gets in.
        let shared = Arc::new(Shared::default());
        let id = shared.add(session).unwrap_or_default();
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

/// An instant as the timers keep it: nanoseconds since [`base`] (8 bytes, where an
/// `Instant` takes 16), [`NEVER`] for none.
type Tick = u64;

/// No due time.
const NEVER: Tick = u64::MAX;

/// The instant ticks count from: the first time one was needed in this process.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` as a tick; an instant before [`base`] counts as it.
fn tick(at: Instant) -> Tick {
    let since = at.saturating_duration_since(base()).as_nanos();
    Tick::try_from(since).map_or(NEVER - 1, |t| t.min(NEVER - 1))
}

/// The instant of tick `t`.
fn instant(t: Tick) -> Instant {
    deadline_after(base(), Duration::from_nanos(t))
}

#[derive(Default)]
struct State {
    /// The registrations; a free slot has no session and sits in `free`.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// How many slots hold a registration.
    len: usize,
    /// `(due, id)` of every registration with a due time, earliest first. One whose
    /// due time has changed since (or that has left) leaves a stale pair behind,
    /// skipped when it comes up: cheaper than finding it in the heap.
    queue: BinaryHeap<Reverse<(Tick, u64)>>,
    /// The tick the task sleeps until (`None`: it is awake and looks at the queue
    /// again before it sleeps); a session due earlier wakes it.
    asleep_until: Option<Tick>,
    /// The task saw no session left and ended: nothing may be added any more.
    closed: bool,
}

/// A registration: its id is its slot's index, and in the high 32 bits the slot's
/// generation, so that a pair left in the heap by an earlier occupant of the slot
/// never matches.
struct Slot {
    /// Weak: a session nobody holds any more (no client, no keep-alive handle) is
    /// not kept alive by its timer. `None`: the slot is free.
    session: Option<Weak<dyn Timed>>,
    /// When the session next needs driving ([`NEVER`]: not until it says so, or the
    /// task is driving it now).
    due: Tick,
    generation: u32,
    /// The session moved its deadline earlier while the task was driving it.
    poked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is complete between two statements.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `session`, due at once so that its first drive tells the task its
    /// deadline, and hooks it; `None` if the task has ended.
    fn add(self: &Arc<Self>, session: &Arc<dyn Timed>) -> Option<u64> {
        // Taken before the session is hooked (its lock is never taken under the
        // timer's); the slot keeps the task from ending meanwhile.
        let fresh = {
            let mut st = self.lock();
            if st.closed {
                return None;
            }
            st.insert(Arc::downgrade(session))
        };
        let id = session.attach(self, fresh);
        let mut st = self.lock();
        if id == fresh {
            let now = tick(Instant::now());
            st.schedule(id, now);
            st.wake_for(&self.wake, now);
        } else {
            // The session was already on this timer: one more holder of that.
            st.remove(fresh);
        }
        Some(id)
    }

    /// Removes registration `id` (its last handle dropped).
    fn remove(&self, id: u64) {
        let mut st = self.lock();
        st.remove(id);
        if st.len == 0 {
            // The task ends: tell it now rather than at its next deadline.
            st.asleep_until = None;
            self.wake.notify_one();
        }
    }

    fn poke(&self, id: u64, at: Tick) {
        let mut st = self.lock();
        let Some(e) = st.slot(id) else {
            return;
        };
        e.poked = true;
        let earlier = at < e.due;
        if earlier {
            st.schedule(id, at);
            st.wake_for(&self.wake, at);
        }
    }
}

impl State {
    /// The registration `id`, if it is still there.
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        let (index, generation) = (id as u32, (id >> 32) as u32);
        self.slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation && s.session.is_some())
    }

    /// A new registration for `session`, with no due time yet.
    fn insert(&mut self, session: Weak<dyn Timed>) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    session: None,
                    due: NEVER,
                    generation: 0,
                    poked: false,
                });
                // More than 4 billion sessions on one timer do not fit in memory.
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.session = Some(session);
        slot.due = NEVER;
        slot.poked = false;
        self.len += 1;
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    fn remove(&mut self, id: u64) {
        if let Some(slot) = self.slot(id) {
            slot.session = None;
            slot.due = NEVER;
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(id as u32);
            self.len -= 1;
        }
    }

    /// Takes the next session due by `now`, marking it as being driven.
    fn take_due(&mut self, now: Tick) -> Option<(u64, Weak<dyn Timed>)> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now {
                return None;
            }
            self.queue.pop();
            if let Some(e) = self.slot(id)
                && e.due == at
                && let Some(session) = e.session.clone()
            {
                e.due = NEVER;
                e.poked = false;
                return Some((id, session));
            }
        }
        None
    }

    /// Sets registration `id` (present) to run at `due`.
    fn schedule(&mut self, id: u64, due: Tick) {
        if let Some(e) = self.slot(id) {
            e.due = due;
            if due != NEVER {
                self.queue.push(Reverse((due, id)));
            }
        }
    }

    /// Wakes the task if it sleeps past `at`.
    fn wake_for(&mut self, wake: &Notify, at: Tick) {
        if self.asleep_until.is_some_and(|until| at < until) {
            self.asleep_until = Some(at);
            wake.notify_one();
        }
    }

    /// The earliest due time of a registration; drops the stale pairs in front.
    fn earliest(&mut self) -> Option<Tick> {
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if self.slot(id).is_some_and(|e| e.due == at) {
                return Some(at);
            }
            self.queue.pop();
        }
        None
    }

    /// Queues registration `id` again after the task drove it: at `deadline`, or
    /// earlier if it was poked meanwhile (then it is queued already).
    fn requeue(&mut self, id: u64, deadline: Option<Instant>) {
        let at = deadline.map_or(NEVER, tick);
        if let Some(e) = self.slot(id)
            && !(e.poked && e.due <= at)
        {
            self.schedule(id, at);
        }
    }
}

/// The timer task: drives the due sessions, sleeps until the next deadline or a
/// wake-up, and ends when no session is left.
async fn run(shared: Arc<Shared>) {
    loop {
        let mut driven = 0;
        let next = loop {
            let taken = {
                let mut st = shared.lock();
                match st.take_due(tick(Instant::now())) {
                    Some(taken) => taken,
                    None => {
                        if st.len == 0 {
                            st.closed = true;
                            return;
                        }
                        let next = st.earliest();
                        // NEVER when nothing is due: any due time wakes the task.
                        st.asleep_until = Some(next.unwrap_or(NEVER));
                        break next.map(instant);
                    }
                }
            };
            let (id, session) = taken;
            let deadline = session.upgrade().and_then(|s| s.service_timer(id));
            {
                let mut st = shared.lock();
                match deadline {
                    // The session is gone, or its registration was dropped: forget it.
                    None => st.remove(id),
                    Some(deadline) => st.requeue(id, deadline),
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
        fn release(&self) -> Option<Hook> {
            let mut hook = self.hook.lock().unwrap();
            if hook.as_mut()?.release() {
                hook.take()
            } else {
                None
            }
        }
    }

    fn later(d: Duration) -> Instant {
        deadline_after(Instant::now(), d)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let end = later(Duration::from_secs(10));
        while !f() {
            assert!(Instant::now() < end, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn a_reused_slot_never_answers_to_its_former_occupants_pairs() {
        let mut st = State::default();
        let a: Arc<dyn Timed> = Arc::new(Fake::default());
        let b: Arc<dyn Timed> = Arc::new(Fake::default());
        let first = st.insert(Arc::downgrade(&a));
        st.schedule(first, 5);
        st.remove(first);
        // `b` takes the same slot, due at the same tick as the pair `a` left.
        let second = st.insert(Arc::downgrade(&b));
        assert_eq!(second as u32, first as u32, "the slot is reused");
        assert_ne!(second, first);
        assert_eq!(st.take_due(10).map(|(id, _)| id), None, "a's pair is stale");
        st.schedule(second, 5);
        assert_eq!(st.take_due(10).map(|(id, _)| id), Some(second));
        assert_eq!(st.len, 1);
        // Times round-trip through ticks, and what came before the base counts as it.
        let later = base() + Duration::from_millis(1500);
        assert_eq!(instant(tick(later)), later);
        if let Some(before) = base().checked_sub(Duration::from_secs(1)) {
            assert_eq!(tick(before), 0);
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
        assert!(a.release().is_none(), "one holder left");
        a.release().expect("the last holder").leave();
        b.release().expect("the only holder").leave();
        assert_ne!(ida, idb);
        let weak = Arc::downgrade(&ta);
        drop((ta, tb));
        // No session left: the task ends and frees the timer.
        until("the task ends", || weak.strong_count() == 0).await;
        // The next registration starts a new one.
        let (tc, _) = timers.register(&rt, &a_dyn);
        assert!(!std::ptr::eq(Arc::as_ptr(&tc), weak.as_ptr()));
    }
}
