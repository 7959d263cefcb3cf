//! `taskmail read ID [--keep-unread] [--account A] [--json]`: fetch one envelope's body from
//! the server and mark it read (`$seen` there, the seen flag here).
//!
//! With `--json`: `{"envelope": {...}, "frame": {...}, "seen": true}` in the ASMTP shape.

use std::path::PathBuf;

use clap::Args;

use super::send::{failure, open};
use super::{Exit, Failure, output};
use crate::config::Env;
use crate::mailbox::MailboxError;
use crate::wire::asmtp::{ContentPart, EnvelopeId};

/// `taskmail read`: one envelope with its body.
#[derive(Debug, Args)]
pub struct ReadCommand {
    /// The envelope id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Do not mark it read.
    #[arg(long)]
    pub keep_unread: bool,
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReadCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let id = EnvelopeId::parse(&self.id)
            .map_err(|e| Failure::new("usage", e.to_string(), Exit::Usage))?;
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            let mailbox = open(&config, self.account.as_deref()).await?;
            let got = match mailbox.read(&id, !self.keep_unread).await {
                Err(MailboxError::NotFound) => {
                    // NOTE: maybe it arrived since the last sync.
                    mailbox.sync().await.map_err(failure)?;
                    mailbox.read(&id, !self.keep_unread).await
                }
                other => other,
            }
            .map_err(failure)?;
            if self.json {
                output::print_json(&got).map_err(Failure::from)?;
                return Ok(Exit::Ok);
            }
            let e = &got.envelope;
            let mut out = format!(
                "id       {}\nfrom     {}\nto       {}\n",
                e.id,
                e.from,
                list(&e.to)
            );
            if !e.cc.is_empty() {
                out.push_str(&format!("cc       {}\n", list(&e.cc)));
            }
            if let Some(s) = &e.subject {
                out.push_str(&format!("subject  {s}\n"));
            }
            if let Some(r) = &e.in_reply_to {
                out.push_str(&format!("reply-to {r}\n"));
            }
            out.push('\n');
            for part in &e.content_parts {
                match part {
                    ContentPart::Text { text } => {
                        out.push_str(text);
                        out.push('\n');
                    }
                    ContentPart::Data { data, schema } => out.push_str(&format!(
                        "[data{}] {}\n",
                        schema
                            .as_deref()
                            .map(|s| format!(" {s}"))
                            .unwrap_or_default(),
                        data
                    )),
                    ContentPart::File {
                        name,
                        url,
                        file_id,
                        size,
                        ..
                    } => out.push_str(&format!(
                        "[file] {} {}{}\n",
                        name.as_deref().unwrap_or("(unnamed)"),
                        url.as_deref().or(file_id.as_deref()).unwrap_or(""),
                        size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
                    )),
                    ContentPart::Image { url, file_id, .. } => out.push_str(&format!(
                        "[image] {}\n",
                        url.as_deref().or(file_id.as_deref()).unwrap_or("")
                    )),
                }
            }
            output::write_stdout(out.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
            Ok(Exit::Ok)
        })
    }
}

fn list(handles: &[crate::wire::asmtp::Handle]) -> String {
    handles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
