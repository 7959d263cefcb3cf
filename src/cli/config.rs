//! `taskmail config check [FILE] [--json]`: validate a config file, and the profiles it names,
//! without connecting anywhere.
//!
//! Every problem is reported at once, one line each (`error: PATH: message; hint: ...`, then
//! `warning: ...`) on stderr, followed by a one-line summary on stdout. With `--json`, stdout
//! gets `{"valid", "path", "errors": [{"path", "message", "hint"?}], "warnings": [...]}`.
//! An invalid config exits with 2 (usage or config), like every other config failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Exit, output};
use crate::config::{Config, ConfigErrors, Diagnostic, Env, Mode, locate};
use crate::profile;

/// `taskmail config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config file without connecting anywhere: every problem at once, with its key path.
    Check(ConfigCheckCommand),
}

impl ConfigCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`, used when the verb names no file.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        match self {
            ConfigCommand::Check(command) => command.with_default_file(global_config).execute(env),
        }
    }
}

/// `taskmail config check [FILE] [--json]`.
#[derive(Debug, Args)]
pub struct ConfigCheckCommand {
    /// The config file to check (default: -c, then $TASKMAIL_CONFIG, then
    /// $XDG_CONFIG_HOME/taskmail/config.toml).
    pub file: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of a check, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Whether the config has no errors (warnings allowed).
    pub valid: bool,
    /// The file checked.
    pub path: String,
    /// Problems that make the config unusable.
    pub errors: Vec<Diagnostic>,
    /// Things worth telling.
    pub warnings: Vec<Diagnostic>,
    /// The last line of the human output.
    #[serde(skip)]
    pub summary: String,
}

impl ConfigCheckCommand {
    /// Uses `file` (the global `-c`) when no FILE was given on the verb.
    #[must_use]
    pub fn with_default_file(mut self, file: Option<PathBuf>) -> Self {
        if self.file.is_none() {
            self.file = file;
        }
        self
    }

    /// Checks, prints, and returns [`Exit::Ok`] for a valid config or [`Exit::Usage`] (2).
    pub fn execute(self, env: &Env) -> anyhow::Result<Exit> {
        let report = self.check(env);
        if self.json {
            output::print_json(&report)?;
        } else {
            let mut stderr = std::io::stderr().lock();
            for line in problem_lines(&report) {
                writeln!(stderr, "{line}")?;
            }
            output::write_stdout(format!("{}\n", report.summary).as_bytes())?;
        }
        Ok(if report.valid { Exit::Ok } else { Exit::Usage })
    }

    /// Reads and checks the file without printing anything.
    pub fn check(&self, env: &Env) -> CheckReport {
        let path = locate(self.file.as_deref(), env);
        let mut problems = ConfigErrors::default();
        let config = match std::fs::read_to_string(&path) {
            Ok(text) => match Config::from_toml_str_with_env(&text, Mode::Strict, env) {
                Ok(config) => {
                    problems.warnings.extend(config.warnings().iter().cloned());
                    let profile_problems = profile::check(&config, env);
                    problems.errors.extend(profile_problems.errors);
                    problems.warnings.extend(profile_problems.warnings);
                    Some(config)
                }
                Err(errors) => {
                    problems = errors;
                    None
                }
            },
            Err(error) => {
                problems.errors.push(
                    Diagnostic::new(
                        "",
                        format!("cannot read config file '{}': {error}", path.display()),
                    )
                    .with_hint("copy config.example.toml there, or name the file to check"),
                );
                None
            }
        };
        let valid = !problems.has_errors();
        let summary = summary(&path, config.as_ref().filter(|_| valid), &problems);
        CheckReport {
            valid,
            path: path.display().to_string(),
            errors: problems.errors,
            warnings: problems.warnings,
            summary,
        }
    }
}

/// `error: PATH: message` lines, then `warning: ...` lines.
pub fn problem_lines(report: &CheckReport) -> Vec<String> {
    ConfigErrors {
        errors: report.errors.clone(),
        warnings: report.warnings.clone(),
    }
    .lines()
}

fn summary(path: &Path, config: Option<&Config>, problems: &ConfigErrors) -> String {
    let warnings = match problems.warnings.len() {
        0 => String::new(),
        1 => " (1 warning)".to_owned(),
        n => format!(" ({n} warnings)"),
    };
    match config {
        Some(config) => {
            let accounts = config.accounts().len();
            format!(
                "config OK: {accounts} {}, worker agent '{}', state dir {}{warnings}",
                if accounts == 1 { "account" } else { "accounts" },
                config.worker().agent,
                config.state_dir().display()
            )
        }
        None => {
            let count = problems.errors.len();
            format!(
                "config invalid: {count} {} in {}{warnings}",
                if count == 1 { "problem" } else { "problems" },
                path.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> CheckReport {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).unwrap();
        let command = ConfigCheckCommand {
            file: Some(file),
            json: true,
        };
        command.check(&Env::with_home(dir.path()))
    }

    #[test]
    fn valid_config_gets_a_summary() {
        let report = check_text(
            r#"
            state-dir = "/var/lib/tm"
            [accounts.worker]
            email = "worker@example.test"
            password = { env = "PW" }
            jmap.session-url = "https://mail.example.test/.well-known/jmap"
            smtp.host = "mail.example.test"
            [trust]
            authserv-id = "mail.example.test"
            "#,
        );
        assert!(report.valid, "{report:?}");
        assert_eq!(
            report.summary,
            "config OK: 1 account, worker agent 'echo', state dir /var/lib/tm"
        );
    }

    #[test]
    fn invalid_config_lists_every_problem_and_serialises() {
        let report = check_text("[worker]\nconcurrency = 0\nagnet = 'echo'\n");
        assert!(!report.valid);
        let lines = problem_lines(&report).join("\n");
        assert!(
            lines.contains("error: worker.concurrency: cannot use '0'"),
            "{lines}"
        );
        assert!(lines.contains("did you mean 'agent'?"), "{lines}");
        assert!(
            lines.contains("error: accounts: cannot be empty"),
            "{lines}"
        );
        assert!(
            report.summary.starts_with("config invalid: 3 problems in "),
            "{}",
            report.summary
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["valid"], false);
        assert_eq!(json["errors"].as_array().unwrap().len(), 3);
        assert!(json.get("summary").is_none());
    }

    #[test]
    fn missing_file_is_an_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let command = ConfigCheckCommand {
            file: Some(dir.path().join("absent.toml")),
            json: false,
        };
        let report = command.check(&Env::with_home(dir.path()));
        assert!(!report.valid);
        assert!(
            report.errors[0]
                .message
                .starts_with("cannot read config file")
        );
    }

    #[test]
    fn unknown_agent_and_server_profiles_are_reported() {
        let report = check_text(
            r#"
            [accounts.worker]
            email = "worker@example.test"
            server = "stalwrat"
            password = { env = "PW" }
            jmap.session-url = "https://mail.example.test/.well-known/jmap"
            smtp.host = "mail.example.test"
            [worker]
            agent = "clade"
            allowed-senders = ["*@example.test"]
            "#,
        );
        assert!(!report.valid);
        let lines = problem_lines(&report).join("\n");
        assert!(lines.contains("error: worker.agent: cannot find agent profile 'clade'; hint: did you mean 'claude'?"), "{lines}");
        assert!(lines.contains("error: accounts.worker.server: cannot find server profile 'stalwrat'; hint: did you mean 'stalwart'?"), "{lines}");
        assert!(
            lines.contains("warning: trust.authserv-id: is not set"),
            "{lines}"
        );
    }
}
