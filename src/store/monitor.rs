//! The monitor tables (`protocol/asmtp.md`, "Monitor"): what a monitored send expects, the
//! delivery facts learnt from reports, and reports still to be read.
//!
//! Facts are keyed by envelope, recipient and fact, so a report read twice (a resync, two
//! processes on one store) records nothing new. They persist while the sender is offline: the
//! report waits in the sender's Inbox and the next sync turns it into a row here.

use rusqlite::{OptionalExtension as _, params};

use super::error::sql;
use super::{Store, StoreError};

/// One delivery fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorRow {
    /// The local account (config name) that sent the envelope.
    pub account: String,
    /// The envelope id.
    pub envelope_id: String,
    /// The recipient: a handle (`@owner.name`) or, for a plain address, the address.
    pub recipient: String,
    /// `stored`, `bounced` or `expired`.
    pub fact: String,
    /// The envelope's monitor (`mon_...`).
    pub monitor: String,
    /// When the fact was learnt (ms).
    pub at_ms: i64,
    /// The report's status code (`2.1.5`, `5.1.1`).
    pub status: Option<String>,
    /// The remote server's answer, if the report gave one.
    pub detail: Option<String>,
    /// The JMAP id of the report it came from.
    pub report_id: Option<String>,
}

impl Store {
    /// Notes that envelope `envelope_id` of `account` was sent with `monitor` to `recipients`
    /// (`(address, handle)` pairs, JSON-encoded by the caller).
    pub fn monitor_expect(
        &self,
        account: &str,
        envelope_id: &str,
        monitor: &str,
        recipients_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO monitor_expect (account, envelope_id, monitor, recipients, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account, envelope_id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    account,
                    envelope_id,
                    monitor,
                    recipients_json,
                    now_ms
                ])
            })
            .map(drop)
            .map_err(sql("note a monitored envelope"))
    }

    /// The monitor and recipients JSON noted for an envelope.
    pub fn monitor_expected(
        &self,
        account: &str,
        envelope_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT monitor, recipients FROM monitor_expect
                 WHERE account = ?1 AND envelope_id = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![account, envelope_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(sql("read a monitored envelope"))
    }

    /// Records a fact; false when the same envelope, recipient and fact was recorded before.
    pub fn monitor_record(&self, row: &MonitorRow) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO monitor_facts
                     (account, envelope_id, recipient, fact, monitor, at_ms, status, detail, report_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (account, envelope_id, recipient, fact) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row.account,
                    row.envelope_id,
                    row.recipient,
                    row.fact,
                    row.monitor,
                    row.at_ms,
                    row.status,
                    row.detail,
                    row.report_id,
                ])
            })
            .map(|n| n > 0)
            .map_err(sql("record a delivery fact"))
    }

    /// The facts of `account`, of one envelope or of all, oldest first.
    pub fn monitor_facts(
        &self,
        account: &str,
        envelope_id: Option<&str>,
    ) -> Result<Vec<MonitorRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT account, envelope_id, recipient, fact, monitor, at_ms, status, detail, report_id
                 FROM monitor_facts
                 WHERE account = ?1 AND (?2 IS NULL OR envelope_id = ?2)
                 ORDER BY at_ms, envelope_id, recipient, fact",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![account, envelope_id], |r| {
                    Ok(MonitorRow {
                        account: r.get(0)?,
                        envelope_id: r.get(1)?,
                        recipient: r.get(2)?,
                        fact: r.get(3)?,
                        monitor: r.get(4)?,
                        at_ms: r.get(5)?,
                        status: r.get(6)?,
                        detail: r.get(7)?,
                        report_id: r.get(8)?,
                    })
                })?
                .collect()
            })
            .map_err(sql("list delivery facts"))
    }

    /// Notes a delivery report whose parts are still to be read.
    pub fn monitor_pending_add(
        &self,
        account: &str,
        email_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO monitor_pending (account, email_id, seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account, email_id) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![account, email_id, now_ms]))
            .map(drop)
            .map_err(sql("note a delivery report"))
    }

    /// The reports of `account` still to be read (JMAP ids), oldest first, at most `limit`.
    pub fn monitor_pending(&self, account: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT email_id FROM monitor_pending WHERE account = ?1
                 ORDER BY seen_at, email_id LIMIT ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![account, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| r.get(0),
                )?
                .collect()
            })
            .map_err(sql("list delivery reports to read"))
    }

    /// Forgets a pending report (read, or gone).
    pub fn monitor_pending_done(&self, account: &str, email_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM monitor_pending WHERE account = ?1 AND email_id = ?2")
            .and_then(|mut stmt| stmt.execute(params![account, email_id]))
            .map(drop)
            .map_err(sql("forget a delivery report"))
    }
}
