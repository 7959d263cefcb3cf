//! The `processed` table: every inbound mail the daemon has handled, keyed by JMAP email id
//! and findable by Message-ID, so that a replayed batch (a crash before the JMAP state was
//! saved), a second copy of the same mail, or a replayed Message-ID is handled once
//! (`protocol/trust.md` point 4).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::error::sql;
use super::{PROCESSED_RETENTION, Store, StoreError, ms, msgid, tasks::TERMINAL_SQL};

impl Store {
    /// Records that the mail `email_id` of `account` was handled with `verdict` (`admitted`,
    /// `rejected:policy`, `ignored:not-aamp` …). `expires_at` is the mail's `Expires-At`: the
    /// row is kept at least until then (module docs, "Retention"). Marking the same mail again
    /// updates the verdict, keeps the first time and the later expiry.
    pub fn mark_processed(
        &self,
        account: &str,
        email_id: &str,
        message_id: Option<&str>,
        verdict: &str,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO processed (account, email_id, message_id, verdict, processed_at,
                     expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (account, email_id) DO UPDATE SET
                     message_id = COALESCE(excluded.message_id, message_id),
                     verdict = excluded.verdict,
                     expires_at = CASE
                         WHEN expires_at IS NULL THEN excluded.expires_at
                         WHEN excluded.expires_at IS NULL THEN expires_at
                         ELSE MAX(expires_at, excluded.expires_at) END",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    account,
                    email_id,
                    message_id.map(msgid),
                    verdict,
                    ms(now),
                    expires_at.map(ms),
                ])
            })
            .map(drop)
            .map_err(sql("mark a message processed"))
    }

    /// True when the mail `email_id` of `account` was handled.
    pub fn is_processed(&self, account: &str, email_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM processed WHERE account = ?1 AND email_id = ?2)",
            )
            .and_then(|mut stmt| stmt.query_row(params![account, email_id], |row| row.get(0)))
            .map_err(sql("look up a processed message"))
    }

    /// True when a mail with this Message-ID was handled for `account` (under any JMAP id:
    /// a copy, a redelivery, a replay).
    pub fn seen_message_id(&self, account: &str, message_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM processed WHERE account = ?1 AND message_id = ?2)",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![account, msgid(message_id)], |row| row.get(0))
            })
            .map_err(sql("look up a Message-ID"))
    }

    /// Forgets processed mail handled before `older_than` whose `Expires-At` is not after
    /// `now`; with `keep_ids_with_open_tasks`, also keeps mail whose Message-ID is in the
    /// thread of a task that is not terminal. `older_than` is clamped to at most
    /// `now - 7 days` ([`PROCESSED_RETENTION`]). Returns the rows removed.
    pub fn prune_processed(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
        keep_ids_with_open_tasks: bool,
    ) -> Result<usize, StoreError> {
        prune(&self.conn, older_than, now, keep_ids_with_open_tasks)
            .map_err(sql("prune processed messages"))
    }
}

/// [`Store::prune_processed`] on a connection or transaction.
pub(super) fn prune(
    conn: &Connection,
    older_than: DateTime<Utc>,
    now: DateTime<Utc>,
    keep_ids_with_open_tasks: bool,
) -> rusqlite::Result<usize> {
    let cutoff = older_than.min(now - PROCESSED_RETENTION);
    let keep_open = if keep_ids_with_open_tasks {
        format!(
            "AND NOT (processed.message_id IS NOT NULL AND EXISTS (
                 SELECT 1 FROM message_index m JOIN tasks t
                     ON t.account = m.account AND t.task_id = m.task_id AND t.role = m.role
                 WHERE m.account = processed.account AND m.message_id = processed.message_id
                     AND t.state NOT IN {TERMINAL_SQL}))"
        )
    } else {
        String::new()
    };
    conn.execute(
        &format!(
            "DELETE FROM processed
             WHERE processed_at < ?1 AND (expires_at IS NULL OR expires_at <= ?2) {keep_open}"
        ),
        params![ms(cutoff), ms(now)],
    )
}
