//! `taskmail quarantine [list|release|drop]`: the mail the injection scan held back.
//!
//! The worker daemon moves a high-risk mail (`protocol/trust.md` point 5) to the
//! `trust.quarantine-mailbox` mailbox and records it in the store with its flags. This verb:
//!
//! - `list`: the mailbox's mail over JMAP (JMAP id, date, sender, subject) with the risk, flags
//!   and state the store has for it (a mail someone put there by hand shows without flags);
//! - `release ID`: moves the mail back to the Inbox, then records the release in the store (in
//!   one transaction with forgetting its processed mark). The daemon sees `released` rows on
//!   its next pass (the move's push hint starts one) and processes the mail once more: through
//!   the gate, but not held again. Audited (`released`, rule `operator`);
//! - `drop ID`: destroys the mail and records it `dropped`. Audited.
//!
//! `ID` is the JMAP id `list` shows, or the mail's Message-ID. The CLI and the daemon share the
//! store file (WAL), so this works while the daemon runs.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Exit, Failure, output};
use crate::config::{Account, Config, Env};
use crate::store::{AuditEntry, QuarantineState, Quarantined, Store};
use crate::transport::{JmapClient, JmapError, MailStore};

/// Most mails `list` shows.
const LIST_LIMIT: usize = 500;

/// `taskmail quarantine`: list, release or drop quarantined mail.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List the quarantine mailbox with the flags the scan gave each mail.
    List(ListArgs),
    /// Move a mail back to the Inbox; the worker processes it once more (through the gate).
    Release(ActArgs),
    /// Destroy a quarantined mail.
    Drop(ActArgs),
}

/// Options of `quarantine list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The worker account (default: worker.account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Options of `quarantine release` and `quarantine drop`.
#[derive(Debug, Args)]
pub struct ActArgs {
    /// The mail: its JMAP id (as `quarantine list` shows) or its Message-ID.
    #[arg(value_name = "ID")]
    pub id: String,
    /// The worker account (default: worker.account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the outcome as a JSON object.
    #[arg(long)]
    pub json: bool,
}

impl QuarantineCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = match &self {
            QuarantineCommand::List(a) => a.json,
            QuarantineCommand::Release(a) | QuarantineCommand::Drop(a) => a.json,
        };
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let store = super::open_store(&config)?;
        crate::transport::init_crypto();
        let runtime = super::runtime()?;
        match self {
            QuarantineCommand::List(args) => {
                let account = account(&config, args.account.as_deref())?;
                let rows = runtime.block_on(list(&config, account, &store))?;
                print(args.json, &Value::Array(rows))
            }
            QuarantineCommand::Release(args) => {
                let account = account(&config, args.account.as_deref())?;
                let entry = find(&store, &account.name, &args.id)?;
                let outcome = runtime.block_on(release(account, &store, &entry))?;
                print(args.json, &outcome)
            }
            QuarantineCommand::Drop(args) => {
                let account = account(&config, args.account.as_deref())?;
                let entry = find(&store, &account.name, &args.id)?;
                let outcome = runtime.block_on(drop_mail(account, &store, &entry))?;
                print(args.json, &outcome)
            }
        }
    }
}

fn account<'a>(config: &'a Config, flag: Option<&str>) -> Result<&'a Account, Failure> {
    super::pick_account(config, flag, &config.worker().account)
}

fn print(json: bool, value: &Value) -> Result<Exit, Failure> {
    let printed = if json {
        output::print_json(value)
    } else if let Value::Array(rows) = value {
        if rows.is_empty() {
            eprintln!("the quarantine is empty");
        }
        let mut text = String::new();
        for row in rows {
            text.push_str(&format!(
                "{}  {}  {}  {}  risk {}  {}\n  flags: {}\n",
                row["id"].as_str().unwrap_or_default(),
                row["receivedAt"].as_str().unwrap_or_default(),
                row["from"].as_str().unwrap_or_default(),
                row["state"].as_str().unwrap_or("unknown"),
                row["risk"].as_str().unwrap_or("?"),
                row["subject"].as_str().unwrap_or_default(),
                flag_labels(&row["flags"]),
            ));
        }
        output::write_stdout(text.as_bytes()).map_err(anyhow::Error::from)
    } else {
        output::print_fields(value)
    };
    printed.map_err(Failure::from)?;
    Ok(Exit::Ok)
}

fn flag_labels(flags: &Value) -> String {
    let labels: Vec<String> = flags
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "{}/{}",
                        f["category"].as_str().unwrap_or("?"),
                        f["severity"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() {
        "none recorded".to_owned()
    } else {
        labels.join(", ")
    }
}

fn jmap_failure(error: &JmapError, account: &Account) -> Failure {
    Failure::of("connect", error, error.exit_code()).detail(format!(
        "check that the mail server is running and that account '{}' can log in (`taskmail doctor`)",
        account.name
    ))
}

/// The store row of `id` (a JMAP id or a Message-ID), which must still be held.
fn find(store: &Store, account: &str, id: &str) -> Result<Quarantined, Failure> {
    let wanted = crate::wire::thread::strip_brackets(id);
    let rows = store.quarantine_list(account, None)?;
    let found = rows
        .into_iter()
        .rev()
        .find(|q| q.email_id == id || q.message_id.as_deref() == Some(wanted.as_str()));
    match found {
        Some(q) if q.state == QuarantineState::Held => Ok(q),
        Some(q) => Err(Failure::new(
            "quarantine",
            format!(
                "cannot act on '{id}': it is no longer held (state {})",
                q.state.as_str()
            ),
            Exit::Failure,
        )),
        None => Err(Failure::new(
            "quarantine",
            format!(
                "cannot find '{id}' among the mail taskmail quarantined for account '{account}'"
            ),
            Exit::Usage,
        )
        .detail("use an id from `taskmail quarantine list` (the JMAP id or the Message-ID)")),
    }
}

async fn list(config: &Config, account: &Account, store: &Store) -> Result<Vec<Value>, Failure> {
    let mail = JmapClient::from_account(account)
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    let name = &config.trust().quarantine_mailbox;
    let Some(mailbox) = mail
        .mailbox_by_name(name)
        .await
        .map_err(|e| jmap_failure(&e, account))?
    else {
        return Ok(Vec::new());
    };
    let ids = mail
        .query_mailbox(&mailbox.id, LIST_LIMIT)
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    let fetched = mail
        .get_headers(&ids)
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    let mut rows = Vec::with_capacity(fetched.len());
    for f in fetched {
        let stored = store.quarantine_get(&account.name, &f.id)?;
        let flags: Value = stored
            .as_ref()
            .and_then(|q| serde_json::from_str(&q.flags).ok())
            .unwrap_or(Value::Array(Vec::new()));
        rows.push(json!({
            "id": f.id,
            "messageId": f.inbound.message_id,
            "from": f.inbound.sender(),
            "subject": f.inbound.subject,
            "receivedAt": f.received_at.map(|t| t.to_rfc3339()),
            "state": stored.as_ref().map(|q| q.state.as_str()),
            "risk": stored.as_ref().map(|q| q.risk.clone()),
            "quarantinedAt": stored.as_ref().map(|q| q.quarantined_at.to_rfc3339()),
            "flags": flags,
        }));
    }
    Ok(rows)
}

fn audit(
    store: &Store,
    entry: &Quarantined,
    verdict: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Failure> {
    store.audit(&AuditEntry {
        at: now,
        account: entry.account.clone(),
        message_id: entry.message_id.clone(),
        peer: entry.sender.clone(),
        verdict: verdict.to_owned(),
        rule: Some("operator".to_owned()),
        detail: Some(format!("quarantine {verdict}")),
    })?;
    Ok(())
}

async fn release(account: &Account, store: &Store, entry: &Quarantined) -> Result<Value, Failure> {
    let mail = JmapClient::from_account(account)
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    let inbox = mail
        .inbox_id()
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    // NOTE: the release is recorded first and the mail moved after it, so that the push the
    // move causes finds the row: the daemon takes a released row only once its mail is back in
    // the Inbox. A failed move puts the row back to `held`.
    let now = crate::clock::now();
    store.atomically(|s| {
        s.quarantine_transition(
            &entry.account,
            &entry.email_id,
            &[QuarantineState::Held],
            QuarantineState::Released,
            now,
        )?;
        Ok(())
    })?;
    if let Err(error) = mail.move_to(&entry.email_id, &inbox).await {
        store.atomically(|s| {
            s.quarantine_transition(
                &entry.account,
                &entry.email_id,
                &[QuarantineState::Released],
                QuarantineState::Held,
                crate::clock::now(),
            )?;
            Ok(())
        })?;
        return Err(jmap_failure(&error, account));
    }
    audit(store, entry, "released", now)?;
    Ok(json!({
        "event": "released",
        "id": entry.email_id,
        "messageId": entry.message_id,
        "from": entry.sender,
        "next": "the worker daemon processes it once more (through the gate) on its next pass",
    }))
}

async fn drop_mail(
    account: &Account,
    store: &Store,
    entry: &Quarantined,
) -> Result<Value, Failure> {
    let mail = JmapClient::from_account(account)
        .await
        .map_err(|e| jmap_failure(&e, account))?;
    match mail.destroy_email(&entry.email_id).await {
        Ok(()) => {}
        Err(error) if error.is_not_found() => {
            tracing::info!("the mail is already gone from the server");
        }
        Err(error) => return Err(jmap_failure(&error, account)),
    }
    let now = crate::clock::now();
    store.quarantine_transition(
        &entry.account,
        &entry.email_id,
        &[QuarantineState::Held],
        QuarantineState::Dropped,
        now,
    )?;
    audit(store, entry, "dropped", now)?;
    Ok(json!({
        "event": "dropped",
        "id": entry.email_id,
        "messageId": entry.message_id,
        "from": entry.sender,
    }))
}
