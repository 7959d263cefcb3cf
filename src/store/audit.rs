//! The `audit` table: one append-only row per trust verdict (`protocol/trust.md` point 3: the
//! Message-ID, the peer, the verdict and the rule; never the body).
//!
//! The API can only append and read. The schema backs that up: triggers abort every UPDATE and
//! DELETE on the table, whoever issues it, so the log is never pruned by the store.

use chrono::{DateTime, Utc};
use rusqlite::{Row, params};

use super::error::sql;
use super::{MAX_AUDIT_DETAIL_BYTES, Store, StoreError, cap, ms, msgid, time_at};

/// One verdict to log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub account: String,
    pub message_id: Option<String>,
    /// The normalised sender address the verdict is about.
    pub peer: Option<String>,
    /// `admitted`, `rejected`, `quarantined`, `ignored` …
    pub verdict: String,
    /// The rule that decided (`grant:alice@example.com`, `dmarc`, `expired` …).
    pub rule: Option<String>,
    /// A short explanation, at most [`MAX_AUDIT_DETAIL_BYTES`].
    /// Never a message body.
    pub detail: Option<String>,
}

/// A logged verdict with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Increases with every entry, never reused.
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.get(0)?,
        entry: AuditEntry {
            at: time_at(row, 1, "at")?,
            account: row.get(2)?,
            message_id: row.get(3)?,
            peer: row.get(4)?,
            verdict: row.get(5)?,
            rule: row.get(6)?,
            detail: row.get(7)?,
        },
    })
}

impl Store {
    /// Appends `entry` to the audit log; returns its id.
    pub fn audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let detail = entry
            .detail
            .as_deref()
            .map(|d| cap(d, MAX_AUDIT_DETAIL_BYTES).0);
        self.conn
            .prepare_cached(
                "INSERT INTO audit (at, account, message_id, peer, verdict, rule, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut stmt| {
                stmt.insert(params![
                    ms(entry.at),
                    entry.account,
                    entry.message_id.as_deref().map(msgid),
                    entry.peer,
                    entry.verdict,
                    entry.rule,
                    detail,
                ])
            })
            .map_err(sql("append to the audit log"))
    }

    /// The newest `limit` entries logged at or after `since` (all when `None`), oldest first.
    pub fn audit_list(
        &self,
        limit: usize,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let run = || -> rusqlite::Result<Vec<AuditRecord>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, at, account, message_id, peer, verdict, rule, detail FROM (
                     SELECT * FROM audit WHERE ?1 IS NULL OR at >= ?1
                     ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(
                params![since.map(ms), super::limit(Some(limit))],
                record_from_row,
            )?;
            rows.collect()
        };
        run().map_err(sql("read the audit log"))
    }

    /// The newest `limit` entries about `peer` (an address, or `*@domain` for every address
    /// of the domain; all peers when `None`), oldest first.
    pub fn audit_find(
        &self,
        limit: usize,
        peer: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (exact, domain) = match peer.map(|p| p.trim().to_lowercase()) {
            None => (None, None),
            Some(p) => match p.strip_prefix("*@") {
                Some(d) => (None, Some(format!("%@{}", d.replace(['%', '_'], "")))),
                None => (Some(p), None),
            },
        };
        let run = || -> rusqlite::Result<Vec<AuditRecord>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, at, account, message_id, peer, verdict, rule, detail FROM (
                     SELECT * FROM audit
                     WHERE (?1 IS NULL OR peer = ?1) AND (?2 IS NULL OR peer LIKE ?2)
                     ORDER BY id DESC LIMIT ?3)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(
                params![exact, domain, super::limit(Some(limit))],
                record_from_row,
            )?;
            rows.collect()
        };
        run().map_err(sql("read the audit log"))
    }
}
