//! What an inbound message is, decided from its headers (and body, once fetched).
//!
//! Order: AAMP (an `X-AAMP-Intent` and `X-AAMP-TaskId`) first, then ASMTP (`X-ASMTP-Id`), then a
//! human reply (thread headers but no protocol headers), then plain mail. A message with AAMP
//! headers that cannot be used (unknown intent, unsupported version, conflicting duplicates,
//! a hostile pair code) is [`Classified::Invalid`]: logged and ignored, and never mistaken for
//! a human reply.

use super::aamp::{self, AampMessage};
use super::asmtp::{Envelope, PushFrame};
use super::headers::HeaderMap;
use super::message::Inbound;
use super::reply;

/// What an inbound message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// An AAMP message.
    Aamp(aamp::Parsed),
    /// An ASMTP envelope (mail carrying `X-ASMTP-*` headers): the whole envelope once the body
    /// is known, `None` in the headers-only phase (the headers were checked already).
    Asmtp(Option<Box<Envelope>>),
    /// A person's reply in some thread: the daemon looks the keys up in its Message-ID index.
    Reply {
        /// Ids to look up, most specific first.
        keys: Vec<String>,
        /// What the person wrote (quotes, attribution and signature removed), once the body is
        /// known.
        text: Option<String>,
    },
    /// A mail with no protocol headers and no thread.
    Plain,
    /// Protocol headers that cannot be used; the reason is for the log.
    Invalid(String),
}

impl Classified {
    /// The `kind` word used in CLI and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Classified::Aamp(_) => "aamp",
            Classified::Asmtp(_) => "asmtp",
            Classified::Reply { .. } => "reply",
            Classified::Plain => "plain",
            Classified::Invalid(_) => "invalid",
        }
    }
}

/// Classifies a message; works on a headers-only [`Inbound`] too.
pub fn classify(msg: &Inbound) -> Classified {
    let text = msg.body.as_ref().and_then(|b| b.text.as_deref());
    let html = msg.body.as_ref().and_then(|b| b.html.as_deref());
    let body_text = match (text, html) {
        (Some(t), _) => Some(t.to_owned()),
        (None, Some(h)) => Some(reply::html_to_text(h)),
        (None, None) => msg.body.as_ref().map(|_| String::new()),
    };
    match AampMessage::parse(&msg.headers, msg.subject.as_deref(), body_text.as_deref()) {
        Ok(Some(parsed)) => return Classified::Aamp(parsed),
        Err(e) => return Classified::Invalid(e.to_string()),
        Ok(None) => {}
    }
    if has_aamp_headers(&msg.headers) {
        return Classified::Invalid(
            "cannot use X-AAMP headers without both X-AAMP-Intent and X-AAMP-TaskId".to_owned(),
        );
    }
    if msg.headers.get(super::asmtp::header::ID).is_some() {
        if msg.body.is_some() {
            return match Envelope::from_inbound(msg) {
                Ok(Some(env)) => Classified::Asmtp(Some(Box::new(env))),
                Ok(None) => Classified::Plain,
                Err(e) => Classified::Invalid(e.to_string()),
            };
        }
        return match PushFrame::from_inbound(msg, 0) {
            Ok(Some(_)) => Classified::Asmtp(None),
            Ok(None) => Classified::Plain,
            Err(e) => Classified::Invalid(e.to_string()),
        };
    }
    let keys = super::thread::correlation_keys(&msg.in_reply_to, &msg.references);
    if !keys.is_empty() {
        return Classified::Reply {
            keys,
            text: msg.body.as_ref().map(|_| reply::human_reply(text, html)),
        };
    }
    Classified::Plain
}

fn has_aamp_headers(headers: &HeaderMap) -> bool {
    headers.has_prefix("X-AAMP-")
}
