//! The worker's run queue: which admitted task runs next, and how many run at once.
//!
//! `design.md` ("Worker runner") and `protocol/aamp.md` ("Lifecycle"): tasks run urgent >
//! high > normal, first in first out within a priority (a sequence number breaks ties); at most
//! `worker.concurrency` run at once (a [`Semaphore`]); a task whose `Expires-At` has passed
//! when its turn comes is handed back as [`Next::Expired`] and never runs; a task id is in the
//! queue at most once, queued or running, so a duplicate dispatch cannot run twice.
//!
//! [`RunQueue::next`] waits for a free slot first and then takes the best task at that moment,
//! so a task queued while every slot is busy still overtakes lower priorities. The slot stays
//! taken until the [`Started::guard`] is dropped, which also frees the task id.
//!
//! Cancel ([`RunQueue::cancel`]) removes a queued task, or fires the running task's
//! [`CancelSignal`]; the runner then stops the process. The queue holds no I/O and reads the
//! wall clock only through the clock it was built with.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::runner::{CancelHandle, CancelSignal};
use crate::wire::aamp::{Priority, TaskId};

/// Where the queue reads the time: [`crate::clock::now`] unless a test says otherwise.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A task waiting for its turn, with whatever the daemon needs to run it (`payload`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask<T> {
    /// The AAMP TaskId.
    pub task_id: TaskId,
    /// The priority.
    pub priority: Priority,
    /// `X-AAMP-Expires-At`: the task must start before this.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// What the daemon runs (e.g. a `RunRequest`).
    pub payload: T,
}

/// What [`RunQueue::next`] hands out.
#[derive(Debug)]
pub enum Next<T> {
    /// Run this task now; drop its guard when the run is over.
    Start(Started<T>),
    /// Its `Expires-At` passed before it started: report it expired, never run it.
    Expired(QueuedTask<T>),
    /// The queue was closed.
    Closed,
}

/// A task that may run now.
#[derive(Debug)]
pub struct Started<T> {
    /// The task.
    pub task: QueuedTask<T>,
    /// When it left the queue.
    pub started_at: DateTime<Utc>,
    /// Fires when [`RunQueue::cancel`] is called for this task.
    pub cancel: CancelSignal,
    /// Holds the concurrency slot and the task id; drop it when the run is over.
    pub guard: RunningGuard,
}

/// Holds one concurrency slot and keeps the task id taken. Dropping it ends the task's run as
/// far as the queue is concerned.
pub struct RunningGuard {
    task_id: TaskId,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for RunningGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningGuard")
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.shared.lock().running.remove(&self.task_id);
    }
}

/// The result of [`RunQueue::cancel`].
#[derive(Debug, PartialEq)]
pub enum Cancelled<T> {
    /// The task was waiting; it is removed and will not run.
    Queued(QueuedTask<T>),
    /// The task is running; its cancel signal fired.
    Running,
    /// No task with that id is queued or running.
    Unknown,
}

/// Why a task could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The same task id is already queued or running.
    #[error("cannot queue task '{task_id}': it is already queued or running")]
    Duplicate {
        /// The task id.
        task_id: TaskId,
    },
    /// [`RunQueue::close`] was called.
    #[error("cannot queue task '{task_id}': the worker is shutting down")]
    Closed {
        /// The task id.
        task_id: TaskId,
    },
}

/// Queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    /// Waiting for its turn.
    Queued,
    /// Running now.
    Running,
}

/// One row of `taskmail tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSnapshot {
    /// The task id.
    pub task_id: TaskId,
    /// The priority.
    pub priority: Priority,
    /// Queued or running.
    pub state: TaskState,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When it started, if it is running.
    pub started_at: Option<DateTime<Utc>>,
    /// Its `Expires-At`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether a cancel was asked for (running tasks only: a queued one is simply removed).
    pub cancel_requested: bool,
}

/// The order key: priority rank, then arrival.
type Key = (u8, u64);

struct Running {
    priority: Priority,
    queued_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    cancel: CancelHandle,
}

/// The state shared with the guards: which ids are running, and the slots.
struct Shared {
    state: Mutex<RunningState>,
    slots: Arc<Semaphore>,
}

struct RunningState {
    running: HashMap<TaskId, Running>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RunningState> {
        // NOTE: nothing panics while holding the lock; if something did, the map is still
        // consistent (every update is a single insert or remove).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct QueueState<T> {
    waiting: BTreeMap<Key, QueuedTask<T>>,
    index: HashMap<TaskId, Key>,
    next_seq: u64,
    closed: bool,
}

/// The run queue. Share it behind an `Arc`; every method takes `&self`.
pub struct RunQueue<T> {
    queue: Mutex<QueueState<T>>,
    shared: Arc<Shared>,
    notify: Notify,
    clock: Clock,
    concurrency: usize,
}

impl<T> fmt::Debug for RunQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunQueue")
            .field("queued", &self.len())
            .field("running", &self.running())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<T> RunQueue<T> {
    /// A queue running at most `concurrency` tasks at once (at least 1), on the wall clock.
    pub fn new(concurrency: usize) -> RunQueue<T> {
        RunQueue::with_clock(concurrency, Arc::new(crate::clock::now))
    }

    /// A queue that reads the time from `clock` (for expiry and the timestamps).
    pub fn with_clock(concurrency: usize, clock: Clock) -> RunQueue<T> {
        let concurrency = concurrency.max(1);
        RunQueue {
            queue: Mutex::new(QueueState {
                waiting: BTreeMap::new(),
                index: HashMap::new(),
                next_seq: 0,
                closed: false,
            }),
            shared: Arc::new(Shared {
                state: Mutex::new(RunningState {
                    running: HashMap::new(),
                }),
                slots: Arc::new(Semaphore::new(concurrency)),
            }),
            notify: Notify::new(),
            clock,
            concurrency,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        // NOTE: as in `Shared::lock`, every update leaves the state consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a task. Refused when the id is already queued or running, or the queue is
    /// closed.
    pub fn push(
        &self,
        task_id: TaskId,
        priority: Priority,
        expires_at: Option<DateTime<Utc>>,
        payload: T,
    ) -> Result<(), QueueError> {
        let queued_at = (self.clock)();
        {
            // NOTE: lock order is always queue, then running.
            let mut queue = self.lock();
            if queue.closed {
                return Err(QueueError::Closed { task_id });
            }
            if queue.index.contains_key(&task_id)
                || self.shared.lock().running.contains_key(&task_id)
            {
                return Err(QueueError::Duplicate { task_id });
            }
            let key = (priority.rank(), queue.next_seq);
            queue.next_seq += 1;
            queue.index.insert(task_id.clone(), key);
            queue.waiting.insert(
                key,
                QueuedTask {
                    task_id,
                    priority,
                    expires_at,
                    queued_at,
                    payload,
                },
            );
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Waits for a free slot and a task, and hands out the best task: to start, or expired.
    ///
    /// Cancel-safe: dropping the future loses no task. Several callers may wait at once.
    pub async fn next(&self) -> Next<T> {
        let Ok(permit) = Arc::clone(&self.shared.slots).acquire_owned().await else {
            return Next::Closed;
        };
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(next) = self.take() {
                return match next {
                    Taken::Start(task, cancel, started_at) => Next::Start(Started {
                        guard: RunningGuard {
                            task_id: task.task_id.clone(),
                            shared: Arc::clone(&self.shared),
                            _permit: permit,
                        },
                        task,
                        started_at,
                        cancel,
                    }),
                    Taken::Expired(task) => Next::Expired(task),
                    Taken::Closed => Next::Closed,
                };
            }
            notified.await;
        }
    }

    /// Takes the head of the queue, if any (`None`: nothing queued, wait).
    fn take(&self) -> Option<Taken<T>> {
        let mut queue = self.lock();
        if queue.closed {
            return Some(Taken::Closed);
        }
        let (_, task) = queue.waiting.pop_first()?;
        queue.index.remove(&task.task_id);
        let now = (self.clock)();
        if task.expires_at.is_some_and(|expires_at| expires_at <= now) {
            return Some(Taken::Expired(task));
        }
        let (handle, signal) = CancelHandle::pair();
        self.shared.lock().running.insert(
            task.task_id.clone(),
            Running {
                priority: task.priority,
                queued_at: task.queued_at,
                started_at: now,
                expires_at: task.expires_at,
                cancel: handle,
            },
        );
        Some(Taken::Start(task, signal, now))
    }

    /// Cancels a task: a queued one is removed, a running one gets its cancel signal.
    pub fn cancel(&self, task_id: &TaskId) -> Cancelled<T> {
        let mut queue = self.lock();
        if let Some(key) = queue.index.remove(task_id)
            && let Some(task) = queue.waiting.remove(&key)
        {
            return Cancelled::Queued(task);
        }
        match self.shared.lock().running.get(task_id) {
            Some(running) => {
                running.cancel.cancel();
                Cancelled::Running
            }
            None => Cancelled::Unknown,
        }
    }

    /// Removes and returns the queued tasks whose `Expires-At` has passed, so that they can be
    /// reported without waiting for a free slot.
    pub fn take_expired(&self) -> Vec<QueuedTask<T>> {
        let now = (self.clock)();
        let mut queue = self.lock();
        let keys: Vec<Key> = queue
            .waiting
            .iter()
            .filter(|(_, task)| task.expires_at.is_some_and(|at| at <= now))
            .map(|(key, _)| *key)
            .collect();
        let mut expired = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(task) = queue.waiting.remove(&key) {
                queue.index.remove(&task.task_id);
                expired.push(task);
            }
        }
        expired
    }

    /// Stops the queue: pushes are refused, waiting and future [`RunQueue::next`] calls return
    /// [`Next::Closed`], and the tasks still queued are returned (the daemon leaves them to
    /// be picked up again on restart). Running tasks are not touched.
    pub fn close(&self) -> Vec<QueuedTask<T>> {
        let left = {
            let mut queue = self.lock();
            queue.closed = true;
            queue.index.clear();
            std::mem::take(&mut queue.waiting).into_values().collect()
        };
        self.shared.slots.close();
        self.notify.notify_waiters();
        left
    }

    /// Whether a task id is queued or running.
    pub fn contains(&self, task_id: &TaskId) -> bool {
        self.lock().index.contains_key(task_id) || self.shared.lock().running.contains_key(task_id)
    }

    /// How many tasks are queued (not running).
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether no task is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.shared.lock().running.len()
    }

    /// The most tasks that run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Every task, running ones first (by start time), then the queued ones in the order they
    /// will start.
    pub fn snapshot(&self) -> Vec<TaskSnapshot> {
        let queue = self.lock();
        let mut rows: Vec<TaskSnapshot> = self
            .shared
            .lock()
            .running
            .iter()
            .map(|(task_id, running)| TaskSnapshot {
                task_id: task_id.clone(),
                priority: running.priority,
                state: TaskState::Running,
                queued_at: running.queued_at,
                started_at: Some(running.started_at),
                expires_at: running.expires_at,
                cancel_requested: running.cancel.is_cancelled(),
            })
            .collect();
        rows.sort_by(|a, b| (a.started_at, &a.task_id).cmp(&(b.started_at, &b.task_id)));
        rows.extend(queue.waiting.values().map(|task| TaskSnapshot {
            task_id: task.task_id.clone(),
            priority: task.priority,
            state: TaskState::Queued,
            queued_at: task.queued_at,
            started_at: None,
            expires_at: task.expires_at,
            cancel_requested: false,
        }));
        rows
    }
}

enum Taken<T> {
    Start(QueuedTask<T>, CancelSignal, DateTime<Utc>),
    Expired(QueuedTask<T>),
    Closed,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use chrono::TimeDelta;
    use tokio::task::JoinSet;

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<DateTime<Utc>>>) {
        let now = Arc::new(Mutex::new(t0()));
        let read = Arc::clone(&now);
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn id(value: &str) -> TaskId {
        TaskId::new(value)
    }

    async fn start(queue: &RunQueue<&'static str>) -> Started<&'static str> {
        match queue.next().await {
            Next::Start(started) => started,
            other => panic!("expected a task to start, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_order_fifo_within_and_cap_of_two() {
        let (clock, _) = manual_clock();
        let queue = Arc::new(RunQueue::with_clock(2, clock));
        for (name, priority) in [
            ("n1", Priority::Normal),
            ("h1", Priority::High),
            ("n2", Priority::Normal),
            ("u1", Priority::Urgent),
            ("h2", Priority::High),
            ("u2", Priority::Urgent),
        ] {
            queue.push(id(name), priority, None, name).unwrap();
        }
        let now_running = Arc::new(AtomicUsize::new(0));
        let most_running = Arc::new(AtomicUsize::new(0));
        let mut order = Vec::new();
        let mut runs = JoinSet::new();
        for round in 0..7 {
            let started = start(&queue).await;
            order.push(started.task.payload);
            let running = now_running.fetch_add(1, Ordering::SeqCst) + 1;
            most_running.fetch_max(running, Ordering::SeqCst);
            assert!(queue.running() <= 2);
            if round == 1 {
                // Queued while both slots are busy: it still overtakes high and normal.
                queue.push(id("u3"), Priority::Urgent, None, "u3").unwrap();
            }
            let now_running = Arc::clone(&now_running);
            runs.spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                now_running.fetch_sub(1, Ordering::SeqCst);
                drop(started.guard);
            });
        }
        while runs.join_next().await.is_some() {}
        assert_eq!(order, ["u1", "u2", "u3", "h1", "h2", "n1", "n2"]);
        assert_eq!(most_running.load(Ordering::SeqCst), 2);
        assert_eq!(queue.running(), 0);
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_third_task_waits_for_a_free_slot() {
        let queue = Arc::new(RunQueue::new(2));
        for name in ["a", "b", "c"] {
            queue.push(id(name), Priority::Normal, None, name).unwrap();
        }
        let a = start(&queue).await;
        let _b = start(&queue).await;
        let waiting = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(waiting.is_err(), "a third task started with two running");
        assert_eq!(queue.len(), 1);
        drop(a.guard);
        let c = start(&queue).await;
        assert_eq!(c.task.payload, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn next_waits_for_a_push() {
        let queue = Arc::new(RunQueue::new(1));
        let waiter = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { start(&queue).await.task.payload })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        queue
            .push(id("late"), Priority::High, None, "late")
            .unwrap();
        assert_eq!(waiter.await.unwrap(), "late");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_task_is_handed_back_not_run() {
        let (clock, now) = manual_clock();
        let queue = RunQueue::with_clock(1, clock);
        let soon = t0() + TimeDelta::seconds(10);
        let later = t0() + TimeDelta::seconds(3_600);
        queue
            .push(id("stale"), Priority::Urgent, Some(soon), "stale")
            .unwrap();
        queue
            .push(id("fresh"), Priority::Normal, Some(later), "fresh")
            .unwrap();
        *now.lock().unwrap() = t0() + TimeDelta::seconds(11);
        match queue.next().await {
            Next::Expired(task) => assert_eq!(task.task_id, id("stale")),
            other => panic!("expected the stale task to expire, got {other:?}"),
        }
        // The expired task took no slot: the only slot starts the fresh one.
        let fresh = start(&queue).await;
        assert_eq!(fresh.task.payload, "fresh");
        assert_eq!(fresh.started_at, t0() + TimeDelta::seconds(11));
        assert!(!queue.contains(&id("stale")));
    }

    #[tokio::test(start_paused = true)]
    async fn take_expired_sweeps_without_a_slot() {
        let (clock, now) = manual_clock();
        let queue = RunQueue::with_clock(1, clock);
        queue
            .push(id("busy"), Priority::Normal, None, "busy")
            .unwrap();
        let _busy = start(&queue).await;
        queue
            .push(
                id("stale"),
                Priority::Normal,
                Some(t0() + TimeDelta::seconds(1)),
                "stale",
            )
            .unwrap();
        queue
            .push(id("keep"), Priority::Normal, None, "keep")
            .unwrap();
        assert!(queue.take_expired().is_empty());
        *now.lock().unwrap() = t0() + TimeDelta::seconds(2);
        let expired = queue.take_expired();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].payload, "stale");
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_id_is_queued_once_until_its_run_ends() {
        let queue = RunQueue::new(2);
        queue
            .push(id("t"), Priority::Normal, None, "first")
            .unwrap();
        assert_eq!(
            queue.push(id("t"), Priority::Urgent, None, "again"),
            Err(QueueError::Duplicate { task_id: id("t") })
        );
        let started = start(&queue).await;
        assert!(matches!(
            queue.push(id("t"), Priority::Normal, None, "while running"),
            Err(QueueError::Duplicate { .. })
        ));
        drop(started.guard);
        // A follow-up (e.g. the answer to a help request) may run the same task id again.
        queue
            .push(id("t"), Priority::Normal, None, "resumed")
            .unwrap();
        assert_eq!(start(&queue).await.task.payload, "resumed");
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_removes_a_queued_task_and_signals_a_running_one() {
        let queue = RunQueue::new(1);
        queue.push(id("a"), Priority::Normal, None, "a").unwrap();
        queue.push(id("b"), Priority::Normal, None, "b").unwrap();
        queue.push(id("c"), Priority::Normal, None, "c").unwrap();
        let mut a = start(&queue).await;
        match queue.cancel(&id("b")) {
            Cancelled::Queued(task) => assert_eq!(task.payload, "b"),
            other => panic!("expected b to be removed, got {other:?}"),
        }
        assert_eq!(queue.cancel(&id("b")), Cancelled::Unknown);
        assert!(!a.cancel.is_cancelled());
        assert_eq!(queue.cancel(&id("a")), Cancelled::Running);
        tokio::time::timeout(Duration::from_secs(1), a.cancel.cancelled())
            .await
            .unwrap();
        let rows = queue.snapshot();
        assert!(rows[0].cancel_requested);
        drop(a.guard);
        assert_eq!(start(&queue).await.task.payload, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_lists_running_then_queued_in_start_order() {
        let (clock, _) = manual_clock();
        let queue = RunQueue::with_clock(1, clock);
        queue
            .push(id("run"), Priority::Normal, None, "run")
            .unwrap();
        let _run = start(&queue).await;
        queue.push(id("n"), Priority::Normal, None, "n").unwrap();
        queue.push(id("u"), Priority::Urgent, None, "u").unwrap();
        let rows = queue.snapshot();
        let ids: Vec<(&str, TaskState)> = rows
            .iter()
            .map(|row| (row.task_id.as_str(), row.state))
            .collect();
        assert_eq!(
            ids,
            [
                ("run", TaskState::Running),
                ("u", TaskState::Queued),
                ("n", TaskState::Queued)
            ]
        );
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.running(), 1);
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["taskId"], "u");
        assert_eq!(json["state"], "queued");
        assert_eq!(json["priority"], "urgent");
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_waiters_and_refuses_pushes() {
        let queue = Arc::new(RunQueue::<&'static str>::new(1));
        let waiter = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { matches!(queue.next().await, Next::Closed) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(queue.close().is_empty());
        assert!(waiter.await.unwrap());
        assert!(matches!(
            queue.push(id("x"), Priority::Normal, None, "x"),
            Err(QueueError::Closed { .. })
        ));
        assert!(matches!(queue.next().await, Next::Closed));
    }
}
