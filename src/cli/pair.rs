//! `taskmail pair new|request`: pairing by code (`protocol/aamp.md` "Discovery and pairing").
//!
//! - `pair new [--account A] [--intents I,..] [--rules JSON] [--ttl 300s] [--json]` (worker
//!   side): stores a single-use code (its SHA-256 only) with the intents and Dispatch-Context
//!   rules the new grant will get, and prints the `aamp://connect?...` URL and the code. Give
//!   both to the peer out of band. The running worker answers the peer's `pair.request`.
//! - `pair request URL [--account A] [--wait 60s] [--json]` (dispatcher side): sends the
//!   `pair.request` with the code (and our `X-ASMTP-Key` when `<state-dir>/keys/<account>.pub`
//!   exists), waits for the `pair.respond`, which must pass the authentication step like any
//!   inbound mail, and on `completed` records a grant for the peer (source `pairing`, with the
//!   key it sent) so that its answers are expected. Exit 0 paired, 3 rejected, 75 no answer
//!   in time.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::{Account, Config, Env, GrantState, PeerPattern};
use crate::daemon::gate::{Gate as _, GateInput, GateKind, TrustGate, Verdict};
use crate::daemon::pairing::{KEY_HEADER, own_key, peer_key};
use crate::store::{GrantRecord, GrantSource, PairCode, Store};
use crate::transport::{JmapClient, MailStore as _, SmtpEnvelope, SmtpSubmit, Submit as _};
use crate::trust::pairing::{
    DEFAULT_TTL, code_from_bytes, code_hash, connect_url, parse_connect_url,
};
use crate::wire::aamp::{AampMessage, Intent, PairRequest, Payload, Status, TaskId};
use crate::wire::message::{Mailbox, Outbound};
use crate::wire::{Classified, classify};

/// The intents a dispatcher expects from a worker it paired with.
const ANSWER_INTENTS: [&str; 5] = [
    "task.ack",
    "task.help_needed",
    "task.result",
    "task.stream.opened",
    "card.response",
];

/// `taskmail pair`: pairing by code.
#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Make a single-use pair code and its aamp://connect URL (worker side).
    New(NewArgs),
    /// Send a pair.request for a connect URL and wait for the answer (dispatcher side).
    Request(RequestArgs),
}

/// `pair new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The local account the peer will reach (default: `worker.account`).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// The intents the peer will get, comma-separated (default task.dispatch,task.cancel).
    #[arg(long, value_delimiter = ',', value_name = "INTENTS")]
    pub intents: Vec<String>,
    /// Dispatch-Context rules the grant will carry, as JSON ('{"project": ["a"]}').
    #[arg(long, value_name = "JSON")]
    pub rules: Option<String>,
    /// How long the code works (default 300s).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pair request URL`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The `aamp://connect?mailbox=...&pair_code=...` URL from `taskmail pair new`.
    #[arg(value_name = "URL")]
    pub url: String,
    /// The local account that sends the request (default: `dispatcher.account`).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// How long to wait for the pair.respond (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl PairCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = match &self {
            PairCommand::New(a) => a.json,
            PairCommand::Request(a) => a.json,
        };
        let result = (|| {
            let (config, _) = super::load_config(global_config.as_deref(), env)?;
            match self {
                PairCommand::New(args) => new(&config, &args),
                PairCommand::Request(args) => request(&config, &args),
            }
        })();
        super::finish(json, result)
    }
}

fn duration(flag: &str, text: Option<&str>, default: Duration) -> Result<Duration, Failure> {
    match text {
        None => Ok(default),
        Some(text) => crate::config::parse_duration(text).map_err(|e| {
            Failure::new(
                "usage",
                format!("cannot use {flag} '{text}': {e}"),
                Exit::Usage,
            )
            .detail("write a duration such as 300s, 10m or 1h")
        }),
    }
}

fn new(config: &Config, args: &NewArgs) -> Result<Exit, Failure> {
    let account = super::grants::grant_account(config, args.account.as_deref())?;
    let email = super::pick_account(config, Some(&account), &account)?
        .email
        .clone();
    let intents = super::grants::parse_intents(&args.intents)?;
    let rules = super::grants::parse_rules(args.rules.as_deref())?;
    let ttl = duration("--ttl", args.ttl.as_deref(), DEFAULT_TTL)?;
    let now = crate::clock::now();
    let expires_at = chrono::TimeDelta::from_std(ttl)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| Failure::new("usage", "cannot use --ttl: too long", Exit::Usage))?;
    let random = uuid::Uuid::new_v4();
    let mut bytes = [0u8; 6];
    bytes.copy_from_slice(&random.as_bytes()[..6]);
    let code = code_from_bytes(bytes);
    let store = super::open_store(config)?;
    store.pair_code_put(
        &code_hash(&code),
        &PairCode {
            account: account.clone(),
            intents: intents.clone(),
            dispatch_context_rules: rules.clone(),
            expires_at,
        },
        now,
    )?;
    let url = connect_url(&email, &code, &rules);
    if args.json {
        output::print_json(&json!({
            "url": url,
            "code": code,
            "account": account,
            "mailbox": email,
            "intents": intents,
            "dispatchContextRules": rules,
            "expiresAt": expires_at,
        }))
        .map_err(Failure::from)?;
    } else {
        let text = format!(
            "{url}\ncode: {code} (single use, until {})\ngive the URL to the peer; it runs: taskmail pair request '{url}'\n",
            expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        output::write_stdout(text.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
    }
    Ok(Exit::Ok)
}

fn request(config: &Config, args: &RequestArgs) -> Result<Exit, Failure> {
    let connect = parse_connect_url(&args.url).map_err(|e| {
        Failure::new("usage", e.to_string(), Exit::Usage)
            .detail("use the URL `taskmail pair new` printed on the worker's side")
    })?;
    let account = super::pick_account(
        config,
        args.account.as_deref(),
        &config.dispatcher().account,
    )?
    .clone();
    let peer = PeerPattern::parse(&connect.mailbox).map_err(|e| {
        Failure::new(
            "usage",
            format!("cannot use mailbox '{}': {e}", connect.mailbox),
            Exit::Usage,
        )
    })?;
    let wait = duration("--wait", args.wait.as_deref(), Duration::from_secs(60))?;
    let store = super::open_store(config)?;
    crate::transport::init_crypto();
    let outcome = super::runtime()?.block_on(exchange(config, &account, &connect, wait, &store))?;
    let Some((status, key, rule, message_id)) = outcome else {
        return Err(Failure::new(
            "pair",
            format!(
                "cannot pair with {}: no pair.respond within {}",
                connect.mailbox,
                crate::config::format_duration(wait)
            ),
            Exit::TempFail,
        )
        .detail("is the peer's worker running? try again with a longer --wait"));
    };
    let now = crate::clock::now();
    let completed = status == Status::Completed;
    let mut recorded = false;
    if completed {
        let existing = store.grant_get(&account.name, &peer)?;
        recorded = store.grant_put(
            &GrantRecord {
                account: account.name.clone(),
                peer: peer.clone(),
                intents: ANSWER_INTENTS.map(str::to_owned).to_vec(),
                state: GrantState::Active,
                expires: None,
                dispatch_context_rules: Default::default(),
                require_signature: false,
                peer_key: key.clone(),
                source: GrantSource::Pairing,
                created_at: existing.map_or(now, |g| g.created_at),
                updated_at: now,
            },
            false,
        )?;
    }
    let status_text = if completed { "completed" } else { "rejected" };
    if args.json {
        output::print_json(&json!({
            "status": status_text,
            "peer": peer.to_string(),
            "account": account.name,
            "messageId": message_id,
            "peerKey": key.is_some(),
            "grantRecorded": recorded,
            "auth": rule,
        }))
        .map_err(Failure::from)?;
    } else {
        let mut text = format!("pair.respond {status_text} from {peer} ({rule})\n");
        if completed && !recorded {
            text.push_str("note: the peer is declined or blocked here; its grant was left as is\n");
        }
        output::write_stdout(text.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
    }
    Ok(if completed { Exit::Ok } else { Exit::Rejected })
}

/// Sends the pair.request and waits for an authenticated pair.respond answering it:
/// `(status, peer key, authentication rule, our Message-ID)`, or `None` on timeout.
async fn exchange(
    config: &Config,
    account: &Account,
    connect: &crate::trust::pairing::ConnectUrl,
    wait: Duration,
    store: &Store,
) -> Result<Option<(Status, Option<String>, String, String)>, Failure> {
    let jmap = JmapClient::from_account(account)
        .await
        .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
    let mut since = jmap
        .state()
        .await
        .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
    let submit =
        SmtpSubmit::from_account(account).map_err(|e| Failure::of("send", &e, e.exit_code()))?;
    let now = crate::clock::now();
    let task_id = TaskId::new(uuid::Uuid::new_v4().to_string());
    let message = AampMessage::new(
        task_id.clone(),
        Payload::PairRequest(PairRequest {
            pair_code: connect.pair_code.clone(),
            dispatch_context_rules: connect.dispatch_context_rules.clone(),
        }),
    );
    let message_id = crate::ids::message_id(now, &crate::ids::domain_of(&account.email));
    let mut out = Outbound::aamp(
        &message,
        Mailbox {
            name: account.display_name.clone(),
            email: account.email.clone(),
        },
        vec![Mailbox::new(&connect.mailbox)],
        now,
        message_id.clone(),
    );
    if let Some(key) = own_key(config.state_dir(), &account.name) {
        out.extra_headers.push((
            KEY_HEADER.to_owned(),
            crate::wire::aamp::ValueKind::Text,
            key,
        ));
    }
    submit
        .send_raw(
            &SmtpEnvelope::new(account.login.clone(), [connect.mailbox.clone()]),
            &out.render(),
        )
        .await
        .map_err(|e| Failure::of("send", &e, e.exit_code()))?;
    let gate = TrustGate::from_config(config, &account.name);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changes = jmap
            .changes(&since)
            .await
            .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
        if !changes.created.is_empty() {
            let fetched = jmap
                .get_headers(&changes.created)
                .await
                .map_err(|e| Failure::of("connect", &e, e.exit_code()))?;
            for f in fetched {
                let Classified::Aamp(parsed) = classify(&f.inbound) else {
                    continue;
                };
                let Payload::PairRespond(respond) = &parsed.message.payload else {
                    continue;
                };
                let answers = parsed.message.task_id == task_id
                    || f.inbound.in_reply_to.contains(&message_id);
                let sender = f.inbound.sender();
                if !answers || sender.as_deref() != Some(connect.mailbox.to_lowercase().as_str()) {
                    continue;
                }
                let verdict = gate.authenticate(&GateInput {
                    account: &account.name,
                    sender: sender.as_deref(),
                    kind: GateKind::Aamp {
                        intent: Intent::PairRespond,
                        dispatch_context: None,
                    },
                    inbound: &f.inbound,
                    now: crate::clock::now(),
                    store: Some(store),
                });
                audit(store, account, &f.inbound, &verdict)?;
                let Verdict::Admit { rule, .. } = verdict else {
                    tracing::warn!(
                        rule = verdict.rule(),
                        "a pair.respond failed authentication; ignored"
                    );
                    continue;
                };
                let key = peer_key(f.inbound.headers.get(KEY_HEADER));
                return Ok(Some((respond.status, key, rule, message_id)));
            }
        }
        since = changes.new_state;
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn audit(
    store: &Store,
    account: &Account,
    inbound: &crate::wire::message::Inbound,
    verdict: &Verdict,
) -> Result<(), Failure> {
    let at: DateTime<Utc> = crate::clock::now();
    store.audit(&crate::store::AuditEntry {
        at,
        account: account.name.clone(),
        message_id: inbound.message_id.clone(),
        peer: inbound.sender(),
        verdict: if verdict.is_admitted() {
            "admitted"
        } else {
            "refused"
        }
        .to_owned(),
        rule: Some(verdict.rule().to_owned()),
        detail: Some("pair.respond".to_owned()),
    })?;
    Ok(())
}
