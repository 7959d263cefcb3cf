//! The command line: one file per verb, each a clap struct with an `execute` method.
//!
//! stdout carries data (a table or `key: value` lines on a terminal, JSON with `--json`);
//! stderr carries logs and human-mode errors. Exit codes are [`Exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub mod answer;
pub mod audit;
pub mod bench;
pub mod cancel;
pub mod config;
pub mod dispatch;
pub mod doctor;
pub mod grants;
pub mod inbox;
pub mod keys;
pub mod listen;
pub mod mcp;
pub mod output;
pub mod pair;
pub mod parse;
pub mod quarantine;
pub mod read;
pub mod render;
pub mod reply;
pub mod run;
pub mod send;
pub mod serve;
pub mod task;
pub mod tasks;
pub mod watch;

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

impl Exit {
    /// The exit of a documented code (an unknown one is a plain failure).
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Rejected,
            4 => Exit::Expired,
            69 => Exit::Unavailable,
            75 => Exit::TempFail,
            77 => Exit::AuthRefused,
            _ => Exit::Failure,
        }
    }
}

/// What a verb reports when it cannot do its job: with `--json` one object on stdout
/// (`{"event": "error", "kind", "message", "details", "exit"}`), else lines on stderr; then
/// the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `config`, `usage`, `connect`, `send`, `store`, `task`, `error` ...
    pub kind: String,
    /// One line, with its causes.
    pub message: String,
    /// Further lines: every config problem, a hint.
    pub details: Vec<String>,
    /// The exit code.
    pub exit: Exit,
}

impl Failure {
    /// A failure of `kind` with `message`, exiting with `exit`.
    pub fn new(kind: &str, message: impl Into<String>, exit: Exit) -> Failure {
        Failure {
            kind: kind.to_owned(),
            message: message.into(),
            details: Vec::new(),
            exit,
        }
    }

    /// A failure from an error whose documented exit code is `code` (the message is the cause
    /// chain).
    pub fn of(kind: &str, error: &dyn std::error::Error, code: u8) -> Failure {
        Failure::new(
            kind,
            crate::transport::smtp::error_chain(error),
            Exit::from_code(code),
        )
    }

    /// With a further line (a hint, one config problem).
    #[must_use]
    pub fn detail(mut self, line: impl Into<String>) -> Failure {
        self.details.push(line.into());
        self
    }

    /// Prints the failure and returns its exit code.
    pub fn report(&self, json: bool) -> Exit {
        if json {
            let line = serde_json::json!({
                "event": "error",
                "kind": self.kind,
                "message": self.message,
                "details": self.details,
                "exit": self.exit as u8,
            });
            let _ = output::write_stdout(format!("{line}\n").as_bytes());
        } else {
            eprintln!("error: {}", self.message);
            for line in &self.details {
                eprintln!("  {line}");
            }
        }
        self.exit
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        let message = error
            .chain()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        Failure::new("error", message, Exit::Failure)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(error: crate::store::StoreError) -> Failure {
        Failure::of("store", &error, 1)
    }
}

/// How a verb ends: its exit code, or its failure reported (one JSON object on stdout with
/// `--json`, lines on stderr without) and that failure's exit code.
pub(crate) fn finish(json: bool, outcome: Result<Exit, Failure>) -> anyhow::Result<Exit> {
    Ok(outcome.unwrap_or_else(|failure| failure.report(json)))
}

/// Loads and validates the config for a verb: every problem at once (exit 2).
pub(crate) fn load_config(
    global: Option<&std::path::Path>,
    env: &crate::config::Env,
) -> Result<(crate::config::Config, PathBuf), Failure> {
    let path = crate::config::locate(global, env);
    let report = config::ConfigCheckCommand {
        file: Some(path.clone()),
        json: false,
    }
    .check(env);
    if !report.valid {
        let mut failure = Failure::new(
            "config",
            format!("cannot use config file '{}'", path.display()),
            Exit::Usage,
        );
        failure.details = config::problem_lines(&report);
        return Err(failure);
    }
    let loaded = crate::config::Config::load(&path, crate::config::Mode::Strict, env)
        .map_err(|e| Failure::of("config", &e, 2))?;
    for warning in loaded.warnings() {
        tracing::debug!("{warning}");
    }
    Ok((loaded, path))
}

/// The account a verb works as: `--account`, else `fallback` (a section's account).
pub(crate) fn pick_account<'a>(
    config: &'a crate::config::Config,
    flag: Option<&str>,
    fallback: &str,
) -> Result<&'a crate::config::Account, Failure> {
    let name = flag.unwrap_or(fallback);
    config.account(name).ok_or_else(|| {
        let known: Vec<&str> = config.accounts().iter().map(|a| a.name.as_str()).collect();
        Failure::new(
            "config",
            format!("cannot find account '{name}'"),
            Exit::Usage,
        )
        .detail(format!("known accounts: {}", known.join(", ")))
    })
}

/// Opens the store of the config's state dir.
pub(crate) fn open_store(config: &crate::config::Config) -> Result<crate::store::Store, Failure> {
    Ok(crate::store::Store::open(
        &config.state_dir().join(crate::store::FILE_NAME),
    )?)
}

/// The signing key of `account` (a config account name) for the mail a verb sends: its key
/// file, unless `accounts.NAME.sign = false`; `None` when it has none.
pub(crate) fn signer(
    config: &crate::config::Config,
    account: &str,
) -> Result<Option<crate::trust::sign::SigningKey>, Failure> {
    crate::trust::keys::signer(config, account).map_err(|e| {
        Failure::of("config", &e, 2).detail(format!(
            "fix the file's mode with chmod 600, or make a new key with: taskmail keys new --account {account} --force"
        ))
    })
}

/// A multi-threaded runtime for a verb that talks to servers.
/// Completes on SIGTERM or SIGINT with the signal's name; never when signals cannot be
/// listened for (logged).
pub(crate) async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        }
        _ => {
            tracing::error!("cannot listen for signals; stop with SIGKILL");
            std::future::pending().await
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::of("error", &e, 1))
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
    /// Send a task to a worker; with --wait, follow it until its result.
    Dispatch(Box<dispatch::DispatchCommand>),
    /// List tasks from the local store.
    Tasks(tasks::TasksCommand),
    /// Look at one task.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Answer a help request of a task you dispatched.
    Answer(answer::AnswerCommand),
    /// Cancel a task you dispatched.
    Cancel(cancel::CancelCommand),
    /// Follow a mailbox and print every inbound message, classified, acting on none.
    Listen(listen::ListenCommand),
    /// Measure the deployment: dispatch N tasks to a worker, report results, latency,
    /// throughput and the server floor.
    Bench(bench::BenchCommand),
    /// Check the config, the state dir, SMTP, JMAP, push and the agent, with a fix for each
    /// problem.
    Doctor(doctor::DoctorCommand),
    /// Make or show an account's agent signing key (X-ASMTP-Signature).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage who may reach an account: list, allow, block, revoke grants.
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// Pair with a peer by a single-use code: `pair new` (worker side), `pair request URL`.
    #[command(subcommand)]
    Pair(pair::PairCommand),
    /// Serve the account's mailbox and tasks as MCP tools on stdio (for agent runtimes).
    Mcp(mcp::McpCommand),
    /// Read the trust verdict log (every admit and refusal, never a body).
    Audit(audit::AuditCommand),
    /// List, release or drop the mail the injection scan held in quarantine.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Send an ASMTP envelope from the account's handle.
    Send(Box<send::SendCommand>),
    /// List new push frames (headers only) since the persisted cursor.
    Inbox(inbox::InboxCommand),
    /// Read one envelope's body and mark it read.
    Read(read::ReadCommand),
    /// Answer an envelope (to its sender, cc kept, threaded).
    Reply(Box<reply::ReplyCommand>),
    /// Catch up from the cursor, then stream live push frames (JSON Lines with --json).
    Watch(watch::WatchCommand),
    /// Serve the local operator API (HTTP + WebSocket, ASMTP-compatible) for local agents.
    Serve(serve::ServeCommand),
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
            Command::Dispatch(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Tasks(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Task(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Answer(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Cancel(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Listen(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Bench(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Doctor(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Keys(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Grants(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Pair(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Mcp(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Audit(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Quarantine(c) => {
                c.execute(self.global.config, &crate::config::Env::from_process())
            }
            Command::Send(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Inbox(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Read(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Reply(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Watch(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
            Command::Serve(c) => c.execute(self.global.config, &crate::config::Env::from_process()),
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
