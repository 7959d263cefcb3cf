//! `taskmail send --to HANDLE|ADDR [--cc ...] [--subject S] [--text T | --text-file F]
//! [--file PATH]... [--data JSON --schema S] [--in-reply-to ID] [--id ID] [--monitor]
//! [--account A] [--json]`: send an ASMTP envelope from the account's own handle.
//!
//! Recipients are handles (`@owner.name`) or addresses; every one must be reachable (the
//! account's allowed senders and grants admit it) or nothing is sent. `--id` makes a retry
//! safe: the same id and body again is answered from the first send (`replayed: true`), the
//! same id with another body fails with `RETRY_MISMATCH`. With `--json` the receipt in the
//! ASMTP shape: `{"id", "received_ms", "created_at", "recipients", "replayed"}`.
//!
//! This file also holds what the other mailbox verbs (`inbox`, `read`, `reply`, `watch`) share.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Value, json};

use super::{Exit, Failure, output};
use crate::config::{Config, Env};
use crate::mailbox::{InlineFile, Mailbox, MailboxError, SendRequest};
use crate::wire::asmtp::{ContentPart, Cursor, EnvelopeId};

/// Most bytes one `--file` may have (inline files travel in the mail).
const MAX_FILE: u64 = 10 << 20;

/// The content flags `send` and `reply` share.
#[derive(Debug, Clone, Args)]
pub struct ContentArgs {
    /// The subject.
    #[arg(long, value_name = "S")]
    pub subject: Option<String>,
    /// A text part.
    #[arg(long, value_name = "T", conflicts_with = "text_file")]
    pub text: Option<String>,
    /// A text part read from a file (`-`: stdin).
    #[arg(long, value_name = "F")]
    pub text_file: Option<PathBuf>,
    /// A file carried inline (repeatable).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// A data part: a JSON object.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// The schema of the data part (e.g. aamp/1.1).
    #[arg(long, value_name = "S", requires = "data")]
    pub schema: Option<String>,
    /// Ask for delivery facts (a monitor id is made: mon_<ulid>).
    #[arg(long)]
    pub monitor: bool,
    /// The envelope id (a ULID starting with 01): the idempotency key of a retry. Default: a new one.
    #[arg(long = "id", value_name = "ID")]
    pub envelope_id: Option<String>,
}

impl ContentArgs {
    /// The request these flags describe (recipients left empty).
    pub(crate) fn request(&self) -> Result<SendRequest, Failure> {
        let mut parts = Vec::new();
        let text = match (&self.text, &self.text_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_text(path)?),
            (None, None) => None,
        };
        if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
            parts.push(ContentPart::text(t));
        }
        if let Some(data) = &self.data {
            let value: Value = serde_json::from_str(data).map_err(|e| {
                usage(format!("cannot read --data as JSON: {e}"))
                    .detail("write a JSON object, e.g. --data '{\"k\": 1}'")
            })?;
            if !value.is_object() {
                return Err(usage(
                    "cannot use --data: it must be a JSON object, e.g. '{\"k\": 1}'",
                ));
            }
            parts.push(ContentPart::data(value, self.schema.as_deref()));
        }
        let mut files = Vec::new();
        for path in &self.files {
            files.push(read_file(path)?);
        }
        if parts.is_empty() && files.is_empty() {
            return Err(usage("cannot send an empty envelope")
                .detail("give --text, --text-file, --data or --file"));
        }
        let id = self
            .envelope_id
            .as_deref()
            .map(|s| EnvelopeId::parse(s).map_err(|e| usage(e.to_string())))
            .transpose()?;
        let monitor = self
            .monitor
            .then(|| format!("mon_{}", crate::ids::ulid(crate::clock::now())));
        Ok(SendRequest {
            id,
            subject: self.subject.clone(),
            content_parts: parts,
            monitor,
            files,
            ..SendRequest::default()
        })
    }
}

/// `taskmail send`: send an envelope.
#[derive(Debug, Args)]
pub struct SendCommand {
    /// A recipient: @owner.name or an address (repeatable).
    #[arg(long = "to", value_name = "HANDLE|ADDR", required = true)]
    pub to: Vec<String>,
    /// A copy recipient (repeatable).
    #[arg(long = "cc", value_name = "HANDLE|ADDR")]
    pub cc: Vec<String>,
    #[command(flatten)]
    pub content: ContentArgs,
    /// The envelope this one answers.
    #[arg(long, value_name = "ID")]
    pub in_reply_to: Option<String>,
    /// The account to send from (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl SendCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let mut req = self.content.request()?;
        req.to = split(&self.to);
        req.cc = split(&self.cc);
        req.in_reply_to = self
            .in_reply_to
            .as_deref()
            .map(|s| EnvelopeId::parse(s).map_err(|e| usage(e.to_string())))
            .transpose()?;
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            let mailbox = open(&config, self.account.as_deref()).await?;
            let receipt = mailbox.send(req).await.map_err(failure)?;
            print_receipt(&receipt, self.json)
        })
    }
}

/// Prints a receipt (ASMTP shape with `--json`).
pub(crate) fn print_receipt(
    receipt: &crate::mailbox::SendReceipt,
    json: bool,
) -> Result<Exit, Failure> {
    if json {
        output::print_json(receipt).map_err(Failure::from)?;
    } else {
        let to: Vec<String> = receipt.recipients.iter().map(ToString::to_string).collect();
        let line = if receipt.replayed {
            format!(
                "{} was sent before (same body): not sent again\n",
                receipt.id
            )
        } else {
            format!("sent {} to {}\n", receipt.id, to.join(", "))
        };
        output::write_stdout(line.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
    }
    Ok(Exit::Ok)
}

/// `a,b` and repeated flags alike.
fn split(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new("usage", message, Exit::Usage)
}

fn read_text(path: &Path) -> Result<String, Failure> {
    let read = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|e| usage(format!("cannot read --text-file '{}': {e}", path.display())))
}

fn read_file(path: &Path) -> Result<InlineFile, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| usage(format!("cannot read --file '{}': {e}", path.display())))?;
    if meta.len() > MAX_FILE {
        return Err(usage(format!(
            "cannot attach '{}': {} bytes is over the 10 MiB limit of an inline file",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| usage(format!("cannot read --file '{}': {e}", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    Ok(InlineFile {
        mime_type: mime_of(&name).to_owned(),
        name,
        bytes,
    })
}

fn mime_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md" | "log") => "text/plain",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    }
}

/// Opens the mailbox of `--account` (default: the default account).
pub(crate) async fn open(config: &Config, account: Option<&str>) -> Result<Mailbox, Failure> {
    let fallback = config.default_account().name.clone();
    let account = super::pick_account(config, account, &fallback)?
        .name
        .clone();
    Mailbox::open(config, &account).await.map_err(failure)
}

/// A mailbox error as a CLI failure: its message, the ASMTP code, a hint, its exit code.
pub(crate) fn failure(e: MailboxError) -> Failure {
    let hint = match &e {
        MailboxError::Unreachable(_) => Some(
            "a recipient must have a handle (owner.name@domain, an account handle, or an [asmtp.directory] entry) and be admitted by this account: `taskmail grants allow ADDRESS --account NAME`, or [worker] allowed-senders",
        ),
        MailboxError::RetryMismatch => {
            Some("send a new id (leave out --id), or repeat the first body exactly")
        }
        MailboxError::IdCollision => Some("leave out --id to get a new one"),
        MailboxError::NotFound => Some("list what this mailbox has with `taskmail inbox --all`"),
        MailboxError::PayloadTooLarge => Some("send big content as --file, or split it"),
        MailboxError::Unavailable(_) => Some("check the servers with `taskmail doctor`"),
        _ => None,
    };
    let mut f = Failure::new(
        "mailbox",
        format!("{} ({})", e, e.code()),
        super::Exit::from_code(e.exit_code()),
    );
    if let Some(h) = hint {
        f = f.detail(h);
    }
    f
}

/// The `kv` key of the CLI's persisted cursor for `account`.
pub(crate) fn cursor_key(account: &str) -> String {
    format!("mailbox.cli-cursor.{account}")
}

/// The CLI's persisted cursor.
pub(crate) fn load_cursor(mailbox: &Mailbox) -> Result<Option<Cursor>, Failure> {
    let text = mailbox
        .with_store(|s| s.kv_get(&cursor_key(mailbox.account())))
        .map_err(Failure::from)?;
    Ok(text.and_then(|t| Cursor::parse(&t).ok()))
}

/// Saves the CLI's cursor (only forward).
pub(crate) fn save_cursor(mailbox: &Mailbox, cursor: &Cursor) -> Result<(), Failure> {
    if load_cursor(mailbox)?.is_some_and(|old| old >= *cursor) {
        return Ok(());
    }
    mailbox
        .with_store(|s| {
            s.kv_set(
                &cursor_key(mailbox.account()),
                &cursor.to_string(),
                crate::clock::now(),
            )
        })
        .map_err(Failure::from)
}

/// A frame as one JSON value (the ASMTP shape).
pub(crate) fn frame_json<T: serde::Serialize>(frame: &T) -> Value {
    serde_json::to_value(frame).unwrap_or_else(|_| json!({}))
}
