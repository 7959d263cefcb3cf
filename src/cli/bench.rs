//! `taskmail bench --to ADDR [-n N] [--concurrency C] [--body-size B] [--json]`: measure a
//! deployment end to end through the real mail server.
//!
//! # What it does
//!
//! 1. **Floor.** From the dispatcher account it submits `--floor-samples` bare messages to
//!    itself, one at a time, and times each from the start of its SMTP submission until the
//!    bench's own JMAP follower (push hint, `Email/changes`, `Email/get` of the headers) sees it:
//!    the fastest a task could possibly come back, since a result takes the same path. Then it
//!    submits `--floor-messages` bare messages to itself with `--concurrency` submissions at
//!    once over the same connection pool the dispatches use: the raw submission rate, and the
//!    delivery rate (from the first submission until the follower saw the last of them): the
//!    server's intake, a ceiling of three times the task rate (a task is delivered three
//!    times: the dispatch, the ack and the result).
//! 2. **Tasks.** It renders N task.dispatch mails (default 1000; instructions of `--body-size`
//!    bytes; signed when the account has a signing key) to `--to`, a worker address served by
//!    `taskmail run` with the `echo` agent (any agent works; echo measures taskmail, not the
//!    agent), and submits them with `--concurrency` at once (or evenly spaced at `--rate` per
//!    second, for a soak).
//! 3. **Results.** The follower counts every `task.result` for the bench's TaskIds in the
//!    dispatcher's Inbox. Latency is from the start of a dispatch's submission to the moment its
//!    first result is seen. It waits until every task has a result or `--timeout` has passed
//!    since the last submission, then watches `--settle` longer for duplicates.
//!
//! The bench writes nothing to the local store and acts on no mail (no keyword, no ack): a
//! dispatcher daemon on the same account is not disturbed. The bare messages stay in the
//! dispatcher's Inbox (subject `taskmail bench floor RUN`).
//!
//! # Output
//!
//! A table on stdout (a progress bar on stderr when it is a terminal), or with `--json` one
//! object: `sent`, `submitFailures`, `results`, `lost`, `duplicates` (a second result mail of
//! a task, with its own Message-ID), `redelivered` (a result mail delivered again with the same
//! Message-ID: an SMTP resend after a lost reply, which readers drop), `latencyMs` (`p50`,
//! `p90`, `p99`, `max`), `tasksPerSecond`, `submitPerSecond`, `floor` (`samples`, `latencyMs`,
//! `submitPerSecond`, `delivered`, `deliverPerSecond`), `overheadP50Ms`. Exit 0 when nothing was lost and nothing came twice, 1
//! otherwise (the report is printed either way), 69/75/77 when the servers cannot be used.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Exit, Failure, output};
use crate::config::{Account, Env, parse_duration};
use crate::daemon::context::ReplyTarget;
use crate::daemon::outbound::{self, Reply, Style};
use crate::transport::{
    self, Hint, JmapClient, JmapError, MailStore as _, PushSettings, PushSupervisor, SmtpEnvelope,
    SmtpSubmit, Submit as _,
};
use crate::wire::aamp::{Dispatch, Payload, Priority, TaskId, header};
use crate::wire::message::{Mailbox, Outbound};

/// Ids per `Email/get`.
const CHUNK: usize = 256;
/// How long one floor sample may take to be seen.
const FLOOR_PATIENCE: Duration = Duration::from_secs(30);

/// `taskmail bench`: dispatch N tasks and measure what comes back.
#[derive(Debug, Args)]
#[command(
    long_about = "Dispatch N tasks from the dispatcher account to a worker address (a running \
                  `taskmail run`, ideally with the echo agent) through the real mail server, and \
                  report sent, results, lost, duplicates, latency p50/p90/p99/max (submission to \
                  result seen), tasks per second, and the server floor measured in the same run: \
                  submission to push for a bare message, and the raw submission rate over the \
                  same connection pool.\n\nExit 0 when nothing was lost and nothing came twice, \
                  1 otherwise."
)]
pub struct BenchCommand {
    /// The worker's address.
    #[arg(long, value_name = "ADDR")]
    pub to: String,
    /// How many tasks.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub tasks: usize,
    /// Submissions in flight at once (the SMTP pool size of the account bounds the connections).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Dispatches per second, evenly spaced (default: as fast as --concurrency allows): a
    /// steady rate for a soak.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Bytes of instructions per task.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub body_size: usize,
    /// How long to wait for results after the last submission, e.g. 2m.
    #[arg(long, default_value = "5m", value_name = "DUR")]
    pub timeout: String,
    /// How long to keep watching for duplicates once every task has a result.
    #[arg(long, default_value = "2s", value_name = "DUR")]
    pub settle: String,
    /// Bare messages timed one at a time for the latency floor (0: no floor).
    #[arg(long, default_value_t = 10)]
    pub floor_samples: usize,
    /// Bare messages submitted at --concurrency for the raw submission rate (0: none).
    #[arg(long, default_value_t = 100)]
    pub floor_messages: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The account to send from (default: [dispatcher] account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
}

/// What the follower has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Bench tasks: submission start, results seen, when the first was seen.
    tasks: HashMap<String, TaskTimes>,
    /// Floor samples by subject: submission start and when it was seen.
    floor: HashMap<String, (Instant, Option<Instant>)>,
    /// Results seen in total (duplicates included).
    results: usize,
    /// JMAP ids already counted (a changes window seen twice counts nothing twice).
    emails: HashSet<String>,
    /// Result mails whose Message-ID had already arrived: one result delivered twice (an SMTP
    /// resend after a lost reply), not a second result.
    redelivered: usize,
    /// When the last first result was seen.
    last_result: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct TaskTimes {
    submitted: Option<Instant>,
    /// Distinct results (by Message-ID).
    results: usize,
    first: Option<Instant>,
    message_ids: Vec<String>,
}

impl Seen {
    fn note_result(&mut self, email_id: &str, task_id: &str, message_id: &str, at: Instant) {
        let Some(times) = self.tasks.get_mut(task_id) else {
            return;
        };
        if !self.emails.insert(email_id.to_owned()) {
            return;
        }
        if !message_id.is_empty() && times.message_ids.iter().any(|m| m == message_id) {
            self.redelivered += 1;
            return;
        }
        times.message_ids.push(message_id.to_owned());
        times.results += 1;
        self.results += 1;
        if times.first.is_none() {
            times.first = Some(at);
            self.last_result = Some(at);
        }
    }

    fn answered(&self) -> usize {
        self.tasks.values().filter(|t| t.results > 0).count()
    }
}

impl BenchCommand {
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
        if crate::config::check_email(self.to.trim()).is_err() {
            return Err(usage(&format!(
                "cannot use --to '{}': it is not an email address",
                self.to
            )));
        }
        if self.concurrency == 0 {
            return Err(usage("cannot use --concurrency 0: use at least 1"));
        }
        let timeout = parse_duration(&self.timeout)
            .map_err(|e| usage(&format!("cannot use --timeout '{}': {e}", self.timeout)))?;
        let settle = parse_duration(&self.settle)
            .map_err(|e| usage(&format!("cannot use --settle '{}': {e}", self.settle)))?;
        let signer = super::signer(&config, &account.name)?;
        let runtime = super::runtime()?;
        let report = runtime.block_on(self.go(&account, signer.as_ref(), timeout, settle))?;
        self.print(&report);
        let clean = report["lost"].as_u64() == Some(0)
            && report["duplicates"].as_u64() == Some(0)
            && report["submitFailures"].as_u64() == Some(0);
        Ok(if clean { Exit::Ok } else { Exit::Failure })
    }

    async fn go(
        &self,
        account: &Account,
        signer: Option<&crate::trust::sign::SigningKey>,
        timeout: Duration,
        settle: Duration,
    ) -> Result<Value, Failure> {
        transport::init_crypto();
        let connect = |e: JmapError| Failure::of("connect", &e, e.exit_code());
        let mail = Arc::new(JmapClient::from_account(account).await.map_err(connect)?);
        let inbox = mail.inbox_id().await.map_err(connect)?;
        let cursor = mail.state().await.map_err(connect)?;
        let smtp = Arc::new(
            SmtpSubmit::from_account(account).map_err(|e| Failure::of("connect", &e, 69))?,
        );
        let settings =
            PushSettings::from_config(&account.jmap).map_err(|e| Failure::of("config", &e, 2))?;
        let (supervisor, hints, _status) = PushSupervisor::new(Arc::clone(&mail), settings, 16);
        let push = tokio::spawn(supervisor.run(std::future::pending()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<()>();
        let follower = tokio::spawn(follow(
            Arc::clone(&mail),
            inbox,
            cursor,
            hints,
            Arc::clone(&seen),
            seen_tx,
        ));
        let run = ulid::Ulid::new().to_string();
        let progress = Progress::new();

        // 1. The floor: latency one at a time, then the raw submission rate.
        let mut floor_latencies = Vec::new();
        for i in 0..self.floor_samples {
            let subject = format!("taskmail bench floor {run} latency {i}");
            let bytes = bare(account, &subject);
            let started = Instant::now();
            lock(&seen).floor.insert(subject.clone(), (started, None));
            submit(&smtp, account, &account.email, &bytes).await?;
            let deadline = started + FLOOR_PATIENCE;
            loop {
                if let Some((_, Some(at))) = lock(&seen).floor.get(&subject) {
                    floor_latencies.push(at.duration_since(started));
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let _ = tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await;
            }
            progress.show("floor", i + 1, self.floor_samples, 0);
        }
        let raw_started = Instant::now();
        let raw_sent = Arc::new(AtomicUsize::new(0));
        let raw_subjects: Vec<String> = (0..self.floor_messages)
            .map(|i| format!("taskmail bench floor {run} rate {i}"))
            .collect();
        {
            let mut seen = lock(&seen);
            for subject in &raw_subjects {
                seen.floor.insert(subject.clone(), (raw_started, None));
            }
        }
        let raw = raw_subjects
            .iter()
            .map(|subject| bare(account, subject))
            .collect::<Vec<_>>();
        let raw_count = raw.len();
        pump(
            &smtp,
            account,
            &account.email,
            raw,
            self.concurrency,
            None,
            |_, _| {
                let done = raw_sent.fetch_add(1, Ordering::Relaxed) + 1;
                progress.show("floor rate", done, raw_count, 0);
            },
        )
        .await?;
        let raw_elapsed = raw_started.elapsed();
        // The delivery rate: until the follower saw every bare message (the server's intake,
        // which bounds tasks/s at a third of it: a task is delivered three times, as the
        // dispatch, the ack and the result).
        let delivered_by =
            Instant::now() + FLOOR_PATIENCE + Duration::from_millis(10) * raw_count as u32;
        let raw_delivered = loop {
            let (count, last) = {
                let seen = lock(&seen);
                let arrivals: Vec<Instant> = raw_subjects
                    .iter()
                    .filter_map(|s| seen.floor.get(s).and_then(|(_, at)| *at))
                    .collect();
                (arrivals.len(), arrivals.into_iter().max())
            };
            progress.show("floor delivery", count, raw_count, 0);
            if count == raw_count || Instant::now() >= delivered_by {
                break (
                    count,
                    last.map(|at| at.saturating_duration_since(raw_started)),
                );
            }
            let _ = tokio::time::timeout_at(delivered_by.into(), seen_rx.recv()).await;
        };

        // 2. The tasks.
        let instructions = filler(self.body_size);
        let mut mails = Vec::with_capacity(self.tasks);
        let mut ids = Vec::with_capacity(self.tasks);
        {
            let mut seen = lock(&seen);
            for i in 0..self.tasks {
                let task_id = TaskId::new(uuid::Uuid::new_v4().to_string());
                let dispatch = Dispatch {
                    title: format!("bench {run} {i}"),
                    instructions: instructions.clone(),
                    priority: Priority::Normal,
                    ..Dispatch::default()
                };
                let rendered = outbound::render(
                    Reply {
                        account,
                        to: self.to.trim(),
                        task_id: &task_id,
                        payload: Payload::Dispatch(dispatch),
                        answering: &ReplyTarget::default(),
                        thread: &[],
                        style: Style::Aamp,
                        attachments: Vec::new(),
                        signer,
                    },
                    crate::clock::now(),
                );
                seen.tasks
                    .insert(task_id.as_str().to_owned(), TaskTimes::default());
                ids.push(task_id.as_str().to_owned());
                mails.push(rendered.bytes);
            }
        }
        let sent_count = Arc::new(AtomicUsize::new(0));
        let tasks_started = Instant::now();
        let total = self.tasks;
        let failures = {
            let seen = Arc::clone(&seen);
            let ids = ids.clone();
            let progress = &progress;
            pump(
                &smtp,
                account,
                self.to.trim(),
                mails,
                self.concurrency,
                self.rate,
                move |i, started| {
                    let mut seen = lock(&seen);
                    if let Some(times) = ids.get(i).and_then(|id| seen.tasks.get_mut(id)) {
                        times.submitted = Some(started);
                    }
                    let answered = seen.answered();
                    drop(seen);
                    let done = sent_count.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.show("tasks", done, total, answered);
                },
            )
            .await?
        };
        let submit_elapsed = tasks_started.elapsed();

        // 3. The results.
        let deadline = Instant::now() + timeout;
        loop {
            let answered = lock(&seen).answered();
            progress.show("results", answered, total - failures, answered);
            if answered + failures >= total || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await;
        }
        tokio::time::sleep(settle).await;
        progress.done();
        follower.abort();
        push.abort();
        smtp.shutdown().await;

        let seen = lock(&seen);
        let mut latencies: Vec<Duration> = seen
            .tasks
            .values()
            .filter_map(|t| Some(t.first?.saturating_duration_since(t.submitted?)))
            .collect();
        latencies.sort();
        floor_latencies.sort();
        let answered = seen.answered();
        let sent = total - failures;
        let duplicates: usize = seen
            .tasks
            .values()
            .map(|t| t.results.saturating_sub(1))
            .sum();
        let window = seen
            .last_result
            .map(|at| at.saturating_duration_since(tasks_started))
            .unwrap_or_default();
        let p50 = percentile(&latencies, 50.0);
        let floor_p50 = percentile(&floor_latencies, 50.0);
        Ok(json!({
            "event": "bench",
            "to": self.to.trim(),
            "from": account.email,
            "tasks": total,
            "concurrency": self.concurrency,
            "bodySize": self.body_size,
            "sent": sent,
            "submitFailures": failures,
            "results": seen.results,
            "answered": answered,
            "lost": sent.saturating_sub(answered),
            "duplicates": duplicates,
            "redelivered": seen.redelivered,
            "latencyMs": latency_json(&latencies),
            "tasksPerSecond": rate(answered, window),
            "submitPerSecond": rate(sent, submit_elapsed),
            "elapsedMs": millis(tasks_started.elapsed()),
            "floor": {
                "samples": floor_latencies.len(),
                "latencyMs": latency_json(&floor_latencies),
                "messages": raw_count,
                "submitPerSecond": rate(raw_count, raw_elapsed),
                "delivered": raw_delivered.0,
                "deliverPerSecond": raw_delivered.1.map(|over| rate(raw_delivered.0, over)),
            },
            "overheadP50Ms": match (p50, floor_p50) {
                (Some(a), Some(b)) => json!(((millis(a) - millis(b)) * 10.0).round() / 10.0),
                _ => Value::Null,
            },
        }))
    }

    fn print(&self, report: &Value) {
        if self.json {
            let _ = output::write_stdout(format!("{report}\n").as_bytes());
            return;
        }
        let ms = |v: &Value| match v.as_f64() {
            Some(x) => format!("{x:.1} ms"),
            None => "-".to_owned(),
        };
        let lat = &report["latencyMs"];
        let floor = &report["floor"];
        let floor_lat = &floor["latencyMs"];
        let lines = [
            ("to", report["to"].as_str().unwrap_or_default().to_owned()),
            (
                "tasks",
                format!(
                    "{} (concurrency {}, body {} bytes)",
                    report["tasks"], report["concurrency"], report["bodySize"]
                ),
            ),
            ("sent", report["sent"].to_string()),
            ("submit failures", report["submitFailures"].to_string()),
            ("results", report["results"].to_string()),
            ("lost", report["lost"].to_string()),
            ("duplicates", report["duplicates"].to_string()),
            ("redelivered", report["redelivered"].to_string()),
            (
                "latency",
                format!(
                    "p50 {}  p90 {}  p99 {}  max {}",
                    ms(&lat["p50"]),
                    ms(&lat["p90"]),
                    ms(&lat["p99"]),
                    ms(&lat["max"])
                ),
            ),
            (
                "tasks/s",
                format!("{:.1}", report["tasksPerSecond"].as_f64().unwrap_or(0.0)),
            ),
            (
                "submissions/s",
                format!("{:.1}", report["submitPerSecond"].as_f64().unwrap_or(0.0)),
            ),
            (
                "floor latency",
                format!(
                    "p50 {}  p90 {}  max {}  ({} samples)",
                    ms(&floor_lat["p50"]),
                    ms(&floor_lat["p90"]),
                    ms(&floor_lat["max"]),
                    floor["samples"]
                ),
            ),
            (
                "floor submissions/s",
                format!(
                    "{:.1} ({} bare messages)",
                    floor["submitPerSecond"].as_f64().unwrap_or(0.0),
                    floor["messages"]
                ),
            ),
            (
                "floor deliveries/s",
                match floor["deliverPerSecond"].as_f64() {
                    Some(rate) => format!(
                        "{rate:.1} ({} of {} seen; a task is three deliveries)",
                        floor["delivered"], floor["messages"]
                    ),
                    None => "-".to_owned(),
                },
            ),
            ("p50 over floor", ms(&report["overheadP50Ms"])),
        ];
        let mut text = String::new();
        for (key, value) in lines {
            text.push_str(&format!("{key:<20} {value}\n"));
        }
        let _ = output::write_stdout(text.as_bytes());
    }
}

/// Follows the dispatcher's mailbox: every push hint (or poll tick) reads `Email/changes` and
/// the headers of the new Inbox mail, noting bench results and floor samples.
async fn follow(
    mail: Arc<JmapClient>,
    inbox: String,
    mut cursor: String,
    mut hints: mpsc::Receiver<Hint>,
    seen: Arc<Mutex<Seen>>,
    notify: mpsc::UnboundedSender<()>,
) {
    let mut failures: u32 = 0;
    loop {
        match pass(&mail, &inbox, &cursor, &seen).await {
            Ok(next) => {
                cursor = next;
                failures = 0;
                let _ = notify.send(());
            }
            Err(error) if error.is_cannot_calculate_changes() => {
                tracing::warn!("the server cannot calculate changes; the bench may miss results");
                if let Ok(state) = mail.state().await {
                    cursor = state;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), failures, "cannot read the mailbox; will retry");
                tokio::time::sleep(
                    error
                        .retry_after()
                        .unwrap_or(Duration::from_millis(200 * u64::from(failures.min(25)))),
                )
                .await;
                continue;
            }
        }
        if hints.recv().await.is_none() {
            return;
        }
        while hints.try_recv().is_ok() {}
    }
}

async fn pass(
    mail: &JmapClient,
    inbox: &str,
    cursor: &str,
    seen: &Mutex<Seen>,
) -> Result<String, JmapError> {
    let changes = mail.changes(cursor).await?;
    for chunk in changes.created.chunks(CHUNK) {
        let fetched = mail.get_headers(chunk).await?;
        let at = Instant::now();
        let mut seen = lock(seen);
        for f in fetched.iter().filter(|f| f.mailbox_ids.contains(inbox)) {
            let headers = &f.inbound.headers;
            if headers.get(header::INTENT).map(str::trim) == Some("task.result") {
                if let Some(task_id) = headers.get(header::TASK_ID) {
                    let message_id = f.inbound.message_id.as_deref().unwrap_or_default();
                    seen.note_result(&f.id, task_id.trim(), message_id, at);
                }
                continue;
            }
            if let Some(subject) = &f.inbound.subject
                && let Some((_, when)) = seen.floor.get_mut(subject.trim())
                && when.is_none()
            {
                *when = Some(at);
            }
        }
    }
    Ok(changes.new_state)
}

/// Submits `mails` to `to` with `concurrency` in flight; `done(index, started)` after each
/// success. The number of failed submissions (each logged).
async fn pump(
    smtp: &Arc<SmtpSubmit>,
    account: &Account,
    to: &str,
    mails: Vec<Vec<u8>>,
    concurrency: usize,
    rate: Option<f64>,
    done: impl Fn(usize, Instant) + Send + Sync,
) -> Result<usize, Failure> {
    let next = AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    let failed = AtomicUsize::new(0);
    let fatal: Mutex<Option<Failure>> = Mutex::new(None);
    let envelope = SmtpEnvelope::new(account.email.clone(), [to.to_owned()]);
    let lane = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(bytes) = mails.get(i) else {
                return;
            };
            if lock(&fatal).is_some() {
                return;
            }
            if let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) {
                let due = Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(start + due).await;
            }
            let started = Instant::now();
            match smtp.send_raw(&envelope, bytes).await {
                Ok(()) => done(i, started),
                Err(error) if error.is_auth() => {
                    *lock(&fatal) = Some(Failure::of("send", &error, 77));
                    return;
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "a bench submission failed");
                }
            }
        }
    };
    futures_util::future::join_all((0..concurrency.max(1)).map(|_| lane())).await;
    if let Some(failure) = lock(&fatal).take() {
        return Err(failure);
    }
    Ok(failed.into_inner())
}

async fn submit(
    smtp: &SmtpSubmit,
    account: &Account,
    to: &str,
    bytes: &[u8],
) -> Result<(), Failure> {
    smtp.send_raw(
        &SmtpEnvelope::new(account.email.clone(), [to.to_owned()]),
        bytes,
    )
    .await
    .map_err(|e| Failure::of("send", &e, e.exit_code()))
}

/// A bare message from the account to itself.
fn bare(account: &Account, subject: &str) -> Vec<u8> {
    let me = Mailbox {
        name: None,
        email: account.email.clone(),
    };
    let now = crate::clock::now();
    Outbound {
        from: me.clone(),
        to: vec![me],
        cc: Vec::new(),
        subject: subject.to_owned(),
        date: now,
        message_id: crate::ids::message_id(now, &crate::ids::domain_of(&account.email)),
        in_reply_to: None,
        references: Vec::new(),
        extra_headers: Vec::new(),
        text: "taskmail bench: a bare message timing the server\n".to_owned(),
        json_part: None,
        attachments: Vec::new(),
    }
    .render()
}

/// `size` bytes of readable instructions (at least "bench").
fn filler(size: usize) -> String {
    const WORDS: &str = "the quick brown fox jumps over the lazy dog ";
    let mut text = String::from("bench ");
    while text.len() < size {
        text.push_str(WORDS);
    }
    text.truncate(size.max(5));
    text.trim_end().to_owned()
}

/// The `p`th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn latency_json(sorted: &[Duration]) -> Value {
    let at = |p: f64| percentile(sorted, p).map(millis);
    json!({
        "p50": at(50.0),
        "p90": at(90.0),
        "p99": at(99.0),
        "max": sorted.last().copied().map(millis),
    })
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn rate(count: usize, over: Duration) -> f64 {
    if over.is_zero() {
        return 0.0;
    }
    ((count as f64 / over.as_secs_f64()) * 10.0).round() / 10.0
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn usage(message: &str) -> Failure {
    Failure::new("usage", message, Exit::Usage)
}

/// A one-line progress bar on stderr, on a terminal only, at most every 100 ms.
#[derive(Debug)]
struct Progress {
    tty: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    fn show(&self, phase: &str, done: usize, total: usize, results: usize) {
        if !self.tty {
            return;
        }
        {
            let mut last = lock(&self.last);
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && done < total {
                return;
            }
            *last = Some(Instant::now());
        }
        const WIDTH: usize = 30;
        let filled = (done * WIDTH)
            .checked_div(total)
            .unwrap_or(WIDTH)
            .min(WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), " ".repeat(WIDTH - filled));
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{phase:<11} [{bar}] {done}/{total}  results {results}"
        );
        let _ = err.flush();
    }

    fn done(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&[], 50.0), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 1.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn filler_has_the_asked_size() {
        assert_eq!(
            filler(64).len(),
            64 - usize::from(filler(64).ends_with(' '))
        );
        assert!(filler(0).starts_with("bench"));
        assert!(filler(10_000).len() >= 9_990);
    }

    #[test]
    fn results_count_once_and_duplicates_apart() {
        let mut seen = Seen::default();
        seen.tasks.insert(
            "t1".to_owned(),
            TaskTimes {
                submitted: Some(Instant::now()),
                ..TaskTimes::default()
            },
        );
        seen.note_result("e1", "t1", "m1", Instant::now());
        seen.note_result("e1", "t1", "m1", Instant::now());
        seen.note_result("e2", "t1", "m1", Instant::now());
        seen.note_result("e3", "t1", "m2", Instant::now());
        seen.note_result("e4", "other", "m3", Instant::now());
        assert_eq!(seen.answered(), 1);
        assert_eq!(seen.results, 2);
        assert_eq!(seen.redelivered, 1);
    }

    #[test]
    fn rates_and_millis() {
        assert_eq!(rate(100, Duration::from_secs(2)), 50.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
        assert_eq!(millis(Duration::from_micros(1234)), 1.2);
    }
}
