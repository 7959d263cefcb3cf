//! A resolved agent profile: how the worker runs one task.
//!
//! [`AgentProfile`] is the merge of its layers (built-in < user file < config table) with the
//! defaults applied; [`AgentProfile::argv`] fills in the placeholders for one run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{AgentProfileLayer, ConfigErrors, Diagnostic, ExitAction, PromptVia, join};

use super::ProfileSource;

const DEFAULT_HELP_MARKER: &str = "HELP:";
const DEFAULT_OPTION_MARKER: &str = "OPTION:";
const DEFAULT_STRUCTURED_MARKER: &str = "TASKMAIL_STRUCTURED_RESULT:";
const DEFAULT_OUTBOX_DIR: &str = "outbox";

/// How the worker runs a task with one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentProfile {
    /// The profile name.
    pub name: String,
    /// One line for listings.
    pub description: String,
    /// The argv template of a first run.
    pub command: Vec<String>,
    /// The argv template of a resumed run, when the agent keeps its own session in the work dir.
    pub resume_command: Option<Vec<String>>,
    /// Where the prompt goes.
    pub prompt_via: PromptVia,
    /// Extra environment variables (templates).
    pub env: BTreeMap<String, String>,
    /// Overrides `worker.task-timeout`.
    pub timeout: Option<Duration>,
    /// A stdout line starting with this asks for help.
    pub help_marker: String,
    /// Lines starting with this are suggested answers to a help request.
    pub option_marker: String,
    /// A stdout line starting with this carries the structured result.
    pub structured_marker: String,
    /// Directory, relative to the work dir, whose files become attachments.
    pub outbox_dir: PathBuf,
    /// Exit code meanings beyond the default (0 completed, other rejected).
    pub exit_codes: BTreeMap<u8, ExitAction>,
    /// The highest layer that defined this profile.
    pub source: ProfileSource,
}

/// The values of the placeholders for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placeholders<'a> {
    /// `{prompt}`.
    pub prompt: &'a str,
    /// `{task_id}`.
    pub task_id: &'a str,
    /// `{session_key}`.
    pub session_key: &'a str,
    /// `{workdir}`.
    pub workdir: &'a str,
    /// `{task_file}`.
    pub task_file: &'a str,
}

impl Placeholders<'_> {
    fn value(&self, name: &str) -> Option<&str> {
        match name {
            "prompt" => Some(self.prompt),
            "task_id" => Some(self.task_id),
            "session_key" => Some(self.session_key),
            "workdir" => Some(self.workdir),
            "task_file" => Some(self.task_file),
            _ => None,
        }
    }
}

/// Replaces every `{name}` placeholder in `template` in one pass.
///
/// Replaced text is never scanned again, so a prompt that contains `{task_id}` stays as written.
/// Braces that are not a placeholder are copied unchanged.
pub fn expand(template: &str, values: &Placeholders<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replaced = after
            .find('}')
            .and_then(|close| values.value(&after[..close]).map(|value| (value, close)));
        match replaced {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl AgentProfile {
    /// The argv for one run, placeholders filled in. `resume` picks `resume-command` when the
    /// profile has one.
    pub fn argv(&self, values: &Placeholders<'_>, resume: bool) -> Vec<String> {
        let template = match (&self.resume_command, resume) {
            (Some(resume_command), true) => resume_command,
            _ => &self.command,
        };
        template.iter().map(|arg| expand(arg, values)).collect()
    }

    /// The extra environment variables for one run, placeholders filled in.
    pub fn env_vars(&self, values: &Placeholders<'_>) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(name, value)| (name.clone(), expand(value, values)))
            .collect()
    }

    /// What an exit code means: the `exit-codes` table, else 0 completed and anything else
    /// rejected. A code outside 0..=255 (a signal on some platforms) is rejected.
    pub fn exit_action(&self, code: i32) -> ExitAction {
        let mapped = u8::try_from(code)
            .ok()
            .and_then(|code| self.exit_codes.get(&code).copied());
        match (mapped, code) {
            (Some(action), _) => action,
            (None, 0) => ExitAction::Completed,
            (None, _) => ExitAction::Rejected,
        }
    }

    /// Merges layers (lowest first) and applies defaults; `path` is where problems are
    /// reported (`profiles.NAME` for a config table, empty for a file).
    pub(crate) fn from_layers(
        name: &str,
        layers: Vec<(ProfileSource, AgentProfileLayer)>,
        path: &str,
    ) -> Result<AgentProfile, ConfigErrors> {
        let source = layers
            .last()
            .map_or(ProfileSource::BuiltIn, |(source, _)| source.clone());
        let merged = layers
            .into_iter()
            .fold(AgentProfileLayer::default(), |lower, (_, layer)| {
                layer.over(lower)
            });
        let mut report = ConfigErrors::default();
        let prompt_via = merged.prompt_via.unwrap_or(PromptVia::Argv);
        let command_path = join(path, "command");
        match &merged.command {
            None => report.error(
                Diagnostic::new(&command_path, "cannot be missing")
                    .with_hint("give the program and its arguments, e.g. command = [\"my-agent\", \"{prompt}\"]"),
            ),
            Some(argv) => check_prompt_reaches(&command_path, argv, prompt_via, &mut report),
        }
        if let Some(argv) = &merged.resume_command {
            check_prompt_reaches(&join(path, "resume-command"), argv, prompt_via, &mut report);
        }
        let Some(command) = merged.command else {
            return Err(report);
        };
        if report.has_errors() {
            return Err(report);
        }
        Ok(AgentProfile {
            name: name.to_owned(),
            description: merged.description.unwrap_or_default(),
            command,
            resume_command: merged.resume_command,
            prompt_via,
            env: merged.env.unwrap_or_default(),
            timeout: merged.timeout,
            help_marker: merged
                .help_marker
                .unwrap_or_else(|| DEFAULT_HELP_MARKER.to_owned()),
            option_marker: merged
                .option_marker
                .unwrap_or_else(|| DEFAULT_OPTION_MARKER.to_owned()),
            structured_marker: merged
                .structured_marker
                .unwrap_or_else(|| DEFAULT_STRUCTURED_MARKER.to_owned()),
            outbox_dir: merged
                .outbox_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTBOX_DIR)),
            exit_codes: merged.exit_codes.unwrap_or_default(),
            source,
        })
    }
}

/// With `prompt-via = "argv"`, some argument must carry the task: `{prompt}` or `{task_file}`.
fn check_prompt_reaches(
    path: &str,
    argv: &[String],
    prompt_via: PromptVia,
    report: &mut ConfigErrors,
) {
    let carries = |arg: &String| arg.contains("{prompt}") || arg.contains("{task_file}");
    if prompt_via == PromptVia::Argv && !argv.iter().any(carries) {
        report.error(
            Diagnostic::new(
                path,
                "cannot pass the prompt: prompt-via is 'argv' but no argument holds '{prompt}' or '{task_file}'",
            )
            .with_hint("add \"{prompt}\" as an argument, or set prompt-via = \"stdin\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Placeholders<'static> {
        Placeholders {
            prompt: "say {task_id}",
            task_id: "t-1",
            session_key: "",
            workdir: "/w",
            task_file: "/w/task.json",
        }
    }

    #[test]
    fn expansion_is_single_pass_and_keeps_other_braces() {
        assert_eq!(expand("{prompt}", &values()), "say {task_id}");
        assert_eq!(expand("--id={task_id}", &values()), "--id=t-1");
        assert_eq!(expand("${HOME} {x} {", &values()), "${HOME} {x} {");
        assert_eq!(expand("{{workdir}}", &values()), "{/w}");
    }

    #[test]
    fn layers_merge_and_defaults_apply() {
        let lower = AgentProfileLayer {
            command: Some(vec!["bot".into(), "{prompt}".into()]),
            help_marker: Some("ASK:".into()),
            ..AgentProfileLayer::default()
        };
        let upper = AgentProfileLayer {
            exit_codes: Some(BTreeMap::from([(3, ExitAction::Help)])),
            ..AgentProfileLayer::default()
        };
        let profile = AgentProfile::from_layers(
            "bot",
            vec![
                (ProfileSource::BuiltIn, lower),
                (ProfileSource::Config, upper),
            ],
            "profiles.bot",
        )
        .unwrap();
        assert_eq!(profile.help_marker, "ASK:");
        assert_eq!(profile.option_marker, "OPTION:");
        assert_eq!(profile.outbox_dir, PathBuf::from("outbox"));
        assert_eq!(profile.source, ProfileSource::Config);
        assert_eq!(profile.exit_action(3), ExitAction::Help);
        assert_eq!(profile.exit_action(0), ExitAction::Completed);
        assert_eq!(profile.exit_action(1), ExitAction::Rejected);
        assert_eq!(profile.exit_action(-9), ExitAction::Rejected);
        assert_eq!(profile.argv(&values(), true), vec!["bot", "say {task_id}"]);
    }

    #[test]
    fn missing_command_and_unreachable_prompt_are_reported() {
        let errors = AgentProfile::from_layers(
            "bot",
            vec![(ProfileSource::Config, AgentProfileLayer::default())],
            "profiles.bot",
        )
        .unwrap_err();
        assert_eq!(errors.errors[0].path, "profiles.bot.command");
        assert_eq!(errors.errors[0].message, "cannot be missing");

        let layer = AgentProfileLayer {
            command: Some(vec!["bot".into()]),
            ..AgentProfileLayer::default()
        };
        let errors =
            AgentProfile::from_layers("bot", vec![(ProfileSource::Config, layer)], "profiles.bot")
                .unwrap_err();
        assert!(
            errors.errors[0]
                .message
                .starts_with("cannot pass the prompt")
        );
    }
}
