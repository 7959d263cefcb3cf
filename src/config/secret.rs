//! Secrets (passwords, API tokens) as references, resolved only when they are needed.
//!
//! In the config a secret is one of:
//!
//! ```toml
//! password = { command = ["pass", "show", "mail/worker"] }  # first line of the command's output
//! password = { file = "~/.config/taskmail/worker.pass" }   # the file, without its final newline
//! password = { env = "TASKMAIL_WORKER_PASSWORD" }          # an environment variable
//! password = { raw = "test-password" }                     # testing only: the secret sits in the file
//! ```
//!
//! Validation never runs the command or reads the file (it has no side effects);
//! [`Secret::resolve`] does, when a transport connects.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Run this argv (no shell) and take the first line of its standard output.
    Command(Vec<String>),
    /// Read this file and drop its final line ending.
    File(PathBuf),
    /// Read this environment variable.
    Env(String),
    /// The secret itself. For tests only: it puts the secret in the config file.
    Raw(String),
}

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The command could not be started.
    #[error("cannot run secret command '{program}'")]
    Spawn {
        /// The program that was run.
        program: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error("cannot get a secret from command '{program}': it exited with {status}{}", stderr_suffix(.stderr))]
    CommandFailed {
        /// The program that was run.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The first line of what it wrote on standard error.
        stderr: String,
    },
    /// The file could not be read.
    #[error("cannot read secret file '{}'", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The environment variable is not set.
    #[error("cannot read secret environment variable '{name}': it is not set")]
    EnvMissing {
        /// The variable.
        name: String,
    },
    /// The secret is not UTF-8 text.
    #[error("cannot use the secret from {origin}: it is not UTF-8 text")]
    NotUtf8 {
        /// Where it came from, as [`Secret::describe`] puts it.
        origin: String,
    },
    /// The secret resolved to nothing.
    #[error("cannot use the secret from {origin}: it is empty")]
    Empty {
        /// Where it came from, as [`Secret::describe`] puts it.
        origin: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" ({stderr})")
    }
}

impl Secret {
    /// Fetches the secret: runs the command, reads the file or reads the environment variable.
    pub fn resolve(&self) -> Result<String, SecretError> {
        self.resolve_with_env(|name| std::env::var_os(name).map(|v| v.into_string()))
    }

    /// Like [`resolve`](Self::resolve), with environment variables looked up by `lookup`, which
    /// returns `Some(Err(raw))` for a value that is not UTF-8.
    pub fn resolve_with_env(
        &self,
        lookup: impl Fn(&str) -> Option<Result<String, std::ffi::OsString>>,
    ) -> Result<String, SecretError> {
        let origin = || self.describe();
        let value = match self {
            Secret::Command(argv) => run(argv, &origin)?,
            Secret::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
                    path: path.clone(),
                    source,
                })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| SecretError::NotUtf8 { origin: origin() })?;
                strip_line_ending(&text).to_owned()
            }
            Secret::Env(name) => match lookup(name) {
                Some(Ok(value)) => value,
                Some(Err(_)) => return Err(SecretError::NotUtf8 { origin: origin() }),
                None => return Err(SecretError::EnvMissing { name: name.clone() }),
            },
            Secret::Raw(value) => value.clone(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty { origin: origin() });
        }
        Ok(value)
    }

    /// Where the secret comes from, without the secret: `command 'pass show x'`, `file '/p'`,
    /// `environment variable 'X'`, `raw value`.
    pub fn describe(&self) -> String {
        match self {
            Secret::Command(argv) => format!("command '{}'", argv.join(" ")),
            Secret::File(path) => format!("file '{}'", path.display()),
            Secret::Env(name) => format!("environment variable '{name}'"),
            Secret::Raw(_) => "raw value".to_owned(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NOTE: a raw secret must never reach a log line through `{:?}` of a config struct.
        match self {
            Secret::Raw(_) => f.write_str("Raw(<redacted>)"),
            Secret::Command(argv) => f.debug_tuple("Command").field(argv).finish(),
            Secret::File(path) => f.debug_tuple("File").field(path).finish(),
            Secret::Env(name) => f.debug_tuple("Env").field(name).finish(),
        }
    }
}

fn run(argv: &[String], origin: &dyn Fn() -> String) -> Result<String, SecretError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(SecretError::Empty { origin: origin() });
    };
    // NOTE: stdin is closed so a command that would prompt (gpg without an agent) fails at once
    // instead of waiting for a terminal that a daemon does not have.
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SecretError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(SecretError::CommandFailed {
            program: program.clone(),
            status: output.status,
            stderr: stderr.lines().next().unwrap_or_default().trim().to_owned(),
        });
    }
    let text =
        String::from_utf8(output.stdout).map_err(|_| SecretError::NotUtf8 { origin: origin() })?;
    // NOTE: the first line, as `pass show` keeps metadata (user names, URLs) on later lines.
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn strip_line_ending(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_secret_takes_the_first_line() {
        let secret = Secret::Command(vec![
            "sh".into(),
            "-c".into(),
            "printf 'hunter2\\nuser: ada\\n'".into(),
        ]);
        assert_eq!(secret.resolve().unwrap(), "hunter2");
    }

    #[test]
    fn failing_command_reports_status_and_stderr() {
        let secret = Secret::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo 'no such entry' >&2; exit 3".into(),
        ]);
        let error = secret.resolve().unwrap_err().to_string();
        assert!(
            error.starts_with("cannot get a secret from command 'sh'"),
            "{error}"
        );
        assert!(error.contains("no such entry"), "{error}");
    }

    #[test]
    fn file_secret_drops_the_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        assert_eq!(Secret::File(path).resolve().unwrap(), "s3cret");
        let missing = Secret::File(dir.path().join("missing")).resolve();
        assert!(matches!(missing, Err(SecretError::Read { .. })));
    }

    #[test]
    fn env_secret_uses_the_lookup() {
        let secret = Secret::Env("TM_PASS".into());
        let found = secret.resolve_with_env(|name| (name == "TM_PASS").then(|| Ok("pw".into())));
        assert_eq!(found.unwrap(), "pw");
        let missing = secret.resolve_with_env(|_| None);
        assert!(matches!(missing, Err(SecretError::EnvMissing { .. })));
        let empty = secret.resolve_with_env(|_| Some(Ok(String::new())));
        assert!(matches!(empty, Err(SecretError::Empty { .. })));
    }

    #[test]
    fn debug_output_redacts_raw_secrets() {
        let debug = format!("{:?}", Secret::Raw("hunter2".into()));
        assert!(!debug.contains("hunter2"));
    }
}
