//! The versioned schema: an ordered list of migrations, applied by [`migrate`] from the file's
//! `PRAGMA user_version` up to [`MIGRATIONS`]`.len()`.
//!
//! Rules for whoever adds a migration:
//! - append, never edit a released entry (a file at version N has run entries `0..N` verbatim);
//! - each entry runs in one transaction together with the `user_version` bump, so a crash
//!   leaves the file at the previous version and the step runs again on the next open;
//! - write entries idempotently anyway (`IF NOT EXISTS`), so a hand-repaired file survives;
//! - SQLite cannot alter a CHECK or a key: rebuild the table (create new, copy, drop, rename).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Version 1: every table of the first release. See the module docs of [`crate::store`].
const V1: &str = r#"
CREATE TABLE IF NOT EXISTS jmap_state (
    account     TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS processed (
    account       TEXT NOT NULL,
    email_id      TEXT NOT NULL,
    message_id    TEXT,
    verdict       TEXT NOT NULL,
    processed_at  INTEGER NOT NULL,
    expires_at    INTEGER,
    PRIMARY KEY (account, email_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_by_message_id
    ON processed (account, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS processed_by_time ON processed (processed_at);

CREATE TABLE IF NOT EXISTS tasks (
    account              TEXT NOT NULL,
    task_id              TEXT NOT NULL,
    role                 TEXT NOT NULL CHECK (role IN ('worker', 'dispatcher')),
    state                TEXT NOT NULL,
    peer                 TEXT NOT NULL,
    title                TEXT NOT NULL DEFAULT '',
    priority             TEXT NOT NULL DEFAULT 'normal',
    expires_at           INTEGER,
    session_key          TEXT,
    dispatch_message_id  TEXT,
    last_message_id      TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    attempts             INTEGER NOT NULL DEFAULT 0,
    result_status        TEXT,
    result_output        TEXT,
    result_error         TEXT,
    structured_result    TEXT,
    result_truncated     INTEGER NOT NULL DEFAULT 0,
    help_question        TEXT,
    PRIMARY KEY (account, task_id, role)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (role, state, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_by_updated ON tasks (updated_at);

CREATE TABLE IF NOT EXISTS message_index (
    account     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    role        TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    intent      TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    at          INTEGER NOT NULL,
    PRIMARY KEY (account, message_id, role),
    FOREIGN KEY (account, task_id, role)
        REFERENCES tasks (account, task_id, role) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS message_index_by_task
    ON message_index (account, task_id, role, at);

CREATE TABLE IF NOT EXISTS outbox (
    message_id       TEXT PRIMARY KEY NOT NULL,
    account          TEXT NOT NULL,
    smtp_from        TEXT NOT NULL,
    rcpt_to          TEXT NOT NULL,
    bytes            BLOB NOT NULL,
    task_id          TEXT,
    intent           TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_by_due ON outbox (status, next_attempt_at);

CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    account     TEXT NOT NULL,
    message_id  TEXT,
    peer        TEXT,
    verdict     TEXT NOT NULL,
    rule        TEXT,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TABLE IF NOT EXISTS kv (
    key         TEXT PRIMARY KEY NOT NULL,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The grants store and pair codes (issue 6, the trust gate): see `grants.rs`.
const V_GRANTS: &str = r#"
CREATE TABLE IF NOT EXISTS grants (
    account                 TEXT NOT NULL,
    peer                    TEXT NOT NULL,
    intents                 TEXT NOT NULL,
    state                   TEXT NOT NULL
                            CHECK (state IN ('active', 'declined', 'blocked', 'revoked')),
    expires_at              INTEGER,
    dispatch_context_rules  TEXT NOT NULL DEFAULT '{}',
    require_signature       INTEGER NOT NULL DEFAULT 0,
    peer_key                TEXT,
    source                  TEXT NOT NULL CHECK (source IN ('config', 'cli', 'pairing')),
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    PRIMARY KEY (account, peer)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS pair_codes (
    code_hash               TEXT PRIMARY KEY NOT NULL,
    account                 TEXT NOT NULL,
    intents                 TEXT NOT NULL,
    dispatch_context_rules  TEXT NOT NULL DEFAULT '{}',
    expires_at              INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    used_at                 INTEGER,
    used_by                 TEXT
) WITHOUT ROWID;
"#;

/// The quarantine (`protocol/trust.md` point 5): mail the injection scan held back, its flags
/// (JSON, never the body) and its state: `held` in the quarantine mailbox, `released` by the
/// operator and waiting for the daemon, `done` once the daemon took it again, `dropped`.
const V_QUARANTINE: &str = r#"
CREATE TABLE IF NOT EXISTS quarantine (
    account         TEXT NOT NULL,
    email_id        TEXT NOT NULL,
    message_id      TEXT,
    sender          TEXT,
    subject         TEXT,
    risk            TEXT NOT NULL,
    flags           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('held', 'released', 'done', 'dropped')),
    quarantined_at  INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (account, email_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_by_state ON quarantine (account, state);
"#;

/// The agent's mailbox (ASMTP, `crate::mailbox`): the index of admitted envelopes (push frame
/// JSON, the JMAP email id, `created_at` stamped at ingest and strictly increasing per account,
/// the seen flag), the ids this account sent with the hash of their body (idempotency), and
/// the mailbox's own JMAP sync state (apart from the daemon's `jmap_state`).
const V_MAILBOX: &str = r#"
CREATE TABLE IF NOT EXISTS mailbox (
    account      TEXT NOT NULL,
    envelope_id  TEXT NOT NULL,
    email_id     TEXT NOT NULL,
    from_handle  TEXT NOT NULL,
    frame        TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    seen         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, envelope_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS mailbox_cursor ON mailbox (account, created_at, envelope_id);
CREATE INDEX IF NOT EXISTS mailbox_by_email ON mailbox (account, email_id);
CREATE INDEX IF NOT EXISTS mailbox_by_envelope ON mailbox (envelope_id);
CREATE TABLE IF NOT EXISTS mailbox_sent (
    account      TEXT NOT NULL,
    envelope_id  TEXT NOT NULL,
    body_hash    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    recipients   TEXT NOT NULL,
    monitor      TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account, envelope_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mailbox_sent_by_envelope ON mailbox_sent (envelope_id);
CREATE TABLE IF NOT EXISTS mailbox_sync (
    account     TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Monitor facts (`protocol/asmtp.md`, "Monitor"; [`crate::store::MonitorRow`]): what a
/// monitored send expects (its monitor and recipients), the delivery facts learnt from the
/// reports (one per envelope, recipient and fact), and delivery reports seen in the headers
/// phase whose parts are still to be read.
const V_MONITOR: &str = r#"
CREATE TABLE IF NOT EXISTS monitor_expect (
    account      TEXT NOT NULL,
    envelope_id  TEXT NOT NULL,
    monitor      TEXT NOT NULL,
    recipients   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account, envelope_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS monitor_facts (
    account      TEXT NOT NULL,
    envelope_id  TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    fact         TEXT NOT NULL CHECK (fact IN ('stored', 'bounced', 'expired')),
    monitor      TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    status       TEXT,
    detail       TEXT,
    report_id    TEXT,
    PRIMARY KEY (account, envelope_id, recipient, fact)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS monitor_facts_by_time ON monitor_facts (account, at_ms);
CREATE TABLE IF NOT EXISTS monitor_pending (
    account   TEXT NOT NULL,
    email_id  TEXT NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (account, email_id)
) WITHOUT ROWID;
"#;

/// Every migration, in order: entry `i` takes a file from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V_GRANTS, V_QUARANTINE, V_MAILBOX, V_MONITOR];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The file's `user_version`.
pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Brings `conn` from its `user_version` up to `migrations.len()`, one transaction per step.
/// Returns the version the file was at before.
pub(super) fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<usize, StoreError> {
    let start = user_version(conn).map_err(super::error::sql("read the schema version"))?;
    let found = usize::try_from(start).unwrap_or(usize::MAX);
    if found > migrations.len() {
        return Err(StoreError::TooNew {
            found: start,
            supported: migrations.len(),
        });
    }
    for (index, sql) in migrations.iter().enumerate().skip(found) {
        let version = index + 1;
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            // NOTE: IMMEDIATE takes the write lock up front, so two daemons opening the same
            // new file migrate one after the other; the second then sees the bumped version.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let target = i64::try_from(version).unwrap_or(i64::MAX);
            if user_version(&tx)? < target {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", target)?;
            }
            tx.commit()
        };
        step(conn).map_err(|source| StoreError::Migrate { version, source })?;
    }
    Ok(found)
}
