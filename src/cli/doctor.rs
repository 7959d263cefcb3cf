//! `taskmail doctor [--account NAME] [--json]`: check everything taskmail needs, one line per
//! check, each `pass`, `warn` or `fail` with a fix for what is wrong.
//!
//! Checks, in order: the config is valid; the state dir is writable and the store opens; per
//! account (every account, or `--account`): SMTP submission connects, then greets (EHLO) and
//! logs in (AUTH; the password is never printed); JMAP session discovery, the URLs it resolves
//! to, the accountId, the Inbox; the push channel the session offers (WebSocket, EventSource,
//! or none, meaning `Email/changes` polling) against `jmap.push`; whether a taskmail process
//! serves the account (the pipeline lock) and, if so, the push status it recorded; finally the
//! worker's agent profile and its program on `PATH` (a `fail` for the worker account, a `warn`
//! for the others).
//!
//! Exit code: 0 when nothing failed (warnings allowed); 2 for an invalid config; 77 when a
//! failure is a refused login, else 69 when a server could not be reached, else 1. With
//! `--json`, stdout carries one object: `{"ok", "exit", "checks": [{"check", "account",
//! "status", "message", "hint", "details"}]}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::{Exit, output};
use crate::config::{Account, Config, Env, PushMode, format_duration};
use crate::daemon::status;
use crate::transport::{
    self, JmapClient, JmapSettings, MailStore as _, PushSettings, PushSupervisor, SmtpSubmit,
};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the push probe waits for a channel.
const PUSH_PROBE: Duration = Duration::from_secs(5);

/// `taskmail doctor`: check the setup.
#[derive(Debug, Args)]
pub struct DoctorCommand {
    /// Check only this account (default: every account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print the checks as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The verdict of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// Why a check failed, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Auth,
    Unreachable,
    Other,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
struct Check {
    check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    status: Verdict,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<String>,
    /// Structured facts (the `health` check: the daemon's health file).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(skip)]
    cause: Cause,
}

impl Check {
    fn new(check: &str, account: Option<&Account>, status: Verdict, message: String) -> Check {
        Check {
            check: check.to_owned(),
            account: account.map(|a| a.name.clone()),
            status,
            message,
            hint: None,
            details: Vec::new(),
            data: None,
            cause: Cause::Other,
        }
    }

    fn pass(check: &str, account: Option<&Account>, message: String) -> Check {
        Check::new(check, account, Verdict::Pass, message)
    }

    fn fail(check: &str, account: Option<&Account>, message: String, hint: String) -> Check {
        let mut c = Check::new(check, account, Verdict::Fail, message);
        c.hint = Some(hint);
        c
    }

    fn warn(check: &str, account: Option<&Account>, message: String, hint: String) -> Check {
        let mut c = Check::new(check, account, Verdict::Warn, message);
        c.hint = Some(hint);
        c
    }

    fn because(mut self, cause: Cause) -> Check {
        self.cause = cause;
        self
    }

    fn with_details(mut self, details: Vec<String>) -> Check {
        self.details = details;
        self
    }
}

impl DoctorCommand {
    /// Runs the checks; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let mut checks = Vec::new();
        let config = match super::load_config(global_config.as_deref(), env) {
            Ok((config, path)) => {
                checks.push(Check::pass(
                    "config",
                    None,
                    format!(
                        "'{}' is valid: {} account(s), dispatcher '{}', worker '{}'",
                        path.display(),
                        config.accounts().len(),
                        config.dispatcher().account,
                        config.worker().account
                    ),
                ));
                config
            }
            Err(failure) => {
                checks.push(
                    Check::fail(
                        "config",
                        None,
                        failure.message.clone(),
                        "fix each problem listed (`taskmail config check` shows them too)"
                            .to_owned(),
                    )
                    .with_details(failure.details),
                );
                return self.finish(&checks, Some(Exit::Usage));
            }
        };
        let accounts: Vec<Account> = match &self.account {
            Some(name) => match super::pick_account(&config, Some(name), name) {
                Ok(account) => vec![account.clone()],
                Err(failure) => {
                    checks.push(
                        Check::fail(
                            "account",
                            None,
                            failure.message,
                            "name an account of the config".to_owned(),
                        )
                        .with_details(failure.details),
                    );
                    return self.finish(&checks, Some(Exit::Usage));
                }
            },
            None => config.accounts().to_vec(),
        };
        checks.push(state_dir(&config));
        let runtime = match super::runtime() {
            Ok(runtime) => runtime,
            Err(failure) => return Ok(failure.report(self.json)),
        };
        transport::init_crypto();
        for account in &accounts {
            runtime.block_on(check_account(&config, account, &mut checks));
        }
        checks.push(agent(&config, env, &accounts));
        self.finish(&checks, None)
    }

    /// Prints the checks and picks the exit code.
    fn finish(&self, checks: &[Check], forced: Option<Exit>) -> anyhow::Result<Exit> {
        let failed: Vec<&Check> = checks
            .iter()
            .filter(|c| c.status == Verdict::Fail)
            .collect();
        let exit = forced.unwrap_or_else(|| {
            if failed.is_empty() {
                Exit::Ok
            } else if failed.iter().any(|c| c.cause == Cause::Auth) {
                Exit::AuthRefused
            } else if failed.iter().any(|c| c.cause == Cause::Unreachable) {
                Exit::Unavailable
            } else {
                Exit::Failure
            }
        });
        if self.json {
            output::print_json(&json!({
                "ok": failed.is_empty(),
                "exit": exit as u8,
                "checks": checks,
            }))?;
            return Ok(exit);
        }
        let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        let mut out = String::new();
        for check in checks {
            let label = match check.status {
                Verdict::Pass => "pass",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            let account = check
                .account
                .as_ref()
                .map(|a| format!("[{a}] "))
                .unwrap_or_default();
            out.push_str(&format!(
                "{label}  {:<width$}  {account}{}\n",
                check.check, check.message
            ));
            for detail in &check.details {
                out.push_str(&format!("      {detail}\n"));
            }
            if let Some(hint) = &check.hint
                && check.status != Verdict::Pass
            {
                out.push_str(&format!("      hint: {hint}\n"));
            }
        }
        out.push_str(&match exit {
            Exit::Ok => "all checks passed\n".to_owned(),
            _ => format!(
                "{} check(s) failed (exit {})\n",
                failed.len().max(1),
                exit as u8
            ),
        });
        output::write_stdout(out.as_bytes())?;
        Ok(exit)
    }
}

/// The state dir is writable and the store opens.
fn state_dir(config: &Config) -> Check {
    let dir = config.state_dir();
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"taskmail doctor\n"))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(error) = writable {
        return Check::fail(
            "state-dir",
            None,
            format!("cannot write in '{}': {error}", dir.display()),
            "set state-dir (or $STATE_DIRECTORY / $XDG_STATE_HOME) to a directory this user can write"
                .to_owned(),
        );
    }
    match crate::store::Store::open(&dir.join(crate::store::FILE_NAME)).and_then(|s| s.stats()) {
        Ok(stats) => Check::pass(
            "state-dir",
            None,
            format!(
                "'{}' is writable; store schema v{}, {} task(s) ({} open), {} outbox message(s) pending, {} dead",
                dir.display(),
                stats.schema_version,
                stats.tasks,
                stats.open_tasks,
                stats.outbox_pending,
                stats.outbox_dead
            ),
        ),
        Err(error) => Check::fail(
            "state-dir",
            None,
            crate::transport::smtp::error_chain(&error),
            "the store file is damaged or from a newer taskmail: move it aside (the mailbox stays the truth)"
                .to_owned(),
        ),
    }
}

/// Every check of one account.
async fn check_account(config: &Config, account: &Account, checks: &mut Vec<Check>) {
    let a = Some(account);
    let endpoint = format!("{}:{}", account.smtp.host, account.smtp.port);
    // SMTP: connect
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((account.smtp.host.as_str(), account.smtp.port)),
    )
    .await;
    match connected {
        Ok(Ok(_)) => checks.push(Check::pass(
            "smtp.connect",
            a,
            format!("{endpoint} accepts connections"),
        )),
        Ok(Err(error)) => checks.push(
            Check::fail(
                "smtp.connect",
                a,
                format!("cannot connect to {endpoint}: {error}"),
                format!(
                    "is the mail server running? check accounts.{}.smtp.host and port",
                    account.name
                ),
            )
            .because(Cause::Unreachable),
        ),
        Err(_) => checks.push(
            Check::fail(
                "smtp.connect",
                a,
                format!("cannot connect to {endpoint}: no answer in {CONNECT_TIMEOUT:?}"),
                format!(
                    "a firewall or a wrong host? check accounts.{}.smtp.host and port",
                    account.name
                ),
            )
            .because(Cause::Unreachable),
        ),
    }
    // SMTP: EHLO, TLS, AUTH
    let tls = format!("{:?}", account.smtp.tls).to_ascii_lowercase();
    match SmtpSubmit::from_account(account) {
        Err(error) => checks.push(Check::fail(
            "smtp.auth",
            a,
            crate::transport::smtp::error_chain(&error),
            format!(
                "the password reference of accounts.{} cannot be resolved: check its command, file or variable",
                account.name
            ),
        )),
        Ok(submit) => {
            let checked = submit.check().await;
            submit.shutdown().await;
            checks.push(match checked {
                Ok(()) => Check::pass(
                    "smtp.auth",
                    a,
                    format!(
                        "EHLO and AUTH as '{}' accepted by {endpoint} ({tls})",
                        account.login
                    ),
                ),
                Err(error) if error.is_auth() => Check::fail(
                    "smtp.auth",
                    a,
                    crate::transport::smtp::error_chain(&error),
                    format!(
                        "the server refused the login '{}': check accounts.{}.password (and login)",
                        account.login, account.name
                    ),
                )
                .because(Cause::Auth),
                Err(error) => {
                    let unreachable = error.exit_code() == 69;
                    Check::fail(
                        "smtp.auth",
                        a,
                        crate::transport::smtp::error_chain(&error),
                        if unreachable {
                            format!(
                                "nothing answers on {endpoint}: is the mail server running?"
                            )
                        } else {
                            format!(
                                "check accounts.{}.smtp.tls ('{tls}') against what the server offers on {endpoint}",
                                account.name
                            )
                        },
                    )
                    .because(if unreachable {
                        Cause::Unreachable
                    } else {
                        Cause::Other
                    })
                }
            });
        }
    }
    // JMAP: session, URLs, Inbox, push
    let settings = match JmapSettings::from_account(account) {
        Ok(settings) => settings,
        Err(error) => {
            checks.push(Check::fail(
                "jmap.session",
                a,
                crate::transport::smtp::error_chain(&error),
                format!(
                    "the password reference of accounts.{} cannot be resolved",
                    account.name
                ),
            ));
            return;
        }
    };
    let session_url = account.jmap.session_url.as_str().to_owned();
    let mail = match JmapClient::connect(settings).await {
        Ok(mail) => mail,
        Err(error) => {
            let cause = if error.is_auth() {
                Cause::Auth
            } else if error.exit_code() == 69 {
                Cause::Unreachable
            } else {
                Cause::Other
            };
            let hint = match cause {
                Cause::Auth => format!(
                    "the server refused the login '{}': check accounts.{}.password (and login)",
                    account.login, account.name
                ),
                Cause::Unreachable => format!(
                    "is the mail server running? check accounts.{}.jmap.session-url ('{session_url}')",
                    account.name
                ),
                Cause::Other => format!(
                    "check accounts.{}.jmap.session-url ('{session_url}') and public-origin",
                    account.name
                ),
            };
            checks.push(
                Check::fail(
                    "jmap.session",
                    a,
                    crate::transport::smtp::error_chain(&error),
                    hint,
                )
                .because(cause),
            );
            return;
        }
    };
    let session = mail.session();
    let mut details = vec![
        format!("api       {}", session.api_url),
        format!("download  {}", session.download_url),
        format!("upload    {}", session.upload_url),
    ];
    if let Some(es) = &session.event_source_url {
        details.push(format!("events    {es}"));
    }
    if let Some(ws) = &session.websocket {
        details.push(format!("websocket {}", ws.url));
    }
    checks.push(
        Check::pass(
            "jmap.session",
            a,
            format!(
                "session {} as '{}': accountId {}",
                session.url, session.username, session.account_id
            ),
        )
        .with_details(details),
    );
    match mail.inbox_id().await {
        Ok(id) => checks.push(Check::pass(
            "jmap.inbox",
            a,
            format!("the Inbox (role inbox) is mailbox {id}"),
        )),
        Err(error) => checks.push(Check::fail(
            "jmap.inbox",
            a,
            crate::transport::smtp::error_chain(&error),
            "the account has no mailbox with role inbox: create one, or fix the server's mailbox roles"
                .to_owned(),
        )),
    }
    let mut advertised = Vec::new();
    if session.websocket.as_ref().is_some_and(|w| w.supports_push) {
        advertised.push("websocket");
    }
    if session.event_source_url.is_some() {
        advertised.push("eventsource");
    }
    let advertised = if advertised.is_empty() {
        "no push".to_owned()
    } else {
        advertised.join(" and ")
    };
    let poll = format_duration(account.jmap.poll_interval);
    let mode = format!("{:?}", account.jmap.push).to_ascii_lowercase();
    let push = match PushSettings::from_config(&account.jmap) {
        Err(error) => Check::fail(
            "push",
            a,
            crate::transport::smtp::error_chain(&error),
            format!("fix accounts.{}.jmap push settings", account.name),
        ),
        Ok(_) if account.jmap.push == PushMode::Poll => Check::pass(
            "push",
            a,
            format!(
                "push = \"poll\": Email/changes every {poll} (the session advertises {advertised})"
            ),
        ),
        Ok(settings) => match probe_push(std::sync::Arc::new(mail), settings).await {
            (Some(kind), _) => Check::pass(
                "push",
                a,
                format!(
                    "{kind} push connected (the session advertises {advertised}); safety poll every {poll}"
                ),
            ),
            (None, error) if account.jmap.push == PushMode::Auto => Check::pass(
                "push",
                a,
                format!(
                    "no working push (the session advertises {advertised}{}): polling Email/changes every {poll}",
                    error.map(|e| format!("; {e}")).unwrap_or_default()
                ),
            ),
            (None, error) => Check::fail(
                "push",
                a,
                format!(
                    "jmap.push is '{mode}' but no such channel connects (the session advertises {advertised}){}",
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                format!("set accounts.{}.jmap.push = \"auto\"", account.name),
            ),
        },
    };
    checks.push(push);
    checks.push(daemon(config, account));
    if let Some(check) = health(config, account, crate::clock::now()) {
        checks.push(check);
    }
}

/// Runs the push supervisor for a moment: the channel it connects, or its last error.
async fn probe_push(
    mail: std::sync::Arc<JmapClient>,
    settings: PushSettings,
) -> (Option<String>, Option<String>) {
    let (supervisor, _hints, mut status) = PushSupervisor::new(mail, settings, 4);
    let run = tokio::spawn(supervisor.run(std::future::pending()));
    let deadline = tokio::time::Instant::now() + PUSH_PROBE;
    let outcome = loop {
        let current = status.borrow_and_update().clone();
        if current.connected_since.is_some() {
            break (Some(current.channel.to_string()), None);
        }
        let changed = tokio::time::timeout_at(deadline, status.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            let current = status.borrow().clone();
            break (None, current.last_error);
        }
    };
    run.abort();
    outcome
}

/// Whether a taskmail process serves the account, and its push status.
fn daemon(config: &Config, account: &Account) -> Check {
    let a = Some(account);
    let Some(holder) = status::lock_holder(config.state_dir(), &account.name) else {
        return Check::pass(
            "daemon",
            a,
            "no taskmail process serves this account from this state dir".to_owned(),
        );
    };
    let stored = crate::store::Store::open(&config.state_dir().join(crate::store::FILE_NAME))
        .ok()
        .and_then(|s| status::read_push_status(&s, &account.name).ok().flatten());
    let Some(push) = stored else {
        return Check::pass(
            "daemon",
            a,
            format!(
                "served by {}; it recorded no push status yet",
                holder.describe()
            ),
        );
    };
    let mut message = format!("served by {}; push via {}", holder.describe(), push.channel);
    if let Some(since) = push.connected_since {
        message.push_str(&format!(
            ", connected since {}",
            since.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    message.push_str(&format!(
        ", {} hint(s), {} disconnect(s)",
        push.hints, push.disconnects
    ));
    match &push.last_error {
        Some(error) if push.channel == "poll" && push.mode != "poll" => Check::warn(
            "daemon",
            a,
            format!("{message}; last push error: {error}"),
            "push is down: the daemon polls meanwhile and reconnects with backoff".to_owned(),
        ),
        _ => Check::pass("daemon", a, message),
    }
}

/// The health the serving daemon last wrote (`<state-dir>/health-<account>.json`): push
/// connected or polling, last successful sync, outbox backlog, last JMAP and SMTP errors,
/// reconnects. `None` when no `taskmail run` serves the account. A `warn` for every problem
/// [`status::DaemonHealth::problems`] finds, and for a file older than three write intervals
/// (the daemon hangs, or is an older version).
fn health(config: &Config, account: &Account, now: chrono::DateTime<chrono::Utc>) -> Option<Check> {
    let a = Some(account);
    let holder = status::lock_holder(config.state_dir(), &account.name)?;
    if holder.kind != "run" {
        return None;
    }
    let path = status::health_path(config.state_dir(), &account.name);
    let Some(health) = status::read_health(config.state_dir(), &account.name) else {
        return Some(Check::warn(
            "health",
            a,
            format!(
                "{} wrote no health file yet ({})",
                holder.describe(),
                path.display()
            ),
            "a daemon writes it within seconds of starting; an older taskmail writes none"
                .to_owned(),
        ));
    };
    let data = serde_json::to_value(&health).ok();
    let age = (now - health.recorded_at).to_std().unwrap_or_default();
    let mut details = vec![
        format!(
            "last sync: {}",
            health.events.last_sync_at.map_or_else(
                || "never".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            )
        ),
        format!(
            "outbox: {} pending{}, {} dead",
            health.outbox.pending,
            health
                .outbox
                .oldest_pending_at
                .map(|t| format!(
                    " (oldest {} old)",
                    format_duration(Duration::from_secs(
                        (now - t).to_std().unwrap_or_default().as_secs()
                    ))
                ))
                .unwrap_or_default(),
            health.outbox.dead
        ),
    ];
    if let (Some(error), Some(at)) = (
        &health.events.last_sync_error,
        health.events.last_sync_error_at,
    ) {
        details.push(format!(
            "last JMAP error ({}): {error}",
            at.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    if let Some(push) = &health.push
        && let (Some(error), Some(at)) = (&push.last_error, push.last_error_at)
    {
        details.push(format!(
            "last push error ({}): {error}",
            at.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    if let (Some(error), Some(at)) = (
        &health.events.last_smtp_error,
        health.events.last_smtp_error_at,
    ) {
        details.push(format!(
            "last SMTP error ({}): {error}",
            at.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    let message = health.summary(now);
    let mut problems = health.problems(now);
    if age > status::HEALTH_EVERY * 3 {
        problems.insert(
            0,
            format!(
                "the health file is {} old (written every {})",
                format_duration(Duration::from_secs(age.as_secs())),
                format_duration(status::HEALTH_EVERY)
            ),
        );
    }
    let mut check = if problems.is_empty() {
        Check::pass("health", a, message)
    } else {
        details.splice(0..0, problems.iter().map(|p| format!("problem: {p}")));
        Check::warn(
            "health",
            a,
            format!("{message}; {} problem(s)", problems.len()),
            "the daemon retries by itself (reconnects, outbox backoff); fix the cause named above, and see its log".to_owned(),
        )
    };
    check.details = details;
    check.data = data;
    Some(check)
}

/// The worker's agent profile and its program.
fn agent(config: &Config, env: &Env, accounts: &[Account]) -> Check {
    let name = &config.worker().agent;
    let serves = accounts.iter().any(|a| a.name == config.worker().account);
    let problem = |message: String, hint: String| {
        if serves {
            Check::fail("agent", None, message, hint)
        } else {
            Check::warn(
                "agent",
                None,
                message,
                format!("{hint} (only `taskmail run` needs it)"),
            )
        }
    };
    let profile = match crate::profile::agent(name, config, env) {
        Ok(profile) => profile,
        Err(error) => {
            return problem(
                error.to_string(),
                error
                    .hint()
                    .unwrap_or_else(|| "set worker.agent to a known profile".to_owned()),
            );
        }
    };
    let Some(program) = profile.command.first() else {
        return problem(
            format!("agent profile '{name}' has no command"),
            "give the profile a command".to_owned(),
        );
    };
    match find_program(program, env) {
        Some(path) => Check::pass(
            "agent",
            None,
            format!(
                "agent profile '{name}': '{program}' found at {}",
                path.display()
            ),
        ),
        None => problem(
            format!("agent profile '{name}': '{program}' is not on PATH"),
            format!("install '{program}', or set worker.agent to another profile"),
        ),
    }
}

/// `program` as the runner would find it: a path as given, else the first executable on PATH.
fn find_program(program: &str, _env: &Env) -> Option<PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}
