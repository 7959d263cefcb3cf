//! The `tasks` table: one row per (account, task id, role), its [`TaskState`], and the
//! compare-and-set transitions that make "no task runs twice" hold locally.
//!
//! A row's state changes only through [`Store::transition`], [`Store::record_run_start`],
//! [`Store::record_help_needed`] and [`Store::record_result`]; [`Store::upsert_task`] inserts a
//! task or refreshes what the latest mail says about it, but never moves its state.

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::error::sql;
use super::{
    MAX_OUTPUT_BYTES, MAX_TEXT_BYTES, Store, StoreError, cap, count_at, limit, ms, msgid,
    opt_time_at, parsed_at, time_at,
};
use crate::wire::aamp::{Priority, Status, TaskId, TaskResult};

/// Which side of a task this daemon is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// We received the dispatch and run the task.
    Worker,
    /// We sent the dispatch and wait for the result.
    Dispatcher,
}

impl Role {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Dispatcher => "dispatcher",
        }
    }

    /// Reads a stored value.
    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "worker" => Some(Role::Worker),
            "dispatcher" => Some(Role::Dispatcher),
            _ => None,
        }
    }

    /// The states a task of this role can be in, in lifecycle order.
    pub fn states(self) -> &'static [TaskState] {
        use TaskState as S;
        match self {
            Role::Worker => &[
                S::Received,
                S::Acked,
                S::Queued,
                S::Running,
                S::HelpNeeded,
                S::Completed,
                S::Rejected,
                S::Cancelled,
                S::Expired,
            ],
            Role::Dispatcher => &[
                S::Dispatched,
                S::Acked,
                S::HelpNeeded,
                S::Answered,
                S::Completed,
                S::Rejected,
                S::Cancelled,
                S::Expired,
            ],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task is in its lifecycle. Worker: received -> acked -> queued -> running ->
/// (help_needed -> running)* -> completed | rejected, or cancelled | expired. Dispatcher:
/// dispatched -> acked -> (help_needed -> answered)* -> completed | rejected, or cancelled |
/// expired. [`Role::states`] lists which apply to which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Worker: the dispatch passed the trust gate and is stored.
    Received,
    /// Dispatcher: the dispatch is sent (or queued in the outbox).
    Dispatched,
    /// Both: the task.ack is sent (worker) or received (dispatcher).
    Acked,
    /// Worker: waiting for a run slot.
    Queued,
    /// Worker: the agent is running.
    Running,
    /// Both: a task.help_needed is sent (worker) or received (dispatcher).
    HelpNeeded,
    /// Dispatcher: we answered a help request.
    Answered,
    /// Both: a task.result with status completed.
    Completed,
    /// Both: a task.result with status rejected.
    Rejected,
    /// Both: a task.cancel was sent or received.
    Cancelled,
    /// Both: Expires-At passed before a result.
    Expired,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 11] = [
        TaskState::Received,
        TaskState::Dispatched,
        TaskState::Acked,
        TaskState::Queued,
        TaskState::Running,
        TaskState::HelpNeeded,
        TaskState::Answered,
        TaskState::Completed,
        TaskState::Rejected,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Received => "received",
            TaskState::Dispatched => "dispatched",
            TaskState::Acked => "acked",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::HelpNeeded => "help_needed",
            TaskState::Answered => "answered",
            TaskState::Completed => "completed",
            TaskState::Rejected => "rejected",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Reads a stored value (exact).
    pub fn parse(value: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// True when nothing more happens to the task (completed, rejected, cancelled, expired).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Rejected | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// True when a task of `role` can be in this state.
    pub fn is_valid_for(self, role: Role) -> bool {
        role.states().contains(&self)
    }

    /// The state a result with `status` leads to.
    pub fn from_status(status: Status) -> TaskState {
        match status {
            Status::Completed => TaskState::Completed,
            Status::Rejected => TaskState::Rejected,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The terminal states as an SQL list, for `state IN …` (checked against
/// [`TaskState::is_terminal`] by a test).
pub(super) const TERMINAL_SQL: &str = "('completed', 'rejected', 'cancelled', 'expired')";

/// What the daemon knows about a task when it first sees it (or sees a follow-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub account: String,
    pub task_id: TaskId,
    pub role: Role,
    /// The state to insert with; ignored when the task exists.
    pub state: TaskState,
    /// The other side's address (the dispatcher for a worker, the worker for a dispatcher).
    pub peer: String,
    pub title: String,
    pub priority: Priority,
    pub expires_at: Option<DateTime<Utc>>,
    pub session_key: Option<String>,
    /// The Message-ID of the (latest) task.dispatch.
    pub dispatch_message_id: Option<String>,
    pub last_message_id: Option<String>,
}

impl NewTask {
    /// A task with the required fields; the rest empty (normal priority, no expiry).
    pub fn new(
        account: impl Into<String>,
        task_id: TaskId,
        role: Role,
        state: TaskState,
        peer: impl Into<String>,
    ) -> NewTask {
        NewTask {
            account: account.into(),
            task_id,
            role,
            state,
            peer: peer.into(),
            title: String::new(),
            priority: Priority::Normal,
            expires_at: None,
            session_key: None,
            dispatch_message_id: None,
            last_message_id: None,
        }
    }
}

/// A stored result (ours as a worker, the peer's as a dispatcher).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredResult {
    pub status: Status,
    /// The output, at most [`MAX_OUTPUT_BYTES`].
    pub output: String,
    pub error: Option<String>,
    /// `X-AAMP-StructuredResult` as JSON text.
    pub structured_result: Option<String>,
    /// True when the output or error was cut, or the structured result dropped, for size.
    pub truncated: bool,
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Task {
    pub account: String,
    pub task_id: TaskId,
    pub role: Role,
    pub state: TaskState,
    pub peer: String,
    pub title: String,
    pub priority: Priority,
    pub expires_at: Option<DateTime<Utc>>,
    pub session_key: Option<String>,
    pub dispatch_message_id: Option<String>,
    pub last_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How many times a run started ([`Store::record_run_start`]).
    pub attempts: u32,
    pub result: Option<StoredResult>,
    pub help_question: Option<String>,
}

/// Which tasks [`Store::list_tasks`] returns. The default: all, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub account: Option<String>,
    pub role: Option<Role>,
    /// Any of these states; empty means any state.
    pub states: Vec<TaskState>,
    pub limit: Option<usize>,
    pub order: TaskOrder,
}

/// The order of [`Store::list_tasks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskOrder {
    /// Most recently created first.
    #[default]
    NewestFirst,
    /// Oldest first.
    OldestFirst,
    /// The run queue's order: urgent > high > normal, then oldest first.
    Queue,
}

const TASK_COLUMNS: &str = "account, task_id, role, state, peer, title, priority, expires_at,
    session_key, dispatch_message_id, last_message_id, created_at, updated_at, attempts,
    result_status, result_output, result_error, structured_result, result_truncated,
    help_question";

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
    let result = match row.get::<_, Option<String>>(14)? {
        None => None,
        Some(status) => Some(StoredResult {
            status: Status::parse(&status).ok_or_else(|| super::unknown(14, "result", status))?,
            output: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
            error: row.get(16)?,
            structured_result: row.get(17)?,
            truncated: row.get(18)?,
        }),
    };
    Ok(Task {
        account: row.get(0)?,
        task_id: TaskId::new(row.get::<_, String>(1)?),
        role: parsed_at(row, 2, "role", Role::parse)?,
        state: parsed_at(row, 3, "state", TaskState::parse)?,
        peer: row.get(4)?,
        title: row.get(5)?,
        priority: parsed_at(row, 6, "priority", Priority::parse)?,
        expires_at: opt_time_at(row, 7, "expires_at")?,
        session_key: row.get(8)?,
        dispatch_message_id: row.get(9)?,
        last_message_id: row.get(10)?,
        created_at: time_at(row, 11, "created_at")?,
        updated_at: time_at(row, 12, "updated_at")?,
        attempts: count_at(row, 13)?,
        result,
        help_question: row.get(19)?,
    })
}

/// `(?n, ?n+1, …)` for `count` parameters starting at `first`.
fn placeholders(first: usize, count: usize) -> String {
    let list: Vec<String> = (first..first + count).map(|i| format!("?{i}")).collect();
    format!("({})", list.join(", "))
}

fn check_state(role: Role, state: TaskState) -> Result<(), StoreError> {
    if state.is_valid_for(role) {
        Ok(())
    } else {
        Err(StoreError::InvalidState {
            role: role.as_str(),
            state: state.as_str(),
        })
    }
}

impl Store {
    /// Inserts `task` (in `task.state`), or, when (account, task id, role) exists, refreshes
    /// peer, title, priority and expiry, and the session key and Message-IDs it gives, leaving
    /// the state, attempts and result alone. Returns true when the row is new.
    pub fn upsert_task(&self, task: &NewTask, now: DateTime<Utc>) -> Result<bool, StoreError> {
        check_state(task.role, task.state)?;
        let run = |tx: &Connection| -> rusqlite::Result<bool> {
            let inserted =
                tx.prepare_cached(
                    "INSERT INTO tasks (account, task_id, role, state, peer, title, priority,
                     expires_at, session_key, dispatch_message_id, last_message_id,
                     created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
                 ON CONFLICT (account, task_id, role) DO NOTHING",
                )?
                .execute(params![
                    task.account,
                    task.task_id.as_str(),
                    task.role.as_str(),
                    task.state.as_str(),
                    task.peer,
                    task.title,
                    task.priority.as_str(),
                    task.expires_at.map(ms),
                    task.session_key,
                    task.dispatch_message_id.as_deref().map(msgid),
                    task.last_message_id.as_deref().map(msgid),
                    ms(now),
                ])? == 1;
            if !inserted {
                tx.prepare_cached(
                    "UPDATE tasks SET peer = ?4, title = ?5, priority = ?6, expires_at = ?7,
                         session_key = COALESCE(?8, session_key),
                         dispatch_message_id = COALESCE(?9, dispatch_message_id),
                         last_message_id = COALESCE(?10, last_message_id),
                         updated_at = MAX(updated_at, ?11)
                     WHERE account = ?1 AND task_id = ?2 AND role = ?3",
                )?
                .execute(params![
                    task.account,
                    task.task_id.as_str(),
                    task.role.as_str(),
                    task.peer,
                    task.title,
                    task.priority.as_str(),
                    task.expires_at.map(ms),
                    task.session_key,
                    task.dispatch_message_id.as_deref().map(msgid),
                    task.last_message_id.as_deref().map(msgid),
                    ms(now),
                ])?;
            }
            Ok(inserted)
        };
        self.write(run).map_err(sql("save a task"))
    }

    /// The task, if stored.
    pub fn get_task(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
    ) -> Result<Option<Task>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks
                 WHERE account = ?1 AND task_id = ?2 AND role = ?3"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![account, task_id.as_str(), role.as_str()],
                    task_from_row,
                )
                .optional()
            })
            .map_err(sql("read a task"))
    }

    /// Tasks matching `filter`, in its order.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(account) = &filter.account {
            values.push(Value::Text(account.clone()));
            conditions.push(format!("account = ?{}", values.len()));
        }
        if let Some(role) = filter.role {
            values.push(Value::Text(role.as_str().to_owned()));
            conditions.push(format!("role = ?{}", values.len()));
        }
        if !filter.states.is_empty() {
            let first = values.len() + 1;
            values.extend(
                filter
                    .states
                    .iter()
                    .map(|s| Value::Text(s.as_str().to_owned())),
            );
            conditions.push(format!(
                "state IN {}",
                placeholders(first, filter.states.len())
            ));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let order = match filter.order {
            TaskOrder::NewestFirst => "created_at DESC, rowid DESC",
            TaskOrder::OldestFirst => "created_at ASC, rowid ASC",
            TaskOrder::Queue => {
                "CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 ELSE 2 END,
                 created_at ASC, rowid ASC"
            }
        };
        values.push(Value::Integer(limit(filter.limit)));
        let query = format!(
            "SELECT {TASK_COLUMNS} FROM tasks {filter_sql} ORDER BY {order} LIMIT ?{}",
            values.len()
        );
        let run = || -> rusqlite::Result<Vec<Task>> {
            let mut stmt = self.conn.prepare(&query)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), task_from_row)?;
            rows.collect()
        };
        run().map_err(sql("list tasks"))
    }

    /// Compare-and-set: moves the task to `to` only if its state is one of `from`. Returns
    /// false (and changes nothing) when the task is missing or in another state, which is how
    /// a second runner, a late event or a second daemon on the same file loses the race.
    /// Errors when `to` does not exist for `role`.
    pub fn transition(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
        from: &[TaskState],
        to: TaskState,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let change = Change::new(account, task_id, role, from, to, now);
        self.compare_and_set(&change, "change a task's state")
    }

    /// Starts a run of a worker task: compare-and-set from one of `from` (`[Queued]`, or
    /// `[HelpNeeded]` when an answer resumes it) to `running`, adding one to `attempts`.
    /// Returns false when another runner (or a cancel) got there first.
    pub fn record_run_start(
        &self,
        account: &str,
        task_id: &TaskId,
        from: &[TaskState],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut change = Change::new(
            account,
            task_id,
            Role::Worker,
            from,
            TaskState::Running,
            now,
        );
        change.count_attempt = true;
        self.compare_and_set(&change, "start a task run")
    }

    /// Records a help request (sent as a worker, received as a dispatcher): moves a task that
    /// is not terminal to `help_needed` and keeps the question (at most
    /// [`MAX_TEXT_BYTES`]). False when the task is missing or terminal.
    pub fn record_help_needed(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
        question: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (question, _) = cap(question, MAX_TEXT_BYTES);
        let from = open_states(role);
        let mut change = Change::new(account, task_id, role, &from, TaskState::HelpNeeded, now);
        change.set = vec![("help_question", Value::Text(question.to_owned()))];
        self.compare_and_set(&change, "record a help request")
    }

    /// Records a result (ours as a worker, the peer's as a dispatcher): moves a task that is
    /// not terminal to `completed` or `rejected` by `result.status` and stores output, error
    /// and structured result within the size caps (module docs). False when the task is
    /// missing or already terminal: a result after a cancel or a local expiry is not stored
    /// (audit it instead).
    pub fn record_result(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
        result: &TaskResult,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (output, output_cut) = cap(&result.output, MAX_OUTPUT_BYTES);
        let (error, error_cut) = match result.error_msg.as_deref() {
            Some(e) => {
                let (e, cut) = cap(e, MAX_TEXT_BYTES);
                (Value::Text(e.to_owned()), cut)
            }
            None => (Value::Null, false),
        };
        let structured = match &result.structured_result {
            Some(v) => Some(
                serde_json::to_string(v).map_err(|source| StoreError::Encode {
                    action: "encode a structured result",
                    source,
                })?,
            ),
            None => None,
        };
        let structured_dropped = structured
            .as_ref()
            .is_some_and(|s| s.len() > MAX_OUTPUT_BYTES);
        let structured = structured
            .filter(|_| !structured_dropped)
            .map_or(Value::Null, Value::Text);
        let truncated = output_cut || error_cut || structured_dropped;
        let from = open_states(role);
        let to = TaskState::from_status(result.status);
        let mut change = Change::new(account, task_id, role, &from, to, now);
        change.set = vec![
            (
                "result_status",
                Value::Text(result.status.as_str().to_owned()),
            ),
            ("result_output", Value::Text(output.to_owned())),
            ("result_error", error),
            ("structured_result", structured),
            ("result_truncated", Value::Integer(i64::from(truncated))),
        ];
        self.compare_and_set(&change, "record a task result")
    }

    /// The one compare-and-set UPDATE behind every state change.
    fn compare_and_set(
        &self,
        change: &Change<'_>,
        action: &'static str,
    ) -> Result<bool, StoreError> {
        check_state(change.role, change.to)?;
        if change.from.is_empty() {
            return Ok(false);
        }
        let mut values: Vec<Value> = vec![
            Value::Text(change.to.as_str().to_owned()),
            Value::Integer(ms(change.now)),
            Value::Text(change.account.to_owned()),
            Value::Text(change.task_id.as_str().to_owned()),
            Value::Text(change.role.as_str().to_owned()),
        ];
        let mut set = String::new();
        if change.count_attempt {
            set.push_str(", attempts = attempts + 1");
        }
        for (column, value) in &change.set {
            values.push(value.clone());
            set.push_str(&format!(", {column} = ?{}", values.len()));
        }
        let states = placeholders(values.len() + 1, change.from.len());
        values.extend(
            change
                .from
                .iter()
                .map(|s| Value::Text(s.as_str().to_owned())),
        );
        let query = format!(
            "UPDATE tasks SET state = ?1, updated_at = ?2{set}
             WHERE account = ?3 AND task_id = ?4 AND role = ?5 AND state IN {states}"
        );
        self.conn
            .prepare_cached(&query)
            .and_then(|mut stmt| stmt.execute(params_from_iter(values.iter())))
            .map(|changed| changed == 1)
            .map_err(sql(action))
    }
}

/// One compare-and-set state change and the columns it writes besides the state.
struct Change<'a> {
    account: &'a str,
    task_id: &'a TaskId,
    role: Role,
    from: &'a [TaskState],
    to: TaskState,
    now: DateTime<Utc>,
    /// `attempts = attempts + 1`.
    count_attempt: bool,
    /// Other columns to set (names are constants in this file, never input).
    set: Vec<(&'static str, Value)>,
}

impl<'a> Change<'a> {
    fn new(
        account: &'a str,
        task_id: &'a TaskId,
        role: Role,
        from: &'a [TaskState],
        to: TaskState,
        now: DateTime<Utc>,
    ) -> Change<'a> {
        Change {
            account,
            task_id,
            role,
            from,
            to,
            now,
            count_attempt: false,
            set: Vec::new(),
        }
    }
}

/// The states of `role` that are not terminal.
fn open_states(role: Role) -> Vec<TaskState> {
    role.states()
        .iter()
        .copied()
        .filter(|s| !s.is_terminal())
        .collect()
}
