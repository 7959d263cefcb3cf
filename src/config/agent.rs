//! The shape of an agent profile, shared by `[profiles.NAME]` config tables and the files in
//! `profiles/agents/` (built-in) and `$XDG_CONFIG_HOME/taskmail/profiles/agents/` (user).
//!
//! A profile is read in layers (built-in < user file < config table, see [`crate::profile`]):
//! each layer is an [`AgentProfileLayer`] whose present fields are already checked here, and a
//! field set in a higher layer replaces the same field below it. [`crate::profile`] merges the
//! layers and applies the defaults.
//!
//! Placeholders in `command`, `resume-command` and `env` values: `{prompt}`, `{task_id}`,
//! `{session_key}`, `{workdir}`, `{task_file}`. Any other brace text is left as written, so
//! shell scripts keep their `${var}` and `{ ...; }`, but a near miss such as `{promt}` is
//! reported as a typo.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnostic::{ConfigErrors, Diagnostic, did_you_mean, index, join, quote};
use super::raw::RawDuration;
use super::validate::checked_duration;

/// The placeholders a command may use.
pub const PLACEHOLDERS: [&str; 5] = ["prompt", "task_id", "session_key", "workdir", "task_file"];

/// How the prompt reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptVia {
    /// As an argument, wherever `{prompt}` appears in the command.
    Argv,
    /// On standard input.
    Stdin,
}

/// What an agent's exit code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitAction {
    /// The task completed; stdout is the result.
    Completed,
    /// The agent needs help; stdout is the question (`task.help_needed`).
    Help,
    /// The task failed; a `rejected` result carries stdout and stderr.
    Rejected,
}

/// An agent profile as written in TOML: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAgentProfile {
    /// One line for `taskmail profiles`.
    pub description: Option<String>,
    /// The argv to run, with placeholders.
    pub command: Option<Vec<String>>,
    /// The argv to run when a task resumes in the same work dir (a follow-up dispatch or a
    /// human answer to a help request), for agents that keep their own session there.
    pub resume_command: Option<Vec<String>>,
    /// `argv` (default) or `stdin`.
    pub prompt_via: Option<PromptVia>,
    /// Extra environment variables; values may use placeholders.
    pub env: Option<BTreeMap<String, String>>,
    /// Overrides `worker.task-timeout` for this agent.
    pub timeout: Option<RawDuration>,
    /// A stdout line starting with this asks for help (default `HELP:`).
    pub help_marker: Option<String>,
    /// Lines starting with this are suggested answers to a help request (default `OPTION:`).
    pub option_marker: Option<String>,
    /// A line starting with this carries the structured result as JSON (default
    /// `TASKMAIL_STRUCTURED_RESULT:`).
    pub structured_marker: Option<String>,
    /// Files the agent leaves here (relative to the task's work dir) become attachments.
    pub outbox_dir: Option<String>,
    /// Exit code (as a string key) to meaning, e.g. `{ 3 = "help" }`.
    pub exit_codes: Option<BTreeMap<String, ExitAction>>,
}

/// One checked layer of an agent profile: the fields it sets, already parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentProfileLayer {
    /// See [`RawAgentProfile::description`].
    pub description: Option<String>,
    /// See [`RawAgentProfile::command`].
    pub command: Option<Vec<String>>,
    /// See [`RawAgentProfile::resume_command`].
    pub resume_command: Option<Vec<String>>,
    /// See [`RawAgentProfile::prompt_via`].
    pub prompt_via: Option<PromptVia>,
    /// See [`RawAgentProfile::env`].
    pub env: Option<BTreeMap<String, String>>,
    /// See [`RawAgentProfile::timeout`].
    pub timeout: Option<Duration>,
    /// See [`RawAgentProfile::help_marker`].
    pub help_marker: Option<String>,
    /// See [`RawAgentProfile::option_marker`].
    pub option_marker: Option<String>,
    /// See [`RawAgentProfile::structured_marker`].
    pub structured_marker: Option<String>,
    /// See [`RawAgentProfile::outbox_dir`].
    pub outbox_dir: Option<PathBuf>,
    /// See [`RawAgentProfile::exit_codes`].
    pub exit_codes: Option<BTreeMap<u8, ExitAction>>,
}

impl AgentProfileLayer {
    /// This layer laid over `lower`: every field this layer sets wins.
    #[must_use]
    pub fn over(self, lower: AgentProfileLayer) -> AgentProfileLayer {
        AgentProfileLayer {
            description: self.description.or(lower.description),
            command: self.command.or(lower.command),
            resume_command: self.resume_command.or(lower.resume_command),
            prompt_via: self.prompt_via.or(lower.prompt_via),
            env: self.env.or(lower.env),
            timeout: self.timeout.or(lower.timeout),
            help_marker: self.help_marker.or(lower.help_marker),
            option_marker: self.option_marker.or(lower.option_marker),
            structured_marker: self.structured_marker.or(lower.structured_marker),
            outbox_dir: self.outbox_dir.or(lower.outbox_dir),
            exit_codes: self.exit_codes.or(lower.exit_codes),
        }
    }

    /// Checks every present field of `raw`, reporting problems under `path` (e.g.
    /// `profiles.mybot`, or empty for a profile file), and keeps the valid ones.
    pub fn from_raw(raw: RawAgentProfile, path: &str, report: &mut ConfigErrors) -> Self {
        AgentProfileLayer {
            description: raw
                .description
                .filter(|text| one_line(&join(path, "description"), text, report)),
            command: raw
                .command
                .filter(|argv| check_argv(&join(path, "command"), argv, report)),
            resume_command: raw
                .resume_command
                .filter(|argv| check_argv(&join(path, "resume-command"), argv, report)),
            prompt_via: raw.prompt_via,
            env: raw
                .env
                .filter(|env| check_env(&join(path, "env"), env, report)),
            timeout: raw
                .timeout
                .and_then(|t| checked_duration(&join(path, "timeout"), &t, report)),
            help_marker: raw
                .help_marker
                .filter(|m| check_marker(&join(path, "help-marker"), m, report)),
            option_marker: raw
                .option_marker
                .filter(|m| check_marker(&join(path, "option-marker"), m, report)),
            structured_marker: raw
                .structured_marker
                .filter(|m| check_marker(&join(path, "structured-marker"), m, report)),
            outbox_dir: raw
                .outbox_dir
                .and_then(|dir| check_outbox_dir(&join(path, "outbox-dir"), &dir, report)),
            exit_codes: raw
                .exit_codes
                .and_then(|codes| check_exit_codes(&join(path, "exit-codes"), codes, report)),
        }
    }
}

fn one_line(path: &str, text: &str, report: &mut ConfigErrors) -> bool {
    if text.contains(['\n', '\r']) {
        report.error(Diagnostic::new(path, "cannot span several lines"));
        return false;
    }
    true
}

fn check_marker(path: &str, marker: &str, report: &mut ConfigErrors) -> bool {
    if marker.trim().is_empty() {
        report.error(
            Diagnostic::new(path, "cannot be empty")
                .with_hint("an empty marker would match every line of the agent's output"),
        );
        return false;
    }
    one_line(path, marker, report)
}

fn check_argv(path: &str, argv: &[String], report: &mut ConfigErrors) -> bool {
    let Some(program) = argv.first() else {
        report
            .error(Diagnostic::new(path, "cannot be empty").with_hint(
                "give the program and its arguments, e.g. [\"my-agent\", \"{prompt}\"]",
            ));
        return false;
    };
    let mut ok = true;
    if program.trim().is_empty() {
        report.error(Diagnostic::new(
            index(path, 0),
            "cannot be empty: it is the program to run",
        ));
        ok = false;
    }
    for (i, arg) in argv.iter().enumerate() {
        ok &= check_placeholders(&index(path, i), arg, report);
    }
    ok & check_shell_script(path, argv, report)
}

fn check_env(path: &str, env: &BTreeMap<String, String>, report: &mut ConfigErrors) -> bool {
    let mut ok = true;
    for (name, value) in env {
        let at = join(path, name);
        if !is_env_name(name) {
            report.error(Diagnostic::new(
                &at,
                format!(
                    "cannot use {} as an environment variable name: use letters, digits and '_', not starting with a digit",
                    quote(name)
                ),
            ));
            ok = false;
        }
        ok &= check_placeholders(&at, value, report);
    }
    ok
}

/// Whether `name` is a portable environment variable name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reports `{name}` tokens that look like a misspelt placeholder.
fn check_placeholders(path: &str, text: &str, report: &mut ConfigErrors) -> bool {
    let mut ok = true;
    for (start, _) in text.match_indices('{') {
        // NOTE: `${var}` is shell syntax, not ours; skip it so scripts need no escaping.
        if text[..start].ends_with('$') {
            continue;
        }
        let rest = &text[start + 1..];
        let Some(end) = rest.find('}') else { continue };
        let name = &rest[..end];
        if PLACEHOLDERS.contains(&name) || name.is_empty() || name.len() > 20 {
            continue;
        }
        if let Some(suggestion) = did_you_mean(name, PLACEHOLDERS) {
            report.error(
                Diagnostic::new(
                    path,
                    format!(
                        "cannot use unknown placeholder {}",
                        quote(&format!("{{{name}}}"))
                    ),
                )
                .with_hint(format!("did you mean '{{{suggestion}}}'?")),
            );
            ok = false;
        }
    }
    ok
}

/// Refuses placeholders inside a shell script (`sh -c '... {prompt} ...'`): the prompt is mail
/// text, and pasted into a script it would run as shell code.
fn check_shell_script(path: &str, argv: &[String], report: &mut ConfigErrors) -> bool {
    const SHELLS: [&str; 7] = ["sh", "bash", "dash", "zsh", "ksh", "ash", "fish"];
    let is_shell = argv.first().is_some_and(|program| {
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(program);
        SHELLS.contains(&name)
    });
    if !is_shell {
        return true;
    }
    let Some(flag) = argv.iter().position(|arg| arg == "-c" || arg == "-lc") else {
        return true;
    };
    let Some(script) = argv.get(flag + 1) else {
        return true;
    };
    let found = PLACEHOLDERS
        .iter()
        .find(|name| script.contains(&format!("{{{name}}}")));
    match found {
        Some(name) => {
            report.error(
                Diagnostic::new(
                    index(path, flag + 1),
                    format!(
                        "cannot put '{{{name}}}' inside a shell script: text from mail would run as shell code"
                    ),
                )
                .with_hint(format!(
                    "pass it as a separate argument after the script and read it as \"$1\", e.g. [\"sh\", \"-c\", \"my-agent \\\"$1\\\"\", \"sh\", \"{{{name}}}\"]"
                )),
            );
            false
        }
        None => true,
    }
}

fn check_outbox_dir(path: &str, dir: &str, report: &mut ConfigErrors) -> Option<PathBuf> {
    let candidate = Path::new(dir);
    let escapes = candidate
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if dir.trim().is_empty() || escapes {
        report.error(
            Diagnostic::new(
                path,
                format!("cannot use {} as the outbox directory", quote(dir)),
            )
            .with_hint("give a path inside the task's work dir, such as 'outbox', without '..' or a leading '/'"),
        );
        return None;
    }
    Some(candidate.to_path_buf())
}

fn check_exit_codes(
    path: &str,
    codes: BTreeMap<String, ExitAction>,
    report: &mut ConfigErrors,
) -> Option<BTreeMap<u8, ExitAction>> {
    let mut parsed = BTreeMap::new();
    let mut ok = true;
    for (code, action) in codes {
        match code.trim().parse::<u8>() {
            Ok(number) => {
                parsed.insert(number, action);
            }
            Err(_) => {
                report.error(Diagnostic::new(
                    join(path, &code),
                    format!(
                        "cannot use {} as an exit code: expected a number from 0 to 255",
                        quote(&code)
                    ),
                ));
                ok = false;
            }
        }
    }
    ok.then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(raw: RawAgentProfile) -> (AgentProfileLayer, ConfigErrors) {
        let mut report = ConfigErrors::default();
        let layer = AgentProfileLayer::from_raw(raw, "profiles.bot", &mut report);
        (layer, report)
    }

    #[test]
    fn empty_command_is_reported_with_its_path() {
        let (layer, report) = layer(RawAgentProfile {
            command: Some(vec![]),
            ..RawAgentProfile::default()
        });
        assert_eq!(layer.command, None);
        assert_eq!(report.errors[0].path, "profiles.bot.command");
        assert_eq!(report.errors[0].message, "cannot be empty");
    }

    #[test]
    fn placeholder_typos_are_caught_but_shell_braces_are_not() {
        let (_, report) = layer(RawAgentProfile {
            command: Some(vec![
                "bot".into(),
                "{promt}".into(),
                "${HOME}".into(),
                "{ a; }".into(),
            ]),
            ..RawAgentProfile::default()
        });
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].path, "profiles.bot.command[1]");
        assert_eq!(
            report.errors[0].hint.as_deref(),
            Some("did you mean '{prompt}'?")
        );
    }

    #[test]
    fn placeholders_inside_shell_scripts_are_refused() {
        let (_, report) = layer(RawAgentProfile {
            command: Some(vec!["/bin/sh".into(), "-c".into(), "bot {prompt}".into()]),
            ..RawAgentProfile::default()
        });
        assert_eq!(report.errors[0].path, "profiles.bot.command[2]");
        let (_, report) = layer(RawAgentProfile {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "bot \"$1\"".into(),
                "sh".into(),
                "{prompt}".into(),
            ]),
            ..RawAgentProfile::default()
        });
        assert!(!report.has_errors(), "{report:?}");
    }

    #[test]
    fn outbox_dir_must_stay_inside_the_work_dir() {
        for bad in ["/tmp", "../x", "a/../../b", ""] {
            let (layer, report) = layer(RawAgentProfile {
                outbox_dir: Some(bad.into()),
                ..RawAgentProfile::default()
            });
            assert_eq!(layer.outbox_dir, None, "{bad}");
            assert!(report.has_errors(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_parse_and_bad_ones_are_named() {
        let codes = BTreeMap::from([
            ("3".to_owned(), ExitAction::Help),
            ("x".to_owned(), ExitAction::Rejected),
        ]);
        let (layer, report) = layer(RawAgentProfile {
            exit_codes: Some(codes),
            ..RawAgentProfile::default()
        });
        assert_eq!(layer.exit_codes, None);
        assert_eq!(report.errors[0].path, "profiles.bot.exit-codes.x");
    }

    #[test]
    fn higher_layers_replace_fields() {
        let lower = AgentProfileLayer {
            command: Some(vec!["a".into()]),
            help_marker: Some("HELP:".into()),
            ..AgentProfileLayer::default()
        };
        let upper = AgentProfileLayer {
            command: Some(vec!["b".into()]),
            ..AgentProfileLayer::default()
        };
        let merged = upper.over(lower);
        assert_eq!(merged.command, Some(vec!["b".to_owned()]));
        assert_eq!(merged.help_marker.as_deref(), Some("HELP:"));
    }
}
