//! The `quarantine` table: mail the injection scan held back (`protocol/trust.md` point 5).
//!
//! The daemon moves a high-risk mail to the quarantine mailbox and records it here as `held`,
//! with its risk and flags (JSON the caller chose; never the body). `taskmail quarantine
//! release` moves the mail back to the Inbox and makes the row `released`, in one transaction
//! with forgetting the mail's `processed` mark; the daemon looks for `released` rows on every
//! pass (a move is an update in `Email/changes`, not a creation), processes the mail once more
//! without the scan but through the gate, and makes the row `done`. `quarantine drop`
//! destroys the mail and makes the row `dropped`. Rows are kept (they are small) as the
//! operator's record next to the audit log.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::error::sql;
use super::{Store, StoreError, ms, msgid, parsed_at, time_at};

/// Where a quarantined mail stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineState {
    /// In the quarantine mailbox.
    Held,
    /// Released by the operator; the daemon has not taken it yet.
    Released,
    /// Released and taken by the daemon.
    Done,
    /// Destroyed by the operator.
    Dropped,
}

impl QuarantineState {
    /// `held`, `released`, `done`, `dropped`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineState::Held => "held",
            QuarantineState::Released => "released",
            QuarantineState::Done => "done",
            QuarantineState::Dropped => "dropped",
        }
    }

    fn parse(text: &str) -> Option<QuarantineState> {
        Some(match text {
            "held" => QuarantineState::Held,
            "released" => QuarantineState::Released,
            "done" => QuarantineState::Done,
            "dropped" => QuarantineState::Dropped,
            _ => return None,
        })
    }
}

/// One quarantined mail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    /// The local account.
    pub account: String,
    /// The JMAP id of the mail.
    pub email_id: String,
    /// Its Message-ID, without brackets.
    pub message_id: Option<String>,
    /// Its header From.
    pub sender: Option<String>,
    /// Its Subject.
    pub subject: Option<String>,
    /// The scan's overall risk (`high`).
    pub risk: String,
    /// The scan's flags, as JSON.
    pub flags: String,
    /// Where it stands.
    pub state: QuarantineState,
    /// When it was quarantined.
    pub quarantined_at: DateTime<Utc>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "account, email_id, message_id, sender, subject, risk, flags, state,
    quarantined_at, updated_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Quarantined> {
    Ok(Quarantined {
        account: row.get(0)?,
        email_id: row.get(1)?,
        message_id: row.get(2)?,
        sender: row.get(3)?,
        subject: row.get(4)?,
        risk: row.get(5)?,
        flags: row.get(6)?,
        state: parsed_at(row, 7, "quarantine.state", QuarantineState::parse)?,
        quarantined_at: time_at(row, 8, "quarantine.quarantined_at")?,
        updated_at: time_at(row, 9, "quarantine.updated_at")?,
    })
}

impl Store {
    /// Records a mail as held in quarantine (again `held` if it was quarantined before).
    pub fn quarantine_hold(&self, entry: &Quarantined) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO quarantine ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'held', ?8, ?9)
                 ON CONFLICT (account, email_id) DO UPDATE SET
                     risk = excluded.risk, flags = excluded.flags, state = 'held',
                     updated_at = excluded.updated_at"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    entry.account,
                    entry.email_id,
                    entry.message_id.as_deref().map(msgid),
                    entry.sender,
                    entry.subject,
                    entry.risk,
                    entry.flags,
                    ms(entry.quarantined_at),
                    ms(entry.updated_at),
                ])
            })
            .map(drop)
            .map_err(sql("record a quarantined message"))
    }

    /// The quarantine row of one mail.
    pub fn quarantine_get(
        &self,
        account: &str,
        email_id: &str,
    ) -> Result<Option<Quarantined>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM quarantine WHERE account = ?1 AND email_id = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![account, email_id], from_row)
                    .optional()
            })
            .map_err(sql("read a quarantined message"))
    }

    /// The rows of `account` in `state` (every state when `None`), oldest first.
    pub fn quarantine_list(
        &self,
        account: &str,
        state: Option<QuarantineState>,
    ) -> Result<Vec<Quarantined>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM quarantine
                 WHERE account = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY quarantined_at, email_id"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![account, state.map(QuarantineState::as_str)],
                    from_row,
                )?
                .collect()
            })
            .map_err(sql("list quarantined messages"))
    }

    /// Moves a row from one of `from` to `to`; false when it is in none of them (or absent).
    /// Releasing (`to` = `released`) also forgets the mail's `processed` mark, so that the
    /// daemon handles it again.
    pub fn quarantine_transition(
        &self,
        account: &str,
        email_id: &str,
        from: &[QuarantineState],
        to: QuarantineState,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.atomically(|s| {
            let current = s.quarantine_get(account, email_id)?;
            let Some(current) = current.filter(|c| from.contains(&c.state)) else {
                return Ok(false);
            };
            s.conn
                .prepare_cached(
                    "UPDATE quarantine SET state = ?3, updated_at = ?4
                     WHERE account = ?1 AND email_id = ?2",
                )
                .and_then(|mut stmt| stmt.execute(params![account, email_id, to.as_str(), ms(now)]))
                .map_err(sql("update a quarantined message"))?;
            if to == QuarantineState::Released {
                s.conn
                    .prepare_cached("DELETE FROM processed WHERE account = ?1 AND email_id = ?2")
                    .and_then(|mut stmt| stmt.execute(params![account, current.email_id]))
                    .map_err(sql("forget a released message"))?;
            }
            Ok(true)
        })
    }
}
