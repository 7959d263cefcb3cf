//! `taskmail render INTENT ...`: the exact RFC 5322 bytes taskmail would submit (a dry run of
//! every send). Flags follow the AAMP CLI; `--json-input FILE` takes the whole message as JSON.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use super::Exit;
use super::output;
use crate::wire::aamp::{
    AampMessage, Dispatch, DispatchContext, HelpNeeded, Intent, PairRequest, PairRespond, Payload,
    Priority, Status, TaskId, TaskResult, parse_instant,
};
use crate::wire::message::{Attachment, Mailbox, Outbound};
use crate::wire::thread;

/// Which message to render.
#[derive(Debug, Subcommand)]
#[command(disable_help_subcommand = true)]
pub enum RenderCommand {
    /// A task.dispatch.
    Dispatch(DispatchArgs),
    /// A task.result.
    Result(ResultArgs),
    /// A task.help_needed.
    Help(HelpArgs),
    /// A task.cancel.
    Cancel(CancelArgs),
    /// A task.ack.
    Ack(AckArgs),
    /// A task.stream.opened.
    Stream(StreamArgs),
    /// A pair.request (asks a mailbox to accept tasks from us, with a pair code).
    PairRequest(PairRequestArgs),
    /// A pair.respond.
    PairRespond(PairRespondArgs),
    /// A card.query (asks an agent for its capability card).
    CardQuery(CardQueryArgs),
    /// A card.response.
    CardResponse(CardResponseArgs),
    /// An ASMTP envelope (agent-to-agent message).
    Envelope(EnvelopeArgs),
}

/// Flags of `render stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// The stream id.
    #[arg(long)]
    pub stream_id: Option<String>,
}

/// Flags of `render pair-request`.
#[derive(Debug, Args)]
pub struct PairRequestArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// The pair code from the `aamp://connect?...` URL.
    #[arg(long)]
    pub pair_code: Option<String>,
    /// Dispatch-Context rules as JSON: `{"key": ["allowed", "values"]}`.
    #[arg(long)]
    pub rules: Option<String>,
}

/// Flags of `render pair-respond`.
#[derive(Debug, Args)]
pub struct PairRespondArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// completed or rejected.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub error: Option<String>,
}

/// Flags of `render card-query`.
#[derive(Debug, Args)]
pub struct CardQueryArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// The question (a default sentence when empty).
    #[arg(long)]
    pub text: Option<String>,
}

/// Flags of `render card-response`.
#[derive(Debug, Args)]
pub struct CardResponseArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// One-line summary (the Subject and X-AAMP-Card-Summary).
    #[arg(long)]
    pub summary: Option<String>,
    /// The card itself (markdown), the body.
    #[arg(long)]
    pub card: Option<String>,
}

/// Flags of `render envelope`.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// Sender handle `@owner.name`.
    #[arg(long)]
    pub from: String,
    /// Recipient handle (repeatable).
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// Copy recipient handle (repeatable).
    #[arg(long)]
    pub cc: Vec<String>,
    #[arg(long)]
    pub subject: Option<String>,
    /// A text part.
    #[arg(long)]
    pub text: Option<String>,
    /// A data part: a JSON object.
    #[arg(long)]
    pub data: Option<String>,
    /// Schema of the data part, e.g. `aamp/1.1`.
    #[arg(long, requires = "data")]
    pub schema: Option<String>,
    /// Envelope id this one answers.
    #[arg(long)]
    pub in_reply_to: Option<String>,
    /// Earlier envelope ids of the conversation, oldest first (repeatable).
    #[arg(long = "references")]
    pub references: Vec<String>,
    /// Ask for delivery facts under this monitor id (`mon_...`).
    #[arg(long)]
    pub monitor: Option<String>,
    /// The agents' mail domain (`owner.name@DOMAIN`).
    #[arg(long, default_value = "example.test")]
    pub domain: String,
    /// Envelope id (default: a new ULID).
    #[arg(long)]
    pub id: Option<String>,
    /// Date to stamp, RFC 3339 (default: now).
    #[arg(long)]
    pub date: Option<String>,
    /// Print `{"messageId", "envelope", "raw"}` as JSON instead of the raw bytes.
    #[arg(long)]
    pub json: bool,
}

impl EnvelopeArgs {
    fn execute(self) -> anyhow::Result<Exit> {
        use crate::wire::asmtp::{ContentPart, Envelope, EnvelopeId, Handle};
        let handle = |h: &str, flag: &str| {
            Handle::parse(h).with_context(|| format!("cannot use {flag} '{h}': write @owner.name"))
        };
        let now = match &self.date {
            Some(d) => DateTime::parse_from_rfc3339(d)
                .map(|d| d.with_timezone(&Utc))
                .with_context(|| format!("cannot use --date '{d}': use RFC 3339"))?,
            None => crate::clock::now(),
        };
        let id = match &self.id {
            Some(i) => EnvelopeId::parse(i).with_context(|| format!("cannot use --id '{i}'"))?,
            None => EnvelopeId::parse(&crate::ids::ulid(now))?,
        };
        let mut parts = Vec::new();
        if let Some(t) = &self.text {
            parts.push(ContentPart::text(t.as_str()));
        }
        if let Some(d) = &self.data {
            let value: serde_json::Value = serde_json::from_str(d)
                .with_context(|| format!("cannot use --data '{d}': it is not JSON"))?;
            parts.push(ContentPart::data(value, self.schema.as_deref()));
        }
        if parts.is_empty() {
            bail!("cannot render an envelope without content: add --text or --data");
        }
        let mut env = Envelope::new(
            id,
            handle(&self.from, "--from")?,
            self.to
                .iter()
                .map(|h| handle(h, "--to"))
                .collect::<Result<_, _>>()?,
            now.timestamp_millis(),
            parts,
        );
        env.cc = self
            .cc
            .iter()
            .map(|h| handle(h, "--cc"))
            .collect::<Result<_, _>>()?;
        env.subject = self.subject;
        env.monitor = self.monitor;
        env.in_reply_to = self
            .in_reply_to
            .as_deref()
            .map(EnvelopeId::parse)
            .transpose()
            .context("cannot use --in-reply-to")?;
        env.references = self
            .references
            .iter()
            .map(|r| EnvelopeId::parse(r))
            .collect::<Result<_, _>>()
            .context("cannot use --references")?;
        if let Some(parent) = &env.in_reply_to
            && !env.references.is_empty()
            && env.references.last() != Some(parent)
        {
            env.references.push(parent.clone());
        }
        env.validate().context("cannot render this envelope")?;
        let out = env.to_outbound(&self.domain, now);
        let raw = out.render();
        if self.json {
            output::print_json(&json!({
                "messageId": out.message_id,
                "envelope": serde_json::from_slice::<serde_json::Value>(&env.canonical_json())?,
                "raw": String::from_utf8_lossy(&raw),
            }))?;
        } else {
            output::write_stdout(&raw)?;
        }
        Ok(Exit::Ok)
    }
}

/// Envelope and threading flags shared by every intent.
#[derive(Debug, Args)]
pub struct Common {
    /// Sender address.
    #[arg(long, required_unless_present = "json_input")]
    pub from: Option<String>,
    /// Recipient address (repeatable).
    #[arg(long, required_unless_present = "json_input")]
    pub to: Vec<String>,
    /// Message-ID to use (default: a new `<ULID@sender-domain>`).
    #[arg(long)]
    pub message_id: Option<String>,
    /// Date to stamp, RFC 3339 (default: now).
    #[arg(long)]
    pub date: Option<String>,
    /// Message-ID this message answers (the dispatch, for replies).
    #[arg(long)]
    pub in_reply_to: Option<String>,
    /// The thread's earlier Message-IDs, oldest first (repeatable); the In-Reply-To id is added.
    #[arg(long = "references")]
    pub references: Vec<String>,
    /// File to attach (repeatable).
    #[arg(long = "attach", value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Take the message from a JSON file (`-` for stdin): `{"from", "to", "taskId", "intent",
    /// ...fields as `parse --json` prints them}`; flags given as well override it.
    #[arg(long, value_name = "FILE")]
    pub json_input: Option<PathBuf>,
    /// Print `{"messageId", "taskId", "raw"}` as JSON instead of the raw bytes.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `render dispatch`.
#[derive(Debug, Args)]
pub struct DispatchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Task title (the Subject after `[AAMP Task]`).
    #[arg(long)]
    pub title: Option<String>,
    /// Instructions (the body).
    #[arg(long)]
    pub body: Option<String>,
    /// urgent, high or normal.
    #[arg(long)]
    pub priority: Option<String>,
    /// Expiry instant, RFC 3339.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Session key grouping dispatches into one agent session.
    #[arg(long)]
    pub session_key: Option<String>,
    /// Dispatch-Context entry `key=value` (repeatable).
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// Parent task id.
    #[arg(long)]
    pub parent_task_id: Option<String>,
    /// Task id (default: a new UUIDv4).
    #[arg(long)]
    pub task_id: Option<String>,
}

/// Flags of `render result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// completed or rejected.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub output: Option<String>,
    /// Error message (sent in X-AAMP-ErrorMsg and in the body).
    #[arg(long)]
    pub error: Option<String>,
    /// Structured result as JSON text.
    #[arg(long)]
    pub structured_result: Option<String>,
}

/// Flags of `render help`.
#[derive(Debug, Args)]
pub struct HelpArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    #[arg(long)]
    pub question: Option<String>,
    #[arg(long)]
    pub blocked_reason: Option<String>,
    /// A suggested option (repeatable).
    #[arg(long = "option")]
    pub option: Vec<String>,
}

/// Flags of `render cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
    /// Why (the body; a default sentence when empty).
    #[arg(long)]
    pub reason: Option<String>,
}

/// Flags of `render ack`.
#[derive(Debug, Args)]
pub struct AckArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub task_id: Option<String>,
}

/// The `--json-input` document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonInput {
    from: Option<String>,
    #[serde(default)]
    to: OneOrMany,
    message_id: Option<String>,
    date: Option<String>,
    in_reply_to: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(flatten)]
    message: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl RenderCommand {
    /// Runs the verb.
    pub fn execute(self) -> anyhow::Result<Exit> {
        let (common, message) = match self {
            RenderCommand::Envelope(a) => return a.execute(),
            RenderCommand::Dispatch(a) => {
                let input = load_input(&a.common, Intent::TaskDispatch)?;
                let mut d = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::Dispatch(d)) => d.clone(),
                    _ => Dispatch::default(),
                };
                set(&mut d.title, a.title);
                set(&mut d.instructions, a.body);
                if let Some(p) = a.priority {
                    d.priority = Priority::parse(&p).with_context(|| {
                        format!("cannot use --priority '{p}': use urgent, high or normal")
                    })?;
                }
                if let Some(e) = a.expires_at {
                    d.expires_at = Some(parse_instant(&e).with_context(|| {
                        format!(
                            "cannot use --expires-at '{e}': use RFC 3339, e.g. 2026-08-01T12:00:00Z"
                        )
                    })?);
                }
                if a.session_key.is_some() {
                    d.session_key = a.session_key;
                }
                for kv in a.context {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("cannot use --context '{kv}': write key=value"))?;
                    let k = k.trim().to_ascii_lowercase();
                    if !DispatchContext::is_valid_key(&k) {
                        bail!("cannot use --context key '{k}': keys are [a-z0-9_-]+");
                    }
                    d.dispatch_context.0.insert(k, v.to_owned());
                }
                if let Some(p) = a.parent_task_id {
                    d.parent_task_id = Some(TaskId::new(p));
                }
                if d.title.trim().is_empty() {
                    bail!("cannot render a dispatch without a title: add --title");
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), true)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::Dispatch(d))),
                )
            }
            RenderCommand::Result(a) => {
                let input = load_input(&a.common, Intent::TaskResult)?;
                let mut r = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::Result(r)) => r.clone(),
                    _ => TaskResult::default(),
                };
                if let Some(s) = a.status {
                    r.status = Status::parse(&s).with_context(|| {
                        format!("cannot use --status '{s}': use completed or rejected")
                    })?;
                }
                set(&mut r.output, a.output);
                if a.error.is_some() {
                    r.error_msg = a.error;
                }
                if let Some(j) = a.structured_result {
                    r.structured_result = Some(serde_json::from_str(&j).with_context(|| {
                        format!("cannot use --structured-result '{j}': it is not JSON")
                    })?);
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::Result(r))),
                )
            }
            RenderCommand::Help(a) => {
                let input = load_input(&a.common, Intent::TaskHelpNeeded)?;
                let mut h = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::HelpNeeded(h)) => h.clone(),
                    _ => HelpNeeded::default(),
                };
                set(&mut h.question, a.question);
                set(&mut h.blocked_reason, a.blocked_reason);
                if !a.option.is_empty() {
                    h.suggested_options = a.option;
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::HelpNeeded(h))),
                )
            }
            RenderCommand::Cancel(a) => {
                let input = load_input(&a.common, Intent::TaskCancel)?;
                let mut reason = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::Cancel { reason }) => reason.clone(),
                    _ => String::new(),
                };
                set(&mut reason, a.reason);
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::Cancel { reason })),
                )
            }
            RenderCommand::Ack(a) => {
                let input = load_input(&a.common, Intent::TaskAck)?;
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                (a.common, (input, AampMessage::new(task_id, Payload::Ack)))
            }
            RenderCommand::Stream(a) => {
                let input = load_input(&a.common, Intent::TaskStreamOpened)?;
                let mut stream_id = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::StreamOpened { stream_id }) => stream_id.clone(),
                    _ => String::new(),
                };
                set(&mut stream_id, a.stream_id);
                if stream_id.trim().is_empty() {
                    bail!("cannot render a task.stream.opened without --stream-id");
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                let payload = Payload::StreamOpened { stream_id };
                (a.common, (input, AampMessage::new(task_id, payload)))
            }
            RenderCommand::PairRequest(a) => {
                let input = load_input(&a.common, Intent::PairRequest)?;
                let mut p = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::PairRequest(p)) => p.clone(),
                    _ => PairRequest::default(),
                };
                set(&mut p.pair_code, a.pair_code);
                if p.pair_code.is_empty()
                    || !p
                        .pair_code
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    bail!(
                        "cannot use --pair-code '{}': a pair code is base64url ([A-Za-z0-9_-])",
                        p.pair_code
                    );
                }
                if let Some(r) = a.rules {
                    p.dispatch_context_rules = serde_json::from_str(&r).with_context(|| {
                        format!("cannot use --rules '{r}': write {{\"key\": [\"value\", ...]}}")
                    })?;
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), true)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::PairRequest(p))),
                )
            }
            RenderCommand::PairRespond(a) => {
                let input = load_input(&a.common, Intent::PairRespond)?;
                let mut p = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::PairRespond(p)) => p.clone(),
                    _ => PairRespond::default(),
                };
                if let Some(s) = a.status {
                    p.status = Status::parse(&s).with_context(|| {
                        format!("cannot use --status '{s}': use completed or rejected")
                    })?;
                }
                if a.error.is_some() {
                    p.error_msg = a.error;
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                (
                    a.common,
                    (input, AampMessage::new(task_id, Payload::PairRespond(p))),
                )
            }
            RenderCommand::CardQuery(a) => {
                let input = load_input(&a.common, Intent::CardQuery)?;
                let mut text = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::CardQuery { text }) => text.clone(),
                    _ => String::new(),
                };
                set(&mut text, a.text);
                let task_id = task_id_or(a.task_id, input.as_ref(), true)?;
                (
                    a.common,
                    (
                        input,
                        AampMessage::new(task_id, Payload::CardQuery { text }),
                    ),
                )
            }
            RenderCommand::CardResponse(a) => {
                let input = load_input(&a.common, Intent::CardResponse)?;
                let (mut summary, mut card) = match input.as_ref().map(|i| &i.1.payload) {
                    Some(Payload::CardResponse { summary, card }) => {
                        (summary.clone(), card.clone())
                    }
                    _ => (String::new(), String::new()),
                };
                set(&mut summary, a.summary);
                set(&mut card, a.card);
                if summary.trim().is_empty() {
                    bail!("cannot render a card.response without --summary");
                }
                let task_id = task_id_or(a.task_id, input.as_ref(), false)?;
                let payload = Payload::CardResponse { summary, card };
                (a.common, (input, AampMessage::new(task_id, payload)))
            }
        };
        let (input, message) = message;
        let outbound = outbound(&common, input.map(|i| i.0), &message)?;
        let raw = outbound.render();
        if common.json {
            output::print_json(&json!({
                "messageId": outbound.message_id,
                "taskId": message.task_id,
                "intent": message.intent(),
                "raw": String::from_utf8_lossy(&raw),
            }))?;
        } else {
            output::write_stdout(&raw)?;
        }
        Ok(Exit::Ok)
    }
}

fn set(field: &mut String, value: Option<String>) {
    if let Some(v) = value {
        *field = v;
    }
}

type Input = (JsonInput, AampMessage);

fn load_input(common: &Common, intent: Intent) -> anyhow::Result<Option<Input>> {
    let Some(path) = &common.json_input else {
        return Ok(None);
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --json-input '{}'", path.display()))?
    };
    let input: JsonInput = serde_json::from_str(&text)
        .with_context(|| format!("cannot parse --json-input '{}' as JSON", path.display()))?;
    let mut msg = input.message.clone();
    if let Some(obj) = msg.as_object_mut() {
        obj.entry("intent")
            .or_insert_with(|| json!(intent.as_str()));
        obj.entry("version")
            .or_insert_with(|| json!(crate::wire::aamp::VERSION));
        obj.entry("taskId").or_insert_with(|| json!(""));
    }
    let message: AampMessage = serde_json::from_value(msg).with_context(|| {
        format!(
            "cannot read the {} fields of --json-input '{}'",
            intent,
            path.display()
        )
    })?;
    if message.intent() != intent {
        bail!(
            "cannot render {}: --json-input '{}' describes a {}",
            intent,
            path.display(),
            message.intent()
        );
    }
    Ok(Some((input, message)))
}

fn task_id_or(
    flag: Option<String>,
    input: Option<&Input>,
    generate: bool,
) -> anyhow::Result<TaskId> {
    if let Some(t) = flag.filter(|t| !t.trim().is_empty()) {
        return Ok(TaskId::new(t));
    }
    if let Some((_, m)) = input
        && !m.task_id.as_str().is_empty()
    {
        return Ok(m.task_id.clone());
    }
    if generate {
        return Ok(TaskId::new(crate::ids::task_id()));
    }
    bail!("cannot render without a task id: add --task-id")
}

fn outbound(
    common: &Common,
    input: Option<JsonInput>,
    message: &AampMessage,
) -> anyhow::Result<Outbound> {
    let (mut from, mut to, mut message_id, mut date, mut in_reply_to, mut references) =
        (None, Vec::new(), None, None, None, Vec::new());
    if let Some(i) = input {
        from = i.from;
        to = match i.to {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        };
        message_id = i.message_id;
        date = i.date;
        in_reply_to = i.in_reply_to;
        references = i.references;
    }
    let from = common
        .from
        .clone()
        .or(from)
        .context("cannot render without a sender: add --from")?;
    if !common.to.is_empty() {
        to.clone_from(&common.to);
    }
    if to.is_empty() {
        bail!("cannot render without a recipient: add --to");
    }
    let now = match common.date.clone().or(date) {
        Some(d) => DateTime::parse_from_rfc3339(&d)
            .map(|d| d.with_timezone(&Utc))
            .with_context(|| format!("cannot use --date '{d}': use RFC 3339"))?,
        None => crate::clock::now(),
    };
    let message_id = common
        .message_id
        .clone()
        .or(message_id)
        .map(|m| thread::strip_brackets(&m))
        .unwrap_or_else(|| crate::ids::message_id(now, &crate::ids::domain_of(&from)));
    let in_reply_to = common.in_reply_to.clone().or(in_reply_to);
    if !common.references.is_empty() {
        references.clone_from(&common.references);
    }
    if message.intent().is_reply() && in_reply_to.is_none() {
        bail!(
            "cannot render a {} without --in-reply-to: replies go in the dispatch's thread",
            message.intent()
        );
    }
    let (in_reply_to, references) = match in_reply_to {
        Some(parent) => {
            let (p, chain) = thread::reply_chain(&parent, &references);
            (Some(p), chain)
        }
        None => (None, references),
    };
    let mut attachments = Vec::new();
    for path in &common.attach {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --attach '{}'", path.display()))?;
        attachments.push(Attachment {
            filename: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "attachment".to_owned()),
            content_type: "application/octet-stream".to_owned(),
            bytes,
        });
    }
    let mut out = Outbound::aamp(
        message,
        Mailbox::new(from),
        to.into_iter().map(Mailbox::new).collect(),
        now,
        message_id,
    );
    out.in_reply_to = in_reply_to;
    out.references = references;
    out.attachments = attachments;
    Ok(out)
}
