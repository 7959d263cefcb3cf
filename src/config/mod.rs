//! Configuration: a TOML file read in two stages, then validated whole before anything starts.
//!
//! 1. [`RawConfig`]: serde structs, every field optional, `deny_unknown_fields`, kebab-case keys.
//!    A shape check in front of serde reports every unknown key (with "did you mean") and every
//!    mistyped value with its path, not just the first (see `schema.rs`).
//! 2. [`Config::from_raw`]: checks every value, applies defaults, resolves paths, and returns a
//!    [`Config`] or a [`ConfigErrors`] listing *all* problems, each keyed by path and quoting the
//!    bad value: `accounts.worker.jmap.session-url: cannot parse 'htp:/x' as a URL: ...`.
//!
//! Validation has no side effects: no network, no file writes, and secrets stay references
//! ([`Secret`]) until [`Secret::resolve`] is called by whoever connects. Where files live is
//! decided from an injected [`Env`] (see [`locate`]); tests never touch process variables.
//!
//! The schema is documented key by key in `config.example.toml` at the root of the repository,
//! which the test suite validates. Agent profiles in `[profiles.NAME]` share their shape with the
//! profile files (`agent.rs`); resolving them against the built-in and user profiles is
//! [`crate::profile`]'s job.

mod address;
mod agent;
mod diagnostic;
mod duration;
mod env;
mod raw;
mod schema;
mod secret;
mod types;
mod validate;

use std::io;
use std::path::{Path, PathBuf};

pub use address::{
    AddressError, HttpUrl, PeerPattern, check_email, check_host, is_loopback_host,
    normalize_address, normalize_domain,
};
pub use agent::{AgentProfileLayer, ExitAction, PLACEHOLDERS, PromptVia, RawAgentProfile};
pub use diagnostic::{ConfigErrors, Diagnostic};
pub use duration::{DurationError, format_duration, parse_duration};
pub use env::{Env, locate};
pub use raw::{
    RawAccount, RawAsmtp, RawConfig, RawDispatcher, RawDuration, RawGrant, RawJmap, RawServe,
    RawServeAgent, RawSmtp, RawTrust, RawWorker,
};
pub use schema::Mode;
pub use secret::{Secret, SecretError};
pub use types::{
    Account, Asmtp, Dispatcher, Grant, GrantState, INTENTS, Jmap, LogFormat, OnCancel, OnRefused,
    Priority, PushMode, RateLimit, Serve, ServeAgent, Smtp, SmtpTls, Trust, Worker,
};

pub(crate) use diagnostic::{did_you_mean, join, quote};
pub(crate) use schema::parse as parse_toml;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file '{}'", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file was read and has problems.
    #[error("cannot use config file '{}'", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        #[source]
        source: ConfigErrors,
    },
}

/// A validated configuration.
///
/// Built only by [`Config::from_raw`] and the functions that call it, so every value in it has
/// been checked: durations are parsed, paths are absolute, references to accounts resolve, and
/// exactly one account is the default.
#[derive(Debug, Clone)]
pub struct Config {
    state_dir: PathBuf,
    log_level: String,
    log_format: LogFormat,
    accounts: Vec<Account>,
    default_index: usize,
    worker: Worker,
    dispatcher: Dispatcher,
    trust: Trust,
    profiles: std::collections::BTreeMap<String, AgentProfileLayer>,
    serve: Serve,
    asmtp: Asmtp,
    warnings: Vec<Diagnostic>,
}

impl Config {
    /// Checks a parsed config and applies defaults. Reports every problem at once.
    pub fn from_raw(raw: RawConfig, env: &Env) -> Result<Config, ConfigErrors> {
        let mut report = ConfigErrors::default();
        match validate::validate(raw, env, &mut report) {
            Some(config) => Ok(config),
            None => Err(report),
        }
    }

    /// Parses and checks TOML text, taking file locations from the process environment.
    pub fn from_toml_str(text: &str, mode: Mode) -> Result<Config, ConfigErrors> {
        Config::from_toml_str_with_env(text, mode, &Env::from_process())
    }

    /// Parses and checks TOML text with an explicit environment.
    ///
    /// Unknown keys are errors in [`Mode::Strict`] and warnings in [`Mode::Permissive`]; either
    /// way, every problem in the text is reported, not only the first.
    pub fn from_toml_str_with_env(
        text: &str,
        mode: Mode,
        env: &Env,
    ) -> Result<Config, ConfigErrors> {
        let mut report = ConfigErrors::default();
        let Some(raw) = schema::parse::<RawConfig>(text, mode, &mut report) else {
            return Err(report);
        };
        // NOTE: validate() moves every warning so far (the shape check's too) into the config.
        match validate::validate(raw, env, &mut report) {
            Some(config) => Ok(config),
            None => Err(report),
        }
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path, mode: Mode, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str_with_env(&text, mode, env).map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Where the store, work dirs and other state live: the `state-dir` key, else
    /// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/taskmail`, else `~/.local/state/taskmail`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The log level or `EnvFilter` directives (default `info`).
    pub fn log_level(&self) -> &str {
        &self.log_level
    }

    /// The log format (default text).
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// Every account, sorted by name.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// The account called `name`.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|account| account.name == name)
    }

    /// The account marked `default = true`, or the only one, or the first by name.
    pub fn default_account(&self) -> &Account {
        &self.accounts[self.default_index]
    }

    /// `[worker]` with defaults applied.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// `[dispatcher]` with defaults applied.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// `[trust]` with defaults applied.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The `[profiles.NAME]` tables, checked but not yet merged with built-in or user profiles.
    pub fn profiles(&self) -> &std::collections::BTreeMap<String, AgentProfileLayer> {
        &self.profiles
    }

    /// `[serve]` with defaults applied.
    pub fn serve(&self) -> &Serve {
        &self.serve
    }

    /// `[asmtp]` with defaults applied.
    pub fn asmtp(&self) -> &Asmtp {
        &self.asmtp
    }

    /// Things worth telling that did not stop validation: applied defaults, ignored keys.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }
}

/// Whether `name` may name an account or a profile: 1 to 64 ASCII letters, digits, `-`, `_`.
///
/// Profile names become file names, so this also keeps `../` out of profile lookups.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `owner` may name a daemon's leases (`worker.lease-owner`, hashed into the lease's
/// owner code): 1 to 12 ASCII lowercase letters and digits.
pub fn valid_lease_owner(owner: &str) -> bool {
    (1..=12).contains(&owner.len())
        && owner
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests;
