//! Agent and server profiles: data files that say how to run an agent and what a mail server
//! needs, resolved in layers.
//!
//! # Resolution order (lowest first; a higher layer replaces each field it sets)
//!
//! 1. built-in: the files under `profiles/agents/` and `profiles/servers/` in the repository,
//!    compiled into the binary;
//! 2. user: `$XDG_CONFIG_HOME/taskmail/profiles/{agents,servers}/NAME.toml`
//!    (`~/.config/taskmail/...` when unset);
//! 3. config: `[profiles.NAME]` tables in the config file (agent profiles only).
//!
//! So `[profiles.claude] timeout = "2h"` keeps the built-in command and only changes the
//! timeout, and a user file `agents/mybot.toml` defines a new agent. Built-in agents: `echo`
//! (the test agent), `command` (a template), `claude`, `codex`, `gemini`. Built-in servers:
//! `stalwart`, `cyrus`, `generic`.
//!
//! Profile files are checked like the config: unknown keys and bad values are reported with
//! their key path (`profiles.mybot.command: cannot be empty`).

mod agent;
mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{
    AgentProfileLayer, Config, ConfigErrors, Diagnostic, Env, Mode, PushMode, RawAgentProfile,
    did_you_mean, is_valid_name, join, parse_toml, quote,
};

pub use agent::{AgentProfile, Placeholders, expand};
pub use server::{RawServerProfile, ServerProfile};

/// The built-in agent profiles, embedded from `profiles/agents/`.
const BUILT_IN_AGENTS: [(&str, &str); 5] = [
    ("echo", include_str!("../../profiles/agents/echo.toml")),
    (
        "command",
        include_str!("../../profiles/agents/command.toml"),
    ),
    ("claude", include_str!("../../profiles/agents/claude.toml")),
    ("codex", include_str!("../../profiles/agents/codex.toml")),
    ("gemini", include_str!("../../profiles/agents/gemini.toml")),
];

/// The built-in server profiles, embedded from `profiles/servers/`.
const BUILT_IN_SERVERS: [(&str, &str); 3] = [
    (
        "generic",
        include_str!("../../profiles/servers/generic.toml"),
    ),
    (
        "stalwart",
        include_str!("../../profiles/servers/stalwart.toml"),
    ),
    ("cyrus", include_str!("../../profiles/servers/cyrus.toml")),
];

/// Agent or server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// How a worker runs a task.
    Agent,
    /// What a mail server needs.
    Server,
}

impl ProfileKind {
    fn dir(self) -> &'static str {
        match self {
            ProfileKind::Agent => "agents",
            ProfileKind::Server => "servers",
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileKind::Agent => "agent",
            ProfileKind::Server => "server",
        })
    }
}

/// Where one layer of a profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Compiled in from `profiles/`.
    BuiltIn,
    /// A file in the user profile directory.
    User(PathBuf),
    /// A `[profiles.NAME]` table in the config file.
    Config,
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSource::BuiltIn => f.write_str("built-in"),
            ProfileSource::User(path) => write!(f, "user file '{}'", path.display()),
            ProfileSource::Config => f.write_str("config"),
        }
    }
}

/// One row of a profile listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileEntry {
    /// The profile name.
    pub name: String,
    /// The description of the highest layer that has one.
    pub description: Option<String>,
    /// Every layer that defines the profile, lowest first; never empty.
    pub layers: Vec<ProfileSource>,
}

impl ProfileEntry {
    /// The layer that wins: the last one.
    pub fn source(&self) -> &ProfileSource {
        self.layers.last().unwrap_or(&ProfileSource::BuiltIn)
    }
}

/// Why a profile could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The name could not be a file name.
    #[error("cannot use {} as a profile name: use 1 to 64 letters, digits, '-' and '_'", quote(.name))]
    BadName {
        /// The name.
        name: String,
    },
    /// No layer defines the profile.
    #[error("cannot find {kind} profile {}", quote(.name))]
    NotFound {
        /// Agent or server.
        kind: ProfileKind,
        /// The name looked for.
        name: String,
        /// The names that exist.
        known: Vec<String>,
    },
    /// A user profile file exists but could not be read.
    #[error("cannot read {kind} profile file '{}'", .path.display())]
    Read {
        /// Agent or server.
        kind: ProfileKind,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The user profile directory could not be listed.
    #[error("cannot list {kind} profiles in '{}'", .path.display())]
    List {
        /// Agent or server.
        kind: ProfileKind,
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A layer, or the merged profile, has problems.
    #[error("cannot use {kind} profile {} from {origin}", quote(.name))]
    Invalid {
        /// Agent or server.
        kind: ProfileKind,
        /// The profile name.
        name: String,
        /// The layer with the problems (for the merged profile, the highest layer).
        origin: ProfileSource,
        /// Every problem, keyed by path.
        #[source]
        problems: ConfigErrors,
    },
}

impl ProfileError {
    /// A suggestion for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            ProfileError::NotFound { kind, name, known } => {
                let list = known.join(", ");
                Some(match did_you_mean(name, known.iter().map(String::as_str)) {
                    Some(suggestion) => {
                        format!("did you mean '{suggestion}'? known {kind} profiles: {list}")
                    }
                    None => format!(
                        "known {kind} profiles: {list}; add your own as profiles/{}/{name}.toml in the user profile directory",
                        kind.dir()
                    ),
                })
            }
            _ => None,
        }
    }
}

/// Resolves agent profile `name`: built-in < user file < `[profiles.NAME]`.
pub fn agent(name: &str, config: &Config, env: &Env) -> Result<AgentProfile, ProfileError> {
    check_name(name)?;
    let kind = ProfileKind::Agent;
    let mut layers = Vec::new();
    if let Some(text) = built_in(&BUILT_IN_AGENTS, name) {
        layers.push((
            ProfileSource::BuiltIn,
            agent_layer(name, text, ProfileSource::BuiltIn)?,
        ));
    }
    if let Some((path, text)) = read_user_file(kind, name, env)? {
        let source = ProfileSource::User(path);
        layers.push((source.clone(), agent_layer(name, &text, source)?));
    }
    let in_config = config.profiles().get(name);
    if let Some(layer) = in_config {
        layers.push((ProfileSource::Config, layer.clone()));
    }
    if layers.is_empty() {
        return Err(ProfileError::NotFound {
            kind,
            name: name.to_owned(),
            known: names(&list_agents(config, env)?),
        });
    }
    let path = if in_config.is_some() {
        join("profiles", name)
    } else {
        String::new()
    };
    let origin = layers
        .last()
        .map_or(ProfileSource::BuiltIn, |(source, _)| source.clone());
    AgentProfile::from_layers(name, layers, &path).map_err(|problems| ProfileError::Invalid {
        kind,
        name: name.to_owned(),
        origin,
        problems,
    })
}

/// Resolves server profile `name`: built-in < user file.
pub fn server(name: &str, env: &Env) -> Result<ServerProfile, ProfileError> {
    check_name(name)?;
    let kind = ProfileKind::Server;
    let mut merged: Option<(ProfileSource, RawServerProfile)> = None;
    let built_in_layer =
        built_in(&BUILT_IN_SERVERS, name).map(|text| (ProfileSource::BuiltIn, text.to_owned()));
    let user_layer =
        read_user_file(kind, name, env)?.map(|(path, text)| (ProfileSource::User(path), text));
    for (source, text) in built_in_layer.into_iter().chain(user_layer) {
        let layer = server_layer(name, &text, source.clone())?;
        let below = merged.map(|(_, below)| below).unwrap_or_default();
        merged = Some((source, layer.over(below)));
    }
    match merged {
        Some((source, raw)) => Ok(ServerProfile::from_raw(name, raw, source)),
        None => Err(ProfileError::NotFound {
            kind,
            name: name.to_owned(),
            known: names(&list_servers(env)?),
        }),
    }
}

/// Every agent profile with the layers that define it, sorted by name.
pub fn list_agents(config: &Config, env: &Env) -> Result<Vec<ProfileEntry>, ProfileError> {
    let mut entries = list(ProfileKind::Agent, &BUILT_IN_AGENTS, env)?;
    for (name, layer) in config.profiles() {
        let entry = entries.entry(name.clone()).or_insert_with(|| ProfileEntry {
            name: name.clone(),
            description: None,
            layers: Vec::new(),
        });
        entry.layers.push(ProfileSource::Config);
        if layer.description.is_some() {
            entry.description.clone_from(&layer.description);
        }
    }
    Ok(entries.into_values().collect())
}

/// Every server profile with the layers that define it, sorted by name.
pub fn list_servers(env: &Env) -> Result<Vec<ProfileEntry>, ProfileError> {
    Ok(list(ProfileKind::Server, &BUILT_IN_SERVERS, env)?
        .into_values()
        .collect())
}

/// Checks what the config refers to: the worker's agent, every `[profiles.NAME]` table merged
/// with its lower layers, and every account's server profile. Reads the user profile directory.
///
/// Problems are keyed by the config path that refers to the profile, so `config check` can
/// print them with the config's own problems.
pub fn check(config: &Config, env: &Env) -> ConfigErrors {
    let mut report = ConfigErrors::default();
    for name in config.profiles().keys() {
        if let Err(error) = agent(name, config, env) {
            report_profile_error(&mut report, &join("profiles", name), error);
        }
    }
    let worker_agent = &config.worker().agent;
    if !config.profiles().contains_key(worker_agent)
        && let Err(error) = agent(worker_agent, config, env)
    {
        report_profile_error(&mut report, "worker.agent", error);
    }
    let mut worker_server = None;
    for account in config.accounts() {
        let path = join(&join("accounts", &account.name), "server");
        match server(&account.server, env) {
            Ok(profile) => {
                if profile.push == PushMode::Poll
                    && matches!(
                        account.jmap.push,
                        PushMode::Websocket | PushMode::Eventsource
                    )
                {
                    report.warn(
                        Diagnostic::new(
                            join(&join(&join("accounts", &account.name), "jmap"), "push"),
                            format!(
                                "asks for push, but server profile {} says the server has none",
                                quote(&profile.name)
                            ),
                        )
                        .with_hint("use push = \"auto\" so the daemon falls back to polling"),
                    );
                }
                if account.name == config.worker().account {
                    worker_server = Some(profile);
                }
            }
            Err(error) => report_profile_error(&mut report, &path, error),
        }
    }
    let trust = config.trust();
    if trust.authserv_id.is_none() && trust.require_authentication {
        let hint = worker_server
            .and_then(|profile| profile.authserv_id_hint)
            .unwrap_or_else(|| {
                "the host name the receiving server writes in Authentication-Results".to_owned()
            });
        report.warn(
            Diagnostic::new(
                "trust.authserv-id",
                "is not set, so no Authentication-Results header is trusted and only mail from this server's own authenticated users passes the trust gate",
            )
            .with_hint(format!("set it to {hint}")),
        );
    }
    report
}

fn report_profile_error(report: &mut ConfigErrors, path: &str, error: ProfileError) {
    match error {
        // NOTE: problems of a config table already carry full config paths.
        ProfileError::Invalid {
            origin: ProfileSource::Config,
            problems,
            ..
        } => report.extend(problems),
        other => {
            let mut message = other.to_string();
            if let ProfileError::Invalid { problems, .. } = &other {
                let details: Vec<String> =
                    problems.errors.iter().map(ToString::to_string).collect();
                message = format!("{message}: {}", details.join("; "));
            }
            let mut diagnostic = Diagnostic::new(path, message);
            if let Some(hint) = other.hint() {
                diagnostic = diagnostic.with_hint(hint);
            }
            report.error(diagnostic);
        }
    }
}

fn check_name(name: &str) -> Result<(), ProfileError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ProfileError::BadName {
            name: name.to_owned(),
        })
    }
}

fn built_in<'a>(table: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    table
        .iter()
        .find(|(built_in_name, _)| *built_in_name == name)
        .map(|(_, text)| *text)
}

fn user_dir(kind: ProfileKind, env: &Env) -> Option<PathBuf> {
    env.user_profile_dir().map(|dir| dir.join(kind.dir()))
}

/// The user file for `name`, if there is one.
fn read_user_file(
    kind: ProfileKind,
    name: &str,
    env: &Env,
) -> Result<Option<(PathBuf, String)>, ProfileError> {
    let Some(dir) = user_dir(kind, env) else {
        return Ok(None);
    };
    let path = dir.join(format!("{name}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProfileError::Read { kind, path, source }),
    }
}

fn agent_layer(
    name: &str,
    text: &str,
    source: ProfileSource,
) -> Result<AgentProfileLayer, ProfileError> {
    let mut problems = ConfigErrors::default();
    let layer = parse_toml::<RawAgentProfile>(text, Mode::Strict, &mut problems)
        .map(|raw| AgentProfileLayer::from_raw(raw, "", &mut problems));
    match layer {
        Some(layer) if !problems.has_errors() => Ok(layer),
        _ => Err(ProfileError::Invalid {
            kind: ProfileKind::Agent,
            name: name.to_owned(),
            origin: source,
            problems,
        }),
    }
}

fn server_layer(
    name: &str,
    text: &str,
    source: ProfileSource,
) -> Result<RawServerProfile, ProfileError> {
    let mut problems = ConfigErrors::default();
    let layer = parse_toml::<RawServerProfile>(text, Mode::Strict, &mut problems);
    if let Some(layer) = &layer {
        layer.check(&mut problems);
    }
    match layer {
        Some(layer) if !problems.has_errors() => Ok(layer),
        _ => Err(ProfileError::Invalid {
            kind: ProfileKind::Server,
            name: name.to_owned(),
            origin: source,
            problems,
        }),
    }
}

/// Built-in and user profiles of one kind, by name. Descriptions are read leniently: a listing
/// should show a broken file rather than fail; resolving it reports the problems.
fn list(
    kind: ProfileKind,
    built_ins: &[(&str, &str)],
    env: &Env,
) -> Result<BTreeMap<String, ProfileEntry>, ProfileError> {
    let mut entries = BTreeMap::new();
    for (name, text) in built_ins {
        entries.insert(
            (*name).to_owned(),
            ProfileEntry {
                name: (*name).to_owned(),
                description: description_of(text),
                layers: vec![ProfileSource::BuiltIn],
            },
        );
    }
    let Some(dir) = user_dir(kind, env) else {
        return Ok(entries);
    };
    for (name, path) in user_files(kind, &dir)? {
        let description = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| description_of(&text));
        let entry = entries.entry(name.clone()).or_insert_with(|| ProfileEntry {
            name,
            description: None,
            layers: Vec::new(),
        });
        entry.layers.push(ProfileSource::User(path));
        if description.is_some() {
            entry.description = description;
        }
    }
    Ok(entries)
}

fn user_files(kind: ProfileKind, dir: &Path) -> Result<Vec<(String, PathBuf)>, ProfileError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProfileError::List {
                kind,
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in read {
        let entry = entry.map_err(|source| ProfileError::List {
            kind,
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let stem = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .map(str::to_owned);
        let is_toml = path.extension().is_some_and(|ext| ext == "toml");
        if let Some(stem) = stem
            && is_toml
            && is_valid_name(&stem)
        {
            files.push((stem, path));
        }
    }
    files.sort();
    Ok(files)
}

fn description_of(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table
        .get("description")
        .and_then(|value| value.as_str())
        .map(str::to_owned)
}

fn names(entries: &[ProfileEntry]) -> Vec<String> {
    entries.iter().map(|entry| entry.name.clone()).collect()
}

#[cfg(test)]
mod tests;
