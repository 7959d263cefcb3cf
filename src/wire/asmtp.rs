//! ASMTP envelopes on mail (`shared/protocol/asmtp.md`: Identity, Envelope, Push frame, Cursor,
//! and "Mapping onto mail").
//!
//! An [`Envelope`] travels as an ordinary mail: `From`/`To`/`Cc` carry the handles' mapped
//! addresses, `X-ASMTP-*` headers carry the handles and hints verbatim, and a `multipart/mixed`
//! body holds a text/plain rendering for people plus ONE `application/json` part with the exact
//! envelope JSON ([`Envelope::canonical_json`]), which is the source of truth.
//!
//! A [`PushFrame`] is built from headers alone (a headers-only JMAP `Email/get`), and a
//! [`Cursor`] orders what a mailbox has been told about.
//!
//! Rules chosen where the spec is silent:
//! - **Handles** are trimmed, an optional leading `@` is dropped and ASCII letters are lowercased
//!   before validation, so `  @Acme.Planner ` reads as `@acme.planner`. Only ASCII is lowercased:
//!   any non-ASCII character (even one whose Unicode lowercase is ASCII, such as the Kelvin sign)
//!   is refused. `owner.name` must fit an RFC 5321 local part (64 octets).
//! - **Envelope ids** are read case-insensitively and stored in the canonical uppercase form.
//! - **Envelope ids are Message-IDs** in the agent domain: envelope `01J…` is the mail
//!   `<01J…@agent-domain>`, and `in_reply_to`/`references` map the same way. This holds because
//!   every envelope of one deployment is sent from the one agent domain; Message-IDs whose local
//!   part is not an envelope id are ignored when mapping back.
//! - **Canonical JSON**: compact, fields in the order of the spec's table (`id, from, to, cc,
//!   subject, in_reply_to, references, date_ms, content_parts, monitor`), part fields in the order
//!   `type, text | url, file_id, name, mime_type, size | data, schema`, empty lists and absent
//!   values left out, and the keys of `data` objects sorted (recursively), so that equal
//!   envelopes always give equal bytes.
//! - **Validation**: `date_ms` must not be negative; an image or file part needs a non-empty
//!   `url` or `file_id` (both are accepted); unknown part types and malformed JSON are refused;
//!   unknown top-level fields are ignored.
//! - **Hints are advisory**: in a push frame, a missing or unreadable `X-ASMTP-Type-Hint`
//!   reads as `mixed` and a missing or unreadable `X-ASMTP-Size-Hint` as 0.
//! - **Spoofing**: the mail `From` address must map to the `X-ASMTP-From` handle, and when the
//!   JSON part is there its `id` and `from` must equal `X-ASMTP-Id` and `X-ASMTP-From`. Whether
//!   the `From` domain is the agent domain (and is authenticated) is the trust layer's call.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::aamp::ValueKind;
use super::headers::HeaderMap;
use super::message::{Inbound, Mailbox, Outbound};

/// The protocol version we emit in `X-ASMTP-Version`.
pub const VERSION: &str = "1";

/// The largest envelope body accepted (the reference operator answers 400 above it).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The longest `owner.name` (an RFC 5321 local part).
pub const MAX_HANDLE_LEN: usize = 64;

/// Header names, in the casing we emit (reading is case-insensitive).
pub mod header {
    pub const VERSION: &str = "X-ASMTP-Version";
    pub const ID: &str = "X-ASMTP-Id";
    pub const FROM: &str = "X-ASMTP-From";
    pub const TO: &str = "X-ASMTP-To";
    pub const CC: &str = "X-ASMTP-Cc";
    pub const DATE_MS: &str = "X-ASMTP-Date-Ms";
    pub const TYPE_HINT: &str = "X-ASMTP-Type-Hint";
    pub const SIZE_HINT: &str = "X-ASMTP-Size-Hint";
    pub const MONITOR: &str = "X-ASMTP-Monitor";

    /// Every header this module reads, for headers-only JMAP fetches.
    pub const ALL: [&str; 9] = [
        VERSION, ID, FROM, TO, CC, DATE_MS, TYPE_HINT, SIZE_HINT, MONITOR,
    ];
}

/// Why an ASMTP value or message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmtpError {
    #[error("cannot use handle '{0}': expected @owner.name with [a-z0-9_-] parts")]
    InvalidHandle(String),
    #[error("cannot use envelope id '{0}': expected a ULID starting with 01")]
    InvalidId(String),
    #[error("cannot make an envelope id at {0} ms: ids starting with 01 cover 2004-11 to 2039-09")]
    TimestampOutOfRange(u64),
    #[error("cannot use monitor '{0}': expected mon_ and 1 to 64 of [0-9A-Za-z_-]")]
    InvalidMonitor(String),
    #[error("cannot send an envelope without recipients")]
    NoRecipients,
    #[error("cannot send an envelope without content parts")]
    NoContent,
    #[error("cannot use content part {0}: a text part needs non-empty text")]
    EmptyText(usize),
    #[error("cannot use content part {0}: an {1} part needs a url or a file_id")]
    MissingSource(usize, &'static str),
    #[error("cannot use content part {0}: the data of a data part must be a JSON object")]
    DataNotObject(usize),
    #[error("cannot use references: the last one ({last}) must equal in_reply_to ({in_reply_to})")]
    ReferencesMismatch { last: String, in_reply_to: String },
    #[error("cannot use date_ms {0}: it must not be negative")]
    NegativeDate(i64),
    #[error("cannot accept an envelope of {0} bytes: the limit is 1 MiB")]
    TooLarge(usize),
    #[error("cannot read the envelope JSON: {0}")]
    Json(String),
    #[error("cannot read an ASMTP mail without the {0} header")]
    MissingHeader(&'static str),
    #[error("cannot use header {name}: '{value}' is not valid")]
    InvalidHeader { name: &'static str, value: String },
    #[error("cannot use header {0}: it appears more than once with different values")]
    ConflictingHeader(&'static str),
    #[error("cannot use X-ASMTP-Version '{0}': unsupported major version")]
    UnsupportedVersion(String),
    #[error("cannot trust the envelope: {what} disagree ('{left}' vs '{right}')")]
    Mismatch {
        what: &'static str,
        left: String,
        right: String,
    },
    #[error(
        "cannot read the envelope before its body is fetched (a push frame needs headers only)"
    )]
    MissingBody,
    #[error("cannot use cursor '{0}': expected created_at:envelope_id")]
    InvalidCursor(String),
}

// ---------------------------------------------------------------------------------------------
// Identity

/// An agent handle, `@owner.name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    owner: String,
    name: String,
}

impl Handle {
    /// Reads a handle: trimmed, an optional leading `@`, ASCII lowercased, then validated.
    pub fn parse(value: &str) -> Result<Handle, AsmtpError> {
        let bad = || AsmtpError::InvalidHandle(value.trim().to_owned());
        let v = value.trim();
        let v = v.strip_prefix('@').unwrap_or(v).to_ascii_lowercase();
        let (owner, name) = v.split_once('.').ok_or_else(bad)?;
        if v.len() > MAX_HANDLE_LEN || !is_handle_part(owner) || !is_handle_part(name) {
            return Err(bad());
        }
        Ok(Handle {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The owner part.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The agent name part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mail address of this handle in the agent domain: `owner.name@domain`.
    pub fn to_address(&self, agent_domain: &str) -> String {
        format!("{}.{}@{}", self.owner, self.name, agent_domain.trim())
    }

    /// The handle of a mapped address (`owner.name@any-domain`), if its local part is one.
    /// The domain is not checked; see [`Handle::from_address_in`].
    pub fn from_address(address: &str) -> Option<Handle> {
        let (local, _domain) = address.trim().rsplit_once('@')?;
        // NOTE: `parse` would accept a leading `@`; an address's local part never has one.
        if local.starts_with('@') {
            return None;
        }
        Handle::parse(local).ok()
    }

    /// The handle of a mapped address, only when its domain is `agent_domain`
    /// (compared case-insensitively).
    pub fn from_address_in(address: &str, agent_domain: &str) -> Option<Handle> {
        let (_, domain) = address.trim().rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(agent_domain.trim()) {
            return None;
        }
        Handle::from_address(address)
    }
}

fn is_handle_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}.{}", self.owner, self.name)
    }
}

impl FromStr for Handle {
    type Err = AsmtpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Handle::parse(s)
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Handle::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Reads a comma-separated list of handles (any spacing, empty entries skipped).
pub fn parse_handle_list(value: &str) -> Result<Vec<Handle>, AsmtpError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Handle::parse)
        .collect()
}

/// Writes handles as a header value: `@a.b, @c.d`.
pub fn format_handle_list(handles: &[Handle]) -> String {
    handles
        .iter()
        .map(Handle::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Envelope ids

/// An envelope id: a ULID in canonical (uppercase Crockford base32) form, `^01[0-9A-HJKMNP-TV-Z]{24}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvelopeId(String);

impl EnvelopeId {
    /// The smallest timestamp whose ULID starts with `01` (2004-11-03).
    pub const MIN_MS: u64 = 1 << 40;
    /// One past the largest timestamp whose ULID starts with `01` (2039-09-07).
    pub const END_MS: u64 = 1 << 41;

    /// Reads an id: trimmed, case-insensitive, stored uppercase.
    pub fn parse(value: &str) -> Result<EnvelopeId, AsmtpError> {
        let v = value.trim().to_ascii_uppercase();
        let ok = v.len() == 26
            && v.starts_with("01")
            && v.bytes().all(|b| {
                b.is_ascii_digit()
                    || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
            });
        if ok {
            Ok(EnvelopeId(v))
        } else {
            Err(AsmtpError::InvalidId(value.trim().to_owned()))
        }
    }

    /// A new id from a timestamp (ms since the epoch) and randomness (the low 80 bits are used).
    /// The caller supplies both: this module reads no clock and no random source.
    pub fn from_parts(timestamp_ms: u64, random: u128) -> Result<EnvelopeId, AsmtpError> {
        if !(Self::MIN_MS..Self::END_MS).contains(&timestamp_ms) {
            return Err(AsmtpError::TimestampOutOfRange(timestamp_ms));
        }
        EnvelopeId::parse(&ulid::Ulid::from_parts(timestamp_ms, random).to_string())
    }

    /// The timestamp encoded in the id (ms since the epoch).
    pub fn timestamp_ms(&self) -> u64 {
        ulid::Ulid::from_string(&self.0)
            .map(|u| u.timestamp_ms())
            .unwrap_or_default()
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Message-ID (without angle brackets) of this envelope in the agent domain.
    pub fn to_message_id(&self, agent_domain: &str) -> String {
        format!("{}@{}", self.0, agent_domain.trim())
    }

    /// The envelope id of a Message-ID (angle brackets optional) whose local part is one.
    pub fn from_message_id(message_id: &str) -> Option<EnvelopeId> {
        let m = message_id.trim();
        let m = m.strip_prefix('<').unwrap_or(m);
        let m = m.strip_suffix('>').unwrap_or(m);
        let (local, _) = m.rsplit_once('@')?;
        EnvelopeId::parse(local).ok()
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EnvelopeId {
    type Err = AsmtpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnvelopeId::parse(s)
    }
}

impl Serialize for EnvelopeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EnvelopeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EnvelopeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// True for a valid monitor id, `mon_[0-9A-Za-z_-]{1,64}`.
pub fn is_valid_monitor(value: &str) -> bool {
    value.strip_prefix("mon_").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

// ---------------------------------------------------------------------------------------------
// Content

/// One content part of an envelope, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        #[serde(default)]
        text: String,
    },
    /// An image, by URL or by file id.
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
    },
    /// A file, by URL or by file id.
    File {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// Structured data: a JSON object, optionally naming its schema (e.g. `aamp/1.1`).
    Data {
        #[serde(default)]
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> ContentPart {
        ContentPart::Text { text: text.into() }
    }

    /// A data part.
    pub fn data(data: Value, schema: Option<&str>) -> ContentPart {
        ContentPart::Data {
            data,
            schema: schema.map(str::to_owned),
        }
    }

    /// The type hint of this one part.
    pub fn type_hint(&self) -> TypeHint {
        match self {
            ContentPart::Text { .. } => TypeHint::Text,
            ContentPart::Image { .. } => TypeHint::Image,
            ContentPart::File { .. } => TypeHint::File,
            ContentPart::Data { .. } => TypeHint::Data,
        }
    }

    /// Checks the part; `index` only labels the error.
    pub fn validate(&self, index: usize) -> Result<(), AsmtpError> {
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        match self {
            ContentPart::Text { text } if text.is_empty() => Err(AsmtpError::EmptyText(index)),
            ContentPart::Image { url, file_id, .. } if !present(url) && !present(file_id) => {
                Err(AsmtpError::MissingSource(index, "image"))
            }
            ContentPart::File { url, file_id, .. } if !present(url) && !present(file_id) => {
                Err(AsmtpError::MissingSource(index, "file"))
            }
            ContentPart::Data { data, .. } if !data.is_object() => {
                Err(AsmtpError::DataNotObject(index))
            }
            _ => Ok(()),
        }
    }

    /// One line describing a non-text part for people (`None` for text parts).
    fn describe(&self) -> Option<String> {
        let source = |url: &Option<String>, file_id: &Option<String>| match (url, file_id) {
            (Some(u), _) if !u.trim().is_empty() => u.trim().to_owned(),
            (_, Some(f)) => format!("file id {}", f.trim()),
            _ => String::from("(no source)"),
        };
        match self {
            ContentPart::Text { .. } => None,
            ContentPart::Image {
                url,
                file_id,
                mime_type,
            } => {
                let mut line = format!("[image] {}", source(url, file_id));
                if let Some(m) = mime_type {
                    line.push_str(&format!(" ({m})"));
                }
                Some(line)
            }
            ContentPart::File {
                url,
                file_id,
                name,
                mime_type,
                size,
            } => {
                let mut line = String::from("[file] ");
                if let Some(n) = name.as_deref().filter(|n| !n.trim().is_empty()) {
                    line.push_str(n.trim());
                    line.push_str(": ");
                }
                line.push_str(&source(url, file_id));
                let details: Vec<String> = mime_type
                    .iter()
                    .cloned()
                    .chain(size.map(|s| format!("{s} bytes")))
                    .collect();
                if !details.is_empty() {
                    line.push_str(&format!(" ({})", details.join(", ")));
                }
                Some(line)
            }
            ContentPart::Data { data, schema } => {
                const SHOWN: usize = 200;
                // NOTE: keys sorted as in the JSON part, so that equal envelopes render equally.
                let json = serde_json::to_string(&sorted_keys(data)).unwrap_or_default();
                let json = if json.chars().count() > SHOWN {
                    let cut: String = json.chars().take(SHOWN).collect();
                    format!("{cut}…")
                } else {
                    json
                };
                Some(match schema {
                    Some(s) => format!("[data, schema {s}] {json}"),
                    None => format!("[data] {json}"),
                })
            }
        }
    }
}

/// The `type_hint` of an envelope: the one type of all its parts, or `mixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeHint {
    Text,
    Image,
    File,
    Data,
    Mixed,
}

impl TypeHint {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeHint::Text => "text",
            TypeHint::Image => "image",
            TypeHint::File => "file",
            TypeHint::Data => "data",
            TypeHint::Mixed => "mixed",
        }
    }

    /// Reads a wire value (trimmed, case-insensitive).
    pub fn parse(value: &str) -> Option<TypeHint> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Some(TypeHint::Text),
            "image" => Some(TypeHint::Image),
            "file" => Some(TypeHint::File),
            "data" => Some(TypeHint::Data),
            "mixed" => Some(TypeHint::Mixed),
            _ => None,
        }
    }
}

impl fmt::Display for TypeHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Envelope

/// An ASMTP envelope. Field order is the canonical JSON order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: EnvelopeId,
    pub from: Handle,
    #[serde(default, deserialize_with = "null_as_default")]
    pub to: Vec<Handle>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cc: Vec<Handle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<EnvelopeId>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub references: Vec<EnvelopeId>,
    pub date_ms: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_parts: Vec<ContentPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Envelope {
    /// An envelope with the required fields; the optional ones start empty.
    pub fn new(
        id: EnvelopeId,
        from: Handle,
        to: Vec<Handle>,
        date_ms: i64,
        content_parts: Vec<ContentPart>,
    ) -> Envelope {
        Envelope {
            id,
            from,
            to,
            cc: Vec::new(),
            subject: None,
            in_reply_to: None,
            references: Vec::new(),
            date_ms,
            content_parts,
            monitor: None,
        }
    }

    /// Checks every rule of the spec's envelope table, and the 1 MiB body limit.
    pub fn validate(&self) -> Result<(), AsmtpError> {
        if self.to.is_empty() {
            return Err(AsmtpError::NoRecipients);
        }
        if self.content_parts.is_empty() {
            return Err(AsmtpError::NoContent);
        }
        for (i, part) in self.content_parts.iter().enumerate() {
            part.validate(i)?;
        }
        if let (Some(irt), Some(last)) = (&self.in_reply_to, self.references.last())
            && irt != last
        {
            return Err(AsmtpError::ReferencesMismatch {
                last: last.to_string(),
                in_reply_to: irt.to_string(),
            });
        }
        if self.date_ms < 0 {
            return Err(AsmtpError::NegativeDate(self.date_ms));
        }
        if let Some(m) = &self.monitor
            && !is_valid_monitor(m)
        {
            return Err(AsmtpError::InvalidMonitor(m.clone()));
        }
        let len = self.canonical_json().len();
        if len > MAX_BODY_BYTES {
            return Err(AsmtpError::TooLarge(len));
        }
        Ok(())
    }

    /// The exact bytes of the `application/json` part: compact JSON in the canonical field
    /// order, `data` object keys sorted. The same envelope always gives the same bytes.
    pub fn canonical_json(&self) -> Vec<u8> {
        let mut canonical = self.clone();
        for part in &mut canonical.content_parts {
            if let ContentPart::Data { data, .. } = part {
                *data = sorted_keys(data);
            }
        }
        // NOTE: serialising these types cannot fail (every map key is a string).
        serde_json::to_vec(&canonical).unwrap_or_default()
    }

    /// Reads and validates an envelope from its JSON (at most [`MAX_BODY_BYTES`]). Lenient
    /// where it is harmless (handles and ids are normalised, unknown fields ignored), so an
    /// idempotency check must compare the received bytes, not a re-serialisation.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, AsmtpError> {
        if bytes.len() > MAX_BODY_BYTES {
            return Err(AsmtpError::TooLarge(bytes.len()));
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| AsmtpError::Json(e.to_string()))?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// `text`, `image`, `file` or `data` when every part has that type, else `mixed`.
    pub fn type_hint(&self) -> TypeHint {
        let mut hints = self.content_parts.iter().map(ContentPart::type_hint);
        match hints.next() {
            None => TypeHint::Mixed,
            Some(first) => {
                if hints.all(|h| h == first) {
                    first
                } else {
                    TypeHint::Mixed
                }
            }
        }
    }

    /// The body size in tokens, estimated as the canonical JSON length / 4 (rounded up).
    pub fn size_hint(&self) -> u64 {
        self.canonical_json().len().div_ceil(4) as u64
    }

    /// The text/plain part for people: the subject, the text parts, one line per other part,
    /// and a short signature naming the envelope.
    pub fn text_rendering(&self) -> String {
        let mut blocks: Vec<String> = Vec::new();
        if let Some(s) = self
            .subject
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            blocks.push(s.to_owned());
        }
        let mut others: Vec<String> = Vec::new();
        for part in &self.content_parts {
            match part {
                ContentPart::Text { text } => {
                    let t = text.replace("\r\n", "\n");
                    let t = t.trim();
                    if !t.is_empty() {
                        blocks.push(t.to_owned());
                    }
                }
                other => others.extend(other.describe()),
            }
        }
        if !others.is_empty() {
            blocks.push(others.join("\n"));
        }
        let mut out = blocks.join("\n\n");
        // NOTE: a `-- ` signature, so that a person's reply tool (and our reply stripper) keeps
        // it out of the answer.
        out.push_str(&format!(
            "\n\n-- \nASMTP envelope {} from {}. The envelope itself is the JSON part of this mail.\n",
            self.id, self.from
        ));
        out
    }

    /// The `X-ASMTP-*` headers, in a fixed order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (header::VERSION, VERSION.to_owned()),
            (header::ID, self.id.to_string()),
            (header::FROM, self.from.to_string()),
            (header::TO, format_handle_list(&self.to)),
        ];
        if !self.cc.is_empty() {
            h.push((header::CC, format_handle_list(&self.cc)));
        }
        h.push((header::DATE_MS, self.date_ms.to_string()));
        h.push((header::TYPE_HINT, self.type_hint().as_str().to_owned()));
        h.push((header::SIZE_HINT, self.size_hint().to_string()));
        if let Some(m) = &self.monitor {
            h.push((header::MONITOR, m.clone()));
        }
        h
    }

    /// The mail that carries this envelope. Message-ID, In-Reply-To and References are the
    /// envelope ids in `agent_domain`; `date` is the `Date` header (the caller's clock).
    /// When the envelope answers another one but lists no references, References holds the
    /// answered id, so that mail clients thread it.
    pub fn to_outbound(&self, agent_domain: &str, date: DateTime<Utc>) -> Outbound {
        self.to_outbound_mapped(agent_domain, date, &|h: &Handle| h.to_address(agent_domain))
    }

    /// As [`Envelope::to_outbound`], with the handles' addresses from `address_of` (a
    /// directory for accounts whose address is not `owner.name@agent-domain`).
    pub fn to_outbound_mapped(
        &self,
        agent_domain: &str,
        date: DateTime<Utc>,
        address_of: &dyn Fn(&Handle) -> String,
    ) -> Outbound {
        let mailbox = |h: &Handle| Mailbox::new(address_of(h));
        let mut references: Vec<String> = self
            .references
            .iter()
            .map(|r| r.to_message_id(agent_domain))
            .collect();
        if references.is_empty()
            && let Some(irt) = &self.in_reply_to
        {
            references.push(irt.to_message_id(agent_domain));
        }
        Outbound {
            from: mailbox(&self.from),
            to: self.to.iter().map(mailbox).collect(),
            cc: self.cc.iter().map(mailbox).collect(),
            subject: self.subject.clone().unwrap_or_default(),
            date,
            message_id: self.id.to_message_id(agent_domain),
            in_reply_to: self
                .in_reply_to
                .as_ref()
                .map(|i| i.to_message_id(agent_domain)),
            references,
            extra_headers: self
                .headers()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), ValueKind::Text, v))
                .collect(),
            text: self.text_rendering(),
            json_part: Some(self.canonical_json()),
            attachments: Vec::new(),
        }
    }

    /// The envelope a mail carries. `Ok(None)` when it has no `X-ASMTP-Id` (not ASMTP).
    ///
    /// The JSON part, when present, is the source of truth; its `id` and `from` must equal the
    /// headers, and the mail `From` must be the `X-ASMTP-From` handle's address. Without a
    /// JSON part the envelope is rebuilt from the headers and the text body (one text part).
    /// A headers-only [`Inbound`] gives [`AsmtpError::MissingBody`]: use [`PushFrame`].
    pub fn from_inbound(msg: &Inbound) -> Result<Option<Envelope>, AsmtpError> {
        Envelope::from_inbound_mapped(msg, &Handle::from_address)
    }

    /// As [`Envelope::from_inbound`], with addresses read as handles by `handle_of` (a
    /// directory) instead of by their `owner.name` local part.
    pub fn from_inbound_mapped(
        msg: &Inbound,
        handle_of: &dyn Fn(&str) -> Option<Handle>,
    ) -> Result<Option<Envelope>, AsmtpError> {
        let Some(common) = Common::read(msg, handle_of)? else {
            return Ok(None);
        };
        let body = msg.body.as_ref().ok_or(AsmtpError::MissingBody)?;
        if let Some(json) = &body.json_part {
            let envelope = Envelope::from_json(json)?;
            if envelope.id != common.id {
                return Err(AsmtpError::Mismatch {
                    what: "X-ASMTP-Id and the JSON id",
                    left: common.id.to_string(),
                    right: envelope.id.to_string(),
                });
            }
            if envelope.from != common.from {
                return Err(AsmtpError::Mismatch {
                    what: "X-ASMTP-From and the JSON from",
                    left: common.from.to_string(),
                    right: envelope.from.to_string(),
                });
            }
            return Ok(Some(envelope));
        }
        // NOTE: no JSON part: a lighter sender (or a relay that dropped it). Rebuild what the
        // headers say, with the text body as the one content part.
        let text = match (&body.text, &body.html) {
            (Some(t), _) if !t.trim().is_empty() => t.replace("\r\n", "\n").trim().to_owned(),
            (_, Some(h)) => super::reply::html_to_text(h),
            _ => String::new(),
        };
        let content_parts = if text.is_empty() {
            Vec::new()
        } else {
            vec![ContentPart::Text { text }]
        };
        let (in_reply_to, references) = thread_ids(msg);
        let envelope = Envelope {
            id: common.id,
            from: common.from,
            to: common.to,
            cc: common.cc,
            subject: msg.subject.clone().filter(|s| !s.trim().is_empty()),
            in_reply_to,
            references,
            date_ms: common.date_ms,
            content_parts,
            monitor: single(&msg.headers, header::MONITOR)?.filter(|m| !m.is_empty()),
        };
        envelope.validate()?;
        Ok(Some(envelope))
    }
}

/// A copy of `v` with every object's keys in sorted order.
fn sorted_keys(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::with_capacity(map.len());
            for k in keys {
                if let Some(val) = map.get(k) {
                    out.insert(k.clone(), sorted_keys(val));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// In-Reply-To and References of a mail, mapped back to envelope ids (others dropped), with
/// the answered id last in the references when both are present.
fn thread_ids(msg: &Inbound) -> (Option<EnvelopeId>, Vec<EnvelopeId>) {
    let in_reply_to = msg
        .in_reply_to
        .iter()
        .find_map(|m| EnvelopeId::from_message_id(m));
    let mut references: Vec<EnvelopeId> = msg
        .references
        .iter()
        .filter_map(|m| EnvelopeId::from_message_id(m))
        .collect();
    if let Some(irt) = &in_reply_to
        && references.last().is_some_and(|last| last != irt)
    {
        references.retain(|r| r != irt);
        references.push(irt.clone());
    }
    (in_reply_to, references)
}

/// The one value of a header: identical repeats count once, different ones are an error.
fn single(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, AsmtpError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(name) {
        match found {
            None => found = Some(v),
            Some(prev) if prev.trim() == v.trim() => {}
            Some(_) => return Err(AsmtpError::ConflictingHeader(name)),
        }
    }
    Ok(found.map(|v| v.trim().to_owned()))
}

/// What every ASMTP mail must say in its headers, checked against the mail `From`.
struct Common {
    id: EnvelopeId,
    from: Handle,
    to: Vec<Handle>,
    cc: Vec<Handle>,
    date_ms: i64,
}

impl Common {
    fn read(
        msg: &Inbound,
        handle_of: &dyn Fn(&str) -> Option<Handle>,
    ) -> Result<Option<Common>, AsmtpError> {
        let h = &msg.headers;
        let Some(raw_id) = single(h, header::ID)? else {
            return Ok(None);
        };
        if let Some(v) = single(h, header::VERSION)? {
            let major = v.split('.').next().unwrap_or_default().trim();
            if major != VERSION {
                return Err(AsmtpError::UnsupportedVersion(v));
            }
        }
        let invalid = |name: &'static str, value: &str| AsmtpError::InvalidHeader {
            name,
            value: value.to_owned(),
        };
        let id = EnvelopeId::parse(&raw_id).map_err(|_| invalid(header::ID, &raw_id))?;
        let raw_from = single(h, header::FROM)?.ok_or(AsmtpError::MissingHeader(header::FROM))?;
        let from = Handle::parse(&raw_from).map_err(|_| invalid(header::FROM, &raw_from))?;
        let mail_from = msg
            .from
            .first()
            .map(|m| m.email.as_str())
            .unwrap_or_default();
        if handle_of(mail_from).as_ref() != Some(&from) {
            return Err(AsmtpError::Mismatch {
                what: "X-ASMTP-From and the mail From",
                left: from.to_string(),
                right: mail_from.to_owned(),
            });
        }
        let list = |name: &'static str, mailboxes: &[Mailbox]| -> Result<Vec<Handle>, AsmtpError> {
            match single(h, name)? {
                Some(v) => parse_handle_list(&v).map_err(|_| invalid(name, &v)),
                // NOTE: a relay may drop X- headers; the mapped addresses say the same.
                None => Ok(mailboxes
                    .iter()
                    .filter_map(|m| handle_of(&m.email))
                    .collect()),
            }
        };
        let to = list(header::TO, &msg.to)?;
        if to.is_empty() {
            return Err(AsmtpError::NoRecipients);
        }
        let cc = list(header::CC, &msg.cc)?;
        let date_ms = match single(h, header::DATE_MS)? {
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|ms| *ms >= 0)
                .ok_or_else(|| invalid(header::DATE_MS, &v))?,
            None => msg
                .date
                .map(|d| d.timestamp_millis())
                .ok_or(AsmtpError::MissingHeader(header::DATE_MS))?,
        };
        Ok(Some(Common {
            id,
            from,
            to,
            cc,
            date_ms,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Push frames and cursors

/// A push frame (`envelope.notify`, one row of a mailbox listing): headers only, no body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFrame {
    pub id: EnvelopeId,
    pub from: Handle,
    pub to: Vec<Handle>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Handle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<EnvelopeId>,
    pub type_hint: TypeHint,
    pub size_hint: u64,
    /// When the receiver ingested the mail (ms since the epoch).
    pub created_at: i64,
    /// The sender's clock (ms since the epoch).
    pub date_ms: i64,
}

impl PushFrame {
    /// The frame of a mail, from its headers only (the body is never looked at). `Ok(None)`
    /// when the mail is not ASMTP. `created_at_ms` is the receiver's ingest time.
    pub fn from_inbound(
        msg: &Inbound,
        created_at_ms: i64,
    ) -> Result<Option<PushFrame>, AsmtpError> {
        PushFrame::from_inbound_mapped(msg, created_at_ms, &Handle::from_address)
    }

    /// As [`PushFrame::from_inbound`], with addresses read as handles by `handle_of`.
    pub fn from_inbound_mapped(
        msg: &Inbound,
        created_at_ms: i64,
        handle_of: &dyn Fn(&str) -> Option<Handle>,
    ) -> Result<Option<PushFrame>, AsmtpError> {
        let Some(common) = Common::read(msg, handle_of)? else {
            return Ok(None);
        };
        let h = &msg.headers;
        let type_hint = single(h, header::TYPE_HINT)?
            .and_then(|v| TypeHint::parse(&v))
            .unwrap_or(TypeHint::Mixed);
        let size_hint = single(h, header::SIZE_HINT)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Some(PushFrame {
            id: common.id,
            from: common.from,
            to: common.to,
            cc: common.cc,
            subject: msg.subject.clone().filter(|s| !s.trim().is_empty()),
            in_reply_to: thread_ids(msg).0,
            type_hint,
            size_hint,
            created_at: created_at_ms,
            date_ms: common.date_ms,
        }))
    }

    /// The frame as compact JSON.
    pub fn to_json(&self) -> String {
        // NOTE: serialising these types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The cursor position of this frame.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            envelope_id: self.id.clone(),
        }
    }
}

/// A position in a mailbox: `(created_at ms, envelope_id)`, ordered strictly by both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub created_at: i64,
    pub envelope_id: EnvelopeId,
}

impl Cursor {
    /// A cursor.
    pub fn new(created_at: i64, envelope_id: EnvelopeId) -> Cursor {
        Cursor {
            created_at,
            envelope_id,
        }
    }

    /// True when `self` comes strictly after `other` (a row at `self` is new to a client that
    /// has seen up to `other`).
    pub fn after(&self, other: &Cursor) -> bool {
        self > other
    }

    /// Reads the string form `created_at:envelope_id`.
    pub fn parse(value: &str) -> Result<Cursor, AsmtpError> {
        let bad = || AsmtpError::InvalidCursor(value.trim().to_owned());
        let (at, id) = value.trim().split_once(':').ok_or_else(bad)?;
        let created_at = at
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|t| *t >= 0)
            .ok_or_else(bad)?;
        let envelope_id = EnvelopeId::parse(id).map_err(|_| bad())?;
        Ok(Cursor {
            created_at,
            envelope_id,
        })
    }
}

impl Ord for Cursor {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.created_at, &self.envelope_id).cmp(&(other.created_at, &other.envelope_id))
    }
}

impl PartialOrd for Cursor {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.created_at, self.envelope_id)
    }
}

impl FromStr for Cursor {
    type Err = AsmtpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Body;
    use serde_json::json;

    const DOMAIN: &str = "agents.example.test";
    const ID1: &str = "01JDK3T8ZQ4W5X6Y7Z8A9B0C1D";
    const ID2: &str = "01JDK3V2M5N6P7Q8R9S0T1V2W3";
    const ID3: &str = "01JDK3W9A8B7C6D5E4F3G2H1J0";

    fn handle(s: &str) -> Handle {
        Handle::parse(s).unwrap()
    }

    fn id(s: &str) -> EnvelopeId {
        EnvelopeId::parse(s).unwrap()
    }

    fn sample() -> Envelope {
        let mut e = Envelope::new(
            id(ID3),
            handle("@acme.planner"),
            vec![handle("@acme.coder")],
            1_795_000_000_000,
            vec![ContentPart::text("Please refactor the parser.")],
        );
        e.subject = Some("Refactor the parser".into());
        e
    }

    /// What a receiver would see for a sent envelope (the message codec's job, done by hand).
    fn inbound_of(out: &Outbound) -> Inbound {
        let mut headers = HeaderMap::new();
        for (n, _, v) in &out.extra_headers {
            headers.push(n.clone(), v.clone());
        }
        Inbound {
            message_id: Some(out.message_id.clone()),
            in_reply_to: out.in_reply_to.iter().cloned().collect(),
            references: out.references.clone(),
            from: vec![out.from.clone()],
            to: out.to.clone(),
            cc: out.cc.clone(),
            subject: Some(out.subject.clone()),
            date: Some(out.date),
            headers,
            body: Some(Body {
                text: Some(out.text.clone()),
                html: None,
                json_part: out.json_part.clone(),
                attachments: Vec::new(),
            }),
        }
    }

    fn date() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_795_000_000_500).unwrap()
    }

    #[test]
    fn handles_parse_leniently_and_validate_strictly() {
        assert_eq!(handle("@acme.planner").to_string(), "@acme.planner");
        assert_eq!(handle("  acme.planner\t").to_string(), "@acme.planner");
        assert_eq!(handle("@Acme.Planner").to_string(), "@acme.planner");
        assert_eq!(handle("@a-b_1.c_2-d").owner(), "a-b_1");
        for bad in [
            "",
            "@",
            "@acme",
            "@acme.",
            "@.planner",
            "@a.b.c",
            "@ac me.planner",
            "@acme.plan+ner",
            "@@acme.planner",
            "@acme.\u{212A}ey",
            "@acmé.planner",
        ] {
            assert!(Handle::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("@{}.{}", "o".repeat(32), "n".repeat(32));
        assert!(Handle::parse(&long).is_err());
        assert!(Handle::parse(&long[..64]).is_ok());
    }

    #[test]
    fn handles_map_to_addresses_and_back() {
        let h = handle("@acme.planner");
        let a = h.to_address(DOMAIN);
        assert_eq!(a, "acme.planner@agents.example.test");
        assert_eq!(Handle::from_address(&a), Some(h.clone()));
        assert_eq!(
            Handle::from_address("Acme.Planner@Other.test"),
            Some(h.clone())
        );
        assert_eq!(Handle::from_address_in(&a, "AGENTS.example.test"), Some(h));
        assert_eq!(Handle::from_address_in(&a, "other.test"), None);
        for bad in [
            "planner@x.test",
            "a.b.c@x.test",
            "no-at-sign",
            "@a.b@x.test",
        ] {
            assert_eq!(Handle::from_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn handle_lists_tolerate_spacing() {
        let l = parse_handle_list(" @a.b,@c.d ,  e.f ,, ").unwrap();
        assert_eq!(format_handle_list(&l), "@a.b, @c.d, @e.f");
        assert!(parse_handle_list("@a.b, nope").is_err());
    }

    #[test]
    fn envelope_ids() {
        assert_eq!(id(" 01jdk3t8zq4w5x6y7z8a9b0c1d ").as_str(), ID1);
        for bad in [
            "",
            "01JDK3T8ZQ4W5X6Y7Z8A9B0C1",
            "02JDK3T8ZQ4W5X6Y7Z8A9B0C1D",
            "01JDK3T8ZQ4W5X6Y7Z8A9B0C1I",
            "01JDK3T8ZQ4W5X6Y7Z8A9B0C1DX",
            "01JDK3T8ZQ4W5X6Y7Z8A9B0C1-",
        ] {
            assert!(EnvelopeId::parse(bad).is_err(), "{bad}");
        }
        let e = EnvelopeId::from_parts(1_795_000_000_000, 0x1234_5678_9abc_def0_1234).unwrap();
        assert_eq!(e.timestamp_ms(), 1_795_000_000_000);
        assert!(e.as_str().starts_with("01"));
        assert_eq!(EnvelopeId::parse(e.as_str()), Ok(e.clone()));
        let later = EnvelopeId::from_parts(1_795_000_000_001, 0).unwrap();
        assert!(later > e);
        assert!(EnvelopeId::from_parts(0, 1).is_err());
        assert!(EnvelopeId::from_parts(EnvelopeId::END_MS, 1).is_err());
        assert!(EnvelopeId::from_parts(EnvelopeId::MIN_MS, 0).is_ok());
        assert_eq!(
            EnvelopeId::from_message_id(&format!("<{ID1}@{DOMAIN}>")),
            Some(id(ID1))
        );
        assert_eq!(EnvelopeId::from_message_id("abc@example.test"), None);
    }

    #[test]
    fn monitors() {
        assert!(is_valid_monitor("mon_a"));
        assert!(is_valid_monitor(&format!("mon_{}", "Z9_-".repeat(16))));
        assert!(!is_valid_monitor(&format!("mon_{}", "x".repeat(65))));
        assert!(!is_valid_monitor("mon_"));
        assert!(!is_valid_monitor("mon_a.b"));
        assert!(!is_valid_monitor("monitor_a"));
    }

    #[test]
    fn canonical_json_is_exact_and_stable() {
        let mut e = sample();
        e.cc = vec![handle("@acme.reviewer")];
        e.in_reply_to = Some(id(ID2));
        e.references = vec![id(ID1), id(ID2)];
        e.monitor = Some("mon_q4".into());
        e.content_parts.push(ContentPart::data(
            json!({"z": 1, "a": {"y": [{"d": 1, "c": 2}], "b": null}}),
            Some("aamp/1.1"),
        ));
        let expected = format!(
            concat!(
                r#"{{"id":"{}","from":"@acme.planner","to":["@acme.coder"],"cc":["@acme.reviewer"],"#,
                r#""subject":"Refactor the parser","in_reply_to":"{}","references":["{}","{}"],"#,
                r#""date_ms":1795000000000,"content_parts":[{{"type":"text","text":"Please refactor the parser."}},"#,
                r#"{{"type":"data","data":{{"a":{{"b":null,"y":[{{"c":2,"d":1}}]}},"z":1}},"schema":"aamp/1.1"}}],"#,
                r#""monitor":"mon_q4"}}"#
            ),
            ID3, ID2, ID1, ID2
        );
        let bytes = e.canonical_json();
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
        assert_eq!(e.canonical_json(), bytes);
        let back = Envelope::from_json(&bytes).unwrap();
        assert_eq!(back.canonical_json(), bytes);
        // Minimal: empty and absent fields are left out.
        let min = String::from_utf8(sample().canonical_json()).unwrap();
        assert!(!min.contains("cc") && !min.contains("references") && !min.contains("monitor"));
    }

    #[test]
    fn parts_serialise_tagged() {
        let parts = vec![
            ContentPart::Image {
                url: Some("https://files.example.test/a.png".into()),
                file_id: None,
                mime_type: Some("image/png".into()),
            },
            ContentPart::File {
                url: None,
                file_id: Some("file_9".into()),
                name: Some("report.pdf".into()),
                mime_type: Some("application/pdf".into()),
                size: Some(52_431),
            },
        ];
        let s = serde_json::to_string(&parts).unwrap();
        assert_eq!(
            s,
            r#"[{"type":"image","url":"https://files.example.test/a.png","mime_type":"image/png"},{"type":"file","file_id":"file_9","name":"report.pdf","mime_type":"application/pdf","size":52431}]"#
        );
        let back: Vec<ContentPart> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, parts);
    }

    #[test]
    fn validation_rules() {
        let check = |f: &dyn Fn(&mut Envelope)| {
            let mut e = sample();
            f(&mut e);
            e.validate()
        };
        assert_eq!(check(&|_| {}), Ok(()));
        assert_eq!(check(&|e| e.to.clear()), Err(AsmtpError::NoRecipients));
        assert_eq!(
            check(&|e| e.content_parts.clear()),
            Err(AsmtpError::NoContent)
        );
        assert_eq!(
            check(&|e| e.content_parts.push(ContentPart::text(""))),
            Err(AsmtpError::EmptyText(1))
        );
        assert_eq!(
            check(&|e| e.content_parts[0] = ContentPart::Image {
                url: Some(" ".into()),
                file_id: None,
                mime_type: None
            }),
            Err(AsmtpError::MissingSource(0, "image"))
        );
        assert_eq!(
            check(&|e| e.content_parts[0] = ContentPart::data(json!([1, 2]), None)),
            Err(AsmtpError::DataNotObject(0))
        );
        assert!(matches!(
            check(&|e| {
                e.in_reply_to = Some(id(ID1));
                e.references = vec![id(ID1), id(ID2)];
            }),
            Err(AsmtpError::ReferencesMismatch { .. })
        ));
        assert_eq!(
            check(&|e| {
                e.in_reply_to = Some(id(ID2));
                e.references = vec![id(ID1), id(ID2)];
            }),
            Ok(())
        );
        assert_eq!(check(&|e| e.references = vec![id(ID1)]), Ok(()));
        assert_eq!(
            check(&|e| e.date_ms = -1),
            Err(AsmtpError::NegativeDate(-1))
        );
        assert!(matches!(
            check(&|e| e.monitor = Some("mon_bad!".into())),
            Err(AsmtpError::InvalidMonitor(_))
        ));
        assert!(matches!(
            check(&|e| e.content_parts[0] = ContentPart::text("x".repeat(MAX_BODY_BYTES))),
            Err(AsmtpError::TooLarge(_))
        ));
    }

    #[test]
    fn from_json_is_typed_and_lenient_where_harmless() {
        let ok = format!(
            r#"{{"id":"{}","from":"Acme.Planner","to":["@acme.coder"],"cc":null,"date_ms":5,
               "content_parts":[{{"type":"text","text":"hi"}}],"received_ms":9}}"#,
            ID1.to_lowercase()
        );
        let e = Envelope::from_json(ok.as_bytes()).unwrap();
        assert_eq!(e.from.to_string(), "@acme.planner");
        assert_eq!(e.id.as_str(), ID1);
        let no_to = format!(
            r#"{{"id":"{ID1}","from":"@a.b","date_ms":5,"content_parts":[{{"type":"text","text":"hi"}}]}}"#
        );
        assert_eq!(
            Envelope::from_json(no_to.as_bytes()),
            Err(AsmtpError::NoRecipients)
        );
        for bad in [
            "",
            "[]",
            "{\"id\":1}",
            &format!(
                r#"{{"id":"{ID1}","from":"@a.b.c","to":["@c.d"],"date_ms":1,"content_parts":[{{"type":"text","text":"x"}}]}}"#
            ),
            &format!(
                r#"{{"id":"{ID1}","from":"@a.b","to":["@c.d"],"date_ms":1,"content_parts":[{{"type":"video","url":"x"}}]}}"#
            ),
        ] {
            assert!(
                matches!(
                    Envelope::from_json(bad.as_bytes()),
                    Err(AsmtpError::Json(_))
                ),
                "{bad}"
            );
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            Envelope::from_json(&big),
            Err(AsmtpError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn hints() {
        let mut e = sample();
        assert_eq!(e.type_hint(), TypeHint::Text);
        let len = e.canonical_json().len();
        assert_eq!(e.size_hint(), len.div_ceil(4) as u64);
        e.content_parts = vec![ContentPart::data(json!({"a": 1}), None)];
        assert_eq!(e.type_hint(), TypeHint::Data);
        e.content_parts.push(ContentPart::text("x"));
        assert_eq!(e.type_hint(), TypeHint::Mixed);
        assert_eq!(TypeHint::parse(" MIXED "), Some(TypeHint::Mixed));
        assert_eq!(TypeHint::parse("video"), None);
    }

    #[test]
    fn text_rendering_reads_well() {
        let mut e = sample();
        e.content_parts.push(ContentPart::File {
            url: Some("https://files.example.test/r.pdf".into()),
            file_id: None,
            name: Some("r.pdf".into()),
            mime_type: Some("application/pdf".into()),
            size: Some(10),
        });
        e.content_parts.push(ContentPart::Image {
            url: None,
            file_id: Some("file_1".into()),
            mime_type: None,
        });
        e.content_parts
            .push(ContentPart::data(json!({"k": "v"}), Some("aamp/1.1")));
        let t = e.text_rendering();
        let expected = format!(
            "Refactor the parser\n\nPlease refactor the parser.\n\n\
             [file] r.pdf: https://files.example.test/r.pdf (application/pdf, 10 bytes)\n\
             [image] file id file_1\n\
             [data, schema aamp/1.1] {{\"k\":\"v\"}}\n\n-- \n\
             ASMTP envelope {ID3} from @acme.planner. The envelope itself is the JSON part of this mail.\n"
        );
        assert_eq!(t, expected);
        assert_eq!(crate::wire::reply::reply_text(&t).lines().count(), 7);
    }

    #[test]
    fn outbound_mapping() {
        let mut e = sample();
        e.cc = vec![handle("@acme.reviewer"), handle("@other.bot")];
        e.in_reply_to = Some(id(ID2));
        e.monitor = Some("mon_7".into());
        let out = e.to_outbound(DOMAIN, date());
        assert_eq!(out.from.email, "acme.planner@agents.example.test");
        assert_eq!(out.to[0].email, "acme.coder@agents.example.test");
        assert_eq!(out.cc.len(), 2);
        assert_eq!(out.subject, "Refactor the parser");
        assert_eq!(out.message_id, format!("{ID3}@{DOMAIN}"));
        assert_eq!(out.in_reply_to, Some(format!("{ID2}@{DOMAIN}")));
        assert_eq!(out.references, vec![format!("{ID2}@{DOMAIN}")]);
        let names: Vec<&str> = out
            .extra_headers
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                header::VERSION,
                header::ID,
                header::FROM,
                header::TO,
                header::CC,
                header::DATE_MS,
                header::TYPE_HINT,
                header::SIZE_HINT,
                header::MONITOR
            ]
        );
        assert!(
            out.extra_headers
                .iter()
                .all(|(_, k, _)| *k == ValueKind::Text)
        );
        let cc = out
            .extra_headers
            .iter()
            .find(|(n, _, _)| n == header::CC)
            .unwrap();
        assert_eq!(cc.2, "@acme.reviewer, @other.bot");
        assert_eq!(out.json_part, Some(e.canonical_json()));
        assert_eq!(out.text, e.text_rendering());
        let mut no_subject = sample();
        no_subject.subject = None;
        assert_eq!(no_subject.to_outbound(DOMAIN, date()).subject, "");
    }

    #[test]
    fn inbound_round_trip() {
        let mut e = sample();
        e.cc = vec![handle("@acme.reviewer")];
        e.in_reply_to = Some(id(ID2));
        e.references = vec![id(ID1), id(ID2)];
        let msg = inbound_of(&e.to_outbound(DOMAIN, date()));
        assert_eq!(Envelope::from_inbound(&msg), Ok(Some(e.clone())));
        let frame = PushFrame::from_inbound(&msg, 1_795_000_001_000)
            .unwrap()
            .unwrap();
        assert_eq!(frame.id, e.id);
        assert_eq!(frame.cc, e.cc);
        assert_eq!(frame.in_reply_to, Some(id(ID2)));
        assert_eq!(frame.type_hint, TypeHint::Text);
        assert_eq!(frame.size_hint, e.size_hint());
        assert_eq!(frame.date_ms, e.date_ms);
    }

    #[test]
    fn not_asmtp_is_none() {
        let msg = Inbound::default();
        assert_eq!(Envelope::from_inbound(&msg), Ok(None));
        assert_eq!(PushFrame::from_inbound(&msg, 0), Ok(None));
    }

    #[test]
    fn spoofed_from_is_refused() {
        let e = sample();
        // The JSON claims another sender than the headers.
        let mut out = e.to_outbound(DOMAIN, date());
        let mut forged = e.clone();
        forged.from = handle("@acme.admin");
        out.json_part = Some(forged.canonical_json());
        assert!(matches!(
            Envelope::from_inbound(&inbound_of(&out)),
            Err(AsmtpError::Mismatch {
                what: "X-ASMTP-From and the JSON from",
                ..
            })
        ));
        // The mail From is another address than X-ASMTP-From.
        let mut out = e.to_outbound(DOMAIN, date());
        out.from = Mailbox::new("acme.admin@agents.example.test");
        let msg = inbound_of(&out);
        assert!(matches!(
            Envelope::from_inbound(&msg),
            Err(AsmtpError::Mismatch {
                what: "X-ASMTP-From and the mail From",
                ..
            })
        ));
        assert!(matches!(
            PushFrame::from_inbound(&msg, 0),
            Err(AsmtpError::Mismatch { .. })
        ));
        // The JSON id differs from X-ASMTP-Id.
        let mut out = e.to_outbound(DOMAIN, date());
        let mut other = e.clone();
        other.id = id(ID1);
        out.json_part = Some(other.canonical_json());
        assert!(matches!(
            Envelope::from_inbound(&inbound_of(&out)),
            Err(AsmtpError::Mismatch {
                what: "X-ASMTP-Id and the JSON id",
                ..
            })
        ));
    }

    #[test]
    fn headers_are_read_tolerantly() {
        let e = sample();
        let out = e.to_outbound(DOMAIN, date());
        let mut msg = inbound_of(&out);
        let mut headers = HeaderMap::new();
        for (n, v) in msg.headers.iter() {
            let v = match n {
                header::TO => "  @ACME.coder ,@acme.other  ".to_owned(),
                header::FROM => format!("  {v}  "),
                _ => v.to_owned(),
            };
            headers.push(n.to_ascii_lowercase(), v);
        }
        msg.headers = headers;
        msg.body = None;
        let frame = PushFrame::from_inbound(&msg, 42).unwrap().unwrap();
        assert_eq!(format_handle_list(&frame.to), "@acme.coder, @acme.other");
        assert_eq!(frame.from, e.from);
        assert_eq!(Envelope::from_inbound(&msg), Err(AsmtpError::MissingBody));
        // Conflicting duplicates and unsupported versions are refused.
        let mut dup = inbound_of(&out);
        dup.headers.push("x-asmtp-id", ID1);
        assert_eq!(
            PushFrame::from_inbound(&dup, 0),
            Err(AsmtpError::ConflictingHeader(header::ID))
        );
        let mut v2 = inbound_of(&out);
        let mut h = HeaderMap::new();
        for (n, v) in v2.headers.iter() {
            h.push(n, if n == header::VERSION { "2" } else { v });
        }
        v2.headers = h;
        assert!(matches!(
            Envelope::from_inbound(&v2),
            Err(AsmtpError::UnsupportedVersion(_))
        ));
        let mut garbage = inbound_of(&out);
        garbage.headers.push(header::ID, "not-a-ulid");
        assert!(PushFrame::from_inbound(&garbage, 0).is_err());
    }

    #[test]
    fn without_json_part_the_envelope_is_rebuilt() {
        let mut e = sample();
        e.in_reply_to = Some(id(ID2));
        let mut msg = inbound_of(&e.to_outbound(DOMAIN, date()));
        msg.references.insert(0, "CAF00@mail.other.test".into());
        if let Some(b) = msg.body.as_mut() {
            b.json_part = None;
            b.text = Some("Just the text.\r\n".into());
        }
        let back = Envelope::from_inbound(&msg).unwrap().unwrap();
        assert_eq!(back.id, e.id);
        assert_eq!(
            back.content_parts,
            vec![ContentPart::text("Just the text.")]
        );
        assert_eq!(back.in_reply_to, Some(id(ID2)));
        assert_eq!(back.references, vec![id(ID2)]);
        assert_eq!(back.subject, e.subject);
        if let Some(b) = msg.body.as_mut() {
            b.text = None;
        }
        assert_eq!(Envelope::from_inbound(&msg), Err(AsmtpError::NoContent));
    }

    #[test]
    fn typical_push_frame_is_about_230_bytes() {
        let mut e = sample();
        e.in_reply_to = Some(id(ID2));
        e.references = vec![id(ID2)];
        let msg = inbound_of(&e.to_outbound(DOMAIN, date()));
        let json = PushFrame::from_inbound(&msg, 1_795_000_001_234)
            .unwrap()
            .unwrap()
            .to_json();
        assert!((150..=350).contains(&json.len()), "{} bytes", json.len());
        assert!(json.starts_with(&format!(
            r#"{{"id":"{ID3}","from":"@acme.planner","to":["@acme.coder"],"subject""#
        )));
        let tail = format!(
            r#","in_reply_to":"{ID2}","type_hint":"text","size_hint":{},"created_at":1795000001234,"date_ms":1795000000000}}"#,
            e.size_hint()
        );
        assert!(json.ends_with(&tail), "{json}");
        let back: PushFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn cursors_order_strictly() {
        let a = Cursor::new(100, id(ID2));
        let b = Cursor::new(100, id(ID3));
        let c = Cursor::new(101, id(ID1));
        assert!(b.after(&a) && c.after(&b) && c.after(&a));
        assert!(!a.after(&a));
        let mut v = vec![c.clone(), a.clone(), b.clone()];
        v.sort();
        assert_eq!(v, vec![a.clone(), b, c]);
        let s = a.to_string();
        assert_eq!(s, format!("100:{ID2}"));
        assert_eq!(Cursor::parse(&s), Ok(a.clone()));
        assert_eq!(s.parse::<Cursor>(), Ok(a));
        for bad in [
            "",
            "100",
            "x:01JDK3V2M5N6P7Q8R9S0T1V2W3",
            "-1:01JDK3V2M5N6P7Q8R9S0T1V2W3",
            "1:nope",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    /// The hand-written fixtures read as intended (the golden harness checks every field).
    #[test]
    fn fixtures() {
        macro_rules! fixture {
            ($name:literal) => {
                (
                    $name,
                    &include_bytes!(concat!("../../fixtures/asmtp/", $name))[..],
                )
            };
        }
        let accepted = [
            fixture!("text-part-new-envelope.eml"),
            fixture!("reply-with-references-and-cc.eml"),
            fixture!("image-part-by-url.eml"),
            fixture!("file-part-by-file-id.eml"),
            fixture!("data-part-aamp-task.eml"),
            fixture!("mixed-text-file-data.eml"),
            fixture!("monitor-delivery-facts.eml"),
            fixture!("tolerant-header-case-and-spacing.eml"),
            fixture!("headers-and-text-without-json-part.eml"),
        ];
        for (name, raw) in accepted {
            let msg = Inbound::from_bytes(raw).unwrap();
            let e = Envelope::from_inbound(&msg)
                .unwrap_or_else(|err| panic!("{name}: {err}"))
                .unwrap();
            let body = msg.body.clone().unwrap();
            if let Some(json) = &body.json_part {
                assert_eq!(&e.canonical_json(), json, "{name}");
                let text = body.text.unwrap_or_default().replace("\r\n", "\n");
                // NOTE: the line break before a MIME boundary belongs to the boundary.
                assert_eq!(text.trim_end(), e.text_rendering().trim_end(), "{name}");
            }
            let mut headers_only = msg.clone();
            headers_only.body = None;
            let frame = PushFrame::from_inbound(&headers_only, 1_795_500_000_000)
                .unwrap()
                .unwrap();
            assert_eq!(frame.id, e.id, "{name}");
            if body.json_part.is_some() {
                assert_eq!(frame.size_hint, e.size_hint(), "{name}");
                assert_eq!(frame.type_hint, e.type_hint(), "{name}");
            }
        }
        let raw = fixture!("headers-and-text-without-json-part.eml").1;
        let rebuilt = Envelope::from_inbound(&Inbound::from_bytes(raw).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            rebuilt.content_parts,
            vec![ContentPart::text(
                "Follow-up: the config tests also pass on Windows now."
            )]
        );
        assert_eq!(rebuilt.in_reply_to, Some(id("01M817QTKDG2J53JDWE0F7X90S")));
        for (name, raw) in [
            fixture!("refused-json-from-differs-from-header.eml"),
            fixture!("refused-mail-from-differs-from-header.eml"),
        ] {
            let msg = Inbound::from_bytes(raw).unwrap();
            assert!(
                matches!(
                    Envelope::from_inbound(&msg),
                    Err(AsmtpError::Mismatch { .. })
                ),
                "{name}"
            );
        }
    }
}
