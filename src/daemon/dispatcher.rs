//! The dispatcher side (`protocol/aamp.md` "Lifecycle: Dispatcher", "Threading"): tasks this
//! account sent, and what comes back for them.
//!
//! # Lifecycle
//!
//! `dispatched -> acked -> (help_needed -> answered)* -> completed | rejected`, or `cancelled`
//! (we sent a task.cancel, or the peer did) or `expired` (the waiter's own wait passed
//! Expires-At, or the worker rejected the task with ErrorMsg `expired`). Terminal: a result or
//! a cancel in the thread.
//!
//! # Outbound (the CLI verbs, one store transaction each)
//!
//! - [`enqueue_dispatch`]: a new task.dispatch (TaskId UUIDv4, Message-ID `<ULID@domain>`):
//!   the dispatcher task row, the outbox row and the thread index.
//! - [`enqueue_answer`]: the answer to a help request: a task.dispatch with the **same TaskId**,
//!   In-Reply-To the help mail, References the whole chain (convention (a), which the worker
//!   resumes on); `help_needed -> answered`.
//! - [`enqueue_cancel`]: a task.cancel In-Reply-To the dispatch; the task is `cancelled`. A
//!   dispatch still waiting in the outbox is withdrawn instead (never sent, no cancel mail).
//!
//! Who submits: the process that holds the account's pipeline lock
//! ([`super::status::lock_path`]) drains the outbox; a CLI verb that can take the lock sends its
//! own row at once ([`send_now`]) and lets it go; one that cannot leaves the row to the holder
//! (`taskmail run`, or a waiting `taskmail dispatch`) and watches the store until it is sent.
//!
//! # Inbound (the daemon pipeline, worker daemon or dispatcher-only alike)
//!
//! In screening ([`super::inbound`], step 4), an ack, help request, result, stream notice or
//! cancel whose TaskId is one of our dispatcher tasks, or a person's reply whose
//! In-Reply-To/References hit the dispatcher side of the thread index, is for the dispatcher.
//! It must come from the task's peer (else refused as `not-task-peer`), takes no claim keyword
//! (only our store can route it), and is routed by `Core::route_for_dispatcher`: the state
//! change, the thread index (direction in), the message's details in the task's record and the
//! processed mark, in one transaction; then an [`EventKind::Progress`] event.
//!
//! A person's reply to our dispatch changes no state: it is recorded and surfaced (the waiting
//! `taskmail dispatch` prints it).
//!
//! # The dispatcher-only pipeline
//!
//! [`follow`] runs the inbound pipeline and the outbox for one account with no agent: what a
//! waiting `taskmail dispatch --wait` runs when no daemon serves the account. It keeps its
//! JMAP cursor under its own key ([`cursor_key`]) and leaves worker-side mail unmarked, so a
//! `taskmail run` of the same account later still finds it.
//!
//! # The record
//!
//! Each dispatcher task keeps a JSON record in the store's `kv` table
//! (`dispatcher-task/<account>/<task id>`): one [`RecordedMessage`] per message of its thread,
//! both directions, with what it said (question and options, status, output, error, structured
//! result, attachment names and sizes, a person's reply text), texts capped at
//! [`MAX_RECORD_TEXT`]. `taskmail task show` and the waiter read it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::context::{ReplyTarget, capped};
use super::events::EventKind;
use super::inbound::{Take, What, settle};
use super::outbound::{self, Reply, Style};
use super::runner::{CancelSignal, RunError, RunReport, RunRequest};
use super::status::{self, LockHolder};
use super::{Backoffs, Core, DaemonError, Deps, Execute, Settings, lock};
use crate::config::{Account, Config};
use crate::store::{
    Direction, NewTask, OutboxStatus, Role, Store, StoreError, TASK_RETENTION, Task, TaskFilter,
    TaskState, ThreadEntry,
};
use crate::transport::{Fetched, MailStore, SendError, SmtpEnvelope, Submit};
use crate::wire::aamp::{Dispatch, HelpNeeded, Payload, Status, TaskId, TaskResult};
use crate::wire::message::Attachment;
use crate::wire::{Classified, classify};

/// Most bytes of one text kept in a task's record (the task row keeps up to 1 MiB of output;
/// the mail keeps everything).
pub const MAX_RECORD_TEXT: usize = 64 << 10;
/// Most messages kept in a task's record (the oldest after the dispatch go first).
pub const MAX_RECORD_MESSAGES: usize = 200;

/// The open (not terminal) states of a dispatcher task.
pub const OPEN: [TaskState; 4] = [
    TaskState::Dispatched,
    TaskState::Acked,
    TaskState::HelpNeeded,
    TaskState::Answered,
];

/// The agent of a dispatcher-only pipeline: there is none, and nothing asks it to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAgent;

impl Execute for NoAgent {
    async fn execute(
        &self,
        _request: &RunRequest,
        _cancel: CancelSignal,
    ) -> Result<RunReport, RunError> {
        Err(RunError::Wait(std::io::Error::other(
            "a dispatcher-only pipeline runs no agent",
        )))
    }
}

/// Why a dispatcher step failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// The store could not be read or written.
    #[error("cannot use the task store")]
    Store(#[from] StoreError),
    /// The submission failed.
    #[error("cannot submit the message")]
    Send(#[from] SendError),
    /// No dispatcher task has this id.
    #[error("cannot find a dispatched task '{task_id}' (see `taskmail tasks --role dispatcher`)")]
    NoTask {
        /// The id asked for.
        task_id: String,
    },
    /// The task is not waiting for an answer.
    #[error("cannot answer task '{task_id}': it is {state}, not waiting for an answer")]
    NotWaiting {
        /// The task.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// The task is over.
    #[error("cannot cancel task '{task_id}': it is already {state}")]
    Finished {
        /// The task.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// The outbox row is gone.
    #[error("cannot find message '{0}' in the outbox")]
    NoOutboxRow(String),
    /// The account's pipeline lock could not be used, or a connection could not be set up.
    #[error("cannot set up the account")]
    Daemon(#[from] DaemonError),
    /// `--account` names no account.
    #[error("cannot find account '{0}' in the config")]
    UnknownAccount(String),
}

impl DispatcherError {
    /// The documented exit code: 77, 69, 75 from a submission; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DispatcherError::Send(e) => e.exit_code(),
            DispatcherError::Daemon(e) => e.exit_code(),
            DispatcherError::UnknownAccount(_) => 2,
            _ => 1,
        }
    }
}

// ---- the record ------------------------------------------------------------------------------

/// An attachment's name and size (the bytes stay in the mailbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentMeta {
    pub name: String,
    pub content_type: String,
    pub size: usize,
    /// The JMAP blob id, for inbound attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
}

/// One message of a dispatcher task's thread, with what it said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RecordedMessage {
    /// Without angle brackets.
    pub message_id: String,
    /// `task.dispatch`, `task.ack`, `task.help_needed`, `task.result`, `task.cancel`,
    /// `task.stream.opened`, or `reply` (a person's mail).
    pub intent: String,
    /// `in` or `out`.
    pub direction: String,
    pub at: Option<DateTime<Utc>>,
    pub from: String,
    /// Its References (inbound), to thread an answer onto.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Instructions (a dispatch or an answer), a cancel's reason, a person's reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// `completed` or `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured_result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentMeta>,
    /// Dispatch-Context of a dispatch we sent (an answer repeats it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dispatch_context: BTreeMap<String, String>,
}

/// Every message of a dispatcher task, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Record {
    pub messages: Vec<RecordedMessage>,
}

impl Record {
    /// Adds `message` unless its Message-ID is there already. True when added.
    pub fn add(&mut self, message: RecordedMessage) -> bool {
        if !message.message_id.is_empty()
            && self
                .messages
                .iter()
                .any(|m| m.message_id == message.message_id)
        {
            return false;
        }
        self.messages.push(message);
        if self.messages.len() > MAX_RECORD_MESSAGES {
            let extra = self.messages.len() - MAX_RECORD_MESSAGES;
            self.messages.drain(1..=extra);
        }
        true
    }

    /// The latest help request received.
    pub fn last_help(&self) -> Option<&RecordedMessage> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.intent == "task.help_needed" && m.direction == "in")
    }

    /// The first dispatch we sent.
    pub fn dispatch(&self) -> Option<&RecordedMessage> {
        self.messages
            .iter()
            .find(|m| m.intent == "task.dispatch" && m.direction == "out")
    }
}

fn record_key(account: &str, task_id: &TaskId) -> String {
    format!("dispatcher-task/{account}/{task_id}")
}

/// The record of a dispatcher task (empty when none was saved).
pub fn load_record(store: &Store, account: &str, task_id: &TaskId) -> Result<Record, StoreError> {
    Ok(store
        .kv_get(&record_key(account, task_id))?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}

fn save_record(
    store: &Store,
    account: &str,
    task_id: &TaskId,
    record: &Record,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(record).map_err(|source| StoreError::Encode {
        action: "encode a dispatcher task's record",
        source,
    })?;
    store.kv_set(&record_key(account, task_id), &text, now)
}

fn add_to_record(
    store: &Store,
    account: &str,
    task_id: &TaskId,
    message: RecordedMessage,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut record = load_record(store, account, task_id)?;
    if record.add(message) {
        save_record(store, account, task_id, &record, now)?;
    }
    Ok(())
}

/// Removes the records of terminal dispatcher tasks the store is about to prune.
pub(crate) fn prune_records(
    store: &Store,
    account: &str,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let old = store.list_tasks(&TaskFilter {
        account: Some(account.to_owned()),
        role: Some(Role::Dispatcher),
        states: vec![
            TaskState::Completed,
            TaskState::Rejected,
            TaskState::Cancelled,
            TaskState::Expired,
        ],
        ..TaskFilter::default()
    })?;
    let mut removed = 0;
    for task in old.iter().filter(|t| t.updated_at < now - TASK_RETENTION) {
        if store.kv_delete(&record_key(account, &task.task_id))? {
            removed += 1;
        }
    }
    Ok(removed)
}

fn cap(text: &str) -> String {
    capped(text, MAX_RECORD_TEXT)
}

/// `text` cut to at most [`MAX_RECORD_TEXT`] bytes on a character boundary.
pub fn capped_text(text: &str) -> String {
    cap(text)
}

fn some_text(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| cap(text))
}

fn outgoing(
    message_id: &str,
    intent: &str,
    from: &str,
    now: DateTime<Utc>,
    text: Option<String>,
) -> RecordedMessage {
    RecordedMessage {
        message_id: message_id.to_owned(),
        intent: intent.to_owned(),
        direction: Direction::Out.as_str().to_owned(),
        at: Some(now),
        from: from.to_owned(),
        text,
        ..RecordedMessage::default()
    }
}

// ---- outbound --------------------------------------------------------------------------------

/// A new task to dispatch.
#[derive(Debug, Clone)]
pub struct NewDispatch {
    /// The worker's address.
    pub to: String,
    /// Title, instructions, priority, expiry, session key, context, parent.
    pub dispatch: Dispatch,
    /// Files to attach.
    pub attachments: Vec<Attachment>,
}

/// A message put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub task_id: TaskId,
    /// Without angle brackets.
    pub message_id: String,
    /// `task.dispatch` or `task.cancel`.
    pub intent: String,
    /// The recipient.
    pub to: String,
}

/// Renders a new task.dispatch and stores the task, the outbox row, the thread index and the
/// record in one transaction (module docs). `key` is the account's config name; `signer`, the
/// account's signing key, if it has one ([`crate::trust::keys::signer`]).
pub fn enqueue_dispatch(
    store: &Store,
    account: &Account,
    key: &str,
    signer: Option<&crate::trust::sign::SigningKey>,
    task_id: TaskId,
    new: NewDispatch,
    now: DateTime<Utc>,
) -> Result<Queued, StoreError> {
    let to = new.to.trim().to_ascii_lowercase();
    let metas: Vec<AttachmentMeta> = new
        .attachments
        .iter()
        .map(|a| AttachmentMeta {
            name: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.bytes.len(),
            blob_id: None,
        })
        .collect();
    let dispatch = new.dispatch;
    let rendered = outbound::render(
        Reply {
            account,
            to: &to,
            task_id: &task_id,
            payload: Payload::Dispatch(dispatch.clone()),
            answering: &ReplyTarget::default(),
            thread: &[],
            style: Style::Aamp,
            attachments: new.attachments,
            signer,
        },
        now,
    );
    store.atomically(|s| {
        let mut task = NewTask::new(
            key,
            task_id.clone(),
            Role::Dispatcher,
            TaskState::Dispatched,
            &to,
        );
        task.title = dispatch.title.clone();
        task.priority = dispatch.priority;
        task.expires_at = dispatch.expires_at;
        task.session_key = dispatch.session_key.clone();
        task.dispatch_message_id = Some(rendered.message_id.clone());
        task.last_message_id = Some(rendered.message_id.clone());
        s.upsert_task(&task, now)?;
        outbound::enqueue(s, account, key, &rendered, Some(Role::Dispatcher), now)?;
        let mut item = outgoing(
            &rendered.message_id,
            "task.dispatch",
            &account.email,
            now,
            some_text(&dispatch.instructions),
        );
        item.attachments = metas;
        item.dispatch_context = dispatch.dispatch_context.0.clone();
        add_to_record(s, key, &task_id, item, now)?;
        Ok(())
    })?;
    Ok(Queued {
        task_id,
        message_id: rendered.message_id,
        intent: "task.dispatch".to_owned(),
        to,
    })
}

/// The dispatcher task `task_id` of the account, or [`DispatcherError::NoTask`].
pub fn dispatcher_task(
    store: &Store,
    key: &str,
    task_id: &TaskId,
) -> Result<Task, DispatcherError> {
    store
        .get_task(key, task_id, Role::Dispatcher)?
        .ok_or_else(|| no_task(task_id))
}

/// Answers the task's help request (module docs): a same-TaskId task.dispatch In-Reply-To the
/// help mail, `help_needed -> answered`, one transaction.
pub fn enqueue_answer(
    store: &Store,
    account: &Account,
    key: &str,
    signer: Option<&crate::trust::sign::SigningKey>,
    task_id: &TaskId,
    text: &str,
    now: DateTime<Utc>,
) -> Result<Queued, DispatcherError> {
    store.atomically(|s| {
        let Some(task) = s.get_task(key, task_id, Role::Dispatcher)? else {
            return Ok(Err(no_task(task_id)));
        };
        if task.state != TaskState::HelpNeeded {
            return Ok(Err(DispatcherError::NotWaiting {
                task_id: task_id.to_string(),
                state: task.state,
            }));
        }
        let record = load_record(s, key, task_id)?;
        let answering = match record.last_help() {
            Some(help) => ReplyTarget {
                message_id: help.message_id.clone(),
                references: help.references.clone(),
            },
            None => ReplyTarget {
                message_id: task.last_message_id.clone().unwrap_or_default(),
                references: Vec::new(),
            },
        };
        let thread = outbound::thread_ids(s, key, task_id, Role::Dispatcher)?;
        let context = record
            .dispatch()
            .map(|d| d.dispatch_context.clone())
            .unwrap_or_default();
        let dispatch = Dispatch {
            title: task.title.clone(),
            instructions: text.to_owned(),
            priority: task.priority,
            expires_at: task.expires_at,
            session_key: task.session_key.clone(),
            dispatch_context: crate::wire::aamp::DispatchContext(context),
            parent_task_id: None,
        };
        let rendered = outbound::render(
            Reply {
                account,
                to: &task.peer,
                task_id,
                payload: Payload::Dispatch(dispatch),
                answering: &answering,
                thread: &thread,
                style: Style::Aamp,
                attachments: Vec::new(),
                signer,
            },
            now,
        );
        if !s.transition(
            key,
            task_id,
            Role::Dispatcher,
            &[TaskState::HelpNeeded],
            TaskState::Answered,
            now,
        )? {
            return Ok(Err(DispatcherError::NotWaiting {
                task_id: task_id.to_string(),
                state: task.state,
            }));
        }
        outbound::enqueue(s, account, key, &rendered, Some(Role::Dispatcher), now)?;
        add_to_record(
            s,
            key,
            task_id,
            outgoing(
                &rendered.message_id,
                "task.dispatch",
                &account.email,
                now,
                some_text(text),
            ),
            now,
        )?;
        Ok(Ok(Queued {
            task_id: task_id.clone(),
            message_id: rendered.message_id,
            intent: "task.dispatch".to_owned(),
            to: task.peer.clone(),
        }))
    })?
}

/// What [`enqueue_cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// A task.cancel is in the outbox.
    Queued(Queued),
    /// The dispatch had not been sent yet: it never will be, and no cancel is needed.
    Withdrawn,
}

/// Cancels a dispatched task (module docs): `cancelled`, and a task.cancel In-Reply-To the
/// dispatch, or the unsent dispatch withdrawn; one transaction.
pub fn enqueue_cancel(
    store: &Store,
    account: &Account,
    key: &str,
    signer: Option<&crate::trust::sign::SigningKey>,
    task_id: &TaskId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Cancelled, DispatcherError> {
    store.atomically(|s| {
        let Some(task) = s.get_task(key, task_id, Role::Dispatcher)? else {
            return Ok(Err(no_task(task_id)));
        };
        if task.state.is_terminal() {
            return Ok(Err(DispatcherError::Finished {
                task_id: task_id.to_string(),
                state: task.state,
            }));
        }
        let dispatch_id = task.dispatch_message_id.clone().unwrap_or_default();
        let unsent = s
            .outbox_get(&dispatch_id)?
            .is_some_and(|row| row.status == OutboxStatus::Pending)
            && task.state == TaskState::Dispatched;
        if !s.transition(
            key,
            task_id,
            Role::Dispatcher,
            &OPEN,
            TaskState::Cancelled,
            now,
        )? {
            return Ok(Err(DispatcherError::Finished {
                task_id: task_id.to_string(),
                state: task.state,
            }));
        }
        if unsent {
            s.outbox_mark_failed(
                &dispatch_id,
                "withdrawn: cancelled before it was sent",
                true,
                now,
            )?;
            add_to_record(
                s,
                key,
                task_id,
                outgoing("", "withdrawn", &account.email, now, some_text(reason)),
                now,
            )?;
            return Ok(Ok(Cancelled::Withdrawn));
        }
        let thread = outbound::thread_ids(s, key, task_id, Role::Dispatcher)?;
        let rendered = outbound::render(
            Reply {
                account,
                to: &task.peer,
                task_id,
                payload: Payload::Cancel {
                    reason: reason.to_owned(),
                },
                answering: &ReplyTarget {
                    message_id: dispatch_id,
                    references: Vec::new(),
                },
                thread: &thread,
                style: Style::Aamp,
                attachments: Vec::new(),
                signer,
            },
            now,
        );
        outbound::enqueue(s, account, key, &rendered, Some(Role::Dispatcher), now)?;
        add_to_record(
            s,
            key,
            task_id,
            outgoing(
                &rendered.message_id,
                "task.cancel",
                &account.email,
                now,
                some_text(reason),
            ),
            now,
        )?;
        Ok(Ok(Cancelled::Queued(Queued {
            task_id: task_id.clone(),
            message_id: rendered.message_id,
            intent: "task.cancel".to_owned(),
            to: task.peer.clone(),
        })))
    })?
}

fn no_task(task_id: &TaskId) -> DispatcherError {
    DispatcherError::NoTask {
        task_id: task_id.to_string(),
    }
}

/// Withdraws a dispatch whose first submission failed: the outbox row is dead (it will never
/// go out later, unexpectedly) and the task `cancelled`, with the reason in its record.
pub fn withdraw(
    store: &Store,
    key: &str,
    queued: &Queued,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store.atomically(|s| {
        s.outbox_mark_failed(&queued.message_id, error, true, now)?;
        if queued.intent == "task.dispatch" {
            s.transition(
                key,
                &queued.task_id,
                Role::Dispatcher,
                &[TaskState::Dispatched],
                TaskState::Cancelled,
                now,
            )?;
        }
        add_to_record(
            s,
            key,
            &queued.task_id,
            outgoing(
                "",
                "withdrawn",
                "",
                now,
                some_text(&format!("not sent: {error}")),
            ),
            now,
        )
    })
}

/// Submits one outbox row now, outside the drain loop, and records the outcome (sent, or the
/// error with a retry time). Call only while holding the account's pipeline lock (or when
/// nothing else drains its outbox).
pub async fn send_now<S: Submit>(
    store: &Store,
    submit: &S,
    message_id: &str,
    now: impl Fn() -> DateTime<Utc>,
) -> Result<(), DispatcherError> {
    let Some(item) = store.outbox_get(message_id)? else {
        return Err(DispatcherError::NoOutboxRow(message_id.to_owned()));
    };
    if item.status != OutboxStatus::Pending {
        return Ok(());
    }
    let envelope = SmtpEnvelope::new(item.smtp_from.clone(), item.rcpt_to.clone());
    match submit.send_raw(&envelope, &item.bytes).await {
        Ok(()) => {
            store.outbox_mark_sent(message_id, now())?;
            tracing::info!(message_id, intent = %item.intent, "sent");
            Ok(())
        }
        Err(error) => {
            let text = crate::transport::smtp::error_chain(&error);
            let next = now() + chrono::TimeDelta::seconds(2);
            store.outbox_mark_failed(message_id, &text, false, next)?;
            Err(error.into())
        }
    }
}

/// How a queued message left (or will leave).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The submission server accepted it: from this process (`None`), or from the process
    /// that serves the account.
    Sent(Option<LockHolder>),
    /// Another process serves the account and drains its outbox; it had not sent the
    /// message yet when we stopped looking.
    Queued(LockHolder),
}

/// Sends a queued message of `key`'s outbox: at once when this process can take the
/// account's pipeline lock ([`send_now`]), else by the lock holder, whose outbox drain sends it
/// within a second or so; then this waits up to `patience` for the store to say it was sent.
pub async fn deliver(
    config: &Config,
    key: &str,
    store: &Store,
    message_id: &str,
    patience: std::time::Duration,
) -> Result<Delivery, DispatcherError> {
    let account = config
        .account(key)
        .ok_or_else(|| DispatcherError::UnknownAccount(key.to_owned()))?;
    match PipelineLock::take(config.state_dir(), key)? {
        Ok(lock) => {
            let submit = crate::transport::SmtpSubmit::from_account(account)?;
            let sent = send_now(store, &submit, message_id, crate::clock::now).await;
            submit.shutdown().await;
            drop(lock);
            sent.map(|()| Delivery::Sent(None))
        }
        Err(holder) => {
            let deadline = tokio::time::Instant::now() + patience;
            loop {
                let row = store
                    .outbox_get(message_id)?
                    .ok_or_else(|| DispatcherError::NoOutboxRow(message_id.to_owned()))?;
                if row.status == OutboxStatus::Sent {
                    return Ok(Delivery::Sent(Some(holder)));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Delivery::Queued(holder));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The account's pipeline lock, taken by [`PipelineLock::take`].
#[derive(Debug)]
pub struct PipelineLock {
    _file: std::fs::File,
}

impl PipelineLock {
    /// Takes the lock of `account`'s pipeline for a dispatcher process, or says who holds it.
    pub fn take(
        state_dir: &std::path::Path,
        account: &str,
    ) -> Result<Result<PipelineLock, LockHolder>, DaemonError> {
        match lock(state_dir, account, "dispatch") {
            Ok(file) => Ok(Ok(PipelineLock { _file: file })),
            Err(DaemonError::Locked { path, .. }) => Ok(Err(status::lock_holder(
                state_dir, account,
            )
            .unwrap_or(LockHolder {
                pid: None,
                kind: "unknown".to_owned(),
                path,
            }))),
            Err(other) => Err(other),
        }
    }
}

/// The store key of the dispatcher-only pipeline's JMAP cursor for `account`.
pub fn cursor_key(account: &str) -> String {
    format!("{account}#dispatcher")
}

/// Makes sure the dispatcher-only cursor of `account` exists, so that replies to a dispatch
/// submitted from now on are read by the next [`follow`]: with no saved state, the mailbox's
/// current one is saved. Call before submitting.
pub async fn ensure_cursor<M: MailStore>(
    store: &Store,
    account: &str,
    mail: &M,
    now: DateTime<Utc>,
) -> Result<(), DaemonError> {
    let key = cursor_key(account);
    if store.jmap_state(&key)?.is_some() {
        return Ok(());
    }
    let state = mail.state().await?;
    store.atomically(|s| {
        s.set_jmap_state(&key, &state, now)?;
        s.kv_set(&format!("inbound-synced-at/{key}"), &now.to_rfc3339(), now)
    })?;
    Ok(())
}

// ---- the dispatcher-only pipeline --------------------------------------------------------

/// Runs the inbound pipeline and the outbox of one account with no agent until `shutdown`
/// completes (module docs). `lock` is the account's pipeline lock, taken by the caller.
pub async fn follow<M, S>(
    config: &Config,
    deps: Deps<M, S, NoAgent>,
    lock: PipelineLock,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError>
where
    M: MailStore + 'static,
    S: Submit + 'static,
{
    let _lock = lock;
    let Deps {
        mail,
        submit,
        agent,
        hints,
        background,
        events,
        clock,
        account,
        gate,
        push_status,
    } = deps;
    let name = account.unwrap_or_else(|| config.dispatcher().account.clone());
    let account = config
        .account(&name)
        .cloned()
        .ok_or_else(|| DaemonError::UnknownAccount(name.clone()))?;
    let store = Store::open(&config.state_dir().join(crate::store::FILE_NAME))?;
    let inbox_id = mail.inbox_id().await?;
    let gate = gate.unwrap_or_else(|| Arc::new(super::TrustGate::from_config(config, &name)));
    let signer = crate::trust::keys::signer(config, &name)?;
    let core = Arc::new(Core {
        key: name.clone(),
        worker: false,
        cursor: cursor_key(&name),
        settings: Settings::from_config(config, &account, false),
        account,
        mail,
        submit,
        agent,
        db: super::Db::new(store),
        queue: super::queue::RunQueue::with_clock(1, Arc::clone(&clock)),
        gate,
        signatures: crate::trust::sign::InboundPolicy::from_config(config, &name),
        signer,
        events: super::events::Events::new(events),
        clock,
        outbox_kick: Notify::new(),
        inbox_id,
        failures: Mutex::new(std::collections::HashMap::new()),
        backoffs: Backoffs::new()?,
        health: super::status::Health::default(),
        // NOTE: a dispatcher-only pipeline claims nothing.
        book: super::lease::Book::default(),
    });
    let state = core.start_state().await?;
    core.prune();
    let mut side = JoinSet::new();
    for future in background {
        side.spawn(future);
    }
    if let Some(push_status) = push_status {
        side.spawn(status::record_push_status(
            core.db.clone(),
            core.key.clone(),
            push_status,
            Arc::clone(&core.clock),
        ));
    }
    let (stop_outbox, outbox_stopped) = watch::channel(false);
    let mut drainer = JoinSet::new();
    drainer.spawn(outbound::drain(Arc::clone(&core), outbox_stopped));
    tracing::info!(account = %core.key, state = %state, "dispatcher pipeline ready");
    core.events.emit(
        core.now(),
        EventKind::Ready {
            account: core.key.clone(),
            email: core.account.email.clone(),
            state,
            recovered: 0,
        },
    );
    tokio::select! {
        () = shutdown => {}
        () = super::inbound::listen(Arc::clone(&core), hints) => {}
    }
    let _ = stop_outbox.send(true);
    if tokio::time::timeout(std::time::Duration::from_secs(5), drainer.join_next())
        .await
        .is_err()
    {
        tracing::warn!(
            "the outbox was not empty at the end; it is sent by the next taskmail process of the account"
        );
    }
    side.abort_all();
    Ok(())
}

// ---- inbound routing -----------------------------------------------------------------------

impl<M, S, A> Core<M, S, A>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    /// The dispatcher task a classified mail is about, if it is for the dispatcher side
    /// (module docs, "Inbound").
    pub(crate) fn dispatcher_task_of(
        &self,
        classified: &Classified,
    ) -> Result<Option<TaskId>, StoreError> {
        match classified {
            Classified::Aamp(parsed) => {
                let task_id = &parsed.message.task_id;
                let for_us = match &parsed.message.payload {
                    Payload::Ack
                    | Payload::HelpNeeded(_)
                    | Payload::Result(_)
                    | Payload::StreamOpened { .. } => true,
                    // NOTE: a cancel is the worker's when it has the task.
                    Payload::Cancel { .. } => self
                        .db
                        .with(|s| s.get_task(&self.key, task_id, Role::Worker))?
                        .is_none(),
                    _ => false,
                };
                if !for_us {
                    return Ok(None);
                }
                let known = self
                    .db
                    .with(|s| s.get_task(&self.key, task_id, Role::Dispatcher))?
                    .is_some();
                Ok(known.then(|| task_id.clone()))
            }
            Classified::Reply { keys, .. } => self.db.with(|s| {
                if s.task_for_message_ids(&self.key, keys, Some(Role::Worker))?
                    .is_some()
                {
                    return Ok(None);
                }
                Ok(
                    s.task_for_message_ids(&self.key, keys, Some(Role::Dispatcher))?
                        .map(|(task_id, _)| task_id),
                )
            }),
            _ => Ok(None),
        }
    }

    /// Screening of dispatcher mail: it must pass the authentication step and come from the
    /// task's peer; no sender policy, no claim.
    pub(crate) fn screen_for_dispatcher(
        &self,
        fetched: Fetched,
        task_id: TaskId,
        classified: &Classified,
        span: &tracing::Span,
    ) -> Result<Option<Take>, StoreError> {
        let intent = match classified {
            Classified::Aamp(parsed) => parsed.message.intent().as_str(),
            _ => "reply",
        };
        span.record("intent", intent);
        span.record("task_id", task_id.as_str());
        let sender = fetched.inbound.sender().unwrap_or_default();
        // NOTE: the authentication step applies here too: a forged task.result for a task we
        // dispatched must not be taken for the worker's.
        let now = self.now();
        let auth = self.db.with(|s| {
            Ok(self.gate.authenticate(&super::GateInput {
                account: &self.key,
                sender: Some(sender.as_str()).filter(|s| !s.is_empty()),
                kind: super::GateKind::Aamp {
                    intent: match classified {
                        Classified::Aamp(parsed) => parsed.message.intent(),
                        _ => crate::wire::aamp::Intent::TaskResult,
                    },
                    dispatch_context: None,
                },
                inbound: &fetched.inbound,
                now,
                store: Some(s),
            }))
        })?;
        if let super::Verdict::Refuse { rule } = auth {
            self.refuse_quietly(&fetched, intent, &rule)?;
            return Ok(None);
        }
        let peer = self
            .db
            .with(|s| s.get_task(&self.key, &task_id, Role::Dispatcher))?
            .map(|t| t.peer)
            .unwrap_or_default();
        if sender.is_empty() || sender != peer.trim().to_ascii_lowercase() {
            self.refuse_late(&fetched, intent)?;
            return Ok(None);
        }
        let mut rule = match auth.rule() {
            "authentication-off" => "task-peer".to_owned(),
            evidence => format!("task-peer [{evidence}]"),
        };
        // Agent signatures: a peer whose grant pins a key (`taskmail pair request` records the
        // worker's, `grants allow --require-signature`, or a config grant) must sign its acks,
        // help requests and results like any other mail; the body half is checked after the
        // body fetch.
        let stored = self.db.with(|s| s.grants_for(&self.key, &sender))?;
        let admitting = stored
            .first()
            .map(|g| (g.require_signature, g.peer_key.as_deref()));
        let signature = match self
            .signatures
            .check(&fetched.inbound, &sender, admitting, now)
        {
            Ok(crate::trust::sign::Checked::Verified(verified)) => {
                rule = format!("{rule}; signature:{}", verified.key_id);
                Some(verified)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::info!(error = %error, "refused: agent signature on mail for our task");
                self.refuse_quietly(&fetched, intent, error.rule())?;
                return Ok(None);
            }
        };
        Ok(Some(Take {
            fetched,
            sender,
            what: What::ForDispatcher { task_id },
            rule,
            content: Default::default(),
            span: span.clone(),
            signature,
        }))
    }

    /// Routes an admitted mail for a task we dispatched (module docs, "Inbound").
    pub(crate) fn route_for_dispatcher(
        &self,
        take: &Take,
        task_id: &TaskId,
    ) -> Result<(), StoreError> {
        let fetched = &take.fetched;
        let now = self.now();
        let message_id = fetched.inbound.message_id.clone();
        let mut item = RecordedMessage {
            message_id: message_id.clone().unwrap_or_default(),
            direction: Direction::In.as_str().to_owned(),
            at: Some(now),
            from: take.sender.clone(),
            references: fetched.inbound.references.clone(),
            attachments: attachments_of(fetched),
            ..RecordedMessage::default()
        };
        let change = match classify(&fetched.inbound) {
            Classified::Aamp(parsed) => match parsed.message.payload {
                Payload::Ack => Change::Ack,
                Payload::HelpNeeded(help) => Change::Help(help),
                Payload::Result(result) => Change::Result(result),
                Payload::Cancel { reason } => Change::Cancel(reason),
                Payload::StreamOpened { .. } => Change::Note("task.stream.opened"),
                other => {
                    let verdict = format!("ignored:not-for-dispatcher:{}", other.intent());
                    return self.ignore(fetched, &verdict, None);
                }
            },
            Classified::Reply { text, .. } => Change::Reply(text.unwrap_or_default()),
            _ => return self.ignore(fetched, "ignored:not-for-dispatcher", None),
        };
        item.intent = change.intent().to_owned();
        match &change {
            Change::Help(help) => {
                item.question = some_text(&help.question);
                item.blocked_reason = some_text(&help.blocked_reason);
                item.options.clone_from(&help.suggested_options);
            }
            Change::Result(result) => {
                item.status = Some(result.status.as_str().to_owned());
                item.output = Some(cap(&result.output));
                item.error.clone_from(&result.error_msg);
                item.structured_result.clone_from(&result.structured_result);
            }
            Change::Cancel(reason) => item.text = some_text(reason),
            Change::Reply(text) => item.text = some_text(text),
            Change::Ack | Change::Note(_) => {}
        }
        let intent = item.intent.clone();
        let (changed, state) = self.db.atomically(|s| {
            let changed = match &change {
                Change::Ack => s.transition(
                    &self.key,
                    task_id,
                    Role::Dispatcher,
                    &[TaskState::Dispatched, TaskState::Answered],
                    TaskState::Acked,
                    now,
                )?,
                Change::Help(help) => {
                    s.record_help_needed(&self.key, task_id, Role::Dispatcher, &help.question, now)?
                }
                Change::Result(result) => {
                    let recorded =
                        s.record_result(&self.key, task_id, Role::Dispatcher, result, now)?;
                    if recorded
                        && result.status == Status::Rejected
                        && result.error_msg.as_deref().map(str::trim) == Some("expired")
                    {
                        // NOTE: the worker says the task expired before it could start.
                        s.transition(
                            &self.key,
                            task_id,
                            Role::Dispatcher,
                            &[TaskState::Rejected],
                            TaskState::Expired,
                            now,
                        )?;
                    }
                    recorded
                }
                Change::Cancel(_) => s.transition(
                    &self.key,
                    task_id,
                    Role::Dispatcher,
                    &OPEN,
                    TaskState::Cancelled,
                    now,
                )?,
                Change::Reply(_) | Change::Note(_) => false,
            };
            if let Some(id) = &message_id {
                s.index_message(
                    &self.key,
                    task_id,
                    Role::Dispatcher,
                    &ThreadEntry {
                        message_id: id.clone(),
                        intent: intent.clone(),
                        direction: Direction::In,
                        at: now,
                    },
                )?;
            }
            add_to_record(s, &self.key, task_id, item.clone(), now)?;
            let state = s
                .get_task(&self.key, task_id, Role::Dispatcher)?
                .map(|t| t.state);
            settle(
                s,
                &self.key,
                fetched,
                "admitted",
                Some(&take.rule),
                Some(format!("{intent} {task_id} (dispatcher)")),
                None,
                now,
            )?;
            Ok((changed, state))
        })?;
        let state = state.map_or("unknown", TaskState::as_str).to_owned();
        tracing::info!(task_id = %task_id, intent = %intent, changed, state = %state, "dispatched task update");
        self.events.emit(
            now,
            EventKind::Progress {
                task_id: task_id.clone(),
                message_id,
                intent,
                from: take.sender.clone(),
                state,
            },
        );
        Ok(())
    }
}

/// What a mail for the dispatcher changes.
enum Change {
    Ack,
    Help(HelpNeeded),
    Result(TaskResult),
    Cancel(String),
    Reply(String),
    /// Recorded, nothing changes.
    Note(&'static str),
}

impl Change {
    fn intent(&self) -> &'static str {
        match self {
            Change::Ack => "task.ack",
            Change::Help(_) => "task.help_needed",
            Change::Result(_) => "task.result",
            Change::Cancel(_) => "task.cancel",
            Change::Reply(_) => "reply",
            Change::Note(intent) => intent,
        }
    }
}

fn attachments_of(fetched: &Fetched) -> Vec<AttachmentMeta> {
    fetched
        .inbound
        .body
        .as_ref()
        .map(|body| {
            body.attachments
                .iter()
                .map(|a| AttachmentMeta {
                    name: a.name.clone().unwrap_or_default(),
                    content_type: a.content_type.clone(),
                    size: a.size,
                    blob_id: a.blob_id.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- waiting -------------------------------------------------------------------------------

/// How a dispatched task ended, for `taskmail dispatch --wait`'s exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A completed result (exit 0).
    Completed,
    /// A rejected result (exit 3).
    Rejected,
    /// Expired (exit 4).
    Expired,
    /// Cancelled (exit 4).
    Cancelled,
}

impl Outcome {
    /// The outcome of a terminal state.
    pub fn of(state: TaskState) -> Option<Outcome> {
        match state {
            TaskState::Completed => Some(Outcome::Completed),
            TaskState::Rejected => Some(Outcome::Rejected),
            TaskState::Expired => Some(Outcome::Expired),
            TaskState::Cancelled => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    /// The documented exit code: 0, 3 or 4.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed => 0,
            Outcome::Rejected => 3,
            Outcome::Expired | Outcome::Cancelled => 4,
        }
    }
}

/// Marks an open task `expired` when its Expires-At has passed (the waiter's own wait, module
/// docs). True when this call expired it.
pub fn expire_if_due(
    store: &Store,
    key: &str,
    task: &Task,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    match task.expires_at {
        Some(at) if at <= now && !task.state.is_terminal() => store.atomically(|s| {
            let expired = s.transition(
                key,
                &task.task_id,
                Role::Dispatcher,
                &OPEN,
                TaskState::Expired,
                now,
            )?;
            if expired {
                add_to_record(
                    s,
                    key,
                    &task.task_id,
                    outgoing(
                        "",
                        "expired",
                        "",
                        now,
                        Some(format!("Expires-At {at} passed")),
                    ),
                    now,
                )?;
            }
            Ok(expired)
        }),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests;
