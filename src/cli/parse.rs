//! `taskmail parse FILE.eml [--json]`: what a mail is, read exactly as the daemon reads it.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Map, Value, json};

use super::Exit;
use super::output;
use crate::wire::aamp::{self, format_instant};
use crate::wire::message::Inbound;
use crate::wire::{Classified, classify};

/// Read a mail and print its kind (aamp, asmtp, reply, plain, invalid) and every field.
#[derive(Debug, Args)]
pub struct ParseCommand {
    /// The message file (RFC 5322 / .eml); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON (camelCase keys, as the AAMP SDKs name fields).
    #[arg(long)]
    pub json: bool,
}

impl ParseCommand {
    /// Runs the verb: exit 0 for a readable message, 1 for an invalid one (still printed).
    pub fn execute(self) -> anyhow::Result<Exit> {
        let raw = if self.file.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read standard input")?;
            buf
        } else {
            std::fs::read(&self.file)
                .with_context(|| format!("cannot read '{}'", self.file.display()))?
        };
        let inbound = Inbound::from_bytes(&raw)
            .with_context(|| format!("cannot parse '{}' as a mail", self.file.display()))?;
        let view = view(&inbound);
        let invalid = view.get("kind").and_then(Value::as_str) == Some("invalid");
        if self.json {
            output::print_json(&view)?;
        } else {
            output::print_fields(&view)?;
        }
        Ok(if invalid { Exit::Failure } else { Exit::Ok })
    }
}

/// The JSON description of a message that `parse --json` prints (null fields left out).
pub fn view(msg: &Inbound) -> Value {
    let classified = classify(msg);
    let mut v = Map::new();
    v.insert("kind".into(), json!(classified.kind()));
    match &classified {
        Classified::Aamp(parsed) => {
            if let Ok(Value::Object(fields)) = serde_json::to_value(&parsed.message) {
                v.extend(fields);
            }
            if let aamp::Payload::Dispatch(d) = &parsed.message.payload {
                v.insert(
                    "expiresAt".into(),
                    json!(d.expires_at.as_ref().map(format_instant)),
                );
            }
            if !parsed.warnings.is_empty() {
                v.insert("warnings".into(), json!(parsed.warnings));
            }
        }
        Classified::Reply { keys, text } => {
            v.insert("correlationKeys".into(), json!(keys));
            v.insert("replyText".into(), json!(text));
        }
        Classified::Invalid(reason) => {
            v.insert("error".into(), json!(reason));
        }
        Classified::Asmtp(env) => {
            if let Some(env) = env {
                let json: Value =
                    serde_json::from_slice(&env.canonical_json()).unwrap_or(Value::Null);
                v.insert("envelope".into(), json);
            }
            if let Ok(Some(frame)) = crate::wire::asmtp::PushFrame::from_inbound(msg, 0) {
                let mut f = serde_json::to_value(&frame).unwrap_or(Value::Null);
                if let Some(o) = f.as_object_mut() {
                    o.remove("created_at");
                }
                v.insert("pushFrame".into(), f);
            }
        }
        Classified::Plain => {}
    }
    v.insert("from".into(), json!(msg.from.first().map(|m| &m.email)));
    if msg.from.first().and_then(|m| m.name.as_ref()).is_some() {
        v.insert("fromName".into(), json!(msg.from[0].name));
    }
    v.insert(
        "to".into(),
        json!(msg.to.iter().map(|m| &m.email).collect::<Vec<_>>()),
    );
    if !msg.cc.is_empty() {
        v.insert(
            "cc".into(),
            json!(msg.cc.iter().map(|m| &m.email).collect::<Vec<_>>()),
        );
    }
    v.insert("subject".into(), json!(msg.subject));
    v.insert("messageId".into(), json!(msg.message_id));
    v.insert("inReplyTo".into(), json!(msg.in_reply_to.first()));
    v.insert("references".into(), json!(msg.references));
    v.insert("date".into(), json!(msg.date.as_ref().map(format_instant)));
    if let Some(body) = &msg.body {
        let text = body
            .text
            .clone()
            .or_else(|| body.html.as_deref().map(crate::wire::reply::html_to_text));
        v.insert(
            "bodyText".into(),
            json!(text.map(|t| aamp::normalize_body(&t))),
        );
        if !body.attachments.is_empty() {
            let list: Vec<Value> = body
                .attachments
                .iter()
                .map(|a| json!({"name": a.name, "contentType": a.content_type, "size": a.size}))
                .collect();
            v.insert("attachments".into(), Value::Array(list));
        }
    }
    v.retain(|_, val| !val.is_null());
    Value::Object(v)
}
