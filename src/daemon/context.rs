//! What the worker remembers about a task beyond its `tasks` row: the conversation (the
//! instructions, every turn since, the answer waiting for the next run), the message the next
//! reply answers, the attachments' blob ids and the JMAP ids of the task's mail.
//!
//! It is kept as JSON in the store's `kv` table under `worker-task/<account>/<task id>` and
//! written in the same transaction as the state change it goes with, so a restarted daemon
//! resumes a task with exactly the context the interrupted one had.
//!
//! NOTE: a `kv` row rather than a table of its own keeps this issue off the store's schema;
//! rows of tasks the store prunes are removed by `prune`. Texts are capped
//! (`MAX_TURN_BYTES`, `MAX_INSTRUCTIONS_BYTES`); the mail keeps the whole text.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, TASK_RETENTION, TaskFilter, TaskState};
use crate::trust::content::TrustLevel;
use crate::trust::scan::{Flag, MAX_FLAGS, Risk};
use crate::wire::aamp::TaskId;

/// Most bytes of the instructions kept.
pub(crate) const MAX_INSTRUCTIONS_BYTES: usize = 4 << 20;
/// Most bytes of one turn of the thread kept.
pub(crate) const MAX_TURN_BYTES: usize = 64 << 10;
/// Most turns kept (the oldest go first; the instructions always stay).
pub(crate) const MAX_TURNS: usize = 40;

/// Where the task came from, which decides how its replies look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Origin {
    /// A `task.dispatch`: AAMP replies (ack, help, result) with the SDKs' templates.
    #[default]
    Aamp,
    /// A plain mail (`worker.plain-mail`): readable `Re:` replies that still carry the
    /// `X-AAMP-*` headers; no ack.
    Plain,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Turn {
    /// Who wrote it.
    pub(crate) from: String,
    /// `task.dispatch`, `task.help_needed`, `task.result`, `reply` ...
    pub(crate) intent: String,
    /// Its text (capped).
    pub(crate) text: String,
}

impl Turn {
    pub(crate) fn new(from: &str, intent: &str, text: &str) -> Turn {
        Turn {
            from: from.to_owned(),
            intent: intent.to_owned(),
            text: capped(text, MAX_TURN_BYTES),
        }
    }
}

/// The message the next outbound mail answers: In-Reply-To is its id, References its chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReplyTarget {
    /// Without angle brackets; empty when the message had none.
    pub(crate) message_id: String,
    /// Its References, oldest first.
    pub(crate) references: Vec<String>,
}

/// An attachment of the task's mail, downloaded when a run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlobRef {
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) blob_id: String,
    pub(crate) size: usize,
}

/// What the trust checks said about a task's mail (`protocol/trust.md` point 5): handed to the
/// agent with every run (prompt, `task.json`, environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContentTrust {
    /// `verified` only when every mail of the task was authenticated and granted.
    pub(crate) level: TrustLevel,
    /// The highest risk the scan gave any mail of the task.
    pub(crate) risk: Risk,
    /// The scan's flags over the task's mail (capped).
    pub(crate) flags: Vec<Flag>,
    /// The Message-ID of the mail (for the wrapper's `message-id` attribute).
    pub(crate) message_id: Option<String>,
}

impl ContentTrust {
    /// Adds a later mail of the same task: the lower trust, the higher risk, all flags.
    pub(crate) fn merge(&mut self, later: &ContentTrust) {
        self.level = self.level.min(later.level);
        self.risk = self.risk.max(later.risk);
        for flag in &later.flags {
            if self.flags.len() >= 2 * MAX_FLAGS {
                break;
            }
            if !self.flags.contains(flag) {
                self.flags.push(flag.clone());
            }
        }
    }
}

/// The conversation of one worker task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskContext {
    pub(crate) origin: Origin,
    pub(crate) title: String,
    /// The first mail's Subject (plain-mail replies say `Re:` to it).
    pub(crate) subject: String,
    pub(crate) instructions: String,
    pub(crate) session_key: Option<String>,
    pub(crate) dispatch_context: BTreeMap<String, String>,
    /// Earlier turns, oldest first (not the instructions, not the pending answer).
    pub(crate) turns: Vec<Turn>,
    /// The answer or follow-up instruction for the next run.
    pub(crate) answer: Option<Turn>,
    /// What the next reply answers.
    pub(crate) reply_to: ReplyTarget,
    pub(crate) attachments: Vec<BlobRef>,
    /// JMAP ids of the task's inbound mail (to mark `$taskmail-done`).
    pub(crate) emails: Vec<String>,
    /// Runs cut short by a crash or a shutdown since the last finished run.
    pub(crate) interruptions: u32,
    /// Trust level and scan flags of the task's mail.
    #[serde(default)]
    pub(crate) trust: ContentTrust,
}

impl TaskContext {
    /// Sets the answer for the next run; a second answer before the run is appended.
    pub(crate) fn add_answer(&mut self, turn: Turn) {
        match &mut self.answer {
            Some(existing) => {
                existing.text = capped(
                    &format!("{}\n\n{}", existing.text, turn.text),
                    MAX_TURN_BYTES,
                );
            }
            None => self.answer = Some(turn),
        }
    }

    /// After a run finished: the answer it used becomes a turn, then what we sent.
    pub(crate) fn close_run(&mut self, sent: Turn) {
        if let Some(answer) = self.answer.take() {
            self.turns.push(answer);
        }
        self.turns.push(sent);
        if self.turns.len() > MAX_TURNS {
            let extra = self.turns.len() - MAX_TURNS;
            self.turns.drain(..extra);
        }
        self.interruptions = 0;
    }

    pub(crate) fn add_email(&mut self, id: &str) {
        if !self.emails.iter().any(|e| e == id) {
            self.emails.push(id.to_owned());
        }
    }

    pub(crate) fn add_attachments(&mut self, blobs: Vec<BlobRef>) {
        for blob in blobs {
            if !self.attachments.iter().any(|a| a.blob_id == blob.blob_id) {
                self.attachments.push(blob);
            }
        }
    }
}

fn key(account: &str, task_id: &TaskId) -> String {
    format!("worker-task/{account}/{task_id}")
}

/// The context of a task; an empty one when none was saved (a task from before this version).
pub(crate) fn load(
    store: &Store,
    account: &str,
    task_id: &TaskId,
) -> Result<TaskContext, StoreError> {
    Ok(store
        .kv_get(&key(account, task_id))?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}

/// Saves the context of a task.
pub(crate) fn save(
    store: &Store,
    account: &str,
    task_id: &TaskId,
    context: &TaskContext,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(context).map_err(|source| StoreError::Encode {
        action: "encode a task's context",
        source,
    })?;
    store.kv_set(&key(account, task_id), &text, now)
}

/// Removes the contexts of terminal tasks the store is about to prune (same age rule).
pub(crate) fn prune(store: &Store, account: &str, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let old = store.list_tasks(&TaskFilter {
        account: Some(account.to_owned()),
        role: Some(crate::store::Role::Worker),
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
        if store.kv_delete(&key(account, &task.task_id))? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn capped(text: &str, max: usize) -> String {
    if text.len() <= max {
        text.to_owned()
    } else {
        text[..text.floor_char_boundary(max)].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_accumulate_and_close_into_turns() {
        let mut ctx = TaskContext::default();
        ctx.add_answer(Turn::new("a@x", "reply", "one"));
        ctx.add_answer(Turn::new("a@x", "reply", "two"));
        assert_eq!(ctx.answer.as_ref().unwrap().text, "one\n\ntwo");
        ctx.interruptions = 2;
        ctx.close_run(Turn::new("w@x", "task.result", "done"));
        assert!(ctx.answer.is_none());
        assert_eq!(ctx.turns.len(), 2);
        assert_eq!(ctx.interruptions, 0);
        for i in 0..(MAX_TURNS + 5) {
            ctx.close_run(Turn::new("w@x", "task.result", &i.to_string()));
        }
        assert_eq!(ctx.turns.len(), MAX_TURNS);
        assert_eq!(capped("héllo", 2), "h");
    }

    #[test]
    fn contexts_round_trip_through_the_store() {
        let store = Store::open_in_memory().unwrap();
        let id = TaskId::new("t1");
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(load(&store, "w", &id).unwrap(), TaskContext::default());
        let mut ctx = TaskContext {
            title: "T".into(),
            ..TaskContext::default()
        };
        ctx.add_email("e1");
        ctx.add_email("e1");
        save(&store, "w", &id, &ctx, now).unwrap();
        assert_eq!(load(&store, "w", &id).unwrap(), ctx);
        assert_eq!(ctx.emails, ["e1"]);
    }
}
