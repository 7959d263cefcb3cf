//! Whole messages: [`Outbound`] -> RFC 5322 bytes, and raw bytes or a JMAP `Email` object ->
//! [`Inbound`] (RFC 5322, RFC 2045–2047, RFC 8621 §4).
//!
//! Both inbound paths yield the same [`Inbound`]: header values in `asText` form, Message-IDs
//! without angle brackets, addresses split into name and address, and (once fetched) the body.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::aamp::ValueKind;
use super::headers::HeaderMap;

/// One mailbox (`Name <address>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub email: String,
}

impl Mailbox {
    /// A mailbox without a display name.
    pub fn new(email: impl Into<String>) -> Self {
        Mailbox {
            name: None,
            email: email.into(),
        }
    }
}

/// A file carried as a MIME part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A message to send. The caller chooses the Message-ID and the Date (the codec reads no clock).
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: String,
    pub date: DateTime<Utc>,
    /// Without angle brackets, e.g. `01J...@example.test`.
    pub message_id: String,
    /// Without angle brackets.
    pub in_reply_to: Option<String>,
    /// The whole chain, oldest first, without angle brackets.
    pub references: Vec<String>,
    /// Protocol headers (`X-AAMP-*`, `X-ASMTP-*`), written in this order after the standard ones.
    pub extra_headers: Vec<(String, ValueKind, String)>,
    /// The text/plain body (LF or CRLF line ends).
    pub text: String,
    /// An `application/json` part (the ASMTP envelope), sent byte for byte.
    pub json_part: Option<Vec<u8>>,
    pub attachments: Vec<Attachment>,
}

/// Metadata (and, when fetched, content) of an attachment of an inbound message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentInfo {
    pub name: Option<String>,
    pub content_type: String,
    pub size: usize,
    /// JMAP blob id, when the message came from JMAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    /// The decoded content, when the message came as raw bytes.
    #[serde(skip)]
    pub bytes: Option<Vec<u8>>,
}

/// The content of an inbound message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// The first text/plain part, decoded.
    pub text: Option<String>,
    /// The first text/html part, decoded.
    pub html: Option<String>,
    /// The first application/json part, raw (the ASMTP envelope).
    pub json_part: Option<Vec<u8>>,
    pub attachments: Vec<AttachmentInfo>,
}

/// A received message, from raw bytes or from JMAP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inbound {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub from: Vec<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: Option<String>,
    pub date: Option<DateTime<Utc>>,
    /// Every other header field in `asText` form (from JMAP: only those that were asked for).
    pub headers: HeaderMap,
    /// `None` in the headers-only phase.
    pub body: Option<Body>,
}
