//! `taskmail answer ID --text T | --text-file F`: answer the help request of a task this
//! account dispatched.
//!
//! The answer is a task.dispatch with the same TaskId, In-Reply-To the help mail and References
//! the whole chain: the convention the worker resumes the task on (`protocol/aamp.md`,
//! "Threading", (a)). The task moves `help_needed -> answered` in the same transaction that
//! queues the mail ([`crate::daemon::dispatcher::enqueue_answer`]). If this process can take the
//! account's pipeline lock it submits at once; otherwise the process holding it (a waiting
//! `taskmail dispatch`, or `taskmail run`) sends it from the shared outbox, and this waits up
//! to 30 s to say it was sent. Works while `taskmail dispatch --wait` is waiting for the same
//! task, from another terminal or script.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::daemon::dispatcher::{self, Delivery};
use crate::wire::aamp::TaskId;

/// `taskmail answer`: answer a help request.
#[derive(Debug, Args)]
pub struct AnswerCommand {
    /// The task's id (a unique prefix will do).
    #[arg(value_name = "ID")]
    pub task_id: String,
    /// The answer.
    #[arg(
        long,
        conflicts_with = "text_file",
        required_unless_present = "text_file"
    )]
    pub text: Option<String>,
    /// Read the answer from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub text_file: Option<PathBuf>,
    /// The dispatcher account (default: every account is searched for the task).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the outcome as a JSON object.
    #[arg(long)]
    pub json: bool,
}

impl AnswerCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let text = match (&self.text, &self.text_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) if path.as_os_str() == "-" => {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Failure::of("usage", &e, 2))?
            }
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                Failure::new(
                    "usage",
                    format!("cannot read --text-file '{}': {e}", path.display()),
                    Exit::Usage,
                )
            })?,
            (None, None) => String::new(),
        };
        if text.trim().is_empty() {
            return Err(Failure::new(
                "usage",
                "cannot send an empty answer: --text or --text-file",
                Exit::Usage,
            ));
        }
        let store = super::open_store(&config)?;
        let answered = super::runtime()?.block_on(answer_task(
            &config,
            &store,
            &self.task_id,
            self.account.as_deref(),
            &text,
        ))?;
        let (queued, status, by) = (answered.queued, answered.status, answered.sender);
        if self.json {
            output::write_stdout(
                format!(
                    "{}\n",
                    json!({
                        "event": "answered",
                        "taskId": queued.task_id,
                        "messageId": queued.message_id,
                        "to": queued.to,
                        "status": status,
                        "sender": by,
                    })
                )
                .as_bytes(),
            )
            .map_err(|e| Failure::of("output", &e, 1))?;
        } else {
            match (status, by) {
                ("queued", Some(by)) => eprintln!(
                    "answered task {} <{}>: queued; {by} sends it",
                    queued.task_id, queued.message_id
                ),
                (_, Some(by)) => eprintln!(
                    "answered task {} <{}>: sent to {} by {by}",
                    queued.task_id, queued.message_id, queued.to
                ),
                _ => eprintln!(
                    "answered task {} <{}>: sent to {}",
                    queued.task_id, queued.message_id, queued.to
                ),
            }
        }
        Ok(Exit::Ok)
    }
}

/// A help request answered: the queued mail, `sent` or `queued`, and who sent it.
#[derive(Debug)]
pub(crate) struct Answered {
    /// The answer in the outbox.
    pub(crate) queued: dispatcher::Queued,
    /// `sent` or `queued`.
    pub(crate) status: &'static str,
    /// The process that sent (or will send) it, when not this one.
    pub(crate) sender: Option<String>,
}

/// Answers the help request of dispatched task `id` (a unique prefix will do) of `account` (or
/// of any account) with `text`, and delivers it (module docs). Shared by `taskmail answer` and
/// the MCP tool `answer_help`.
pub(crate) async fn answer_task(
    config: &crate::config::Config,
    store: &crate::store::Store,
    id: &str,
    account: Option<&str>,
    text: &str,
) -> Result<Answered, Failure> {
    let task = super::task::find_dispatched(config, store, id, account)?;
    let account = super::pick_account(config, Some(&task.account), &task.account)?;
    let signer = super::signer(config, &account.name)?;
    let queued = dispatcher::enqueue_answer(
        store,
        account,
        &account.name,
        signer.as_ref(),
        &TaskId::new(task.task_id.as_str()),
        text,
        crate::clock::now(),
    )
    .map_err(|e| {
        let failure = Failure::of("task", &e, e.exit_code());
        match e {
            dispatcher::DispatcherError::NotWaiting { .. } => failure.detail(format!(
                "see the task with: taskmail task show {}",
                task.task_id
            )),
            _ => failure,
        }
    })?;
    crate::transport::init_crypto();
    let delivery = dispatcher::deliver(
        config,
        &account.name,
        store,
        &queued.message_id,
        super::dispatch::SEND_PATIENCE,
    )
    .await;
    let (status, sender) = match delivery {
        Ok(Delivery::Sent(by)) => ("sent", by.map(|h| h.describe())),
        Ok(Delivery::Queued(holder)) => ("queued", Some(holder.describe())),
        Err(error) => {
            let code = error.exit_code();
            let mut failure = Failure::of("send", &error, code).detail(format!(
                "the answer stays queued: the next taskmail process serving account '{}' sends it",
                account.name
            ));
            if let Some(hint) = super::dispatch::send_hint(code, account) {
                failure = failure.detail(hint);
            }
            return Err(failure);
        }
    };
    Ok(Answered {
        queued,
        status,
        sender,
    })
}
