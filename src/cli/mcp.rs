//! `taskmail mcp [--account NAME]`: serve the account's mailbox and tasks as MCP tools on
//! stdin/stdout ([`crate::mcp`]). An agent runtime starts it as a child process, e.g.
//! `claude mcp add taskmail -- taskmail mcp --account agent`.

use std::path::PathBuf;

use clap::Args;

use super::{Exit, Failure};
use crate::config::Env;

/// `taskmail mcp`: an MCP server on stdio.
#[derive(Debug, Args)]
#[command(
    long_about = "Serve the account's mailbox and tasks as MCP tools on stdin/stdout (JSON-RPC \
                  2.0, the Model Context Protocol): send_message, check_inbox, read_message, \
                  reply, dispatch_task, get_task, answer_help. Logs go to stderr.\n\nAdd it to \
                  an agent runtime, e.g.: claude mcp add taskmail -- taskmail mcp --account \
                  agent"
)]
pub struct McpCommand {
    /// The account the tools act as (default: [dispatcher] account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
}

impl McpCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        super::finish(false, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, _) = super::load_config(global_config.as_deref(), env)?;
        let account = super::pick_account(
            &config,
            self.account.as_deref(),
            &config.dispatcher().account,
        )?
        .clone();
        super::runtime()?
            .block_on(crate::mcp::serve(config, account))
            .map_err(|e| Failure::of("mcp", &e, 1))?;
        Ok(Exit::Ok)
    }
}
