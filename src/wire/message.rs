//! Whole messages: [`Outbound`] -> RFC 5322 bytes, and raw bytes or a JMAP `Email` object ->
//! [`Inbound`] (RFC 5322, RFC 2045–2047, RFC 8621 §4).
//!
//! Both inbound paths yield the same [`Inbound`]: header values in `asText` form, Message-IDs
//! without angle brackets, addresses split into name and address, and (once fetched) the body.

use chrono::{DateTime, Utc};
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};
use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

use super::aamp::{AampMessage, ValueKind};
use super::headers::{self, HeaderMap};

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

/// Why raw bytes are not a message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("cannot parse the message: no header section was found")]
    NoHeaders,
}

impl Outbound {
    /// The mail that carries an AAMP message: its Subject, `X-AAMP-*` headers and body, from
    /// `from` to `to`, with the caller's Message-ID and Date, and no thread headers, Cc or
    /// attachments yet (set those fields as needed).
    pub fn aamp(
        message: &AampMessage,
        from: Mailbox,
        to: Vec<Mailbox>,
        date: DateTime<Utc>,
        message_id: impl Into<String>,
    ) -> Outbound {
        Outbound {
            from,
            to,
            cc: Vec::new(),
            subject: message.subject(),
            date,
            message_id: message_id.into(),
            in_reply_to: None,
            references: Vec::new(),
            extra_headers: message
                .headers()
                .into_iter()
                .map(|(name, kind, value)| (name.to_owned(), kind, value))
                .collect(),
            text: message.body_text(),
            json_part: None,
            attachments: Vec::new(),
        }
    }

    /// The exact RFC 5322 bytes to submit. Deterministic: the same value always gives the same
    /// bytes (the MIME boundary is derived from the Message-ID), so a resend after a crash is
    /// byte-identical. No line exceeds 998 octets.
    pub fn render(&self) -> Vec<u8> {
        let mut h = String::with_capacity(1024 + self.text.len());
        write_mailboxes(&mut h, "From", std::slice::from_ref(&self.from));
        write_mailboxes(&mut h, "To", &self.to);
        if !self.cc.is_empty() {
            write_mailboxes(&mut h, "Cc", &self.cc);
        }
        headers::write_text(&mut h, "Subject", &self.subject);
        h.push_str("Date: ");
        h.push_str(&self.date.format("%a, %d %b %Y %H:%M:%S +0000").to_string());
        h.push_str("\r\n");
        write_ids(&mut h, "Message-ID", std::slice::from_ref(&self.message_id));
        if let Some(parent) = &self.in_reply_to {
            write_ids(&mut h, "In-Reply-To", std::slice::from_ref(parent));
        }
        if !self.references.is_empty() {
            write_ids(&mut h, "References", &self.references);
        }
        for (name, kind, value) in &self.extra_headers {
            match kind {
                ValueKind::Text => headers::write_text(&mut h, name, value),
                ValueKind::Base64Url => headers::write_base64url(&mut h, name, value),
            }
        }
        h.push_str("MIME-Version: 1.0\r\n");
        let mut out = h.into_bytes();
        self.body_part().write_part(&mut out);
        out
    }

    fn body_part(&self) -> MimePart<'_> {
        // NOTE: a text body always ends with a line break, so that the closing boundary (or the
        // end of the message) starts on a line of its own.
        let text: std::borrow::Cow<'_, str> = if self.text.ends_with('\n') {
            self.text.as_str().into()
        } else {
            format!("{}\n", self.text).into()
        };
        let text = MimePart::new(
            ContentType::new("text/plain").attribute("charset", "utf-8"),
            BodyPart::Text(text),
        );
        if self.json_part.is_none() && self.attachments.is_empty() {
            return text;
        }
        let mut parts = vec![text];
        if let Some(json) = &self.json_part {
            parts.push(MimePart::new(
                ContentType::new("application/json"),
                BodyPart::Binary(json.as_slice().into()),
            ));
        }
        for a in &self.attachments {
            parts.push(
                MimePart::new(
                    ContentType::new(a.content_type.as_str()),
                    BodyPart::Binary(a.bytes.as_slice().into()),
                )
                .attachment(a.filename.as_str()),
            );
        }
        MimePart::new(
            ContentType::new("multipart/mixed")
                .attribute("boundary", boundary_for(&self.message_id)),
            BodyPart::Multipart(parts),
        )
    }
}

/// A MIME boundary derived from the Message-ID. `=_` cannot occur in base64 or
/// quoted-printable output, and text parts are never sent as 8bit with such a line.
fn boundary_for(message_id: &str) -> String {
    let token: String = message_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect();
    format!("=_taskmail_{token}")
}

fn write_ids(out: &mut String, name: &str, ids: &[String]) {
    let list: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                "<{}>",
                super::thread::strip_brackets(&headers::sanitize(id))
            )
        })
        .collect();
    headers::write_text(out, name, &list.join(" "));
}

fn write_mailboxes(out: &mut String, name: &str, boxes: &[Mailbox]) {
    out.push_str(name);
    out.push(':');
    let mut col = name.len() + 1;
    for (i, b) in boxes.iter().enumerate() {
        let item = format_mailbox(b);
        let sep = if i + 1 < boxes.len() { "," } else { "" };
        if i > 0 && col + 1 + item.len() + sep.len() > headers::SOFT_LINE {
            out.push_str("\r\n");
            col = 0;
        }
        out.push(' ');
        out.push_str(&item);
        out.push_str(sep);
        col += 1 + item.len() + sep.len();
    }
    out.push_str("\r\n");
}

fn format_mailbox(b: &Mailbox) -> String {
    let email = headers::sanitize(&b.email).replace([' ', '<', '>', ','], "");
    let Some(name) = b
        .name
        .as_deref()
        .map(headers::sanitize)
        .filter(|n| !n.is_empty())
    else {
        return email;
    };
    if name.is_ascii() && !name.contains("=?") {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c));
        if plain {
            format!("{name} <{email}>")
        } else {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{email}>")
        }
    } else {
        let mut encoded = String::new();
        headers::write_text(&mut encoded, "X", &name);
        // write_text emitted "X: =?utf-8?B?..?=\r\n ..."; keep the words on one logical line.
        let words = encoded
            .trim_start_matches("X:")
            .replace("\r\n", "")
            .trim()
            .to_owned();
        format!("{words} <{email}>")
    }
}

impl Inbound {
    /// Reads raw RFC 5322 bytes leniently (mail-parser): malformed MIME, NUL bytes, invalid
    /// UTF-8 and truncated parts give a best-effort message, never a panic.
    pub fn from_bytes(raw: &[u8]) -> Result<Inbound, MessageError> {
        let parser = MessageParser::new()
            .with_mime_headers()
            .with_date_headers()
            .with_address_headers()
            .with_message_ids()
            .default_header_text();
        let msg = parser.parse(raw).ok_or(MessageError::NoHeaders)?;
        if msg.headers().is_empty() {
            return Err(MessageError::NoHeaders);
        }
        let mut inbound = Inbound {
            message_id: msg.message_id().map(super::thread::strip_brackets),
            in_reply_to: id_list(msg.in_reply_to()),
            references: id_list(msg.references()),
            from: mailboxes(msg.from()),
            to: mailboxes(msg.to()),
            cc: mailboxes(msg.cc()),
            subject: msg.subject().map(|s| s.trim().to_owned()),
            date: msg
                .date()
                .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
            ..Inbound::default()
        };
        for h in msg.headers() {
            let value = match h.value() {
                HeaderValue::Text(t) => t.trim().to_owned(),
                HeaderValue::TextList(l) => l.join(", "),
                HeaderValue::Empty => String::new(),
                _ => continue,
            };
            inbound.headers.push(h.name().to_owned(), value);
        }
        inbound.body = Some(body_of(&msg));
        Ok(inbound)
    }

    /// Reads a JMAP `Email` object (RFC 8621 §4.1) as returned by `Email/get`: `messageId`,
    /// `inReplyTo`, `references`, `from`, `to`, `cc`, `subject`, `sentAt`, any
    /// `header:NAME:asText` or `header:NAME:asText:all` properties, and, when present,
    /// `bodyValues` with `textBody`/`htmlBody` (ask for the body property
    /// `header:Content-Type` (raw form; Stalwart answers null to `:asText` there) too, so that format=flowed text is read as the person wrote it)
    /// and `attachments`. The `application/json` part of
    /// an ASMTP mail is a blob: the transport downloads it and sets `body.json_part`.
    pub fn from_jmap(email: &serde_json::Value) -> Inbound {
        use serde_json::Value;
        let strings = |key: &str| -> Vec<String> {
            email
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(super::thread::strip_brackets)
                        .collect()
                })
                .unwrap_or_default()
        };
        let addrs = |key: &str| -> Vec<Mailbox> {
            email
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| {
                            Some(Mailbox {
                                name: v
                                    .get("name")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned)
                                    .filter(|n| !n.is_empty()),
                                email: v.get("email")?.as_str()?.to_owned(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut inbound = Inbound {
            message_id: strings("messageId").into_iter().next(),
            in_reply_to: strings("inReplyTo"),
            references: strings("references"),
            from: addrs("from"),
            to: addrs("to"),
            cc: addrs("cc"),
            subject: email
                .get("subject")
                .and_then(Value::as_str)
                .map(|s| s.trim().to_owned()),
            date: email
                .get("sentAt")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.with_timezone(&Utc)),
            ..Inbound::default()
        };
        if let Some(obj) = email.as_object() {
            for (key, value) in obj {
                let Some(spec) = key.strip_prefix("header:") else {
                    continue;
                };
                let name = spec.split(':').next().unwrap_or(spec);
                match value {
                    Value::String(s) => inbound.headers.push(name, s.trim()),
                    Value::Array(a) => {
                        for s in a.iter().filter_map(Value::as_str) {
                            inbound.headers.push(name, s.trim());
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(values) = email.get("bodyValues").and_then(Value::as_object) {
            let first_of = |list: &str, mime: &str| -> Option<String> {
                email.get(list)?.as_array()?.iter().find_map(|p| {
                    let t = p.get("type")?.as_str()?;
                    if !t.eq_ignore_ascii_case(mime) {
                        return None;
                    }
                    let id = p.get("partId")?.as_str()?;
                    let value = values.get(id)?.get("value")?.as_str()?;
                    // NOTE: JMAP hands out the text as sent; undo format=flowed as the raw-bytes
                    // reader does. The Content-Type comes from a `header:Content-Type` body
                    // property, which the transport asks for.
                    let ctype = p
                        .as_object()?
                        .iter()
                        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("header:content-type"))
                        .find_map(|(_, v)| v.as_str())
                        .unwrap_or_default()
                        .to_ascii_lowercase()
                        .replace([' ', '"'], "");
                    Some(if ctype.contains("format=flowed") {
                        super::reply::unflow(value, ctype.contains("delsp=yes"))
                    } else {
                        value.to_owned()
                    })
                })
            };
            let attachments = email
                .get("attachments")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| AttachmentInfo {
                            name: p.get("name").and_then(Value::as_str).map(str::to_owned),
                            content_type: p
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("application/octet-stream")
                                .to_owned(),
                            size: p.get("size").and_then(Value::as_u64).unwrap_or(0) as usize,
                            blob_id: p.get("blobId").and_then(Value::as_str).map(str::to_owned),
                            bytes: None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            inbound.body = Some(Body {
                text: first_of("textBody", "text/plain"),
                html: first_of("htmlBody", "text/html"),
                json_part: None,
                attachments,
            });
        }
        inbound
    }

    /// The first From address, lowercased (what sender policy matches on).
    pub fn sender(&self) -> Option<String> {
        self.from
            .first()
            .map(|m| m.email.trim().to_ascii_lowercase())
    }
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => super::thread::parse_id_list(t),
        HeaderValue::TextList(l) => l
            .iter()
            .flat_map(|t| super::thread::parse_id_list(t))
            .collect(),
        _ => Vec::new(),
    }
}

fn mailboxes(addr: Option<&mail_parser::Address<'_>>) -> Vec<Mailbox> {
    addr.map(|a| {
        a.iter()
            .filter_map(|m| {
                Some(Mailbox {
                    name: m
                        .name()
                        .map(|n| n.trim().to_owned())
                        .filter(|n| !n.is_empty()),
                    email: m.address()?.trim().to_owned(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

fn body_of(msg: &mail_parser::Message<'_>) -> Body {
    let mut body = Body::default();
    for (i, part) in msg.parts.iter().enumerate() {
        let (ctype, subtype) = part
            .content_type()
            .map(|c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or_default().to_ascii_lowercase(),
                )
            })
            .unwrap_or_else(|| ("text".to_owned(), "plain".to_owned()));
        let is_attachment = part
            .content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
        match (&part.body, ctype.as_str(), subtype.as_str()) {
            (PartType::Multipart(_), ..) | (PartType::Message(_), ..) => {}
            (PartType::Text(t), "text", "plain") if !is_attachment && body.text.is_none() => {
                // NOTE: undo RFC 3676 format=flowed (mutt, Thunderbird) so that a paragraph a
                // person typed reads as one line again.
                let attr = |name: &str| {
                    part.content_type()
                        .and_then(|c| c.attribute(name))
                        .map(str::to_ascii_lowercase)
                };
                // NOTE: line ends become LF, as JMAP body values have them, so that both
                // inbound paths hand the same text on.
                let t = t.replace("\r\n", "\n");
                body.text = Some(if attr("format").as_deref() == Some("flowed") {
                    super::reply::unflow(&t, attr("delsp").as_deref() == Some("yes"))
                } else {
                    t
                });
            }
            (PartType::Html(t), "text", "html") if !is_attachment && body.html.is_none() => {
                body.html = Some(t.replace("\r\n", "\n"));
            }
            (_, "application", "json") if body.json_part.is_none() => {
                body.json_part = Some(part.contents().to_vec());
            }
            _ if i > 0 || is_attachment => {
                body.attachments.push(AttachmentInfo {
                    name: part.attachment_name().map(str::to_owned),
                    content_type: format!("{ctype}/{subtype}"),
                    size: part.contents().len(),
                    blob_id: None,
                    bytes: Some(part.contents().to_vec()),
                });
            }
            _ => {}
        }
    }
    body
}
