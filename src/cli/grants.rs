//! `taskmail grants [list|allow|block|revoke]`: the operator's side of the sender policy
//! (`protocol/trust.md` point 2). Works on the local store only; a running daemon reads grants
//! at every check, so a change applies to the next mail (and to tasks still queued).
//!
//! - `list [--account A] [--json]`: stored grants and the config's `[[trust.grants]]` (source
//!   `config`, read-only: change them in the config file).
//! - `allow PEER [--intents I,..] [--expires WHEN] [--rules JSON] [--require-signature]
//!   [--account A] [--force]`: an active grant. A declined or blocked peer stays so unless
//!   `--force` (a decline is sticky).
//! - `block PEER`, `revoke PEER`: refuse the peer from now on (a block is sticky against
//!   pairing, a revoke is not).
//!
//! PEER is an address or `*@domain`, compared in lowercase.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::{Config, Env, GrantState, INTENTS, PeerPattern};
use crate::store::{GrantRecord, GrantSource, Store, state_name};

/// `taskmail grants`: manage who may reach an account.
#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List grants (stored and from the config).
    List(ListArgs),
    /// Let a peer send the given intents.
    Allow(AllowArgs),
    /// Refuse a peer from now on; pairing never lifts a block.
    Block(PeerArgs),
    /// Withdraw a peer's grant; it may pair again.
    Revoke(PeerArgs),
}

/// `grants list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this account's grants.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `grants block|revoke PEER`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// An address or `*@domain`.
    #[arg(value_name = "PEER")]
    pub peer: String,
    /// The local account (default: `worker.account`).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the grant as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `grants allow PEER`.
#[derive(Debug, Args)]
pub struct AllowArgs {
    /// An address or `*@domain`.
    #[arg(value_name = "PEER")]
    pub peer: String,
    /// The intents the peer may send, comma-separated (default task.dispatch,task.cancel).
    #[arg(long, value_delimiter = ',', value_name = "INTENTS")]
    pub intents: Vec<String>,
    /// When the grant lapses: RFC 3339 (`2030-01-01T00:00:00Z`) or a duration from now (`30d`).
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// Dispatch-Context rules as JSON, e.g. '{"project": ["a", "b"]}'.
    #[arg(long, value_name = "JSON")]
    pub rules: Option<String>,
    /// Require a valid X-ASMTP-Signature on the peer's mail.
    #[arg(long)]
    pub require_signature: bool,
    /// Re-activate a declined or blocked peer.
    #[arg(long)]
    pub force: bool,
    /// The local account (default: `worker.account`).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the grant as JSON.
    #[arg(long)]
    pub json: bool,
}

impl GrantsCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = match &self {
            GrantsCommand::List(a) => a.json,
            GrantsCommand::Allow(a) => a.json,
            GrantsCommand::Block(a) | GrantsCommand::Revoke(a) => a.json,
        };
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let store = super::open_store(&config)?;
        let now = crate::clock::now();
        match self {
            GrantsCommand::List(args) => list(&config, &store, &args, now),
            GrantsCommand::Allow(args) => allow(&config, &store, args, now),
            GrantsCommand::Block(args) => {
                set_state(&config, &store, &args, GrantState::Blocked, now)
            }
            GrantsCommand::Revoke(args) => {
                set_state(&config, &store, &args, GrantState::Revoked, now)
            }
        }
    }
}

/// Parses PEER (usage error naming the fix).
pub(crate) fn parse_peer(text: &str) -> Result<PeerPattern, Failure> {
    PeerPattern::parse(text).map_err(|e| {
        Failure::new(
            "usage",
            format!("cannot use peer '{text}': {e}"),
            Exit::Usage,
        )
        .detail("write an address (agent@other.test) or a whole domain (*@other.test)")
    })
}

/// Checks intent names (usage error listing the known ones).
pub(crate) fn parse_intents(given: &[String]) -> Result<Vec<String>, Failure> {
    if given.is_empty() {
        return Ok(vec!["task.dispatch".to_owned(), "task.cancel".to_owned()]);
    }
    let mut out = Vec::new();
    for intent in given.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        if !INTENTS.contains(&intent) {
            return Err(Failure::new(
                "usage",
                format!("cannot grant unknown intent '{intent}'"),
                Exit::Usage,
            )
            .detail(format!("AAMP 1.1 intents: {}", INTENTS.join(", "))));
        }
        if !out.iter().any(|i| i == intent) {
            out.push(intent.to_owned());
        }
    }
    Ok(out)
}

/// Parses `--rules JSON`.
pub(crate) fn parse_rules(text: Option<&str>) -> Result<BTreeMap<String, Vec<String>>, Failure> {
    let Some(text) = text else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_str(text).map_err(|e| {
        Failure::new("usage", format!("cannot read --rules: {e}"), Exit::Usage)
            .detail("write a JSON object of allowed values per key, e.g. '{\"project\": [\"a\"]}'")
    })
}

/// Parses `--expires`: RFC 3339, or a duration from `now`.
fn parse_expires(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(at.with_timezone(&Utc));
    }
    crate::config::parse_duration(text)
        .ok()
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| {
            Failure::new(
                "usage",
                format!("cannot use --expires '{text}'"),
                Exit::Usage,
            )
            .detail("write an RFC 3339 time (2030-01-01T00:00:00Z) or a duration (30d, 12h)")
        })
}

/// The account a grant is for: `--account`, else `worker.account`.
pub(crate) fn grant_account(config: &Config, flag: Option<&str>) -> Result<String, Failure> {
    Ok(super::pick_account(config, flag, &config.worker().account)?
        .name
        .clone())
}

fn list(
    config: &Config,
    store: &Store,
    args: &ListArgs,
    now: DateTime<Utc>,
) -> Result<Exit, Failure> {
    let mut grants = store.grants_list(args.account.as_deref())?;
    for grant in &config.trust().grants {
        if args.account.as_deref().is_none_or(|a| a == grant.account) {
            grants.push(GrantRecord::from_config(grant, now));
        }
    }
    if args.json {
        output::print_json(&json!({ "grants": grants })).map_err(Failure::from)?;
        return Ok(Exit::Ok);
    }
    let mut rows = vec![
        [
            "ACCOUNT", "PEER", "STATE", "INTENTS", "EXPIRES", "SIGNED", "KEY", "SOURCE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for g in &grants {
        rows.push(vec![
            g.account.clone(),
            g.peer.to_string(),
            state_name(g.state).to_owned(),
            g.intents.join(","),
            g.expires.map_or_else(
                || "never".to_owned(),
                |e| e.format("%Y-%m-%d %H:%M").to_string(),
            ),
            if g.require_signature { "required" } else { "-" }.to_owned(),
            if g.peer_key.is_some() { "pinned" } else { "-" }.to_owned(),
            g.source.as_str().to_owned(),
        ]);
    }
    let mut out = table(&rows);
    if grants.is_empty() {
        out.push_str("(no grants: only worker.allowed-senders may reach the worker)\n");
    }
    output::write_stdout(out.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
    Ok(Exit::Ok)
}

fn allow(
    config: &Config,
    store: &Store,
    args: AllowArgs,
    now: DateTime<Utc>,
) -> Result<Exit, Failure> {
    let account = grant_account(config, args.account.as_deref())?;
    let peer = parse_peer(&args.peer)?;
    let intents = parse_intents(&args.intents)?;
    let rules = parse_rules(args.rules.as_deref())?;
    let expires = args
        .expires
        .as_deref()
        .map(|e| parse_expires(e, now))
        .transpose()?;
    let existing = store.grant_get(&account, &peer)?;
    let grant = GrantRecord {
        account: account.clone(),
        peer: peer.clone(),
        intents,
        state: GrantState::Active,
        expires,
        dispatch_context_rules: rules,
        require_signature: args.require_signature,
        // NOTE: a key pinned by pairing stays pinned; only pairing sets one.
        peer_key: existing.as_ref().and_then(|g| g.peer_key.clone()),
        source: GrantSource::Cli,
        created_at: existing.as_ref().map_or(now, |g| g.created_at),
        updated_at: now,
    };
    if !store.grant_put(&grant, args.force)? {
        let state = existing.map_or("declined", |g| state_name(g.state));
        return Err(Failure::new(
            "grant",
            format!(
                "cannot allow {peer} for account {account}: the peer is {state}, and that is sticky"
            ),
            Exit::Failure,
        )
        .detail(format!(
            "to let it in anyway: taskmail grants allow '{peer}' --account {account} --force"
        )));
    }
    print_grant(store, &account, &peer, args.json, "allowed")
}

fn set_state(
    config: &Config,
    store: &Store,
    args: &PeerArgs,
    state: GrantState,
    now: DateTime<Utc>,
) -> Result<Exit, Failure> {
    let account = grant_account(config, args.account.as_deref())?;
    let peer = parse_peer(&args.peer)?;
    if !store.grant_set_state(&account, &peer, state, now)? {
        // NOTE: blocking (or revoking) a peer that has no stored grant still records the
        // refusal: it may be admitted by a config grant or allowed-senders.
        let grant = GrantRecord {
            account: account.clone(),
            peer: peer.clone(),
            intents: Vec::new(),
            state,
            expires: None,
            dispatch_context_rules: BTreeMap::new(),
            require_signature: false,
            peer_key: None,
            source: GrantSource::Cli,
            created_at: now,
            updated_at: now,
        };
        store.grant_put(&grant, true)?;
    }
    print_grant(store, &account, &peer, args.json, state_name(state))
}

fn print_grant(
    store: &Store,
    account: &str,
    peer: &PeerPattern,
    json: bool,
    what: &str,
) -> Result<Exit, Failure> {
    let grant = store.grant_get(account, peer)?;
    if json {
        output::print_json(&json!({ "grant": grant })).map_err(Failure::from)?;
    } else {
        let line = format!("{what}: {peer} for account {account}\n");
        output::write_stdout(line.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
    }
    Ok(Exit::Ok)
}

/// Aligned columns, two spaces apart, trailing space trimmed.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}", w = *w))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
