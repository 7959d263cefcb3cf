//! `taskmail run [--account NAME] [--json]`: the worker daemon.
//!
//! Loads and validates the config (every problem at once, exit 2), resolves the agent profile,
//! connects to the account's JMAP server and SMTP submission, prints a startup banner on
//! stderr, and runs [`crate::daemon::run`] until SIGTERM or SIGINT, after which running tasks
//! get `worker.shutdown-grace` to finish.
//!
//! Output: without `--json`, one line per task event on stderr (logs stay on stderr too, their
//! level from `--log-level` or `TASKMAIL_LOG`). With `--json`, stdout carries JSON Lines, one
//! [`crate::daemon::Event`] per line (`{"at": ..., "event": "received", "taskId": ...}`; events:
//! `ready`, `received`, `acked`, `started`, `help`, `result`, `cancelled`, `refused`,
//! `ignored`, `sent`, `dead_letter`, `stopped`), and a failure to start is one
//! `{"event": "error", ...}` line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use tokio::sync::broadcast;

use super::config::ConfigCheckCommand;
use super::{Exit, output};
use crate::config::{Config, Env, Mode, PushMode, Secret, format_duration, locate};
use crate::daemon::runner::{Runner, RunnerSettings};
use crate::daemon::{self, Deps, Event};
use crate::profile;
use crate::transport::{self, JmapClient, MailStore as _};

/// `taskmail run`: the worker daemon.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// The account to serve (default: `[worker] account`, else the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print task events as JSON Lines on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RunCommand {
    /// Runs the daemon until a signal; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let path = locate(global_config.as_deref(), env);
        let report = ConfigCheckCommand {
            file: Some(path.clone()),
            json: false,
        }
        .check(env);
        if !report.valid {
            let lines = super::config::problem_lines(&report);
            self.fail(
                "config",
                &format!("cannot use config file '{}'", path.display()),
                &lines,
            )?;
            return Ok(Exit::Usage);
        }
        let config = Config::load(&path, Mode::Strict, env)
            .with_context(|| format!("cannot load config file '{}'", path.display()))?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let name = self
            .account
            .clone()
            .unwrap_or_else(|| config.worker().account.clone());
        if config.account(&name).is_none() {
            let known: Vec<&str> = config.accounts().iter().map(|a| a.name.as_str()).collect();
            self.fail(
                "config",
                &format!("cannot find account '{name}'"),
                &[format!("known accounts: {}", known.join(", "))],
            )?;
            return Ok(Exit::Usage);
        }
        let agent = match profile::agent(&config.worker().agent, &config, env) {
            Ok(agent) => agent,
            Err(error) => {
                let hint = error.hint().into_iter().collect::<Vec<_>>();
                self.fail("profile", &error.to_string(), &hint)?;
                return Ok(Exit::Usage);
            }
        };
        let mut settings = RunnerSettings::from_worker(config.worker());
        // NOTE: the agent reads untrusted mail; it must not inherit the variables our secrets
        // live in.
        settings.env_remove = secret_variables(&config);
        let agent_name = agent.name.clone();
        let runner = Runner::new(agent, settings);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.serve(&config, &path, &name, &agent_name, runner))
    }

    async fn serve(
        &self,
        config: &Config,
        path: &std::path::Path,
        name: &str,
        agent_name: &str,
        runner: Runner,
    ) -> anyhow::Result<Exit> {
        transport::init_crypto();
        let Some(account) = config.account(name) else {
            return Ok(Exit::Usage);
        };
        let mut deps = match Deps::connect(account, Arc::new(runner)).await {
            Ok(deps) => deps,
            Err(error) => {
                let code = error.exit_code();
                self.fail("connect", &crate::transport::smtp::error_chain(&error), &[])?;
                return Ok(exit_from(code));
            }
        };
        banner(config, path, name, agent_name, &deps.mail).await;
        let (events, receiver) = broadcast::channel(1024);
        deps.events = Some(events);
        let printer = tokio::spawn(print_events(receiver, self.json));
        let grace = config.worker().shutdown_grace;
        let result = daemon::run(config, deps, signal(grace)).await;
        // NOTE: the daemon dropped its sender; the printer ends after the last event.
        let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
        match result {
            Ok(()) => Ok(Exit::Ok),
            Err(error) => {
                let code = error.exit_code();
                self.fail("start", &crate::transport::smtp::error_chain(&error), &[])?;
                Ok(exit_from(code))
            }
        }
    }

    /// Reports a failure to start: an error object on stdout with `--json`, lines on stderr
    /// without.
    fn fail(&self, kind: &str, message: &str, details: &[String]) -> anyhow::Result<()> {
        if self.json {
            let line = json!({
                "event": "error",
                "kind": kind,
                "message": message,
                "details": details,
            });
            output::write_stdout(format!("{line}\n").as_bytes())?;
        } else {
            eprintln!("error: {message}");
            for detail in details {
                eprintln!("  {detail}");
            }
        }
        Ok(())
    }
}

fn exit_from(code: u8) -> Exit {
    match code {
        2 => Exit::Usage,
        69 => Exit::Unavailable,
        75 => Exit::TempFail,
        77 => Exit::AuthRefused,
        _ => Exit::Failure,
    }
}

/// The names of the environment variables the config's secrets come from.
fn secret_variables(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .accounts()
        .iter()
        .map(|a| &a.password)
        .chain(config.serve().agents.iter().map(|a| &a.token))
        .filter_map(|secret| match secret {
            Secret::Env(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The startup banner (style point 35), on stderr.
async fn banner(
    config: &Config,
    path: &std::path::Path,
    name: &str,
    agent: &str,
    mail: &JmapClient,
) {
    let session = mail.session();
    let Some(account) = config.account(name) else {
        return;
    };
    let offered = if session.websocket.as_ref().is_some_and(|w| w.supports_push) {
        "websocket"
    } else if session.event_source_url.is_some() {
        "eventsource"
    } else {
        "none"
    };
    let push = match account.jmap.push {
        PushMode::Poll => "poll".to_owned(),
        PushMode::Auto => format!("auto (server offers {offered})"),
        PushMode::Websocket => "websocket".to_owned(),
        PushMode::Eventsource => "eventsource".to_owned(),
    };
    let inbox = mail
        .inbox_id()
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let worker = config.worker();
    eprintln!("taskmail {} worker", env!("CARGO_PKG_VERSION"));
    eprintln!("  config       {}", path.display());
    eprintln!("  account      {name} <{}>", account.email);
    eprintln!("  session      {}", session.url);
    eprintln!("  api          {}", session.api_url);
    eprintln!("  inbox        {inbox}");
    eprintln!(
        "  push         {push}, poll every {}",
        format_duration(account.jmap.poll_interval)
    );
    eprintln!(
        "  submission   {}:{} ({})",
        account.smtp.host,
        account.smtp.port,
        format!("{:?}", account.smtp.tls).to_ascii_lowercase()
    );
    eprintln!("  state dir    {}", config.state_dir().display());
    eprintln!("  work dir     {}", worker.work_dir.display());
    eprintln!("  agent        {agent}");
    eprintln!("  concurrency  {}", worker.concurrency);
    eprintln!(
        "  senders      {}",
        worker
            .allowed_senders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Prints events until the daemon drops its sender.
async fn print_events(mut receiver: broadcast::Receiver<Event>, json: bool) {
    loop {
        match receiver.recv().await {
            Ok(event) => {
                if json {
                    match serde_json::to_string(&event) {
                        Ok(line) => {
                            let _ = output::write_stdout(format!("{line}\n").as_bytes());
                        }
                        Err(error) => tracing::warn!(error = %error, "cannot encode an event"),
                    }
                } else {
                    eprintln!("{}", event.human());
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "events were printed too slowly; some were skipped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Completes on SIGTERM or SIGINT, saying which.
async fn signal(grace: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            tracing::error!("cannot listen for signals; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stopping");
    eprintln!(
        "taskmail: {name} received; stopping (running tasks get {} to finish)",
        format_duration(grace)
    );
}
