//! What the daemon tells the outside world while it runs: one [`Event`] per step of a task
//! (received, acked, started, help, result, refused ...), for `taskmail run --json` (one JSON
//! object per line on stdout) and for tests that want to act at a precise moment (cancel while
//! a run is in progress, restart between dispatch and result).
//!
//! Events go out on a [`tokio::sync::broadcast`] channel the caller owns
//! ([`super::Deps::events`]): sending never blocks the daemon, and a receiver that falls
//! behind loses the oldest events (it gets `Lagged`) instead of slowing the worker down. The
//! mailbox and the store stay the record; events are a view.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::wire::aamp::TaskId;

/// One thing that happened, with its time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When it happened (the daemon's clock).
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialised with an `event` tag: `{"event": "received", "taskId": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The daemon is synchronised with the mailbox and takes mail from now on.
    #[serde(rename_all = "camelCase")]
    Ready {
        /// The account served (its config name).
        account: String,
        /// The address tasks arrive at.
        email: String,
        /// The JMAP Email state the daemon starts from.
        state: String,
        /// Tasks found in the store that were queued again (interrupted or waiting).
        recovered: usize,
    },
    /// A message passed the gate and was taken (task.dispatch, task.cancel, a human reply, a
    /// plain mail).
    #[serde(rename_all = "camelCase")]
    Received {
        task_id: TaskId,
        message_id: Option<String>,
        from: String,
        /// `task.dispatch`, `task.cancel`, `reply` or `plain`.
        intent: String,
    },
    /// A task.ack was queued for sending.
    #[serde(rename_all = "camelCase")]
    Acked { task_id: TaskId, message_id: String },
    /// A run of the agent started.
    #[serde(rename_all = "camelCase")]
    Started {
        task_id: TaskId,
        /// 1 for the first run of the task, more for a resumed or re-run task.
        attempt: u32,
    },
    /// A task.help_needed was queued: the task waits for an answer.
    #[serde(rename_all = "camelCase")]
    Help {
        task_id: TaskId,
        message_id: String,
        question: String,
    },
    /// A task.result was queued.
    #[serde(rename_all = "camelCase")]
    Result {
        task_id: TaskId,
        message_id: String,
        /// `completed` or `rejected`.
        status: String,
        /// The ErrorMsg of a rejected result (`expired`, `cancelled`, the agent's error).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A task was cancelled (a result may follow, per `worker.on-cancel`).
    #[serde(rename_all = "camelCase")]
    Cancelled { task_id: TaskId },
    /// The gate refused a message: no ack, nothing runs.
    #[serde(rename_all = "camelCase")]
    Refused {
        message_id: Option<String>,
        from: Option<String>,
        /// The intent, or `reply` / `plain`.
        intent: String,
        /// The rule that decided.
        rule: String,
    },
    /// A pair.request with a valid code made `peer` a grant; pair.respond completed is queued.
    #[serde(rename_all = "camelCase")]
    Paired {
        peer: String,
        message_id: Option<String>,
    },
    /// A message was read and left alone (not for the worker, invalid, a duplicate ...).
    #[serde(rename_all = "camelCase")]
    Ignored {
        message_id: Option<String>,
        /// The verdict, e.g. `ignored:invalid`.
        verdict: String,
    },
    /// The submission server accepted a message from the outbox.
    #[serde(rename_all = "camelCase")]
    Sent {
        message_id: String,
        intent: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        task_id: Option<TaskId>,
    },
    /// A message failed permanently and will not be sent (dead letter).
    #[serde(rename_all = "camelCase")]
    DeadLetter {
        message_id: String,
        intent: String,
        error: String,
    },
    /// A message about a task this account dispatched arrived and was recorded (the
    /// dispatcher side: an ack, a help request, a result, a cancel, a person's reply).
    #[serde(rename_all = "camelCase")]
    Progress {
        task_id: TaskId,
        message_id: Option<String>,
        /// `task.ack`, `task.help_needed`, `task.result`, `task.cancel` or `reply`.
        intent: String,
        from: String,
        /// The dispatcher task's state afterwards.
        state: String,
    },
    /// The daemon stopped.
    #[serde(rename_all = "camelCase")]
    Stopped {
        /// Runs that were still going when the shutdown grace ran out (they run again on the
        /// next start).
        interrupted: usize,
    },
}

impl EventKind {
    /// The `event` tag.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Ready { .. } => "ready",
            EventKind::Received { .. } => "received",
            EventKind::Acked { .. } => "acked",
            EventKind::Started { .. } => "started",
            EventKind::Help { .. } => "help",
            EventKind::Result { .. } => "result",
            EventKind::Cancelled { .. } => "cancelled",
            EventKind::Refused { .. } => "refused",
            EventKind::Paired { .. } => "paired",
            EventKind::Ignored { .. } => "ignored",
            EventKind::Sent { .. } => "sent",
            EventKind::DeadLetter { .. } => "dead_letter",
            EventKind::Progress { .. } => "progress",
            EventKind::Stopped { .. } => "stopped",
        }
    }

    /// The task this event is about, if any.
    pub fn task_id(&self) -> Option<&TaskId> {
        match self {
            EventKind::Received { task_id, .. }
            | EventKind::Acked { task_id, .. }
            | EventKind::Started { task_id, .. }
            | EventKind::Help { task_id, .. }
            | EventKind::Result { task_id, .. }
            | EventKind::Cancelled { task_id }
            | EventKind::Progress { task_id, .. } => Some(task_id),
            EventKind::Sent { task_id, .. } => task_id.as_ref(),
            _ => None,
        }
    }
}

impl Event {
    /// One line for people (what `taskmail run` prints without `--json`).
    pub fn human(&self) -> String {
        let at = self.at.format("%H:%M:%S%.3f");
        let text = match &self.kind {
            EventKind::Ready { account, email, .. } => {
                format!("ready: serving {email} (account {account})")
            }
            EventKind::Received {
                task_id,
                from,
                intent,
                ..
            } => format!("task {task_id}: {intent} from {from}"),
            EventKind::Acked { task_id, .. } => format!("task {task_id}: acked"),
            EventKind::Started { task_id, attempt } => {
                format!("task {task_id}: run {attempt} started")
            }
            EventKind::Help {
                task_id, question, ..
            } => format!("task {task_id}: help needed: {question}"),
            EventKind::Result {
                task_id,
                status,
                error,
                ..
            } => match error {
                Some(error) => format!("task {task_id}: {status} ({error})"),
                None => format!("task {task_id}: {status}"),
            },
            EventKind::Cancelled { task_id } => format!("task {task_id}: cancelled"),
            EventKind::Paired { peer, .. } => format!("paired with {peer}"),
            EventKind::Refused {
                message_id,
                from,
                intent,
                rule,
            } => format!(
                "refused {intent} {} from {} ({rule})",
                message_id.as_deref().unwrap_or("(no Message-ID)"),
                from.as_deref().unwrap_or("(no From)")
            ),
            EventKind::Ignored {
                message_id,
                verdict,
            } => format!(
                "{verdict}: {}",
                message_id.as_deref().unwrap_or("(no Message-ID)")
            ),
            EventKind::Sent {
                message_id, intent, ..
            } => format!("sent {intent} <{message_id}>"),
            EventKind::DeadLetter {
                message_id,
                intent,
                error,
            } => format!("cannot send {intent} <{message_id}>: {error}"),
            EventKind::Progress {
                task_id,
                intent,
                from,
                state,
                ..
            } => format!("dispatched task {task_id}: {intent} from {from} ({state})"),
            EventKind::Stopped { interrupted } => {
                format!("stopped ({interrupted} runs interrupted)")
            }
        };
        format!("{at} {text}")
    }
}

/// The sending side, cheap to clone; does nothing without a channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Events {
    sender: Option<broadcast::Sender<Event>>,
}

impl Events {
    pub(crate) fn new(sender: Option<broadcast::Sender<Event>>) -> Events {
        Events { sender }
    }

    /// Publishes `kind`; nobody listening is not an error.
    pub(crate) fn emit(&self, at: DateTime<Utc>, kind: EventKind) {
        tracing::debug!(event = kind.name(), task_id = ?kind.task_id(), "event");
        if let Some(sender) = &self.sender {
            let _ = sender.send(Event { at, kind });
        }
    }
}
