//! `taskmail tasks [--role worker|dispatcher] [--state S] [--limit N] [--json]`: the tasks of
//! the local store, newest first (no server is contacted).
//!
//! On a terminal (and whenever `--json` is absent) a table: id, role, state, peer, title,
//! updated. With `--json`: `{"tasks": [...]}`, each task as `taskmail task show --json` prints
//! it without its thread.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::store::{Role, TaskFilter, TaskState};

/// `taskmail tasks`: list tasks.
#[derive(Debug, Args)]
pub struct TasksCommand {
    /// worker or dispatcher.
    #[arg(long, value_parser = ["worker", "dispatcher"])]
    pub role: Option<String>,
    /// Only tasks in this state (repeatable): dispatched, acked, help_needed, answered,
    /// received, queued, running, completed, rejected, cancelled, expired; `open` for every
    /// state that is not final.
    #[arg(long = "state", value_name = "S")]
    pub state: Vec<String>,
    /// Only this account's tasks.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// At most this many (default 50).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl TasksCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let mut states = Vec::new();
        for state in &self.state {
            let state = state.trim().to_ascii_lowercase().replace('-', "_");
            if state == "open" {
                states.extend(TaskState::ALL.into_iter().filter(|s| !s.is_terminal()));
                continue;
            }
            let parsed = TaskState::parse(&state).ok_or_else(|| {
                Failure::new(
                    "usage",
                    format!("cannot use --state '{state}'"),
                    Exit::Usage,
                )
                .detail(format!(
                    "states: open, {}",
                    TaskState::ALL.map(TaskState::as_str).join(", ")
                ))
            })?;
            states.push(parsed);
        }
        let store = super::open_store(&config)?;
        let tasks = store.list_tasks(&TaskFilter {
            account: self.account.clone(),
            role: self.role.as_deref().and_then(Role::parse),
            states,
            limit: Some(self.limit),
            ..TaskFilter::default()
        })?;
        if self.json {
            let list: Vec<_> = tasks.iter().map(super::task::task_json).collect();
            output::print_json(&json!({ "tasks": list })).map_err(Failure::from)?;
            return Ok(Exit::Ok);
        }
        let mut rows = vec![[
            "ID".to_owned(),
            "ROLE".to_owned(),
            "STATE".to_owned(),
            "PEER".to_owned(),
            "TITLE".to_owned(),
            "UPDATED".to_owned(),
        ]];
        for task in &tasks {
            rows.push([
                task.task_id.to_string(),
                task.role.to_string(),
                task.state.to_string(),
                task.peer.clone(),
                shorten(&task.title, 40),
                task.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]);
        }
        let mut widths = [0usize; 6];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        if tasks.is_empty() {
            out.push_str("(no tasks)\n");
        }
        output::write_stdout(out.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
        Ok(Exit::Ok)
    }
}

fn shorten(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\r', '\t'], " ");
    if text.chars().count() <= max {
        text
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
