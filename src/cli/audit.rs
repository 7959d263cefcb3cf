//! `taskmail audit [--limit N] [--peer P] [--json]`: the trust verdict log, oldest first (no
//! server is contacted). Each row: time, account, Message-ID, peer, verdict, rule; never a
//! body. The log is append-only (the store refuses updates and deletes).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;

/// `taskmail audit`: read the verdict log.
#[derive(Debug, Args)]
pub struct AuditCommand {
    /// The newest this many entries (default 50).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Only verdicts about this peer (an address, or `*@domain` for a whole domain).
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl AuditCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let store = super::open_store(&config)?;
        let peer = self
            .peer
            .as_deref()
            .map(super::grants::parse_peer)
            .transpose()?;
        let entries =
            store.audit_find(self.limit, peer.as_ref().map(|p| p.to_string()).as_deref())?;
        if self.json {
            output::print_json(&json!({ "audit": entries })).map_err(Failure::from)?;
            return Ok(Exit::Ok);
        }
        let mut rows = vec![
            ["AT", "ACCOUNT", "VERDICT", "RULE", "PEER", "MESSAGE-ID"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for r in &entries {
            let e = &r.entry;
            rows.push(vec![
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.account.clone(),
                e.verdict.clone(),
                e.rule.clone().unwrap_or_else(|| "-".to_owned()),
                e.peer.clone().unwrap_or_else(|| "-".to_owned()),
                e.message_id.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        let mut out = super::grants::table(&rows);
        if entries.is_empty() {
            out.push_str("(no verdicts)\n");
        }
        output::write_stdout(out.as_bytes()).map_err(|e| Failure::of("output", &e, 1))?;
        Ok(Exit::Ok)
    }
}
