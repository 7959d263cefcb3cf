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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Clock, Db};
use crate::store::{Store, StoreError};
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
