//! The `message_index` table: Message-ID -> TaskId for every mail of a task's thread, in both
//! directions, so that a reply that carries no AAMP headers (a human answering a help request)
//! finds its task through In-Reply-To and References (RFC 5322 §3.6.4,
//! [`crate::wire::thread::correlation_keys`]).

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::error::sql;
use super::tasks::Role;
use super::{Store, StoreError, ms, msgid, parsed_at, time_at};
use crate::wire::aamp::TaskId;

/// Whether we sent or received a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received.
    In,
    /// Sent (or queued to send).
    Out,
}

impl Direction {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// Reads a stored value.
    pub fn parse(value: &str) -> Option<Direction> {
        match value {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a task's thread.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreadEntry {
    /// Without angle brackets (they are stripped on the way in).
    pub message_id: String,
    /// `task.dispatch`, `task.result` …, or a label of the caller's for mail without an
    /// intent (`human.reply`).
    pub intent: String,
    pub direction: Direction,
    /// When it was sent or received.
    pub at: DateTime<Utc>,
}

impl Store {
    /// Adds `entry` to the thread of the task (account, `task_id`, `role`), and makes it the
    /// task's last Message-ID. The task must exist ([`Store::upsert_task`] first). Indexing
    /// the same Message-ID for the same role again changes nothing and returns false.
    pub fn index_message(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
        entry: &ThreadEntry,
    ) -> Result<bool, StoreError> {
        let message_id = msgid(&entry.message_id);
        let run = |tx: &Connection| -> rusqlite::Result<Option<bool>> {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM tasks
                     WHERE account = ?1 AND task_id = ?2 AND role = ?3)",
                params![account, task_id.as_str(), role.as_str()],
                |row| row.get(0),
            )?;
            if !exists {
                return Ok(None);
            }
            let inserted =
                tx.prepare_cached(
                    "INSERT INTO message_index (account, message_id, role, task_id, intent,
                         direction, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (account, message_id, role) DO NOTHING",
                )?
                .execute(params![
                    account,
                    message_id,
                    role.as_str(),
                    task_id.as_str(),
                    entry.intent,
                    entry.direction.as_str(),
                    ms(entry.at),
                ])? == 1;
            if inserted {
                tx.execute(
                    "UPDATE tasks SET last_message_id = ?4, updated_at = MAX(updated_at, ?5)
                     WHERE account = ?1 AND task_id = ?2 AND role = ?3",
                    params![
                        account,
                        task_id.as_str(),
                        role.as_str(),
                        message_id,
                        ms(entry.at)
                    ],
                )?;
            }
            Ok(Some(inserted))
        };
        match self.write(run).map_err(sql("index a message"))? {
            Some(inserted) => Ok(inserted),
            None => Err(StoreError::NoSuchTask {
                account: account.to_owned(),
                task_id: task_id.to_string(),
                role: role.as_str(),
                message_id,
            }),
        }
    }

    /// The task of the first of `ids` that is indexed, in the given order: pass
    /// [`correlation_keys`](crate::wire::thread::correlation_keys) (In-Reply-To, then
    /// References newest first). `role` narrows the search to one side; without it, when one
    /// Message-ID is indexed for both sides (a daemon that dispatches to itself), the worker
    /// side wins.
    pub fn task_for_message_ids(
        &self,
        account: &str,
        ids: &[String],
        role: Option<Role>,
    ) -> Result<Option<(TaskId, Role)>, StoreError> {
        let run = || -> rusqlite::Result<Option<(TaskId, Role)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT task_id, role FROM message_index
                 WHERE account = ?1 AND message_id = ?2 AND (?3 IS NULL OR role = ?3)
                 ORDER BY CASE role WHEN 'worker' THEN 0 ELSE 1 END
                 LIMIT 1",
            )?;
            for id in ids {
                let found = stmt
                    .query_row(params![account, msgid(id), role.map(Role::as_str)], |row| {
                        Ok((
                            TaskId::new(row.get::<_, String>(0)?),
                            parsed_at(row, 1, "role", Role::parse)?,
                        ))
                    })
                    .optional()?;
                if found.is_some() {
                    return Ok(found);
                }
            }
            Ok(None)
        };
        run().map_err(sql("look up a task by Message-ID"))
    }

    /// The thread of a task, oldest first.
    pub fn thread(
        &self,
        account: &str,
        task_id: &TaskId,
        role: Role,
    ) -> Result<Vec<ThreadEntry>, StoreError> {
        let run = || -> rusqlite::Result<Vec<ThreadEntry>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT message_id, intent, direction, at FROM message_index
                 WHERE account = ?1 AND task_id = ?2 AND role = ?3
                 ORDER BY at, rowid",
            )?;
            let rows =
                stmt.query_map(params![account, task_id.as_str(), role.as_str()], |row| {
                    Ok(ThreadEntry {
                        message_id: row.get(0)?,
                        intent: row.get(1)?,
                        direction: parsed_at(row, 2, "direction", Direction::parse)?,
                        at: time_at(row, 3, "at")?,
                    })
                })?;
            rows.collect()
        };
        run().map_err(sql("read a task's thread"))
    }
}
