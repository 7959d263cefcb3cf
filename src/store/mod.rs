//! The local state of one taskmail daemon: a small SQLite file (rusqlite, bundled SQLite) for
//! what no mail server knows. The mailbox stays the store of truth; losing this file costs a
//! re-scan and the audit history, never a task (design.md "Data flow", "Exactly once").
//!
//! # Use
//!
//! [`Store`] is synchronous and `Send` but not `Sync`: the daemon keeps it behind a
//! `std::sync::Mutex` or moves it into `tokio::task::spawn_blocking`. Several processes may open
//! the same file (WAL mode, 5 s busy timeout); each write is one statement or one transaction,
//! so the compare-and-set methods ([`Store::transition`], [`Store::record_run_start`]) are safe
//! across connections too. [`Store::atomically`] groups several calls into one transaction.
//! Nothing here reads the clock: every method that stamps a row takes `now`.
//!
//! The file lives at `<state-dir>/taskmail.sqlite3` by convention ([`FILE_NAME`],
//! [`crate::config::Config::state_dir`]). [`Store::open`] creates the state directory (mode
//! 0700) and the file (mode 0600): the outbox holds whole messages.
//!
//! # Schema (version 1; ordered migrations in `schema.rs`, keyed on `PRAGMA user_version`)
//!
//! Times are INTEGER Unix milliseconds (UTC). Message-IDs are stored without angle brackets.
//!
//! | table | key | what |
//! |---|---|---|
//! | `jmap_state` | account | the JMAP `Email` state the last processed batch reached |
//! | `processed` | (account, email_id); index on (account, message_id) | every inbound mail handled, its verdict, and its `Expires-At` |
//! | `tasks` | (account, task_id, role) | one row per task and side (`worker` or `dispatcher`): [`TaskState`], peer, title, priority, expiry, session key, dispatch and last Message-IDs, attempts, result, help question |
//! | `message_index` | (account, message_id, role) -> tasks, ON DELETE CASCADE | Message-ID -> TaskId, with intent, direction and time: the thread |
//! | `outbox` | message_id | rendered messages to submit: envelope, bytes, status `pending`/`sent`/`dead`, attempts, last error, next attempt |
//! | `audit` | id (AUTOINCREMENT) | append-only verdict log: time, account, Message-ID, peer, verdict, rule, detail; never a body. Triggers abort every UPDATE and DELETE |
//! | `kv` | key | small daemon facts (last push kind, last error) |
//! | `grants` | (account, peer) | per-peer grants from the CLI and pairing: intents, state, expiry, Dispatch-Context rules, require-signature, the peer's key, source |
//! | `pair_codes` | code_hash | single-use pair codes (SHA-256 only), their account, intents, rules and expiry |
//! | `mailbox`, `mailbox_sent`, `mailbox_sync` | (account, envelope_id) / account | the agent's mailbox index: push frames with `created_at` and the seen flag; ids sent with their body hash; the mailbox's own JMAP state (migration `V_MAILBOX`) |
//! | `quarantine` | (account, email_id) | mail the injection scan held back: Message-ID, sender, subject, risk, flags (JSON), state `held`/`released`/`done`/`dropped` (migration 3) |
//!
//! # Retention ([`Store::prune`], one transaction)
//!
//! - `processed`: a row goes once it is older than [`PROCESSED_RETENTION`] (7 days) **and** its
//!   `Expires-At` (if any) has passed **and** no open task's thread contains its Message-ID:
//!   kept max(7 days, Expires-At), as `protocol/trust.md` point 4 asks. A caller-chosen cutoff
//!   ([`Store::prune_processed`]) can lengthen but never shorten the 7 days.
//! - `tasks`: a terminal task (completed, rejected, cancelled, expired) goes
//!   [`TASK_RETENTION`] (90 days) after its last update, with its `message_index` rows. Open
//!   tasks are never pruned, however old.
//! - `outbox`: a sent row goes [`OUTBOX_SENT_RETENTION`] (7 days) after it was sent; a dead row
//!   [`OUTBOX_DEAD_RETENTION`] (30 days) after it was queued. Pending rows stay until sent.
//! - `audit`, `jmap_state`, `kv`: never pruned (the audit log is append-only by trigger).
//!
//! # Size caps
//!
//! A task's result output is kept up to [`MAX_OUTPUT_BYTES`] (1 MiB), cut on a character
//! boundary; error texts, help questions and outbox errors up to [`MAX_TEXT_BYTES`] (64 KiB);
//! an audit detail up to [`MAX_AUDIT_DETAIL_BYTES`] (4 KiB). A structured result over
//! [`MAX_OUTPUT_BYTES`] is dropped rather than cut (cut JSON is not JSON); either sets
//! [`StoredResult::truncated`]. The mail itself always carries the whole text.

mod audit;
mod error;
mod grants;
mod mailbox;
mod monitor;
mod outbox;
mod processed;
mod quarantine;
mod schema;
mod tasks;
mod thread;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

pub use audit::{AuditEntry, AuditRecord};
pub use error::StoreError;
pub use grants::{GrantRecord, GrantSource, PairCode, PairCodeRefusal, state_name};
pub use mailbox::{IndexedFrame, SentRecord};
pub use monitor::MonitorRow;
pub use outbox::{OutboxBacklog, OutboxItem, OutboxStatus, OutgoingMessage};
pub use quarantine::{QuarantineState, Quarantined};
pub use tasks::{NewTask, Role, StoredResult, Task, TaskFilter, TaskOrder, TaskState};
pub use thread::{Direction, ThreadEntry};

use error::sql;

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "taskmail.sqlite3";

/// How long SQLite waits for another connection's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time a processed mail is remembered (trust.md point 4).
pub const PROCESSED_RETENTION: TimeDelta = TimeDelta::days(7);
/// How long a terminal task (and its thread index) is kept after its last update.
pub const TASK_RETENTION: TimeDelta = TimeDelta::days(90);
/// How long a sent outbox row (with its bytes) is kept after sending.
pub const OUTBOX_SENT_RETENTION: TimeDelta = TimeDelta::days(7);
/// How long a dead (permanently failed) outbox row is kept after it was queued.
pub const OUTBOX_DEAD_RETENTION: TimeDelta = TimeDelta::days(30);

/// Most bytes of a task's result output (or structured result) kept.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Most bytes of an error text or a help question kept.
pub const MAX_TEXT_BYTES: usize = 64 << 10;
/// Most bytes of an audit entry's detail kept.
pub const MAX_AUDIT_DETAIL_BYTES: usize = 4 << 10;

/// The local store: one SQLite connection.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

/// Row counts and file size, for `taskmail doctor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// The file, or `None` in memory.
    pub path: Option<PathBuf>,
    pub schema_version: i64,
    pub jmap_states: u64,
    pub processed: u64,
    pub tasks: u64,
    /// Tasks not in a terminal state.
    pub open_tasks: u64,
    pub message_index: u64,
    pub outbox_pending: u64,
    pub outbox_sent: u64,
    pub outbox_dead: u64,
    pub audit: u64,
    pub kv: u64,
    /// The main database file (page count × page size).
    pub db_bytes: u64,
    /// The write-ahead log beside it (0 when absent or in memory).
    pub wal_bytes: u64,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub processed: usize,
    pub tasks: usize,
    /// Thread index rows removed with their tasks.
    pub message_index: usize,
    pub outbox: usize,
}

impl PruneReport {
    /// Rows removed in all.
    pub fn total(&self) -> usize {
        self.processed + self.tasks + self.message_index + self.outbox
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`: creates missing parent directories, sets
    /// WAL, `synchronous=NORMAL`, foreign keys and a 5 s busy timeout, and migrates the schema
    /// to [`Store::schema_version`]. A file from a newer taskmail is refused
    /// ([`StoreError::TooNew`]), never downgraded.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        create_private_file(path).map_err(|source| StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        })?;
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            set_wal(&conn)?;
            configure(&conn)?;
            Ok(conn)
        };
        let conn = open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Store::init(conn, Some(path.to_path_buf()))
    }

    /// A fresh, empty store in memory (tests; nothing survives the value).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()
            .and_then(|conn| configure(&conn).map(|()| conn))
            .map_err(|source| StoreError::Open {
                path: PathBuf::from(":memory:"),
                source,
            })?;
        Store::init(conn, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Store, StoreError> {
        schema::migrate(&mut conn, schema::MIGRATIONS)?;
        Ok(Store { conn, path })
    }

    /// Runs `f` as one transaction: every change it makes through the store is committed
    /// together when it returns `Ok`, or none is when it returns `Err` (or panics). Use it to
    /// group a step's writes (mark the batch's mail processed and save the JMAP state; move a
    /// task to `acked`, queue the ack and index it), and for bulk writes, which it makes much
    /// faster (one commit instead of one per call). Calls nest (inner ones are savepoints).
    ///
    /// The write lock is taken at the start and held until the end, so keep network I/O out
    /// of `f`: other connections to the file wait (up to [`BUSY_TIMEOUT`]) meanwhile.
    pub fn atomically<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let scope = WriteScope::begin(&self.conn).map_err(sql("begin a transaction"))?;
        let value = f(self)?;
        scope.commit().map_err(sql("commit a transaction"))?;
        Ok(value)
    }

    /// Runs `f` in a [`WriteScope`]: its own transaction, or a savepoint inside
    /// [`Store::atomically`].
    fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let scope = WriteScope::begin(&self.conn)?;
        let value = f(&self.conn)?;
        scope.commit()?;
        Ok(value)
    }

    /// The file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version this build writes.
    pub fn schema_version() -> usize {
        schema::SCHEMA_VERSION
    }

    // ---- JMAP sync state -------------------------------------------------------------------

    /// The JMAP `Email` state to ask `Email/changes` from, if one was saved for `account`.
    pub fn jmap_state(&self, account: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT state FROM jmap_state WHERE account = ?1",
                [account],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("read the JMAP state"))
    }

    /// Saves the JMAP `Email` state for `account`.
    ///
    /// Call this only after every mail of the batch that led to `state` has been processed
    /// (marked with [`Store::mark_processed`]): a crash before then re-reads the batch from the
    /// previous state, and the processed table dedupes it. Saving first would lose mail.
    pub fn set_jmap_state(
        &self,
        account: &str,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO jmap_state (account, state, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET state = excluded.state,
                     updated_at = excluded.updated_at",
                params![account, state, ms(now)],
            )
            .map(drop)
            .map_err(sql("save the JMAP state"))
    }

    // ---- kv --------------------------------------------------------------------------------

    /// A small daemon fact (`last-push-kind`, `last-error`), if set.
    pub fn kv_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sql("read a daemon fact"))
    }

    /// Sets a small daemon fact.
    pub fn kv_set(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     updated_at = excluded.updated_at",
                params![key, value, ms(now)],
            )
            .map(drop)
            .map_err(sql("save a daemon fact"))
    }

    /// Removes a daemon fact; true when it was set.
    pub fn kv_delete(&self, key: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM kv WHERE key = ?1", [key])
            .map(|n| n > 0)
            .map_err(sql("remove a daemon fact"))
    }

    /// Every daemon fact whose key starts with `prefix`, by key.
    pub fn kv_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM kv WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")
            .map_err(sql("list daemon facts"))?;
        let rows = stmt
            .query_map([prefix], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(sql("list daemon facts"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql("list daemon facts"))
    }

    // ---- doctor and retention --------------------------------------------------------------

    /// Row counts per table and the file size.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let count = |table_sql: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(table_sql, [], |row| row.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(sql("count rows"))
        };
        let open_tasks = format!(
            "SELECT COUNT(*) FROM tasks WHERE state NOT IN {}",
            tasks::TERMINAL_SQL
        );
        let db_bytes =
            count("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")?;
        let wal_bytes = self
            .path
            .as_ref()
            .and_then(|p| {
                let mut wal = p.clone().into_os_string();
                wal.push("-wal");
                fs::metadata(wal).ok()
            })
            .map_or(0, |m| m.len());
        Ok(StoreStats {
            path: self.path.clone(),
            schema_version: schema::user_version(&self.conn)
                .map_err(sql("read the schema version"))?,
            jmap_states: count("SELECT COUNT(*) FROM jmap_state")?,
            processed: count("SELECT COUNT(*) FROM processed")?,
            tasks: count("SELECT COUNT(*) FROM tasks")?,
            open_tasks: count(&open_tasks)?,
            message_index: count("SELECT COUNT(*) FROM message_index")?,
            outbox_pending: count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")?,
            outbox_sent: count("SELECT COUNT(*) FROM outbox WHERE status = 'sent'")?,
            outbox_dead: count("SELECT COUNT(*) FROM outbox WHERE status = 'dead'")?,
            audit: count("SELECT COUNT(*) FROM audit")?,
            kv: count("SELECT COUNT(*) FROM kv")?,
            db_bytes,
            wal_bytes,
        })
    }

    /// Applies every retention rule (module docs, "Retention") in one transaction.
    pub fn prune(&self, now: DateTime<Utc>) -> Result<PruneReport, StoreError> {
        self.prune_keeping(now, PROCESSED_RETENTION)
    }

    /// [`Store::prune`], remembering processed mail for `dedup_retention` (`trust.dedup-retention`)
    /// instead of 7 days; shorter values are raised to 7 days, and a mail's `Expires-At` still
    /// keeps it longer.
    pub fn prune_keeping(
        &self,
        now: DateTime<Utc>,
        dedup_retention: TimeDelta,
    ) -> Result<PruneReport, StoreError> {
        let run = |tx: &Connection| -> rusqlite::Result<PruneReport> {
            let index_before = count_rows(tx, "message_index")?;
            let tasks = tx.execute(
                &format!(
                    "DELETE FROM tasks WHERE state IN {} AND updated_at < ?1",
                    tasks::TERMINAL_SQL
                ),
                [ms(now - TASK_RETENTION)],
            )?;
            let index_after = count_rows(tx, "message_index")?;
            let cutoff = now
                .checked_sub_signed(dedup_retention)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let processed = processed::prune(tx, cutoff, now, true)?;
            let outbox = tx.execute(
                "DELETE FROM outbox WHERE (status = 'sent' AND sent_at < ?1)
                     OR (status = 'dead' AND created_at < ?2)",
                params![
                    ms(now - OUTBOX_SENT_RETENTION),
                    ms(now - OUTBOX_DEAD_RETENTION)
                ],
            )?;
            Ok(PruneReport {
                processed,
                tasks,
                message_index: usize::try_from(index_before - index_after).unwrap_or(0),
                outbox,
            })
        };
        self.write(run).map_err(sql("prune the store"))
    }
}

/// A write transaction that rolls back unless committed: `BEGIN IMMEDIATE` at the top level
/// (the write lock up front, so a read-then-write step never fails on a stale snapshot; the
/// busy timeout applies), a savepoint when one is already open.
struct WriteScope<'a> {
    conn: &'a Connection,
    nested: bool,
    open: bool,
}

impl<'a> WriteScope<'a> {
    fn begin(conn: &'a Connection) -> rusqlite::Result<WriteScope<'a>> {
        let nested = !conn.is_autocommit();
        conn.execute_batch(if nested {
            "SAVEPOINT taskmail_step"
        } else {
            "BEGIN IMMEDIATE"
        })?;
        Ok(WriteScope {
            conn,
            nested,
            open: true,
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.open = false;
        let result = self.conn.execute_batch(if self.nested {
            "RELEASE taskmail_step"
        } else {
            "COMMIT"
        });
        if result.is_err() {
            self.rollback();
        }
        result
    }

    fn rollback(&self) {
        // NOTE: errors are ignored: SQLite may already have rolled back (a failed COMMIT after
        // SQLITE_FULL), and there is nothing better to do in a drop.
        let _ = self.conn.execute_batch(if self.nested {
            "ROLLBACK TO taskmail_step; RELEASE taskmail_step"
        } else {
            "ROLLBACK"
        });
    }
}

impl Drop for WriteScope<'_> {
    fn drop(&mut self) {
        if self.open {
            self.rollback();
        }
    }
}

/// Sets the per-connection pragmas (every open).
/// Puts the file in WAL mode (persistent: later opens find it set and take no lock for it).
///
/// NOTE: switching modes needs an exclusive lock, and SQLite answers SQLITE_BUSY to it at once,
/// without the busy handler, when several processes open a new file together (seen with
/// parallel `taskmail dispatch` processes): retry until BUSY_TIMEOUT. journal_mode answers with
/// the mode in force; a file system without shared memory stays in rollback mode, which is
/// slower but still correct.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let current: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    if current.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn count_rows(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
}

/// `create_dir_all`, with mode 0700 for the directories it creates (Unix).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` empty with mode 0600 (Unix) unless it exists, so that SQLite (and its WAL,
/// which copies the main file's mode) never makes it world-readable.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

// ---- column helpers shared by the submodules ---------------------------------------------------

/// A time as stored: Unix milliseconds.
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// An error for a stored value this version does not understand.
fn unknown(idx: usize, column: &'static str, value: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        Box::new(StoreError::UnknownValue { column, value }),
    )
}

/// Reads a stored time.
fn time_at(row: &Row<'_>, idx: usize, column: &'static str) -> rusqlite::Result<DateTime<Utc>> {
    let v: i64 = row.get(idx)?;
    DateTime::from_timestamp_millis(v).ok_or_else(|| unknown(idx, column, v.to_string()))
}

/// Reads a stored optional time.
fn opt_time_at(
    row: &Row<'_>,
    idx: usize,
    column: &'static str,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(v) => DateTime::from_timestamp_millis(v)
            .map(Some)
            .ok_or_else(|| unknown(idx, column, v.to_string())),
    }
}

/// Reads a text column through `parse`.
fn parsed_at<T>(
    row: &Row<'_>,
    idx: usize,
    column: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse(&text).ok_or_else(|| unknown(idx, column, text))
}

/// Reads a non-negative counter.
fn count_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    Ok(u32::try_from(row.get::<_, i64>(idx)?).unwrap_or(0))
}

/// `text` cut to at most `max` bytes on a character boundary; true when cut.
fn cap(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        (text, false)
    } else {
        (&text[..text.floor_char_boundary(max)], true)
    }
}

/// A Message-ID as stored: no angle brackets or surrounding white space.
fn msgid(id: &str) -> String {
    crate::wire::thread::strip_brackets(id)
}

/// `LIMIT` for an optional row count (SQLite takes -1 as no limit).
fn limit(n: Option<usize>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}
