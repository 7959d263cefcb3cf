//! The agent's mailbox index (`crate::mailbox`): admitted ASMTP envelopes as push frames, the
//! envelopes this account sent (idempotency), and the mailbox's own JMAP sync state.
//!
//! `created_at` is stamped here, at ingest: the caller's `now` in ms, raised to one more than
//! the account's newest row when the clock has not moved on (or went back), so the cursor
//! `(created_at, envelope_id)` is strictly increasing per account and never collides.

use rusqlite::{OptionalExtension, Row, params};

use super::error::sql;
use super::{Store, StoreError};
use crate::wire::asmtp::{EnvelopeId, Handle, PushFrame};

/// One row of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFrame {
    /// The frame, `created_at` filled from the row.
    pub frame: PushFrame,
    /// The JMAP id of the mail that carries it.
    pub email_id: String,
    /// Whether it has been read.
    pub seen: bool,
}

/// An envelope this account sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The account that sent it.
    pub account: String,
    /// Its id.
    pub envelope_id: EnvelopeId,
    /// SHA-256 (hex) of the envelope's canonical JSON with `date_ms` zeroed.
    pub body_hash: String,
    /// The Message-ID of the mail (no brackets).
    pub message_id: String,
    /// The recipients (to, then cc).
    pub recipients: Vec<Handle>,
    /// The envelope's `monitor`, when it asked for delivery facts.
    pub monitor: Option<String>,
    /// When it was first accepted (ms).
    pub created_at: i64,
}

fn decode<T: serde::de::DeserializeOwned>(idx: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn indexed(row: &Row<'_>) -> rusqlite::Result<IndexedFrame> {
    let text: String = row.get(0)?;
    let mut frame: PushFrame = decode(0, &text)?;
    frame.created_at = row.get(1)?;
    Ok(IndexedFrame {
        frame,
        email_id: row.get(2)?,
        seen: row.get::<_, i64>(3)? != 0,
    })
}

fn sent(row: &Row<'_>) -> rusqlite::Result<SentRecord> {
    let id: String = row.get(1)?;
    let recipients: String = row.get(4)?;
    Ok(SentRecord {
        account: row.get(0)?,
        envelope_id: EnvelopeId::parse(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        body_hash: row.get(2)?,
        message_id: row.get(3)?,
        recipients: decode(4, &recipients)?,
        created_at: row.get(5)?,
        monitor: row.get(6)?,
    })
}

const FRAME_COLUMNS: &str = "frame, created_at, email_id, seen";

impl Store {
    /// Indexes `frame` (its `created_at` is ignored and stamped here, see the module docs).
    /// Returns the stamped `created_at`, or `None` when the envelope is already indexed for
    /// `account` (nothing changes).
    pub fn mailbox_insert(
        &self,
        account: &str,
        frame: &PushFrame,
        email_id: &str,
        seen: bool,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let json = frame.to_json();
        self.write(|conn| {
            let exists: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM mailbox WHERE account = ?1 AND envelope_id = ?2",
                    params![account, frame.id.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Ok(None);
            }
            let newest: Option<i64> = conn.query_row(
                "SELECT MAX(created_at) FROM mailbox WHERE account = ?1",
                [account],
                |row| row.get(0),
            )?;
            let created_at = match newest {
                Some(n) if n >= now_ms => n + 1,
                _ => now_ms,
            };
            conn.execute(
                "INSERT INTO mailbox (account, envelope_id, email_id, from_handle, frame, created_at, seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    account,
                    frame.id.as_str(),
                    email_id,
                    frame.from.to_string(),
                    json,
                    created_at,
                    i64::from(seen)
                ],
            )?;
            Ok(Some(created_at))
        })
        .map_err(sql("index an envelope"))
    }

    /// A page of `account`'s index: rows strictly after `after` in the order (`desc`: before
    /// it, newest first), at most `limit`, optionally unread only.
    pub fn mailbox_page(
        &self,
        account: &str,
        after: Option<(i64, &str)>,
        limit: u32,
        unread_only: bool,
        desc: bool,
    ) -> Result<Vec<IndexedFrame>, StoreError> {
        let (cmp, order) = if desc { ("<", "DESC") } else { (">", "ASC") };
        let unread = if unread_only { " AND seen = 0" } else { "" };
        let (at, id) = match after {
            Some((at, id)) => (Some(at), Some(id)),
            None => (None, None),
        };
        let query = format!(
            "SELECT {FRAME_COLUMNS} FROM mailbox
             WHERE account = ?1{unread}
               AND (?2 IS NULL OR (created_at, envelope_id) {cmp} (?2, ?3))
             ORDER BY created_at {order}, envelope_id {order}
             LIMIT ?4"
        );
        let mut stmt = self
            .conn
            .prepare_cached(&query)
            .map_err(sql("list the mailbox"))?;
        let rows = stmt
            .query_map(params![account, at, id, i64::from(limit)], indexed)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql("list the mailbox"))?;
        Ok(rows)
    }

    /// One indexed envelope of `account`.
    pub fn mailbox_get(
        &self,
        account: &str,
        id: &EnvelopeId,
    ) -> Result<Option<IndexedFrame>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {FRAME_COLUMNS} FROM mailbox WHERE account = ?1 AND envelope_id = ?2"
                ),
                params![account, id.as_str()],
                indexed,
            )
            .optional()
            .map_err(sql("read the mailbox index"))
    }

    /// The envelope a JMAP email carries, if indexed for `account`.
    pub fn mailbox_by_email(
        &self,
        account: &str,
        email_id: &str,
    ) -> Result<Option<IndexedFrame>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {FRAME_COLUMNS} FROM mailbox WHERE account = ?1 AND email_id = ?2"
                ),
                params![account, email_id],
                indexed,
            )
            .optional()
            .map_err(sql("read the mailbox index"))
    }

    /// Sets the seen flag; true when the row exists.
    pub fn mailbox_set_seen(
        &self,
        account: &str,
        id: &EnvelopeId,
        seen: bool,
    ) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE mailbox SET seen = ?3 WHERE account = ?1 AND envelope_id = ?2",
                params![account, id.as_str(), i64::from(seen)],
            )
            .map(|n| n > 0)
            .map_err(sql("mark an envelope read"))
    }

    /// Points an indexed envelope at another JMAP email (the server re-numbered or the mail
    /// came again); true when the row exists.
    pub fn mailbox_set_email_id(
        &self,
        account: &str,
        id: &EnvelopeId,
        email_id: &str,
    ) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE mailbox SET email_id = ?3 WHERE account = ?1 AND envelope_id = ?2",
                params![account, id.as_str(), email_id],
            )
            .map(|n| n > 0)
            .map_err(sql("update the mailbox index"))
    }

    /// The senders of every indexed row with this envelope id (any account).
    pub fn mailbox_senders_of(&self, id: &EnvelopeId) -> Result<Vec<Handle>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT from_handle FROM mailbox WHERE envelope_id = ?1")
            .map_err(sql("read the mailbox index"))?;
        let rows = stmt
            .query_map([id.as_str()], |row| row.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql("read the mailbox index"))?;
        Ok(rows.iter().filter_map(|h| Handle::parse(h).ok()).collect())
    }

    /// How many envelopes `account` has indexed.
    pub fn mailbox_count(&self, account: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM mailbox WHERE account = ?1",
                [account],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(sql("count the mailbox"))
    }

    /// Every record of this envelope id sent by any local account.
    pub fn mailbox_sent_records(&self, id: &EnvelopeId) -> Result<Vec<SentRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT account, envelope_id, body_hash, message_id, recipients, created_at, monitor
                 FROM mailbox_sent WHERE envelope_id = ?1",
            )
            .map_err(sql("read the sent envelopes"))?;
        let rows = stmt
            .query_map([id.as_str()], sent)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql("read the sent envelopes"))?;
        Ok(rows)
    }

    /// Records a sent envelope. False (nothing changes) when the account already has it.
    pub fn mailbox_sent_put(&self, record: &SentRecord) -> Result<bool, StoreError> {
        let recipients =
            serde_json::to_string(&record.recipients).map_err(|source| StoreError::Encode {
                action: "encode the recipients of an envelope",
                source,
            })?;
        self.conn
            .execute(
                "INSERT INTO mailbox_sent (account, envelope_id, body_hash, message_id, recipients, created_at, monitor)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (account, envelope_id) DO NOTHING",
                params![
                    record.account,
                    record.envelope_id.as_str(),
                    record.body_hash,
                    record.message_id,
                    recipients,
                    record.created_at,
                    record.monitor
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("record a sent envelope"))
    }

    /// The mailbox's own JMAP Email state for `account`.
    pub fn mailbox_sync_state(&self, account: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT state FROM mailbox_sync WHERE account = ?1",
                [account],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("read the mailbox sync state"))
    }

    /// Saves the mailbox's JMAP Email state (after the batch it covers is indexed).
    pub fn set_mailbox_sync_state(
        &self,
        account: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO mailbox_sync (account, state, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                params![account, state, now_ms],
            )
            .map(|_| ())
            .map_err(sql("save the mailbox sync state"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::asmtp::TypeHint;

    fn frame(id: &str) -> PushFrame {
        PushFrame {
            id: EnvelopeId::parse(id).unwrap(),
            from: Handle::parse("@a.b").unwrap(),
            to: vec![Handle::parse("@c.d").unwrap()],
            cc: Vec::new(),
            subject: None,
            in_reply_to: None,
            type_hint: TypeHint::Text,
            size_hint: 3,
            created_at: 0,
            date_ms: 5,
        }
    }

    const IDS: [&str; 4] = [
        "01JDK3T8ZQ4W5X6Y7Z8A9B0C1D",
        "01JDK3T8ZQ4W5X6Y7Z8A9B0C1E",
        "01JDK3T8ZQ4W5X6Y7Z8A9B0C1F",
        "01JDK3T8ZQ4W5X6Y7Z8A9B0C1G",
    ];

    #[test]
    fn created_at_is_strictly_increasing_and_pages_have_no_gaps() {
        let s = Store::open_in_memory().unwrap();
        // Same clock for all, then a clock that went back.
        let a = s
            .mailbox_insert("x", &frame(IDS[0]), "e0", false, 1000)
            .unwrap();
        let b = s
            .mailbox_insert("x", &frame(IDS[1]), "e1", false, 1000)
            .unwrap();
        let c = s
            .mailbox_insert("x", &frame(IDS[2]), "e2", true, 900)
            .unwrap();
        assert_eq!((a, b, c), (Some(1000), Some(1001), Some(1002)));
        assert_eq!(
            s.mailbox_insert("x", &frame(IDS[0]), "e0", false, 2000)
                .unwrap(),
            None
        );
        // Another account has its own sequence.
        assert_eq!(
            s.mailbox_insert("y", &frame(IDS[3]), "e3", false, 10)
                .unwrap(),
            Some(10)
        );

        let p1 = s.mailbox_page("x", None, 2, false, false).unwrap();
        assert_eq!(p1.len(), 2);
        let last = &p1[1].frame;
        let p2 = s
            .mailbox_page(
                "x",
                Some((last.created_at, last.id.as_str())),
                2,
                false,
                false,
            )
            .unwrap();
        let ids: Vec<_> = p1
            .iter()
            .chain(p2.iter())
            .map(|r| r.frame.id.to_string())
            .collect();
        assert_eq!(ids, IDS[..3].to_vec());
        assert!(p2[0].seen);
        let unread = s.mailbox_page("x", None, 10, true, false).unwrap();
        assert_eq!(unread.len(), 2);
        let desc = s.mailbox_page("x", None, 10, false, true).unwrap();
        assert_eq!(desc[0].frame.id.as_str(), IDS[2]);
        assert_eq!(desc[0].frame.created_at, 1002);
        assert!(s.mailbox_set_seen("x", &frame(IDS[0]).id, true).unwrap());
        assert_eq!(s.mailbox_page("x", None, 10, true, false).unwrap().len(), 1);
        assert_eq!(s.mailbox_senders_of(&frame(IDS[0]).id).unwrap().len(), 1);
    }
}
