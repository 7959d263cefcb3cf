//! `taskmail task show ID [--role R] [--json]`: one task and its whole thread, from the local
//! store (no server is contacted).
//!
//! The thread is the Message-ID index of the task's side, oldest first: each message's
//! intent, direction (`in`/`out`) and time; for a dispatched task also what each message said
//! (the help question and options, the result's status, output and attachments, a person's
//! reply), from the task's record. Then the result, if there is one. An id that is a unique
//! prefix of a task id is enough. When the same store holds both sides of a task (a config
//! whose worker and dispatcher accounts share a state dir), the dispatcher side is shown and
//! `otherRoles` names the other; `--role worker` shows it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Exit, Failure, output};
use crate::config::{Config, Env};
use crate::daemon::dispatcher;
use crate::store::{Role, Store, Task, TaskFilter};

/// `taskmail task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Show a task and its whole thread.
    Show(TaskShowCommand),
}

impl TaskCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        match self {
            TaskCommand::Show(command) => command.execute(global_config, env),
        }
    }
}

/// `taskmail task show`.
#[derive(Debug, Args)]
pub struct TaskShowCommand {
    /// The task's id (a unique prefix will do).
    #[arg(value_name = "ID")]
    pub task_id: String,
    /// worker or dispatcher (default: the dispatcher side when both exist).
    #[arg(long, value_parser = ["worker", "dispatcher"])]
    pub role: Option<String>,
    /// Only this account's tasks.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl TaskShowCommand {
    /// Runs the verb.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let store = super::open_store(&config)?;
        drop(config);
        let role = self.role.as_deref().and_then(Role::parse);
        let mut found = find_tasks(&store, &self.task_id, self.account.as_deref(), role)?;
        if found.is_empty() {
            return Err(not_found(&self.task_id));
        }
        found.sort_by_key(|t| t.role != Role::Dispatcher);
        let task = found.remove(0);
        let mut shown = show(&store, &task)?;
        if !found.is_empty()
            && let Some(object) = shown.as_object_mut()
        {
            object.insert(
                "otherRoles".to_owned(),
                json!(found.iter().map(|t| t.role).collect::<Vec<_>>()),
            );
        }
        if self.json {
            output::print_json(&shown).map_err(Failure::from)?;
        } else {
            output::write_stdout(human(&shown).as_bytes())
                .map_err(|e| Failure::of("output", &e, 1))?;
        }
        Ok(Exit::Ok)
    }
}

fn not_found(id: &str) -> Failure {
    Failure::new(
        "task",
        format!("cannot find task '{id}' in the store"),
        Exit::Failure,
    )
    .detail("list the tasks with: taskmail tasks")
}

/// The tasks whose id is `id`, or else starts with it (a unique prefix), any role unless
/// `role` says.
pub(crate) fn find_tasks(
    store: &Store,
    id: &str,
    account: Option<&str>,
    role: Option<Role>,
) -> Result<Vec<Task>, Failure> {
    let id = id.trim();
    if id.is_empty() {
        return Ok(Vec::new());
    }
    let all = store.list_tasks(&TaskFilter {
        account: account.map(str::to_owned),
        role,
        ..TaskFilter::default()
    })?;
    let exact: Vec<Task> = all
        .iter()
        .filter(|t| t.task_id.as_str() == id)
        .cloned()
        .collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let prefixed: Vec<Task> = all
        .into_iter()
        .filter(|t| t.task_id.as_str().starts_with(id))
        .collect();
    let mut ids: Vec<&str> = prefixed.iter().map(|t| t.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 1 {
        return Err(Failure::new(
            "task",
            format!("cannot tell which task '{id}' means: {} match", ids.len()),
            Exit::Usage,
        )
        .detail(format!("matching: {}", ids.join(", "))));
    }
    Ok(prefixed)
}

/// The dispatcher task `id` (a unique prefix will do) of `account`, or of any account.
pub(crate) fn find_dispatched(
    config: &Config,
    store: &Store,
    id: &str,
    account: Option<&str>,
) -> Result<Task, Failure> {
    if let Some(name) = account {
        super::pick_account(config, Some(name), name)?;
    }
    let mut found = find_tasks(store, id, account, Some(Role::Dispatcher))?;
    if found.is_empty() {
        return Err(Failure::new(
            "task",
            format!("cannot find a dispatched task '{id}' in the store"),
            Exit::Failure,
        )
        .detail("list them with: taskmail tasks --role dispatcher"));
    }
    Ok(found.remove(0))
}

/// A task as JSON (camelCase, as every `--json` output).
pub(crate) fn task_json(task: &Task) -> Value {
    let result = task.result.as_ref().map(|r| {
        json!({
            "status": r.status,
            "output": r.output,
            "error": r.error,
            "structuredResult": r.structured_result.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
            "truncated": r.truncated,
        })
    });
    json!({
        "taskId": task.task_id,
        "account": task.account,
        "role": task.role,
        "state": task.state,
        "peer": task.peer,
        "title": task.title,
        "priority": task.priority,
        "expiresAt": task.expires_at,
        "sessionKey": task.session_key,
        "dispatchMessageId": task.dispatch_message_id,
        "lastMessageId": task.last_message_id,
        "createdAt": task.created_at,
        "updatedAt": task.updated_at,
        "attempts": task.attempts,
        "helpQuestion": task.help_question,
        "result": result,
    })
}

/// The task with its thread.
pub(crate) fn show(store: &Store, task: &Task) -> Result<Value, Failure> {
    let thread = store.thread(&task.account, &task.task_id, task.role)?;
    let record = match task.role {
        Role::Dispatcher => Some(dispatcher::load_record(
            store,
            &task.account,
            &task.task_id,
        )?),
        Role::Worker => None,
    };
    let mut messages: Vec<Value> = thread
        .iter()
        .map(|entry| {
            let mut item = json!({
                "messageId": entry.message_id,
                "intent": entry.intent,
                "direction": entry.direction,
                "at": entry.at,
            });
            let detail = record
                .as_ref()
                .and_then(|r| r.messages.iter().find(|m| m.message_id == entry.message_id));
            if let (Some(detail), Some(object)) = (detail, item.as_object_mut())
                && let Ok(Value::Object(fields)) = serde_json::to_value(detail)
            {
                for (key, value) in fields {
                    if !matches!(
                        key.as_str(),
                        "messageId" | "intent" | "direction" | "at" | "references"
                    ) {
                        object.insert(key, value);
                    }
                }
            }
            item
        })
        .collect();
    // NOTE: what has no Message-ID (a local expiry, a withdrawn dispatch) is in the record only.
    if let Some(record) = &record {
        for extra in record.messages.iter().filter(|m| m.message_id.is_empty()) {
            messages.push(json!({
                "intent": extra.intent,
                "direction": "local",
                "at": extra.at,
                "text": extra.text,
            }));
        }
    }
    let mut value = task_json(task);
    if let Some(object) = value.as_object_mut() {
        object.insert("thread".to_owned(), Value::Array(messages));
    }
    Ok(value)
}

/// The human view of [`show`].
fn human(value: &Value) -> String {
    let text = |key: &str| match &value[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    for (label, key) in [
        ("task", "taskId"),
        ("role", "role"),
        ("account", "account"),
        ("state", "state"),
        ("peer", "peer"),
        ("title", "title"),
        ("priority", "priority"),
        ("expires", "expiresAt"),
        ("created", "createdAt"),
        ("updated", "updatedAt"),
    ] {
        out.push_str(&format!("{label:<9} {}\n", text(key)));
    }
    if let Some(question) = value["helpQuestion"].as_str() {
        out.push_str(&format!("{:<9} {question}\n", "question"));
    }
    if let Some(others) = value["otherRoles"].as_array() {
        out.push_str(&format!(
            "{:<9} this store also holds the {} side (--role)\n",
            "note",
            others
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push_str("\nthread:\n");
    for message in value["thread"].as_array().into_iter().flatten() {
        let at = message["at"].as_str().unwrap_or_default();
        out.push_str(&format!(
            "  {at:<30} {:<5} {:<18} {}\n",
            message["direction"].as_str().unwrap_or_default(),
            message["intent"].as_str().unwrap_or_default(),
            message["messageId"]
                .as_str()
                .map(|m| format!("<{m}>"))
                .unwrap_or_default()
        ));
        for key in ["question", "status", "error", "text"] {
            if let Some(v) = message[key].as_str() {
                let first = v.lines().next().unwrap_or_default();
                out.push_str(&format!("      {key}: {first}\n"));
            }
        }
        if let Some(options) = message["options"].as_array() {
            for (n, option) in options.iter().enumerate() {
                out.push_str(&format!(
                    "      {}. {}\n",
                    n + 1,
                    option.as_str().unwrap_or_default()
                ));
            }
        }
        for attachment in message["attachments"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "      attachment: {} ({} bytes)\n",
                attachment["name"].as_str().unwrap_or_default(),
                attachment["size"]
            ));
        }
    }
    if let Some(result) = value["result"].as_object() {
        out.push_str(&format!(
            "\nresult: {}\n",
            result
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ));
        if let Some(error) = result.get("error").and_then(Value::as_str) {
            out.push_str(&format!("error: {error}\n"));
        }
        if let Some(output) = result.get("output").and_then(Value::as_str)
            && !output.is_empty()
        {
            out.push_str("output:\n");
            for line in output.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}
