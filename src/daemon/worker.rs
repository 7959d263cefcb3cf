//! Worker routing and runs (design.md "Worker runner", `protocol/aamp.md` "Lifecycle" and
//! "Human replies").
//!
//! # Routing an admitted mail
//!
//! | mail | task | what happens |
//! |---|---|---|
//! | `task.dispatch`, new TaskId | none | stored (`received`), `task.ack` queued (`acked`), then `expired` with one `rejected` result (`ErrorMsg: expired`) if Expires-At passed, else `queued` |
//! | `task.dispatch`, known TaskId | any but `running` | ack; the instructions become the answer (a help request) or a follow-up instruction (a finished task); the task runs again with the thread so far |
//! | `task.dispatch` with `X-AAMP-ParentTaskId` or Dispatch-Context `source_kind=help_reply; reply_to_task_id=ID` | parent in `help_needed` | the answer to the parent's help request (convention (b)); the parent resumes, no new task |
//! | `task.dispatch`, known TaskId | `running` | ignored (audited): a task runs one thing at a time |
//! | `task.cancel` | queued / waiting | `cancelled`; per `worker.on-cancel` one `rejected` result (`ErrorMsg: cancelled`) or nothing |
//! | `task.cancel` | running | the run gets TERM, KILL after `worker.cancel-grace`; the run's end reports it as above |
//! | a person's reply (In-Reply-To/References in a task's thread) | `help_needed` | its text (quotes and signature stripped) answers the help request; the task resumes |
//! | a person's reply | finished | a follow-up instruction: the task runs again (same TaskId), the new result goes in the same thread |
//! | plain mail (no AAMP, no known thread), `worker.plain-mail = true` | none | a task with a TaskId derived from the Message-ID ([`plain_task_id`]), no ack; replies are readable `Re:` mails that still carry the `X-AAMP-*` headers |
//!
//! Every state change and the message reporting it are one store transaction (see
//! [`super::outbound`]).
//!
//! # Runs
//!
//! `schedule` takes tasks from the [`RunQueue`](super::queue::RunQueue) (urgent > high >
//! normal, FIFO within, `worker.concurrency` at once) and spawns one run each: the store's
//! `queued -> running` compare-and-set, the attachments downloaded, the agent run, and the
//! outcome recorded with its message (`task.result` completed/rejected with the structured
//! result and the outbox files attached, or `task.help_needed`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::context::{self, BlobRef, Origin, ReplyTarget, TaskContext, Turn};
use super::events::EventKind;
use super::inbound::{SyncError, Take, What, settle};
use super::outbound::{self, Reply, Style, content_type_for};
use super::queue::{Cancelled, Next, QueuedTask, Started};
use super::runner::{CancelSignal, RunOutcome, RunRequest, ThreadTurn};
use super::{Core, DaemonError, Execute};
use crate::config::OnCancel;
use crate::store::{
    Direction, NewTask, Role, Store, StoreError, Task, TaskFilter, TaskOrder, TaskState,
    ThreadEntry,
};
use crate::transport::{Fetched, MailStore, Submit};
use crate::wire::aamp::{Dispatch, HelpNeeded, Payload, Priority, Status, TaskId, TaskResult};
use crate::wire::message::Attachment;
use crate::wire::{Classified, classify, reply};

/// Interruptions (crash or shutdown during a run) in a row after which a task is given up
/// with a `rejected` result (module docs of [`super`], "The restart rule").
pub const MAX_INTERRUPTIONS: u32 = 2;

/// How often the queue is checked for tasks that expired while every slot was busy.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Tries per attachment download.
const DOWNLOAD_TRIES: u32 = 3;

/// The TaskId of a task started by a plain mail: a UUID (version 5 layout) from the SHA-256 of
/// the Message-ID, so a redelivered copy maps to the same task.
pub fn plain_task_id(message_id: &str) -> TaskId {
    let digest = Sha256::digest(format!("taskmail plain-mail {}", message_id.trim()).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    TaskId::new(uuid::Uuid::from_bytes(bytes).to_string())
}

/// What a routing step committed, to report once the transaction is done.
#[derive(Debug, Default)]
struct Committed {
    events: Vec<EventKind>,
    /// Push this task on the run queue.
    queue: Option<(TaskId, Priority, Option<DateTime<Utc>>)>,
    /// Mark these mails `$taskmail-done` (after the task's result is sent, when it has one).
    done: Vec<String>,
    /// The task of `done`.
    task: Option<TaskId>,
    /// Something went into the outbox.
    sent: bool,
}

/// The outcome of a task given up or rejected without a run.
fn rejected(error: &str) -> Payload {
    Payload::Result(TaskResult {
        status: Status::Rejected,
        output: String::new(),
        error_msg: Some(error.to_owned()),
        structured_result: None,
    })
}

/// The help-reply parent of a dispatch by convention (b), if it names one.
fn help_reply_parent(dispatch: &Dispatch) -> Option<TaskId> {
    let context = &dispatch.dispatch_context.0;
    if context.get("source_kind").map(String::as_str) == Some("help_reply")
        && let Some(id) = context.get("reply_to_task_id").filter(|v| !v.is_empty())
    {
        return Some(TaskId::new(id));
    }
    dispatch.parent_task_id.clone()
}

fn blob_refs(fetched: &Fetched) -> Vec<BlobRef> {
    fetched
        .inbound
        .body
        .as_ref()
        .map(|body| {
            body.attachments
                .iter()
                .filter_map(|a| {
                    Some(BlobRef {
                        name: a.name.clone().unwrap_or_default(),
                        content_type: a.content_type.clone(),
                        blob_id: a.blob_id.clone()?,
                        size: a.size,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn target_of(fetched: &Fetched) -> ReplyTarget {
    ReplyTarget {
        message_id: fetched.inbound.message_id.clone().unwrap_or_default(),
        references: fetched.inbound.references.clone(),
    }
}

fn index_in(
    store: &Store,
    key: &str,
    task_id: &TaskId,
    fetched: &Fetched,
    intent: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if let Some(id) = &fetched.inbound.message_id {
        store.index_message(
            key,
            task_id,
            Role::Worker,
            &ThreadEntry {
                message_id: id.clone(),
                intent: intent.to_owned(),
                direction: Direction::In,
                at: now,
            },
        )?;
    }
    Ok(())
}

/// Everything a new task starts with.
struct Admission {
    task_id: TaskId,
    origin: Origin,
    intent: &'static str,
    title: String,
    subject: String,
    instructions: String,
    priority: Priority,
    expires_at: Option<DateTime<Utc>>,
    session_key: Option<String>,
    dispatch_context: BTreeMap<String, String>,
}

/// What a resume brings.
struct Resumption<'a> {
    task_id: TaskId,
    answer: Turn,
    /// The follow-up dispatch, when it is one (acked, refreshes title and priority).
    dispatch: Option<&'a Dispatch>,
    intent: &'static str,
}

impl<M, S, A> Core<M, S, A>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    /// The JMAP state to start from: the saved one, or (first start) the current one.
    pub(crate) async fn start_state(&self) -> Result<String, DaemonError> {
        if let Some(state) = self.db.with(|s| s.jmap_state(&self.cursor))? {
            return Ok(state);
        }
        let state = self.mail.state().await?;
        let now = self.now();
        self.db.atomically(|s| {
            s.set_jmap_state(&self.cursor, &state, now)?;
            s.kv_set(
                &format!("inbound-synced-at/{}", self.cursor),
                &now.to_rfc3339(),
                now,
            )
        })?;
        tracing::info!(state = %state, "first start on this mailbox: mail from now on is taken");
        Ok(state)
    }

    /// Applies the restart rule (module docs of [`super`]) and queues what waits. Returns how
    /// many tasks were queued again or given up.
    pub(crate) fn recover(&self) -> Result<usize, StoreError> {
        let open = self.db.with(|s| {
            s.list_tasks(&TaskFilter {
                account: Some(self.key.clone()),
                role: Some(Role::Worker),
                states: vec![
                    TaskState::Received,
                    TaskState::Acked,
                    TaskState::Queued,
                    TaskState::Running,
                ],
                order: TaskOrder::Queue,
                ..TaskFilter::default()
            })
        })?;
        let count = open.len();
        for task in open {
            let now = self.now();
            let committed = self.db.atomically(|s| {
                let mut done = Committed::default();
                if task.state != TaskState::Running {
                    s.transition(
                        &self.key,
                        &task.task_id,
                        Role::Worker,
                        &[TaskState::Received, TaskState::Acked],
                        TaskState::Queued,
                        now,
                    )?;
                    done.queue = Some(self.queue_entry(&task, s)?);
                    return Ok(done);
                }
                let mut ctx = context::load(s, &self.key, &task.task_id)?;
                ctx.interruptions += 1;
                if ctx.interruptions > MAX_INTERRUPTIONS {
                    tracing::warn!(task_id = %task.task_id, interruptions = ctx.interruptions, "a run was interrupted too often; giving the task up");
                    let error = "interrupted";
                    let result = TaskResult {
                        status: Status::Rejected,
                        output: String::new(),
                        error_msg: Some(error.to_owned()),
                        structured_result: None,
                    };
                    if s.record_result(&self.key, &task.task_id, Role::Worker, &result, now)? {
                        let message_id = self.reply(s, &task, &mut ctx, rejected(error), Vec::new(), now)?;
                        ctx.close_run(Turn::new(&self.account.email, "task.result", error));
                        done.events.push(EventKind::Result {
                            task_id: task.task_id.clone(),
                            message_id,
                            status: "rejected".to_owned(),
                            error: Some(error.to_owned()),
                        });
                        done.done = ctx.emails.clone();
                        done.task = Some(task.task_id.clone());
                        done.sent = true;
                    }
                } else {
                    tracing::warn!(task_id = %task.task_id, attempt = task.attempts, "a run was interrupted (crash or shutdown) before its outcome was recorded; running it again");
                    s.transition(
                        &self.key,
                        &task.task_id,
                        Role::Worker,
                        &[TaskState::Running],
                        TaskState::Queued,
                        now,
                    )?;
                    done.queue = Some(self.queue_entry(&task, s)?);
                }
                context::save(s, &self.key, &task.task_id, &ctx, now)?;
                Ok(done)
            })?;
            self.report(committed);
        }
        Ok(count)
    }

    /// Priority and expiry for queueing a stored task: the Expires-At counts only for a task
    /// that never started.
    fn queue_entry(
        &self,
        task: &Task,
        s: &Store,
    ) -> Result<(TaskId, Priority, Option<DateTime<Utc>>), StoreError> {
        let ctx = context::load(s, &self.key, &task.task_id)?;
        let fresh = task.attempts == 0 && ctx.answer.is_none();
        Ok((
            task.task_id.clone(),
            task.priority,
            task.expires_at.filter(|_| fresh),
        ))
    }

    /// Queues, emits and kicks what a committed step asks for (no store access).
    fn report(&self, committed: Committed) {
        let now = self.now();
        if committed.sent {
            self.outbox_kick.notify_one();
        }
        for event in committed.events {
            self.events.emit(now, event);
        }
        if let Some((task_id, priority, expires_at)) = committed.queue {
            self.push(task_id, priority, expires_at);
        }
    }

    fn push(&self, task_id: TaskId, priority: Priority, expires_at: Option<DateTime<Utc>>) {
        match self.queue.push(task_id.clone(), priority, expires_at, ()) {
            Ok(()) => tracing::debug!(task_id = %task_id, "queued"),
            // NOTE: already queued (it runs with the newest context) or running (the run looks
            // at the store's state again when it ends).
            Err(super::queue::QueueError::Duplicate { .. }) => {}
            Err(error) => tracing::info!(task_id = %task_id, error = %error, "not queued"),
        }
    }

    /// Renders a reply to the task's peer, in its thread, and puts it in the outbox (inside
    /// the caller's transaction). Returns the Message-ID.
    fn reply(
        &self,
        s: &Store,
        task: &Task,
        ctx: &mut TaskContext,
        payload: Payload,
        attachments: Vec<Attachment>,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let thread = outbound::thread_ids(s, &self.key, &task.task_id, Role::Worker)?;
        let rendered = outbound::render(
            Reply {
                account: &self.account,
                to: &task.peer,
                task_id: &task.task_id,
                payload,
                answering: &ctx.reply_to,
                thread: &thread,
                style: Style::of(ctx),
                attachments,
                signer: self.signer.as_ref(),
            },
            now,
        );
        outbound::enqueue(
            s,
            &self.account,
            &self.key,
            &rendered,
            Some(Role::Worker),
            now,
        )?;
        Ok(rendered.message_id)
    }

    /// Step 7 of the inbound pipeline: one admitted mail, with its body.
    /// The end of a task's mail: `$taskmail-done` now, or, when its result still waits in
    /// the outbox, once the outbox sent it (README "Many workers, one mailbox": the result
    /// mark first, then the submission, then done).
    async fn mark_settled(&self, task: Option<&TaskId>, emails: &[String]) {
        let waiting = task.is_some_and(|task| {
            self.db
                .with(|s| s.outbox_result_pending(&self.key, task.as_str()))
                .unwrap_or(false)
        });
        if !waiting {
            self.mark_done(emails).await;
            return;
        }
        // NOTE: the result mark at once (the outbox checks it again before it submits): a
        // crash from here on never makes another daemon run the task again.
        let wants: Vec<(String, &'static str)> = emails
            .iter()
            .filter(|id| self.holds(id))
            .map(|id| (id.clone(), super::lease::RESULT))
            .collect();
        if !wants.is_empty()
            && let Err(error) = self.guard(&wants).await
        {
            tracing::debug!(error = %crate::transport::smtp::error_chain(&error), "cannot set the result mark yet; the outbox will");
        }
    }

    pub(crate) async fn route(&self, take: Take) -> Result<(), SyncError> {
        // NOTE: screening ran for the whole batch before any of it was routed: a second copy
        // of the same mail in the same batch is caught here.
        if let Some(message_id) = &take.fetched.inbound.message_id
            && self.db.with(|s| s.seen_message_id(&self.key, message_id))?
        {
            self.ignore(&take.fetched, "ignored:duplicate", None)?;
            return Ok(());
        }
        if let What::ForDispatcher { task_id } = &take.what {
            let task_id = task_id.clone();
            return Ok(self.route_for_dispatcher(&take, &task_id)?);
        }
        let classified = classify(&take.fetched.inbound);
        let committed = match (&take.what, classified) {
            (What::Dispatch, Classified::Aamp(parsed)) => match parsed.message.payload {
                Payload::Dispatch(dispatch) => {
                    self.route_dispatch(&take, parsed.message.task_id, &dispatch)?
                }
                _ => None,
            },
            (What::Cancel { task_id }, Classified::Aamp(_)) => self.route_cancel(&take, task_id)?,
            (What::Reply { task_id }, Classified::Reply { text, .. }) => {
                let text = text.unwrap_or_default();
                if text.trim().is_empty() {
                    self.ignore(&take.fetched, "ignored:empty-reply", None)?;
                    return Ok(());
                }
                self.resume(
                    &take,
                    Resumption {
                        task_id: task_id.clone(),
                        answer: Turn::new(&take.sender, "reply", &text),
                        dispatch: None,
                        intent: "reply",
                    },
                )?
            }
            (What::Plain, Classified::Plain | Classified::Reply { .. }) => {
                self.route_plain(&take)?
            }
            _ => None,
        };
        if let Some(committed) = committed {
            let done = committed.done.clone();
            let task = committed.task.clone();
            self.report(committed);
            if !done.is_empty() {
                self.mark_settled(task.as_ref(), &done).await;
            }
        }
        Ok(())
    }

    fn route_dispatch(
        &self,
        take: &Take,
        task_id: TaskId,
        dispatch: &Dispatch,
    ) -> Result<Option<Committed>, StoreError> {
        if let Some(parent) = help_reply_parent(dispatch) {
            let parent_task = self
                .db
                .with(|s| s.get_task(&self.key, &parent, Role::Worker))?;
            if let Some(parent_task) = parent_task.filter(|t| {
                t.state == TaskState::HelpNeeded && t.peer == take.sender && t.task_id != task_id
            }) {
                tracing::info!(parent = %parent_task.task_id, "a dispatch answering a help request (ParentTaskId / help_reply)");
                return self.resume(
                    take,
                    Resumption {
                        task_id: parent_task.task_id,
                        answer: Turn::new(&take.sender, "task.dispatch", &dispatch.instructions),
                        dispatch: None,
                        intent: "task.dispatch",
                    },
                );
            }
        }
        let existing = self
            .db
            .with(|s| s.get_task(&self.key, &task_id, Role::Worker))?;
        if existing.is_some() {
            return self.resume(
                take,
                Resumption {
                    task_id,
                    answer: Turn::new(&take.sender, "task.dispatch", &dispatch.instructions),
                    dispatch: Some(dispatch),
                    intent: "task.dispatch",
                },
            );
        }
        self.admit(
            take,
            Admission {
                task_id,
                origin: Origin::Aamp,
                intent: "task.dispatch",
                title: dispatch.title.clone(),
                subject: take.fetched.inbound.subject.clone().unwrap_or_default(),
                instructions: dispatch.instructions.clone(),
                priority: dispatch.priority,
                expires_at: dispatch.expires_at,
                session_key: dispatch.session_key.clone(),
                dispatch_context: dispatch.dispatch_context.0.clone(),
            },
        )
    }

    fn route_plain(&self, take: &Take) -> Result<Option<Committed>, StoreError> {
        let inbound = &take.fetched.inbound;
        let seed = inbound
            .message_id
            .clone()
            .unwrap_or_else(|| format!("jmap:{}:{}", self.key, take.fetched.id));
        let task_id = plain_task_id(&seed);
        let exists = self
            .db
            .with(|s| s.get_task(&self.key, &task_id, Role::Worker))?
            .is_some();
        if exists {
            self.ignore(&take.fetched, "ignored:duplicate", None)?;
            return Ok(None);
        }
        let body = inbound.body.as_ref();
        let text = body.and_then(|b| b.text.as_deref());
        let html = body.and_then(|b| b.html.as_deref());
        let mut instructions = reply::human_reply(text, html);
        if instructions.trim().is_empty() {
            instructions = text
                .map(str::to_owned)
                .or_else(|| html.map(reply::html_to_text))
                .unwrap_or_default();
        }
        let subject = inbound.subject.clone().unwrap_or_default();
        tracing::Span::current().record("task_id", task_id.as_str());
        self.admit(
            take,
            Admission {
                task_id,
                origin: Origin::Plain,
                intent: "plain",
                title: subject.clone(),
                subject,
                instructions,
                priority: Priority::Normal,
                expires_at: None,
                session_key: None,
                dispatch_context: BTreeMap::new(),
            },
        )
    }

    /// A new task: stored, acked (AAMP), then expired or queued; one transaction.
    fn admit(&self, take: &Take, admission: Admission) -> Result<Option<Committed>, StoreError> {
        let now = self.now();
        let fetched = &take.fetched;
        let message_id = fetched.inbound.message_id.clone();
        let task_id = admission.task_id.clone();
        let committed = self.db.atomically(|s| {
            let mut done = Committed::default();
            let mut new = NewTask::new(
                &self.key,
                task_id.clone(),
                Role::Worker,
                TaskState::Received,
                &take.sender,
            );
            new.title = admission.title.clone();
            new.priority = admission.priority;
            new.expires_at = admission.expires_at;
            new.session_key = admission.session_key.clone();
            new.dispatch_message_id = message_id.clone();
            new.last_message_id = message_id.clone();
            s.upsert_task(&new, now)?;
            index_in(s, &self.key, &task_id, fetched, admission.intent, now)?;
            let mut ctx = TaskContext {
                origin: admission.origin,
                title: admission.title.clone(),
                subject: admission.subject.clone(),
                instructions: context::capped(
                    &admission.instructions,
                    context::MAX_INSTRUCTIONS_BYTES,
                ),
                session_key: admission.session_key.clone(),
                dispatch_context: admission.dispatch_context.clone(),
                reply_to: target_of(fetched),
                ..TaskContext::default()
            };
            ctx.add_email(&fetched.id);
            ctx.add_attachments(blob_refs(fetched));
            ctx.trust = take.content.clone();
            let task = s
                .get_task(&self.key, &task_id, Role::Worker)?
                .ok_or_else(|| no_task(&self.key, &task_id))?;
            done.events.push(EventKind::Received {
                task_id: task_id.clone(),
                message_id: message_id.clone(),
                from: take.sender.clone(),
                intent: admission.intent.to_owned(),
            });
            if admission.origin == Origin::Aamp {
                s.transition(
                    &self.key,
                    &task_id,
                    Role::Worker,
                    &[TaskState::Received],
                    TaskState::Acked,
                    now,
                )?;
                let ack = self.reply(s, &task, &mut ctx, Payload::Ack, Vec::new(), now)?;
                done.events.push(EventKind::Acked {
                    task_id: task_id.clone(),
                    message_id: ack,
                });
                done.sent = true;
            }
            let expired = admission.expires_at.is_some_and(|at| at <= now);
            if expired {
                s.transition(
                    &self.key,
                    &task_id,
                    Role::Worker,
                    &[TaskState::Received, TaskState::Acked],
                    TaskState::Expired,
                    now,
                )?;
                let message_id =
                    self.reply(s, &task, &mut ctx, rejected("expired"), Vec::new(), now)?;
                ctx.close_run(Turn::new(&self.account.email, "task.result", "expired"));
                tracing::info!("expired before it could start: rejected, never run");
                done.events.push(EventKind::Result {
                    task_id: task_id.clone(),
                    message_id,
                    status: "rejected".to_owned(),
                    error: Some("expired".to_owned()),
                });
                done.done = ctx.emails.clone();
                done.task = Some(task_id.clone());
                done.sent = true;
            } else {
                s.transition(
                    &self.key,
                    &task_id,
                    Role::Worker,
                    &[TaskState::Received, TaskState::Acked],
                    TaskState::Queued,
                    now,
                )?;
                done.queue = Some((task_id.clone(), admission.priority, admission.expires_at));
            }
            context::save(s, &self.key, &task_id, &ctx, now)?;
            // NOTE: an admitted peer's expired dispatch keeps its one rejected result, but the
            // audit says `expired` (trust.md point 4).
            settle(
                s,
                &self.key,
                fetched,
                if expired { "expired" } else { "admitted" },
                Some(&take.rule),
                Some(format!("{} {task_id}", admission.intent)),
                admission.expires_at,
                now,
            )?;
            Ok(done)
        })?;
        tracing::info!(task_id = %task_id, from = %take.sender, "task received");
        Ok(Some(committed))
    }

    /// An answer or a follow-up for a task we have: it runs again with the thread so far.
    fn resume(
        &self,
        take: &Take,
        resumption: Resumption<'_>,
    ) -> Result<Option<Committed>, StoreError> {
        let now = self.now();
        let fetched = &take.fetched;
        let task_id = resumption.task_id.clone();
        let outcome = self.db.atomically(|s| {
            let Some(task) = s.get_task(&self.key, &task_id, Role::Worker)? else {
                return Ok(Err("ignored:unknown-task"));
            };
            if task.peer != take.sender {
                return Ok(Err("refused"));
            }
            if task.state == TaskState::Running {
                return Ok(Err("ignored:task-running"));
            }
            let mut done = Committed::default();
            if let Some(dispatch) = resumption.dispatch {
                let mut refresh = NewTask::new(
                    &self.key,
                    task_id.clone(),
                    Role::Worker,
                    task.state,
                    &task.peer,
                );
                refresh.title = if dispatch.title.trim().is_empty() {
                    task.title.clone()
                } else {
                    dispatch.title.clone()
                };
                refresh.priority = dispatch.priority;
                refresh.expires_at = dispatch.expires_at.or(task.expires_at);
                refresh.session_key = dispatch.session_key.clone();
                refresh.dispatch_message_id = fetched.inbound.message_id.clone();
                s.upsert_task(&refresh, now)?;
            }
            index_in(s, &self.key, &task_id, fetched, resumption.intent, now)?;
            let mut ctx = context::load(s, &self.key, &task_id)?;
            ctx.add_answer(resumption.answer.clone());
            ctx.reply_to = target_of(fetched);
            ctx.add_email(&fetched.id);
            ctx.add_attachments(blob_refs(fetched));
            ctx.trust.merge(&take.content);
            done.events.push(EventKind::Received {
                task_id: task_id.clone(),
                message_id: fetched.inbound.message_id.clone(),
                from: take.sender.clone(),
                intent: resumption.intent.to_owned(),
            });
            let task = s
                .get_task(&self.key, &task_id, Role::Worker)?
                .ok_or_else(|| no_task(&self.key, &task_id))?;
            if resumption.dispatch.is_some() && ctx.origin == Origin::Aamp {
                let ack = self.reply(s, &task, &mut ctx, Payload::Ack, Vec::new(), now)?;
                done.events.push(EventKind::Acked {
                    task_id: task_id.clone(),
                    message_id: ack,
                });
                done.sent = true;
            }
            s.transition(
                &self.key,
                &task_id,
                Role::Worker,
                &[
                    TaskState::Received,
                    TaskState::Acked,
                    TaskState::Queued,
                    TaskState::HelpNeeded,
                    TaskState::Completed,
                    TaskState::Rejected,
                    TaskState::Cancelled,
                    TaskState::Expired,
                ],
                TaskState::Queued,
                now,
            )?;
            let expires_at = resumption.dispatch.and_then(|d| d.expires_at);
            done.queue = Some((task_id.clone(), task.priority, expires_at));
            context::save(s, &self.key, &task_id, &ctx, now)?;
            settle(
                s,
                &self.key,
                fetched,
                "admitted",
                Some(&take.rule),
                Some(format!("{} {task_id} ({})", resumption.intent, task.state)),
                expires_at,
                now,
            )?;
            Ok(Ok(done))
        })?;
        match outcome {
            Ok(committed) => {
                tracing::info!(task_id = %task_id, intent = resumption.intent, "the task resumes with an answer or a follow-up");
                Ok(Some(committed))
            }
            Err("refused") => {
                self.refuse_late(fetched, resumption.intent)?;
                Ok(None)
            }
            Err(verdict) => {
                tracing::info!(task_id = %task_id, verdict, "follow-up not taken");
                self.ignore(fetched, verdict, None)?;
                Ok(None)
            }
        }
    }

    fn route_cancel(&self, take: &Take, task_id: &TaskId) -> Result<Option<Committed>, StoreError> {
        let now = self.now();
        let fetched = &take.fetched;
        match self
            .db
            .with(|s| s.get_task(&self.key, task_id, Role::Worker))?
        {
            None => {
                self.ignore(fetched, "ignored:unknown-task", None)?;
                return Ok(None);
            }
            Some(task) if task.peer != take.sender => {
                self.refuse_late(fetched, "task.cancel")?;
                return Ok(None);
            }
            Some(_) => {}
        }
        let in_queue = self.queue.cancel(task_id);
        let running = matches!(in_queue, Cancelled::Running);
        let from: &[TaskState] = match in_queue {
            // NOTE: the run ends with a Cancelled outcome and reports it.
            Cancelled::Running => &[],
            Cancelled::Queued(_) => &[
                TaskState::Received,
                TaskState::Acked,
                TaskState::Queued,
                TaskState::HelpNeeded,
            ],
            // NOTE: `running` in the store but not in this process: a stale row.
            Cancelled::Unknown => &[
                TaskState::Received,
                TaskState::Acked,
                TaskState::Queued,
                TaskState::HelpNeeded,
                TaskState::Running,
            ],
        };
        let committed = self.db.atomically(|s| {
            let mut done = Committed::default();
            index_in(s, &self.key, task_id, fetched, "task.cancel", now)?;
            let mut ctx = context::load(s, &self.key, task_id)?;
            ctx.add_email(&fetched.id);
            done.events.push(EventKind::Received {
                task_id: task_id.clone(),
                message_id: fetched.inbound.message_id.clone(),
                from: take.sender.clone(),
                intent: "task.cancel".to_owned(),
            });
            if !from.is_empty()
                && s.transition(
                    &self.key,
                    task_id,
                    Role::Worker,
                    from,
                    TaskState::Cancelled,
                    now,
                )?
            {
                done.events.push(EventKind::Cancelled {
                    task_id: task_id.clone(),
                });
                if self.settings.on_cancel == OnCancel::Reject {
                    let task = s
                        .get_task(&self.key, task_id, Role::Worker)?
                        .ok_or_else(|| no_task(&self.key, task_id))?;
                    let message_id =
                        self.reply(s, &task, &mut ctx, rejected("cancelled"), Vec::new(), now)?;
                    ctx.close_run(Turn::new(&self.account.email, "task.result", "cancelled"));
                    done.events.push(EventKind::Result {
                        task_id: task_id.clone(),
                        message_id,
                        status: "rejected".to_owned(),
                        error: Some("cancelled".to_owned()),
                    });
                    done.sent = true;
                }
                done.done = ctx.emails.clone();
                done.task = Some(task_id.clone());
            }
            context::save(s, &self.key, task_id, &ctx, now)?;
            settle(
                s,
                &self.key,
                fetched,
                "admitted",
                Some(&take.rule),
                Some(format!("task.cancel {task_id}")),
                None,
                now,
            )?;
            Ok(done)
        })?;
        tracing::info!(task_id = %task_id, running, "cancel received");
        Ok(Some(committed))
    }

    /// One run, from the store's compare-and-set to the recorded outcome.
    pub(crate) async fn run_task(self: Arc<Self>, started: Started<()>) {
        let Started {
            task,
            cancel,
            guard,
            ..
        } = started;
        let task_id = task.task_id;
        let span = tracing::info_span!("run", task_id = %task_id);
        async {
            self.run_once(&task_id, cancel).await;
            drop(guard);
            self.book.room.notify_one();
            // NOTE: an answer that came while the run was finishing found the task still
            // running in the queue; queue it now.
            match self.db.with(|s| s.get_task(&self.key, &task_id, Role::Worker)) {
                Ok(Some(task)) if task.state == TaskState::Queued => {
                    let entry = self.db.with(|s| self.queue_entry(&task, s));
                    if let Ok((id, priority, expires_at)) = entry {
                        self.push(id, priority, expires_at);
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot read the task after its run"),
            }
        }
        .instrument(span)
        .await;
    }

    async fn run_once(&self, task_id: &TaskId, cancel: CancelSignal) {
        if !self.still_admitted(task_id) {
            return;
        }
        // NOTE: many daemons on one mailbox (lease.rs): a task whose mail another daemon took
        // over never runs here; after a restart the run waits until our lease is confirmed.
        let emails = self
            .db
            .with(|s| context::load(s, &self.key, task_id))
            .map(|ctx| ctx.emails)
            .unwrap_or_default();
        if !self.may_run(&emails).await {
            tracing::warn!("another daemon holds this task's mail now: not run here");
            let now = self.now();
            if let Err(error) = self.db.with(|s| {
                s.transition(
                    &self.key,
                    task_id,
                    Role::Worker,
                    &[TaskState::Queued],
                    TaskState::Cancelled,
                    now,
                )
            }) {
                tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot record a task taken over");
            }
            return;
        }
        let now = self.now();
        let loaded = self.db.with(|s| {
            if !s.record_run_start(&self.key, task_id, &[TaskState::Queued], now)? {
                return Ok(None);
            }
            let task = s.get_task(&self.key, task_id, Role::Worker)?;
            let ctx = context::load(s, &self.key, task_id)?;
            Ok(task.map(|t| (t, ctx)))
        });
        let (task, ctx) = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => {
                tracing::debug!("not queued any more (cancelled, or taken by another runner)");
                return;
            }
            Err(error) => {
                tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot start the run");
                return;
            }
        };
        self.events.emit(
            self.now(),
            EventKind::Started {
                task_id: task_id.clone(),
                attempt: task.attempts,
            },
        );
        let outcome = match self.download(&ctx).await {
            Err(error) => RunOutcome::Rejected {
                error,
                output: String::new(),
            },
            Ok(files) => {
                let request = build_request(&task, &ctx, files);
                match self.agent.execute(&request, cancel).await {
                    Ok(report) => report.outcome,
                    Err(error) => {
                        tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot run the agent");
                        RunOutcome::Rejected {
                            error: format!("cannot run the task: {error}"),
                            output: String::new(),
                        }
                    }
                }
            }
        };
        self.finish(task_id, outcome).await;
    }

    /// The task's attachments, downloaded (transient failures retried).
    async fn download(&self, ctx: &TaskContext) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut files = Vec::with_capacity(ctx.attachments.len());
        for blob in &ctx.attachments {
            let mut attempt = 0;
            let bytes = loop {
                attempt += 1;
                match self
                    .mail
                    .download(&blob.blob_id, &blob.name, &blob.content_type)
                    .await
                {
                    Ok(bytes) => break bytes,
                    Err(error) if error.is_transient() && attempt < DOWNLOAD_TRIES => {
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                    Err(error) => {
                        let text = crate::transport::smtp::error_chain(&error);
                        tracing::error!(name = %blob.name, error = %text, "cannot download an attachment");
                        return Err(format!("cannot download attachment '{}'", blob.name));
                    }
                }
            };
            files.push((blob.name.clone(), bytes));
        }
        Ok(files)
    }

    /// Records a run's outcome and queues the message that reports it, in one transaction.
    async fn finish(&self, task_id: &TaskId, outcome: RunOutcome) {
        let now = self.now();
        let us = self.account.email.clone();
        let kind = outcome.kind();
        let recorded = self.db.atomically(|s| {
            let Some(task) = s.get_task(&self.key, task_id, Role::Worker)? else {
                return Ok(None);
            };
            let mut ctx = context::load(s, &self.key, task_id)?;
            let mut done = Committed::default();
            match &outcome {
                RunOutcome::Completed { .. } | RunOutcome::Rejected { .. } => {
                    let Some(Payload::Result(result)) = outcome.payload() else {
                        return Ok(None);
                    };
                    if !s.record_result(&self.key, task_id, Role::Worker, &result, now)? {
                        return Ok(None);
                    }
                    let attachments = match &outcome {
                        RunOutcome::Completed { attachments, .. } => attachments
                            .iter()
                            .map(|f| Attachment {
                                filename: f.filename.clone(),
                                content_type: content_type_for(&f.filename).to_owned(),
                                bytes: f.bytes.clone(),
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    let message_id = self.reply(
                        s,
                        &task,
                        &mut ctx,
                        Payload::Result(result.clone()),
                        attachments,
                        now,
                    )?;
                    ctx.close_run(Turn::new(&us, "task.result", &result.output));
                    done.events.push(EventKind::Result {
                        task_id: task_id.clone(),
                        message_id,
                        status: result.status.as_str().to_owned(),
                        error: result.error_msg.clone(),
                    });
                    done.done = ctx.emails.clone();
                    done.task = Some(task_id.clone());
                }
                RunOutcome::HelpNeeded {
                    question,
                    blocked_reason,
                    options,
                } => {
                    if !s.record_help_needed(&self.key, task_id, Role::Worker, question, now)? {
                        return Ok(None);
                    }
                    let payload = Payload::HelpNeeded(HelpNeeded {
                        question: question.clone(),
                        blocked_reason: blocked_reason.clone(),
                        suggested_options: options.clone(),
                    });
                    let message_id = self.reply(s, &task, &mut ctx, payload, Vec::new(), now)?;
                    ctx.close_run(Turn::new(&us, "task.help_needed", question));
                    done.events.push(EventKind::Help {
                        task_id: task_id.clone(),
                        message_id,
                        question: question.clone(),
                    });
                }
                RunOutcome::Cancelled => {
                    if !s.transition(
                        &self.key,
                        task_id,
                        Role::Worker,
                        &[TaskState::Running],
                        TaskState::Cancelled,
                        now,
                    )? {
                        return Ok(None);
                    }
                    done.events.push(EventKind::Cancelled {
                        task_id: task_id.clone(),
                    });
                    if self.settings.on_cancel == OnCancel::Reject {
                        let message_id =
                            self.reply(s, &task, &mut ctx, rejected("cancelled"), Vec::new(), now)?;
                        done.events.push(EventKind::Result {
                            task_id: task_id.clone(),
                            message_id,
                            status: "rejected".to_owned(),
                            error: Some("cancelled".to_owned()),
                        });
                    }
                    ctx.close_run(Turn::new(&us, "task.result", "cancelled"));
                    done.done = ctx.emails.clone();
                    done.task = Some(task_id.clone());
                }
            }
            done.sent = true;
            context::save(s, &self.key, task_id, &ctx, now)?;
            Ok(Some(done))
        });
        match recorded {
            Ok(Some(committed)) => {
                tracing::info!(outcome = kind, "run finished");
                let done = committed.done.clone();
                let task = committed.task.clone();
                self.report(committed);
                if !done.is_empty() {
                    self.mark_settled(task.as_ref(), &done).await;
                }
            }
            Ok(None) => {
                tracing::info!(
                    outcome = kind,
                    "the run's outcome is not sent: the task moved on meanwhile (cancelled?)"
                );
            }
            Err(error) => {
                tracing::error!(error = %crate::transport::smtp::error_chain(&error), outcome = kind, "cannot record the run's outcome; the task runs again on the next start");
            }
        }
    }

    /// A queued task whose Expires-At passed before it could start: one `rejected` result
    /// (`ErrorMsg: expired`), never run.
    async fn expire(&self, task: QueuedTask<()>) {
        let now = self.now();
        let task_id = task.task_id;
        let recorded = self.db.atomically(|s| {
            let Some(row) = s.get_task(&self.key, &task_id, Role::Worker)? else {
                return Ok(None);
            };
            if !s.transition(
                &self.key,
                &task_id,
                Role::Worker,
                &[TaskState::Queued],
                TaskState::Expired,
                now,
            )? {
                return Ok(None);
            }
            let mut ctx = context::load(s, &self.key, &task_id)?;
            let message_id = self.reply(s, &row, &mut ctx, rejected("expired"), Vec::new(), now)?;
            ctx.close_run(Turn::new(&self.account.email, "task.result", "expired"));
            context::save(s, &self.key, &task_id, &ctx, now)?;
            Ok(Some(Committed {
                events: vec![EventKind::Result {
                    task_id: task_id.clone(),
                    message_id,
                    status: "rejected".to_owned(),
                    error: Some("expired".to_owned()),
                }],
                done: ctx.emails.clone(),
                task: Some(task_id.clone()),
                sent: true,
                queue: None,
            }))
        });
        match recorded {
            Ok(Some(committed)) => {
                tracing::info!(task_id = %task_id, "expired in the queue: rejected, never run");
                let done = committed.done.clone();
                let task = committed.task.clone();
                self.report(committed);
                self.mark_settled(task.as_ref(), &done).await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(task_id = %task_id, error = %crate::transport::smtp::error_chain(&error), "cannot record an expiry")
            }
        }
    }
}

fn no_task(account: &str, task_id: &TaskId) -> StoreError {
    StoreError::NoSuchTask {
        account: account.to_owned(),
        task_id: task_id.to_string(),
        role: Role::Worker.as_str(),
        message_id: String::new(),
    }
}

/// The request of one run: the task, its conversation, its files.
fn build_request(task: &Task, ctx: &TaskContext, files: Vec<(String, Vec<u8>)>) -> RunRequest {
    let title = if ctx.title.is_empty() {
        task.title.clone()
    } else {
        ctx.title.clone()
    };
    let turns: Vec<ThreadTurn> = ctx
        .turns
        .iter()
        .map(|t| ThreadTurn {
            from: t.from.clone(),
            intent: t.intent.clone(),
            text: t.text.clone(),
        })
        .collect();
    let task_json = json!({
        "taskId": task.task_id,
        "title": title,
        "instructions": ctx.instructions,
        "priority": task.priority.as_str(),
        "sender": task.peer,
        "sessionKey": task.session_key,
        "expiresAt": task.expires_at,
        "dispatchContext": ctx.dispatch_context,
        "origin": ctx.origin,
        "attempt": task.attempts,
        "thread": ctx.turns,
        "answer": ctx.answer.as_ref().map(|a| &a.text),
        "attachments": files.iter().map(|(name, bytes)| json!({"name": name, "size": bytes.len()})).collect::<Vec<_>>(),
        "trust": ctx.trust.level,
        "risk": ctx.trust.risk,
        "flags": ctx.trust.flags,
    });
    RunRequest {
        task_id: task.task_id.clone(),
        title,
        instructions: ctx.instructions.clone(),
        priority: task.priority,
        session_key: task.session_key.clone(),
        sender: task.peer.clone(),
        prior_thread: turns,
        answer: ctx.answer.as_ref().map(|a| a.text.clone()),
        attachments: files,
        task_json,
        trust: ctx.trust.level,
        risk: ctx.trust.risk,
        flags: ctx.trust.flags.clone(),
        message_id: ctx.trust.message_id.clone(),
        nonce: crate::trust::content::Nonce::random(),
    }
}

/// Starts queued tasks as slots free up; reports expired ones. Ends when the queue is closed
/// and every run has ended.
pub(crate) async fn schedule<M, S, A>(core: Arc<Core<M, S, A>>)
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let mut runs = JoinSet::new();
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = core.queue.next() => match next {
                Next::Start(started) => {
                    runs.spawn(Arc::clone(&core).run_task(started));
                }
                Next::Expired(task) => core.expire(task).await,
                Next::Closed => break,
            },
            _ = expiry.tick() => {
                for task in core.queue.take_expired() {
                    core.expire(task).await;
                }
            }
            Some(joined) = runs.join_next(), if !runs.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(error = %error, "a run task failed");
                }
            }
        }
    }
    while let Some(joined) = runs.join_next().await {
        if let Err(error) = joined {
            tracing::error!(error = %error, "a run task failed");
        }
    }
}
