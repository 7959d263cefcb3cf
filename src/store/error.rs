//! [`StoreError`]: what can go wrong in the local store. Every message starts "cannot …" and
//! names what the store was doing; the SQLite or I/O cause is in `source()`, not in the text.

use std::io;
use std::path::PathBuf;

/// An error from the local store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The state directory (the store file's parent) could not be created.
    #[error("cannot create the state directory '{}'", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file could not be created.
    #[error("cannot create the store '{}'", .path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file could not be opened or configured (WAL, busy timeout, foreign keys).
    #[error("cannot open the store '{}'", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A migration step failed; the file is left at the previous version.
    #[error("cannot migrate the store to schema version {version}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },

    /// The file was written by a newer taskmail (downgrades are not supported).
    #[error(
        "cannot use a store at schema version {found}: this taskmail knows versions up to {supported}"
    )]
    TooNew { found: i64, supported: usize },

    /// A query failed; `action` says which ("mark a message processed").
    #[error("cannot {action}")]
    Sqlite {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    /// A value could not be encoded for storage (a recipient list as JSON).
    #[error("cannot {action}")]
    Encode {
        action: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A stored value is not one this version understands (a hand-edited or newer file).
    #[error("cannot read {column} '{value}' from the store: unknown value")]
    UnknownValue { column: &'static str, value: String },

    /// A task state that does not exist for the task's role (`running` for a dispatcher).
    #[error("cannot put a {role} task in state '{state}'")]
    InvalidState {
        role: &'static str,
        state: &'static str,
    },

    /// A message was indexed for a task that has no row (index it after `upsert_task`).
    #[error(
        "cannot index message '{message_id}': no {role} task '{task_id}' in account '{account}'"
    )]
    NoSuchTask {
        account: String,
        task_id: String,
        role: &'static str,
        message_id: String,
    },
}

impl StoreError {
    /// True when the cause is SQLite reporting the file busy or locked past the busy timeout:
    /// another process holds a write lock; retrying later may succeed.
    pub fn is_busy(&self) -> bool {
        let source = match self {
            StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Sqlite { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// Wraps a rusqlite error with what the store was doing.
pub(super) fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}
