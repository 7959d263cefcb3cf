//! `taskmail inbox [--unread] [--limit N] [--all] [--account A] [--json]`: the push frames
//! (headers only, never a body) that arrived since the CLI's persisted cursor.
//!
//! It syncs the mailbox first (JMAP `Email/changes` since the mailbox's own state; untrusted
//! senders are never indexed), then lists the local index after the cursor, oldest first, at
//! most `--limit` (default 50), and moves the cursor past what it printed: the next `inbox`
//! shows only newer frames. `--all` lists from the start and leaves the cursor alone. With
//! `--json`: `{"frames": [...], "next_cursor", "cursor"}`, each frame in the ASMTP shape plus
//! `seen`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::send::{failure, frame_json, load_cursor, open, save_cursor};
use super::{Exit, Failure, output};
use crate::config::Env;
use crate::mailbox::{ListQuery, Order};

/// `taskmail inbox`: list new push frames.
#[derive(Debug, Args)]
pub struct InboxCommand {
    /// Only envelopes not read yet.
    #[arg(long)]
    pub unread: bool,
    /// At most this many (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
    /// From the start of the mailbox, not from the cursor (the cursor stays).
    #[arg(long)]
    pub all: bool,
    /// Do not contact the server: list the local index only.
    #[arg(long)]
    pub offline: bool,
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl InboxCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        if self.limit == 0 || self.limit > crate::mailbox::MAX_PAGE {
            return Err(Failure::new(
                "usage",
                format!("cannot use --limit {}: give 1 to 1000", self.limit),
                Exit::Usage,
            ));
        }
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            let mailbox = open(&config, self.account.as_deref()).await?;
            if !self.offline {
                mailbox.sync().await.map_err(failure)?;
            }
            let cursor = load_cursor(&mailbox)?;
            let page = mailbox
                .list(&ListQuery {
                    after: if self.all { None } else { cursor.clone() },
                    limit: self.limit,
                    unread_only: self.unread,
                    order: Order::Asc,
                })
                .map_err(failure)?;
            if !self.all
                && let Some(last) = page.frames.last()
            {
                save_cursor(&mailbox, &last.frame.cursor())?;
            }
            if self.json {
                let frames: Vec<_> = page.frames.iter().map(frame_json).collect();
                output::print_json(&json!({
                    "frames": frames,
                    "next_cursor": page.next_cursor,
                    "cursor": cursor.map(|c| c.to_string()),
                }))
                .map_err(Failure::from)?;
                return Ok(Exit::Ok);
            }
            let mut out = String::new();
            for f in &page.frames {
                let frame = &f.frame;
                out.push_str(&format!(
                    "{} {} {:<24} {:<5} ~{:>5} tok  {}\n",
                    if f.seen { " " } else { "*" },
                    frame.id,
                    frame.from.to_string(),
                    frame.type_hint.as_str(),
                    frame.size_hint,
                    frame.subject.as_deref().unwrap_or("(no subject)"),
                ));
            }
            if page.frames.is_empty() {
                out.push_str("(nothing new)\n");
            }
            if page.next_cursor.is_some() {
                out.push_str("more: run `taskmail inbox` again\n");
            }
            if !self.all {
                out.push_str(
                    "older envelopes: `taskmail inbox --all`; a body: `taskmail read ID`\n",
                );
            }
            output::write_stdout(out.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
            Ok(Exit::Ok)
        })
    }
}
