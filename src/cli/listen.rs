//! `taskmail listen [--account NAME] [--json]`: follow a mailbox and print every inbound
//! message as taskmail classifies it, acting on none of them.
//!
//! It connects over JMAP, starts from the mailbox's current state, and on every push hint (or
//! poll tick, on a server without push) reads `Email/changes`, fetches the new Inbox mail and
//! prints one event per message: `kind` (`aamp`, `asmtp`, `reply`, `plain`, `invalid`), the
//! AAMP fields as `taskmail parse --json` names them, the person's reply text, the thread
//! headers. It never writes: no ack, no keyword, no store, no state; a daemon serving the same
//! mailbox is not disturbed. It runs until SIGINT or SIGTERM. With `--json`, JSON Lines on
//! stdout: a `ready` line, then one `mail` line per message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::transport::{self, Fetched, JmapClient, MailStore as _, PushSettings, PushSupervisor};
use crate::wire::{Classified, classify};

/// Ids per `Email/get`.
const CHUNK: usize = 64;

/// `taskmail listen`: print what arrives, act on nothing.
#[derive(Debug, Args)]
pub struct ListenCommand {
    /// The account to follow (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// JSON Lines on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ListenCommand {
    /// Runs the verb until a signal; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let fallback = config.default_account().name.clone();
        let account = super::pick_account(&config, self.account.as_deref(), &fallback)?.clone();
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            transport::init_crypto();
            let mail = Arc::new(JmapClient::from_account(&account).await.map_err(|e| {
                super::dispatch::connect_failure(&crate::daemon::DaemonError::Mail(e), &account)
            })?);
            let inbox = mail
                .inbox_id()
                .await
                .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
            let mut cursor = mail
                .state()
                .await
                .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
            let settings = PushSettings::from_config(&account.jmap)
                .map_err(|e| Failure::of("config", &e, 2))?;
            let (supervisor, mut hints, _status) =
                PushSupervisor::new(Arc::clone(&mail), settings, 16);
            let push = tokio::spawn(supervisor.run(std::future::pending()));
            self.emit(json!({
                "event": "ready",
                "account": account.name,
                "email": account.email,
                "state": cursor,
            }));
            let stop = super::stop_signal();
            tokio::pin!(stop);
            let mut failures: u32 = 0;
            loop {
                match self.pass(&mail, &inbox, &cursor).await {
                    Ok(next) => {
                        cursor = next;
                        failures = 0;
                    }
                    Err(error) if error.is_auth() => {
                        push.abort();
                        return Err(Failure::of("connect", &error, 77));
                    }
                    Err(error) if error.is_cannot_calculate_changes() => {
                        tracing::warn!("the server cannot calculate changes; starting again from now");
                        if let Ok(state) = mail.state().await {
                            cursor = state;
                        }
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %crate::transport::smtp::error_chain(&error), failures, "cannot read the mailbox; will retry");
                    }
                }
                let pause = if failures > 0 {
                    Duration::from_secs(u64::from(failures.min(30)))
                } else {
                    account.jmap.poll_interval
                };
                tokio::select! {
                    _ = &mut stop => break,
                    hint = hints.recv() => {
                        if hint.is_none() {
                            tokio::time::sleep(pause).await;
                        }
                        while hints.try_recv().is_ok() {}
                    }
                    () = tokio::time::sleep(pause), if failures > 0 => {}
                }
            }
            push.abort();
            Ok(Exit::Ok)
        })
    }

    /// One look: what was created since `cursor`, printed; the new cursor.
    async fn pass(
        &self,
        mail: &JmapClient,
        inbox: &str,
        cursor: &str,
    ) -> Result<String, crate::transport::JmapError> {
        let changes = mail.changes(cursor).await?;
        for chunk in changes.created.chunks(CHUNK) {
            let mut fetched = mail.get_bodies(chunk).await?;
            fetched.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
            for f in fetched.iter().filter(|f| f.mailbox_ids.contains(inbox)) {
                self.emit(describe(f));
            }
        }
        Ok(changes.new_state)
    }

    fn emit(&self, mut value: Value) {
        if let Some(object) = value.as_object_mut() {
            object.insert("at".to_owned(), json!(crate::clock::now()));
        }
        if self.json {
            let _ = output::write_stdout(format!("{value}\n").as_bytes());
            return;
        }
        let line = match value["event"].as_str() {
            Some("ready") => format!(
                "listening to {} (account {}); nothing is acted on",
                value["email"].as_str().unwrap_or_default(),
                value["account"].as_str().unwrap_or_default()
            ),
            _ => {
                let kind = value["kind"].as_str().unwrap_or_default();
                let from = value["from"].as_str().unwrap_or("?");
                let subject = value["subject"].as_str().unwrap_or_default();
                match kind {
                    "aamp" => format!(
                        "aamp {} task {} from {from}: {subject}",
                        value["intent"].as_str().unwrap_or_default(),
                        value["taskId"].as_str().unwrap_or_default()
                    ),
                    "invalid" => format!(
                        "invalid from {from}: {} ({subject})",
                        value["reason"].as_str().unwrap_or_default()
                    ),
                    other => format!("{other} from {from}: {subject}"),
                }
            }
        };
        let _ = output::write_stdout(format!("{line}\n").as_bytes());
    }
}

/// One message as an event.
fn describe(fetched: &Fetched) -> Value {
    let inbound = &fetched.inbound;
    let classified = classify(inbound);
    let mut value = json!({
        "event": "mail",
        "kind": classified.kind(),
        "emailId": fetched.id,
        "messageId": inbound.message_id,
        "from": inbound.sender(),
        "to": inbound.to.iter().map(|m| m.email.clone()).collect::<Vec<_>>(),
        "subject": inbound.subject,
        "receivedAt": fetched.received_at,
        "inReplyTo": inbound.in_reply_to,
        "references": inbound.references,
        "keywords": fetched.keywords,
    });
    let Some(object) = value.as_object_mut() else {
        return value;
    };
    match classified {
        Classified::Aamp(parsed) => {
            if let Ok(Value::Object(fields)) = serde_json::to_value(&parsed.message) {
                object.extend(fields);
            }
            if !parsed.warnings.is_empty() {
                object.insert("warnings".to_owned(), json!(parsed.warnings));
            }
        }
        Classified::Reply { text, .. } => {
            object.insert("replyText".to_owned(), json!(text));
        }
        Classified::Invalid(reason) => {
            object.insert("reason".to_owned(), json!(reason));
        }
        Classified::Asmtp(envelope) => {
            if let Some(envelope) = envelope
                && let Ok(fields) = serde_json::to_value(&envelope)
            {
                object.insert("envelope".to_owned(), fields);
            }
        }
        Classified::Plain => {
            let text = inbound
                .body
                .as_ref()
                .and_then(|b| b.text.clone())
                .unwrap_or_default();
            object.insert(
                "bodyText".to_owned(),
                json!(crate::daemon::dispatcher::capped_text(&text)),
            );
        }
    }
    value
}
