//! What a running pipeline leaves for other processes to read: who serves an account (the lock
//! file) and what its push channel is doing (a `kv` row of the store). `taskmail doctor` reads
//! both; `taskmail dispatch --wait` reads the lock to decide whether it runs the pipeline
//! itself or follows the store of a daemon that already does.
//!
//! # The lock file
//!
//! `<state-dir>/worker-<account>.lock` holds an advisory lock ([`std::fs::File::try_lock`],
//! released by the kernel when the holder exits or dies) taken by whichever process runs the
//! inbound pipeline of the account: `taskmail run`, or the dispatcher-only pipeline of a
//! waiting `taskmail dispatch --wait`. The holder writes `<pid> <holder>` into the file
//! (`run` or `dispatch`); [`lock_holder`] probes the lock without waiting and reads that line.
//!
//! # Push status
//!
//! [`record_push_status`] writes the push supervisor's status as JSON to the `kv` key
//! [`push_status_key`] whenever the channel changes, and at most every
//! [`PUSH_STATUS_EVERY`] otherwise (hint counts and pings change all the time).
//!
//! # Health
//!
//! A running `taskmail run` keeps a [`Health`] (fed by the inbound loop after every pass over
//! the mailbox and by the outbox after every submission) and writes
//! `<state-dir>/health-<account>.json` ([`health_path`], a [`DaemonHealth`]) every
//! [`HEALTH_EVERY`]: the push channel (connected or
//! polling, since when, reconnects, last error), the last successful mailbox sync and the last
//! JMAP error, the last submission and the last SMTP error, the outbox backlog (pending and
//! dead rows, oldest pending age) and the run queue. `taskmail doctor` reads it
//! ([`read_health`]) and judges it with [`DaemonHealth::problems`]; the daemon logs the same
//! judgement: a `warn` line when a problem appears or changes, an `info` line when it clears,
//! and an `info` summary every [`HEALTH_LOG_EVERY`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Clock, Core, Db};
use crate::store::{OutboxBacklog, Store, StoreError};
use crate::transport::PushStatus;

/// How often an unchanged push channel's counters are written to the store.
pub const PUSH_STATUS_EVERY: Duration = Duration::from_secs(15);

/// The lock file of an account's pipeline.
pub fn lock_path(state_dir: &Path, account: &str) -> PathBuf {
    state_dir.join(format!("worker-{account}.lock"))
}

/// Writes `<pid> <holder>` into a lock file just taken (best effort: the lock is what counts).
pub(crate) fn write_holder(file: &std::fs::File, holder: &str) {
    let mut file = file;
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{} {holder}", std::process::id()));
}

/// Who holds an account's pipeline lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    /// The holder's process id, when it wrote one.
    pub pid: Option<u32>,
    /// `run` (the worker daemon), `dispatch` (a waiting `taskmail dispatch`), or `unknown`.
    pub kind: String,
    /// The lock file.
    pub path: PathBuf,
}

impl LockHolder {
    /// `taskmail run (pid 42)`, for messages.
    pub fn describe(&self) -> String {
        let what = match self.kind.as_str() {
            "run" => "taskmail run",
            "dispatch" => "taskmail dispatch --wait",
            _ => "another taskmail process",
        };
        match self.pid {
            Some(pid) => format!("{what} (pid {pid})"),
            None => what.to_owned(),
        }
    }
}

/// Who holds the pipeline lock of `account`, if anyone: probes the lock without waiting (a
/// shared lock taken and dropped at once) and reads the holder line.
pub fn lock_holder(state_dir: &Path, account: &str) -> Option<LockHolder> {
    let path = lock_path(state_dir, account);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut words = text.split_whitespace();
            let pid = words.next().and_then(|p| p.parse().ok());
            let kind = words.next().unwrap_or("unknown").to_owned();
            Some(LockHolder { pid, kind, path })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The `kv` key of an account's push status.
pub fn push_status_key(account: &str) -> String {
    format!("push-status/{account}")
}

/// The push status as stored (what `taskmail doctor` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPushStatus {
    /// The configured mode (`auto`, `websocket`, `eventsource`, `poll`).
    pub mode: String,
    /// Where hints come from now: `websocket`, `eventsource` or `poll`.
    pub channel: String,
    pub connected_since: Option<chrono::DateTime<chrono::Utc>>,
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
    pub disconnects: u64,
    pub hints: u64,
    /// When this was written.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The process that wrote it.
    pub pid: u32,
}

impl StoredPushStatus {
    fn of(status: &PushStatus, now: chrono::DateTime<chrono::Utc>) -> StoredPushStatus {
        StoredPushStatus {
            mode: format!("{:?}", status.mode).to_ascii_lowercase(),
            channel: status.channel.to_string(),
            connected_since: status.connected_since,
            last_event_at: status.last_event_at,
            last_error: status.last_error.clone(),
            last_error_at: status.last_error_at,
            disconnects: status.disconnects,
            hints: status.hints,
            recorded_at: now,
            pid: std::process::id(),
        }
    }
}

/// The push status an account's pipeline last recorded, if any.
pub fn read_push_status(
    store: &Store,
    account: &str,
) -> Result<Option<StoredPushStatus>, StoreError> {
    Ok(store
        .kv_get(&push_status_key(account))?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// Writes the push status to the store while the supervisor runs (module docs).
pub(crate) async fn record_push_status(
    db: Db,
    account: String,
    mut status: watch::Receiver<PushStatus>,
    clock: Clock,
) {
    let key = push_status_key(&account);
    let mut written: Option<(PushStatus, tokio::time::Instant)> = None;
    loop {
        let current = status.borrow_and_update().clone();
        let due = match &written {
            None => true,
            Some((last, at)) => {
                last.channel != current.channel
                    || last.connected_since != current.connected_since
                    || last.last_error != current.last_error
                    || last.disconnects != current.disconnects
                    || at.elapsed() >= PUSH_STATUS_EVERY
            }
        };
        if due {
            let stored = StoredPushStatus::of(&current, clock());
            if let Ok(text) = serde_json::to_string(&stored) {
                let now = clock();
                if let Err(error) = db.with(|s| s.kv_set(&key, &text, now)) {
                    tracing::debug!(error = %error, "cannot record the push status");
                }
            }
            written = Some((current, tokio::time::Instant::now()));
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(PUSH_STATUS_EVERY) => {}
        }
    }
}

/// How often a running daemon rewrites its health file.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How often the daemon logs a health summary when nothing changes.
pub const HEALTH_LOG_EVERY: Duration = Duration::from_secs(300);
/// An outbox row pending longer than this is a problem.
pub const OUTBOX_STUCK_AFTER: Duration = Duration::from_secs(300);

/// The health file of an account's daemon.
pub fn health_path(state_dir: &Path, account: &str) -> PathBuf {
    state_dir.join(format!("health-{account}.json"))
}

/// What the inbound loop and the outbox saw last (kept in memory by the daemon).
#[derive(Debug, Default)]
pub struct Health {
    state: std::sync::Mutex<HealthEvents>,
}

/// The timestamps and errors a [`Health`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthEvents {
    /// The last pass over the mailbox that succeeded (`Email/changes` and processing).
    pub last_sync_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last failed pass and its error (a JMAP error, or the store).
    pub last_sync_error: Option<String>,
    /// When that pass failed.
    pub last_sync_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed passes in a row (0 after a success).
    pub sync_failures: u64,
    /// The last message the submission server accepted.
    pub last_submit_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last failed submission and its error.
    pub last_smtp_error: Option<String>,
    /// When that submission failed.
    pub last_smtp_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last claim write the server took (lease keywords on a mail).
    pub last_claim_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last claim write the server refused, and why.
    pub last_claim_error: Option<String>,
    /// When that claim write was refused.
    pub last_claim_error_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Health {
    fn update(&self, change: impl FnOnce(&mut HealthEvents)) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut state);
    }

    /// A pass over the mailbox succeeded.
    pub fn synced(&self, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| {
            s.last_sync_at = Some(at);
            s.sync_failures = 0;
        });
    }

    /// A pass over the mailbox failed with `error` (its whole chain, no secrets).
    pub fn sync_failed(&self, error: &str, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| {
            s.last_sync_error = Some(capped(error));
            s.last_sync_error_at = Some(at);
            s.sync_failures = s.sync_failures.saturating_add(1);
        });
    }

    /// The submission server accepted a message.
    pub fn submitted(&self, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| s.last_submit_at = Some(at));
    }

    /// A submission failed with `error`.
    pub fn submit_failed(&self, error: &str, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| {
            s.last_smtp_error = Some(capped(error));
            s.last_smtp_error_at = Some(at);
        });
    }

    /// The server took a claim write.
    pub fn claimed(&self, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| s.last_claim_at = Some(at));
    }

    /// The server refused a claim write with `error`.
    pub fn claim_failed(&self, error: &str, at: chrono::DateTime<chrono::Utc>) {
        self.update(|s| {
            s.last_claim_error = Some(capped(error));
            s.last_claim_error_at = Some(at);
        });
    }

    /// Records the outcome of a pass over the mailbox.
    pub(crate) fn note_sync<E: std::error::Error>(
        &self,
        outcome: &Result<(), E>,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        match outcome {
            Ok(()) => self.synced(at),
            Err(error) => self.sync_failed(&crate::transport::smtp::error_chain(error), at),
        }
    }

    /// Records the outcome of a submission.
    pub(crate) fn note_submit<E: std::error::Error>(
        &self,
        outcome: &Result<(), E>,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        match outcome {
            Ok(()) => self.submitted(at),
            Err(error) => self.submit_failed(&crate::transport::smtp::error_chain(error), at),
        }
    }

    /// A copy of what was seen.
    pub fn events(&self) -> HealthEvents {
        match self.state.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// An error text cut to 1 KiB on a character boundary.
fn capped(error: &str) -> String {
    error[..error.floor_char_boundary(1024)].to_owned()
}

/// The run queue, for health reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueHealth {
    /// Tasks running now.
    pub running: u64,
    /// Tasks waiting for a run slot.
    pub queued: u64,
}

/// The health file (module docs, "Health").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonHealth {
    /// The account's config name.
    pub account: String,
    /// The daemon's process id.
    pub pid: u32,
    /// When the daemon started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When this was written.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The push channel, when the daemon runs a push supervisor.
    pub push: Option<StoredPushStatus>,
    /// What the inbound loop and the outbox saw last (flattened into the file).
    #[serde(flatten)]
    pub events: HealthEvents,
    /// The account's outbox backlog.
    pub outbox: OutboxBacklog,
    /// The run queue.
    pub queue: QueueHealth,
}

impl DaemonHealth {
    /// The push channel's reconnects (channels lost).
    pub fn reconnects(&self) -> u64 {
        self.push.as_ref().map_or(0, |p| p.disconnects)
    }

    /// `push websocket since ...` or `polling`, for messages.
    pub fn channel(&self) -> String {
        match &self.push {
            Some(p) if p.channel != "poll" => format!("push via {}", p.channel),
            Some(p) if p.mode != "poll" && p.disconnects > 0 => "polling (push down)".to_owned(),
            Some(p) if p.mode != "poll" && p.last_error.is_some() => {
                "polling (push unavailable)".to_owned()
            }
            _ => "polling".to_owned(),
        }
    }

    /// What is wrong, one sentence each; empty when healthy. `now` judges ages. Push that never
    /// connected (the server offers none that works) is no problem here: polling is the plan,
    /// and `taskmail doctor`'s push check says so; a channel that was lost and is not back is.
    pub fn problems(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(push) = &self.push
            && push.channel == "poll"
            && push.mode != "poll"
            && push.disconnects > 0
            && let Some(error) = &push.last_error
        {
            problems.push(format!(
                "push is down, polling meanwhile ({} reconnect(s)); last push error: {error}",
                push.disconnects
            ));
        }
        let e = &self.events;
        if let Some(failed_at) = e.last_sync_error_at
            && e.sync_failures > 0
            && e.last_sync_at.is_none_or(|ok| ok < failed_at)
        {
            problems.push(format!(
                "the mailbox cannot be read: {} failed pass(es) in a row, last at {}: {}",
                e.sync_failures,
                failed_at.format("%Y-%m-%d %H:%M:%S"),
                e.last_sync_error.as_deref().unwrap_or("unknown error")
            ));
        }
        if let Some(failed_at) = e.last_smtp_error_at
            && self.outbox.pending > 0
            && e.last_submit_at.is_none_or(|ok| ok < failed_at)
        {
            problems.push(format!(
                "submission is failing (last at {}): {}",
                failed_at.format("%Y-%m-%d %H:%M:%S"),
                e.last_smtp_error.as_deref().unwrap_or("unknown error")
            ));
        }
        if let Some(failed_at) = e.last_claim_error_at
            && e.last_claim_at.is_none_or(|ok| ok < failed_at)
        {
            let error = e.last_claim_error.as_deref().unwrap_or("unknown error");
            let hint = if error.to_ascii_lowercase().contains("flags") {
                " (the mailbox has no room for more keyword names: remove keywords other \
                 clients left on its mail, or serve the worker from a new mailbox)"
            } else {
                ""
            };
            problems.push(format!(
                "the server refuses claims (lease keywords), last at {}: {error}{hint}",
                failed_at.format("%Y-%m-%d %H:%M:%S"),
            ));
        }
        if let Some(oldest) = self.outbox.oldest_pending_at {
            let age = (now - oldest).to_std().unwrap_or_default();
            if age >= OUTBOX_STUCK_AFTER {
                problems.push(format!(
                    "{} outbox message(s) pending, the oldest for {}",
                    self.outbox.pending,
                    crate::config::format_duration(Duration::from_secs(age.as_secs()))
                ));
            }
        }
        if self.outbox.dead > 0 {
            problems.push(format!(
                "{} outbox message(s) dead-lettered (refused permanently; see `taskmail audit`)",
                self.outbox.dead
            ));
        }
        problems
    }

    /// One line: channel, last sync, backlog, queue, reconnects.
    pub fn summary(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let ago = |at: Option<chrono::DateTime<chrono::Utc>>| match at {
            Some(at) => format!(
                "{} ago",
                crate::config::format_duration(Duration::from_secs(
                    (now - at).to_std().unwrap_or_default().as_secs()
                ))
            ),
            None => "never".to_owned(),
        };
        format!(
            "{}, {} reconnect(s); last sync {}; outbox {} pending, {} dead; {} running, {} queued",
            self.channel(),
            self.reconnects(),
            ago(self.events.last_sync_at),
            self.outbox.pending,
            self.outbox.dead,
            self.queue.running,
            self.queue.queued
        )
    }
}

/// The health file an account's daemon last wrote, if any (and if it parses).
pub fn read_health(state_dir: &Path, account: &str) -> Option<DaemonHealth> {
    let text = std::fs::read_to_string(health_path(state_dir, account)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `health` to its file atomically (a temporary file renamed over it).
fn write_health(state_dir: &Path, health: &DaemonHealth) -> std::io::Result<()> {
    let path = health_path(state_dir, &health.account);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(health).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Collects the daemon's health now.
pub(crate) fn collect<M, S, A>(
    core: &Core<M, S, A>,
    push: Option<&watch::Receiver<PushStatus>>,
    started_at: chrono::DateTime<chrono::Utc>,
) -> DaemonHealth {
    let now = core.now();
    let outbox = core
        .db
        .with(|s| s.outbox_backlog(Some(&core.key)))
        .unwrap_or_else(|error| {
            tracing::debug!(error = %error, "cannot read the outbox backlog");
            OutboxBacklog::default()
        });
    DaemonHealth {
        account: core.key.clone(),
        pid: std::process::id(),
        started_at,
        recorded_at: now,
        push: push.map(|p| StoredPushStatus::of(&p.borrow(), now)),
        events: core.health.events(),
        outbox,
        queue: QueueHealth {
            running: u64::try_from(core.queue.running()).unwrap_or(u64::MAX),
            queued: u64::try_from(core.queue.len()).unwrap_or(u64::MAX),
        },
    }
}

/// Writes the health file every [`HEALTH_EVERY`] and logs changes of the judgement (module
/// docs); lives (and dies) with the daemon.
pub(crate) async fn report_health<M, S, A>(
    core: std::sync::Arc<Core<M, S, A>>,
    push: Option<watch::Receiver<PushStatus>>,
) {
    let started_at = core.now();
    let state_dir = core.settings.state_dir.clone();
    let mut last_problems: Vec<String> = Vec::new();
    let mut last_summary = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let health = collect(&core, push.as_ref(), started_at);
        if let Err(error) = write_health(&state_dir, &health) {
            tracing::debug!(error = %error, "cannot write the health file");
        }
        let now = health.recorded_at;
        let problems = health.problems(now);
        if problems != last_problems {
            if problems.is_empty() {
                tracing::info!(health = %health.summary(now), "healthy again");
            } else {
                tracing::warn!(health = %health.summary(now), problems = %problems.join("; "), "unhealthy");
            }
            last_problems = problems;
            last_summary = tokio::time::Instant::now();
        } else if last_summary.elapsed() >= HEALTH_LOG_EVERY {
            tracing::info!(health = %health.summary(now), problems = last_problems.len(), "health");
            last_summary = tokio::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_found_and_described() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lock_holder(dir.path(), "a"), None);
        let file = super::super::lock(dir.path(), "a", "dispatch").unwrap();
        let holder = lock_holder(dir.path(), "a").unwrap();
        assert_eq!(holder.kind, "dispatch");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(
            holder
                .describe()
                .starts_with("taskmail dispatch --wait (pid ")
        );
        assert!(matches!(
            super::super::lock(dir.path(), "a", "run"),
            Err(super::super::DaemonError::Locked { .. })
        ));
        drop(file);
        assert_eq!(lock_holder(dir.path(), "a"), None);
        let _again = super::super::lock(dir.path(), "a", "run").unwrap();
        assert_eq!(lock_holder(dir.path(), "a").unwrap().kind, "run");
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone as _, Utc};

    fn at(secs: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn push(channel: &str, error: Option<&str>) -> StoredPushStatus {
        StoredPushStatus {
            mode: "auto".to_owned(),
            channel: channel.to_owned(),
            connected_since: (channel != "poll").then(|| at(0)),
            last_event_at: None,
            last_error: error.map(str::to_owned),
            last_error_at: error.map(|_| at(5)),
            disconnects: 3,
            hints: 10,
            recorded_at: at(10),
            pid: 1,
        }
    }

    fn healthy(health: &Health) -> DaemonHealth {
        DaemonHealth {
            account: "worker".to_owned(),
            pid: 1,
            started_at: at(0),
            recorded_at: at(10),
            push: Some(push("websocket", None)),
            events: health.events(),
            outbox: OutboxBacklog::default(),
            queue: QueueHealth::default(),
        }
    }

    #[test]
    fn problems_come_and_go_with_what_the_daemon_saw() {
        let health = Health::default();
        health.synced(at(1));
        health.submitted(at(2));
        let report = healthy(&health);
        assert!(
            report.problems(at(10)).is_empty(),
            "{:?}",
            report.problems(at(10))
        );
        assert_eq!(report.reconnects(), 3);
        assert!(
            report.summary(at(10)).starts_with(
                "push via websocket, 3 reconnect(s); last sync 9s ago; outbox 0 pending, 0 dead"
            ),
            "{}",
            report.summary(at(10))
        );

        // The mailbox cannot be read: a problem until the next good pass.
        health.note_sync(&Err(std::io::Error::other("503 from the server")), at(3));
        health.note_sync(&Err(std::io::Error::other("503 from the server")), at(4));
        let problems = healthy(&health).problems(at(10));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("2 failed pass(es)") && problems[0].contains("503"));
        health.note_sync::<std::io::Error>(&Ok(()), at(6));
        assert!(healthy(&health).problems(at(10)).is_empty());
        assert_eq!(health.events().sync_failures, 0);
        assert_eq!(health.events().last_sync_at, Some(at(6)));

        // Refused claims (Cyrus out of keyword names) are a problem until a claim is taken.
        health.claim_failed("serverFail: Too many user flags in mailbox", at(6));
        let problems = healthy(&health).problems(at(10));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("refuses claims")
                && problems[0].contains("no room for more keyword names"),
            "{problems:?}"
        );
        health.claimed(at(6));
        assert!(healthy(&health).problems(at(10)).is_empty());

        // Submission failing matters while something waits in the outbox.
        health.note_submit(&Err(std::io::Error::other("451 4.3.0 try later")), at(7));
        assert!(
            healthy(&health).problems(at(10)).is_empty(),
            "nothing pending"
        );
        let mut report = healthy(&health);
        report.outbox = OutboxBacklog {
            pending: 2,
            dead: 0,
            oldest_pending_at: Some(at(7)),
        };
        let problems = report.problems(at(10));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("451"), "{problems:?}");
        // ... and stops mattering once a later message went out, unless the oldest waits long.
        health.submitted(at(8));
        report.events = health.events();
        assert!(report.problems(at(10)).is_empty());
        let late = at(7) + TimeDelta::minutes(6);
        let problems = report.problems(late);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("2 outbox message(s) pending, the oldest for 6m"),
            "{problems:?}"
        );

        // Dead letters and a dead push channel.
        report.outbox.pending = 0;
        report.outbox.oldest_pending_at = None;
        report.outbox.dead = 1;
        report.push = Some(push("poll", Some("connection reset")));
        let problems = report.problems(at(10));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("push is down, polling meanwhile (3 reconnect(s))"));
        assert!(problems[1].contains("1 outbox message(s) dead-lettered"));
        assert_eq!(report.channel(), "polling (push down)");
        // A server without working push: polling is the plan, not a problem.
        report.outbox.dead = 0;
        let mut never = push("poll", Some("the eventSourceUrl answered 204"));
        never.disconnects = 0;
        report.push = Some(never);
        assert!(report.problems(at(10)).is_empty());
        assert_eq!(report.channel(), "polling (push unavailable)");
    }

    #[test]
    fn the_health_file_round_trips_and_carries_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::default();
        health.sync_failed(&"x".repeat(5000), at(1));
        let report = healthy(&health);
        assert_eq!(report.events.last_sync_error.as_ref().unwrap().len(), 1024);
        write_health(dir.path(), &report).unwrap();
        assert_eq!(read_health(dir.path(), "worker"), Some(report));
        let text = std::fs::read_to_string(health_path(dir.path(), "worker")).unwrap();
        assert!(
            text.contains("\"lastSyncError\""),
            "camelCase, flattened: {text}"
        );
        assert!(!text.contains("password"));
        assert_eq!(read_health(dir.path(), "other"), None);
    }

    #[test]
    fn the_outbox_backlog_counts_per_account() {
        let store = Store::open_in_memory().unwrap();
        let rcpt = vec!["b@x.test".to_owned()];
        for (id, account, when) in [("m1", "worker", 1), ("m2", "worker", 2), ("m3", "other", 0)] {
            store
                .outbox_put(
                    &crate::store::OutgoingMessage {
                        message_id: id,
                        account,
                        smtp_from: "a@x.test",
                        rcpt_to: &rcpt,
                        bytes: b"x",
                        task_id: None,
                        intent: "task.result",
                    },
                    at(when),
                )
                .unwrap();
        }
        store
            .outbox_mark_failed("m1", "550 no", true, at(3))
            .unwrap();
        let backlog = store.outbox_backlog(Some("worker")).unwrap();
        assert_eq!(
            backlog,
            OutboxBacklog {
                pending: 1,
                dead: 1,
                oldest_pending_at: Some(at(2))
            }
        );
        let all = store.outbox_backlog(None).unwrap();
        assert_eq!(
            (all.pending, all.dead, all.oldest_pending_at),
            (2, 1, Some(at(0)))
        );
        assert_eq!(
            Store::open_in_memory()
                .unwrap()
                .outbox_backlog(None)
                .unwrap(),
            OutboxBacklog::default()
        );
    }
}
