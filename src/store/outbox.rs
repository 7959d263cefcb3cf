//! The `outbox` table: exactly-once sending (design.md "Outbound").
//!
//! The daemon renders a message (choosing its Message-ID), puts it here, submits it, and marks
//! it sent. The row is the commitment: after a crash between put and send, the same bytes go out
//! again under the same Message-ID, and receivers dedupe on it. Putting a Message-ID that is
//! already here changes nothing, so a re-render after a crash must send the stored bytes
//! ([`Store::outbox_get`]), not its own.

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::error::sql;
use super::{
    MAX_TEXT_BYTES, Store, StoreError, cap, count_at, ms, msgid, opt_time_at, parsed_at, time_at,
};
use crate::wire::aamp::TaskId;

/// Where an outbox row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Not yet accepted by the submission server; retried from `next_attempt_at`.
    Pending,
    /// Accepted by the submission server.
    Sent,
    /// Failed permanently; never retried.
    Dead,
}

impl OutboxStatus {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Dead => "dead",
        }
    }

    /// Reads a stored value.
    pub fn parse(value: &str) -> Option<OutboxStatus> {
        match value {
            "pending" => Some(OutboxStatus::Pending),
            "sent" => Some(OutboxStatus::Sent),
            "dead" => Some(OutboxStatus::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rendered message to queue ([`Store::outbox_put`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutgoingMessage<'a> {
    /// The Message-ID inside `bytes` (brackets are stripped).
    pub message_id: &'a str,
    /// The local account that sends it.
    pub account: &'a str,
    /// SMTP `MAIL FROM`.
    pub smtp_from: &'a str,
    /// SMTP `RCPT TO`, in order.
    pub rcpt_to: &'a [String],
    /// The RFC 5322 message.
    pub bytes: &'a [u8],
    pub task_id: Option<&'a TaskId>,
    /// `task.ack`, `task.result` …
    pub intent: &'a str,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub message_id: String,
    pub account: String,
    pub smtp_from: String,
    pub rcpt_to: Vec<String>,
    pub bytes: Vec<u8>,
    pub task_id: Option<TaskId>,
    pub intent: String,
    pub status: OutboxStatus,
    /// Failed submissions so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const OUTBOX_COLUMNS: &str = "message_id, account, smtp_from, rcpt_to, bytes, task_id, intent,
    status, attempts, last_error, created_at, next_attempt_at, sent_at";

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxItem> {
    let rcpt_to: String = row.get(3)?;
    let rcpt_to: Vec<String> = serde_json::from_str(&rcpt_to)
        .map_err(|_| super::unknown(3, "rcpt_to", rcpt_to.clone()))?;
    Ok(OutboxItem {
        message_id: row.get(0)?,
        account: row.get(1)?,
        smtp_from: row.get(2)?,
        rcpt_to,
        bytes: row.get(4)?,
        task_id: row.get::<_, Option<String>>(5)?.map(TaskId::new),
        intent: row.get(6)?,
        status: parsed_at(row, 7, "status", OutboxStatus::parse)?,
        attempts: count_at(row, 8)?,
        last_error: row.get(9)?,
        created_at: time_at(row, 10, "created_at")?,
        next_attempt_at: time_at(row, 11, "next_attempt_at")?,
        sent_at: opt_time_at(row, 12, "sent_at")?,
    })
}

/// The outbox's backlog ([`Store::outbox_backlog`]), for health reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxBacklog {
    /// Rows not yet accepted by the submission server.
    pub pending: u64,
    /// Rows that failed permanently (kept [`super::OUTBOX_DEAD_RETENTION`]).
    pub dead: u64,
    /// When the oldest pending row was queued.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Queues `message`, due at once. Idempotent on the Message-ID: when it is already queued
    /// (in any status) nothing changes and this returns false; the first bytes win.
    pub fn outbox_put(
        &self,
        message: &OutgoingMessage<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let rcpt_to =
            serde_json::to_string(message.rcpt_to).map_err(|source| StoreError::Encode {
                action: "encode the recipients of an outbox message",
                source,
            })?;
        self.conn
            .prepare_cached(
                "INSERT INTO outbox (message_id, account, smtp_from, rcpt_to, bytes, task_id,
                     intent, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (message_id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    msgid(message.message_id),
                    message.account,
                    message.smtp_from,
                    rcpt_to,
                    message.bytes,
                    message.task_id.map(TaskId::as_str),
                    message.intent,
                    ms(now),
                ])
            })
            .map(|n| n == 1)
            .map_err(sql("queue a message in the outbox"))
    }

    /// Pending messages due by `now`, oldest first, at most `limit`.
    pub fn outbox_pending(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let run = || -> rusqlite::Result<Vec<OutboxItem>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox
                 WHERE status = 'pending' AND next_attempt_at <= ?1
                 ORDER BY created_at, rowid LIMIT ?2"
            ))?;
            let rows =
                stmt.query_map(params![ms(now), super::limit(Some(limit))], item_from_row)?;
            rows.collect()
        };
        run().map_err(sql("read the outbox"))
    }

    /// Marks a pending message sent (the submission server accepted it). False when it is
    /// not pending (unknown, already sent, or dead).
    pub fn outbox_mark_sent(
        &self,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?2
                 WHERE message_id = ?1 AND status = 'pending'",
                params![msgid(message_id), ms(now)],
            )
            .map(|n| n == 1)
            .map_err(sql("mark an outbox message sent"))
    }

    /// Records a failed submission of a pending message: one more attempt, `error` as the last
    /// error (at most [`MAX_TEXT_BYTES`]), and either a retry at
    /// `next_attempt_at` or, when `permanent`, the dead status (never retried). False when the
    /// message is not pending.
    pub fn outbox_mark_failed(
        &self,
        message_id: &str,
        error: &str,
        permanent: bool,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (error, _) = cap(error, MAX_TEXT_BYTES);
        let status = if permanent {
            OutboxStatus::Dead
        } else {
            OutboxStatus::Pending
        };
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, status = ?3,
                     next_attempt_at = ?4
                 WHERE message_id = ?1 AND status = 'pending'",
                params![
                    msgid(message_id),
                    error,
                    status.as_str(),
                    ms(next_attempt_at)
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("record a failed submission"))
    }

    /// Pending and dead counts of `account`'s outbox (every account's with `None`), and the
    /// age of its oldest pending row.
    pub fn outbox_backlog(&self, account: Option<&str>) -> Result<OutboxBacklog, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0),
                        MIN(CASE WHEN status = 'pending' THEN created_at END)
                 FROM outbox WHERE ?1 IS NULL OR account = ?1",
                [account],
                |row| {
                    Ok(OutboxBacklog {
                        pending: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        dead: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        oldest_pending_at: opt_time_at(row, 2, "created_at")?,
                    })
                },
            )
            .map_err(sql("read the outbox backlog"))
    }

    /// Whether a `task.result` of `task_id` waits in the outbox (pending) for `account`.
    pub fn outbox_result_pending(&self, account: &str, task_id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM outbox WHERE status = 'pending' AND account = ?1
                     AND task_id = ?2 AND intent = 'task.result')",
                params![account, task_id],
                |row| row.get::<_, bool>(0),
            )
            .map_err(sql("read the outbox"))
    }

    /// The outbox row for a Message-ID, in any status.
    pub fn outbox_get(&self, message_id: &str) -> Result<Option<OutboxItem>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE message_id = ?1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row([msgid(message_id)], item_from_row)
                    .optional()
            })
            .map_err(sql("read an outbox message"))
    }
}
