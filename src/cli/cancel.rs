//! `taskmail cancel ID [--reason R]`: cancel a task this account dispatched.
//!
//! Sends a task.cancel In-Reply-To the dispatch and marks the task `cancelled` in the same
//! transaction ([`crate::daemon::dispatcher::enqueue_cancel`]); a waiting `taskmail dispatch`
//! of the task ends with exit code 4. A dispatch that was never sent (still in the outbox) is
//! withdrawn instead, and nothing is mailed. Delivery works as for `taskmail answer`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::daemon::dispatcher::{self, Cancelled, Delivery};
use crate::wire::aamp::TaskId;

/// `taskmail cancel`: cancel a dispatched task.
#[derive(Debug, Args)]
pub struct CancelCommand {
    /// The task's id (a unique prefix will do).
    #[arg(value_name = "ID")]
    pub task_id: String,
    /// Why (the cancel mail's body; a default sentence when empty).
    #[arg(long)]
    pub reason: Option<String>,
    /// The dispatcher account (default: every account is searched for the task).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the outcome as a JSON object.
    #[arg(long)]
    pub json: bool,
}

impl CancelCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let store = super::open_store(&config)?;
        let task =
            super::task::find_dispatched(&config, &store, &self.task_id, self.account.as_deref())?;
        let account = super::pick_account(&config, Some(&task.account), &task.account)?;
        let task_id = TaskId::new(task.task_id.as_str());
        let signer = super::signer(&config, &account.name)?;
        let cancelled = dispatcher::enqueue_cancel(
            &store,
            account,
            &account.name,
            signer.as_ref(),
            &task_id,
            self.reason.as_deref().unwrap_or_default(),
            crate::clock::now(),
        )
        .map_err(|e| Failure::of("task", &e, e.exit_code()))?;
        let (message_id, status, by) = match cancelled {
            Cancelled::Withdrawn => (None, "withdrawn", None),
            Cancelled::Queued(queued) => {
                crate::transport::init_crypto();
                let delivery = super::runtime()?.block_on(dispatcher::deliver(
                    &config,
                    &account.name,
                    &store,
                    &queued.message_id,
                    super::dispatch::SEND_PATIENCE,
                ));
                match delivery {
                    Ok(Delivery::Sent(by)) => {
                        (Some(queued.message_id), "sent", by.map(|h| h.describe()))
                    }
                    Ok(Delivery::Queued(holder)) => {
                        (Some(queued.message_id), "queued", Some(holder.describe()))
                    }
                    Err(error) => {
                        let code = error.exit_code();
                        let mut failure = Failure::of("send", &error, code).detail(format!(
                            "the task is cancelled here; the cancel mail stays queued for the next taskmail process serving account '{}'",
                            account.name
                        ));
                        if let Some(hint) = super::dispatch::send_hint(code, account) {
                            failure = failure.detail(hint);
                        }
                        return Err(failure);
                    }
                }
            }
        };
        if self.json {
            output::write_stdout(
                format!(
                    "{}\n",
                    json!({
                        "event": "cancelled",
                        "taskId": task_id,
                        "messageId": message_id,
                        "to": task.peer,
                        "status": status,
                        "sender": by,
                    })
                )
                .as_bytes(),
            )
            .map_err(|e| Failure::of("output", &e, 1))?;
        } else {
            match (status, by) {
                ("withdrawn", _) => eprintln!(
                    "cancelled task {task_id}: its dispatch had not been sent, and never will be"
                ),
                ("queued", Some(by)) => {
                    eprintln!("cancelled task {task_id}: the cancel is queued; {by} sends it")
                }
                (_, Some(by)) => eprintln!(
                    "cancelled task {task_id}: task.cancel sent to {} by {by}",
                    task.peer
                ),
                _ => eprintln!(
                    "cancelled task {task_id}: task.cancel sent to {}",
                    task.peer
                ),
            }
        }
        Ok(Exit::Ok)
    }
}
