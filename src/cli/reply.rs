//! `taskmail reply ID [--all] [--subject S] [--text T | --text-file F] [--file PATH]...
//! [--data JSON --schema S] [--monitor] [--account A] [--json]`: answer an envelope.
//!
//! The reply goes to the envelope's sender; its other recipients (to and cc, minus this
//! agent) are kept as cc. `in_reply_to` is the envelope, `references` its references plus
//! the envelope; the subject defaults to `Re: <subject>`. Output as `taskmail send`.

use std::path::PathBuf;

use clap::Args;

use super::send::{ContentArgs, failure, open, print_receipt};
use super::{Exit, Failure};
use crate::config::Env;
use crate::mailbox::MailboxError;
use crate::wire::asmtp::EnvelopeId;

/// `taskmail reply`: answer an envelope.
#[derive(Debug, Args)]
pub struct ReplyCommand {
    /// The envelope to answer.
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub content: ContentArgs,
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReplyCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let id = EnvelopeId::parse(&self.id)
            .map_err(|e| Failure::new("usage", e.to_string(), Exit::Usage))?;
        let mut req = self.content.request()?;
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            let mailbox = open(&config, self.account.as_deref()).await?;
            let mut got = mailbox
                .get_many(std::slice::from_ref(&id))
                .await
                .map_err(failure)?;
            if got.is_empty() {
                mailbox.sync().await.map_err(failure)?;
                got = mailbox
                    .get_many(std::slice::from_ref(&id))
                    .await
                    .map_err(failure)?;
            }
            let original = got
                .pop()
                .ok_or_else(|| failure(MailboxError::NotFound))?
                .envelope;
            let me = mailbox.handle().clone();
            req.to = vec![original.from.to_string()];
            let mut cc: Vec<String> = Vec::new();
            for h in original.to.iter().chain(original.cc.iter()) {
                if *h != me && *h != original.from && !cc.contains(&h.to_string()) {
                    cc.push(h.to_string());
                }
            }
            req.cc = cc;
            if req.subject.is_none() {
                let s = original.subject.clone().unwrap_or_default();
                req.subject = Some(if s.to_ascii_lowercase().starts_with("re:") {
                    s
                } else {
                    format!("Re: {s}").trim().to_owned()
                });
            }
            let mut references = original.references.clone();
            references.retain(|r| *r != original.id);
            references.push(original.id.clone());
            req.references = references;
            req.in_reply_to = Some(original.id.clone());
            let receipt = mailbox.send(req).await.map_err(failure)?;
            print_receipt(&receipt, self.json)
        })
    }
}
