//! `taskmail watch [--account A] [--json]`: catch up from the CLI's persisted cursor, then
//! stream live push frames, until SIGINT or SIGTERM.
//!
//! Frames are printed oldest first, each id once (at-least-once delivery underneath is
//! deduplicated by id), and the cursor is saved after each one, so a restarted `watch` (or
//! `inbox`) goes on where this one stopped. The push channel reconnects on its own through
//! server restarts (WebSocket, EventSource or polling, as `taskmail run` does); every
//! reconnect catches up with `Email/changes`, so nothing is lost. With `--json`, JSON Lines:
//! one frame per line in the ASMTP shape, and delivery facts as `{"monitor", "envelope_id",
//! "recipient_handle", "fact", "at_ms"}`.

use std::collections::HashSet;
use std::path::PathBuf;

use clap::Args;
use tokio::sync::broadcast::error::RecvError;

use super::send::{failure, load_cursor, open, save_cursor};
use super::{Exit, Failure, output};
use crate::config::Env;
use crate::mailbox::{ListQuery, Mailbox, MailboxEvent};
use crate::wire::asmtp::{Cursor, PushFrame};

/// `taskmail watch`: stream push frames.
#[derive(Debug, Args)]
pub struct WatchCommand {
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// JSON Lines on stdout.
    #[arg(long)]
    pub json: bool,
}

impl WatchCommand {
    /// Runs the verb until a signal; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            let mailbox = open(&config, self.account.as_deref()).await?;
            let mut events = mailbox.subscribe();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let follower = {
                let mailbox = mailbox.clone();
                tokio::spawn(async move {
                    mailbox
                        .follow(async move {
                            let _ = stopped.await;
                        })
                        .await
                })
            };
            let mut printed = HashSet::new();
            // The backlog after the cursor, from the index (the follower's catch-up lands in
            // the index too: anything it broadcasts twice is dropped by id).
            let mut cursor = load_cursor(&mailbox)?;
            self.backlog(&mailbox, &mut cursor, &mut printed)?;
            let signal = super::stop_signal();
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    _ = &mut signal => break,
                    event = events.recv() => match event {
                        Ok(MailboxEvent::Frame(frame)) => {
                            self.emit(&mailbox, &frame, &mut printed)?;
                        }
                        Ok(MailboxEvent::Monitor(fact)) => {
                            if self.json {
                                let line = serde_json::to_string(&fact).unwrap_or_default();
                                output::write_stdout(format!("{line}\n").as_bytes())
                                    .map_err(|e| Failure::of("output", &e, 1))?;
                            } else {
                                let line = format!("delivery {:?} {} {}\n", fact.fact, fact.envelope_id, fact.recipient_handle);
                                output::write_stdout(line.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {
                            // NOTE: too slow a reader: re-read from the index.
                            self.backlog(&mailbox, &mut cursor, &mut printed)?;
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            let _ = stop.send(());
            match follower.await {
                Ok(Err(e)) => Err(failure(e)),
                _ => Ok(Exit::Ok),
            }
        })
    }

    fn backlog(
        &self,
        mailbox: &Mailbox,
        cursor: &mut Option<Cursor>,
        printed: &mut HashSet<String>,
    ) -> Result<(), Failure> {
        loop {
            let page = mailbox
                .list(&ListQuery {
                    after: cursor.clone(),
                    limit: 500,
                    ..ListQuery::default()
                })
                .map_err(failure)?;
            for f in &page.frames {
                self.emit(mailbox, &f.frame, printed)?;
                *cursor = Some(f.frame.cursor());
            }
            if page.next_cursor.is_none() {
                return Ok(());
            }
        }
    }

    fn emit(
        &self,
        mailbox: &Mailbox,
        frame: &PushFrame,
        printed: &mut HashSet<String>,
    ) -> Result<(), Failure> {
        if !printed.insert(frame.id.to_string()) {
            return Ok(());
        }
        let line = if self.json {
            format!("{}\n", frame.to_json())
        } else {
            format!(
                "{} {} {} {}\n",
                frame.id,
                frame.from,
                frame.type_hint.as_str(),
                frame.subject.as_deref().unwrap_or("(no subject)")
            )
        };
        output::write_stdout(line.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
        save_cursor(mailbox, &frame.cursor())
    }
}
