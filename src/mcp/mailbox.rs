//! The mailbox tools (`send_message`, `check_inbox`, `read_message`, `reply`) over the mailbox
//! core ([`crate::mailbox`]). Frames and envelopes are ASMTP snake_case JSON.

use serde_json::{Value, json};

use super::tools::{flag, optional_str, required_str, str_list};
use super::{McpState, ToolError};
use crate::mailbox::{ListQuery, Mailbox, MailboxError, Order, SendRequest};
use crate::wire::asmtp::{ContentPart, Cursor, EnvelopeId};

impl From<MailboxError> for ToolError {
    fn from(error: MailboxError) -> ToolError {
        let fix = match &error {
            MailboxError::Invalid(_) => "correct the argument the message names",
            MailboxError::PayloadTooLarge => "send less: the envelope JSON must stay under 1 MiB",
            MailboxError::RetryMismatch | MailboxError::IdCollision => {
                "send again without an id: a new one is allocated"
            }
            MailboxError::NotFound => "pass an id from check_inbox",
            MailboxError::Unreachable(_) => {
                "check the recipient's handle or address; the owner must allow it (taskmail grants allow)"
            }
            MailboxError::Unauthorized(_) => "check the account's password in the taskmail config",
            MailboxError::Unavailable(_) => "retry later; check the server with: taskmail doctor",
            _ => "retry; report a bug with the server's stderr if it happens again",
        };
        ToolError::new(error.code(), error.to_string()).fix(fix)
    }
}

impl McpState {
    /// The account's mailbox, opened on first use.
    async fn mailbox(&self) -> Result<&Mailbox, ToolError> {
        self.mailbox
            .get_or_try_init(|| async {
                let mailbox = Mailbox::open(&self.config, &self.account.name).await?;
                // NOTE: one sync at once, so that what arrives from now on (the answer to a
                // send, a delivery report) comes through Email/changes, not a back-fill.
                if let Err(error) = mailbox.sync().await {
                    tracing::warn!(error = %error, "cannot sync the mailbox yet");
                }
                Ok::<_, MailboxError>(mailbox)
            })
            .await
            .map_err(ToolError::from)
    }
}

fn envelope_id(args: &Value, key: &str) -> Result<EnvelopeId, ToolError> {
    let raw = required_str(args, key)?;
    EnvelopeId::parse(raw.trim()).map_err(|e| {
        ToolError::invalid(format!("argument '{key}' is no envelope id: {e}"))
            .fix("pass the 26-character id (01...) from check_inbox")
    })
}

/// A monitor name for a send that asked for delivery facts.
fn new_monitor() -> String {
    format!("mon_{}", crate::ids::ulid(crate::clock::now()))
}

fn receipt_json(receipt: &crate::mailbox::SendReceipt, monitor: Option<&str>) -> Value {
    let mut value = serde_json::to_value(receipt).unwrap_or(Value::Null);
    if let (Some(object), Some(monitor)) = (value.as_object_mut(), monitor) {
        object.insert("monitor".to_owned(), json!(monitor));
    }
    value
}

pub(super) async fn send_message(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let to = str_list(args, "to")?;
    if to.is_empty() {
        return Err(ToolError::invalid("argument 'to' is missing or empty")
            .fix("pass at least one handle (@owner.name) or email address"));
    }
    let mut parts = Vec::new();
    if let Some(text) = optional_str(args, "text")? {
        parts.push(ContentPart::text(text));
    }
    match args.get("data") {
        None | Some(Value::Null) => {}
        Some(data @ Value::Object(_)) => {
            parts.push(ContentPart::data(
                data.clone(),
                optional_str(args, "schema")?,
            ));
        }
        Some(_) => {
            return Err(ToolError::invalid("argument 'data' must be a JSON object"));
        }
    }
    if parts.is_empty() {
        return Err(
            ToolError::invalid("the message has no content").fix("pass 'text', 'data', or both")
        );
    }
    let monitor = flag(args, "monitor", false)?.then(new_monitor);
    let request = SendRequest {
        to,
        cc: str_list(args, "cc")?,
        subject: optional_str(args, "subject")?.map(str::to_owned),
        content_parts: parts,
        monitor: monitor.clone(),
        ..SendRequest::default()
    };
    let receipt = state.mailbox().await?.send(request).await?;
    Ok(receipt_json(&receipt, monitor.as_deref()))
}

pub(super) async fn check_inbox(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let limit = match args.get("limit") {
        None | Some(Value::Null) => 50,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u64::from(crate::mailbox::MAX_PAGE)).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ToolError::invalid("argument 'limit' must be an integer 1..1000"))?,
    };
    let after = match (args.get("after_created_at"), args.get("after_envelope_id")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(Value::Number(at)), Some(Value::String(_))) => {
            let at = at.as_i64().ok_or_else(|| {
                ToolError::invalid("argument 'after_created_at' must be an integer (ms)")
            })?;
            Some(Cursor::new(at, envelope_id(args, "after_envelope_id")?))
        }
        _ => {
            return Err(ToolError::invalid(
                "the cursor needs 'after_created_at' (integer) and 'after_envelope_id' together",
            )
            .fix("pass both from the last frame (or next_cursor) you saw, or neither"));
        }
    };
    let mailbox = state.mailbox().await?;
    // NOTE: the listing reads the local index; a sync first brings in what the server has.
    // A server that cannot be reached leaves the index as it is and says so.
    let synced = match mailbox.sync().await {
        Ok(_) => {
            // Delivery reports seen by the sync become monitor facts (get_delivery_facts).
            if let Err(error) = crate::mailbox::monitor::resolve(mailbox).await {
                tracing::warn!(error = %error, "cannot read delivery reports");
            }
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, "cannot sync the mailbox; listing the local index");
            Some(error.to_string())
        }
    };
    let page = mailbox.list(&ListQuery {
        after,
        limit,
        unread_only: flag(args, "unread_only", true)?,
        order: Order::Asc,
    })?;
    let mut value = json!({
        "frames": page.frames,
        "count": page.frames.len(),
        "next_cursor": page.next_cursor.map(|c| json!({
            "after_created_at": c.created_at,
            "after_envelope_id": c.envelope_id,
        })),
    });
    if let (Some(problem), Some(object)) = (synced, value.as_object_mut()) {
        object.insert("stale".to_owned(), json!(problem));
    }
    Ok(value)
}

pub(super) async fn read_message(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let id = envelope_id(args, "id")?;
    let mark_read = flag(args, "mark_read", true)?;
    let read = state.mailbox().await?.read(&id, mark_read).await?;
    Ok(json!({"envelope": read.envelope, "seen": read.seen, "created_at": read.frame.created_at}))
}

pub(super) async fn reply(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let id = envelope_id(args, "id")?;
    let text = required_str(args, "text")?;
    let all = flag(args, "all", false)?;
    let mailbox = state.mailbox().await?;
    let original = mailbox.read(&id, false).await?.envelope;
    let me = mailbox.handle().clone();
    let mut to = vec![original.from.to_string()];
    let mut cc = Vec::new();
    if all {
        for handle in original.to.iter().chain(&original.cc) {
            let handle = handle.to_string();
            if *handle != *me.to_string() && !to.contains(&handle) && !cc.contains(&handle) {
                cc.push(handle);
            }
        }
    }
    if original.from == me {
        // NOTE: answering one's own message goes to its recipients instead.
        to = original.to.iter().map(ToString::to_string).collect();
    }
    let subject = original.subject.as_deref().map(|s| {
        if s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:")) {
            s.to_owned()
        } else {
            format!("Re: {s}")
        }
    });
    let mut references = original.references.clone();
    references.push(original.id.clone());
    let receipt = mailbox
        .send(SendRequest {
            to,
            cc,
            subject,
            content_parts: vec![ContentPart::text(text)],
            in_reply_to: Some(original.id.clone()),
            references,
            ..SendRequest::default()
        })
        .await?;
    Ok(receipt_json(&receipt, None))
}

pub(super) async fn get_delivery_facts(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let id = match args.get("envelope_id") {
        None | Some(Value::Null) => None,
        Some(_) => Some(envelope_id(args, "envelope_id")?),
    };
    let mailbox = state.mailbox().await?;
    if let Err(error) = mailbox.sync().await {
        tracing::warn!(error = %error, "cannot sync the mailbox; facts from the local store");
    } else if let Err(error) = crate::mailbox::monitor::resolve(mailbox).await {
        tracing::warn!(error = %error, "cannot read delivery reports");
    }
    let facts = mailbox
        .with_store(|s| crate::mailbox::monitor::facts(s, mailbox.account(), id.as_ref()))?;
    Ok(json!({"facts": facts, "count": facts.len()}))
}
