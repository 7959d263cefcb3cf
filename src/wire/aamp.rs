//! AAMP 1.1 on the wire: intents, `X-AAMP-*` headers, subject and body templates
//! (`shared/protocol/aamp.md`; the AAMP core specification §5–§6).
//!
//! Rendering produces what the reference SDKs produce, minus their bugs: spec header casing,
//! every intent's subject and body layout, ErrorMsg on rejected results, an even-folded
//! StructuredResult. Parsing is lenient: header names are case-insensitive, RFC 2047 and
//! folded values are accepted, bodies are read by label.
//!
//! Two rules where the spec is silent, applied the same way on every path:
//! - **Duplicate headers.** A header that appears more than once with the same value counts once.
//!   Different values for one AAMP header make the message ambiguous: it is refused with
//!   [`AampError::ConflictingHeader`] (logged, never run), because two readers could otherwise
//!   see two different tasks in one mail.
//! - **Header versus body.** `X-AAMP-ErrorMsg` wins over the body's `Error:` section. For
//!   suggested options the body list wins (the header cannot carry `|` and Node mangles non-ASCII
//!   options); the header is used when the body has no list.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::headers::{HeaderMap, sanitize};

/// The protocol version we speak and emit.
pub const VERSION: &str = "1.1";

/// Header names, in the spec's casing (what we emit; reading is case-insensitive).
pub mod header {
    pub const VERSION: &str = "X-AAMP-Version";
    pub const INTENT: &str = "X-AAMP-Intent";
    pub const TASK_ID: &str = "X-AAMP-TaskId";
    pub const PRIORITY: &str = "X-AAMP-Priority";
    pub const EXPIRES_AT: &str = "X-AAMP-Expires-At";
    pub const SESSION_KEY: &str = "X-AAMP-Session-Key";
    pub const DISPATCH_CONTEXT: &str = "X-AAMP-Dispatch-Context";
    pub const PARENT_TASK_ID: &str = "X-AAMP-ParentTaskId";
    pub const STATUS: &str = "X-AAMP-Status";
    pub const ERROR_MSG: &str = "X-AAMP-ErrorMsg";
    pub const STRUCTURED_RESULT: &str = "X-AAMP-StructuredResult";
    pub const SUGGESTED_OPTIONS: &str = "X-AAMP-SuggestedOptions";
    pub const STREAM_ID: &str = "X-AAMP-Stream-Id";
    pub const PAIR_CODE: &str = "X-AAMP-Pair-Code";
    pub const DISPATCH_CONTEXT_RULES: &str = "X-AAMP-Dispatch-Context-Rules";
    pub const CARD_SUMMARY: &str = "X-AAMP-Card-Summary";
    /// Legacy (old Node senders), read only.
    pub const LEGACY_OUTPUT: &str = "X-AAMP-Output";
    pub const LEGACY_QUESTION: &str = "X-AAMP-Question";
    pub const LEGACY_BLOCKED_REASON: &str = "X-AAMP-BlockedReason";

    /// Every header this module reads, for headers-only JMAP fetches.
    pub const ALL: [&str; 19] = [
        VERSION,
        INTENT,
        TASK_ID,
        PRIORITY,
        EXPIRES_AT,
        SESSION_KEY,
        DISPATCH_CONTEXT,
        PARENT_TASK_ID,
        STATUS,
        ERROR_MSG,
        STRUCTURED_RESULT,
        SUGGESTED_OPTIONS,
        STREAM_ID,
        PAIR_CODE,
        DISPATCH_CONTEXT_RULES,
        CARD_SUMMARY,
        LEGACY_OUTPUT,
        LEGACY_QUESTION,
        LEGACY_BLOCKED_REASON,
    ];
}

/// The footer line of a dispatch body, as the reference SDKs write it.
pub const DISPATCH_FOOTER: &str =
    "--- This email was sent by AAMP. Reply directly to submit your result. ---";
/// Body of a cancel when the dispatcher gives no reason.
pub const DEFAULT_CANCEL_TEXT: &str = "The dispatcher cancelled this task.";
/// Body of a card query when none is given.
pub const DEFAULT_CARD_QUERY_TEXT: &str = "Please share your agent card and capability details.";

/// Why a message that carries AAMP headers cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AampError {
    #[error("cannot use X-AAMP-Intent '{0}': unknown intent (ignored)")]
    UnknownIntent(String),
    #[error("cannot use X-AAMP-Version '{0}': unsupported major version (ignored)")]
    UnsupportedVersion(String),
    #[error("cannot use header {0}: it appears more than once with different values")]
    ConflictingHeader(&'static str),
    #[error("cannot use X-AAMP-Pair-Code: only [A-Za-z0-9_-] is allowed")]
    InvalidPairCode,
}

/// An AAMP intent (the value of `X-AAMP-Intent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Intent {
    #[serde(rename = "task.dispatch")]
    TaskDispatch,
    #[serde(rename = "task.cancel")]
    TaskCancel,
    #[serde(rename = "task.ack")]
    TaskAck,
    #[serde(rename = "task.help_needed")]
    TaskHelpNeeded,
    #[serde(rename = "task.result")]
    TaskResult,
    #[serde(rename = "task.stream.opened")]
    TaskStreamOpened,
    #[serde(rename = "pair.request")]
    PairRequest,
    #[serde(rename = "pair.respond")]
    PairRespond,
    #[serde(rename = "card.query")]
    CardQuery,
    #[serde(rename = "card.response")]
    CardResponse,
}

impl Intent {
    /// Every intent, in spec order.
    pub const ALL: [Intent; 10] = [
        Intent::TaskDispatch,
        Intent::TaskCancel,
        Intent::TaskAck,
        Intent::TaskHelpNeeded,
        Intent::TaskResult,
        Intent::TaskStreamOpened,
        Intent::PairRequest,
        Intent::PairRespond,
        Intent::CardQuery,
        Intent::CardResponse,
    ];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::TaskDispatch => "task.dispatch",
            Intent::TaskCancel => "task.cancel",
            Intent::TaskAck => "task.ack",
            Intent::TaskHelpNeeded => "task.help_needed",
            Intent::TaskResult => "task.result",
            Intent::TaskStreamOpened => "task.stream.opened",
            Intent::PairRequest => "pair.request",
            Intent::PairRespond => "pair.respond",
            Intent::CardQuery => "card.query",
            Intent::CardResponse => "card.response",
        }
    }

    /// Reads a wire value (trimmed, case-insensitive).
    pub fn parse(value: &str) -> Option<Intent> {
        let v = value.trim();
        Intent::ALL
            .into_iter()
            .find(|i| i.as_str().eq_ignore_ascii_case(v))
    }

    /// True for intents that answer an earlier message in the thread.
    pub fn is_reply(self) -> bool {
        !matches!(
            self,
            Intent::TaskDispatch | Intent::PairRequest | Intent::CardQuery
        )
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task identifier: opaque; we generate UUIDv4 strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Wraps a value (sanitised to one trimmed line).
    pub fn new(value: impl AsRef<str>) -> Self {
        TaskId(sanitize(value.as_ref()))
    }

    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `X-AAMP-Priority`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Urgent,
    High,
    #[default]
    Normal,
}

impl Priority {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
        }
    }

    /// Reads a wire value case-insensitively; `None` for unknown values (callers use normal).
    pub fn parse(value: &str) -> Option<Priority> {
        match value.trim().to_ascii_lowercase().as_str() {
            "urgent" => Some(Priority::Urgent),
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            _ => None,
        }
    }

    /// Scheduling rank: lower runs first.
    pub fn rank(self) -> u8 {
        match self {
            Priority::Urgent => 0,
            Priority::High => 1,
            Priority::Normal => 2,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `X-AAMP-Status` of a result or a pairing answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Completed,
    Rejected,
}

impl Status {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Rejected => "rejected",
        }
    }

    /// Reads a wire value case-insensitively.
    pub fn parse(value: &str) -> Option<Status> {
        match value.trim().to_ascii_lowercase().as_str() {
            "completed" => Some(Status::Completed),
            "rejected" => Some(Status::Rejected),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `X-AAMP-Dispatch-Context`: `k=v; k2=v2`, keys `[a-z0-9_-]+`, values percent-encoded UTF-8.
/// Emitted in key order; a `+` is a literal plus on input (the Go SDK's form-encoding bug).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DispatchContext(pub BTreeMap<String, String>);

impl DispatchContext {
    /// True for a valid key.
    pub fn is_valid_key(key: &str) -> bool {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    /// The header value, or `None` when there is nothing to send. Invalid keys and empty values
    /// are left out (as every SDK does).
    pub fn render(&self) -> Option<String> {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(k, v)| Self::is_valid_key(k) && !v.trim().is_empty())
            .map(|(k, v)| format!("{k}={}", percent_encode(v.trim())))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Reads a header value, skipping invalid entries. Returns the context and how many
    /// entries were skipped.
    pub fn parse(value: &str) -> (DispatchContext, usize) {
        let mut map = BTreeMap::new();
        let mut skipped = 0;
        for segment in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((k, v)) = segment.split_once('=') else {
                skipped += 1;
                continue;
            };
            let key = k.trim().to_ascii_lowercase();
            match (Self::is_valid_key(&key), percent_decode(v.trim())) {
                (true, Some(decoded)) => {
                    map.insert(key, decoded);
                }
                _ => skipped += 1,
            }
        }
        (DispatchContext(map), skipped)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so a space is `%20`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `+` stays a plus. `None` on a broken escape or invalid UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Formats an instant as the spec's ISO 8601 form: UTC with milliseconds.
pub fn format_instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads an ISO 8601 instant (any offset) into UTC, truncated to milliseconds.
pub fn parse_instant(value: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(value.trim()).ok()?;
    Some(truncate_ms(t.with_timezone(&Utc)))
}

/// Truncates to whole milliseconds (what the wire carries).
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A `task.dispatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Dispatch {
    pub title: String,
    /// The dispatcher's instructions: the body without the labelled preamble and the footer.
    pub instructions: String,
    pub priority: Priority,
    pub expires_at: Option<DateTime<Utc>>,
    pub session_key: Option<String>,
    pub dispatch_context: DispatchContext,
    pub parent_task_id: Option<TaskId>,
}

/// A `task.help_needed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HelpNeeded {
    pub question: String,
    pub blocked_reason: String,
    pub suggested_options: Vec<String>,
}

/// A `task.result`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TaskResult {
    pub status: Status,
    pub output: String,
    pub error_msg: Option<String>,
    /// Application-defined JSON, carried base64url in `X-AAMP-StructuredResult`.
    pub structured_result: Option<serde_json::Value>,
}

/// A `pair.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PairRequest {
    pub pair_code: String,
    /// `{key: [allowed values]}` for Dispatch-Context.
    pub dispatch_context_rules: BTreeMap<String, Vec<String>>,
}

/// A `pair.respond`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PairRespond {
    pub status: Status,
    pub error_msg: Option<String>,
}

/// What an AAMP message says, by intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "camelCase")]
pub enum Payload {
    #[serde(rename = "task.dispatch")]
    Dispatch(Dispatch),
    #[serde(rename = "task.cancel")]
    Cancel {
        #[serde(default)]
        reason: String,
    },
    #[serde(rename = "task.ack")]
    Ack,
    #[serde(rename = "task.help_needed")]
    HelpNeeded(HelpNeeded),
    #[serde(rename = "task.result")]
    Result(TaskResult),
    #[serde(rename = "task.stream.opened")]
    StreamOpened {
        #[serde(rename = "streamId")]
        stream_id: String,
    },
    #[serde(rename = "pair.request")]
    PairRequest(PairRequest),
    #[serde(rename = "pair.respond")]
    PairRespond(PairRespond),
    #[serde(rename = "card.query")]
    CardQuery {
        #[serde(default)]
        text: String,
    },
    #[serde(rename = "card.response")]
    CardResponse {
        #[serde(default)]
        summary: String,
        #[serde(default)]
        card: String,
    },
}

impl Payload {
    /// The intent of this payload.
    pub fn intent(&self) -> Intent {
        match self {
            Payload::Dispatch(_) => Intent::TaskDispatch,
            Payload::Cancel { .. } => Intent::TaskCancel,
            Payload::Ack => Intent::TaskAck,
            Payload::HelpNeeded(_) => Intent::TaskHelpNeeded,
            Payload::Result(_) => Intent::TaskResult,
            Payload::StreamOpened { .. } => Intent::TaskStreamOpened,
            Payload::PairRequest(_) => Intent::PairRequest,
            Payload::PairRespond(_) => Intent::PairRespond,
            Payload::CardQuery { .. } => Intent::CardQuery,
            Payload::CardResponse { .. } => Intent::CardResponse,
        }
    }
}

/// One AAMP message: version, task and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AampMessage {
    pub version: String,
    pub task_id: TaskId,
    #[serde(flatten)]
    pub payload: Payload,
}

/// How a header value must be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Free text: folded at spaces, RFC 2047 when needed.
    Text,
    /// A base64url token: folded with an even number of `CRLF` + two spaces.
    Base64Url,
}

/// A parse that succeeded, with what was tolerated on the way (for the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub message: AampMessage,
    pub warnings: Vec<String>,
}

impl AampMessage {
    /// A message of the current version.
    pub fn new(task_id: TaskId, payload: Payload) -> Self {
        AampMessage {
            version: VERSION.to_owned(),
            task_id,
            payload,
        }
    }

    /// The intent.
    pub fn intent(&self) -> Intent {
        self.payload.intent()
    }

    /// The `X-AAMP-*` header fields to send, in a fixed order, spec casing.
    pub fn headers(&self) -> Vec<(&'static str, ValueKind, String)> {
        use ValueKind::{Base64Url, Text};
        let mut h = vec![
            (header::VERSION, Text, self.version.clone()),
            (header::INTENT, Text, self.intent().as_str().to_owned()),
            (header::TASK_ID, Text, self.task_id.0.clone()),
        ];
        match &self.payload {
            Payload::Dispatch(d) => {
                h.push((header::PRIORITY, Text, d.priority.as_str().to_owned()));
                if let Some(t) = &d.expires_at {
                    h.push((header::EXPIRES_AT, Text, format_instant(t)));
                }
                if let Some(k) = d
                    .session_key
                    .as_deref()
                    .map(sanitize)
                    .filter(|k| !k.is_empty())
                {
                    h.push((header::SESSION_KEY, Text, k));
                }
                if let Some(c) = d.dispatch_context.render() {
                    h.push((header::DISPATCH_CONTEXT, Text, c));
                }
                if let Some(p) = &d.parent_task_id {
                    h.push((header::PARENT_TASK_ID, Text, p.0.clone()));
                }
            }
            Payload::Result(r) => {
                h.push((header::STATUS, Text, r.status.as_str().to_owned()));
                if let Some(e) = r
                    .error_msg
                    .as_deref()
                    .map(sanitize)
                    .filter(|e| !e.is_empty())
                {
                    h.push((header::ERROR_MSG, Text, e));
                }
                if let Some(v) = &r.structured_result {
                    h.push((header::STRUCTURED_RESULT, Base64Url, encode_json(v)));
                }
            }
            Payload::HelpNeeded(help) => {
                let options: Vec<String> =
                    help.suggested_options.iter().map(|o| sanitize(o)).collect();
                h.push((header::SUGGESTED_OPTIONS, Text, options.join("|")));
            }
            Payload::StreamOpened { stream_id } => {
                h.push((header::STREAM_ID, Text, stream_id.clone()));
            }
            Payload::PairRequest(p) => {
                h.push((header::PAIR_CODE, Text, p.pair_code.clone()));
                let rules = serde_json::to_value(&p.dispatch_context_rules)
                    .unwrap_or(serde_json::Value::Null);
                h.push((
                    header::DISPATCH_CONTEXT_RULES,
                    Base64Url,
                    encode_json(&rules),
                ));
            }
            Payload::PairRespond(p) => {
                h.push((header::STATUS, Text, p.status.as_str().to_owned()));
                if let Some(e) = p
                    .error_msg
                    .as_deref()
                    .map(sanitize)
                    .filter(|e| !e.is_empty())
                {
                    h.push((header::ERROR_MSG, Text, e));
                }
            }
            Payload::CardResponse { summary, .. } => {
                h.push((header::CARD_SUMMARY, Text, sanitize(summary)));
            }
            Payload::Cancel { .. } | Payload::Ack | Payload::CardQuery { .. } => {}
        }
        h
    }

    /// The Subject, as the reference SDKs write it.
    pub fn subject(&self) -> String {
        let id = &self.task_id;
        match &self.payload {
            Payload::Dispatch(d) => format!("[AAMP Task] {}", sanitize(&d.title)),
            Payload::Cancel { .. } => format!("[AAMP Cancel] Task {id}"),
            Payload::Ack => format!("[AAMP ACK] Task {id}"),
            Payload::HelpNeeded(_) => format!("[AAMP Help] Task {id} needs assistance"),
            Payload::Result(r) => format!("[AAMP Result] Task {id} - {}", r.status),
            Payload::StreamOpened { .. } => format!("[AAMP Stream] Task {id}"),
            Payload::PairRequest(_) => "[AAMP Pair] Connection request".to_owned(),
            Payload::PairRespond(p) => format!("[AAMP Pair] {}", p.status),
            Payload::CardQuery { .. } => format!("[AAMP Card Query] {id}"),
            Payload::CardResponse { summary, .. } => format!("[AAMP Card] {}", sanitize(summary)),
        }
    }

    /// The text/plain body (LF line ends; the message writer makes them CRLF).
    pub fn body_text(&self) -> String {
        let id = &self.task_id;
        match &self.payload {
            Payload::Dispatch(d) => {
                let expires = d
                    .expires_at
                    .as_ref()
                    .map(format_instant)
                    .unwrap_or_else(|| "none".to_owned());
                let mut lines = vec![
                    format!("Task: {}", sanitize(&d.title)),
                    format!("Task ID: {id}"),
                    format!("Priority: {}", d.priority),
                    format!("Expires At: {expires}"),
                ];
                let instructions = normalize_body(&d.instructions);
                if !instructions.is_empty() {
                    lines.push(instructions);
                }
                lines.push(String::new());
                lines.push(DISPATCH_FOOTER.to_owned());
                lines.join("\n")
            }
            Payload::Cancel { reason } => {
                let reason = normalize_body(reason);
                if reason.is_empty() {
                    DEFAULT_CANCEL_TEXT.to_owned()
                } else {
                    reason
                }
            }
            Payload::Ack => String::new(),
            Payload::HelpNeeded(help) => {
                let mut lines = vec![
                    "AAMP Task Help Request".to_owned(),
                    String::new(),
                    format!("Task ID: {id}"),
                    String::new(),
                    format!("Question: {}", normalize_body(&help.question)),
                    String::new(),
                    format!("Blocked reason: {}", normalize_body(&help.blocked_reason)),
                ];
                if !help.suggested_options.is_empty() {
                    lines.push(String::new());
                    lines.push("Suggested options:".to_owned());
                    for (i, o) in help.suggested_options.iter().enumerate() {
                        lines.push(format!("  {}. {}", i + 1, sanitize(o)));
                    }
                }
                lines.join("\n")
            }
            Payload::Result(r) => {
                let mut lines = vec![
                    "AAMP Task Result".to_owned(),
                    String::new(),
                    format!("Task ID: {id}"),
                    format!("Status: {}", r.status),
                    String::new(),
                    "Output:".to_owned(),
                    normalize_body(&r.output),
                ];
                if let Some(e) = r
                    .error_msg
                    .as_deref()
                    .map(sanitize)
                    .filter(|e| !e.is_empty())
                {
                    lines.push(format!("\nError: {e}"));
                }
                lines.join("\n")
            }
            Payload::StreamOpened { stream_id } => {
                format!("AAMP task stream is ready.\n\nTask ID: {id}\nStream ID: {stream_id}")
            }
            Payload::PairRequest(_) => {
                "AAMP Pair Request\n\nThis mailbox asks to be allowed to send tasks to yours. \
                 The pair code is in the X-AAMP-Pair-Code header."
                    .to_owned()
            }
            Payload::PairRespond(p) => {
                let mut s = format!("AAMP Pair Response\n\nStatus: {}", p.status);
                if let Some(e) = p
                    .error_msg
                    .as_deref()
                    .map(sanitize)
                    .filter(|e| !e.is_empty())
                {
                    s.push_str(&format!("\n\nError: {e}"));
                }
                s
            }
            Payload::CardQuery { text } => {
                let t = normalize_body(text);
                if t.is_empty() {
                    DEFAULT_CARD_QUERY_TEXT.to_owned()
                } else {
                    t
                }
            }
            Payload::CardResponse { card, .. } => normalize_body(card),
        }
    }

    /// Reads an AAMP message from its headers (in `asText` form), its Subject and, when it has
    /// been fetched, its text body. `Ok(None)`: no Intent or no TaskId, so not AAMP (possibly a
    /// human reply). Body-derived fields are empty when `body` is `None` (the headers-only
    /// phase of the inbound pipeline).
    pub fn parse(
        headers: &HeaderMap,
        subject: Option<&str>,
        body: Option<&str>,
    ) -> Result<Option<Parsed>, AampError> {
        let mut warnings = Vec::new();
        let (Some(intent_raw), Some(task_raw)) = (
            single(headers, header::INTENT)?,
            single(headers, header::TASK_ID)?,
        ) else {
            return Ok(None);
        };
        if intent_raw.is_empty() || task_raw.is_empty() {
            return Ok(None);
        }
        let version = match single(headers, header::VERSION)? {
            None => VERSION.to_owned(),
            Some(v) if v.is_empty() => VERSION.to_owned(),
            Some(v) => {
                let major = v.split('.').next().unwrap_or_default();
                if major != "1" {
                    return Err(AampError::UnsupportedVersion(v));
                }
                v
            }
        };
        let intent = Intent::parse(&intent_raw)
            .ok_or_else(|| AampError::UnknownIntent(intent_raw.clone()))?;
        let task_id = TaskId::new(&task_raw);
        let body = body.map(normalize_body).unwrap_or_default();
        let subject = subject.map(str::trim).unwrap_or_default();

        let payload = match intent {
            Intent::TaskDispatch => {
                let priority = match single(headers, header::PRIORITY)? {
                    None => Priority::Normal,
                    Some(p) => Priority::parse(&p).unwrap_or_else(|| {
                        warnings.push(format!("unknown X-AAMP-Priority '{p}', using normal"));
                        Priority::Normal
                    }),
                };
                let expires_at = match single(headers, header::EXPIRES_AT)? {
                    None => None,
                    Some(e) if e.is_empty() => None,
                    Some(e) => parse_instant(&e).or_else(|| {
                        warnings.push(format!("unreadable X-AAMP-Expires-At '{e}', ignored"));
                        None
                    }),
                };
                let dispatch_context = match single(headers, header::DISPATCH_CONTEXT)? {
                    None => DispatchContext::default(),
                    Some(c) => {
                        let (ctx, skipped) = DispatchContext::parse(&c);
                        if skipped > 0 {
                            warnings.push(format!(
                                "skipped {skipped} invalid X-AAMP-Dispatch-Context entries"
                            ));
                        }
                        ctx
                    }
                };
                Payload::Dispatch(Dispatch {
                    title: title_from_subject(subject),
                    instructions: dispatch_instructions(&body),
                    priority,
                    expires_at,
                    session_key: single(headers, header::SESSION_KEY)?.filter(|s| !s.is_empty()),
                    dispatch_context,
                    parent_task_id: single(headers, header::PARENT_TASK_ID)?
                        .filter(|s| !s.is_empty())
                        .map(TaskId::new),
                })
            }
            Intent::TaskCancel => Payload::Cancel { reason: body },
            Intent::TaskAck => Payload::Ack,
            Intent::TaskHelpNeeded => {
                let (mut question, mut blocked_reason, body_options) = help_sections(&body);
                if question.is_empty() && blocked_reason.is_empty() && body_options.is_empty() {
                    question = body.clone();
                }
                if question.is_empty()
                    && let Some(q) = single(headers, header::LEGACY_QUESTION)?
                {
                    question = q;
                }
                if blocked_reason.is_empty()
                    && let Some(r) = single(headers, header::LEGACY_BLOCKED_REASON)?
                {
                    blocked_reason = r;
                }
                let header_options: Vec<String> = single(headers, header::SUGGESTED_OPTIONS)?
                    .map(|v| {
                        v.split('|')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                if !body_options.is_empty()
                    && !header_options.is_empty()
                    && body_options != header_options
                {
                    warnings.push(
                        "X-AAMP-SuggestedOptions disagrees with the body list; using the body"
                            .to_owned(),
                    );
                }
                let suggested_options = if body_options.is_empty() {
                    header_options
                } else {
                    body_options
                };
                Payload::HelpNeeded(HelpNeeded {
                    question,
                    blocked_reason,
                    suggested_options,
                })
            }
            Intent::TaskResult => {
                let status = match single(headers, header::STATUS)? {
                    None => Status::Completed,
                    Some(s) => Status::parse(&s).unwrap_or_else(|| {
                        warnings.push(format!("unknown X-AAMP-Status '{s}', using completed"));
                        Status::Completed
                    }),
                };
                let header_error = single(headers, header::ERROR_MSG)?.filter(|e| !e.is_empty());
                let expect_error = status == Status::Rejected || header_error.is_some();
                let (mut output, body_error) = result_sections(&body, expect_error);
                if output.is_empty()
                    && let Some(o) = single(headers, header::LEGACY_OUTPUT)?
                {
                    output = o;
                }
                let structured_result = match single(headers, header::STRUCTURED_RESULT)? {
                    None => None,
                    Some(v) if v.trim().is_empty() => None,
                    Some(v) => decode_json(&v).or_else(|| {
                        warnings.push("unreadable X-AAMP-StructuredResult, ignored".to_owned());
                        None
                    }),
                };
                Payload::Result(TaskResult {
                    status,
                    output,
                    error_msg: header_error.or(body_error),
                    structured_result,
                })
            }
            Intent::TaskStreamOpened => {
                let stream_id = single(headers, header::STREAM_ID)?
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| section(&body, "Stream ID", &[]).unwrap_or_default());
                Payload::StreamOpened { stream_id }
            }
            Intent::PairRequest => {
                let pair_code = single(headers, header::PAIR_CODE)?.unwrap_or_default();
                if pair_code.is_empty()
                    || !pair_code
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(AampError::InvalidPairCode);
                }
                let dispatch_context_rules = single(headers, header::DISPATCH_CONTEXT_RULES)?
                    .and_then(|v| decode_json(&v))
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                Payload::PairRequest(PairRequest {
                    pair_code,
                    dispatch_context_rules,
                })
            }
            Intent::PairRespond => {
                let status = single(headers, header::STATUS)?
                    .and_then(|s| Status::parse(&s))
                    .unwrap_or(Status::Rejected);
                let error_msg = single(headers, header::ERROR_MSG)?
                    .filter(|e| !e.is_empty())
                    .or_else(|| section(&body, "Error", &[]));
                Payload::PairRespond(PairRespond { status, error_msg })
            }
            Intent::CardQuery => Payload::CardQuery { text: body },
            Intent::CardResponse => {
                let summary = single(headers, header::CARD_SUMMARY)?
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        subject
                            .strip_prefix("[AAMP Card]")
                            .unwrap_or(subject)
                            .trim()
                            .to_owned()
                    });
                Payload::CardResponse {
                    summary,
                    card: body,
                }
            }
        };
        Ok(Some(Parsed {
            message: AampMessage {
                version,
                task_id,
                payload,
            },
            warnings,
        }))
    }
}

/// The one value of an AAMP header, sanitised to one line (an RFC 2047 word can smuggle CR/LF
/// into a decoded value): identical repeats count once, different ones are an error.
fn single(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, AampError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(name) {
        match found {
            None => found = Some(v),
            Some(prev) if prev.trim() == v.trim() => {}
            Some(_) => return Err(AampError::ConflictingHeader(name)),
        }
    }
    Ok(found.map(sanitize))
}

/// CRLF -> LF, then trimmed: how every AAMP reader normalises a body.
/// NUL characters are dropped: no text that reaches an agent (argv, a prompt file) may hold one.
pub fn normalize_body(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\0', "")
        .trim()
        .to_owned()
}

/// The title of a dispatch: its Subject without the `[AAMP Task]` prefix.
pub fn title_from_subject(subject: &str) -> String {
    let s = subject.trim();
    let rest = if s.len() >= 11 && s.as_bytes()[..11].eq_ignore_ascii_case(b"[AAMP Task]") {
        &s[11..]
    } else {
        s
    };
    sanitize(rest)
}

/// The instructions of a dispatch body: without the `Task:`/`Task ID:`/`Priority:`/`Expires At:`
/// preamble and without the footer, when they are there.
fn dispatch_instructions(body: &str) -> String {
    let mut lines: Vec<&str> = body.split('\n').collect();
    const PREAMBLE: [&str; 4] = ["task:", "task id:", "priority:", "expires at:"];
    let mut skip = 0;
    while skip < PREAMBLE.len()
        && lines.get(skip).is_some_and(|l| {
            l.trim_start()
                .to_ascii_lowercase()
                .starts_with(PREAMBLE[skip])
        })
    {
        skip += 1;
    }
    // Only a full preamble is ours to strip; anything else is the sender's own text.
    if skip == PREAMBLE.len() {
        lines.drain(..skip);
    }
    if lines.last().is_some_and(|l| l.trim() == DISPATCH_FOOTER) {
        lines.pop();
    }
    lines.join("\n").trim().to_owned()
}

/// The text after `label:` (case-insensitive, at a line start) up to the first of `next`.
fn section(body: &str, label: &str, next: &[&str]) -> Option<String> {
    let hay = format!("\n{body}");
    // NOTE: fold ASCII only: full Unicode lowercasing can change byte lengths, and the offsets
    // found in the folded copy index the original.
    let folded = ascii_fold(&hay);
    let prefix = format!("\n{}:", label.to_ascii_lowercase());
    let start = folded.find(&prefix)? + prefix.len();
    let mut end = hay.len();
    for n in next {
        let p = format!("\n{}:", n.to_ascii_lowercase());
        if let Some(i) = folded[start..].find(&p) {
            end = end.min(start + i);
        }
    }
    Some(hay[start..end].trim().to_owned())
}

fn ascii_fold(s: &str) -> String {
    s.chars().map(|c| c.to_ascii_lowercase()).collect()
}

fn help_sections(body: &str) -> (String, String, Vec<String>) {
    let question =
        section(body, "Question", &["Blocked reason", "Suggested options"]).unwrap_or_default();
    let blocked = section(body, "Blocked reason", &["Suggested options"]).unwrap_or_default();
    let options = section(body, "Suggested options", &[])
        .map(|s| {
            s.split('\n')
                .map(strip_bullet)
                .filter(|o| !o.is_empty())
                .collect()
        })
        .unwrap_or_default();
    (question, blocked, options)
}

/// Removes a `-`, `*` or `N.` bullet from an option line.
fn strip_bullet(line: &str) -> String {
    let l = line.trim();
    if let Some(r) = l.strip_prefix('-').or_else(|| l.strip_prefix('*')) {
        return r.trim().to_owned();
    }
    let digits = l.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && l[digits..].starts_with('.') {
        return l[digits + 1..].trim().to_owned();
    }
    l.to_owned()
}

/// Output and error of a result body. When an error is expected (rejected, or an ErrorMsg
/// header), the error is the text after the last blank-line-separated `Error:` label; a completed
/// result keeps every `Error:` line the agent wrote as part of its output.
fn result_sections(body: &str, expect_error: bool) -> (String, Option<String>) {
    if body.is_empty() {
        return (String::new(), None);
    }
    let hay = format!("\n{body}");
    let folded = ascii_fold(&hay);
    let out_start = folded.find("\noutput:").map(|i| i + "\noutput:".len());
    let err_at = if expect_error {
        folded
            .rfind("\n\nerror:")
            .map(|i| i + 1)
            .or_else(|| folded.rfind("\nerror:"))
            .filter(|&i| out_start.is_none_or(|s| i >= s))
    } else {
        None
    };
    let error = err_at.map(|i| hay[i + "\nerror:".len()..].trim().to_owned());
    match (out_start, err_at) {
        (Some(s), Some(e)) => (hay[s..e].trim().to_owned(), error),
        (Some(s), None) => (hay[s..].trim().to_owned(), None),
        (None, Some(e)) => (String::new(), error.filter(|_| e > 0)),
        (None, None) => (body.to_owned(), None),
    }
}

/// Compact JSON, base64url without padding.
pub fn encode_json(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Reads base64url JSON leniently: white space (folding, RFC 2047 word gaps) and padding are
/// dropped, standard-alphabet characters are accepted.
pub fn decode_json(value: &str) -> Option<serde_json::Value> {
    let cleaned: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = URL_SAFE_NO_PAD.decode(cleaned).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn dispatch_context_round_trip_and_go_plus() {
        let mut c = DispatchContext::default();
        c.0.insert("user_key".into(), "a b+c/é".into());
        c.0.insert("project".into(), "p1".into());
        let r = c.render().unwrap();
        assert_eq!(r, "project=p1; user_key=a%20b%2Bc%2F%C3%A9");
        assert_eq!(DispatchContext::parse(&r).0, c);
        let (go, skipped) = DispatchContext::parse("b=x+y; A=ok; bad; c=%zz");
        assert_eq!(go.0.get("b").map(String::as_str), Some("x+y"));
        assert_eq!(go.0.get("a").map(String::as_str), Some("ok"));
        assert_eq!(skipped, 2);
    }

    #[test]
    fn not_aamp_without_intent_or_task_id() {
        let h = map(&[("X-AAMP-Intent", "task.dispatch")]);
        assert_eq!(AampMessage::parse(&h, None, None), Ok(None));
    }

    #[test]
    fn conflicting_duplicates_are_refused_identical_ones_accepted() {
        let h = map(&[
            ("X-AAMP-Intent", "task.ack"),
            ("X-AAMP-TaskId", "t1"),
            ("x-aamp-taskid", "t2"),
        ]);
        assert_eq!(
            AampMessage::parse(&h, None, None),
            Err(AampError::ConflictingHeader(header::TASK_ID))
        );
        let h = map(&[
            ("X-AAMP-Intent", "task.ack"),
            ("X-AAMP-TaskId", "t1"),
            ("x-aamp-taskid", " t1"),
        ]);
        assert!(AampMessage::parse(&h, None, None).unwrap().is_some());
    }

    #[test]
    fn result_keeps_error_lines_of_completed_output() {
        let body = "AAMP Task Result\n\nTask ID: t\nStatus: completed\n\nOutput:\nran\nError: none found\ndone";
        let (o, e) = result_sections(body, false);
        assert_eq!(o, "ran\nError: none found\ndone");
        assert_eq!(e, None);
        let body = "AAMP Task Result\n\nTask ID: t\nStatus: rejected\n\nOutput:\nx\n\nError: boom";
        assert_eq!(
            result_sections(body, true),
            ("x".into(), Some("boom".into()))
        );
        assert_eq!(
            result_sections("just text", false),
            ("just text".into(), None)
        );
    }

    #[test]
    fn unknown_major_version_is_refused() {
        let h = map(&[
            ("X-AAMP-Version", "2.0"),
            ("X-AAMP-Intent", "task.ack"),
            ("X-AAMP-TaskId", "t"),
        ]);
        assert!(matches!(
            AampMessage::parse(&h, None, None),
            Err(AampError::UnsupportedVersion(_))
        ));
    }

    #[test]
    fn bullets() {
        assert_eq!(strip_bullet("  1. Yes"), "Yes");
        assert_eq!(strip_bullet("- No"), "No");
        assert_eq!(strip_bullet("* Maybe"), "Maybe");
        assert_eq!(strip_bullet("2024 plan"), "2024 plan");
    }
}
