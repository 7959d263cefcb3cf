//! `taskmail dispatch --to ADDR --title T [--body B | --body-file F | --body -] [--wait]`: send
//! a task.dispatch from the dispatcher account and, with `--wait`, follow its thread until the
//! result.
//!
//! # Sending
//!
//! The dispatch is rendered (TaskId UUIDv4, Message-ID `<ULID@domain>`) and stored with its
//! dispatcher task, outbox row and thread index in one transaction
//! ([`crate::daemon::dispatcher::enqueue_dispatch`]). If this process can take the account's
//! pipeline lock it submits at once; a failed first submission withdraws the dispatch (it will
//! never go out later) and exits 69, 75 or 77. If `taskmail run` (or another waiting
//! `dispatch`) serves the account, that process sends it from the shared outbox.
//!
//! # Waiting (`--wait`)
//!
//! With the lock, this process runs the dispatcher-only pipeline itself
//! ([`crate::daemon::dispatcher::follow`]: push or polling, `Email/changes`, the outbox) until
//! the task ends. Without it, the holder routes the replies into the shared store and this
//! process follows the store, taking the lock over when the holder goes away: a running
//! `taskmail run` never deadlocks a waiting dispatch. It ends on a result (0 completed, 3
//! rejected), a cancel (4), Expires-At passing (4, the task becomes `expired`) or `--timeout`
//! (75; the task stays open: `taskmail task show ID`).
//!
//! # Output
//!
//! With `--json`, stdout carries JSON Lines: `dispatched`, `sent` (when another process
//! submitted it), `acked`, `help` (with the question, options and the `taskmail answer`
//! command), `answered`, `reply` (a person's reply to the dispatch), `result` (status, output,
//! error, structured result, attachments), `cancelled`, `expired`, `timeout`, and on failure
//! one `error` object. Without it the result's output goes to stdout, everything else to
//! stderr, with a live spinner on a terminal.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::{Exit, Failure, output};
use crate::config::{Account, Config, Env, parse_duration};
use crate::daemon::dispatcher::{
    self, NewDispatch, NoAgent, Outcome, PipelineLock, Queued, Record, RecordedMessage,
};
use crate::daemon::status::LockHolder;
use crate::daemon::{DaemonError, Deps, Event};
use crate::store::{OutboxStatus, Role, Store, Task, TaskState};
use crate::transport::{self, JmapClient, SmtpSubmit};
use crate::wire::aamp::{Dispatch, DispatchContext, Priority, TaskId, truncate_ms};
use crate::wire::message::Attachment;

/// How long a dispatch (without `--wait`), answer or cancel left to another process is watched
/// until it is sent.
pub(crate) const SEND_PATIENCE: Duration = Duration::from_secs(30);
/// How often a waiter reads the store.
const POLL: Duration = Duration::from_millis(200);
/// How long a result that arrived before its task's ack waits for the ack (mail is not
/// ordered); the result is shown after it either way.
const ACK_GRACE: Duration = Duration::from_secs(2);
/// How often a follower tries to take the pipeline over.
const TAKEOVER_EVERY: Duration = Duration::from_secs(2);

/// `taskmail dispatch`: send a task, optionally wait for its result.
#[derive(Debug, Args)]
#[command(
    long_about = "Send a task.dispatch from the dispatcher account ([dispatcher] account, or \
                  --account) to a worker address. Prints the TaskId and the Message-ID.\n\nWith \
                  --wait, follows the task's thread until its result, and exits by outcome: 0 \
                  completed, 3 rejected, 4 expired or cancelled, 75 --timeout, 69 server \
                  unavailable, 77 authentication refused. A help request shows its question and \
                  how to answer it (`taskmail answer ID --text ...`)."
)]
pub struct DispatchCommand {
    /// The worker's address.
    #[arg(long, value_name = "ADDR")]
    pub to: String,
    /// The task's title (the Subject after `[AAMP Task]`).
    #[arg(long)]
    pub title: String,
    /// The instructions; `-` reads them from standard input.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the instructions from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// urgent, high or normal (default: [dispatcher] default-priority).
    #[arg(long)]
    pub priority: Option<String>,
    /// Expires-At this long from now, e.g. 30s, 10m, 2h.
    #[arg(long, value_name = "DUR")]
    pub expires_in: Option<String>,
    /// Session key grouping dispatches into one agent session.
    #[arg(long)]
    pub session_key: Option<String>,
    /// Dispatch-Context entry `key=value` (repeatable).
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// A file to attach (repeatable).
    #[arg(long = "attach", value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Follow the task until its result, a cancel, its expiry or --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (default: [dispatcher] default-timeout).
    #[arg(long, value_name = "DUR", requires = "wait")]
    pub timeout: Option<String>,
    /// JSON on stdout: one object, or JSON Lines events with --wait.
    #[arg(long)]
    pub json: bool,
    /// The account to send from (default: [dispatcher] account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
}

impl DispatchCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let account = super::pick_account(
            &config,
            self.account.as_deref(),
            &config.dispatcher().account,
        )?
        .clone();
        let dispatch = self.dispatch(&config)?;
        let attachments = self.attachments()?;
        let timeout = match &self.timeout {
            Some(t) => parse_duration(t).map_err(|e| usage(&format!("--timeout '{t}'"), &e))?,
            None => config.dispatcher().default_timeout,
        };
        let store = super::open_store(&config)?;
        let new = NewDispatch {
            to: self.to.clone(),
            dispatch,
            attachments,
        };
        let runtime = super::runtime()?;
        let session = Session {
            config: &config,
            account: &account,
            store: &store,
            printer: Printer::new(self.json, self.wait),
        };
        runtime.block_on(session.go(new, self.wait, timeout))
    }

    /// The task.dispatch from the flags.
    pub(crate) fn dispatch(&self, config: &Config) -> Result<Dispatch, Failure> {
        if self.title.trim().is_empty() {
            return Err(usage_text("cannot dispatch without a title: --title"));
        }
        if crate::config::check_email(self.to.trim()).is_err() {
            return Err(usage_text(&format!(
                "cannot use --to '{}': it is not an email address",
                self.to
            )));
        }
        let instructions = match (&self.body, &self.body_file) {
            (Some(body), _) if body == "-" => std::io::read_to_string(std::io::stdin())
                .map_err(|e| Failure::of("usage", &e, 2))?,
            (Some(body), _) => body.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                Failure::new(
                    "usage",
                    format!("cannot read --body-file '{}': {e}", path.display()),
                    Exit::Usage,
                )
            })?,
            (None, None) => String::new(),
        };
        let priority = match &self.priority {
            Some(p) => Priority::parse(p).ok_or_else(|| {
                usage_text(&format!(
                    "cannot use --priority '{p}': use urgent, high or normal"
                ))
            })?,
            None => match config.dispatcher().default_priority {
                crate::config::Priority::Urgent => Priority::Urgent,
                crate::config::Priority::High => Priority::High,
                crate::config::Priority::Normal => Priority::Normal,
            },
        };
        let expires_at = match &self.expires_in {
            Some(d) => {
                let d = parse_duration(d).map_err(|e| usage(&format!("--expires-in '{d}'"), &e))?;
                let d = chrono::TimeDelta::from_std(d)
                    .map_err(|_| usage_text("cannot use --expires-in: it is too long"))?;
                Some(truncate_ms(crate::clock::now() + d))
            }
            None => None,
        };
        let mut context = DispatchContext::default();
        for kv in &self.context {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                usage_text(&format!("cannot use --context '{kv}': write key=value"))
            })?;
            let k = k.trim().to_ascii_lowercase();
            if !DispatchContext::is_valid_key(&k) {
                return Err(usage_text(&format!(
                    "cannot use --context key '{k}': keys are [a-z0-9_-]+"
                )));
            }
            context.0.insert(k, v.to_owned());
        }
        Ok(Dispatch {
            title: self.title.clone(),
            instructions,
            priority,
            expires_at,
            session_key: self
                .session_key
                .clone()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()),
            dispatch_context: context,
            parent_task_id: None,
        })
    }

    fn attachments(&self) -> Result<Vec<Attachment>, Failure> {
        self.attach
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path).map_err(|e| {
                    Failure::new(
                        "usage",
                        format!("cannot read --attach '{}': {e}", path.display()),
                        Exit::Usage,
                    )
                })?;
                let filename = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "attachment".to_owned());
                Ok(Attachment {
                    content_type: crate::daemon::outbound::content_type_for(&filename).to_owned(),
                    filename,
                    bytes,
                })
            })
            .collect()
    }
}

fn usage(what: &str, error: &dyn std::error::Error) -> Failure {
    Failure::new("usage", format!("cannot use {what}: {error}"), Exit::Usage)
}

fn usage_text(message: &str) -> Failure {
    Failure::new("usage", message, Exit::Usage)
}

/// One dispatch, from sending to its outcome.
struct Session<'a> {
    config: &'a Config,
    account: &'a Account,
    store: &'a Store,
    printer: Printer,
}

/// Who runs the pipeline while we wait.
enum Pipeline {
    /// This process: the dispatcher-only pipeline and its events.
    Ours {
        handle: JoinHandle<Result<(), DaemonError>>,
        stop: oneshot::Sender<()>,
        events: broadcast::Receiver<Event>,
    },
    /// Another process; we read the store and try to take over every [`TAKEOVER_EVERY`].
    Theirs {
        holder: LockHolder,
        next_try: Instant,
    },
}

impl Session<'_> {
    fn key(&self) -> &str {
        &self.account.name
    }

    async fn go(
        mut self,
        new: NewDispatch,
        wait: bool,
        timeout: Duration,
    ) -> Result<Exit, Failure> {
        transport::init_crypto();
        let started = Instant::now();
        let task_id = TaskId::new(crate::ids::task_id());
        let lock = PipelineLock::take(self.config.state_dir(), self.key())
            .map_err(|e| Failure::of("lock", &e, e.exit_code()))?;
        let (queued, pipeline) = match lock {
            Ok(lock) if wait => {
                let mut deps = Deps::connect(self.account, Arc::new(NoAgent))
                    .await
                    .map_err(|e| connect_failure(&e, self.account))?;
                dispatcher::ensure_cursor(self.store, self.key(), &*deps.mail, crate::clock::now())
                    .await
                    .map_err(|e| connect_failure(&e, self.account))?;
                // NOTE: push connects while we submit; hints wait in the channel.
                let mut background = tokio::task::JoinSet::new();
                for future in std::mem::take(&mut deps.background) {
                    background.spawn(future);
                }
                let queued = self.enqueue(task_id, new)?;
                self.submit(&queued, &*deps.submit).await?;
                self.printer.dispatched(&queued, "sent");
                let (events_tx, events) = broadcast::channel(256);
                deps.events = Some(events_tx);
                deps.account = Some(self.key().to_owned());
                deps.background = vec![Box::pin(async move {
                    while background.join_next().await.is_some() {}
                })];
                let (stop, stopped) = oneshot::channel::<()>();
                let config = self.config.clone();
                let handle = tokio::spawn(async move {
                    dispatcher::follow(&config, deps, lock, async {
                        let _ = stopped.await;
                    })
                    .await
                });
                (
                    queued,
                    Pipeline::Ours {
                        handle,
                        stop,
                        events,
                    },
                )
            }
            Ok(lock) => {
                let submit = SmtpSubmit::from_account(self.account)
                    .map_err(|e| Failure::of("send", &e, e.exit_code()))?;
                self.prepare_cursor().await;
                let queued = self.enqueue(task_id, new)?;
                let sent = self.submit(&queued, &submit).await;
                submit.shutdown().await;
                drop(lock);
                sent?;
                self.printer.dispatched(&queued, "sent");
                return Ok(Exit::Ok);
            }
            Err(holder) => {
                let queued = self.enqueue(task_id, new)?;
                if holder.kind != "dispatch" {
                    self.printer.note(&format!(
                        "{} serves account '{}' from {}: it sends the dispatch{}",
                        holder.describe(),
                        self.key(),
                        self.config.state_dir().display(),
                        if wait {
                            " and records the replies; following the task through the shared store"
                        } else {
                            ""
                        }
                    ));
                }
                if !wait {
                    let status = self.watch_sent(&queued.message_id).await?;
                    self.printer.dispatched(&queued, status);
                    return Ok(Exit::Ok);
                }
                self.printer.dispatched(&queued, "queued");
                (
                    queued,
                    Pipeline::Theirs {
                        holder,
                        next_try: Instant::now() + TAKEOVER_EVERY,
                    },
                )
            }
        };
        let exit = self
            .follow(&queued, pipeline, started + timeout, timeout)
            .await;
        self.printer.clear();
        exit
    }

    fn enqueue(&self, task_id: TaskId, new: NewDispatch) -> Result<Queued, Failure> {
        let signer = super::signer(self.config, self.key())?;
        Ok(dispatcher::enqueue_dispatch(
            self.store,
            self.account,
            self.key(),
            signer.as_ref(),
            task_id,
            new,
            crate::clock::now(),
        )?)
    }

    /// The first submission; a failure withdraws the dispatch.
    async fn submit<S: crate::transport::Submit>(
        &self,
        queued: &Queued,
        submit: &S,
    ) -> Result<(), Failure> {
        match dispatcher::send_now(self.store, submit, &queued.message_id, crate::clock::now).await
        {
            Ok(()) => Ok(()),
            Err(error) => {
                let text = crate::transport::smtp::error_chain(&error);
                dispatcher::withdraw(self.store, self.key(), queued, &text, crate::clock::now())?;
                let code = error.exit_code();
                let mut failure = Failure::of("send", &error, code).detail(format!(
                    "task {} was withdrawn: nothing was sent",
                    queued.task_id
                ));
                if let Some(hint) = send_hint(code, self.account) {
                    failure = failure.detail(hint);
                }
                Err(failure)
            }
        }
    }

    /// Without `--wait` and with nothing serving the account yet: make sure the replies to
    /// this dispatch are read by the next pipeline of the account (best effort).
    async fn prepare_cursor(&self) {
        if self
            .store
            .jmap_state(&dispatcher::cursor_key(self.key()))
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        match JmapClient::from_account(self.account).await {
            Ok(mail) => {
                if let Err(error) =
                    dispatcher::ensure_cursor(self.store, self.key(), &mail, crate::clock::now())
                        .await
                {
                    tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot note where the mailbox is; replies to this task are read by `taskmail run` on this account");
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot reach JMAP; replies to this task are read by `taskmail run` on this account");
            }
        }
    }

    /// Watches the store until another process sent the message (or [`SEND_PATIENCE`]).
    async fn watch_sent(&self, message_id: &str) -> Result<&'static str, Failure> {
        let deadline = Instant::now() + SEND_PATIENCE;
        loop {
            if let Some(row) = self.store.outbox_get(message_id)?
                && row.status == OutboxStatus::Sent
            {
                return Ok("sent");
            }
            if Instant::now() >= deadline {
                return Ok("queued");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Follows the task until its outcome (module docs, "Waiting").
    async fn follow(
        &mut self,
        queued: &Queued,
        mut pipeline: Pipeline,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Exit, Failure> {
        let mut shown: HashSet<String> = HashSet::new();
        shown.insert(queued.message_id.clone());
        let mut sent_seen = matches!(pipeline, Pipeline::Ours { .. });
        let mut last_error: Option<String> = None;
        let mut pipeline_done = false;
        let mut ack_grace: Option<Instant> = None;
        let task_id = queued.task_id.clone();
        let result = loop {
            let Some(task) = self
                .store
                .get_task(self.key(), &task_id, Role::Dispatcher)?
            else {
                break Err(Failure::new(
                    "task",
                    format!("task {task_id} is no longer in the store"),
                    Exit::Failure,
                ));
            };
            if !sent_seen && let Some(row) = self.store.outbox_get(&queued.message_id)? {
                if row.status == OutboxStatus::Sent {
                    sent_seen = true;
                    self.printer.event(
                        "sent",
                        json!({"taskId": task_id, "messageId": queued.message_id}),
                    );
                } else if row.last_error.is_some() && row.last_error != last_error {
                    last_error.clone_from(&row.last_error);
                    self.printer.note(&format!(
                        "the dispatch is not sent yet: {}",
                        row.last_error.as_deref().unwrap_or_default()
                    ));
                }
            }
            let record = dispatcher::load_record(self.store, self.key(), &task_id)?;
            // NOTE: mail is not ordered: an ack and a result submitted a few milliseconds apart
            // can arrive result first (Postfix delivers them in parallel). Give the ack a short
            // grace while the pipeline runs, so the timeline shows it before the result.
            let ack_in_flight = matches!(task.state, TaskState::Completed | TaskState::Rejected)
                && !record.messages.iter().any(|m| m.intent == "task.ack");
            if ack_in_flight && ack_grace.is_none() {
                ack_grace = Some(Instant::now() + ACK_GRACE);
            }
            let waiting_for_ack =
                ack_in_flight && ack_grace.is_some_and(|until| Instant::now() < until);
            if !waiting_for_ack {
                self.show_new(&task, &record, &mut shown);
                if let Some(outcome) = Outcome::of(task.state) {
                    self.show_outcome(&task, &record, outcome);
                    break Ok(Exit::from_code(outcome.exit_code()));
                }
            }
            if dispatcher::expire_if_due(self.store, self.key(), &task, crate::clock::now())? {
                continue;
            }
            if Instant::now() >= deadline {
                self.printer.event(
                    "timeout",
                    json!({
                        "taskId": task_id,
                        "state": task.state,
                        "after": crate::config::format_duration(timeout),
                        "hint": format!("the task is still open: taskmail task show {task_id}"),
                    }),
                );
                break Ok(Exit::TempFail);
            }
            self.printer.status(&task_id, task.state);
            let take_over = match &mut pipeline {
                Pipeline::Ours { handle, events, .. } => {
                    if handle.is_finished() {
                        let error = match handle.await {
                            Ok(Err(error)) => connect_failure(&error, self.account),
                            _ => Failure::new(
                                "pipeline",
                                "the mailbox pipeline stopped",
                                Exit::Failure,
                            ),
                        };
                        pipeline_done = true;
                        break Err(error);
                    }
                    tokio::select! {
                        _ = events.recv() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                    None
                }
                Pipeline::Theirs { holder, next_try } if Instant::now() >= *next_try => {
                    Some(holder.clone())
                }
                Pipeline::Theirs { .. } => {
                    tokio::time::sleep(POLL).await;
                    None
                }
            };
            if let Some(holder) = take_over {
                pipeline = self.take_over(holder).await;
            }
        };
        if let Pipeline::Ours { handle, stop, .. } = pipeline
            && !pipeline_done
        {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        result
    }

    /// A follower tries to run the pipeline itself (the holder went away).
    async fn take_over(&mut self, holder: LockHolder) -> Pipeline {
        let theirs = |holder| Pipeline::Theirs {
            holder,
            next_try: Instant::now() + TAKEOVER_EVERY,
        };
        let lock = match PipelineLock::take(self.config.state_dir(), self.key()) {
            Ok(Ok(lock)) => lock,
            Ok(Err(holder)) => return theirs(holder),
            Err(error) => {
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot use the pipeline lock");
                return theirs(holder);
            }
        };
        let mut deps = match Deps::connect(self.account, Arc::new(NoAgent)).await {
            Ok(deps) => deps,
            Err(error) => {
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot connect to follow the task myself; trying again");
                return theirs(holder);
            }
        };
        tracing::info!(previous = %holder.describe(), "the account's pipeline is free: following the task here");
        let (events_tx, events) = broadcast::channel(256);
        deps.events = Some(events_tx);
        deps.account = Some(self.key().to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config.clone();
        let handle = tokio::spawn(async move {
            dispatcher::follow(&config, deps, lock, async {
                let _ = stopped.await;
            })
            .await
        });
        Pipeline::Ours {
            handle,
            stop,
            events,
        }
    }

    /// Prints what arrived (or was sent by another process) since the last look.
    fn show_new(&mut self, task: &Task, record: &Record, shown: &mut HashSet<String>) {
        for message in &record.messages {
            let key = if message.message_id.is_empty() {
                format!("{}@{:?}", message.intent, message.at)
            } else {
                message.message_id.clone()
            };
            if !shown.insert(key) {
                continue;
            }
            let id = &task.task_id;
            match (message.intent.as_str(), message.direction.as_str()) {
                ("task.ack", _) => self.printer.event(
                    "acked",
                    json!({"taskId": id, "messageId": message.message_id, "from": message.from}),
                ),
                ("task.help_needed", _) => self.printer.help(id, message),
                ("reply", _) => self.printer.event(
                    "reply",
                    json!({
                        "taskId": id,
                        "messageId": message.message_id,
                        "from": message.from,
                        "text": message.text.clone().unwrap_or_default(),
                    }),
                ),
                ("task.dispatch", "out") => self.printer.event(
                    "answered",
                    json!({
                        "taskId": id,
                        "messageId": message.message_id,
                        "text": message.text.clone().unwrap_or_default(),
                    }),
                ),
                ("task.stream.opened", _) => self.printer.event(
                    "stream",
                    json!({"taskId": id, "messageId": message.message_id}),
                ),
                // NOTE: results, cancels and expiry are reported with the outcome.
                _ => {}
            }
        }
    }

    fn show_outcome(&mut self, task: &Task, record: &Record, outcome: Outcome) {
        let id = &task.task_id;
        let result_mail = record
            .messages
            .iter()
            .rev()
            .find(|m| m.intent == "task.result" && m.direction == "in");
        match (outcome, &task.result) {
            (Outcome::Completed | Outcome::Rejected, Some(result))
            | (Outcome::Expired, Some(result)) => {
                let structured = result
                    .structured_result
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok());
                self.printer.result(
                    json!({
                        "taskId": id,
                        "state": task.state,
                        "status": result.status,
                        "messageId": result_mail.map(|m| m.message_id.clone()),
                        "from": task.peer,
                        "output": result.output,
                        "error": result.error,
                        "structuredResult": structured,
                        "attachments": result_mail.map(|m| m.attachments.clone()).unwrap_or_default(),
                        "truncated": result.truncated,
                    }),
                    &result.output,
                );
                if outcome == Outcome::Expired {
                    self.printer
                        .event("expired", json!({"taskId": id, "by": "worker"}));
                }
            }
            (Outcome::Expired, None) => self.printer.event(
                "expired",
                json!({"taskId": id, "expiresAt": task.expires_at, "by": "dispatcher"}),
            ),
            (Outcome::Cancelled, _) => {
                let note = record
                    .messages
                    .iter()
                    .rev()
                    .find(|m| matches!(m.intent.as_str(), "task.cancel" | "withdrawn"));
                self.printer.event(
                    "cancelled",
                    json!({
                        "taskId": id,
                        "by": note.map(|m| if m.direction == "in" { "worker" } else { "dispatcher" }),
                        "reason": note.and_then(|m| m.text.clone()),
                    }),
                );
            }
            (_, None) => self.printer.event(
                outcome_name(outcome),
                json!({"taskId": id, "state": task.state}),
            ),
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Completed | Outcome::Rejected => "result",
        Outcome::Expired => "expired",
        Outcome::Cancelled => "cancelled",
    }
}

/// A failure to connect or start, with its documented exit code and a hint.
pub(crate) fn connect_failure(error: &DaemonError, account: &Account) -> Failure {
    let code = error.exit_code();
    let failure = Failure::of("connect", error, code);
    match code {
        77 => failure.detail(format!(
            "hint: the server refused the login '{}': check accounts.{}.password (and login)",
            account.login, account.name
        )),
        69 => failure.detail(format!(
            "hint: is the mail server running? check accounts.{}.jmap.session-url and smtp host/port",
            account.name
        )),
        75 => failure.detail("hint: a temporary failure; try again later"),
        _ => failure,
    }
}

/// A hint for a submission failure's exit code.
pub(crate) fn send_hint(code: u8, account: &Account) -> Option<String> {
    match code {
        77 => Some(format!(
            "hint: the submission server refused the login '{}': check accounts.{}.password",
            account.login, account.name
        )),
        69 => Some(format!(
            "hint: nothing answers on {}:{}: is the mail server running? check accounts.{}.smtp",
            account.smtp.host, account.smtp.port, account.name
        )),
        75 => Some("hint: a temporary failure; try again later".to_owned()),
        _ => None,
    }
}

// ---- printing ------------------------------------------------------------------------------

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// JSON Lines on stdout, or lines (and a spinner on a terminal) on stderr.
struct Printer {
    json: bool,
    /// `--wait`: the ids go to stderr, stdout is for the result.
    wait: bool,
    tty: bool,
    frame: usize,
    /// Whether a spinner line is on screen.
    drawn: bool,
    started: Instant,
}

impl Printer {
    fn new(json: bool, wait: bool) -> Printer {
        Printer {
            json,
            wait,
            tty: !json && std::io::stderr().is_terminal(),
            frame: 0,
            drawn: false,
            started: Instant::now(),
        }
    }

    fn now() -> DateTime<Utc> {
        crate::clock::now()
    }

    /// One event: a JSON line, or a line on stderr.
    fn event(&mut self, name: &str, fields: Value) {
        if self.json {
            let mut line = json!({"at": Printer::now(), "event": name});
            if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
                line.extend(fields);
            }
            let _ = output::write_stdout(format!("{line}\n").as_bytes());
            return;
        }
        let id = fields["taskId"].as_str().unwrap_or_default().to_owned();
        let text = match name {
            "dispatched" => format!(
                "dispatched task {id} to {} <{}> ({})",
                fields["to"].as_str().unwrap_or_default(),
                fields["messageId"].as_str().unwrap_or_default(),
                fields["status"].as_str().unwrap_or_default()
            ),
            "sent" => format!("task {id}: the dispatch was sent"),
            "acked" => format!(
                "task {id}: acked by {}",
                fields["from"].as_str().unwrap_or_default()
            ),
            "answered" => format!("task {id}: answered"),
            "reply" => format!(
                "task {id}: {} replied:\n{}",
                fields["from"].as_str().unwrap_or_default(),
                indent(fields["text"].as_str().unwrap_or_default())
            ),
            "cancelled" => format!(
                "task {id}: cancelled{}",
                fields["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            "expired" => format!("task {id}: expired"),
            "timeout" => format!(
                "task {id}: no result after {} (still {}); follow it with `taskmail task show {id}`",
                fields["after"].as_str().unwrap_or_default(),
                fields["state"].as_str().unwrap_or_default()
            ),
            other => format!("task {id}: {other}"),
        };
        self.line(&text);
    }

    fn note(&mut self, text: &str) {
        if self.json {
            let line = json!({"at": Printer::now(), "event": "note", "message": text});
            let _ = output::write_stdout(format!("{line}\n").as_bytes());
        } else {
            self.line(text);
        }
    }

    fn dispatched(&mut self, queued: &Queued, status: &str) {
        if !self.json && !self.wait {
            // NOTE: without --wait the ids are the command's data: stdout.
            let _ = output::print_fields(&json!({
                "taskId": queued.task_id,
                "messageId": queued.message_id,
                "to": queued.to,
                "status": status,
            }));
            return;
        }
        self.event(
            "dispatched",
            json!({
                "taskId": queued.task_id,
                "messageId": queued.message_id,
                "to": queued.to,
                "status": status,
            }),
        );
    }

    fn help(&mut self, task_id: &TaskId, message: &RecordedMessage) {
        let question = message.question.clone().unwrap_or_default();
        let answer = format!("taskmail answer {task_id} --text '...'");
        if self.json {
            self.event(
                "help",
                json!({
                    "taskId": task_id,
                    "messageId": message.message_id,
                    "question": question,
                    "blockedReason": message.blocked_reason,
                    "options": message.options,
                    "answerWith": answer,
                }),
            );
            return;
        }
        let mut text = format!("task {task_id} needs help: {question}");
        if let Some(reason) = &message.blocked_reason {
            text.push_str(&format!("\n  blocked: {reason}"));
        }
        for (n, option) in message.options.iter().enumerate() {
            text.push_str(&format!("\n  {}. {option}", n + 1));
        }
        text.push_str(&format!("\n  answer with: {answer}"));
        self.line(&text);
    }

    fn result(&mut self, fields: Value, output_text: &str) {
        if self.json {
            self.event("result", fields);
            return;
        }
        let id = fields["taskId"].as_str().unwrap_or_default().to_owned();
        let status = fields["status"].as_str().unwrap_or_default().to_owned();
        let text = match fields["error"].as_str() {
            Some(error) => format!("task {id}: {status}: {error}"),
            None => format!("task {id}: {status}"),
        };
        self.line(&text);
        if !output_text.is_empty() {
            let mut out = output_text.to_owned();
            if !out.ends_with('\n') {
                out.push('\n');
            }
            let _ = output::write_stdout(out.as_bytes());
        }
    }

    /// The spinner line (a terminal only).
    fn status(&mut self, task_id: &TaskId, state: TaskState) {
        if !self.tty {
            return;
        }
        self.frame = (self.frame + 1) % SPINNER.len();
        let waiting = match state {
            TaskState::HelpNeeded => "waiting for your answer",
            TaskState::Dispatched => "waiting for the worker",
            _ => "working",
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} task {task_id}: {state}, {waiting} ({}s)",
            SPINNER[self.frame],
            self.started.elapsed().as_secs()
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    fn line(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
