//! The MCP tools of `taskmail mcp`: each a name, a description for the client's model, an input
//! JSON Schema, and a handler that maps its arguments onto the code the CLI verbs use.
//!
//! | tool | does | like |
//! |---|---|---|
//! | `send_message` | sends an ASMTP envelope | `taskmail send` |
//! | `check_inbox` | lists push frames, headers only | `taskmail inbox` |
//! | `read_message` | fetches one envelope with its body, marks it read | `taskmail read` |
//! | `reply` | answers an envelope to its sender | `taskmail reply` |
//! | `get_delivery_facts` | monitor facts of sent envelopes | (REST/WS) |
//! | `dispatch_task` | sends an AAMP task.dispatch to a worker address | `taskmail dispatch` |
//! | `get_task` | the state, thread and result of a dispatched task | `taskmail task show` |
//! | `answer_help` | answers a task's help request | `taskmail answer` |
//!
//! Envelopes and frames are ASMTP snake_case JSON (`protocol/asmtp.md`); task output is
//! taskmail's camelCase `--json` shape.

use std::sync::Arc;

use rmcp::model::Tool;
use serde_json::{Map, Value, json};

use super::{McpState, ToolError};
use crate::daemon::dispatcher::{self, Delivery, NewDispatch};
use crate::wire::aamp::TaskId;

/// Every tool, for `tools/list`.
pub fn list() -> Vec<Tool> {
    vec![
        tool(
            "send_message",
            "Send a message (an ASMTP envelope) to one or more agents or people. `to` takes \
             agent handles (@owner.name) or email addresses. Returns the envelope id.",
            json!({
                "type": "object",
                "properties": {
                    "to": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                           "description": "recipients: handles (@owner.name) or email addresses"},
                    "cc": {"type": "array", "items": {"type": "string"}},
                    "subject": {"type": "string"},
                    "text": {"type": "string", "description": "the message text"},
                    "data": {"type": "object", "description": "optional structured JSON content"},
                    "schema": {"type": "string", "description": "names the schema of `data`"},
                    "monitor": {"type": "boolean", "description": "ask for delivery facts (stored/bounced/expired per recipient)"}
                },
                "required": ["to"],
                "additionalProperties": false
            }),
        ),
        tool(
            "check_inbox",
            "List messages in the mailbox as push frames: headers only (id, from, to, subject, \
             type_hint, size_hint, created_at), never bodies, so triage is cheap. Read a body \
             with read_message.",
            json!({
                "type": "object",
                "properties": {
                    "unread_only": {"type": "boolean", "default": true},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    "after_created_at": {"type": "integer", "description": "cursor: created_at of the last frame seen"},
                    "after_envelope_id": {"type": "string", "description": "cursor: id of the last frame seen"}
                },
                "additionalProperties": false
            }),
        ),
        tool(
            "read_message",
            "Fetch one message (envelope) with its body by id, and mark it read.",
            json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the envelope id (a ULID) from check_inbox"},
                    "mark_read": {"type": "boolean", "default": true}
                },
                "required": ["id"],
                "additionalProperties": false
            }),
        ),
        tool(
            "reply",
            "Reply to a message: sends an envelope to its sender (and, with all = true, to its \
             other recipients), threaded with in_reply_to.",
            json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the envelope id to answer"},
                    "text": {"type": "string"},
                    "all": {"type": "boolean", "default": false}
                },
                "required": ["id", "text"],
                "additionalProperties": false
            }),
        ),
        tool(
            "get_delivery_facts",
            "Delivery facts (stored, bounced, expired per recipient) of messages sent with \
             monitor = true, from the delivery reports of the mail server; persisted, so facts \
             that arrived while nobody was listening are here too.",
            json!({
                "type": "object",
                "properties": {
                    "envelope_id": {"type": "string", "description": "one message's id (default: every message)"}
                },
                "additionalProperties": false
            }),
        ),
        tool(
            "dispatch_task",
            "Send a task (AAMP task.dispatch) to a worker's email address. Returns the task id; \
             follow it with get_task.",
            json!({
                "type": "object",
                "properties": {
                    "to": {"type": "string", "description": "the worker's email address"},
                    "title": {"type": "string"},
                    "instructions": {"type": "string", "description": "what the worker should do"},
                    "priority": {"type": "string", "enum": ["urgent", "high", "normal"]},
                    "expires_in": {"type": "string", "description": "expiry from now, e.g. 30s, 10m, 2h"},
                    "session_key": {"type": "string"},
                    "context": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Dispatch-Context entries; keys [a-z0-9_-]+"}
                },
                "required": ["to", "title"],
                "additionalProperties": false
            }),
        ),
        tool(
            "get_task",
            "The state of a task this account dispatched (dispatched, acked, help_needed, \
             answered, completed, rejected, cancelled, expired), its thread, and its result \
             when it has one.",
            json!({
                "type": "object",
                "properties": {
                    "task_id": {"type": "string", "description": "the task id (a unique prefix will do)"}
                },
                "required": ["task_id"],
                "additionalProperties": false
            }),
        ),
        tool(
            "answer_help",
            "Answer the help request (task.help_needed) of a task this account dispatched; the \
             worker resumes the task with the answer.",
            json!({
                "type": "object",
                "properties": {
                    "task_id": {"type": "string"},
                    "text": {"type": "string", "description": "the answer"}
                },
                "required": ["task_id", "text"],
                "additionalProperties": false
            }),
        ),
    ]
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let schema = match schema {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Tool::new(name, description, Arc::new(schema))
}

/// Runs tool `name`; `None` when there is no such tool.
pub async fn call(state: &McpState, name: &str, args: &Value) -> Option<Result<Value, ToolError>> {
    Some(match name {
        "send_message" => super::mailbox::send_message(state, args).await,
        "check_inbox" => super::mailbox::check_inbox(state, args).await,
        "read_message" => super::mailbox::read_message(state, args).await,
        "reply" => super::mailbox::reply(state, args).await,
        "get_delivery_facts" => super::mailbox::get_delivery_facts(state, args).await,
        "dispatch_task" => dispatch_task(state, args).await,
        "get_task" => get_task(state, args),
        "answer_help" => answer_help(state, args).await,
        _ => return None,
    })
}

// ---- arguments -------------------------------------------------------------------------------

/// A required, non-blank string argument.
pub(crate) fn required_str<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(ToolError::invalid(format!(
            "argument '{key}' is missing or empty"
        ))
        .fix(format!("pass '{key}' as a non-empty string"))),
        Some(_) => Err(ToolError::invalid(format!(
            "argument '{key}' must be a string"
        ))),
    }
}

/// An optional string argument.
pub(crate) fn optional_str<'a>(args: &'a Value, key: &str) -> Result<Option<&'a str>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ToolError::invalid(format!(
            "argument '{key}' must be a string"
        ))),
    }
}

/// An optional boolean argument, `default` when absent.
pub(crate) fn flag(args: &Value, key: &str, default: bool) -> Result<bool, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ToolError::invalid(format!(
            "argument '{key}' must be true or false"
        ))),
    }
}

/// An optional list of strings (a single string counts as a list of one).
pub(crate) fn str_list(args: &Value, key: &str) -> Result<Vec<String>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    ToolError::invalid(format!("argument '{key}' must be a list of strings"))
                })
            })
            .collect(),
        Some(_) => Err(ToolError::invalid(format!(
            "argument '{key}' must be a list of strings"
        ))),
    }
}

// ---- task tools ------------------------------------------------------------------------------

async fn dispatch_task(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let to = required_str(args, "to")?.trim().to_owned();
    let title = required_str(args, "title")?.to_owned();
    let instructions = optional_str(args, "instructions")?
        .unwrap_or_default()
        .to_owned();
    let mut context = Vec::new();
    match args.get("context") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| {
                    ToolError::invalid(format!("context value of '{k}' must be a string"))
                })?;
                context.push(format!("{k}={v}"));
            }
        }
        Some(_) => {
            return Err(ToolError::invalid(
                "argument 'context' must be an object of strings",
            ));
        }
    }
    // NOTE: the CLI's own validation (address, priority, expiry, context keys) builds the
    // task.dispatch; the instructions are set afterwards, so that no argument reads stdin.
    let command = crate::cli::dispatch::DispatchCommand {
        to: to.clone(),
        title,
        body: None,
        body_file: None,
        priority: optional_str(args, "priority")?.map(str::to_owned),
        expires_in: optional_str(args, "expires_in")?.map(str::to_owned),
        session_key: optional_str(args, "session_key")?.map(str::to_owned),
        context,
        attach: Vec::new(),
        wait: false,
        timeout: None,
        json: true,
        account: Some(state.account.name.clone()),
    };
    let mut dispatch = command.dispatch(&state.config).map_err(usage_fix)?;
    dispatch.instructions = instructions;
    let store = state.store()?;
    let key = state.account.name.as_str();
    let signer = crate::cli::signer(&state.config, key)?;
    let queued = dispatcher::enqueue_dispatch(
        &store,
        &state.account,
        key,
        signer.as_ref(),
        TaskId::new(crate::ids::task_id()),
        NewDispatch {
            to,
            dispatch,
            attachments: Vec::new(),
        },
        crate::clock::now(),
    )?;
    let delivery = dispatcher::deliver(
        &state.config,
        key,
        &store,
        &queued.message_id,
        crate::cli::dispatch::SEND_PATIENCE,
    )
    .await;
    let status = match delivery {
        Ok(Delivery::Sent(_)) => "sent",
        Ok(Delivery::Queued(_)) => "queued",
        Err(error) => {
            let text = crate::transport::smtp::error_chain(&error);
            dispatcher::withdraw(&store, key, &queued, &text, crate::clock::now())?;
            let mut failure = ToolError::new(
                "SEND_FAILED",
                format!("cannot send the task: {text}; nothing was sent"),
            );
            failure.fix = crate::cli::dispatch::send_hint(error.exit_code(), &state.account)
                .or_else(|| Some("check the account with: taskmail doctor".to_owned()));
            return Err(failure);
        }
    };
    Ok(json!({
        "taskId": queued.task_id,
        "messageId": queued.message_id,
        "to": queued.to,
        "status": status,
        "next": "call get_task with this taskId to follow it",
    }))
}

fn usage_fix(failure: crate::cli::Failure) -> ToolError {
    let mut error = ToolError::from(failure);
    // The CLI names its flags (--to, --priority); say which argument that is.
    error.message = error
        .message
        .replace("--expires-in", "expires_in")
        .replace("--session-key", "session_key")
        .replace("--", "");
    error
}

fn get_task(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let id = required_str(args, "task_id")?;
    let store = state.store()?;
    let key = state.account.name.as_str();
    let mut task = crate::cli::task::find_dispatched(&state.config, &store, id, Some(key))
        .map_err(|f| {
            ToolError::from(f)
                .fix("pass a task id returned by dispatch_task")
                .with_code("NOT_FOUND")
        })?;
    if dispatcher::expire_if_due(&store, key, &task, crate::clock::now())?
        && let Some(now) = store.get_task(key, &task.task_id, crate::store::Role::Dispatcher)?
    {
        task = now;
    }
    Ok(crate::cli::task::show(&store, &task)?)
}

async fn answer_help(state: &McpState, args: &Value) -> Result<Value, ToolError> {
    let id = required_str(args, "task_id")?;
    let text = required_str(args, "text")?;
    let store = state.store()?;
    let answered =
        crate::cli::answer::answer_task(&state.config, &store, id, Some(&state.account.name), text)
            .await?;
    Ok(json!({
        "taskId": answered.queued.task_id,
        "messageId": answered.queued.message_id,
        "to": answered.queued.to,
        "status": answered.status,
    }))
}

impl ToolError {
    fn with_code(mut self, code: &str) -> ToolError {
        code.clone_into(&mut self.code);
        self
    }
}
