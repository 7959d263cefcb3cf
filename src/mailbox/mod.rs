//! The agent's mailbox (ASMTP, `shared/protocol/asmtp.md`): one local agent, an
//! `[accounts.NAME]` with an ASMTP handle, sending and receiving envelopes over the account's
//! mail server.
//!
//! - [`Mailbox::send`] validates an envelope, stamps `from` with the agent's own handle, checks
//!   reachability (all-or-nothing), and submits it through the outbox and SMTP. The id is the
//!   idempotency key.
//! - [`Mailbox::sync`] reads `Email/changes` since the mailbox's own persisted JMAP state,
//!   gates ASMTP mail on its headers (authentication and sender policy), and indexes the
//!   admitted ones as push frames with a `created_at` stamped at ingest.
//! - [`Mailbox::list`] pages the local index by the cursor `(created_at, id)`;
//!   [`Mailbox::read`] fetches a body from the server and sets `$seen`.
//! - [`Mailbox::follow`] catches up, then syncs on every push hint (polls without push) and
//!   broadcasts new frames to [`Mailbox::subscribe`]rs.
//!
//! Layer: uses wire, transport, store, trust, config; `daemon` and `cli` use it.

mod core;
pub mod identity;
pub mod monitor;
pub mod policy;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::wire::asmtp::{ContentPart, Cursor, Envelope, EnvelopeId, Handle, PushFrame};

pub use core::{Ingested, Ingestor, Mailbox};

pub use identity::Directory;
pub use monitor::{Fact, MonitorFact};

/// The most envelopes [`Mailbox::get_many`] returns at once.
pub const MAX_GET_MANY: usize = 100;
/// The largest page of [`Mailbox::list`].
pub const MAX_PAGE: u32 = 1000;

/// Why a mailbox operation failed. [`MailboxError::code`] and [`MailboxError::http_status`]
/// give the operator API's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// The request is malformed (the text says what and how to fix it).
    #[error("{0}")]
    Invalid(String),
    /// The envelope's JSON is over 1 MiB.
    #[error("the envelope is over the 1 MiB limit")]
    PayloadTooLarge,
    /// The id was sent before with another body.
    #[error(
        "envelope id already used with a different body: send a new id, or the same body to retry"
    )]
    RetryMismatch,
    /// The id belongs to an envelope from another sender.
    #[error("envelope id already used by another sender: allocate a new id")]
    IdCollision,
    /// No such envelope in this mailbox.
    #[error("no such envelope in this mailbox")]
    NotFound,
    /// A recipient is unknown or not reachable (trust, both ways); nothing was sent.
    #[error("recipient not found or not reachable: {0}; nothing was sent")]
    Unreachable(String),
    /// The server refused our credentials.
    #[error("the mail server refused the login: {0}")]
    Unauthorized(String),
    /// The server (or the local store) cannot be used now; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug or a broken local state).
    #[error("internal error: {0}")]
    Internal(String),
}

impl MailboxError {
    /// The stable error code of the operator API (`RETRY_MISMATCH`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            MailboxError::Invalid(_) => "INVALID_REQUEST",
            MailboxError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            MailboxError::RetryMismatch => "RETRY_MISMATCH",
            MailboxError::IdCollision => "ID_COLLISION",
            MailboxError::NotFound => "NOT_FOUND",
            MailboxError::Unreachable(_) => "RECIPIENT_NOT_FOUND",
            MailboxError::Unauthorized(_) => "UNAUTHORIZED",
            MailboxError::Unavailable(_) => "UNAVAILABLE",
            MailboxError::Internal(_) => "INTERNAL",
        }
    }

    /// The HTTP status of the operator API.
    pub fn http_status(&self) -> u16 {
        match self {
            MailboxError::Invalid(_) | MailboxError::PayloadTooLarge => 400,
            MailboxError::RetryMismatch | MailboxError::IdCollision => 409,
            MailboxError::NotFound | MailboxError::Unreachable(_) => 404,
            MailboxError::Unauthorized(_) => 401,
            MailboxError::Unavailable(_) => 503,
            MailboxError::Internal(_) => 500,
        }
    }

    /// The process exit code of the CLI (design.md list).
    pub fn exit_code(&self) -> u8 {
        match self {
            MailboxError::Invalid(_) | MailboxError::PayloadTooLarge => 2,
            MailboxError::Unauthorized(_) => 77,
            MailboxError::Unavailable(_) => 69,
            _ => 1,
        }
    }
}

impl From<crate::store::StoreError> for MailboxError {
    fn from(e: crate::store::StoreError) -> Self {
        MailboxError::Unavailable(format!("local store: {e}"))
    }
}

/// A file carried inline in the mail (a `file` content part whose `file_id` names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    /// The file name.
    pub name: String,
    /// Its MIME type.
    pub mime_type: String,
    /// The content.
    pub bytes: Vec<u8>,
}

/// What to send. `from` is never given: it is always the mailbox's own handle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendRequest {
    /// The idempotency key; allocated (a ULID) when absent.
    pub id: Option<EnvelopeId>,
    /// Recipients, handles (`@owner.name`) or addresses.
    pub to: Vec<String>,
    /// Copy recipients, handles or addresses.
    pub cc: Vec<String>,
    /// The subject.
    pub subject: Option<String>,
    /// The content (non-empty, unless `files` give file parts).
    pub content_parts: Vec<ContentPart>,
    /// The envelope this one answers.
    pub in_reply_to: Option<EnvelopeId>,
    /// The thread, oldest first (the last equals `in_reply_to` when both are set).
    pub references: Vec<EnvelopeId>,
    /// Opt-in delivery facts (`mon_...`).
    pub monitor: Option<String>,
    /// Files carried inline as MIME parts; each adds a `file` content part.
    pub files: Vec<InlineFile>,
}

impl SendRequest {
    /// A request from an operator API body: the envelope JSON without `from` (a `from` is
    /// ignored: the mailbox stamps its own). Over 1 MiB is [`MailboxError::PayloadTooLarge`].
    pub fn from_json(bytes: &[u8]) -> Result<SendRequest, MailboxError> {
        if bytes.len() > crate::wire::asmtp::MAX_BODY_BYTES {
            return Err(MailboxError::PayloadTooLarge);
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            to: Vec<String>,
            #[serde(default)]
            cc: Vec<String>,
            #[serde(default)]
            subject: Option<String>,
            #[serde(default)]
            content_parts: Vec<ContentPart>,
            #[serde(default)]
            in_reply_to: Option<String>,
            #[serde(default)]
            references: Vec<String>,
            #[serde(default)]
            monitor: Option<String>,
        }
        let body: Body = serde_json::from_slice(bytes)
            .map_err(|e| MailboxError::Invalid(format!("cannot read the envelope JSON: {e}")))?;
        let id = |s: &str| EnvelopeId::parse(s).map_err(|e| MailboxError::Invalid(e.to_string()));
        Ok(SendRequest {
            id: body.id.as_deref().map(id).transpose()?,
            to: body.to,
            cc: body.cc,
            subject: body.subject,
            content_parts: body.content_parts,
            in_reply_to: body.in_reply_to.as_deref().map(id).transpose()?,
            references: body
                .references
                .iter()
                .map(|r| id(r))
                .collect::<Result<_, _>>()?,
            monitor: body.monitor,
            files: Vec::new(),
        })
    }
}

/// The answer to a send (202 `{id, received_ms, created_at, recipients}` plus `replayed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReceipt {
    /// The envelope id.
    pub id: EnvelopeId,
    /// When this request was taken (ms).
    pub received_ms: u64,
    /// When the envelope was first accepted (ms; a replay gives the first time).
    pub created_at: u64,
    /// Every recipient (to, then cc), as handles.
    pub recipients: Vec<Handle>,
    /// True when the same id and body were sent before: nothing was sent again.
    pub replayed: bool,
}

/// Listing order by cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first (the default; what a catch-up wants).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A page request on the local index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Rows strictly after this cursor (in `order`); `None` from the start.
    pub after: Option<Cursor>,
    /// 1..=1000.
    pub limit: u32,
    /// Only rows not yet read.
    pub unread_only: bool,
    /// Order.
    pub order: Order,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            after: None,
            limit: 100,
            unread_only: false,
            order: Order::Asc,
        }
    }
}

/// One row of a listing: the push frame and whether its body has been read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedFrame {
    /// The frame (ASMTP snake_case JSON, flattened).
    #[serde(flatten)]
    pub frame: PushFrame,
    /// Whether the envelope has been read (`$seen`).
    pub seen: bool,
}

/// A page of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The rows, in the requested order.
    pub frames: Vec<ListedFrame>,
    /// The cursor of the last row when the page is full (more may follow), else `None`.
    pub next_cursor: Option<Cursor>,
}

/// An envelope with its body, as `read` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadEnvelope {
    /// The envelope (from the mail's JSON part).
    pub envelope: Envelope,
    /// Its push frame (with the local `created_at`).
    pub frame: PushFrame,
    /// Whether it is marked read (after this read, when `mark_read`).
    pub seen: bool,
}

/// What [`Mailbox::subscribe`]rs receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxEvent {
    /// A newly indexed envelope.
    Frame(PushFrame),
    /// A delivery fact for an envelope this mailbox sent.
    Monitor(MonitorFact),
}
