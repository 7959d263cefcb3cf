//! The command line: one file per verb, each a clap struct with an `execute` method.
//!
//! stdout carries data (a table or `key: value` lines on a terminal, JSON with `--json`);
//! stderr carries logs and human-mode errors. Exit codes are [`Exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub mod config;
pub mod output;
pub mod parse;
pub mod render;
pub mod run;

/// Process exit codes (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A failure not covered below.
    Failure = 1,
    /// Bad usage or an invalid configuration.
    Usage = 2,
    /// The task was rejected.
    Rejected = 3,
    /// The task expired or was cancelled.
    Expired = 4,
    /// The mail server could not be reached.
    Unavailable = 69,
    /// A temporary failure: try again later.
    TempFail = 75,
    /// The server refused our credentials.
    AuthRefused = 77,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// taskmail: AI agent tasks and messages over ordinary email.
#[derive(Debug, Parser)]
#[command(
    name = "taskmail",
    version,
    about = "AI agent tasks (AAMP 1.1) and agent envelopes (ASMTP) over ordinary email",
    long_about = "taskmail maps agent task intents and envelopes onto ordinary email: it sends \
                  through SMTP submission and receives through JMAP.\n\nStart with \
                  `taskmail render dispatch --from a@example.test --to b@example.test --title Hi \
                  --body 'Say hi'` to see the exact mail a dispatch is, and `taskmail parse \
                  FILE.eml` to read any mail the way taskmail does."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every verb accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (default: $TASKMAIL_CONFIG, then $XDG_CONFIG_HOME/taskmail/config.toml).
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter). Also $TASKMAIL_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a mail (.eml) the way taskmail does and print what it is.
    Parse(parse::ParseCommand),
    /// Print the exact RFC 5322 bytes taskmail would send for an intent (a dry run).
    #[command(subcommand)]
    Render(Box<render::RenderCommand>),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the worker daemon: take tasks from the mailbox, run the agent, mail results back.
    Run(run::RunCommand),
}

impl Cli {
    /// Runs the chosen verb.
    pub fn execute(self) -> anyhow::Result<Exit> {
        match self.command {
            Command::Parse(c) => c.execute(),
            Command::Render(c) => c.execute(),
            Command::Config(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Run(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
